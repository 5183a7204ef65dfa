//! The edge side of the sync session (one in edgehub).
//!
//! The caller (an edgehub connection driver plus the metastore) does this:
//!
//! 1. Builds the session from the metastore's inventory (key → version of every object it holds),
//!    once per process start.
//! 2. [`Session::connected`] / [`Session::disconnected`] as the connection comes and goes.
//! 3. On [`Event::Apply`], writes the change to the metastore (group commit: batch several), and after
//!    the commit calls [`Session::persisted`] with the tokens; only then does the session ack.
//! 4. [`Session::enqueue_uplink`] status updates after storing them in its durable queue, and drops
//!    them from that queue on [`Event::UplinkAcked`]. After a restart, it enqueues what the durable
//!    queue still holds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::message::{Message, Operation, names};

use super::outbox::{self, Outbox};
use super::stamp::{IdGen, WallClock, parse_version, supersedes};
use super::{InventoryChunk, is_reliable, keepalive_message};

/// Edge session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Outbox for edge → cloud status updates.
    pub uplink: outbox::Config,
    /// Interval between keepalives. Default 15 s (upstream `edgeHub.heartbeat`).
    pub keepalive_interval: Duration,
    /// With the extensions negotiated, the link is dead when the cloud has been silent this long
    /// (it answers every keepalive). Default 45 s (three keepalives).
    pub dead_after: Duration,
    /// Most changes handed out by [`Event::Apply`] and not yet reported durable; beyond it new
    /// changes are dropped unacked and the cloud resends them. Default 8,192.
    pub max_pending: usize,
    /// Most deletions remembered per connection to reject stale copies that arrive after them.
    /// Default 65,536.
    pub max_tombstones: usize,
    /// Most recently acked message ids remembered to re-ack duplicates. Default 4,096.
    pub max_recent_ids: usize,
    /// Objects per inventory chunk. Default 2,000.
    pub inventory_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            uplink: outbox::Config::default(),
            keepalive_interval: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            max_pending: 8_192,
            max_tombstones: 65_536,
            max_recent_ids: 4_096,
            inventory_chunk: 2_000,
        }
    }
}

