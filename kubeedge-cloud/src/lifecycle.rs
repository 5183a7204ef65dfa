//! Node lifecycle: an edge node not heard from for longer than a grace period turns
//! `Ready=Unknown` (every condition it reported becomes Unknown, reason `NodeStatusUnknown`), as
//! the Kubernetes node lifecycle controller does. Its pods are left alone: no taints, no eviction
//! (edge pods keep running offline, and the edge reports their real state when it is back).
//!
//! With several cloudcore replicas, only the leader ([`crate::leader`]) marks nodes, and a node
//! counts as heard from when this replica heard it, when its Lease (`kube-node-lease`, renewed
//! through whichever replica holds its connection) was renewed within the grace period, or when
//! a live replica's record of the nodes it hears lists it. Each replica publishes that record,
//! ConfigMap `cloudcore-heard-<identity>` (label [`HEARD_LABEL`]) in the leader Lease's namespace,
//! every quarter of the grace (at most every 10 s), and within a second when a node arrives that
//! the last record did not list: one write per replica per period however many
//! nodes it holds, where the nodes' own Leases cost one write per node every 10 s (100,000 nodes:
//! 10,000 writes a second). A record lists the nodes the replica heard within the grace,
//! connected now or not, and one not renewed within the grace is ignored: a node gone silent
//! turns Unknown between one and two graces (plus a period) after it was last heard, unless it
//! speaks again through any replica. The leader deletes records left unrenewed for an hour. Every cloudcore that shares an API with
//! replicas must be one (`Config::replica`): one that is not would mark the nodes it does not
//! hear.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::controller::api_in;
use crate::hub::Hub;
use crate::index::{Index, Kind};
use crate::leader::{LeaderConfig, Leadership};

/// Label of the ConfigMaps in which replicas publish the nodes they hear.
pub const HEARD_LABEL: &str = "kubeedge.io/heard-nodes";

/// How long a replica's record left unrenewed is kept before the leader deletes it.
const RECORD_KEPT: Duration = Duration::from_secs(3600);

/// Reason set on conditions of a node that stopped reporting.
pub const REASON_UNKNOWN: &str = "NodeStatusUnknown";

/// The conditions to write for a node gone silent, or `None` if they already say so.
pub fn unknown_conditions(node: &Value, now: &str) -> Option<Value> {
    // Whatever the edge stored, only well-formed conditions are kept.
    let mut conditions: Vec<Value> = node["status"]["conditions"]
        .as_array()
        .map(|a| a.iter().filter(|c| c.is_object()).cloned().collect())
        .unwrap_or_default();
    if !conditions.iter().any(|c| c["type"] == "Ready") {
        conditions.push(json!({"type": "Ready"}));
    }
    let mut changed = false;
    for c in &mut conditions {
        if c["status"] != "Unknown" {
            changed = true;
            c["status"] = json!("Unknown");
            c["reason"] = json!(REASON_UNKNOWN);
            c["message"] =
                json!("The edge node has not reported for longer than its grace period.");
            c["lastTransitionTime"] = json!(now);
            if c["lastHeartbeatTime"].is_null() {
                c["lastHeartbeatTime"] = json!(now);
            }
        }
    }
    changed.then_some(Value::Array(conditions))
}

