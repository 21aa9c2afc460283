//! Scenario files: everything that determines a simulated run (seed, cluster size, clients,
//! operations, duration, workload, faults, planted bugs), serialized as TOML or JSON.
//!
//! Invariant: a run is a pure function of its `Scenario`. A scenario whose `faults` is `None`
//! plans them from its seed (`concretize` writes the plan into the scenario), so a preset plus a
//! seed and the concretized file replay the same run; the shrinker edits concretized scenarios.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use workloads::WorkloadSpec;

use crate::nemesis::{FaultKind, NemesisSpec, ScheduledFault};

/// Cluster sizes the harness supports (odd, so a majority is well defined).
pub const SUPPORTED_NODES: [u32; 3] = [3, 5, 7];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub nodes: u32,
    pub clients: u32,
    /// Upper bound on operations per client in the main phase.
    pub ops_per_client: u64,
    /// Simulated length of the main phase (faults included), in seconds.
    pub duration_s: u64,
    /// Pause between two operations of one client.
    pub think_time_ms: u64,
    /// After the final heal, every client must complete an operation within this bound.
    pub liveness_bound_s: u64,
    pub workload: WorkloadSpec,
    pub nemesis: NemesisSpec,
    /// Explicit fault schedule; `None`: planned from `seed` by `nemesis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<Vec<ScheduledFault>>,
    /// Comma-separated planted bug names (node/src/bugs.rs); empty: none.
    #[serde(default)]
    pub planted_bugs: String,
    /// FoundationDB-style BUGGIFY: shorter timeouts, tiny batches, frequent snapshots, chosen
    /// from the seed.
    #[serde(default)]
    pub buggify: bool,
}

impl Scenario {
    pub const PRESETS: [&'static str; 9] = [
        "none",
        "partitions",
        "messages",
        "crashes",
        "votes",
        "figure8",
        "mixed",
        "set",
        "ycsb",
    ];

    /// A built-in scenario by name, with seed 0 (callers set the seed).
    pub fn preset(name: &str) -> anyhow::Result<Scenario> {
        let (workload, kinds): (WorkloadSpec, Vec<FaultKind>) = match name {
            "none" => (WorkloadSpec::register(), Vec::new()),
            "partitions" => (WorkloadSpec::register(), FaultKind::PARTITIONS.to_vec()),
            "messages" => (WorkloadSpec::register(), FaultKind::MESSAGES.to_vec()),
            "crashes" => {
                let mut kinds = FaultKind::PROCESSES.to_vec();
                kinds.push(FaultKind::DiskErrors);
                kinds.push(FaultKind::CrashStorm);
                kinds.push(FaultKind::PowerLoss);
                (WorkloadSpec::register(), kinds)
            }
            // Frequent leader changes: short fault periods of leader isolation and crashes.
            "elections" => (
                WorkloadSpec::register(),
                vec![
                    FaultKind::IsolateLeader,
                    FaultKind::LeaderMinority,
                    FaultKind::Crash,
                    FaultKind::CrashLeader,
                    FaultKind::CrashStorm,
                    FaultKind::MessageDelay,
                ],
            ),
            // Elections with the vote-strike fault: voters crash the instant they grant a vote.
            "votes" => (
                WorkloadSpec::register(),
                vec![
                    FaultKind::VoteStrike,
                    FaultKind::IsolateLeader,
                    FaultKind::CrashLeader,
                    FaultKind::MessageDelay,
                ],
            ),
            // Raft Figure 8: leaders cut off with entries of their term alone, and cut off the
            // moment they commit up to an entry of an older term.
            "figure8" => (WorkloadSpec::register(), vec![FaultKind::Figure8]),
            "mixed" => (WorkloadSpec::register(), FaultKind::ALL.to_vec()),
            "set" => (WorkloadSpec::set(), FaultKind::ALL.to_vec()),
            "ycsb" => (WorkloadSpec::ycsb_a(), FaultKind::ALL.to_vec()),
            other => bail!(
                "unknown scenario {other:?}; known: {}",
                Scenario::PRESETS.join(", ")
            ),
        };
        let mut nemesis = NemesisSpec::with_kinds(&kinds);
        if name == "figure8" {
            // Long periods: a chain of leaders cut off one after the other.
            nemesis.fault_ms = 2_000;
            nemesis.heal_ms = 500;
            nemesis.max_concurrent = 1;
        }
        if matches!(name, "elections" | "votes") {
            nemesis.fault_ms = 800;
            nemesis.heal_ms = 400;
            nemesis.max_concurrent = 3;
        }
        Ok(Scenario {
            name: name.to_string(),
            seed: 0,
            nodes: 5,
            clients: 4,
            ops_per_client: 100_000,
            duration_s: 20,
            think_time_ms: 20,
            liveness_bound_s: 10,
            workload,
            nemesis,
            faults: None,
            planted_bugs: String::new(),
            buggify: name != "none",
        })
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !SUPPORTED_NODES.contains(&self.nodes) {
            bail!(
                "nodes = {} is not supported; use one of {:?}",
                self.nodes,
                SUPPORTED_NODES
            );
        }
        if self.clients == 0 {
            bail!("clients must be at least 1");
        }
        if self.duration_s == 0 {
            bail!("duration_s must be at least 1");
        }
        for fault in self.faults.iter().flatten() {
            if fault.start_ms >= fault.end_ms || fault.end_ms > self.duration_s * 1000 {
                bail!(
                    "fault {fault:?} does not lie within the run (duration_s = {})",
                    self.duration_s
                );
            }
        }
        Ok(())
    }

