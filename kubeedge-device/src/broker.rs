//! The embedded MQTT broker: edgecore's event bus when no external broker is given (upstream's
//! internal mode, `tcp://127.0.0.1:1884`).
//!
//! MQTT 3.1.1 over TCP (the packet codec is rumqttc's): QoS 0 and 1 both ways (a QoS 2 publish is
//! taken and acknowledged as QoS 2 requires, then delivered at QoS 1), retained messages, `+` and
//! `#` wildcards, last wills, keep-alive, one session per client id (a second connection takes
//! the id over). Topics starting with `$` match only filters that name the `$` level, as MQTT
//! says; upstream's `$hw/events/...` topics live there. Sessions are clean: subscriptions end with
//! the connection (CONNACK says no session is present). No authentication: it listens on loopback
//! by default, for the processes of the node.
//!
//! Bad input closes that one connection with a log line and nothing else: a packet over the size
//! limit, a malformed packet, a publish to a wildcard topic, a first packet that is not CONNECT. A
//! client that does not read its messages loses the ones that do not fit its queue (counted in
//! the log), so that it cannot stall the others. Connections come in through an admission gate
//! (`server="mqtt"`, see `kubeedge_core::admission`): idle connections cannot starve clients.
//!
//! ```no_run
//! # async fn run() -> Result<(), kubeedge_device::Error> {
//! let broker = kubeedge_device::broker::Broker::start("127.0.0.1:0".parse().unwrap()).await?;
//! println!("event bus at {}", broker.url());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use kubeedge_core::admission::{AdmissionConfig, Admitted, Gate, HandshakeSlot};
use rumqttc::mqttbytes::{self, QoS};
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Error;

/// Largest packet accepted or sent (twin documents are a few KiB).
pub const MAX_PACKET: usize = 1024 * 1024;
/// Messages queued per client before new ones are dropped for it.
pub const CLIENT_QUEUE: usize = 1024;
/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `topic` matches `filter` (MQTT 3.1.1 §4.7): `+` one level, `#` the rest (and the
/// parent level); a topic starting with `$` is not matched by a filter starting with a wildcard.
pub fn topic_matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(l) if f == "+" || f == l => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

/// Whether `filter` is a valid subscription: `#` only as the whole last level, `+` only as a
/// whole level, not empty.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (*l == "#" && i == levels.len() - 1) || *l == "+" || (!l.contains('#') && !l.contains('+'))
    })
}

fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

struct Client {
    id: String,
    /// Told when a newer connection takes the id over.
    evicted: Arc<tokio::sync::Notify>,
    tx: mpsc::Sender<Packet>,
    filters: Vec<(String, QoS)>,
    next_pkid: u16,
    dropped: u64,
}

#[derive(Default)]
struct State {
    clients: HashMap<u64, Client>,
    retained: HashMap<String, Publish>,
}

impl State {
    /// Sends `publish` to every matching subscription, at the lower of the two QoS.
    fn route(&mut self, publish: &Publish) {
        for client in self.clients.values_mut() {
            let Some(granted) = client
                .filters
                .iter()
                .filter(|(f, _)| topic_matches(&publish.topic, f))
                .map(|(_, q)| *q)
                .max_by_key(|q| level(*q))
            else {
                continue;
            };
            let mut out = publish.clone();
            out.retain = false;
            out.dup = false;
            deliver(client, out, granted);
        }
    }
}

