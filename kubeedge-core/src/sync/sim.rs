//! Deterministic simulation of one cloud and one edge over a hostile link.
//!
//! A virtual clock, one seed, and nothing else: the same [`Config`] always gives the same run. The
//! link drops, duplicates, delays and reorders messages (each one also goes through the JSON codec),
//! and disconnects; the edge crashes, losing everything in memory and keeping only what it
//! committed to its (modelled) store, which it writes with group commit. The cloud keeps a desired
//! set that a random schedule changes; the edge reports random status updates through its durable
//! uplink queue.
//!
//! [`run`] plays a schedule, then heals the link and checks:
//!
//! * **nothing acked is lost**: whenever the cloud sees an ack for `key@v`, and after every edge
//!   crash, the edge's store holds `key` at `v` or newer;
//! * **convergence**: once quiet, the edge's live objects equal the cloud's desired set, version for
//!   version, and the cloud holds the latest status of every key the edge reported;
//! * **bounded memory**: queues, pending changes and tombstones stay within their configured bounds.
//!
//! A faulty edge ([`Config::faulty_edge`]) acks before persisting; the harness catches it, which is
//! what shows that it can fail.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::message::{Message, Operation, Route, names};

use super::stamp::{IdGen, WallClock, parse_version, supersedes};
use super::{cloud, edge, outbox};

/// One simulated run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Drives every random choice.
    pub seed: u64,
    /// Schedule length (random actions).
    pub steps: usize,
    /// Distinct object keys the schedule touches.
    pub keys: usize,
    /// Cloud outbox window.
    pub window: usize,
    /// Outbox capacities (small values exercise back-pressure).
    pub capacity: usize,
    /// Whether both sides negotiate the extensions (inventory resync); `false` is upstream behaviour.
    pub negotiated: bool,
    /// The edge acks changes before persisting them (a bug the harness must catch).
    pub faulty_edge: bool,
    /// Per-mille chance that a message is lost.
    pub loss_permille: u32,
    /// Per-mille chance that a message is duplicated.
    pub dup_permille: u32,
    /// One-way latency.
    pub latency: Duration,
    /// Extra random latency up to this much (reorders messages).
    pub jitter: Duration,
    /// Edge group-commit interval.
    pub flush_interval: Duration,
    /// Per-mille chance, per step, of a disconnect.
    pub disconnect_permille: u32,
    /// Per-mille chance, per step, of an edge crash.
    pub crash_permille: u32,
    /// Check "nothing acked is lost" at every ack and every crash. With `false`, only the end state
    /// is compared.
    pub check_acks: bool,
}

impl Config {
    /// A schedule with typical fault rates for `seed`.
    pub fn new(seed: u64) -> Self {
        Config {
            seed,
            steps: 150,
            keys: 16,
            window: 8,
            capacity: 6,
            negotiated: true,
            faulty_edge: false,
            loss_permille: 50,
            dup_permille: 50,
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(40),
            flush_interval: Duration::from_millis(30),
            disconnect_permille: 30,
            crash_permille: 30,
            check_acks: true,
        }
    }
}

/// How a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Divergence {
    /// The cloud saw an ack for `key@version`, but the edge's store does not hold it (or newer).
    AckedButLost {
        /// The object.
        key: String,
        /// The acked version.
        acked: u64,
        /// What the store holds.
        stored: Option<u64>,
        /// When it was found.
        when: &'static str,
    },
    /// After healing, the edge's live set differs from the cloud's desired set.
    Diverged {
        /// Desired but missing or at another version on the edge: key → (desired, held).
        wrong: BTreeMap<String, (Option<u64>, Option<u64>)>,
    },
    /// A status the edge reported never reached the cloud.
    StatusLost {
        /// The status key.
        key: String,
        /// Latest sequence number the edge produced.
        edge: u64,
        /// What the cloud holds.
        cloud: Option<u64>,
    },
    /// A bounded structure grew past its bound.
    Unbounded {
        /// Which one.
        what: &'static str,
        /// Its size.
        len: usize,
    },
    /// The system did not quiesce after healing.
    NotQuiescent,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What a successful run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Messages put on the link (both directions, before loss and duplication).
    pub messages: u64,
    /// Acks the cloud matched.
    pub acks: u64,
    /// Edge crashes.
    pub crashes: u64,
    /// Disconnects (including crashes and timeouts).
    pub disconnects: u64,
    /// Virtual time the run took.
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    version: u64,
    deleted: bool,
}