    pub fn duration_ms(&self) -> u64 {
        self.duration_s * 1000
    }

    /// The faults of this run: the explicit list, or the plan drawn from the seed.
    pub fn fault_schedule(&self) -> Vec<ScheduledFault> {
        match &self.faults {
            Some(faults) => faults.clone(),
            None => self.nemesis.plan(self.seed, self.nodes, self.duration_ms()),
        }
    }

    /// The same run with its fault schedule written out.
    pub fn concretize(&self) -> Scenario {
        Scenario {
            faults: Some(self.fault_schedule()),
            ..self.clone()
        }
    }

    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("serializing scenario as TOML")
    }

    /// Reads a scenario file: JSON when the name ends in `.json`, TOML otherwise.
    pub fn from_file(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario file {}", path.display()))?;
        let scenario: Scenario = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .with_context(|| format!("parsing JSON scenario {}", path.display()))?
        } else {
            toml::from_str(&text)
                .with_context(|| format!("parsing TOML scenario {}", path.display()))?
        };
        scenario
            .validate()
            .with_context(|| format!("invalid scenario {}", path.display()))?;
        Ok(scenario)
    }

    /// The one-line command that replays this run (preset form, when it is one).
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p sim --release -- --seed {} --scenario {} --nodes {} --clients {} --ops {} --duration-s {}",
            self.seed, self.name, self.nodes, self.clients, self.ops_per_client, self.duration_s
        );
        if !self.planted_bugs.is_empty() {
            cmd.push_str(&format!(" --bugs {}", self.planted_bugs));
        }
        if !self.buggify {
            cmd.push_str(" --no-buggify");
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip() {
        for name in Scenario::PRESETS {
            let mut scenario = Scenario::preset(name).expect("preset");
            scenario.seed = 17;
            scenario.validate().expect("valid");
            let concrete = scenario.concretize();
            assert_eq!(concrete.fault_schedule(), scenario.fault_schedule());
            let text = concrete.to_toml().expect("toml");
            let back: Scenario = toml::from_str(&text).expect("parse");
            assert_eq!(back, concrete);
        }
        assert!(Scenario::preset("nope").is_err());
    }

    #[test]
    fn invalid_scenarios_are_refused() {
        let mut scenario = Scenario::preset("mixed").expect("preset");
        scenario.nodes = 4;
        assert!(scenario.validate().is_err());
        let mut scenario = Scenario::preset("mixed").expect("preset").concretize();
        assert!(scenario.faults.as_ref().is_some_and(|f| !f.is_empty()));
        if let Some(f) = scenario.faults.as_mut().and_then(|f| f.first_mut()) {
            f.end_ms = 1_000_000;
        }
        assert!(scenario.validate().is_err());
    }
}
