//! The reliable outbox shared by both directions: per-object coalescing, a window of messages in
//! flight, acks matched by `parent_msg_id`, retransmission with exponential backoff, and a bounded
//! queue with a back-pressure signal.
//!
//! Keys are resource strings (edge form). At most one message per key is in flight at a time; a newer
//! version of a key that is in flight waits in the queue, and replaces the in-flight one at its next
//! retransmission (the old one is abandoned, and a late ack for it is ignored). Ordering between
//! different keys is not guaranteed, as upstream does not guarantee it either.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::message::Message;

use super::stamp::{IdGen, WallClock, supersedes};

/// Outbox settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Messages in flight (sent, not yet acked) at once. 1 behaves like upstream cloudhub. Default 32.
    pub window: usize,
    /// Queued (not in flight) entries before [`Outbox::push`] refuses more. Default 65,536.
    pub capacity: usize,
    /// First retransmission timeout. Default 5 s (upstream resends every 5 s).
    pub initial_rto: Duration,
    /// Largest retransmission timeout after doubling. Default 60 s.
    pub max_rto: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 32,
            capacity: 65_536,
            initial_rto: Duration::from_secs(5),
            max_rto: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), super::ConfigError> {
        if self.window == 0 {
            return Err(super::ConfigError(
                "outbox window must be at least 1".into(),
            ));
        }
        if self.capacity == 0 {
            return Err(super::ConfigError(
                "outbox capacity must be at least 1".into(),
            ));
        }
        if self.initial_rto.is_zero() || self.max_rto < self.initial_rto {
            return Err(super::ConfigError(
                "retransmission timeouts must satisfy 0 < initial_rto <= max_rto".into(),
            ));
        }
        Ok(())
    }
}

/// What an ack released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The key (resource string).
    pub key: String,
    /// The version that was acked.
    pub version: Option<u64>,
    /// Whether the acked message was a delete.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    version: Option<u64>,
    deleted: bool,
    message: Message,
}

#[derive(Debug, Clone)]
struct Flight {
    key: String,
    entry: Entry,
    deadline: Instant,
    rto: Duration,
    transmissions: u32,
}

