//! The reliable sync protocol as sans-IO state machines: one [`cloud::Session`] per connected node in
//! cloudhub, one [`edge::Session`] in edgehub. No sockets and no clock: the caller passes `now` in,
//! feeds received messages to `handle_frame`, writes what `poll_transmit` gives, wakes up at
//! `poll_timeout` to call `handle_timeout`, and acts on what `poll_event` reports.
//!
//! # What it guarantees
//!
//! * **Cloud → edge, objects.** The latest version of every object reaches the edge at least once;
//!   intermediate versions may be skipped (a newer version replaces a queued older one, a delete wins).
//!   Up to `window` messages are in flight; acks match by `parent_msg_id`; unacked messages are
//!   retransmitted with exponential backoff. The edge drops duplicates and stale versions, emits an
//!   [`edge::Event::Apply`] for each change, and acks it **only after** the caller reports it durable
//!   with [`edge::Session::persisted`]. Nothing acked is ever lost.
//! * **Resync after reconnect.** When both sides negotiated it (see [`SYNC_EXTENSION_HEADER`]), the edge
//!   opens each connection with its inventory (object key → resourceVersion) and the cloud sends only
//!   what differs, deletes included. Against an upstream peer the cloud falls back to what it
//!   recorded from earlier acks (upstream keeps the same record in ObjectSync objects).
//! * **Edge → cloud, status.** Status updates are coalesced per object (latest wins) in the edge's
//!   uplink outbox, each carrying a sequence number in `resourceversion`, designed to sit on a durable
//!   queue: the caller stores each entry, and deletes it when [`edge::Event::UplinkAcked`] reports the
//!   cloud handled it.
//! * **Liveness.** The edge sends `keepalive` every 15 s (upstream's default); the cloud closes a
//!   session that has been silent for 30 s. With the extension, the cloud answers keepalives so the
//!   edge detects a dead link too.
//!
//! # Layout
//!
//! * [`outbox`]: the coalescing, windowed, retransmitting queue both directions share.
//! * [`cloud`], [`edge`]: the two session state machines.
//! * [`stamp`]: message ids and timestamps without an OS clock or random source.
//! * `sim` (feature `test-util`): the deterministic simulation harness that drives a cloud and an
//!   edge over a lossy, duplicating, reordering link with disconnects and edge crashes.

pub mod cloud;
pub mod edge;
pub mod outbox;
#[cfg(any(test, feature = "test-util"))]
pub mod sim;
pub mod stamp;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::message::{Message, Operation, Route, names};

/// Upgrade-request header by which our edge offers the sync extensions (inventory resync, windowed
/// acks, keepalive answers); our cloud echoes it in the upgrade response to accept. Upstream peers
/// neither send nor echo it, and both sides then behave as upstream does.
pub const SYNC_EXTENSION_HEADER: &str = "x-kubeedge-rs-sync";

/// The extension version carried in [`SYNC_EXTENSION_HEADER`].
pub const SYNC_EXTENSION_VERSION: &str = "1";

/// An invalid setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sync configuration: {0}")]
pub struct ConfigError(pub String);

/// An outbox refused a message because it is full; the message comes back to the caller, and an
/// event reports when there is room again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("outbox full: {} not queued", .0.route.resource)]
pub struct Full(pub Box<Message>);

impl Full {
    /// The refused message.
    pub fn into_message(self) -> Message {
        *self.0
    }
}

/// A peer broke the protocol. The driver should close the connection; the sessions stay usable for
/// the next one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// An inventory arrived on a connection that did not negotiate it, or after resync finished.
    #[error("unexpected inventory message")]
    UnexpectedInventory,
    /// An inventory message could not be read.
    #[error("malformed inventory: {0}")]
    MalformedInventory(String),
    /// The inventory lists more objects than the cloud accepts for one node.
    #[error("inventory of more than {max} objects")]
    InventoryTooLarge {
        /// The configured limit.
        max: usize,
    },
}

/// What an async driver needs from a session: the common surface of [`cloud::Session`] and
/// [`edge::Session`], so that one driver (see `transport::driver`) runs either over a connection.
pub trait Endpoint {
    /// What the session reports to its application.
    type Event;
    /// A connection is up; `negotiated` tells whether both sides agreed on the extensions.
    fn connected(&mut self, now: Instant, negotiated: bool);
    /// The connection is gone.
    fn disconnected(&mut self);
    /// Feeds a received message.
    fn handle_frame(&mut self, now: Instant, message: Message) -> Result<(), ProtocolError>;
    /// Checks timers.
    fn handle_timeout(&mut self, now: Instant);
    /// The next message to write.
    fn poll_transmit(&mut self, now: Instant) -> Option<Message>;
    /// When to call `handle_timeout` next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next event for the application.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// `true` once the session decided the connection is dead (keepalive or handshake timeout).
    fn is_dead(&self) -> bool;
}