struct Wire {
    at: Instant,
    order: u64,
    bytes: Vec<u8>,
}

struct Link {
    up: bool,
    to_edge: Vec<Wire>,
    to_cloud: Vec<Wire>,
    reconnect_at: Option<Instant>,
    loss: u32,
    dup: u32,
    order: u64,
}

struct CloudSide {
    session: cloud::Session,
    desired: BTreeMap<String, u64>,
    rv: u64,
    backlog: VecDeque<Message>,
    statuses: HashMap<String, u64>,
    /// Newest ack per key: (version, deleted).
    floor: HashMap<String, (u64, bool)>,
}

struct EdgeSide {
    session: edge::Session,
    store: BTreeMap<String, Held>,
    unflushed: Vec<(edge::ApplyToken, String, Option<u64>, bool)>,
    flush_at: Option<Instant>,
    uplink_queue: BTreeMap<String, u64>,
    status_seq: HashMap<String, u64>,
    seq: u64,
    backlog: VecDeque<Message>,
}

/// The running simulation.
struct Sim {
    cfg: Config,
    rng: IdGen,
    now: Instant,
    start: Instant,
    clock: WallClock,
    link: Link,
    cloud: CloudSide,
    edge: EdgeSide,
    report: Report,
}

const MAX_FRAME: usize = 1 << 20;

/// Plays one schedule and checks the invariants. See the module docs.
pub fn run(cfg: Config) -> Result<Report, Divergence> {
    let mut sim = Sim::new(cfg);
    sim.play()?;
    sim.heal()?;
    sim.report.elapsed = sim.now - sim.start;
    Ok(sim.report)
}

impl Sim {
    fn new(cfg: Config) -> Self {
        let start = Instant::now();
        let clock = WallClock::new(start, 1_700_000_000_000);
        let mut rng = IdGen::new(cfg.seed);
        let cloud_cfg = cloud::Config {
            outbox: outbox::Config {
                window: cfg.window,
                capacity: cfg.capacity,
                initial_rto: Duration::from_millis(500),
                max_rto: Duration::from_secs(8),
            },
            keepalive_timeout: Duration::from_secs(30),
            inventory_timeout: Duration::from_secs(5),
            ..cloud::Config::default()
        };
        let cloud = CloudSide {
            session: cloud::Session::new("e1", cloud_cfg, rng.next_u64(), clock, start),
            desired: BTreeMap::new(),
            rv: 0,
            backlog: VecDeque::new(),
            statuses: HashMap::new(),
            floor: HashMap::new(),
        };
        let edge = EdgeSide {
            session: edge::Session::new(Self::edge_config(&cfg), [], rng.next_u64(), clock, start),
            store: BTreeMap::new(),
            unflushed: Vec::new(),
            flush_at: None,
            uplink_queue: BTreeMap::new(),
            status_seq: HashMap::new(),
            seq: 0,
            backlog: VecDeque::new(),
        };
        let link = Link {
            up: false,
            to_edge: Vec::new(),
            to_cloud: Vec::new(),
            reconnect_at: Some(start),
            loss: cfg.loss_permille,
            dup: cfg.dup_permille,
            order: 0,
        };
        Sim {
            cfg,
            rng,
            now: start,
            start,
            clock,
            link,
            cloud,
            edge,
            report: Report::default(),
        }
    }

    fn edge_config(cfg: &Config) -> edge::Config {
        edge::Config {
            uplink: outbox::Config {
                window: cfg.window,
                capacity: cfg.capacity,
                initial_rto: Duration::from_millis(500),
                max_rto: Duration::from_secs(8),
            },
            max_pending: 64,
            max_tombstones: 32,
            inventory_chunk: 5,
            ..edge::Config::default()
        }
    }