/// The outbox state machine. See the module docs.
#[derive(Debug)]
pub struct Outbox {
    config: Config,
    /// Entries waiting to be sent, by key.
    queued: HashMap<String, Entry>,
    /// Keys of `queued` that are not in flight, in FIFO order. May hold keys that were since removed
    /// from `queued`; those are skipped.
    ready: VecDeque<String>,
    /// In-flight messages by message id.
    flights: HashMap<String, Flight>,
    /// Message id of the in-flight message of each key.
    flight_of: HashMap<String, String>,
    /// Set when a push was refused; cleared (and reported once) when room is back.
    blocked: bool,
    /// No flight is due before this (a lower bound: acks do not raise it), so that most polls need
    /// no scan of the flights.
    earliest: Option<Instant>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(config: Config) -> Self {
        Outbox {
            config,
            queued: HashMap::new(),
            ready: VecDeque::new(),
            flights: HashMap::new(),
            flight_of: HashMap::new(),
            blocked: false,
            earliest: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Queues `message` for `key` at `version`. A newer version replaces a queued older one in place (a
    /// delete wins at equal versions); an older or equal one is dropped as superseded.
    ///
    /// Gives the message back when the queue is full; the outbox then reports room again through
    /// [`take_writable`](Self::take_writable).
    pub fn push(
        &mut self,
        key: String,
        version: Option<u64>,
        deleted: bool,
        message: Message,
    ) -> Result<(), super::Full> {
        let entry = Entry {
            version,
            deleted,
            message,
        };
        if let Some(old) = self.queued.get_mut(&key) {
            if supersedes((version, deleted), (old.version, old.deleted)) {
                *old = entry;
            }
            return Ok(());
        }
        if let Some(id) = self.flight_of.get(&key)
            && let Some(f) = self.flights.get(id)
            && !supersedes((version, deleted), (f.entry.version, f.entry.deleted))
        {
            return Ok(());
        }
        if self.queued.len() >= self.config.capacity {
            self.blocked = true;
            return Err(super::Full(Box::new(entry.message)));
        }
        let in_flight = self.flight_of.contains_key(&key);
        self.queued.insert(key.clone(), entry);
        if !in_flight {
            self.ready.push_back(key);
        }
        Ok(())
    }

    /// Removes a queued (not in-flight) entry for `key`, if any.
    pub fn remove_queued(&mut self, key: &str) -> bool {
        // `ready` may keep the key; `next_ready` skips keys no longer queued. Compact it now and then so
        // stale keys cannot pile up.
        let removed = self.queued.remove(key).is_some();
        if self.ready.len() > 2 * self.queued.len() + 64 {
            let queued = &self.queued;
            self.ready.retain(|k| queued.contains_key(k));
        }
        removed
    }

    /// The version and delete flag of what is queued or in flight for `key` (the newest of the two).
    pub fn pending_version(&self, key: &str) -> Option<(Option<u64>, bool)> {
        if let Some(e) = self.queued.get(key) {
            return Some((e.version, e.deleted));
        }
        let id = self.flight_of.get(key)?;
        self.flights
            .get(id)
            .map(|f| (f.entry.version, f.entry.deleted))
    }

    /// Handles an ack (a message whose `parent_msg_id` is `parent_id`). Unknown ids (duplicates, acks of
    /// abandoned messages, answers to something else) return `None`.
    pub fn ack(&mut self, parent_id: &str) -> Option<Acked> {
        let flight = self.flights.remove(parent_id)?;
        self.flight_of.remove(&flight.key);
        if self.queued.contains_key(&flight.key) {
            self.ready.push_back(flight.key.clone());
        }
        self.release_if_idle();
        Some(Acked {
            key: flight.key,
            version: flight.entry.version,
            deleted: flight.entry.deleted,
        })
    }

    /// The next message to write, if any: first a due retransmission, then a new message while the
    /// window has room. Stamps new messages with a fresh id and the timestamp of `now`.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        ids: &mut IdGen,
        clock: &WallClock,
    ) -> Option<Message> {
        if let Some(msg) = self.retransmit(now, ids, clock) {
            return Some(msg);
        }
        if self.flights.len() >= self.config.window {
            return None;
        }
        let key = self.next_ready()?;
        let entry = self.queued.remove(&key)?;
        Some(self.launch(now, key, entry, ids, clock))
    }

    /// Gives the maps' room back once nothing is queued or in flight: they keep the capacity of
    /// their fullest moment (a resync of hundreds of objects) otherwise, for as long as the peer
    /// lives and whether it is busy or idle.
    fn release_if_idle(&mut self) {
        if self.is_idle() && self.flights.capacity() + self.queued.capacity() > 0 {
            self.queued = HashMap::new();
            self.ready = VecDeque::new();
            self.flights = HashMap::new();
            self.flight_of = HashMap::new();
        }
    }

    fn next_ready(&mut self) -> Option<String> {
        while let Some(key) = self.ready.pop_front() {
            if self.queued.contains_key(&key) && !self.flight_of.contains_key(&key) {
                return Some(key);
            }
        }
        None
    }

    fn launch(
        &mut self,
        now: Instant,
        key: String,
        mut entry: Entry,
        ids: &mut IdGen,
        clock: &WallClock,
    ) -> Message {
        let id = ids.next_id();
        entry.message.header.id = id.clone();
        entry.message.header.timestamp = clock.unix_ms(now);
        let msg = entry.message.clone();
        self.flight_of.insert(key.clone(), id.clone());
        let deadline = now + self.config.initial_rto;
        self.earliest = Some(self.earliest.map_or(deadline, |e| e.min(deadline)));
        self.flights.insert(
            id,
            Flight {
                key,
                entry,
                deadline,
                rto: self.config.initial_rto,
                transmissions: 1,
            },
        );
        msg
    }

    fn retransmit(&mut self, now: Instant, ids: &mut IdGen, clock: &WallClock) -> Option<Message> {
        if self.earliest.is_none_or(|e| e > now) {
            return None;
        }
        let due = self
            .flights
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .min_by_key(|(_, f)| f.deadline)
            .map(|(id, _)| id.clone());
        let Some(id) = due else {
            // The bound was stale (the flights it stood for were acked): make it exact.
            self.earliest = self.flights.values().map(|f| f.deadline).min();
            return None;
        };
        let flight = self.flights.get_mut(&id)?;
        let msg = if self.queued.contains_key(&flight.key) {
            // A newer version waits: abandon the old message and send the new one in its place.
            let key = flight.key.clone();
            self.flights.remove(&id);
            self.flight_of.remove(&key);
            let entry = self.queued.remove(&key)?;
            self.launch(now, key, entry, ids, clock)
        } else {
            flight.transmissions += 1;
            flight.rto = (flight.rto * 2).min(self.config.max_rto);
            flight.deadline = now + flight.rto;
            flight.entry.message.clone()
        };
        // Retransmissions are rare: an exact bound is worth one scan here.
        self.earliest = self.flights.values().map(|f| f.deadline).min();
        Some(msg)
    }

    /// When the next retransmission may be due (never later than the earliest deadline; possibly
    /// earlier, after acks, which costs one spurious wake-up).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.flights.is_empty() {
            return None;
        }
        self.earliest
    }

