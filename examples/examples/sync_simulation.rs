//! The sync protocol under a hostile link, in virtual time: random schedules with loss,
//! duplication, reordering, disconnects and edge crashes, each checked for convergence.
//!
//! Run: `cargo run -p kubeedge-examples --example sync_simulation -- [SCHEDULES]`

use kubeedge_core::sync::sim::{self, Config};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let (mut msgs, mut acks, mut crashes, mut disconnects) = (0, 0, 0, 0);
    let mut virtual_secs = 0.0;
    for seed in 0..n {
        for negotiated in [true, false] {
            let mut cfg = Config::new(seed);
            cfg.negotiated = negotiated;
            match sim::run(cfg) {
                Ok(r) => {
                    msgs += r.messages;
                    acks += r.acks;
                    crashes += r.crashes;
                    disconnects += r.disconnects;
                    virtual_secs += r.elapsed.as_secs_f64();
                }
                Err(d) => {
                    eprintln!("seed {seed} (negotiated {negotiated}) diverged: {d}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "{} schedules converged: {msgs} messages, {acks} acks, {crashes} edge crashes, {disconnects} disconnects, {virtual_secs:.0} s of virtual time",
        2 * n
    );
}
