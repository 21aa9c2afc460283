//! Seeded runs across scenarios (CI): each run prints its seed first and its verdict last; the
//! checker must find every history linearizable (and the set check clean), and every client must
//! make progress after the final heal. Split into several tests so the harness spreads them over
//! the cores.
#![cfg(madsim)]

mod common;

/// Seeds per scenario test; 8 tests x SEEDS_PER_TEST >= 200 seeds in CI.
const SEEDS_PER_TEST: u64 = 26;

#[test]
fn partitions_5_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("partitions", s, 5, 10)
    });
}

#[test]
fn messages_3_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("messages", s, 3, 10)
    });
}

#[test]
fn crashes_5_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("crashes", s, 5, 10)
    });
}

#[test]
fn mixed_5_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("mixed", s, 5, 10)
    });
}

#[test]
fn mixed_7_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("mixed", s, 7, 10)
    });
}

#[test]
fn set_5_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| common::ci_scenario("set", s, 5, 10));
}

#[test]
fn ycsb_3_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("ycsb", s, 3, 10)
    });
}

#[test]
fn no_faults_3_nodes() {
    common::run_seeds(1..=SEEDS_PER_TEST, |s| {
        common::ci_scenario("none", s, 3, 10)
    });
}

/// Seeds of the membership scenarios: nodes join, leave and are killed for good amid
/// partitions, crashes and message faults; after the final heal every shard's replicas must be
/// back on target (the replication check) besides the usual checks.
const MEMBERSHIP_SEEDS: u64 = 50;

/// 5 nodes + 2 spares; 20 simulated seconds (dead-node timeout 3 s, so that a node killed for
/// good has its replicas re-created within the run).
#[test]
fn membership_5_nodes() {
    common::run_seeds(1..=MEMBERSHIP_SEEDS, |s| {
        common::ci_scenario("membership", s, 5, 20)
    });
}

/// 7 nodes + 2 spares: more room for leaves and kills (the nemesis keeps at least
/// replication-factor active nodes).
#[test]
fn membership_7_nodes() {
    common::run_seeds(1..=MEMBERSHIP_SEEDS / 2, |s| {
        common::ci_scenario("membership", s, 7, 20)
    });
}

/// Seeds of the swarm (the default campaign): each draws its own cluster, workload, faults
/// (time, disk-latency and link faults included) and BUGGIFY; 10 simulated seconds each.
const SWARM_SEEDS: u64 = 40;

#[test]
fn swarm() {
    common::run_seeds(1..=SWARM_SEEDS, |s| common::swarm_scenario(s, 10));
}