    fn chance(&mut self, permille: u32) -> bool {
        (self.rng.next_u64() % 1000) < u64::from(permille)
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u64() % n.max(1) as u64) as usize
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.rng.next_u64() % (hi - lo + 1))
    }

    fn key(&mut self) -> String {
        let i = self.pick(self.cfg.keys);
        format!("default/pod/p{i}")
    }

    // === schedule ===

    fn play(&mut self) -> Result<(), Divergence> {
        for _ in 0..self.cfg.steps {
            let roll = self.pick(100);
            match roll {
                0..40 => self.cloud_upsert(),
                40..52 => self.cloud_delete(),
                52..70 => self.edge_status(),
                70..75 => {
                    let (loss, dup) = (self.pick(200) as u32, self.pick(200) as u32);
                    self.link.loss = loss;
                    self.link.dup = dup;
                }
                _ => {}
            }
            if self.chance(self.cfg.disconnect_permille) {
                self.disconnect();
            }
            if self.chance(self.cfg.crash_permille) {
                self.crash()?;
            }
            let dt = self.millis(0, 400);
            self.run_until(self.now + dt)?;
        }
        Ok(())
    }

    fn heal(&mut self) -> Result<(), Divergence> {
        self.link.loss = 0;
        self.link.dup = 0;
        if !self.link.up && self.link.reconnect_at.is_none() {
            self.link.reconnect_at = Some(self.now);
        }
        let deadline = self.now + Duration::from_secs(600);
        while self.now < deadline {
            let next = self.now + Duration::from_millis(250);
            self.run_until(next)?;
            if self.quiet() {
                return self.check_final();
            }
        }
        Err(Divergence::NotQuiescent)
    }

    fn quiet(&self) -> bool {
        self.link.up
            && self.link.to_edge.is_empty()
            && self.link.to_cloud.is_empty()
            && self.cloud.session.is_idle()
            && self.cloud.backlog.is_empty()
            && self.edge.session.is_idle()
            && self.edge.unflushed.is_empty()
            && self.edge.backlog.is_empty()
            && self.edge.uplink_queue.is_empty()
    }

    fn cloud_upsert(&mut self) {
        let key = self.key();
        self.cloud.rv += 1;
        let rv = self.cloud.rv;
        let op = if self.cloud.desired.insert(key.clone(), rv).is_some() {
            Operation::Update
        } else {
            Operation::Insert
        };
        let msg = object_message(&key, rv, op);
        self.cloud_enqueue(msg);
    }

    fn cloud_delete(&mut self) {
        let key = self.key();
        if self.cloud.desired.remove(&key).is_none() {
            return;
        }
        self.cloud.rv += 1;
        let rv = self.cloud.rv;
        self.cloud_enqueue(object_message(&key, rv, Operation::Delete));
    }

    fn cloud_enqueue(&mut self, msg: Message) {
        if !self.cloud.backlog.is_empty() {
            self.cloud.backlog.push_back(msg);
            return;
        }
        if let Err(full) = self.cloud.session.enqueue(msg) {
            self.cloud.backlog.push_back(full.into_message());
        }
    }

    fn edge_status(&mut self) {
        let key = format!("default/podpatch/p{}", self.pick(self.cfg.keys));
        self.edge.seq += 1;
        let seq = self.edge.seq;
        // The durable queue and the status are written together, before the session sees them.
        self.edge.uplink_queue.insert(key.clone(), seq);
        self.edge.status_seq.insert(key.clone(), seq);
        let msg = status_message(&key, seq);
        self.edge_enqueue(msg);
    }

    fn edge_enqueue(&mut self, msg: Message) {
        if !self.edge.backlog.is_empty() {
            self.edge.backlog.push_back(msg);
            return;
        }
        if let Err(full) = self.edge.session.enqueue_uplink(msg) {
            self.edge.backlog.push_back(full.into_message());
        }
    }

    fn disconnect(&mut self) {
        if !self.link.up {
            return;
        }
        self.report.disconnects += 1;
        self.link.up = false;
        self.link.to_edge.clear();
        self.link.to_cloud.clear();
        self.cloud.session.disconnected();
        self.edge.session.disconnected();
        let delay = self.millis(50, 3_000);
        self.link.reconnect_at = Some(self.now + delay);
    }

    fn crash(&mut self) -> Result<(), Divergence> {
        self.report.crashes += 1;
        if self.link.up {
            self.disconnect();
        } else {
            self.cloud.session.disconnected();
        }
        // Memory is gone; the store and the durable uplink queue survive.
        self.edge.unflushed.clear();
        self.edge.flush_at = None;
        self.edge.backlog.clear();
        self.check_floor("after an edge crash")?;
        let inventory: Vec<(String, Option<u64>)> = self
            .edge
            .store
            .iter()
            .filter(|(_, h)| !h.deleted)
            .map(|(k, h)| (k.clone(), Some(h.version)))
            .collect();
        let seed = self.rng.next_u64();
        self.edge.session = edge::Session::new(
            Self::edge_config(&self.cfg),
            inventory,
            seed,
            self.clock,
            self.now,
        );
        let queued: Vec<(String, u64)> = self
            .edge
            .uplink_queue
            .iter()
            .map(|(k, s)| (k.clone(), *s))
            .collect();
        for (key, seq) in queued {
            self.edge_enqueue(status_message(&key, seq));
        }
        Ok(())
    }

    // === event loop ===

    fn run_until(&mut self, until: Instant) -> Result<(), Divergence> {
        loop {
            self.pump()?;
            let next = [
                self.link.to_edge.iter().map(|w| w.at).min(),
                self.link.to_cloud.iter().map(|w| w.at).min(),
                self.cloud.session.poll_timeout(),
                self.edge.session.poll_timeout(),
                self.edge.flush_at,
                self.link.reconnect_at,
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.fire()?;
                }
                _ => {
                    self.now = until;
                    return Ok(());
                }
            }
        }
    }

    fn fire(&mut self) -> Result<(), Divergence> {
        let now = self.now;
        if self.link.reconnect_at.is_some_and(|t| t <= now) {
            self.link.reconnect_at = None;
            self.link.up = true;
            self.cloud.session.connected(now, self.cfg.negotiated);
            self.edge.session.connected(now, self.cfg.negotiated);
        }
        if self.edge.flush_at.is_some_and(|t| t <= now) {
            self.flush();
        }
        self.cloud.session.handle_timeout(now);
        self.edge.session.handle_timeout(now);
        while let Some(bytes) = take_due(&mut self.link.to_edge, now) {
            let msg = decode(&bytes);
            self.edge.session.handle_frame(now, msg);
        }
        while let Some(bytes) = take_due(&mut self.link.to_cloud, now) {
            let msg = decode(&bytes);
            if self.cloud.session.handle_frame(now, msg).is_err() {
                self.disconnect();
                break;
            }
        }
        Ok(())
    }

    /// Moves messages and events until both sessions have nothing more to say right now.
    fn pump(&mut self) -> Result<(), Divergence> {
        loop {
            let mut progress = false;
            while let Some(m) = self.cloud.session.poll_transmit(self.now) {
                progress = true;
                self.send(true, &m);
            }
            while let Some(m) = self.edge.session.poll_transmit(self.now) {
                progress = true;
                self.send(false, &m);
            }
            while let Some(ev) = self.cloud.session.poll_event() {
                progress = true;
                self.on_cloud_event(ev)?;
            }
            while let Some(ev) = self.edge.session.poll_event() {
                progress = true;
                self.on_edge_event(ev);
            }
            progress |= self.retry_backlogs();
            self.check_bounds()?;
            if !progress {
                return Ok(());
            }
        }
    }

    fn retry_backlogs(&mut self) -> bool {
        let mut progress = false;
        while let Some(m) = self.cloud.backlog.pop_front() {
            if let Err(full) = self.cloud.session.enqueue(m) {
                self.cloud.backlog.push_front(full.into_message());
                break;
            }
            progress = true;
        }
        while let Some(m) = self.edge.backlog.pop_front() {
            if let Err(full) = self.edge.session.enqueue_uplink(m) {
                self.edge.backlog.push_front(full.into_message());
                break;
            }
            progress = true;
        }
        progress
    }

    fn send(&mut self, to_edge: bool, msg: &Message) {
        if !self.link.up {
            return;
        }
        self.report.messages += 1;
        if self.chance(self.link.loss) {
            return;
        }
        let copies = if self.chance(self.link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter_ms = u64::try_from(self.cfg.jitter.as_millis()).unwrap_or(0);
            let at = self.now + self.cfg.latency + self.millis(0, jitter_ms);
            self.link.order += 1;
            let wire = Wire {
                at,
                order: self.link.order,
                bytes: msg.to_json(),
            };
            if to_edge {
                self.link.to_edge.push(wire);
            } else {
                self.link.to_cloud.push(wire);
            }
        }
    }

    fn on_cloud_event(&mut self, ev: cloud::Event) -> Result<(), Divergence> {
        match ev {
            cloud::Event::ResyncNeeded => {
                let desired: Vec<(String, Option<u64>)> = self
                    .cloud
                    .desired
                    .iter()
                    .map(|(k, v)| (k.clone(), Some(*v)))
                    .collect();
                let plan = self.cloud.session.resync(desired);
                for key in plan.send {
                    if let Some(rv) = self.cloud.desired.get(&key).copied() {
                        self.cloud_enqueue(object_message(&key, rv, Operation::Update));
                    }
                }
                for (key, version) in plan.delete {
                    let mut msg = object_message(&key, 0, Operation::Delete);
                    msg.header.resource_version =
                        version.map(|v| v.to_string()).unwrap_or_default();
                    self.cloud_enqueue(msg);
                }
            }
            cloud::Event::Acked {
                key,
                version,
                deleted,
            } => {
                self.report.acks += 1;
                if let Some(v) = version {
                    let floor = self.cloud.floor.entry(key.clone()).or_insert((v, deleted));
                    if supersedes((Some(v), deleted), (Some(floor.0), floor.1)) {
                        *floor = (v, deleted);
                    }
                    if self.cfg.check_acks {
                        self.check_key(&key, (v, deleted), "when the cloud saw the ack")?;
                    }
                }
            }
            cloud::Event::Uplink { token, message } => {
                if let Some(token) = token {
                    let seq = parse_version(&message.header.resource_version).unwrap_or(0);
                    let held = self
                        .cloud
                        .statuses
                        .entry(message.route.resource.clone())
                        .or_insert(0);
                    *held = (*held).max(seq);
                    self.cloud.session.complete_uplink(
                        self.now,
                        token,
                        Some(serde_json::Value::String(names::ACK_CONTENT.into())),
                    );
                }
            }
            cloud::Event::Writable => {}
            cloud::Event::Timeout => self.disconnect(),
        }
        Ok(())
    }

    fn on_edge_event(&mut self, ev: edge::Event) {
        match ev {
            edge::Event::Apply {
                token,
                key,
                version,
                deleted,
                ..
            } => {
                if self.edge.flush_at.is_none() {
                    self.edge.flush_at = Some(self.now + self.cfg.flush_interval);
                }
                self.edge.unflushed.push((token, key, version, deleted));
                if self.cfg.faulty_edge {
                    // The bug under test: ack first, persist at the next flush.
                    self.edge.session.persisted(self.now, [token]);
                }
            }
            edge::Event::UplinkAcked { key, seq, .. } => {
                if let Some(seq) = seq
                    && self.edge.uplink_queue.get(&key).is_some_and(|q| *q <= seq)
                {
                    self.edge.uplink_queue.remove(&key);
                }
            }
            edge::Event::Timeout => self.disconnect(),
            // The schedule sends nothing outside reliable sync; room is retried on every pump.
            edge::Event::Deliver(_) | edge::Event::Writable => {}
        }
    }

    fn flush(&mut self) {
        self.edge.flush_at = None;
        let batch = std::mem::take(&mut self.edge.unflushed);
        let mut tokens = Vec::with_capacity(batch.len());
        for (token, key, version, deleted) in batch {
            let version = version.unwrap_or(0);
            let newer = self
                .edge
                .store
                .get(&key)
                .is_none_or(|h| version > h.version || (version == h.version && deleted));
            if newer {
                self.edge.store.insert(key, Held { version, deleted });
            }
            tokens.push(token);
        }
        if !self.cfg.faulty_edge {
            self.edge.session.persisted(self.now, tokens);
        }
    }

    // === checks ===

    fn check_key(
        &self,
        key: &str,
        (acked, deleted): (u64, bool),
        when: &'static str,
    ) -> Result<(), Divergence> {
        let held = self.edge.store.get(key);
        let stored = held.map(|h| h.version);
        // An acked upsert must be stored at that version or newer; an acked delete only forbids a
        // live older copy (absence is what a delete leaves).
        let lost = if deleted {
            held.is_some_and(|h| !h.deleted && h.version < acked)
        } else {
            stored.is_none_or(|s| s < acked)
        };
        if lost {
            return Err(Divergence::AckedButLost {
                key: key.to_owned(),
                acked,
                stored,
                when,
            });
        }
        Ok(())
    }

    fn check_floor(&self, when: &'static str) -> Result<(), Divergence> {
        if !self.cfg.check_acks {
            return Ok(());
        }
        for (key, acked) in &self.cloud.floor {
            self.check_key(key, *acked, when)?;
        }
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), Divergence> {
        let c = self.cfg.capacity + self.cfg.window;
        let checks = [
            ("cloud outbox", self.cloud.session.outbox().queued_len(), c),
            (
                "cloud in flight",
                self.cloud.session.outbox().in_flight_len(),
                self.cfg.window,
            ),
            ("edge uplink", self.edge.session.uplink().queued_len(), c),
            ("edge pending", self.edge.session.pending_len(), 64),
            ("edge tombstones", self.edge.session.tombstones_len(), 32),
        ];
        for (what, len, max) in checks {
            if len > max {
                return Err(Divergence::Unbounded { what, len });
            }
        }
        Ok(())
    }

    fn check_final(&self) -> Result<(), Divergence> {
        self.check_floor("after healing")?;
        let live: BTreeMap<&String, u64> = self
            .edge
            .store
            .iter()
            .filter(|(_, h)| !h.deleted)
            .map(|(k, h)| (k, h.version))
            .collect();
        let mut wrong = BTreeMap::new();
        for (k, v) in &self.cloud.desired {
            let held = live.get(k).copied();
            if held != Some(*v) {
                wrong.insert(k.clone(), (Some(*v), held));
            }
        }
        for (k, v) in &live {
            if !self.cloud.desired.contains_key(*k) {
                wrong.insert((*k).clone(), (None, Some(*v)));
            }
        }
        if !wrong.is_empty() {
            return Err(Divergence::Diverged { wrong });
        }
        for (key, seq) in &self.edge.status_seq {
            let cloud = self.cloud.statuses.get(key).copied();
            if cloud != Some(*seq) {
                return Err(Divergence::StatusLost {
                    key: key.clone(),
                    edge: *seq,
                    cloud,
                });
            }
        }
        Ok(())
    }
}

