//! cloudhub: the WebSocket server edges dial (mutual TLS), one sync session per node.
//!
//! * A connection is admitted only if its client certificate names the node it claims
//!   (`CN=system:node:<node_id>`, `O=system:nodes`): a node can never speak for another.
//! * One long-lived task per node owns the node's [`cloud::Session`] (what the edge holds survives
//!   reconnects); a newer connection from the same node replaces the current one ("last connection
//!   wins"). Keepalive timeouts close the connection (the session decides, 30 s by default).
//! * At most `node_limit` nodes are connected at once; a new node beyond that is turned away.
//! * While connected, the node's share of objects ([`Index::desired`]) is kept in sync: a full
//!   resync on (re)connect, then every change the index reports. A slow edge back-pressures only
//!   its own task. Uplink requests run through [`Uplink`] concurrently (bounded per node) and are
//!   answered once applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kubeedge_core::admission::{AdmissionConfig, Admitted, Gate};
use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::pki;
use kubeedge_core::sync::cloud;
use kubeedge_core::transport::driver::{self, Handle, LastHeard};
use kubeedge_core::transport::ws::{self, Connection};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::index::{Entry, Index, Kind, Object, Stored, edge_key, meta};
use crate::uplink::Uplink;

/// cloudhub settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Most nodes connected at once. Default 1000 (upstream's Helm default).
    pub node_limit: usize,
    /// Per-node session settings (window, keepalive timeout, ...).
    pub session: cloud::Config,
    /// Uplink requests of one node handled at once. Default 16.
    pub uplink_concurrency: usize,
    /// Uplink requests of all nodes handled at once. Default 32. Each one in flight may hold its
    /// own connection to the API server (HTTP/1.1 carries one request at a time, and the client
    /// keeps idle connections), so this bounds those connections, and their buffers, however
    /// many nodes register or report at the same moment.
    pub api_concurrency: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            node_limit: 1000,
            session: cloud::Config::default(),
            uplink_concurrency: 16,
            api_concurrency: 32,
        }
    }
}

/// Whether a node is connected, and since when it is in that state.
#[derive(Debug)]
struct Presence {
    connected: AtomicBool,
    since: Mutex<Instant>,
}

impl Presence {
    fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// What a node acked: key → version (deletes remove the key).
type Acked = Arc<Mutex<HashMap<String, Option<u64>>>>;

struct Slot {
    /// Boxed: a channel allocates room for 32 entries up front, and a connection is large.
    conns: mpsc::Sender<Box<Connection>>,
    presence: Arc<Presence>,
    acked: Acked,
    /// When the node was last heard from (a connection admitted, or any frame).
    heard: LastHeard,
    /// The node's task (it owns the session and the live connection).
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    config: HubConfig,
    tls: ws::ServerConfig,
    index: Arc<Index>,
    uplink: Uplink,
    /// Shared by every node's uplinks: see [`HubConfig::api_concurrency`].
    api_slots: Arc<Semaphore>,
    started: Instant,
    nodes: Mutex<HashMap<String, Slot>>,
    /// Set by [`Hub::close`]: no more connections are admitted.
    closed: AtomicBool,
}

/// The hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connected", &self.connected_nodes())
            .finish()
    }
}

