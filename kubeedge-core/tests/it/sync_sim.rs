//! The deterministic simulation: random schedules over a hostile link must converge, and a faulty
//! edge must be caught.

use kubeedge_core::sync::sim::{self, Config, Divergence};
use proptest::prelude::*;
use std::time::Duration;

fn schedule(seed: u64, window: usize, negotiated: bool, loss: u32, dup: u32) -> Config {
    let mut cfg = Config::new(seed);
    cfg.window = window;
    cfg.negotiated = negotiated;
    cfg.loss_permille = loss;
    cfg.dup_permille = dup;
    cfg
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Once the link heals the edge holds exactly the desired set, nothing acked was ever lost, the
    /// cloud has every status, and memory stayed bounded: for every seed, window, fault rate, with
    /// and without the negotiated extensions.
    #[test]
    fn every_schedule_converges(
        seed in any::<u64>(),
        window in prop_oneof![Just(1usize), 2usize..16],
        negotiated in any::<bool>(),
        loss in 0u32..200,
        dup in 0u32..200,
    ) {
        let cfg = schedule(seed, window, negotiated, loss, dup);
        if let Err(d) = sim::run(cfg) {
            prop_assert!(false, "seed {seed} window {window} negotiated {negotiated}: {d}");
        }
    }
}

#[test]
fn a_perfect_link_converges_with_traffic() {
    let mut cfg = schedule(42, 8, true, 0, 0);
    cfg.disconnect_permille = 0;
    cfg.crash_permille = 0;
    let report = sim::run(cfg).unwrap();
    assert!(report.acks > 20, "{report:?}");
    assert_eq!(report.crashes, 0);
}

#[test]
fn crashes_and_disconnects_happen_in_the_default_schedule() {
    let mut crashes = 0;
    let mut disconnects = 0;
    for seed in 0..20 {
        let r = sim::run(Config::new(seed)).unwrap();
        crashes += r.crashes;
        disconnects += r.disconnects;
    }
    assert!(
        crashes > 10 && disconnects > 20,
        "{crashes} crashes, {disconnects} disconnects"
    );
}

/// The harness is able to fail: an edge that acks before it persists loses acked objects when it
/// crashes, and the harness says so.
#[test]
fn an_edge_that_acks_before_persisting_is_caught() {
    let mut caught = 0;
    for seed in 0..50 {
        let mut cfg = Config::new(seed);
        cfg.faulty_edge = true;
        // The faulty edge writes behind, once a second, as an ack-first design would.
        cfg.flush_interval = Duration::from_secs(1);
        match sim::run(cfg) {
            Err(Divergence::AckedButLost { .. }) => caught += 1,
            Err(other) => panic!("seed {seed}: unexpected {other}"),
            Ok(_) => {}
        }
    }
    assert!(caught >= 45, "only {caught} of 50 faulty runs were caught");
}

/// Without the ack checks the loss still shows in the end state: in upstream mode (no inventory)
/// the cloud trusts the acks it saw, so what a crash lost never comes back.
#[test]
fn a_faulty_edge_diverges_in_upstream_mode() {
    let mut diverged = 0;
    for seed in 0..50 {
        let mut cfg = Config::new(seed);
        cfg.faulty_edge = true;
        // The faulty edge writes behind, once a second, as an ack-first design would.
        cfg.flush_interval = Duration::from_secs(1);
        cfg.negotiated = false;
        cfg.check_acks = false;
        // Many keys, so that most objects are written once and a lost one is not healed by a
        // later update.
        cfg.keys = 200;
        match sim::run(cfg) {
            Err(Divergence::Diverged { .. }) => diverged += 1,
            Err(other) => panic!("seed {seed}: unexpected {other}"),
            Ok(_) => {}
        }
    }
    assert!(diverged >= 25, "only {diverged} of 50 faulty runs diverged");
}

/// The same faulty edge with the inventory extension: the edge's own inventory after each crash tells
/// the cloud what was really kept, so the end state converges even though acks lied. This is why the
/// extension exists.
#[test]
fn inventory_resync_repairs_what_a_faulty_edge_lost() {
    for seed in 0..50 {
        let mut cfg = Config::new(seed);
        cfg.faulty_edge = true;
        // The faulty edge writes behind, once a second, as an ack-first design would.
        cfg.flush_interval = Duration::from_secs(1);
        cfg.negotiated = true;
        cfg.check_acks = false;
        if let Err(d) = sim::run(cfg) {
            panic!("seed {seed}: {d}");
        }
    }
}
