//! Simulated edge nodes: each a real mutual-TLS WebSocket to cloudhub speaking the real sync
//! protocol, with an in-memory store.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kubeedge_core::message::{Message, Operation, Route, names};
use kubeedge_core::pki::Ca;
use kubeedge_core::sync::edge;
use kubeedge_core::transport::{driver, tls, ws};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};

use super::Error;

/// What the simulated edges tell the harness.
pub enum Report {
    /// The node's registration (its Node uplink) was answered.
    Registered {
        /// When.
        at: Instant,
    },
    /// The node's connection to replica `replica` (index into [`Behaviour::urls`]) was
    /// established.
    Connected {
        /// Index of the node.
        node: usize,
        /// Index of the replica.
        replica: usize,
        /// When.
        at: Instant,
    },
    /// An object change reached the edge.
    Applied {
        /// Index of the node.
        node: usize,
        /// Edge key of the object.
        key: String,
        /// Its version.
        version: Option<u64>,
        /// Size of the message as JSON.
        bytes: usize,
        /// When.
        at: Instant,
    },
}

/// One simulated edge's identity and store.
pub struct Edge {
    /// Node name.
    pub name: String,
    ip: IpAddr,
    tls: Arc<rustls::ClientConfig>,
    inventory: Mutex<BTreeMap<String, Option<u64>>>,
}

/// How the simulated edges behave.
#[derive(Clone)]
pub struct Behaviour {
    /// cloudhub's URL at each replica (one without replicas).
    pub urls: Arc<[String]>,
    /// Nodes `0..primary_first` prefer the first replica; the others spread over the rest (or
    /// over all of them when this is zero). A node whose preferred replica cannot be dialled
    /// tries the others in an order that spreads too.
    pub primary_first: usize,
    /// Where reports go.
    pub reports: mpsc::UnboundedSender<Report>,
    /// A change drops every connection (they dial again with their inventory).
    pub storms: watch::Receiver<u64>,
    /// Dials at once.
    pub dials: Arc<Semaphore>,
    /// Time a commit of the store takes: zero acks each object at once; otherwise a commit takes
    /// everything that arrived before it started and acks it when done, and what arrived while it
    /// ran goes into the next one (group commit).
    pub commit: Duration,
    /// Whether pods the edge receives are reported Running and Ready (as a kubelet would once
    /// their containers start), with the node's source address as their IP.
    pub run_pods: bool,
}

impl Behaviour {
    /// Edges dialing `url` (one replica), `dials` at once, with store commits of `commit`; beside it, the
    /// receiver of their reports and the sender whose every change starts a reconnect storm.
    pub fn new(
        url: String,
        dials: usize,
        commit: Duration,
    ) -> (
        Behaviour,
        mpsc::UnboundedReceiver<Report>,
        watch::Sender<u64>,
    ) {
        let (reports, received) = mpsc::unbounded_channel();
        let (storm, storms) = watch::channel(0);
        let behaviour = Behaviour {
            urls: Arc::from(vec![url]),
            primary_first: 0,
            reports,
            storms,
            dials: Arc::new(Semaphore::new(dials)),
            commit,
            run_pods: false,
        };
        (behaviour, received, storm)
    }
}

impl Behaviour {
    /// The replicas node `idx` dials, in order: its preferred one, then the others rotated by the
    /// node's index (so that the nodes of a replica that died spread over the survivors).
    pub fn order(&self, idx: usize) -> Vec<usize> {
        let n = self.urls.len();
        let first = if n <= 1 || idx < self.primary_first {
            0
        } else if self.primary_first > 0 {
            1 + idx % (n - 1)
        } else {
            idx % n
        };
        let mut others: Vec<usize> = (0..n).filter(|&r| r != first).collect();
        if !others.is_empty() {
            let k = idx % others.len();
            others.rotate_left(k);
        }
        std::iter::once(first).chain(others).collect()
    }
}

/// The source address of node `i`: 127.x.y.z, avoiding .0 and .255 in the last octet.
pub fn source_ip(i: usize) -> IpAddr {
    let n = i as u32;
    let z = (n % 250) + 2;
    let y = (n / 250) % 250 + 1;
    let x = (n / 62_500) % 250 + 1;
    IpAddr::V4(Ipv4Addr::new(127, x as u8, y as u8, z as u8))
}

