//! CPU cost of moving objects cloud → edge through both sync sessions, acks included, with every
//! message encoded and decoded as on the real link (zero latency, instant commits): window 1
//! (upstream's one message in flight) against our default window of 32.
//!
//! Run: `cargo bench -p kubeedge-core --bench sync`

#[path = "common/pump.rs"]
mod pump;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn sync(c: &mut Criterion) {
    const N: usize = 1_000;
    let mut g = c.benchmark_group("cloud to edge with acks");
    g.throughput(Throughput::Elements(N as u64));
    for window in [1, 32] {
        g.bench_with_input(BenchmarkId::new("window", window), &window, |b, &window| {
            b.iter(|| {
                pump::run(&pump::Setup {
                    window,
                    objects: N,
                    one_way: Duration::ZERO,
                    commit: Duration::ZERO,
                    codec: true,
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sync);
criterion_main!(benches);
