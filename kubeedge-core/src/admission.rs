//! Connection admission that holds under floods: what every listening server of the project
//! (cloudhub, its certificate server, the API server, the edge's metaserver, the MQTT broker)
//! accepts connections through.
//!
//! A TCP connection costs a server little until it does work for it; the costly part is the
//! handshake (TLS, HTTP headers, MQTT CONNECT), and a server that bounds handshakes in progress
//! can be starved by connections that never say anything. So a [`Gate`] splits the two:
//!
//! * **Waiting for the first bytes**: every accepted connection waits, in a small task of its own,
//!   until its client sends something (a ClientHello, a request line, a CONNECT), at most
//!   [`AdmissionConfig::first_bytes_timeout`]. Waiting connections take no handshake slot. They are
//!   bounded per source address and in all; when a bound is reached, the **oldest** waiting
//!   connection (of that source, else of all) is closed to make room, so a flood of idle
//!   connections keeps cycling its own connections and a genuine client, which speaks at once,
//!   always gets through.
//! * **Handshaking**: a connection that spoke takes a handshake slot (at most
//!   [`AdmissionConfig::max_handshakes`] in all and [`AdmissionConfig::max_handshakes_per_source`]
//!   per source) and is handed to the server with it ([`Admitted`]); the server drops the slot when
//!   its handshake is done and should bound the handshake in time.
//!
//! Every refusal is counted in the Prometheus counter `kubeedge_connections_refused_total` with
//! labels `server` and `reason`; admitted connections in `kubeedge_connections_admitted_total`
//! (see [`crate::metrics`]).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};

use crate::metrics::{self, Counter};

/// Admission settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// How long a new connection may stay silent. Default 5 s.
    pub first_bytes_timeout: Duration,
    /// Most connections waiting for their first bytes. Default 4096.
    pub max_waiting: usize,
    /// Most connections of one source address waiting for their first bytes. Default 64.
    pub max_waiting_per_source: usize,
    /// Most handshakes in progress. Default 256.
    pub max_handshakes: usize,
    /// Most handshakes of one source address in progress. Default 64.
    pub max_handshakes_per_source: usize,
    /// How long a connection that spoke waits for a handshake slot. Default 5 s.
    pub slot_wait: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            first_bytes_timeout: Duration::from_secs(5),
            max_waiting: 4096,
            max_waiting_per_source: 64,
            max_handshakes: 256,
            max_handshakes_per_source: 64,
            slot_wait: Duration::from_secs(5),
        }
    }
}

/// Why a connection was closed before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Its source had the most connections waiting, and this was the oldest.
    SourceWaitingLimit,
    /// The server had the most connections waiting, and this was the oldest.
    WaitingLimit,
    /// It said nothing within the first-bytes timeout.
    FirstBytesTimeout,
    /// Its source had the most handshakes in progress.
    SourceHandshakeLimit,
    /// No handshake slot came free in time.
    HandshakesBusy,
    /// The handshake itself failed (bad TLS, bad request) or timed out; counted by the server.
    HandshakeFailed,
}

impl Refusal {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::SourceWaitingLimit => "source_waiting_limit",
            Refusal::WaitingLimit => "waiting_limit",
            Refusal::FirstBytesTimeout => "first_bytes_timeout",
            Refusal::SourceHandshakeLimit => "source_handshake_limit",
            Refusal::HandshakesBusy => "handshakes_busy",
            Refusal::HandshakeFailed => "handshake_failed",
        }
    }

    const ALL: [Refusal; 6] = [
        Refusal::SourceWaitingLimit,
        Refusal::WaitingLimit,
        Refusal::FirstBytesTimeout,
        Refusal::SourceHandshakeLimit,
        Refusal::HandshakesBusy,
        Refusal::HandshakeFailed,
    ];
}

/// The counters of one server.
#[derive(Debug)]
struct Counters {
    admitted: Arc<Counter>,
    refused: Vec<(Refusal, Arc<Counter>)>,
}

impl Counters {
    fn new(server: &str) -> Counters {
        Counters {
            admitted: metrics::counter(
                "kubeedge_connections_admitted_total",
                "Connections that spoke in time and got a handshake slot.",
                &[("server", server)],
            ),
            refused: Refusal::ALL
                .into_iter()
                .map(|r| {
                    (
                        r,
                        metrics::counter(
                            "kubeedge_connections_refused_total",
                            "Connections closed before or during their handshake, by reason.",
                            &[("server", server), ("reason", r.label())],
                        ),
                    )
                })
                .collect(),
        }
    }

    fn refused(&self, why: Refusal) {
        if let Some((_, c)) = self.refused.iter().find(|(r, _)| *r == why) {
            c.inc();
        }
    }
}

/// Handshakes in progress per source.
type PerSource = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// A handshake slot: hold it until the handshake is done.
#[derive(Debug)]
pub struct HandshakeSlot {
    _global: OwnedSemaphorePermit,
    source: IpAddr,
    per_source: PerSource,
    counters: Arc<Counters>,
}