/// Identities for nodes `names`, signed with `ca` (as `keadm join` would get them), on blocking
/// threads.
pub async fn edges(ca: Arc<Ca>, names: Vec<String>) -> Result<Vec<Arc<Edge>>, Error> {
    edges_at(ca, names.into_iter().enumerate().collect()).await
}

/// [`edges`] for nodes given with their fleet-wide index (which picks the source address).
pub async fn edges_at(ca: Arc<Ca>, names: Vec<(usize, String)>) -> Result<Vec<Arc<Edge>>, Error> {
    let mut out = Vec::with_capacity(names.len());
    let chunks: Vec<Vec<(usize, String)>> = names.chunks(256).map(|c| c.to_vec()).collect();
    for chunk in chunks {
        let ca = ca.clone();
        let made = tokio::task::spawn_blocking(move || -> Result<Vec<Edge>, String> {
            chunk
                .into_iter()
                .map(|(i, name)| {
                    let id = ca
                        .issue_node(&name, Duration::from_secs(86_400), SystemTime::now())
                        .map_err(|e| e.to_string())?;
                    let tls = tls::client_config(&ca.cert(), id.chain(), id.private_key())
                        .map_err(|e| e.to_string())?;
                    Ok(Edge {
                        name,
                        ip: source_ip(i),
                        tls,
                        inventory: Mutex::default(),
                    })
                })
                .collect()
        })
        .await??;
        out.extend(made.into_iter().map(Arc::new));
    }
    Ok(out)
}

fn registration(name: &str) -> Message {
    Message::new(
        "",
        0,
        Route::new("edged", names::RESOURCE_GROUP, Operation::Insert, format!("null/node/{name}")),
    )
    .with_resource_version("1")
    .with_content(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": ""}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}))
}

/// The node status an edge reports on reconnecting: Ready (upstream's `nodepatch`).
fn ready_again(name: &str) -> Message {
    let now = kubeedge_core::store::rfc3339(SystemTime::now());
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "KubeletReady", "lastHeartbeatTime": now}]}});
    status_patch(format!("null/nodepatch/{name}"), &patch)
}

/// A status patch as an edge sends it: upstream's `*patch` resources carry the patch as a JSON
/// string.
fn status_patch(resource: String, patch: &serde_json::Value) -> Message {
    Message::new(
        "",
        0,
        Route::new("edged", names::RESOURCE_GROUP, Operation::Patch, resource),
    )
    .with_content(json!(patch.to_string()))
}

/// The status report of a pod that has started (`None` if it is already reported Running).
fn running(pod: &serde_json::Value, ip: IpAddr) -> Option<Message> {
    if pod["status"]["phase"] == "Running" {
        return None;
    }
    let ns = pod["metadata"]["namespace"].as_str()?;
    let name = pod["metadata"]["name"].as_str()?;
    let now = kubeedge_core::store::rfc3339(SystemTime::now());
    let containers: Vec<serde_json::Value> = pod["spec"]["containers"]
        .as_array()?
        .iter()
        .map(|c| {
            json!({"name": c["name"], "image": c["image"], "ready": true, "restartCount": 0,
                        "started": true, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    let patch = json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
        "hostIP": ip.to_string(), "startTime": now, "containerStatuses": containers,
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now},
                       {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}]}});
    Some(status_patch(format!("{ns}/podpatch/{name}"), &patch))
}

