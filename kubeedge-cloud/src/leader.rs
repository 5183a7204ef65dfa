//! Leader election among cloudcore replicas that share one Kubernetes API: a coordination.k8s.io
//! Lease (`kubeedge/cloudcore`, upstream CloudCore HA's lock) that one replica holds at a time and
//! renews every [`LeaderConfig::renew`]; another takes it over once it has not been renewed for
//! [`LeaderConfig::duration`]. Work that must happen once for the whole fleet (marking silent nodes
//! `Ready=Unknown`) runs on the holder only. Writes are optimistic (resourceVersion), so two
//! replicas that see an expired lease at once cannot both take it.
//!
//! Expiry compares the lease's `renewTime` with this replica's clock, so replicas' clocks must
//! agree to well within `duration` (NTP), as they must for Kubernetes' own leader election of
//! kube-controller-manager.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Where the lease is and who this replica is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaderConfig {
    /// The lease's namespace. Default `kubeedge` (made if missing).
    pub namespace: String,
    /// The lease's name. Default `cloudcore`.
    pub name: String,
    /// This replica's identity (`holderIdentity`): unique among the replicas.
    pub identity: String,
    /// How long a lease not renewed stays held. Default 15 s (Kubernetes' default).
    pub duration: Duration,
    /// How often the holder renews it (and others look at it). Default 2 s.
    pub renew: Duration,
}

impl LeaderConfig {
    /// Defaults for replica `identity`.
    pub fn new(identity: impl Into<String>) -> LeaderConfig {
        LeaderConfig {
            namespace: "kubeedge".into(),
            name: "cloudcore".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew: Duration::from_secs(2),
        }
    }
}

/// Whether this replica leads now. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// Leading always: a cloud without replicas (no election).
    pub fn always() -> Leadership {
        let (tx, leading) = watch::channel(true);
        // Nothing changes it: the receiver keeps the value once the sender is gone.
        drop(tx);
        Leadership { leading }
    }

    /// Whether this replica holds the lease now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Waits until leadership changes (forever for [`Leadership::always`]).
    pub async fn changed(&mut self) {
        if self.leading.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Starts taking part in the election; returns the leadership it gives and the task (abort it to
/// leave: the lease then expires and another replica takes it).
pub fn spawn(client: Client, config: LeaderConfig) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, leadership) = pending();
    (leadership, spawn_with(client, config, tx))
}

/// Not leading until the election started with [`spawn_with`] on the sender says so: for what
/// must know its leadership before the election can start (the embedded control plane's
/// controllers, before its API serves the election's lease).
pub(crate) fn pending() -> (watch::Sender<bool>, Leadership) {
    let (tx, leading) = watch::channel(false);
    (tx, Leadership { leading })
}

/// [`spawn`], telling `tx`.
pub(crate) fn spawn_with(
    client: Client,
    config: LeaderConfig,
    tx: watch::Sender<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(client, config, tx))
}

/// Milliseconds from `then` to `now`.
fn millis_since(now: Timestamp, then: Timestamp) -> i64 {
    now.as_millisecond() - then.as_millisecond()
}

async fn run(client: Client, config: LeaderConfig, tx: watch::Sender<bool>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    let namespaces: Api<Namespace> = Api::all(client);
    let mut last_renewed: Option<tokio::time::Instant> = None;
    loop {
        // The lease runs from when the renewal was sent, not from when it was answered.
        let sent = tokio::time::Instant::now();
        let outcome = attempt(&leases, &namespaces, &config).await;
        let leading = match outcome {
            Ok(held) => {
                last_renewed = held.then_some(sent);
                held
            }
            Err(e) => {
                // The API cannot be reached: keep leading only while the lease is surely ours.
                tracing::warn!(error = %kubeedge_core::error_chain(&e), "leader election: the lease cannot be read or written");
                last_renewed.is_some_and(|t| t.elapsed() < config.duration)
            }
        };
        tx.send_if_modified(|now| {
            if *now == leading {
                return false;
            }
            tracing::info!(
                identity = %config.identity,
                leading,
                "leader election: {}",
                if leading { "leading" } else { "not leading" }
            );
            *now = leading;
            true
        });
        tokio::time::sleep(config.renew).await;
    }
}

/// Creates namespace `name` unless it exists.
pub(crate) async fn ensure_namespace(
    namespaces: &Api<Namespace>,
    name: &str,
) -> Result<(), kube::Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// One round: takes or renews the lease if it may. Returns whether this replica holds it.
async fn attempt(
    leases: &Api<Lease>,
    namespaces: &Api<Namespace>,
    config: &LeaderConfig,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let duration_secs = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = leases.get_opt(&config.name).await? else {
        ensure_namespace(namespaces, &config.namespace).await?;
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match leases.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    if !mine {
        let held_for = spec
            .lease_duration_seconds
            .map_or(config.duration.as_millis() as i64, |s| i64::from(s) * 1000);
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let expired = spec.holder_identity.as_deref().unwrap_or("").is_empty()
            || renewed.is_none_or(|t| millis_since(now, t) > held_for);
        if !expired {
            return Ok(false);
        }
        tracing::info!(
            previous = spec.holder_identity.as_deref().unwrap_or(""),
            identity = %config.identity,
            "leader election: the lease expired, taking it"
        );
        spec.holder_identity = Some(config.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(duration_secs);
    // The resourceVersion read above makes this a compare-and-swap.
    match leases
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