fn take_due(queue: &mut Vec<Wire>, now: Instant) -> Option<Vec<u8>> {
    let idx = queue
        .iter()
        .enumerate()
        .filter(|(_, w)| w.at <= now)
        .min_by_key(|(_, w)| (w.at, w.order))
        .map(|(i, _)| i)?;
    Some(queue.swap_remove(idx).bytes)
}

fn decode(bytes: &[u8]) -> Message {
    // The harness only carries what the sessions produced; a decode failure is a codec bug.
    Message::from_json(bytes, MAX_FRAME).expect("the codec round-trips every message")
}

fn object_message(key: &str, rv: u64, op: Operation) -> Message {
    let name = key.rsplit('/').next().unwrap_or(key);
    Message::new(
        "",
        0,
        Route::new(names::EDGECONTROLLER, names::RESOURCE_GROUP, op, key),
    )
    .with_resource_version(rv.to_string())
    .with_content(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string()},
    }))
}

fn status_message(key: &str, seq: u64) -> Message {
    Message::new(
        "",
        0,
        Route::new(
            names::EDGEHUB_MODULE,
            names::RESOURCE_GROUP,
            Operation::Patch,
            key,
        ),
    )
    .with_resource_version(seq.to_string())
    .with_content(serde_json::Value::String(format!(
        "{{\"status\":{{\"phase\":\"Running\",\"seq\":{seq}}}}}"
    )))
}