impl Endpoint for cloud::Session {
    type Event = cloud::Event;
    fn connected(&mut self, now: Instant, negotiated: bool) {
        cloud::Session::connected(self, now, negotiated);
    }
    fn disconnected(&mut self) {
        cloud::Session::disconnected(self);
    }
    fn handle_frame(&mut self, now: Instant, message: Message) -> Result<(), ProtocolError> {
        cloud::Session::handle_frame(self, now, message)
    }
    fn handle_timeout(&mut self, now: Instant) {
        cloud::Session::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        cloud::Session::poll_transmit(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        cloud::Session::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<cloud::Event> {
        cloud::Session::poll_event(self)
    }
    fn is_dead(&self) -> bool {
        cloud::Session::is_dead(self)
    }
}

impl Endpoint for edge::Session {
    type Event = edge::Event;
    fn connected(&mut self, now: Instant, negotiated: bool) {
        edge::Session::connected(self, now, negotiated);
    }
    fn disconnected(&mut self) {
        edge::Session::disconnected(self);
    }
    fn handle_frame(&mut self, now: Instant, message: Message) -> Result<(), ProtocolError> {
        edge::Session::handle_frame(self, now, message);
        Ok(())
    }
    fn handle_timeout(&mut self, now: Instant) {
        edge::Session::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        edge::Session::poll_transmit(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        edge::Session::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<edge::Event> {
        edge::Session::poll_event(self)
    }
    fn is_dead(&self) -> bool {
        edge::Session::is_dead(self)
    }
}

/// One chunk of an edge inventory, the `content` of an [`Operation::Inventory`] message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryChunk {
    /// Index of this chunk, from 0.
    pub chunk: u32,
    /// Number of chunks in this inventory.
    pub chunks: u32,
    /// Object key (edge-form resource string) → resourceVersion (empty when unknown).
    pub objects: BTreeMap<String, String>,
}

impl InventoryChunk {
    /// The chunks of an inventory of `(key, version)` pairs, `per_chunk` objects per chunk (at least
    /// one chunk, so that an empty inventory is still announced).
    pub fn split(
        inventory: impl IntoIterator<Item = (String, Option<u64>)>,
        per_chunk: usize,
    ) -> Vec<InventoryChunk> {
        let per_chunk = per_chunk.max(1);
        let mut chunks: Vec<InventoryChunk> = Vec::new();
        for (key, version) in inventory {
            if chunks.last().is_none_or(|c| c.objects.len() >= per_chunk) {
                chunks.push(InventoryChunk {
                    chunk: 0,
                    chunks: 0,
                    objects: BTreeMap::new(),
                });
            }
            if let Some(c) = chunks.last_mut() {
                c.objects
                    .insert(key, version.map(|v| v.to_string()).unwrap_or_default());
            }
        }
        if chunks.is_empty() {
            chunks.push(InventoryChunk {
                chunk: 0,
                chunks: 0,
                objects: BTreeMap::new(),
            });
        }
        let n = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        for (i, c) in chunks.iter_mut().enumerate() {
            c.chunk = u32::try_from(i).unwrap_or(u32::MAX);
            c.chunks = n;
        }
        chunks
    }

    /// The message that carries this chunk (id and timestamp left for the sender to stamp).
    pub fn to_message(&self) -> Message {
        let content = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        Message::new(
            "",
            0,
            Route::new(
                names::EDGEHUB_MODULE,
                names::RESOURCE_GROUP,
                Operation::Inventory,
                names::KEEPALIVE_RESOURCE,
            ),
        )
        .with_content(content)
    }
}

/// Pops the front of `queue`, and gives its buffer back once it is empty: a session keeps its
/// queues for the life of its peer, and an idle one should not hold the room its busiest moment
/// needed (a hundred thousand idle sessions would).
pub(crate) fn pop_releasing<T>(queue: &mut std::collections::VecDeque<T>) -> Option<T> {
    let item = queue.pop_front();
    if queue.is_empty() && queue.capacity() > 0 {
        *queue = std::collections::VecDeque::new();
    }
    item
}

/// The keepalive message of spec §1.7 (id and timestamp left for the sender to stamp).
pub fn keepalive_message() -> Message {
    Message::new(
        "",
        0,
        Route::new(
            names::EDGEHUB_MODULE,
            names::RESOURCE_GROUP,
            Operation::Keepalive,
            names::KEEPALIVE_RESOURCE,
        ),
    )
    .with_content(serde_json::Value::String(names::KEEPALIVE_CONTENT.into()))
}

/// Which cloud → edge messages take part in reliable sync (persist, then ack): object changes of
/// group `resource` (insert, update, patch, delete), and answers that carry an object version.
/// Everything else (bus traffic, twin membership, answers without a version) is delivered as is,
/// as upstream's no-ack queue does.
pub fn is_reliable(msg: &Message) -> bool {
    if msg.route.group != names::RESOURCE_GROUP {
        return false;
    }
    match &msg.route.operation {
        Operation::Insert | Operation::Update | Operation::Patch | Operation::Delete => true,
        Operation::Response => !msg.header.resource_version.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_drained_queue_keeps_no_room() {
        let mut q: std::collections::VecDeque<u32> = (0..100).collect();
        for i in 0..99 {
            assert_eq!(super::pop_releasing(&mut q), Some(i));
            assert!(q.capacity() >= 1);
        }
        assert_eq!(super::pop_releasing(&mut q), Some(99));
        assert_eq!(q.capacity(), 0);
        assert_eq!(super::pop_releasing(&mut q), None);
    }
}
