//! The cloud side of one node's sync session (one per node in cloudhub).
//!
//! The caller (a cloudhub connection driver plus the controllers) does this:
//!
//! 1. [`Session::connected`] when a connection is up, saying whether the edge negotiated the
//!    extensions; [`Session::disconnected`] when it drops. The session outlives connections: what
//!    it learned from acks is kept for the next one.
//! 2. On [`Event::ResyncNeeded`], [`Session::resync`] with the node's desired set (key → version);
//!    it returns which keys to send in full and which to delete, and the caller
//!    [`enqueue`](Session::enqueue)s those messages.
//! 3. [`Session::enqueue`] every later change of the node's objects (already trimmed to edge form).
//! 4. [`Event::Uplink`] for what the edge sends; answer with [`Session::complete_uplink`] once it is
//!    handled (the reply is the ack the edge waits for).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::message::{Message, Operation, names};
use crate::resource;

use super::outbox::{self, Outbox};
use super::stamp::{IdGen, WallClock, parse_version, supersedes};
use super::{InventoryChunk, ProtocolError, is_reliable};

/// Cloud session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Outbox for cloud → edge object changes.
    pub outbox: outbox::Config,
    /// A session silent for this long is dead. Default 30 s (upstream `keepaliveInterval`).
    pub keepalive_timeout: Duration,
    /// How long to wait for a negotiated edge's inventory. Default 30 s.
    pub inventory_timeout: Duration,
    /// Most objects an edge inventory may list. Default 1,000,000.
    pub max_inventory: usize,
    /// Answer keepalives (only when the edge negotiated the extensions). Default true.
    pub answer_keepalives: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            outbox: outbox::Config::default(),
            keepalive_timeout: Duration::from_secs(30),
            inventory_timeout: Duration::from_secs(30),
            max_inventory: 1_000_000,
            answer_keepalives: true,
        }
    }
}

impl Config {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        self.outbox.validate()?;
        if self.keepalive_timeout.is_zero() || self.inventory_timeout.is_zero() {
            return Err(super::ConfigError("timeouts must be positive".into()));
        }
        Ok(())
    }
}

/// Something the driver must act on.
// Events are moved once from the session to the driver; boxing the message would cost an
// allocation per uplink message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Compute the node's desired set and call [`Session::resync`].
    ResyncNeeded,
    /// The edge persisted `key` at `version` (or deleted it). A cloud may record this as upstream
    /// records ObjectSync status.
    Acked {
        /// The object key (edge-form resource string).
        key: String,
        /// The acked version.
        version: Option<u64>,
        /// Whether it was a delete.
        deleted: bool,
    },
    /// A message from the edge (its resource still in edge form; see [`resource::prefix`]). If
    /// `token` is set, answer with [`Session::complete_uplink`] once handled.
    Uplink {
        /// Ticket for the answer.
        token: Option<UplinkToken>,
        /// The message (boxed: events wait in channels that allocate room for many at once).
        message: Box<Message>,
    },
    /// [`Session::enqueue`] refused a change earlier and has room again.
    Writable,
    /// The connection is dead (keepalive or inventory timeout); close it.
    Timeout,
}

/// Ticket to answer an uplink message.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkToken {
    generation: u64,
    request: Box<Message>,
    key: String,
    seq: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Disconnected,
    AwaitingInventory {
        since: Instant,
        chunks: HashMap<u32, BTreeMap<String, String>>,
        total: Option<u32>,
    },
    AwaitingResync,
    Syncing,
}

/// What [`Session::resync`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncPlan {
    /// Keys whose current object must be enqueued (the edge lacks it or holds an older version).
    pub send: Vec<String>,
    /// Keys the edge holds but should not, with the version it holds: enqueue a delete for each,
    /// carrying that version as its `resourceversion` (so that a stale copy of it can never delete
    /// a newer object later).
    pub delete: Vec<(String, Option<u64>)>,
}