impl Hub {
    /// A hub serving `index`'s objects over `tls`, applying uplink requests through `uplink`.
    pub fn new(config: HubConfig, tls: ws::ServerConfig, index: Arc<Index>, uplink: Uplink) -> Hub {
        Hub {
            shared: Arc::new(Shared {
                api_slots: Arc::new(Semaphore::new(config.api_concurrency.max(1))),
                config,
                tls,
                index,
                uplink,
                started: driver::now(),
                nodes: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Accepts edges on `listener` until the returned future is dropped, through an admission
    /// [`Gate`] (`server="cloudhub"`): connections that stay silent never hold a handshake slot,
    /// so idle connections cannot keep edges from reconnecting; each handshake (TLS and WebSocket
    /// upgrade) is bounded by the session's handshake timeout.
    pub async fn serve(&self, listener: TcpListener) {
        self.serve_with(listener, AdmissionConfig::default()).await
    }

    /// [`Hub::serve`] with admission settings of one's own.
    pub async fn serve_with(&self, listener: TcpListener, admission: AdmissionConfig) {
        let mut gate = match Gate::new("cloudhub", listener, admission) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "cloudhub: cannot serve its listener");
                return;
            }
        };
        while let Some(admitted) = gate.accept().await {
            let hub = self.clone();
            tokio::spawn(async move {
                let Admitted { stream, peer, slot } = admitted;
                let accepted = ws::accept(stream, &hub.shared.tls).await;
                if accepted.is_err() {
                    slot.failed();
                }
                drop(slot);
                match accepted {
                    Ok(conn) => hub.admit(conn),
                    Err(e) => {
                        tracing::info!(peer = %peer, error = %e, "cloudhub: handshake failed")
                    }
                }
            });
        }
    }

    fn admit(&self, conn: Connection) {
        let peer = conn.peer();
        let node = peer.node_id.clone();
        let addr = peer.addr;
        let certified = peer
            .certificates
            .first()
            .map(|c| pki::node_name(c.as_ref()));
        match certified {
            Some(Ok(name)) if name == node && !node.is_empty() => {}
            other => {
                let found = match other {
                    Some(Ok(name)) => format!("a certificate for node {name:?}"),
                    Some(Err(e)) => e.to_string(),
                    None => "no certificate".into(),
                };
                tracing::warn!(peer = %addr, node, found, "cloudhub: refused a node that does not hold its certificate");
                return;
            }
        }
        if !self.shared.index.may_be_edge(&node) {
            tracing::warn!(peer = %addr, node, "cloudhub: refused a node of the cluster that is not an edge node");
            return;
        }
        let mut nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if self.shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let connected = nodes
            .values()
            .filter(|s| s.presence.connected.load(Ordering::SeqCst))
            .count();
        let known_and_up = nodes
            .get(&node)
            .is_some_and(|s| s.presence.connected.load(Ordering::SeqCst));
        if !known_and_up && connected >= self.shared.config.node_limit {
            tracing::warn!(peer = %addr, node, limit = self.shared.config.node_limit,
                "cloudhub: node limit reached, connection refused");
            return;
        }
        let slot = nodes.entry(node.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(1);
            let presence = Arc::new(Presence {
                connected: AtomicBool::new(false),
                since: Mutex::new(Instant::now()),
            });
            let acked = Acked::default();
            let heard = LastHeard::default();
            let task = tokio::spawn(node_task(
                self.shared.clone(),
                node.clone(),
                rx,
                presence.clone(),
                acked.clone(),
                heard.clone(),
            ));
            Slot {
                conns: tx,
                presence,
                acked,
                heard,
                task,
            }
        });
        // Mark it up now, so that the limit counts it before its task runs.
        slot.presence.set(true);
        slot.heard.mark(driver::now());
        let conns = slot.conns.clone();
        drop(nodes);
        tracing::info!(peer = %addr, node, "cloudhub: node connected");
        tokio::spawn(async move {
            let _ = conns.send(Box::new(conn)).await;
        });
    }

    /// Stops serving: every node's task ends and its connection closes (edges see the link go
    /// down and reconnect elsewhere or later); connections still in their handshake are refused.
    /// Stop [`Hub::serve`] too (drop its future).
    pub async fn close(&self) {
        for task in self.abort() {
            let _ = task.await;
        }
    }

    /// [`Hub::close`] without waiting for the tasks to end (for `Drop`).
    pub fn abort(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.shared.closed.store(true, Ordering::SeqCst);
        let mut nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .drain()
            .map(|(_, slot)| {
                slot.presence.set(false);
                slot.task.abort();
                slot.task
            })
            .collect()
    }

    /// Whether `node` has a live connection.
    pub fn is_connected(&self, node: &str) -> bool {
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(node)
            .is_some_and(|s| s.presence.connected.load(Ordering::SeqCst))
    }

    /// How long `node` has been without a connection (since this hub started if it never had one);
    /// `None` while it is connected.
    pub fn offline_for(&self, node: &str) -> Option<std::time::Duration> {
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        match nodes.get(node) {
            Some(s) if s.presence.connected.load(Ordering::SeqCst) => None,
            Some(s) => Some(
                s.presence
                    .since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed(),
            ),
            None => Some(self.shared.started.elapsed()),
        }
    }

    /// How long `node` has been silent: the time since its last frame or since its connection was
    /// admitted, whichever came last (since this hub started if it never connected). Unlike
    /// [`Hub::offline_for`], this grows on a half-open link while the connection still looks up.
    pub fn silent_for(&self, node: &str) -> std::time::Duration {
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let last = nodes
            .get(node)
            .and_then(|s| s.heard.get())
            .unwrap_or(self.shared.started);
        driver::now().saturating_duration_since(last)
    }