fn level(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn min_qos(a: QoS, b: QoS) -> QoS {
    if level(a) <= level(b) { a } else { b }
}

fn deliver(client: &mut Client, mut publish: Publish, granted: QoS) {
    publish.qos = min_qos(publish.qos, granted);
    publish.pkid = if publish.qos == QoS::AtMostOnce {
        0
    } else {
        client.next_pkid = client.next_pkid.checked_add(1).unwrap_or(1);
        client.next_pkid
    };
    if client.tx.try_send(Packet::Publish(publish)).is_err() {
        client.dropped += 1;
        if client.dropped.is_power_of_two() {
            tracing::warn!(client = %client.id, dropped = client.dropped, "MQTT client does not keep up; messages dropped");
        }
    }
}

/// A running broker; stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct Broker {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Broker {
    /// Stops accepting and waits until the listener is closed: its port is free when this
    /// returns (connected clients' sessions end with their connections).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Listens on `bind` (port 0 picks one) and serves until dropped.
    pub async fn start(bind: SocketAddr) -> Result<Broker, Error> {
        let listener = TcpListener::bind(bind).await.map_err(|source| Error::Io {
            step: format!("binding the MQTT broker to {bind}"),
            source,
        })?;
        let addr = listener.local_addr().map_err(|source| Error::Io {
            step: "reading the MQTT broker's address".into(),
            source,
        })?;
        let state = Arc::new(Mutex::new(State::default()));
        // Silent connections hold nothing; one that spoke holds a slot until its CONNECT is read.
        let mut gate =
            Gate::new("mqtt", listener, AdmissionConfig::default()).map_err(|source| {
                Error::Io {
                    step: "admitting MQTT connections".into(),
                    source,
                }
            })?;
        let task = tokio::spawn(async move {
            let ids = AtomicU64::new(1);
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    admitted = gate.accept() => match admitted {
                        Some(Admitted { stream, peer, slot }) => {
                            let id = ids.fetch_add(1, Ordering::Relaxed);
                            let state = state.clone();
                            connections.spawn(async move {
                                if let Err(e) = serve(id, stream, state, slot).await {
                                    tracing::info!(%peer, error = %e, "MQTT connection closed");
                                }
                            });
                        }
                        None => return,
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        tracing::info!(%addr, "embedded MQTT broker listening");
        Ok(Broker { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL for clients (`tcp://127.0.0.1:1884`).
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one packet, or `None` at a clean end of stream.
async fn read_packet(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, String> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(n)) => buf.reserve(n),
            Err(e) => return Err(format!("bad packet: {e}")),
        }
        if stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("reading: {e}"))?
            == 0
        {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("the connection ended inside a packet".into())
            };
        }
    }
}

async fn serve(
    id: u64,
    stream: TcpStream,
    state: Arc<Mutex<State>>,
    slot: HandshakeSlot,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, read_packet(&mut rd, &mut buf)).await;
    if !matches!(connect, Ok(Ok(Some(Packet::Connect(_))))) {
        slot.failed();
    }
    drop(slot);
    let connect = match connect {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(other))) => return Err(format!("first packet is not CONNECT: {other:?}")),
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no CONNECT in time".into()),
    };
    let client_id = if connect.client_id.is_empty() {
        format!("auto-{id}")
    } else {
        connect.client_id.clone()
    };
    let (tx, mut rx) = mpsc::channel::<Packet>(CLIENT_QUEUE);
    let evicted = Arc::new(tokio::sync::Notify::new());
    {
        let mut s = lock(&state);
        // One session per client id: the newer connection wins, the older one is closed.
        s.clients.retain(|_, c| {
            if c.id == client_id {
                c.evicted.notify_one();
            }
            c.id != client_id
        });
        s.clients.insert(
            id,
            Client {
                id: client_id.clone(),
                evicted: evicted.clone(),
                tx: tx.clone(),
                filters: Vec::new(),
                next_pkid: 0,
                dropped: 0,
            },
        );
    }
    let _ = tx.try_send(Packet::ConnAck(ConnAck::new(
        ConnectReturnCode::Success,
        false,
    )));
    let writer = tokio::spawn(async move {
        let mut out = BytesMut::with_capacity(4096);
        while let Some(p) = rx.recv().await {
            out.clear();
            if p.write(&mut out, MAX_PACKET).is_err() {
                continue;
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
    });
    // Ends when the client sends DISCONNECT (no will), or on any failure (the will is sent).
    let keep_alive = match connect.keep_alive {
        0 => None,
        k => Some(Duration::from_millis(u64::from(k) * 1500)),
    };
    let result = tokio::select! {
        r = session(id, &mut rd, &mut buf, &tx, &state, keep_alive) => r,
        _ = evicted.notified() => Err(format!("client id {client_id:?} taken over by a newer connection")),
    };
    if result.is_err()
        && let Some(will) = &connect.last_will
    {
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic.clone(),
            pkid: 0,
            payload: will.message.clone(),
        };
        publish_in(&state, publish);
    }
    lock(&state).clients.remove(&id);
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    result
}

fn publish_in(state: &Mutex<State>, publish: Publish) {
    let mut s = lock(state);
    if publish.retain {
        if publish.payload.is_empty() {
            s.retained.remove(&publish.topic);
        } else {
            s.retained.insert(publish.topic.clone(), publish.clone());
        }
    }
    s.route(&publish);
}

