//! Seeds that once failed, replayed from their exact scenario files (`tests/regressions/`):
//! each is a bug the simulator found, written up in docs/SIMULATION.md, and none may come
//! back. A file is the `scenario.toml` the failing run wrote, so the replay is bit-for-bit the
//! run that failed.
#![cfg(madsim)]

mod common;

use std::path::PathBuf;

use sim::Scenario;

fn regression(file: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/regressions")
        .join(file);
    let scenario =
        Scenario::from_file(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let report = common::run_and_report(&scenario);
    assert!(
        report.verdict.passed(),
        "{file}: {}; replay: cargo run -p sim --release -- --scenario-file {}",
        report.verdict.summary(),
        path.display()
    );
}

/// Two leaders of term 3 in the metadata group: a replica holding the first two of the old
/// bootstrap entries (`AddLearner(1), Promote(1)`) counted itself the only voter.
#[test]
fn elections_seed5178_bootstrap_prefix_elected_a_lone_voter() {
    regression("elections-seed5178.toml");
}

/// The metadata group stayed leaderless: bootstrap voters that crashed before their replica
/// wrote anything came back without it.
#[test]
fn votes_seed87_bootstrap_replicas_forgotten_after_an_early_crash() {
    regression("votes-seed87.toml");
}

#[test]
fn votes_seed1118_bootstrap_replicas_forgotten_after_an_early_crash() {
    regression("votes-seed1118.toml");
}

#[test]
fn votes_seed5186_bootstrap_replicas_forgotten_after_an_early_crash() {
    regression("votes-seed5186.toml");
}

/// A new metadata leader marked a node killed for good long before alive (its start counted as
/// news from the member), so the map wanted the dead node's replicas back; with a second node
/// killed for good the metadata group lost its leader.
#[test]
fn membership_seed345_new_meta_leader_revived_a_dead_node() {
    regression("membership-seed345.toml");
}

#[test]
fn membership_seed162_new_meta_leader_revived_a_dead_node() {
    regression("membership-seed162.toml");
}
