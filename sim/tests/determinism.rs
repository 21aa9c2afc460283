//! One seed run twice must produce byte-identical histories and event traces. madsim's own
//! determinism check is a heuristic (it compares random-draw counts); this compares everything
//! we record.
#![cfg(madsim)]

mod common;

#[test]
fn same_seed_same_history_and_trace() {
    let scenario = common::ci_scenario("mixed", 4242, 5, 12);
    let first = common::run_and_report(&scenario);
    let second = common::run_and_report(&scenario);
    assert!(
        first.history.len() > 50,
        "too few operations to compare: {}",
        first.history.len()
    );
    let (a, b) = (first.history.to_jsonl(), second.history.to_jsonl());
    if a != b {
        let line = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        panic!("histories differ (first differing line {line:?})");
    }
    assert_eq!(first.trace, second.trace, "event traces differ");
    assert_eq!(first.verdict, second.verdict);
    println!(
        "verdict: deterministic ({} ops, {} trace lines)",
        first.history.len(),
        first.trace.lines().count()
    );
}

/// Joins, leaves and kills for good change which servers exist and who hosts what; the run must
/// still be a function of the seed (and the replication check's verdict with it).
#[test]
fn membership_faults_replay_exactly() {
    let scenario = common::ci_scenario("membership", MEMBERSHIP_SEED, 5, 16);
    let first = common::run_and_report(&scenario);
    for event in ["join: start spare", "leave: ask", "for good"] {
        assert!(
            first.trace.contains(event),
            "seed {MEMBERSHIP_SEED} no longer plans a {event:?} event: pick another\n{}",
            first.trace
        );
    }
    let second = common::run_and_report(&scenario);
    assert_eq!(first.history.to_jsonl(), second.history.to_jsonl());
    assert_eq!(first.trace, second.trace, "event traces differ");
    assert_eq!(first.verdict, second.verdict);
    println!(
        "verdict: deterministic with membership faults ({} ops, {} trace lines)",
        first.history.len(),
        first.trace.lines().count()
    );
}

/// A `membership` seed (5 nodes, 16 s, CI settings) whose plan joins, leaves and kills.
const MEMBERSHIP_SEED: u64 = 26;

#[test]
fn different_seeds_differ() {
    let a = common::run_and_report(&common::ci_scenario("mixed", 1, 3, 8));
    let b = common::run_and_report(&common::ci_scenario("mixed", 2, 3, 8));
    assert_ne!(a.history.to_jsonl(), b.history.to_jsonl());
    println!("verdict: seeds 1 and 2 differ");
}
