//! Load balancing: which backend a new connection (or UDP flow) goes to, and in which order the
//! others are tried when it refuses.
//!
//! The policies are upstream EdgeMesh's (read from an Istio `DestinationRule`'s
//! `trafficPolicy.loadBalancer`): round robin, random, and a consistent hash keyed by the client's
//! address or an HTTP header. The consistent hash is rendezvous hashing: each backend's score is a
//! hash of (key, backend), the highest wins, so adding or removing one backend moves only the keys
//! that it wins or won. `sessionAffinity: ClientIP` pins a client to its first backend until the
//! affinity times out or the backend goes away.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::table::{Backend, Frontend};

/// A load-balancing policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Each new connection to the next backend (the default).
    #[default]
    RoundRobin,
    /// A random backend.
    Random,
    /// The same backend for the same client address (Istio `USER_SOURCE_IP`).
    SourceIpHash,
    /// The same backend for the same value of this HTTP request header (Istio `HTTP_HEADER`);
    /// clients without it are spread round robin.
    HeaderHash(String),
}

impl Policy {
    /// From the mesh annotation's spelling (`ROUND_ROBIN`, `RANDOM`, `CONSISTENT_HASH_SOURCE_IP`,
    /// `CONSISTENT_HASH_HEADER:<name>`).
    pub fn parse(s: &str) -> Option<Policy> {
        match s.trim() {
            "ROUND_ROBIN" => Some(Policy::RoundRobin),
            "RANDOM" => Some(Policy::Random),
            "CONSISTENT_HASH_SOURCE_IP" => Some(Policy::SourceIpHash),
            other => other
                .strip_prefix("CONSISTENT_HASH_HEADER:")
                .filter(|h| !h.is_empty())
                .map(|h| Policy::HeaderHash(h.to_ascii_lowercase())),
        }
    }

    /// From a DestinationRule's `spec.trafficPolicy.loadBalancer` (JSON): `simple`
    /// (`ROUND_ROBIN`, `RANDOM`, `LEAST_REQUEST`/`LEAST_CONN` taken as round robin) or
    /// `consistentHash` with `useSourceIp` or `httpHeaderName`.
    pub fn from_destination_rule(lb: &serde_json::Value) -> Option<Policy> {
        if let Some(simple) = lb.get("simple").and_then(|v| v.as_str()) {
            return Some(match simple {
                "RANDOM" => Policy::Random,
                _ => Policy::RoundRobin,
            });
        }
        let hash = lb.get("consistentHash")?;
        if let Some(h) = hash.get("httpHeaderName").and_then(|v| v.as_str()) {
            return Some(Policy::HeaderHash(h.to_ascii_lowercase()));
        }
        if hash.get("useSourceIp").and_then(|v| v.as_bool()) == Some(true) {
            return Some(Policy::SourceIpHash);
        }
        None
    }

    /// The HTTP header this policy hashes, if any (the proxy reads the request head for it).
    pub fn header(&self) -> Option<&str> {
        match self {
            Policy::HeaderHash(h) => Some(h),
            _ => None,
        }
    }
}

/// What a pick knows about the connection.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// The value of the policy's header, when the policy hashes one and the request has it.
    pub header: Option<&'a str>,
}

/// The balancer's state: round-robin counters and affinities, per frontend.
#[derive(Debug, Default)]
pub struct Balancer {
    counter: AtomicU64,
    random: std::collections::hash_map::RandomState,
    affinity: Mutex<HashMap<(Frontend, IpAddr), (Backend, Instant)>>,
}

impl Balancer {
    /// A balancer with no history.
    pub fn new() -> Balancer {
        Balancer::default()
    }

    /// The backends of `frontend` in the order to try them: the chosen one first, then the rest
    /// (so a refusing backend is skipped for the next). Empty when there are none.
    pub fn order(
        &self,
        frontend: &Frontend,
        backends: &[Backend],
        policy: &Policy,
        affinity: Option<Duration>,
        client: Client<'_>,
        now: Instant,
    ) -> Vec<Backend> {
        if backends.is_empty() {
            return Vec::new();
        }
        if let Some(timeout) = affinity {
            let mut pinned = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            pinned.retain(|_, (_, at)| now.saturating_duration_since(*at) < timeout);
            if let Some((b, at)) = pinned.get_mut(&(*frontend, client.ip))
                && let Some(i) = backends.iter().position(|x| x == b)
            {
                *at = now;
                return rotate(backends, i);
            }
        }
        let mut order = match (policy, client.header) {
            (Policy::SourceIpHash, _) => self.rendezvous(backends, &client.ip),
            (Policy::HeaderHash(_), Some(value)) => self.rendezvous(backends, &value),
            (Policy::Random, _) => {
                let i = (self
                    .random
                    .hash_one(self.counter.fetch_add(1, Ordering::Relaxed))
                    % backends.len() as u64) as usize;
                rotate(backends, i)
            }
            _ => {
                let i =
                    (self.counter.fetch_add(1, Ordering::Relaxed) % backends.len() as u64) as usize;
                rotate(backends, i)
            }
        };
        order.truncate(backends.len());
        if affinity.is_some() {
            let mut pinned = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            pinned.insert((*frontend, client.ip), (order[0].clone(), now));
        }
        order
    }