    /// What `node` has confirmed durable since this hub started: object key → version (an acked
    /// delete removes the key). Empty for a node never seen.
    pub fn acked(&self, node: &str) -> HashMap<String, Option<u64>> {
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .get(node)
            .map(|s| s.acked.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The nodes heard from within `within` ([`Hub::silent_for`] below it), connected now or
    /// not, sorted.
    pub fn heard_within(&self, within: std::time::Duration) -> Vec<String> {
        let now = driver::now();
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = nodes
            .iter()
            .filter(|(_, s)| {
                s.heard
                    .get()
                    .is_some_and(|at| now.saturating_duration_since(at) < within)
            })
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }

    /// The nodes connected now.
    pub fn connected_nodes(&self) -> Vec<String> {
        let nodes = self.shared.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<String> = nodes
            .iter()
            .filter(|(_, s)| s.presence.connected.load(Ordering::SeqCst))
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }
}

/// One node's lifetime in the hub: its session, driven over one connection after another.
async fn node_task(
    shared: Arc<Shared>,
    node: String,
    mut conns: mpsc::Receiver<Box<Connection>>,
    presence: Arc<Presence>,
    acked: Acked,
    heard: LastHeard,
) {
    let mut session = cloud::Session::new(
        node.clone(),
        shared.config.session.clone(),
        driver::random_seed(),
        driver::wall_clock(),
        driver::now(),
    );
    let (handle, pump) = driver::channel::<cloud::Session>(256);
    let mut pump = pump.with_last_heard(heard);
    let mut wake = shared.index.subscribe(&node);
    let mut next = conns.recv().await;
    while let Some(conn) = next.take() {
        presence.set(true);
        let addr = conn.peer().addr;
        let (events_tx, mut events) = mpsc::channel(1024);
        let mut worker = Worker {
            handle: handle.clone(),
            node: node.clone(),
            shared: shared.clone(),
            last: HashMap::new(),
            pending_deletes: HashMap::new(),
            synced: false,
            uplinks: Arc::new(Semaphore::new(shared.config.uplink_concurrency.max(1))),
            acked: acked.clone(),
        };
        let outcome = {
            // Boxed, so that this task's own future stays small between connections, and a
            // future pinned on the stack of an async fn is not kept twice in its state.
            let mut drive = Box::pin(pump.drive(*conn, &mut session, &events_tx));
            let mut run = Box::pin(worker.run(&mut events, &mut wake));
            tokio::select! {
                r = &mut drive => match r {
                    Ok(end) => format!("{end:?}"),
                    Err(e) => kubeedge_core::error_chain(&e),
                },
                () = &mut run => "worker stopped".to_owned(),
                c = conns.recv() => {
                    next = c;
                    "replaced by a newer connection".to_owned()
                }
            }
        };
        // A replaced drive was dropped before it could say so.
        if session.is_connected() {
            session.disconnected();
        }
        tracing::info!(node, peer = %addr, outcome, "cloudhub: connection ended");
        if next.is_none() {
            presence.set(false);
            next = conns.recv().await;
        }
    }
}

/// Keeps one connection's edge in sync and answers its requests.
struct Worker {
    handle: Handle<cloud::Session>,
    node: String,
    shared: Arc<Shared>,
    /// What we enqueued (and the session accepted) last: key → (version, object, kind).
    last: HashMap<String, (Option<u64>, Object, Kind)>,
    /// Deletes the session had no room for yet.
    pending_deletes: HashMap<String, (Option<u64>, Object, Kind)>,
    synced: bool,
    uplinks: Arc<Semaphore>,
    acked: Acked,
}

/// The cloud module upstream sends a kind from: devices and their models come from the device
/// controller (an upstream edge hands those to its device twin), the rest from the edge controller.
fn source_of(kind: Kind) -> &'static str {
    if matches!(kind, Kind::Device | Kind::DeviceModel) {
        names::DEVICECONTROLLER
    } else {
        names::EDGECONTROLLER
    }
}

/// How long an answer to an upstream edge's Node or Pod write waits for the controllers that
/// react to it.
const SETTLE_BEFORE_ANSWER: std::time::Duration = std::time::Duration::from_millis(300);

/// How long after answering a write to check that an upstream edge holds the newest copy.
const RESEND_AFTER_ANSWER: std::time::Duration = std::time::Duration::from_secs(2);

/// The Node or Pod in a write's answer (`{"Object": ..}`): kind, namespace, name, version.
fn answered_object(reply: &Value) -> Option<(Kind, String, String, Option<u64>)> {
    let obj = reply.get("Object")?;
    let kind = match obj.get("kind").and_then(Value::as_str) {
        Some("Node") => Kind::Node,
        Some("Pod") => Kind::Pod,
        _ => return None,
    };
    Some((
        kind,
        meta(obj, "namespace").to_owned(),
        meta(obj, "name").to_owned(),
        crate::index::version(obj),
    ))
}

fn upsert(key: &str, entry: &Entry, op: Operation) -> Message {
    let mut m = Message::new(
        "",
        0,
        Route::new(source_of(entry.kind), names::RESOURCE_GROUP, op, key),
    )
    .with_content(entry.object.value());
    if let Some(v) = entry.version {
        m = m.with_resource_version(v.to_string());
    }
    m
}

fn delete(key: &str, version: Option<u64>, last: Option<&Object>, kind: Kind) -> Message {
    let content = match last.map(|o| o.value()) {
        Some(obj) => json!({"apiVersion": obj["apiVersion"], "kind": obj["kind"],
            "metadata": {"name": meta(&obj, "name"), "namespace": meta(&obj, "namespace"),
                         "uid": meta(&obj, "uid")}}),
        None => Value::Null,
    };
    let mut m = Message::new(
        "",
        0,
        Route::new(
            source_of(kind),
            names::RESOURCE_GROUP,
            Operation::Delete,
            key,
        ),
    )
    .with_content(content);
    if let Some(v) = version {
        m = m.with_resource_version(v.to_string());
    }
    m
}

enum Change {
    Upsert(String, Entry, Operation),
    Delete(String, (Option<u64>, Object, Kind)),
}

impl Worker {
    async fn run(
        &mut self,
        events: &mut mpsc::Receiver<cloud::Event>,
        wake: &mut watch::Receiver<u64>,
    ) {
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        if self.on_event(ev).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                changed = wake.changed(), if self.synced => {
                    if changed.is_err() || self.sync_changes().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn on_event(&mut self, ev: cloud::Event) -> Result<(), driver::Stopped> {
        match ev {
            cloud::Event::ResyncNeeded => self.resync().await,
            cloud::Event::Writable => self.sync_changes().await,
            cloud::Event::Acked {
                key,
                version,
                deleted,
            } => {
                let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
                if deleted {
                    acked.remove(&key);
                } else {
                    acked.insert(key, version);
                }
                Ok(())
            }
            cloud::Event::Uplink { token, message } => {
                let Ok(permit) = self.uplinks.clone().acquire_owned().await else {
                    return Ok(());
                };
                let uplink = self.shared.uplink.clone();
                let api_slots = self.shared.api_slots.clone();
                let handle = self.handle.clone();
                let node = self.node.clone();
                let index = self.shared.index.clone();
                tokio::spawn(async move {
                    let reply = {
                        let _slot = api_slots.acquire().await;
                        uplink.handle(&node, &message).await
                    };
                    let Some(token) = token else {
                        return;
                    };
                    let mut reply = reply;
                    if let Some((kind, ns, name, _)) = reply.as_ref().and_then(answered_object) {
                        // An upstream edge's kubelet keeps the answer's object as its copy of
                        // its Node (or Pod): give the controllers that react to the write (the
                        // not-ready taints going once the node reports Ready) a moment, and
                        // answer with what they made of it.
                        let (tx, rx) = oneshot::channel();
                        let _ = handle
                            .exec(move |s, _| {
                                let _ = tx.send(!s.negotiated());
                            })
                            .await;
                        if rx.await.unwrap_or(false) {
                            tokio::time::sleep(SETTLE_BEFORE_ANSWER).await;
                            if let (Some(r), Some(current)) =
                                (reply.as_mut(), index.get(kind, &ns, &name))
                                && crate::index::version(&current)
                                    > crate::index::version(&r["Object"])
                            {
                                r["Object"] = current;
                            }
                        }
                    }
                    let answered = reply.as_ref().and_then(answered_object);
                    let _ = handle
                        .exec(move |s, now| s.complete_uplink(now, token, reply))
                        .await;
                    drop(permit);
                    // An upstream edge stores the object of a write's answer as its copy when
                    // its caller gets to it, which can be after a newer copy went down (the node
                    // then keeps the not-ready taints its own status report just ended): if the
                    // object has moved on since the answer, send it again a little later.
                    let Some((kind, ns, name, answered)) = answered else {
                        return;
                    };
                    tokio::time::sleep(RESEND_AFTER_ANSWER).await;
                    let _ = handle
                        .exec(move |s, _| {
                            if s.negotiated() {
                                return;
                            }
                            let Some(current) = index.stored(kind, &ns, &name) else {
                                return;
                            };
                            let version = current.version();
                            if version > answered {
                                let key = edge_key(kind, &ns, &name);
                                tracing::debug!(
                                    key,
                                    ?version,
                                    ?answered,
                                    "cloudhub: resending what moved on since an answer"
                                );
                                s.forget(&key);
                                let entry = Entry {
                                    kind,
                                    version,
                                    object: current,
                                };
                                let _ = s.enqueue(upsert(&key, &entry, Operation::Update));
                            }
                        })
                        .await;
                });
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// After (re)connecting: tell the session the whole share, send what the edge lacks.
    async fn resync(&mut self) -> Result<(), driver::Stopped> {
        let desired = self.shared.index.desired(&self.node);
        let versions: Vec<(String, Option<u64>)> = desired
            .iter()
            .map(|(k, e)| (k.clone(), e.version))
            .collect();
        let (tx, rx) = oneshot::channel();
        self.handle
            .exec(move |s, _| {
                let _ = tx.send(s.resync(versions));
            })
            .await?;
        let plan = rx.await.map_err(|_| driver::Stopped)?;
        let mut changes = Vec::new();
        for key in plan.send {
            if let Some(e) = desired.get(&key) {
                changes.push(Change::Upsert(key, e.clone(), Operation::Insert));
            }
        }
        for (key, version) in plan.delete {
            let kind = kind_of_key(&key);
            let (ns, name) = ns_name_of_key(&key);
            let exists = self.shared.index.contains(kind, ns, name);
            let version = if exists { None } else { version.map(|v| v + 1) };
            changes.push(Change::Delete(
                key,
                (version, Arc::new(Stored::new(&Value::Null)), kind),
            ));
        }
        self.last = desired
            .into_iter()
            .map(|(k, e)| (k, (e.version, e.object, e.kind)))
            .collect();
        self.pending_deletes.clear();
        self.synced = true;
        self.push(changes).await
    }

    /// Sends what changed in the node's share since the last call.
    async fn sync_changes(&mut self) -> Result<(), driver::Stopped> {
        if !self.synced {
            return Ok(());
        }
        let desired = self.shared.index.desired(&self.node);
        let mut changes = Vec::new();
        for (key, e) in &desired {
            match self.last.get(key) {
                Some((v, _, _)) if v.is_some() && *v == e.version => {}
                Some(_) => changes.push(Change::Upsert(key.clone(), e.clone(), Operation::Update)),
                None => changes.push(Change::Upsert(key.clone(), e.clone(), Operation::Insert)),
            }
        }
        let mut deletes = std::mem::take(&mut self.pending_deletes);
        for (key, held) in self.last.drain() {
            if !desired.contains_key(&key) {
                deletes.insert(key, held);
            }
        }
        for (key, (version, obj, kind)) in deletes {
            if desired.contains_key(&key) {
                continue;
            }
            let version = self.delete_version(kind, &obj, version);
            changes.push(Change::Delete(key, (version, obj, kind)));
        }
        self.last = desired
            .into_iter()
            .map(|(k, e)| (k, (e.version, e.object, e.kind)))
            .collect();
        self.push(changes).await
    }

    /// The version a delete of `obj` (last sent at `version`) carries. An object that still
    /// exists only left this node's share: no version, so that it can come back later at that
    /// same version. One that is gone was deleted after its last version: the delete carries the
    /// next one (the store's deletion version is at least that, and anything made later is
    /// newer), so that the edge cannot take it for a repeat of the last update it holds, which a
    /// graceful deletion's last update (deletionTimestamp set) already counts as a delete there.
    fn delete_version(&self, kind: Kind, obj: &Object, version: Option<u64>) -> Option<u64> {
        let obj = obj.value();
        let exists = self
            .shared
            .index
            .contains(kind, meta(&obj, "namespace"), meta(&obj, "name"));
        if exists { None } else { version.map(|v| v + 1) }
    }

    /// Hands changes to the session; what it has no room for is retried on `Writable`.
    async fn push(&mut self, changes: Vec<Change>) -> Result<(), driver::Stopped> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut messages = Vec::with_capacity(changes.len());
        for c in &changes {
            match c {
                Change::Upsert(key, e, op) => {
                    tracing::debug!(node = %self.node, key, version = ?e.version, %op, "cloudhub: queueing")
                }
                Change::Delete(key, (v, _, _)) => {
                    tracing::debug!(node = %self.node, key, version = ?v, "cloudhub: queueing a delete")
                }
            }
            messages.push(match c {
                Change::Upsert(key, e, op) => upsert(key, e, op.clone()),
                Change::Delete(key, (v, obj, kind)) => {
                    let obj = (!obj.is_null()).then_some(obj);
                    delete(key, *v, obj, *kind)
                }
            });
        }
        let memberships: Vec<Option<Message>> = changes.iter().map(membership).collect();
        let (tx, rx) = oneshot::channel();
        self.handle
            .exec(move |s, _| {
                let mut accepted = 0;
                // An upstream edge's device twin learns its devices from membership updates
                // (ours reads the Device objects themselves).
                let upstream = !s.negotiated();
                for (m, member) in messages.into_iter().zip(memberships) {
                    if let Some(member) = member.filter(|_| upstream) {
                        let _ = s.send(member);
                    }
                    if s.enqueue(m).is_err() {
                        break;
                    }
                    accepted += 1;
                }
                let _ = tx.send(accepted);
            })
            .await?;
        let accepted = rx.await.map_err(|_| driver::Stopped)?;
        for c in changes.into_iter().skip(accepted) {
            match c {
                // A new object: forget it was sent, the next pass sends it again.
                Change::Upsert(key, _, Operation::Insert) => {
                    self.last.remove(&key);
                }
                // A change of an object the edge holds: keep it known (so that leaving the share
                // still deletes it) but with no version, so that the next pass resends it.
                Change::Upsert(key, e, _) => {
                    self.last.insert(key, (None, e.object, e.kind));
                }
                Change::Delete(key, held) => {
                    self.pending_deletes.insert(key, held);
                }
            }
        }
        Ok(())
    }
}

/// The namespace and name of an edge key (`<ns>/<type>/<name>`; `""` for a cluster object's).
/// The membership update upstream's device controller sends (group `twin`, resource
/// `membership`, operation `update`) when a Device joins or leaves a node's share.
fn membership(change: &Change) -> Option<Message> {
    let (key, object, added) = match change {
        Change::Upsert(key, e, Operation::Insert) if e.kind == Kind::Device => {
            (key, Some(&e.object), true)
        }
        Change::Delete(key, (_, _, Kind::Device)) => (key, None, false),
        _ => return None,
    };
    let (ns, name) = ns_name_of_key(key);
    let device = json!({"id": format!("{ns}/{name}"), "name": name,
        "description": object.map(|o| o.value()).as_ref().and_then(|o| o["metadata"]["labels"]["description"].as_str()).unwrap_or("")});
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let event_id = format!("{:016x}", driver::random_seed());
    let (add, remove) = if added {
        (json!([device]), json!([]))
    } else {
        (json!([]), json!([device]))
    };
    Some(
        Message::new(
            "",
            0,
            Route::new(
                names::DEVICECONTROLLER,
                names::TWIN_GROUP,
                Operation::Update,
                "membership",
            ),
        )
        .with_content(json!({"event_id": event_id, "timestamp": now_ms,
                             "added_devices": add, "removed_devices": remove})),
    )
}

fn ns_name_of_key(key: &str) -> (&str, &str) {
    let mut parts = key.splitn(3, '/');
    let ns = parts.next().unwrap_or_default();
    let _ = parts.next();
    let name = parts.next().unwrap_or_default();
    (if ns == "null" { "" } else { ns }, name)
}

fn kind_of_key(key: &str) -> Kind {
    let t = key.split('/').nth(1).unwrap_or("");
    Kind::ALL
        .into_iter()
        .find(|k| k.edge_type() == t)
        .unwrap_or(Kind::Pod)
}