/// One node's cloud-side session. See the module docs.
#[derive(Debug)]
pub struct Session {
    node: String,
    config: Config,
    ids: IdGen,
    clock: WallClock,
    state: State,
    negotiated: bool,
    generation: u64,
    outbox: Outbox,
    /// What the edge holds, as far as acks and its last inventory tell: key → version.
    believed: HashMap<String, Option<u64>>,
    /// Whether `believed` came from the edge's own inventory on this connection.
    believed_exact: bool,
    /// Deletes the edge acked since its last inventory: key → version. Upserts at or below it are
    /// stale copies and are dropped. Bounded (oldest forgotten first).
    gone: HashMap<String, Option<u64>>,
    gone_order: VecDeque<String>,
    /// Latest uplink sequence number handled per key, on this connection.
    uplink_seen: HashMap<String, u64>,
    /// Ids of the uplinks handed out as [`Event::Uplink`] and not yet completed, on this
    /// connection: the edge's retransmissions of one of them (same id) are not handed out again.
    uplink_in_flight: HashSet<String>,
    /// Protocol answers (acks of uplinks, keepalive answers) for this connection.
    replies: VecDeque<Message>,
    /// Send-once messages outside reliable sync (twin, bus, answers), kept across reconnects.
    direct: VecDeque<Message>,
    events: VecDeque<Event>,
    last_rx: Instant,
    timed_out: bool,
}

impl Session {
    /// A session for `node`. `seed` feeds message ids; `clock` maps `now` to message timestamps.
    pub fn new(
        node: impl Into<String>,
        config: Config,
        seed: u64,
        clock: WallClock,
        now: Instant,
    ) -> Self {
        let outbox = Outbox::new(config.outbox.clone());
        Session {
            node: node.into(),
            config,
            ids: IdGen::new(seed),
            clock,
            state: State::Disconnected,
            negotiated: false,
            generation: 0,
            outbox,
            believed: HashMap::new(),
            believed_exact: false,
            gone: HashMap::new(),
            gone_order: VecDeque::new(),
            uplink_seen: HashMap::new(),
            uplink_in_flight: HashSet::new(),
            replies: VecDeque::new(),
            direct: VecDeque::new(),
            events: VecDeque::new(),
            last_rx: now,
            timed_out: false,
        }
    }

    /// Seeds what the edge is believed to hold, e.g. from records a previous cloudcore process kept
    /// (upstream keeps them in ObjectSync objects). Used by the fallback resync against peers that do
    /// not send an inventory.
    pub fn restore_acked(&mut self, acked: impl IntoIterator<Item = (String, Option<u64>)>) {
        self.believed.extend(acked);
    }

    /// The node this session serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A connection is up. `negotiated`: the edge offered and we accepted the extensions.
    pub fn connected(&mut self, now: Instant, negotiated: bool) {
        self.generation += 1;
        self.negotiated = negotiated;
        self.outbox.reset();
        self.replies.clear();
        self.uplink_seen.clear();
        self.uplink_in_flight.clear();
        self.last_rx = now;
        self.timed_out = false;
        self.believed_exact = false;
        // A timeout reported for the previous connection must not close this one.
        self.events.retain(|e| *e != Event::Timeout);
        if negotiated {
            self.state = State::AwaitingInventory {
                since: now,
                chunks: HashMap::new(),
                total: None,
            };
        } else {
            self.state = State::AwaitingResync;
            self.events.push_back(Event::ResyncNeeded);
        }
    }

    /// The connection is gone. In-flight messages go back to the queue for the next connection.
    pub fn disconnected(&mut self) {
        self.state = State::Disconnected;
        self.outbox.reset();
        // Dropped with their room: a node may stay away for long.
        self.replies = VecDeque::new();
    }

