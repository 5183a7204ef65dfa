//! edgehub: dials cloudhub (mTLS WebSocket), keeps one [`edge::Session`] over one connection after
//! another, persists what the cloud sends before acking it, and carries status up through the
//! durable queue.
//!
//! * Reconnects with exponential backoff (1 s doubling to 30 s by default) and ±50 % jitter, so
//!   that a fleet does not reconnect in lockstep after a cloud restart.
//! * The certificate files are read at every dial, so a renewed certificate is used at once.
//! * Changes are persisted in groups: whatever arrived while the previous group committed goes in
//!   the next transaction (one fsync for up to 256 changes), then all of them are acked.
//! * [`EdgeHub::report`] stores a status message in the durable queue first, then hands it to the
//!   session; the entry leaves the queue when the cloud answers. After a restart, whatever is
//!   still queued is sent again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::sync::edge;
use kubeedge_core::transport::driver::{self, Handle};
use kubeedge_core::transport::ws;
use tokio::sync::mpsc;

use crate::Error;
use crate::bootstrap::CertFiles;
use crate::metastore::{Change, MetaStore};

/// A status message from the node's own modules (`edged`) for [`EdgeHub::report`]: `operation` on
/// `resource` (`<ns>/podpatch/<name>`, `null/node/<name>`, ...) carrying `content`.
pub fn status_message(
    operation: Operation,
    resource: impl Into<String>,
    content: serde_json::Value,
) -> Message {
    Message::new(
        "",
        0,
        Route::new("edged", names::RESOURCE_GROUP, operation, resource),
    )
    .with_content(content)
}

/// Most changes persisted in one transaction.
const MAX_GROUP: usize = 256;
/// Delay before a status update the cloud could not take (429, 5xx) goes again.
const UPLINK_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// edgehub settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EdgeHubConfig {
    /// This node's name.
    pub node: String,
    /// cloudhub's URL, `wss://host:port`.
    pub cloud_url: String,
    /// Further cloudhub URLs of the same cloud (cloudcore replicas): see [`replica_order`].
    pub cloud_replicas: Vec<String>,
    /// The node's certificate files.
    pub certs: CertFiles,
    /// Sync session settings (keepalive, windows, ...).
    pub session: edge::Config,
    /// First reconnect delay. Default 1 s.
    pub backoff_min: Duration,
    /// Longest reconnect delay. Default 30 s.
    pub backoff_max: Duration,
    /// Offer the kubeedge-rs extensions (an upstream cloud ignores the offer). Default true.
    pub offer_extensions: bool,
}

impl EdgeHubConfig {
    /// Defaults for `node` dialling `cloud_url` with the identity in `certs`.
    pub fn new(node: impl Into<String>, cloud_url: impl Into<String>, certs: CertFiles) -> Self {
        EdgeHubConfig {
            node: node.into(),
            cloud_url: cloud_url.into(),
            cloud_replicas: Vec::new(),
            certs,
            session: edge::Config::default(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            offer_extensions: true,
        }
    }
}

/// What the cloud last said about this node's Lease (see [`EdgeHub::lease_state`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LeaseState {
    /// No answer yet: renew with an update (a kubeedge-rs cloud creates a missing lease).
    #[default]
    Unknown,
    /// The cloud has the lease at this resourceVersion: renew from it.
    Version(String),
    /// The cloud has no lease (404, as an upstream cloud answers an update of a missing one):
    /// create it.
    Missing,
    /// The renewal raced another write (409): read the lease again before the next renewal.
    Stale,
}

/// A running edgehub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EdgeHub {
    handle: Handle<edge::Session>,
    store: MetaStore,
    seq: Arc<AtomicU64>,
    connected: Arc<AtomicBool>,
    /// Connections made so far (changes on every (re)connect).
    connections: Arc<tokio::sync::watch::Sender<u64>>,
    redial: Arc<tokio::sync::Notify>,
    lease: Arc<std::sync::Mutex<LeaseState>>,
}