impl Config {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        self.uplink.validate()?;
        if self.keepalive_interval.is_zero() || self.dead_after <= self.keepalive_interval {
            return Err(super::ConfigError(
                "keepalive_interval must be positive and below dead_after".into(),
            ));
        }
        if self.max_pending == 0 || self.inventory_chunk == 0 {
            return Err(super::ConfigError(
                "max_pending and inventory_chunk must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Ticket for one applied change; hand it back to [`Session::persisted`] once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplyToken(u64);

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Persist this change (an upsert, or a delete when `deleted`), then report `token` durable.
    Apply {
        /// Ticket for [`Session::persisted`].
        token: ApplyToken,
        /// Object key (edge-form resource string).
        key: String,
        /// The object's version.
        version: Option<u64>,
        /// Whether the change deletes the object.
        deleted: bool,
        /// The message as received.
        message: Message,
    },
    /// A cloud message outside reliable sync: deliver as is, no ack is due.
    Deliver(Message),
    /// The cloud handled the uplink entry for `key` up to sequence `seq`: drop it from the durable
    /// queue if the queue holds nothing newer. `reply` is the cloud's answer (content `"OK"`, or the
    /// answer to a query).
    UplinkAcked {
        /// The status key.
        key: String,
        /// The acked sequence number.
        seq: Option<u64>,
        /// The answer; `None` against an upstream cloud for kinds it never answers.
        reply: Option<Box<Message>>,
    },
    /// [`Session::enqueue_uplink`] refused an entry earlier and has room again.
    Writable,
    /// The cloud stopped answering; close the connection and reconnect.
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    version: Option<u64>,
    deleted: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    key: String,
    held: Held,
    /// Messages to ack once the change is durable (the one that carried it, and copies or older
    /// versions that arrived meanwhile, possibly on a later connection), with their connection.
    waiters: Vec<(u64, Message)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Disconnected,
    Connected,
}

/// The edge's sync session. See the module docs.
#[derive(Debug)]
pub struct Session {
    config: Config,
    ids: IdGen,
    clock: WallClock,
    state: State,
    negotiated: bool,
    generation: u64,
    /// Durable state per key; deleted entries are tombstones.
    known: HashMap<String, Held>,
    tombstones: VecDeque<String>,
    /// Changes handed out and not yet durable.
    pending: HashMap<ApplyToken, Pending>,
    /// Message ids waiting on a pending change.
    pending_ids: HashSet<String>,
    /// Newest pending change per key.
    pending_of: HashMap<String, (ApplyToken, Held)>,
    next_token: u64,
    recent_ids: VecDeque<String>,
    recent_set: HashSet<String>,
    uplink: Outbox,
    control: VecDeque<Message>,
    /// Send-once messages (events, bus traffic, answers), kept across reconnects.
    direct: VecDeque<Message>,
    events: VecDeque<Event>,
    next_keepalive: Instant,
    last_rx: Instant,
    timed_out: bool,
}

impl Session {
    /// A session over what the metastore holds: `inventory` lists every stored object's key and
    /// version.
    pub fn new(
        config: Config,
        inventory: impl IntoIterator<Item = (String, Option<u64>)>,
        seed: u64,
        clock: WallClock,
        now: Instant,
    ) -> Self {
        let known = inventory
            .into_iter()
            .map(|(k, version)| {
                (
                    k,
                    Held {
                        version,
                        deleted: false,
                    },
                )
            })
            .collect();
        let uplink = Outbox::new(config.uplink.clone());
        Session {
            config,
            ids: IdGen::new(seed),
            clock,
            state: State::Disconnected,
            negotiated: false,
            generation: 0,
            known,
            tombstones: VecDeque::new(),
            pending: HashMap::new(),
            pending_ids: HashSet::new(),
            pending_of: HashMap::new(),
            next_token: 0,
            recent_ids: VecDeque::new(),
            recent_set: HashSet::new(),
            uplink,
            control: VecDeque::new(),
            direct: VecDeque::new(),
            events: VecDeque::new(),
            next_keepalive: now,
            last_rx: now,
            timed_out: false,
        }
    }

    /// A connection is up. `negotiated`: the cloud accepted the extensions; the inventory goes out
    /// first.
    pub fn connected(&mut self, now: Instant, negotiated: bool) {
        self.state = State::Connected;
        self.negotiated = negotiated;
        self.generation += 1;
        self.uplink.reset();
        self.control.clear();
        self.last_rx = now;
        self.timed_out = false;
        // A timeout reported for the previous connection must not close this one.
        self.events.retain(|e| *e != Event::Timeout);
        // Stale copies from the previous connection cannot arrive on this one.
        for key in self.tombstones.drain(..) {
            if self.known.get(&key).is_some_and(|h| h.deleted) {
                self.known.remove(&key);
            }
        }
        if negotiated {
            let live = self
                .known
                .iter()
                .filter(|(_, h)| !h.deleted)
                .map(|(k, h)| (k.clone(), h.version));
            for chunk in InventoryChunk::split(live, self.config.inventory_chunk) {
                self.control.push_back(chunk.to_message());
            }
        }
        self.control.push_back(keepalive_message());
        self.next_keepalive = now + self.config.keepalive_interval;
    }

    /// The connection is gone. Changes still being persisted stay pending (they become part of the
    /// inventory once durable); their acks are not sent.
    pub fn disconnected(&mut self) {
        self.state = State::Disconnected;
        self.uplink.reset();
        self.control = VecDeque::new();
    }

    /// `true` while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Feeds a message received from the cloud.
    pub fn handle_frame(&mut self, now: Instant, message: Message) {
        if self.state == State::Disconnected {
            return;
        }
        self.last_rx = now;
        if message.route.operation == Operation::Response && !message.header.parent_id.is_empty() {
            if let Some(acked) = self.uplink.ack(&message.header.parent_id) {
                self.events.push_back(Event::UplinkAcked {
                    key: acked.key,
                    seq: acked.version,
                    reply: Some(Box::new(message)),
                });
                return;
            }
            if message.header.resource_version.is_empty() {
                // An answer to a keepalive or to a request of an edge module.
                if message.route.resource != names::KEEPALIVE_RESOURCE {
                    self.events.push_back(Event::Deliver(message));
                }
                return;
            }
        }
        if !is_reliable(&message) {
            self.events.push_back(Event::Deliver(message));
            return;
        }
        self.handle_change(now, message);
    }

    fn handle_change(&mut self, now: Instant, message: Message) {
        let id = message.header.id.clone();
        if self.recent_set.contains(&id) {
            // A duplicate of something already durable: ack again.
            self.ack(now, &message);
            return;
        }
        if self.pending_ids.contains(&id) {
            // Being persisted; the ack follows.
            return;
        }
        let key = message.route.resource.clone();
        let held = Held {
            version: parse_version(&message.header.resource_version),
            deleted: message.is_delete(),
        };
        let pending = self.pending_of.get(&key).copied();
        let current = pending
            .map(|(_, h)| h)
            .or_else(|| self.known.get(&key).copied());
        let answer = message.route.operation == Operation::Response;
        if let Some(cur) = current
            && !supersedes((held.version, held.deleted), (cur.version, cur.deleted))
        {
            // Stale or a repeat: nothing to persist. An answer still reaches whoever asked.
            if answer {
                self.events.push_back(Event::Deliver(message.clone()));
            }
            match pending {
                // What we hold is durable: ack now.
                None => self.ack(now, &message),
                // A newer or equal change is being persisted: ack this one with it.
                Some((token, _)) => {
                    if let Some(p) = self.pending.get_mut(&token) {
                        self.pending_ids.insert(id);
                        p.waiters.push((self.generation, message));
                    }
                }
            }
            return;
        }
        if current.is_none() && held.deleted {
            // Deleting something we never had: nothing to persist.
            self.ack(now, &message);
            return;
        }
        if self.pending.len() >= self.config.max_pending {
            return;
        }
        let token = ApplyToken(self.next_token);
        self.next_token += 1;
        self.pending.insert(
            token,
            Pending {
                key: key.clone(),
                held,
                waiters: vec![(self.generation, message.clone())],
            },
        );
        self.pending_ids.insert(id);
        self.pending_of.insert(key.clone(), (token, held));
        self.events.push_back(Event::Apply {
            token,
            key,
            version: held.version,
            deleted: held.deleted,
            message,
        });
    }

    fn ack(&mut self, now: Instant, request: &Message) {
        if self.state == State::Disconnected {
            return;
        }
        let id = self.ids.next_id();
        self.control.push_back(request.response(
            id,
            self.clock.unix_ms(now),
            serde_json::Value::String(names::ACK_CONTENT.into()),
        ));
    }

    /// Reports changes durable. Each is acked to the cloud if its connection is still up. Call in the
    /// order the changes were applied.
    pub fn persisted(&mut self, now: Instant, tokens: impl IntoIterator<Item = ApplyToken>) {
        for token in tokens {
            let Some(p) = self.take_pending(token) else {
                continue;
            };
            let newer = self.known.get(&p.key).is_none_or(|h| {
                supersedes((p.held.version, p.held.deleted), (h.version, h.deleted))
            });
            if newer {
                if p.held.deleted {
                    self.known.insert(p.key.clone(), p.held);
                    self.tombstones.push_back(p.key.clone());
                    self.trim_tombstones();
                } else {
                    self.known.insert(p.key.clone(), p.held);
                }
            }
            for (generation, request) in p.waiters {
                self.remember(request.header.id.clone());
                if generation == self.generation {
                    self.ack(now, &request);
                }
            }
        }
    }

    /// Forgets a change that could not be persisted (the cloud will resend it).
    pub fn abandon(&mut self, token: ApplyToken) {
        self.take_pending(token);
    }

    fn take_pending(&mut self, token: ApplyToken) -> Option<Pending> {
        let p = self.pending.remove(&token)?;
        for (_, request) in &p.waiters {
            self.pending_ids.remove(&request.header.id);
        }
        if self
            .pending_of
            .get(&p.key)
            .is_some_and(|(t, _)| *t == token)
        {
            self.pending_of.remove(&p.key);
        }
        Some(p)
    }

    fn trim_tombstones(&mut self) {
        while self.tombstones.len() > self.config.max_tombstones {
            if let Some(k) = self.tombstones.pop_front()
                && self.known.get(&k).is_some_and(|h| h.deleted)
            {
                self.known.remove(&k);
            }
        }
    }

    fn remember(&mut self, id: String) {
        if self.recent_set.insert(id.clone()) {
            self.recent_ids.push_back(id);
        }
        while self.recent_ids.len() > self.config.max_recent_ids {
            if let Some(old) = self.recent_ids.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    /// Queues a status update for the cloud, to be acked by the cloud's answer (use
    /// [`send`](Self::send) for what needs no answer). Its resource is the key; its `resourceversion` header
    /// carries the caller's sequence number for the key (newer replaces older). Returns the message
    /// when the outbox is full.
    pub fn enqueue_uplink(&mut self, message: Message) -> Result<(), super::Full> {
        let key = message.route.resource.clone();
        let seq = parse_version(&message.header.resource_version);
        self.uplink.push(key, seq, false, message)
    }

    /// Queues a message outside the uplink outbox (events, bus uploads, answers to the cloud): written
    /// once, in order, never coalesced and never retransmitted. Kept across reconnects; refused
    /// when the uplink capacity is reached.
    pub fn send(&mut self, message: Message) -> Result<(), super::Full> {
        if self.direct.len() >= self.config.uplink.capacity {
            return Err(super::Full(Box::new(message)));
        }
        self.direct.push_back(message);
        Ok(())
    }

    /// Checks timers: keepalive due and a silent cloud.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Disconnected {
            return;
        }
        if now >= self.next_keepalive {
            self.control.push_back(keepalive_message());
            self.next_keepalive = now + self.config.keepalive_interval;
        }
        if self.negotiated
            && !self.timed_out
            && now.saturating_duration_since(self.last_rx) >= self.config.dead_after
        {
            self.timed_out = true;
            self.events.push_back(Event::Timeout);
        }
    }

    /// The next message to write to the cloud: inventory and acks first, then status updates.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        if self.state == State::Disconnected {
            return None;
        }
        if let Some(mut m) = super::pop_releasing(&mut self.control)
            .or_else(|| super::pop_releasing(&mut self.direct))
        {
            if m.header.id.is_empty() {
                m.header.id = self.ids.next_id();
            }
            if m.header.timestamp == 0 {
                m.header.timestamp = self.clock.unix_ms(now);
            }
            return Some(m);
        }
        let m = self.uplink.poll_transmit(now, &mut self.ids, &self.clock)?;
        if !self.negotiated && !upstream_answers(&m) {
            // An upstream cloud never answers this kind: send once, as upstream edges do.
            if let Some(acked) = self.uplink.ack(&m.header.id) {
                self.events.push_back(Event::UplinkAcked {
                    key: acked.key,
                    seq: acked.version,
                    reply: None,
                });
            }
        }
        if self.uplink.take_writable() {
            self.events.push_back(Event::Writable);
        }
        Some(m)
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) / [`poll_transmit`](Self::poll_transmit)
    /// next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Disconnected {
            return None;
        }
        let mut t = self.next_keepalive;
        if self.negotiated && !self.timed_out {
            t = t.min(self.last_rx + self.config.dead_after);
        }
        if let Some(o) = self.uplink.poll_timeout() {
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

    /// Changes handed out and not yet reported durable.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Deletions remembered on this connection.
    pub fn tombstones_len(&self) -> usize {
        self.tombstones.len()
    }

    /// Read access to the uplink outbox.
    pub fn uplink(&self) -> &Outbox {
        &self.uplink
    }

    /// The durable view: key → version of every live object, as the next inventory would list it.
    pub fn inventory(&self) -> impl Iterator<Item = (&str, Option<u64>)> {
        self.known
            .iter()
            .filter(|(_, h)| !h.deleted)
            .map(|(k, h)| (k.as_str(), h.version))
    }

    /// `true` when nothing is pending, queued or waiting to be written.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self.uplink.is_idle()
            && self.control.is_empty()
            && self.direct.is_empty()
    }
}

/// Whether an upstream cloudcore answers this edge → cloud message (spec §6.3, §6.4, §7.5): node
/// creation and status, pod status, leases, and twin reports get a `response`; events and bus
/// traffic do not.
fn upstream_answers(msg: &Message) -> bool {
    use crate::message::ResourceType as T;
    let Ok(r) = msg.route.resource.parse::<crate::resource::ObjectRef>() else {
        // `device/<ns>/<name>/twin/edge_updated` and `.../state/update` are answered too.
        return msg.route.resource.starts_with("device/");
    };
    matches!(
        r.kind,
        T::PodPatch | T::NodePatch | T::Node | T::Lease | T::PodStatus | T::NodeStatus
    )
}