    /// `true` while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.state != State::Disconnected
    }

    /// Decides what to send after (re)connecting, given the node's desired set: every object the edge
    /// should hold, with its version. Returns the keys to send in full and those to delete; queued
    /// entries the edge already holds are dropped. Starts sending.
    pub fn resync(
        &mut self,
        desired: impl IntoIterator<Item = (String, Option<u64>)>,
    ) -> ResyncPlan {
        let mut plan = ResyncPlan::default();
        let mut seen = HashSet::new();
        for (key, version) in desired {
            let has = self.believed.get(&key);
            let edge_has_it = version.is_some() && has == Some(&version);
            if edge_has_it {
                // Drop a queued copy of what the edge already holds.
                if self.outbox.pending_version(&key) == Some((version, false)) {
                    self.outbox.remove_queued(&key);
                }
            } else {
                let pending_covers = self
                    .outbox
                    .pending_version(&key)
                    .is_some_and(|(v, del)| !del && v.is_some() && v == version);
                if !pending_covers {
                    plan.send.push(key.clone());
                }
            }
            seen.insert(key);
        }
        let mut deletes: BTreeMap<String, Option<u64>> = BTreeMap::new();
        for (key, version) in &self.believed {
            if !seen.contains(key) {
                deletes.insert(key.clone(), *version);
            }
        }
        // Upserts queued or in flight for keys that are no longer desired: cancel what is still
        // queued, and delete at the highest version the edge may end up holding.
        let undesired: Vec<String> = self
            .outbox
            .keys()
            .filter(|k| !seen.contains(*k))
            .map(str::to_owned)
            .collect();
        for key in undesired {
            if let Some((version, false)) = self.outbox.pending_version(&key) {
                self.outbox.remove_queued(&key);
                let floor = deletes.get(&key).copied().flatten();
                let top = match (version, floor) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                deletes.insert(key, top);
            }
        }
        // Keys whose delete is already queued or in flight need nothing more.
        deletes.retain(|k, _| {
            !self
                .outbox
                .pending_version(k)
                .is_some_and(|(_, deleted)| deleted)
        });
        plan.delete = deletes.into_iter().collect();
        if self.state == State::AwaitingResync {
            self.state = State::Syncing;
        }
        plan
    }

    /// Queues an object change for the edge (messages outside reliable sync go to
    /// [`send`](Self::send) instead). The message's resource is the key (cloud form is trimmed
    /// to edge form); its `resourceversion` header the version. Ids and timestamps are assigned when
    /// it is sent. Changes the edge is known to hold already are dropped.
    ///
    /// Gives the message back when the outbox is full; [`Event::Writable`] follows when there is room.
    pub fn enqueue(&mut self, mut message: Message) -> Result<(), super::Full> {
        if !is_reliable(&message) {
            return self.send(message);
        }
        let key = resource::trim(&message.route.resource).to_owned();
        message.route.resource.clone_from(&key);
        let version = parse_version(&message.header.resource_version);
        let deleted = message.is_delete();
        if !deleted
            && let Some(gone) = self.gone.get(&key)
            && !supersedes((version, false), (*gone, true))
        {
            // Older than a delete the edge already acked: a stale copy.
            return Ok(());
        }
        let pending = self.outbox.pending_version(&key).is_some();
        if !pending {
            match self.believed.get(&key) {
                Some(v) if !deleted && version.is_some() && *v == version => return Ok(()),
                // A delete newer than the deletion mark the edge acked (a graceful deletion's
                // last update counts as a delete here) still goes: the edge keeps a marked
                // object until the real delete comes.
                None if deleted
                    && self.believed_exact
                    && !self
                        .gone
                        .get(&key)
                        .is_some_and(|g| supersedes((version, true), (*g, true))) =>
                {
                    return Ok(());
                }
                _ => {}
            }
        }
        self.outbox.push(key, version, deleted, message)
    }

    /// Queues a message outside reliable sync (twin membership, bus traffic, answers to edge queries):
    /// written once, in order, never coalesced and never retransmitted, as upstream's no-ack queue.
    /// Kept across reconnects. [`enqueue`](Self::enqueue) routes such messages here by itself.
    pub fn send(&mut self, mut message: Message) -> Result<(), super::Full> {
        if self.direct.len() >= self.config.outbox.capacity {
            return Err(super::Full(Box::new(message)));
        }
        message.route.resource = resource::trim(&message.route.resource).to_owned();
        self.direct.push_back(message);
        Ok(())
    }

    /// Feeds a message received from the edge.
    pub fn handle_frame(&mut self, now: Instant, message: Message) -> Result<(), ProtocolError> {
        if self.state == State::Disconnected {
            return Ok(());
        }
        self.last_rx = now;
        match message.route.operation {
            Operation::Keepalive => {
                if self.negotiated && self.config.answer_keepalives {
                    self.reply(
                        now,
                        &message,
                        serde_json::Value::String(names::ACK_CONTENT.into()),
                    );
                }
                Ok(())
            }
            Operation::Inventory => self.handle_inventory(message),
            Operation::Response if !message.header.parent_id.is_empty() => {
                match self.outbox.ack(&message.header.parent_id) {
                    Some(acked) => {
                        self.record_ack(&acked);
                        self.events.push_back(Event::Acked {
                            key: acked.key,
                            version: acked.version,
                            deleted: acked.deleted,
                        });
                    }
                    None => self.events.push_back(Event::Uplink {
                        token: None,
                        message: Box::new(message),
                    }),
                }
                Ok(())
            }
            _ => {
                self.handle_uplink(now, message);
                Ok(())
            }
        }
    }

    fn record_ack(&mut self, acked: &outbox::Acked) {
        let key = &acked.key;
        let held = self.believed.get(key).map(|v| (*v, false));
        let gone = self.gone.get(key).map(|v| (*v, true));
        let newest = match (held, gone) {
            (Some(h), Some(g)) => Some(if supersedes(h, g) { h } else { g }),
            (a, b) => a.or(b),
        };
        // An ack for a stale copy the edge did not apply must not move the belief backwards.
        if newest.is_some_and(|cur| !supersedes((acked.version, acked.deleted), cur)) {
            return;
        }
        if acked.deleted {
            self.believed.remove(key);
            if self.gone.insert(key.clone(), acked.version).is_none() {
                self.gone_order.push_back(key.clone());
            }
            while self.gone_order.len() > self.config.outbox.capacity {
                if let Some(old) = self.gone_order.pop_front() {
                    self.gone.remove(&old);
                }
            }
        } else {
            self.gone.remove(key);
            self.believed.insert(key.clone(), acked.version);
        }
    }

    /// Queues the `response` to `request` carrying `content`.
    fn reply(&mut self, now: Instant, request: &Message, content: serde_json::Value) {
        let id = self.ids.next_id();
        self.replies
            .push_back(request.cloud_response(id, self.clock.unix_ms(now), content));
    }

    fn handle_uplink(&mut self, now: Instant, message: Message) {
        let key = message.route.resource.clone();
        let seq = parse_version(&message.header.resource_version);
        if let Some(seq) = seq
            && self.uplink_seen.get(&key).is_some_and(|seen| *seen >= seq)
        {
            // A duplicate or an older status than one already handled: just ack it.
            self.reply(
                now,
                &message,
                serde_json::Value::String(names::ACK_CONTENT.into()),
            );
            return;
        }
        // A retransmission of one being handled: its answer (to the same id) acks both. Handing
        // it out again would repeat the work, and a long queue of uplinks (thousands of nodes
        // registering through one API) would retransmit faster than it drains.
        let id = &message.header.id;
        if !id.is_empty() && !self.uplink_in_flight.insert(id.clone()) {
            return;
        }
        let token = UplinkToken {
            generation: self.generation,
            request: Box::new(message.clone()),
            key,
            seq,
        };
        self.events.push_back(Event::Uplink {
            token: Some(token),
            message: Box::new(message),
        });
    }

    fn handle_inventory(&mut self, message: Message) -> Result<(), ProtocolError> {
        let State::AwaitingInventory { chunks, total, .. } = &mut self.state else {
            return Err(ProtocolError::UnexpectedInventory);
        };
        let chunk: InventoryChunk = serde_json::from_value(message.content)
            .map_err(|e| ProtocolError::MalformedInventory(e.to_string()))?;
        if chunk.chunks as usize > self.config.max_inventory.max(1) {
            return Err(ProtocolError::InventoryTooLarge {
                max: self.config.max_inventory,
            });
        }
        if chunk.chunks > 1 && chunk.objects.is_empty() {
            return Err(ProtocolError::MalformedInventory(
                "an empty chunk in a multi-chunk inventory".into(),
            ));
        }
        if chunk.chunks == 0 || chunk.chunk >= chunk.chunks {
            return Err(ProtocolError::MalformedInventory(format!(
                "chunk {} of {}",
                chunk.chunk, chunk.chunks
            )));
        }
        if total.is_some_and(|t| t != chunk.chunks) {
            return Err(ProtocolError::MalformedInventory(
                "chunk count changed within one inventory".into(),
            ));
        }
        *total = Some(chunk.chunks);
        chunks.insert(chunk.chunk, chunk.objects);
        let count: usize = chunks.values().map(BTreeMap::len).sum();
        if count > self.config.max_inventory {
            return Err(ProtocolError::InventoryTooLarge {
                max: self.config.max_inventory,
            });
        }
        if chunks.len() == chunk.chunks as usize {
            self.believed = chunks
                .drain()
                .flat_map(|(_, objects)| objects)
                .map(|(k, v)| (k, parse_version(&v)))
                .collect();
            self.believed_exact = true;
            self.gone.clear();
            self.gone_order.clear();
            self.state = State::AwaitingResync;
            self.events.push_back(Event::ResyncNeeded);
        }
        Ok(())
    }

    /// Answers an uplink message once handled: `Some(content)` sends a `response` carrying it (our
    /// edge waits for one before dropping the entry from its durable queue); `None` sends nothing.
    /// Tokens from an earlier connection are ignored.
    pub fn complete_uplink(
        &mut self,
        now: Instant,
        token: UplinkToken,
        reply: Option<serde_json::Value>,
    ) {
        if token.generation != self.generation || self.state == State::Disconnected {
            return;
        }
        self.uplink_in_flight.remove(&token.request.header.id);
        if let Some(seq) = token.seq {
            let seen = self.uplink_seen.entry(token.key).or_insert(seq);
            *seen = (*seen).max(seq);
        }
        if let Some(content) = reply {
            self.reply(now, &token.request, content);
        }
    }

    /// Checks timers: keepalive expiry and a missing inventory.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Disconnected || self.timed_out {
            return;
        }
        let inventory_late = matches!(&self.state, State::AwaitingInventory { since, .. }
            if now.saturating_duration_since(*since) >= self.config.inventory_timeout);
        if now.saturating_duration_since(self.last_rx) >= self.config.keepalive_timeout
            || inventory_late
        {
            self.timed_out = true;
            self.events.push_back(Event::Timeout);
        }
    }

    /// The next message to write to the edge.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        if self.state == State::Disconnected {
            return None;
        }
        if let Some(m) = super::pop_releasing(&mut self.replies) {
            return Some(m);
        }
        if let Some(mut m) = super::pop_releasing(&mut self.direct) {
            if m.header.id.is_empty() {
                m.header.id = self.ids.next_id();
            }
            if m.header.timestamp == 0 {
                m.header.timestamp = self.clock.unix_ms(now);
            }
            return Some(m);
        }
        if self.state != State::Syncing {
            return None;
        }
        let m = self.outbox.poll_transmit(now, &mut self.ids, &self.clock);
        if self.outbox.take_writable() {
            self.events.push_back(Event::Writable);
        }
        m
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) / [`poll_transmit`](Self::poll_transmit)
    /// next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Disconnected || self.timed_out {
            return None;
        }
        let mut t = self.last_rx + self.config.keepalive_timeout;
        if let State::AwaitingInventory { since, .. } = &self.state {
            t = t.min(*since + self.config.inventory_timeout);
        }
        if self.state == State::Syncing
            && let Some(o) = self.outbox.poll_timeout()
        {
            t = t.min(o);
        }
        Some(t)
    }

    /// `true` once a timeout declared the connection dead (until the next connection).
    pub fn is_dead(&self) -> bool {
        self.timed_out
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<Event> {
        super::pop_releasing(&mut self.events)
    }

    /// Read access to the outbox (sizes, for metrics and tests).
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Whether the connected edge negotiated the kubeedge-rs extensions (false for an upstream
    /// edge).
    pub fn negotiated(&self) -> bool {
        self.negotiated
    }

    /// Forgets what the edge is believed to hold for `key`, so that the next
    /// [`enqueue`](Self::enqueue) of it goes even at the version last acked: for when the edge is
    /// known to have gone back to an older copy (an upstream edge stores the object of a write's
    /// answer).
    pub fn forget(&mut self, key: &str) {
        self.believed.remove(key);
    }

    /// What the edge is believed to hold: key → version.
    pub fn believed(&self) -> &HashMap<String, Option<u64>> {
        &self.believed
    }

    /// `true` when connected, resynced, and nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.state == State::Syncing
            && self.outbox.is_idle()
            && self.replies.is_empty()
            && self.direct.is_empty()
    }
}