/// The order in which `node` dials cloudhub `urls` (cloudcore replicas): by rendezvous hashing of
/// the node's name with each URL, so each node has its own stable first choice, a fleet spreads
/// evenly over the replicas, and when one replica goes only its nodes move (each to its own
/// second choice). Duplicates are dropped.
pub fn replica_order(node: &str, urls: &[String]) -> Vec<String> {
    // FNV-1a, 64 bit: stable across Rust versions and platforms, unlike the std hasher.
    let score = |url: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in node.bytes().chain([0]).chain(url.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    let mut order: Vec<String> = Vec::new();
    for url in urls {
        if !order.contains(url) {
            order.push(url.clone());
        }
    }
    order.sort_by_key(|u| std::cmp::Reverse(score(u)));
    order
}

/// `d` ± 50 %.
fn jitter(d: Duration) -> Duration {
    let r = driver::random_seed() % 1000;
    d.mul_f64(0.5 + r as f64 / 1000.0)
}

impl EdgeHub {
    /// Starts edgehub over `store`: the session starts from the store's inventory and queue.
    /// Returns the hub and its tasks (abort them to stop).
    pub fn start(
        config: EdgeHubConfig,
        store: MetaStore,
    ) -> Result<(EdgeHub, Vec<tokio::task::JoinHandle<()>>), Error> {
        config
            .session
            .validate()
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut session = edge::Session::new(
            config.session.clone(),
            store.inventory()?,
            driver::random_seed(),
            driver::wall_clock(),
            driver::now(),
        );
        for m in store.queued_uplinks()? {
            if session.enqueue_uplink(m).is_err() {
                break;
            }
        }
        let (handle, pump) = driver::channel::<edge::Session>(1024);
        let (events_tx, events) = mpsc::channel(4096);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let hub = EdgeHub {
            handle,
            store,
            // Sequence numbers of status updates: above anything an earlier run used.
            seq: Arc::new(AtomicU64::new(unix_ms.saturating_mul(1000))),
            connected: Arc::new(AtomicBool::new(false)),
            connections: Arc::new(tokio::sync::watch::Sender::new(0)),
            redial: Arc::new(tokio::sync::Notify::new()),
            lease: Arc::default(),
        };
        let worker = tokio::spawn(hub.clone().work(events));
        let link = tokio::spawn(hub.clone().link(config, session, pump, events_tx));
        Ok((hub, vec![worker, link]))
    }

    /// Whether a connection to the cloud is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// How many connections to the cloud were made so far: the receiver sees a change on every
    /// (re)connect (the node reports a fresh status then, so that the cloud sees it is back).
    pub fn connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connections.subscribe()
    }

    /// Drops the current connection and dials again (e.g. with a renewed certificate). What was
    /// in flight is resent on the new connection.
    pub fn redial(&self) {
        self.redial.notify_one();
    }

    /// What the cloud last answered about this node's Lease: how the next renewal is sent.
    pub fn lease_state(&self) -> LeaseState {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lease is being read again: until an answer says otherwise, renew as if nothing were
    /// known (so that a read that gets no usable answer does not stop renewals).
    pub fn lease_reread(&self) {
        let mut state = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if *state == LeaseState::Stale {
            *state = LeaseState::Unknown;
        }
    }

    /// Notes the cloud's answer to a lease write or query.
    fn lease_answer(&self, reply: &Message) {
        let content = &reply.content;
        let code = content["Err"]["ErrStatus"]["code"].as_u64();
        let next = match code {
            None => match content["Object"]["metadata"]["resourceVersion"].as_str() {
                Some(rv) if !rv.is_empty() => LeaseState::Version(rv.to_owned()),
                _ => return,
            },
            Some(404) => LeaseState::Missing,
            Some(409) => LeaseState::Stale,
            Some(_) => {
                // Read the lease again before the next renewal (e.g. an update without a
                // resourceVersion refused after a restart), rather than repeat what failed.
                tracing::warn!(answer = %content["Err"], "the cloud refused a lease renewal");
                LeaseState::Stale
            }
        };
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// The metastore.
    pub fn store(&self) -> &MetaStore {
        &self.store
    }

    /// Sends a status update (node status, pod status, lease, event) to the cloud: durable first,
    /// delivered when connected, dropped from the queue once the cloud answers. A newer update for
    /// the same resource replaces an older one not yet sent.
    pub async fn report(&self, mut message: Message) -> Result<(), Error> {
        message.header.resource_version = self.seq.fetch_add(1, Ordering::SeqCst).to_string();
        let store = self.store.clone();
        let queued = message.clone();
        tokio::task::spawn_blocking(move || store.queue_uplink(&queued))
            .await
            .map_err(|e| Error::Config(format!("persisting a status update: {e}")))??;
        // A full outbox keeps it in the durable queue; `Writable` brings it back.
        let _ = self
            .handle
            .exec(move |s, _| {
                let _ = s.enqueue_uplink(message);
            })
            .await;
        Ok(())
    }

    /// Sends the queued update for `key` again after [`UPLINK_RETRY`].
    fn retry_later(&self, key: String) {
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(UPLINK_RETRY).await;
            let store = hub.store.clone();
            let queued = tokio::task::spawn_blocking(move || store.queued_uplink(&key)).await;
            if let Ok(Ok(Some(m))) = queued {
                let _ = hub
                    .handle
                    .exec(move |s, _| {
                        let _ = s.enqueue_uplink(m);
                    })
                    .await;
            }
        });
    }

    async fn link(
        self,
        config: EdgeHubConfig,
        mut session: edge::Session,
        mut pump: driver::Pump<edge::Session>,
        events: mpsc::Sender<edge::Event>,
    ) {
        let mut backoff = config.backoff_min;
        let mut all = vec![config.cloud_url.clone()];
        all.extend(config.cloud_replicas.iter().cloned());
        let urls = replica_order(&config.node, &all);
        // Which of `urls` to dial next: every round starts from the node's first choice.
        let mut next = 0;
        loop {
            let url = &urls[next % urls.len()];
            let attempt = async {
                let tls = config.certs.client_config()?;
                let mut ws_config = ws::ClientConfig::new(url.clone(), config.node.clone(), tls);
                ws_config.offer_extensions = config.offer_extensions;
                Ok::<_, Error>(ws::connect(&ws_config).await?)
            };
            match attempt.await {
                Err(e) => {
                    next += 1;
                    if next < urls.len() {
                        tracing::warn!(cloud = %url, error = %crate::chain(&e), next = %urls[next], "edgehub: cannot reach this replica, trying the next");
                        continue;
                    }
                    next = 0;
                    tracing::warn!(cloud = %url, error = %crate::chain(&e), retry_in = ?backoff, "edgehub: cannot reach the cloud");
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(config.backoff_max);
                }
                Ok(conn) => {
                    tracing::info!(cloud = %url, negotiated = conn.peer().negotiated, "edgehub: connected");
                    next = 0;
                    backoff = config.backoff_min;
                    self.connected.store(true, Ordering::SeqCst);
                    self.connections.send_modify(|n| *n += 1);
                    let end = tokio::select! {
                        end = pump.drive(conn, &mut session, &events) => Some(end),
                        () = self.redial.notified() => None,
                    };
                    if session.is_connected() {
                        session.disconnected();
                    }
                    self.connected.store(false, Ordering::SeqCst);
                    let Some(end) = end else {
                        tracing::info!("edgehub: dialling again");
                        continue;
                    };
                    match end {
                        Ok(driver::End::Shutdown) => return,
                        Ok(end) => tracing::info!(?end, "edgehub: connection ended"),
                        Err(e) => {
                            tracing::warn!(error = %crate::chain(&e), "edgehub: connection failed")
                        }
                    }
                    tokio::time::sleep(jitter(config.backoff_min)).await;
                }
            }
        }
    }

    async fn work(self, mut events: mpsc::Receiver<edge::Event>) {
        while let Some(first) = events.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match events.try_recv() {
                    Ok(ev) => group.push(ev),
                    Err(_) => break,
                }
            }
            let mut changes = Vec::new();
            let mut tokens = Vec::new();
            let mut requeue = false;
            for ev in group {
                match ev {
                    edge::Event::Apply {
                        token,
                        key,
                        version,
                        deleted,
                        message,
                    } => {
                        // The session counts an object marked for deletion as deleted (a delete
                        // wins over older copies); the store keeps it until the cloud really
                        // deletes it, so that its pod is terminated gracefully.
                        let deleted = deleted
                            && (message.route.operation
                                == kubeedge_core::message::Operation::Delete
                                || !message.content.is_object());
                        changes.push(Change {
                            key,
                            version,
                            deleted,
                            object: message.content,
                        });
                        tokens.push(token);
                    }
                    edge::Event::UplinkAcked { key, seq, reply } => {
                        if let Some(reply) = &reply
                            && key.contains("/lease/")
                        {
                            self.lease_answer(reply);
                        }
                        // `{"Object", "Err"}` answers, or a bare `{"ErrStatus"}` (pod deletion).
                        let error = reply.as_ref().map(|r| {
                            if r.content["ErrStatus"].is_object() {
                                &r.content
                            } else {
                                &r.content["Err"]
                            }
                        });
                        if let Some(error) = error
                            && !error.is_null()
                            && !key.contains("/lease/")
                        {
                            let code = error["ErrStatus"]["code"].as_u64();
                            if matches!(code, Some(429) | Some(500..)) {
                                // The cloud could not apply it now (its API is down or busy):
                                // it stays queued and goes again later.
                                tracing::info!(key, answer = %error, "the cloud could not take a status update now; retrying");
                                self.retry_later(key);
                                continue;
                            }
                            tracing::warn!(key, answer = %error, "the cloud refused a status update");
                        }
                        let store = self.store.clone();
                        let done =
                            tokio::task::spawn_blocking(move || store.uplink_done(&key, seq)).await;
                        if let Ok(Err(e)) = done {
                            tracing::warn!(error = %e, "dropping an acked status from the queue");
                        }
                    }
                    edge::Event::Deliver(m) => {
                        tracing::debug!(resource = %m.route.resource, operation = %m.route.operation, "message outside reliable sync");
                    }
                    edge::Event::Writable => requeue = true,
                    _ => {}
                }
            }
            if !changes.is_empty() {
                self.persist(changes, tokens).await;
            }
            if requeue && let Ok(queued) = self.store.queued_uplinks() {
                let _ = self
                    .handle
                    .exec(move |s, _| {
                        for m in queued {
                            if s.enqueue_uplink(m).is_err() {
                                break;
                            }
                        }
                    })
                    .await;
            }
        }
    }

    /// Commits a group of changes, then acks the ones stored; the others are abandoned (the cloud
    /// resends them).
    async fn persist(&self, changes: Vec<Change>, tokens: Vec<edge::ApplyToken>) {
        let store = self.store.clone();
        let keys: Vec<String> = changes.iter().map(|c| c.key.clone()).collect();
        let result = tokio::task::spawn_blocking(move || store.apply(&changes)).await;
        let (stored, failed): (Vec<_>, Vec<_>) = match result {
            Ok(Ok(results)) => tokens
                .into_iter()
                .zip(results)
                .zip(keys)
                .partition(|((_, r), _)| r.is_ok()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the metastore cannot commit; changes stay unacked");
                let _ = self
                    .handle
                    .exec(move |s, _| {
                        for t in tokens {
                            s.abandon(t);
                        }
                    })
                    .await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "the metastore commit panicked");
                return;
            }
        };
        for ((_, r), key) in &failed {
            if let Err(e) = r {
                tracing::warn!(key, error = %e, "a change from the cloud cannot be stored");
            }
        }
        let stored: Vec<edge::ApplyToken> = stored.into_iter().map(|((t, _), _)| t).collect();
        let failed: Vec<edge::ApplyToken> = failed.into_iter().map(|((t, _), _)| t).collect();
        let _ = self
            .handle
            .exec(move |s, now| {
                s.persisted(now, stored);
                for t in failed {
                    s.abandon(t);
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::replica_order;

    #[test]
    fn replicas_are_spread_and_only_a_gone_ones_nodes_move() {
        let urls: Vec<String> = (1..=3).map(|i| format!("wss://cc{i}:10000")).collect();
        let firsts: Vec<String> = (0..3000)
            .map(|n| replica_order(&format!("node-{n}"), &urls)[0].clone())
            .collect();
        for url in &urls {
            let share = firsts.iter().filter(|f| *f == url).count();
            assert!((850..=1150).contains(&share), "{url}: {share} of 3000");
        }
        // Without cc3, a node keeps its replica unless it was on cc3.
        let two = &urls[..2];
        for (n, first) in firsts.iter().enumerate() {
            let now = replica_order(&format!("node-{n}"), two)[0].clone();
            if first != &urls[2] {
                assert_eq!(&now, first);
            }
        }
        assert_eq!(
            replica_order("n", &[urls[0].clone(), urls[0].clone()]),
            vec![urls[0].clone()]
        );
    }
}