    /// The connection is gone: every in-flight message goes back to the queue (unless a newer version
    /// of its key is queued), to be sent again with a new id on the next connection.
    pub fn reset(&mut self) {
        let flights: Vec<Flight> = self.flights.drain().map(|(_, f)| f).collect();
        self.flight_of.clear();
        self.earliest = None;
        for f in flights {
            // Either a newer version waited behind this flight (and was never made ready), or the
            // flight's own entry goes back: the key is ready again in both cases.
            if !self.queued.contains_key(&f.key) {
                self.queued.insert(f.key.clone(), f.entry);
            }
            self.ready.push_front(f.key);
        }
    }

    /// Reports, once, that a refused push would now be accepted (the queue fell to half its capacity).
    pub fn take_writable(&mut self) -> bool {
        if self.blocked && self.queued.len() <= self.config.capacity / 2 {
            self.blocked = false;
            return true;
        }
        false
    }

    /// Entries queued and not in flight.
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Messages in flight.
    pub fn in_flight_len(&self) -> usize {
        self.flights.len()
    }

    /// `true` when nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.flights.is_empty()
    }

    /// Keys queued or in flight.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.queued
            .keys()
            .chain(self.flight_of.keys())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Operation, Route};

    fn msg(key: &str) -> Message {
        Message::new("", 0, Route::new("t", "resource", Operation::Update, key))
    }

    fn setup(window: usize, capacity: usize) -> (Outbox, IdGen, WallClock, Instant) {
        let now = Instant::now();
        let cfg = Config {
            window,
            capacity,
            ..Config::default()
        };
        (Outbox::new(cfg), IdGen::new(1), WallClock::new(now, 0), now)
    }

    #[test]
    fn coalesces_queued_versions_and_delete_wins() {
        let (mut o, mut ids, clock, now) = setup(1, 10);
        o.push("a".into(), Some(1), false, msg("a")).unwrap();
        o.push("a".into(), Some(3), false, msg("a")).unwrap();
        o.push("a".into(), Some(2), false, msg("a")).unwrap();
        assert_eq!(o.queued_len(), 1);
        assert_eq!(o.pending_version("a"), Some((Some(3), false)));
        o.push("a".into(), Some(3), true, msg("a")).unwrap();
        assert_eq!(o.pending_version("a"), Some((Some(3), true)));
        let m = o.poll_transmit(now, &mut ids, &clock).unwrap();
        let acked = o.ack(&m.header.id).unwrap();
        assert_eq!(
            acked,
            Acked {
                key: "a".into(),
                version: Some(3),
                deleted: true
            }
        );
        assert!(o.is_idle());
    }

    #[test]
    fn an_outbox_gives_its_room_back_once_everything_is_acked() {
        let (mut o, mut ids, clock, now) = setup(64, 1000);
        let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        for k in &keys {
            o.push(k.clone(), Some(1), false, msg(k)).unwrap();
        }
        let mut sent: Vec<String> = Vec::new();
        while sent.len() < keys.len() {
            while let Some(m) = o.poll_transmit(now, &mut ids, &clock) {
                sent.push(m.header.id);
            }
            let id = sent.iter().find(|id| o.flights.contains_key(*id)).cloned();
            assert!(o.ack(&id.expect("a flight")).is_some());
        }
        for id in &sent {
            o.ack(id);
        }
        assert!(o.is_idle());
        let room = o.queued.capacity()
            + o.ready.capacity()
            + o.flights.capacity()
            + o.flight_of.capacity();
        assert_eq!(room, 0, "an idle outbox keeps no room");
        // And it works as before afterwards.
        o.push("again".into(), Some(2), false, msg("again"))
            .unwrap();
        let m = o.poll_transmit(now, &mut ids, &clock).unwrap();
        assert!(o.ack(&m.header.id).is_some());
    }

    #[test]
    fn window_limits_flights_and_acks_open_it() {
        let (mut o, mut ids, clock, now) = setup(2, 10);
        for k in ["a", "b", "c"] {
            o.push(k.into(), Some(1), false, msg(k)).unwrap();
        }
        let m1 = o.poll_transmit(now, &mut ids, &clock).unwrap();
        let _m2 = o.poll_transmit(now, &mut ids, &clock).unwrap();
        assert!(o.poll_transmit(now, &mut ids, &clock).is_none());
        assert!(o.ack(&m1.header.id).is_some());
        assert!(o.ack(&m1.header.id).is_none(), "duplicate ack is ignored");
        assert!(o.poll_transmit(now, &mut ids, &clock).is_some());
    }

    #[test]
    fn retransmits_with_backoff_and_replaces_with_newer_version() {
        let (mut o, mut ids, clock, now) = setup(1, 10);
        o.push("a".into(), Some(1), false, msg("a")).unwrap();
        let m1 = o.poll_transmit(now, &mut ids, &clock).unwrap();
        assert_eq!(o.poll_timeout(), Some(now + Duration::from_secs(5)));
        let t1 = now + Duration::from_secs(5);
        let r1 = o.poll_transmit(t1, &mut ids, &clock).unwrap();
        assert_eq!(r1.header.id, m1.header.id, "same id on retransmission");
        assert_eq!(o.poll_timeout(), Some(t1 + Duration::from_secs(10)));
        // a newer version waits behind the flight, then replaces it at the next retransmission
        o.push("a".into(), Some(2), false, msg("a")).unwrap();
        assert!(o.poll_transmit(t1, &mut ids, &clock).is_none());
        let t2 = t1 + Duration::from_secs(10);
        let m2 = o.poll_transmit(t2, &mut ids, &clock).unwrap();
        assert_ne!(m2.header.id, m1.header.id);
        assert!(
            o.ack(&m1.header.id).is_none(),
            "abandoned message's ack is ignored"
        );
        assert_eq!(o.ack(&m2.header.id).unwrap().version, Some(2));
    }

    #[test]
    fn full_queue_gives_the_message_back_and_signals_writable() {
        let (mut o, mut ids, clock, now) = setup(4, 2);
        o.push("a".into(), Some(1), false, msg("a")).unwrap();
        o.push("b".into(), Some(1), false, msg("b")).unwrap();
        let back = o.push("c".into(), Some(1), false, msg("c")).unwrap_err();
        assert_eq!(back.into_message().route.resource, "c");
        assert!(!o.take_writable());
        o.poll_transmit(now, &mut ids, &clock).unwrap();
        assert!(o.take_writable());
        assert!(!o.take_writable(), "reported once");
    }

    #[test]
    fn reset_requeues_flights() {
        let (mut o, mut ids, clock, now) = setup(4, 10);
        o.push("a".into(), Some(1), false, msg("a")).unwrap();
        o.push("b".into(), Some(1), false, msg("b")).unwrap();
        let m = o.poll_transmit(now, &mut ids, &clock).unwrap();
        o.push(
            m.route.resource.clone(),
            Some(2),
            false,
            msg(&m.route.resource),
        )
        .unwrap();
        o.poll_transmit(now, &mut ids, &clock).unwrap();
        o.reset();
        assert_eq!(o.in_flight_len(), 0);
        assert_eq!(o.queued_len(), 2);
        assert_eq!(o.pending_version(&m.route.resource), Some((Some(2), false)));
        let mut sent = 0;
        while o.poll_transmit(now, &mut ids, &clock).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 2);
    }
}