impl HandshakeSlot {
    /// Counts a failed or timed-out handshake (then drop the slot).
    pub fn failed(&self) {
        self.counters.refused(Refusal::HandshakeFailed);
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// A connection that spoke, with its handshake slot.
#[derive(Debug)]
pub struct Admitted {
    /// The connection; its first bytes are still unread.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// Drop it when the handshake is done.
    pub slot: HandshakeSlot,
}

/// Accepts connections on a listener and hands out those that spoke (see the module docs).
/// Dropping it stops accepting and closes every connection still waiting.
#[derive(Debug)]
pub struct Gate {
    local: SocketAddr,
    admitted: mpsc::Receiver<Admitted>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connections waiting for their first bytes, oldest first.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    /// id → (source, the waiting task).
    live: HashMap<u64, (IpAddr, AbortHandle)>,
    /// Per source, ids oldest first.
    by_source: HashMap<IpAddr, VecDeque<u64>>,
    /// All ids oldest first (may hold ids no longer live; skipped).
    order: VecDeque<u64>,
}

impl Waiting {
    fn remove(&mut self, id: u64) -> Option<AbortHandle> {
        let (source, handle) = self.live.remove(&id)?;
        if let Some(q) = self.by_source.get_mut(&source) {
            q.retain(|i| *i != id);
            if q.is_empty() {
                self.by_source.remove(&source);
            }
        }
        if self.order.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.order.retain(|i| live.contains_key(i));
        }
        Some(handle)
    }

    fn oldest_of(&self, source: IpAddr) -> Option<u64> {
        self.by_source.get(&source).and_then(|q| q.front().copied())
    }

    fn oldest(&mut self) -> Option<u64> {
        while let Some(&id) = self.order.front() {
            if self.live.contains_key(&id) {
                return Some(id);
            }
            self.order.pop_front();
        }
        None
    }
}

impl Gate {
    /// Starts admitting connections from `listener` for the server named `server` (the counters'
    /// `server` label).
    pub fn new(
        server: &str,
        listener: TcpListener,
        config: AdmissionConfig,
    ) -> std::io::Result<Gate> {
        let local = listener.local_addr()?;
        let (tx, admitted) = mpsc::channel(64);
        let counters = Arc::new(Counters::new(server));
        let task = tokio::spawn(accept_loop(listener, config, counters, tx));
        Ok(Gate {
            local,
            admitted,
            task,
        })
    }

    /// The next connection that spoke; `None` once the gate has stopped.
    pub async fn accept(&mut self) -> Option<Admitted> {
        self.admitted.recv().await
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: AdmissionConfig,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Admitted>,
) {
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let slots = Arc::new(Semaphore::new(config.max_handshakes.max(1)));
    let per_source = PerSource::default();
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let source = peer.ip();
        // Make room: the oldest silent connection of this source, else of all, goes.
        let evicted = {
            let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
            let mut evicted = Vec::new();
            if w.by_source.get(&source).map_or(0, VecDeque::len)
                >= config.max_waiting_per_source.max(1)
                && let Some(id) = w.oldest_of(source)
                && let Some(h) = w.remove(id)
            {
                evicted.push((h, Refusal::SourceWaitingLimit));
            }
            if w.live.len() >= config.max_waiting.max(1)
                && let Some(id) = w.oldest()
                && let Some(h) = w.remove(id)
            {
                evicted.push((h, Refusal::WaitingLimit));
            }
            evicted
        };
        for (handle, why) in evicted {
            handle.abort();
            counters.refused(why);
        }
        let id = {
            let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
            let id = w.next_id;
            w.next_id += 1;
            id
        };
        let task = Admission {
            id,
            stream,
            peer,
            config: config.clone(),
            waiting: waiting.clone(),
            slots: slots.clone(),
            per_source: per_source.clone(),
            counters: counters.clone(),
            tx: tx.clone(),
        };
        // Registered under the lock the task takes first, so it is known before it can finish.
        let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
        let handle = tasks.spawn(task.run());
        w.live.insert(id, (source, handle));
        w.by_source.entry(source).or_default().push_back(id);
        w.order.push_back(id);
    }
}

/// One connection on its way in.
struct Admission {
    id: u64,
    stream: TcpStream,
    peer: SocketAddr,
    config: AdmissionConfig,
    waiting: Arc<Mutex<Waiting>>,
    slots: Arc<Semaphore>,
    per_source: PerSource,
    counters: Arc<Counters>,
    tx: mpsc::Sender<Admitted>,
}

impl Admission {
    async fn run(self) {
        let mut first = [0u8; 1];
        let spoke = tokio::time::timeout(
            self.config.first_bytes_timeout,
            self.stream.peek(&mut first),
        )
        .await;
        if self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.id)
            .is_none()
        {
            // Evicted meanwhile (its abort is on the way).
            return;
        }
        match spoke {
            Ok(Ok(n)) if n > 0 => {}
            // Closed or failed before saying anything: nothing to count.
            Ok(_) => return,
            Err(_) => {
                self.counters.refused(Refusal::FirstBytesTimeout);
                return;
            }
        }
        let source = self.peer.ip();
        {
            let mut map = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(source).or_insert(0);
            if *n >= self.config.max_handshakes_per_source.max(1) {
                drop(map);
                self.counters.refused(Refusal::SourceHandshakeLimit);
                return;
            }
            *n += 1;
        }
        // Counted for its source from here on: the slot's drop gives it back, also on the way out.
        let permit =
            tokio::time::timeout(self.config.slot_wait, self.slots.clone().acquire_owned()).await;
        let release = |per_source: &PerSource| {
            let mut map = per_source.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&source);
                }
            }
        };
        let Ok(Ok(permit)) = permit else {
            release(&self.per_source);
            self.counters.refused(Refusal::HandshakesBusy);
            return;
        };
        self.counters.admitted.inc();
        let admitted = Admitted {
            stream: self.stream,
            peer: self.peer,
            slot: HandshakeSlot {
                _global: permit,
                source,
                per_source: self.per_source,
                counters: self.counters,
            },
        };
        let _ = self.tx.send(admitted).await;
    }
}