    /// Records that `backend` answered for `client` (affinity follows the backend that worked, not
    /// the first one tried).
    pub fn served(&self, frontend: &Frontend, client: IpAddr, backend: &Backend, now: Instant) {
        let mut pinned = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = pinned.get_mut(&(*frontend, client)) {
            *entry = (backend.clone(), now);
        }
    }

    fn rendezvous<K: Hash>(&self, backends: &[Backend], key: &K) -> Vec<Backend> {
        let mut scored: Vec<(u64, &Backend)> = backends
            .iter()
            .map(|b| {
                // A fixed hasher: the same key picks the same backend in every agent and run.
                let mut h = Fnv::default();
                key.hash(&mut h);
                b.ip.hash(&mut h);
                b.port.hash(&mut h);
                (h.finish(), b)
            })
            .collect();
        scored.sort_by_key(|s| std::cmp::Reverse(s.0));
        scored.into_iter().map(|(_, b)| b.clone()).collect()
    }
}

fn rotate(backends: &[Backend], first: usize) -> Vec<Backend> {
    backends[first..]
        .iter()
        .chain(&backends[..first])
        .cloned()
        .collect()
}

/// FNV-1a, 64-bit, with a final mix: stable across processes (std's hashers are seeded).
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Protocol;

    fn backends(n: u8) -> Vec<Backend> {
        (1..=n)
            .map(|i| Backend {
                ip: IpAddr::from([10, 0, 0, i]),
                port: 80,
                node: None,
                pod: None,
            })
            .collect()
    }

    const FE: Frontend = (
        IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 1)),
        80,
        Protocol::Tcp,
    );

    fn client(last: u8) -> Client<'static> {
        Client {
            ip: IpAddr::from([192, 168, 0, last]),
            header: None,
        }
    }

    #[test]
    fn round_robin_spreads_and_orders_the_rest_after() {
        let lb = Balancer::new();
        let bs = backends(3);
        let now = Instant::now();
        let firsts: Vec<_> = (0..6)
            .map(|_| lb.order(&FE, &bs, &Policy::RoundRobin, None, client(1), now)[0].ip)
            .collect();
        assert_eq!(firsts[0..3], firsts[3..6]);
        assert_ne!(firsts[0], firsts[1]);
        assert_ne!(firsts[1], firsts[2]);
        let order = lb.order(&FE, &bs, &Policy::RoundRobin, None, client(1), now);
        assert_eq!(order.len(), 3, "every backend is tried in turn");
    }

    #[test]
    fn source_hash_is_stable_and_moves_few_keys_when_one_goes() {
        let lb = Balancer::new();
        let bs = backends(4);
        let now = Instant::now();
        let pick = |bs: &[Backend], c| {
            lb.order(&FE, bs, &Policy::SourceIpHash, None, client(c), now)[0].clone()
        };
        let before: Vec<_> = (0..100).map(|c| pick(&bs, c)).collect();
        assert_eq!(before, (0..100).map(|c| pick(&bs, c)).collect::<Vec<_>>());
        let used: std::collections::HashSet<_> = before.iter().map(|b| b.ip).collect();
        assert_eq!(used.len(), 4, "100 clients use all four backends");
        let fewer = &bs[1..];
        for (c, b) in before.iter().enumerate() {
            if b.ip != bs[0].ip {
                assert_eq!(pick(fewer, c as u8).ip, b.ip, "client {c} kept its backend");
            }
        }
    }

    #[test]
    fn header_hash_and_affinity() {
        let lb = Balancer::new();
        let bs = backends(5);
        let now = Instant::now();
        let policy = Policy::HeaderHash("x-user".into());
        let with = |v| Client {
            ip: IpAddr::from([192, 168, 0, 1]),
            header: Some(v),
        };
        let a = lb.order(&FE, &bs, &policy, None, with("alice"), now)[0].clone();
        for _ in 0..5 {
            assert_eq!(lb.order(&FE, &bs, &policy, None, with("alice"), now)[0], a);
        }
        let aff = Some(Duration::from_secs(10));
        let first = lb.order(&FE, &bs, &Policy::RoundRobin, aff, client(7), now)[0].clone();
        for _ in 0..5 {
            assert_eq!(
                lb.order(&FE, &bs, &Policy::RoundRobin, aff, client(7), now)[0],
                first
            );
        }
        let later = now + Duration::from_secs(11);
        lb.order(&FE, &bs, &Policy::RoundRobin, aff, client(7), later);
        let after: Vec<_> = (0..5)
            .map(|_| lb.order(&FE, &bs, &Policy::RoundRobin, aff, client(7), later)[0].clone())
            .collect();
        assert!(
            after.iter().all(|b| *b == after[0]),
            "re-pinned after the timeout"
        );
    }

    #[test]
    fn policies_parse_from_annotations_and_destination_rules() {
        assert_eq!(Policy::parse("RANDOM"), Some(Policy::Random));
        assert_eq!(
            Policy::parse("CONSISTENT_HASH_HEADER:X-User"),
            Some(Policy::HeaderHash("x-user".into()))
        );
        assert_eq!(Policy::parse("nonsense"), None);
        let dr = serde_json::json!({"consistentHash": {"useSourceIp": true}});
        assert_eq!(
            Policy::from_destination_rule(&dr),
            Some(Policy::SourceIpHash)
        );
        let dr = serde_json::json!({"simple": "RANDOM"});
        assert_eq!(Policy::from_destination_rule(&dr), Some(Policy::Random));
    }
}