/// Checks every edge node every second, forever: a node silent for `grace` (no frame and no new
/// connection: its keepalives, lease renewals and status reports all count) turns Unknown, whether
/// or not its connection still looks up (a half-open link is noticed here, not only when the
/// session's keepalive timeout ends it). It turns Ready again when the edge reports its status,
/// which it does on every reconnect.
pub async fn run(
    client: Client,
    index: Arc<Index>,
    hub: Hub,
    grace: Duration,
    leadership: Leadership,
    replica: Option<LeaderConfig>,
) {
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Only replicas need the Leases and the records (a single cloudcore hears every node itself).
    let leases = replica.is_some().then(|| watch_leases(client.clone()));
    let mut records = replica.as_ref().map(|r| {
        tokio::spawn(publish_heard(client.clone(), hub.clone(), grace, r.clone()));
        Records::new(watch_records(client.clone(), &r.namespace))
    });
    let mut swept = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if !leadership.is_leader() {
            continue;
        }
        if let Some(r) = &mut records {
            r.refresh(grace);
            if swept.elapsed() >= Duration::from_secs(60) {
                swept = tokio::time::Instant::now();
                r.sweep(&client).await;
            }
        }
        // Heard from within the grace: by this replica, or (replicas) through its Lease or a
        // live replica's record.
        let heard = |name: &str| {
            hub.silent_for(name) < grace
                || lease_age(leases.as_ref(), name) < grace
                || records.as_ref().is_some_and(|r| r.heard.contains(name))
        };
        for name in index.edge_node_names() {
            let name = name.as_str();
            if heard(name) {
                continue;
            }
            let Some(node) = index.get(Kind::Node, "", name) else {
                continue;
            };
            let now = kubeedge_core::store::rfc3339(std::time::SystemTime::now());
            let Some(conditions) = unknown_conditions(&node, &now) else {
                continue;
            };
            // The edge may have spoken meanwhile: its own report wins.
            if heard(name) {
                continue;
            }
            let patch = json!({"status": {"conditions": conditions}});
            match api_in(&client, Kind::Node, "")
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(
                    node = name,
                    silent = ?hub.silent_for(name),
                    "node silent past its grace period: Ready=Unknown"
                ),
                Err(e) => tracing::warn!(node = name, error = %e, "marking a node unreachable"),
            }
        }
    }
}

/// The node Leases (`kube-node-lease`), kept current by a watch.
fn watch_leases(client: Client) -> Store<Lease> {
    kept_current(
        Api::namespaced(client, "kube-node-lease"),
        watcher::Config::default(),
        "watching node leases",
    )
}

/// A store of the objects `api` lists with `config`, kept current by a watch of its own (errors
/// are logged at debug level as `what`; the watch backs off and goes on).
fn kept_current<K>(api: Api<K>, config: watcher::Config, what: &'static str) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .applied_objects();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, "{what}");
            }
        }
    });
    reader
}

/// The name of replica `identity`'s record: `cloudcore-heard-` and the identity as a DNS label
/// (lower case; other characters as `-`; at most 253 characters).
pub fn heard_record_name(identity: &str) -> String {
    let id: String = identity
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    let mut name = format!("cloudcore-heard-{}", id.trim_matches(['-', '.']));
    name.truncate(253);
    name.trim_end_matches(['-', '.']).to_owned()
}

/// The record's body: the nodes this replica heard within the grace, sorted, one per line, and
/// when that was true.
fn heard_data(nodes: &[String], at: Timestamp) -> Value {
    json!({"renewTime": at.to_string(), "nodes": nodes.join("\n")})
}

/// Publishes this replica's record every quarter of the grace (at most every 10 s), forever.
async fn publish_heard(client: Client, hub: Hub, grace: Duration, replica: LeaderConfig) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &replica.namespace);
    let name = heard_record_name(&replica.identity);
    let period = (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
    // Checked every second (at most every period): a node that arrived since the last record
    // (one moving here from a replica that died) is published at once rather than at the next
    // period, since the dead replica's record stops counting a grace after its last renewal.
    let mut tick = tokio::time::interval(period.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let namespaces = Api::all(client);
    let mut warned = false;
    let mut published: HashSet<String> = HashSet::new();
    let mut published_at: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        let due = published_at.is_none_or(|at| at.elapsed() >= period);
        if !due && hub.connected_nodes().iter().all(|n| published.contains(n)) {
            continue;
        }
        // Connected or not: a node that just left counts as heard until its silence passes the
        // grace, as it would on a single cloudcore.
        let nodes = hub.heard_within(grace);
        published = nodes.iter().cloned().collect();
        published_at = Some(tokio::time::Instant::now());
        let data = heard_data(&nodes, Timestamp::now());
        let patch = json!({"data": data});
        let written = match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let record = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "namespace": replica.namespace,
                                 "labels": {HEARD_LABEL: "true"}},
                    "data": data});
                match serde_json::from_value::<ConfigMap>(record) {
                    Ok(cm) => {
                        let _ =
                            crate::leader::ensure_namespace(&namespaces, &replica.namespace).await;
                        api.create(&PostParams::default(), &cm).await.map(|_| ())
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "building this replica's heard-nodes record");
                        return;
                    }
                }
            }
            other => other.map(|_| ()),
        };
        match written {
            Ok(()) => warned = false,
            // Once per outage: the leader counts these nodes as heard until the grace ends.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(record = %name, error = %e, "publishing the nodes this replica hears");
            }
            Err(_) => {}
        }
    }
}

