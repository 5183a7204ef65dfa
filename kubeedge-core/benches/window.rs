//! Delivery rate cloud → edge, acks included, against link latency and the edge's commit time,
//! for window 1 (upstream: one message in flight per node) and larger windows. Virtual time: the
//! numbers follow from the protocol, not from this machine's speed, and are exactly repeatable.
//! The edge commits in groups (everything that arrived while a commit ran is acked together).
//!
//! Run: `cargo bench -p kubeedge-core --bench window`

#[path = "common/pump.rs"]
mod pump;

use std::time::Duration;

fn main() {
    // `cargo test --benches` runs bench targets with `--test`-like args; a short run suffices there.
    let quick = std::env::args().any(|a| a == "--test" || a == "--quick");
    let objects = if quick { 200 } else { 10_000 };
    println!("objects per run: {objects}; commit = one fsync-like wait per group commit");
    println!();
    println!("| one-way latency | commit | window | objects/s | commits | speed-up vs window 1 |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for (one_way_ms, commit_ms) in [(0.05, 3.0), (10.0, 3.0), (50.0, 3.0), (150.0, 3.0)] {
        let mut base = 0.0;
        for window in [1, 8, 32, 128] {
            let (t, commits) = pump::run(&pump::Setup {
                window,
                objects,
                one_way: Duration::from_secs_f64(one_way_ms / 1000.0),
                commit: Duration::from_secs_f64(commit_ms / 1000.0),
                codec: false,
            });
            let rate = objects as f64 / t.as_secs_f64();
            if window == 1 {
                base = rate;
            }
            println!(
                "| {one_way_ms} ms | {commit_ms} ms | {window} | {rate:.0} | {commits} | {:.1}× |",
                rate / base
            );
        }
    }
}
