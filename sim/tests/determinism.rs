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
    same_lines("event traces", &first.trace, &second.trace);
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
    same_lines(
        "histories",
        &first.history.to_jsonl(),
        &second.history.to_jsonl(),
    );
    same_lines("event traces", &first.trace, &second.trace);
    assert_eq!(first.verdict, second.verdict);
    println!(
        "verdict: deterministic with membership faults ({} ops, {} trace lines)",
        first.history.len(),
        first.trace.lines().count()
    );
}

/// A swarm seed draws its configuration from the seed: the same seed draws the same
/// configuration and replays bit for bit, with the time, disk and link faults and code-path
/// BUGGIFY of its draw (the first seed whose draw has at least two of those kinds and BUGGIFY
/// on), and its concretized file (what a failure writes) replays the same run.
#[test]
fn swarm_seed_replays_exactly() {
    let mut template = sim::Scenario::preset("swarm").expect("swarm");
    template.duration_s = 12;
    let gray_kinds = |s: &sim::Scenario| {
        sim::FaultKind::TIME
            .iter()
            .chain(sim::FaultKind::GRAY.iter())
            .filter(|k| s.nemesis.kinds.contains(k))
            .count()
    };
    let scenario = (1..=SWARM_SEEDS_SEARCHED)
        .map(|seed| template.for_seed(seed))
        .find(|s| gray_kinds(s) >= 2 && s.buggify_percent > 0 && s.spare_nodes == 0)
        .expect("some seed draws time/gray faults and BUGGIFY");
    assert_eq!(
        scenario,
        template.for_seed(scenario.seed),
        "the draw is not a function of the seed"
    );
    let first = replays_exactly(&scenario);
    println!(
        "verdict: swarm seed {} deterministic ({} ops, {} trace lines, kinds {:?})",
        scenario.seed,
        first.history.len(),
        first.trace.lines().count(),
        scenario.nemesis.kinds
    );
}

const SWARM_SEEDS_SEARCHED: u64 = 200;

/// The `LaggingSuccessor` fault acts on protocol cues, in the transport, per message: the first
/// swarm seed (12 s, no spares) in which a new leader lost its appends replays bit for bit.
#[test]
fn lagging_successor_replays_exactly() {
    let mut template = sim::Scenario::preset("swarm").expect("swarm");
    template.duration_s = 12;
    let struck = |report: &sim::RunReport| report.trace.contains("its appends are lost");
    let scenario = (1..=SWARM_SEEDS_SEARCHED)
        .map(|seed| template.for_seed(seed))
        .filter(|s| {
            s.spare_nodes == 0
                && s.fault_schedule()
                    .iter()
                    .any(|f| matches!(f.fault, sim::Fault::LaggingSuccessor { .. }))
        })
        .find(|s| struck(&common::run_and_report(s)))
        .expect("in some seed a new leader loses its appends");
    let first = replays_exactly(&scenario);
    assert!(
        struck(&first),
        "seed {}: no strike on replay",
        scenario.seed
    );
    println!(
        "verdict: lagging-successor seed {} deterministic ({} ops, {} trace lines)",
        scenario.seed,
        first.history.len(),
        first.trace.lines().count()
    );
}

/// Runs `scenario` twice and its concretized file once: the same history, trace and verdict
/// each time. Returns the first run.
fn replays_exactly(scenario: &sim::Scenario) -> sim::RunReport {
    let first = common::run_and_report(scenario);
    let second = common::run_and_report(scenario);
    assert!(
        first.history.len() > 20,
        "too few operations: {}",
        first.history.len()
    );
    same_lines(
        "histories",
        &first.history.to_jsonl(),
        &second.history.to_jsonl(),
    );
    same_lines("event traces", &first.trace, &second.trace);
    assert_eq!(first.verdict, second.verdict);
    let replayed = common::run_and_report(&scenario.concretize());
    same_lines(
        "replayed histories",
        &first.history.to_jsonl(),
        &replayed.history.to_jsonl(),
    );
    same_lines("replayed traces", &first.trace, &replayed.trace);
    first
}

/// Panics naming the first line where `a` and `b` differ.
fn same_lines(what: &str, a: &str, b: &str) {
    if a != b {
        let at = a.lines().zip(b.lines()).position(|(x, y)| x != y);
        let line = |t: &str| {
            at.and_then(|i| t.lines().nth(i))
                .unwrap_or("(end)")
                .to_string()
        };
        panic!(
            "{what} differ at line {at:?}:\n  {}\n  {}\n({} vs {} lines)",
            line(a),
            line(b),
            a.lines().count(),
            b.lines().count()
        );
    }
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