/// One simulated edge, forever: dial, sync, ack; a storm drops the connection and it dials again
/// with its inventory.
pub async fn run_edge(idx: usize, edge: Arc<Edge>, mut b: Behaviour) {
    let mut registered = false;
    let order = b.order(idx);
    // Where the next dial goes: the preferred replica after a connection ended, the next one
    // after a failed dial.
    let mut at = 0;
    loop {
        let replica = order[at % order.len()];
        let mut config =
            ws::ClientConfig::new(b.urls[replica].clone(), edge.name.clone(), edge.tls.clone());
        config.local_ip = Some(edge.ip);
        let conn = {
            let _permit = b.dials.acquire().await;
            ws::connect(&config).await
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                at += 1;
                // Each replica once without waiting; then wait between rounds.
                if at % order.len() == 0 {
                    eprintln!("{}: {}", edge.name, kubeedge_core::error_chain(&e));
                    tokio::time::sleep(Duration::from_millis(500 + (idx % 500) as u64)).await;
                }
                continue;
            }
        };
        at = 0;
        let _ = b.reports.send(Report::Connected {
            node: idx,
            replica,
            at: Instant::now(),
        });
        let inventory: Vec<(String, Option<u64>)> = edge
            .inventory
            .lock()
            .map(|i| i.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut session = edge::Session::new(
            edge::Config::default(),
            inventory,
            driver::random_seed(),
            driver::wall_clock(),
            driver::now(),
        );
        let (handle, mut pump) = driver::channel::<edge::Session>(64);
        let (events_tx, events) = mpsc::channel(256);
        let app = tokio::spawn(app(
            idx,
            edge.clone(),
            handle,
            events,
            b.clone(),
            !registered,
        ));
        // Boxed: the drive is in this future's state only while it runs.
        let drive = Box::pin(pump.drive(conn, &mut session, &events_tx));
        let dropped = tokio::select! {
            _ = drive => false,
            _ = b.storms.changed() => true,
        };
        drop(events_tx);
        drop(pump);
        if let Ok(r) = app.await {
            registered |= r;
        }
        if !dropped {
            tokio::time::sleep(Duration::from_millis(200 + (idx % 300) as u64)).await;
        }
    }
}

/// The edge's application side for one connection: stores, acks (at once or in group commits),
/// reports. Returns whether the node's registration was answered.
async fn app(
    idx: usize,
    edge: Arc<Edge>,
    handle: driver::Handle<edge::Session>,
    mut events: mpsc::Receiver<edge::Event>,
    b: Behaviour,
    register: bool,
) -> bool {
    let (reports, commit) = (b.reports, b.commit);
    // Registration the first time; afterwards the status report an edgecore sends on every
    // reconnect (a node the cloud marked Unknown meanwhile turns Ready with it).
    let m = if register {
        registration(&edge.name)
    } else {
        ready_again(&edge.name)
    };
    let _ = handle
        .exec(move |s, _| {
            let _ = s.enqueue_uplink(m);
        })
        .await;
    let (acks, mut to_commit) = mpsc::unbounded_channel::<edge::ApplyToken>();
    // Only with a commit time: at zero every object is acked as it arrives.
    let committer = (!commit.is_zero()).then(|| {
        let handle = handle.clone();
        tokio::spawn(async move {
            while let Some(first) = to_commit.recv().await {
                // A commit takes what arrived before it started; what arrives while it runs
                // waits for the next one.
                let mut batch = vec![first];
                while let Ok(t) = to_commit.try_recv() {
                    batch.push(t);
                }
                tokio::time::sleep(commit).await;
                if handle
                    .exec(move |s, now| s.persisted(now, batch))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    });
    let mut was_registered = false;
    while let Some(ev) = events.recv().await {
        match ev {
            edge::Event::Apply {
                token,
                key,
                version,
                deleted,
                message,
            } => {
                let bytes = message.to_json().len();
                // As an edgecore: its own Node marked not Ready while it is connected is
                // contradicted by a status report.
                if !deleted
                    && key.split('/').nth(1) == Some("node")
                    && message.content["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] != "True")
                {
                    let m = ready_again(&edge.name);
                    let _ = handle
                        .exec(move |s, _| {
                            let _ = s.enqueue_uplink(m);
                        })
                        .await;
                }
                if b.run_pods && !deleted && key.split('/').nth(1) == Some("pod") {
                    let status = running(&message.content, edge.ip);
                    if let Some(m) = status {
                        let _ = handle
                            .exec(move |s, _| {
                                let _ = s.enqueue_uplink(m);
                            })
                            .await;
                    }
                }
                if let Ok(mut inv) = edge.inventory.lock() {
                    if deleted {
                        inv.remove(&key);
                    } else {
                        inv.insert(key.clone(), version);
                    }
                }
                let _ = reports.send(Report::Applied {
                    node: idx,
                    key,
                    version,
                    bytes,
                    at: Instant::now(),
                });
                if commit.is_zero() {
                    let _ = handle.exec(move |s, now| s.persisted(now, [token])).await;
                } else {
                    let _ = acks.send(token);
                }
            }
            edge::Event::UplinkAcked { key, .. } if key.contains("/node/") && !was_registered => {
                was_registered = true;
                let _ = reports.send(Report::Registered { at: Instant::now() });
            }
            _ => {}
        }
    }
    if let Some(c) = committer {
        c.abort();
    }
    was_registered
}