/// The replicas' records, kept current by a watch.
fn watch_records(client: Client, namespace: &str) -> Store<ConfigMap> {
    kept_current(
        Api::namespaced(client, namespace),
        watcher::Config::default().labels(HEARD_LABEL),
        "watching the replicas' heard-nodes records",
    )
}

/// The nodes live replicas' records list, rebuilt when a record changes or expires.
struct Records {
    store: Store<ConfigMap>,
    /// The live records the set was built from: name and resourceVersion.
    from: Vec<(String, String)>,
    heard: HashSet<String>,
}

impl Records {
    fn new(store: Store<ConfigMap>) -> Records {
        Records {
            store,
            from: Vec::new(),
            heard: HashSet::new(),
        }
    }

    /// How long ago `record` was renewed (`Duration::MAX` when it does not say).
    fn age(record: &ConfigMap) -> Duration {
        let Some(at) = record
            .data
            .as_ref()
            .and_then(|d| d.get("renewTime"))
            .and_then(|t| t.parse::<Timestamp>().ok())
        else {
            return Duration::MAX;
        };
        let ms = Timestamp::now().as_millisecond() - at.as_millisecond();
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// Rebuilds the set from the records renewed within `grace`, if they changed.
    fn refresh(&mut self, grace: Duration) {
        let mut live: Vec<(String, String, Arc<ConfigMap>)> = self
            .store
            .state()
            .into_iter()
            .filter(|r| Records::age(r) < grace)
            .map(|r| {
                let name = r.metadata.name.clone().unwrap_or_default();
                let rv = r.metadata.resource_version.clone().unwrap_or_default();
                (name, rv, r)
            })
            .collect();
        live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let from: Vec<(String, String)> = live
            .iter()
            .map(|(n, v, _)| (n.clone(), v.clone()))
            .collect();
        if from == self.from {
            return;
        }
        self.heard = live
            .iter()
            .filter_map(|(_, _, r)| r.data.as_ref()?.get("nodes"))
            .flat_map(|nodes| nodes.lines())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        self.from = from;
    }

    /// Deletes records left unrenewed for [`RECORD_KEPT`] (replicas gone for good).
    async fn sweep(&self, client: &Client) {
        for r in self.store.state() {
            if Records::age(&r) < RECORD_KEPT {
                continue;
            }
            let (Some(name), Some(ns)) = (&r.metadata.name, &r.metadata.namespace) else {
                continue;
            };
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(record = %name, "deleted a replica's stale heard-nodes record")
                }
                Err(e) => tracing::debug!(record = %name, error = %e, "deleting a stale record"),
            }
        }
    }
}

/// How long ago node `name`'s Lease was renewed (`Duration::MAX` without one, or without
/// `leases`).
fn lease_age(leases: Option<&Store<Lease>>, name: &str) -> Duration {
    let Some(lease) = leases.and_then(|l| l.get(&ObjectRef::new(name).within("kube-node-lease")))
    else {
        return Duration::MAX;
    };
    let Some(renewed) = lease.spec.as_ref().and_then(|s| s.renew_time.as_ref()) else {
        return Duration::MAX;
    };
    let ms = k8s_openapi::jiff::Timestamp::now().as_millisecond() - renewed.0.as_millisecond();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