async fn session(
    id: u64,
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    tx: &mpsc::Sender<Packet>,
    state: &Mutex<State>,
    keep_alive: Option<Duration>,
) -> Result<(), String> {
    loop {
        let next = match keep_alive {
            Some(limit) => tokio::time::timeout(limit, read_packet(rd, buf))
                .await
                .map_err(|_| "keep-alive expired".to_owned())?,
            None => read_packet(rd, buf).await,
        };
        let packet = match next? {
            Some(p) => p,
            None => return Err("the connection closed without DISCONNECT".into()),
        };
        match packet {
            Packet::Publish(p) => {
                if !valid_topic(&p.topic) {
                    return Err(format!("publish to invalid topic {:?}", p.topic));
                }
                let ack = match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(p.pkid))),
                };
                let mut publish = p;
                publish.qos = min_qos(publish.qos, QoS::AtLeastOnce);
                publish_in(state, publish);
                if let Some(ack) = ack {
                    tx.send(ack).await.map_err(|_| "writer gone".to_owned())?;
                }
            }
            Packet::PubRel(r) => {
                tx.send(Packet::PubComp(PubComp::new(r.pkid)))
                    .await
                    .map_err(|_| "writer gone".to_owned())?;
            }
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
            Packet::Subscribe(sub) => {
                let mut codes = Vec::with_capacity(sub.filters.len());
                let mut retained = Vec::new();
                {
                    let mut s = lock(state);
                    let s = &mut *s;
                    let Some(client) = s.clients.get_mut(&id) else {
                        return Err("taken over by a newer connection".into());
                    };
                    for f in sub.filters {
                        if !valid_filter(&f.path) {
                            codes.push(SubscribeReasonCode::Failure);
                            continue;
                        }
                        let granted = min_qos(f.qos, QoS::AtLeastOnce);
                        codes.push(SubscribeReasonCode::Success(granted));
                        retained.extend(
                            s.retained
                                .values()
                                .filter(|p| topic_matches(&p.topic, &f.path))
                                .map(|p| (p.clone(), granted)),
                        );
                        client.filters.retain(|(existing, _)| *existing != f.path);
                        client.filters.push((f.path, granted));
                    }
                }
                tx.send(Packet::SubAck(SubAck::new(sub.pkid, codes)))
                    .await
                    .map_err(|_| "writer gone".to_owned())?;
                let mut s = lock(state);
                if let Some(client) = s.clients.get_mut(&id) {
                    for (p, granted) in retained {
                        deliver(client, p, granted);
                    }
                }
            }
            Packet::Unsubscribe(u) => {
                if let Some(client) = lock(state).clients.get_mut(&id) {
                    client.filters.retain(|(f, _)| !u.topics.contains(f));
                }
                tx.send(Packet::UnsubAck(UnsubAck::new(u.pkid)))
                    .await
                    .map_err(|_| "writer gone".to_owned())?;
            }
            Packet::PingReq => {
                tx.send(Packet::PingResp)
                    .await
                    .map_err(|_| "writer gone".to_owned())?;
            }
            Packet::Disconnect => return Ok(()),
            Packet::Connect(_) => return Err("a second CONNECT".into()),
            other => return Err(format!("unexpected packet from a client: {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_mqtt_says() {
        assert!(topic_matches("a/b/c", "a/+/c"));
        assert!(topic_matches("a/b/c", "a/#"));
        assert!(topic_matches("a", "a/#"));
        assert!(topic_matches("a/b", "#"));
        assert!(!topic_matches("a/b/c", "a/+"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(topic_matches(
            "$hw/events/device/default/d1/twin/update/delta",
            "$hw/events/device/+/+/twin/update/delta"
        ));
        assert!(topic_matches("$hw/events/node/e1/membership/get", "$hw/#"));
        assert!(!topic_matches("$hw/events/x", "#"));
        assert!(!topic_matches("$hw/events/x", "+/events/x"));
    }

    #[test]
    fn filters_are_checked() {
        assert!(valid_filter("a/+/b/#"));
        assert!(valid_filter("#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a/b#"));
        assert!(!valid_filter("a+/b"));
        assert!(!valid_filter(""));
        assert!(!valid_topic("a/+"));
        assert!(valid_topic("$hw/events/device/default/d1/twin/update"));
    }
}
