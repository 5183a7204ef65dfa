//! Message identity without a clock or an OS random source: ids come from a seeded generator,
//! timestamps from the `now` the caller passes in.

use std::time::Instant;

/// Deterministic UUID v4 generator (splitmix64). Seed it from a real random source in production and
/// from the schedule seed in simulations.
#[derive(Debug, Clone)]
pub struct IdGen {
    state: u64,
}

impl IdGen {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        IdGen { state: seed }
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A new id in UUID v4 text form (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), as upstream's
    /// `google/uuid` produces.
    pub fn next_id(&mut self) -> String {
        let hi = self.next_u64();
        let lo = self.next_u64();
        let mut v = (u128::from(hi) << 64) | u128::from(lo);
        // version 4 and RFC 4122 variant bits
        v = (v & !(0xF_u128 << 76)) | (0x4_u128 << 76);
        v = (v & !(0x3_u128 << 62)) | (0x2_u128 << 62);
        let h = format!("{v:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// A fresh seed for [`IdGen`] from the standard library's per-process random keys and the time.
/// Only in the I/O features: the pure core reads no clock.
#[cfg(any(feature = "transport", feature = "store"))]
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Maps the caller's monotonic `now` to wall-clock milliseconds for message timestamps.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    base: Instant,
    base_unix_ms: i64,
}

impl WallClock {
    /// `base` is a monotonic instant and `base_unix_ms` the wall-clock time at that instant.
    pub fn new(base: Instant, base_unix_ms: i64) -> Self {
        WallClock { base, base_unix_ms }
    }

    /// Wall-clock milliseconds at `now`.
    pub fn unix_ms(&self, now: Instant) -> i64 {
        let elapsed = now.saturating_duration_since(self.base).as_millis();
        self.base_unix_ms
            .saturating_add(i64::try_from(elapsed).unwrap_or(i64::MAX))
    }
}

/// Parses a resourceVersion (or an uplink sequence number) for ordering. Kubernetes versions are
/// opaque strings, but every apiserver in use (and upstream KubeEdge, which compares them as
/// numbers) gives decimal integers; anything else is `None`, which orders as "unknown": it neither
/// wins nor loses a comparison, the newest arrival does.
pub fn parse_version(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

/// `true` when a change at `new` should replace what is held at `old`: a higher version wins; at equal
/// versions a delete wins over an upsert; when either version is unknown the newer arrival wins.
pub fn supersedes(new: (Option<u64>, bool), old: (Option<u64>, bool)) -> bool {
    match (new.0, old.0) {
        (Some(n), Some(o)) => n > o || (n == o && new.1 && !old.1),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v4_shaped_and_distinct() {
        let mut g = IdGen::new(7);
        let a = g.next_id();
        let b = g.next_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn versions_order_with_delete_tiebreak() {
        assert!(supersedes((Some(2), false), (Some(1), false)));
        assert!(!supersedes((Some(1), false), (Some(2), false)));
        assert!(!supersedes((Some(2), false), (Some(2), false)));
        assert!(supersedes((Some(2), true), (Some(2), false)));
        assert!(!supersedes((Some(2), false), (Some(2), true)));
        assert!(supersedes((None, true), (Some(9), false)));
        assert!(supersedes((Some(1), false), (None, true)));
    }
}
