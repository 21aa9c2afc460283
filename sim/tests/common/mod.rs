//! Shared by the seeded simulation tests: run a scenario, print the seed first and the verdict
//! last, and on failure write the artifacts and print the one-line replay command.

#![allow(dead_code)]

use std::path::PathBuf;

use sim::cluster::{self, RunOptions};
use sim::report::{failure_artifacts_dir, write_failure};
use sim::{RunReport, Scenario};

pub fn failure_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sim-failures")
}

/// Runs one scenario; returns the report, after printing the seed, the verdict and (on
/// failure) where the artifacts are and how to replay.
pub fn run_and_report(scenario: &Scenario) -> RunReport {
    println!(
        "seed {} scenario {} bugs [{}]",
        scenario.seed, scenario.name, scenario.planted_bugs
    );
    let report = cluster::run(scenario, RunOptions::default());
    if !report.verdict.passed() {
        match write_failure(&report, &failure_dir()) {
            Ok(dir) => println!("  artifacts: {}", dir.display()),
            Err(e) => println!("  could not write artifacts: {e:#}"),
        }
        println!("  replay: {}", exact_replay(scenario));
    }
    println!(
        "  ok {} fail {} info {}; {:.0} sim s in {:.2} wall s; verdict: {}",
        report.stats.ok,
        report.stats.fail,
        report.stats.info,
        report.simulated_s,
        report.wall_s,
        report.verdict.summary()
    );
    report
}

/// The command that replays `scenario` exactly, from the scenario file its failure wrote (the
/// seed flags alone would not: CI scenarios shorten the preset's fault periods, which have no
/// flag).
pub fn exact_replay(scenario: &Scenario) -> String {
    let file = failure_artifacts_dir(&failure_dir(), scenario).join("scenario.toml");
    format!(
        "cargo run -p sim --release -- --scenario-file {}",
        file.display()
    )
}

/// A preset shortened for CI: `duration_s` simulated seconds, `clients` clients.
pub fn ci_scenario(preset: &str, seed: u64, nodes: u32, duration_s: u64) -> Scenario {
    let mut scenario = Scenario::preset(preset).expect("preset exists");
    scenario.seed = seed;
    scenario.nodes = nodes;
    scenario.duration_s = duration_s;
    scenario.nemesis.final_heal_ms = 4_000.min(duration_s * 500);
    scenario.nemesis.fault_ms = scenario.nemesis.fault_ms.min(2_000);
    scenario.nemesis.heal_ms = scenario.nemesis.heal_ms.min(1_000);
    scenario
}

/// The swarm's draw for `seed`, `duration_s` simulated seconds long.
pub fn swarm_scenario(seed: u64, duration_s: u64) -> Scenario {
    let mut template = Scenario::preset("swarm").expect("swarm");
    template.duration_s = duration_s;
    template.for_seed(seed)
}

/// Runs `seeds` of a scenario built by `make`; panics listing every failing seed.
pub fn run_seeds(seeds: impl Iterator<Item = u64>, make: impl Fn(u64) -> Scenario) {
    let mut failures = Vec::new();
    let mut count = 0;
    for seed in seeds {
        let scenario = make(seed);
        let report = run_and_report(&scenario);
        count += 1;
        if !report.verdict.passed() {
            failures.push(format!(
                "seed {}: {} — {}",
                seed,
                report.verdict.summary(),
                exact_replay(&scenario)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
