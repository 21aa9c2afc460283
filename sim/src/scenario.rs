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

/// Sizes of the cluster that bootstraps (odd, so a majority is well defined); spare servers,
/// which join later, come on top.
pub const SUPPORTED_NODES: [u32; 3] = [3, 5, 7];
/// Most clients a scenario may have (one simulated node each).
pub const MAX_CLIENTS: u32 = 10_000;
/// Most spare servers a scenario may have (they join during the run).
pub const MAX_SPARE_NODES: u32 = 8;
/// Most shards a scenario may have (every node hosts a Raft group per replica).
pub const MAX_SCENARIO_SHARDS: u32 = 256;

/// Shards unless a scenario says otherwise: few, so that a CI seed runs fast (the node's own
/// default is 16).
pub const DEFAULT_SHARDS: u32 = 4;
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;
/// The node's default `cluster.dead_node_timeout_ms`; membership scenarios set a short one.
pub const DEFAULT_DEAD_NODE_TIMEOUT_MS: u64 = 60_000;
/// After the final heal, replication must be restored within this many simulated seconds.
pub const DEFAULT_CONVERGENCE_BOUND_S: u64 = 30;

fn default_shards() -> u32 {
    DEFAULT_SHARDS
}

fn default_replication_factor() -> usize {
    DEFAULT_REPLICATION_FACTOR
}

fn default_dead_node_timeout_ms() -> u64 {
    DEFAULT_DEAD_NODE_TIMEOUT_MS
}

fn default_convergence_bound_s() -> u64 {
    DEFAULT_CONVERGENCE_BOUND_S
}

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
    /// The cluster's shards (`cluster.shards`); shard s is Raft group s + 1.
    #[serde(default = "default_shards")]
    pub shards: u32,
    #[serde(default = "default_replication_factor")]
    pub replication_factor: usize,
    /// Servers that exist in the simulated network from the start but are not started until a
    /// `Join` fault starts them (node ids `nodes + 1 ..= nodes + spare_nodes`).
    #[serde(default)]
    pub spare_nodes: u32,
    /// `cluster.dead_node_timeout_ms`: a member silent this long is marked dead and its
    /// replicas are re-created on other nodes.
    #[serde(default = "default_dead_node_timeout_ms")]
    pub dead_node_timeout_ms: u64,
    /// After the final heal (and the clients' liveness check), every shard's voters must equal
    /// its target in the map, and no removed or killed node may be a voter, within this many
    /// simulated seconds.
    #[serde(default = "default_convergence_bound_s")]
    pub convergence_bound_s: u64,
    /// Simulated CPU time a node spends per input it handles (`sim_busy_us_per_input`), so that
    /// a node's capacity is finite (benchmarks); 0: free.
    #[serde(default)]
    pub sim_busy_us_per_input: u64,
    /// A swarm template (`swarm` preset): each seed draws its own configuration from it
    /// (`Scenario::for_seed`); a drawn scenario has this off and records what was drawn.
    #[serde(default)]
    pub swarm: bool,
    /// Code-path BUGGIFY (`node::buggify!`): an enabled site fires in this percent of its
    /// evaluations; 0: off.
    #[serde(default)]
    pub buggify_percent: u32,
    /// Raft timing in place of the node's defaults (and of the BUGGIFY election window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_timing: Option<RaftTiming>,
    /// The clients' timeouts, retry pauses and roles in place of the harness's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_policy: Option<ClientPolicy>,
}

/// How the workload's clients behave, as a scenario may set it: how long one attempt waits
/// (how soon a client gives up on a node that no longer answers and looks for another), how
/// long it pauses between rounds of attempts (how quickly it finds a new leader), and how many
/// clients only read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPolicy {
    pub request_timeout_ms: u64,
    pub retry_backoff_min_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// Clients `0..reader_clients` only read the keys the others write (register, YCSB).
    pub reader_clients: u32,
}

/// The node's Raft timing knobs, as a scenario may set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftTiming {
    pub tick_interval_ms: u64,
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
}

impl Scenario {
    pub const PRESETS: [&'static str; 12] = [
        "swarm",
        "elections",
        "none",
        "partitions",
        "messages",
        "crashes",
        "votes",
        "figure8",
        "mixed",
        "set",
        "ycsb",
        "membership",
    ];

    /// A built-in scenario by name, with seed 0 (callers set the seed).
    pub fn preset(name: &str) -> anyhow::Result<Scenario> {
        if name == "swarm" {
            return Ok(crate::swarm::template());
        }
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
            // Nodes join, leave and die for good while partitions, crashes and message faults
            // go on; replication must be restored after the final heal.
            "membership" => {
                let mut kinds = FaultKind::MEMBERSHIP.to_vec();
                kinds.extend([
                    FaultKind::PartitionHalves,
                    FaultKind::IsolateLeader,
                    FaultKind::Crash,
                    FaultKind::MessageLoss,
                    FaultKind::MessageDelay,
                ]);
                (WorkloadSpec::register(), kinds)
            }
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
        let membership = name == "membership";
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
            shards: DEFAULT_SHARDS,
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            spare_nodes: if membership { 2 } else { 0 },
            dead_node_timeout_ms: if membership {
                3_000
            } else {
                DEFAULT_DEAD_NODE_TIMEOUT_MS
            },
            convergence_bound_s: DEFAULT_CONVERGENCE_BOUND_S,
            sim_busy_us_per_input: 0,
            swarm: false,
            buggify_percent: 0,
            raft_timing: None,
            client_policy: None,
        })
    }

    /// The scenario of one seed of a campaign: a swarm template draws the seed's whole
    /// configuration; any other scenario just takes the seed (faults planned from it).
    pub fn for_seed(&self, seed: u64) -> Scenario {
        if self.swarm {
            return crate::swarm::draw(self, seed);
        }
        Scenario {
            seed,
            faults: None,
            ..self.clone()
        }
    }

    /// Every server of the run: the bootstrap cluster and the spares.
    pub fn servers(&self) -> u32 {
        self.nodes + self.spare_nodes
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if !SUPPORTED_NODES.contains(&self.nodes) {
            bail!(
                "nodes = {} is not supported; use one of {:?}",
                self.nodes,
                SUPPORTED_NODES
            );
        }
        if self.spare_nodes > MAX_SPARE_NODES {
            bail!(
                "spare_nodes = {} exceeds MAX_SPARE_NODES = {MAX_SPARE_NODES}",
                self.spare_nodes
            );
        }
        if self.shards == 0 || self.shards > MAX_SCENARIO_SHARDS {
            bail!(
                "shards = {} must be in 1..={MAX_SCENARIO_SHARDS}",
                self.shards
            );
        }
        if self.replication_factor == 0 || self.replication_factor > self.servers() as usize {
            bail!(
                "replication_factor = {} must be in 1..={} (the servers)",
                self.replication_factor,
                self.servers()
            );
        }
        if self.dead_node_timeout_ms == 0 {
            bail!("dead_node_timeout_ms must be at least 1");
        }
        if self.clients == 0 || self.clients > MAX_CLIENTS {
            bail!("clients = {} must be in 1..={MAX_CLIENTS}", self.clients);
        }
        if self.duration_s == 0 {
            bail!("duration_s must be at least 1");
        }
        if self.buggify_percent > 100 {
            bail!("buggify_percent = {} exceeds 100", self.buggify_percent);
        }
        if let Some(p) = &self.client_policy {
            if p.request_timeout_ms == 0
                || p.retry_backoff_min_ms == 0
                || p.retry_backoff_max_ms < p.retry_backoff_min_ms
                || p.reader_clients >= self.clients
            {
                bail!("client_policy {p:?}: need timeout > 0, 0 < backoff min <= max, and fewer readers than clients");
            }
        }
        if let Some(t) = &self.raft_timing {
            if t.tick_interval_ms == 0
                || t.heartbeat_interval_ticks == 0
                || t.heartbeat_interval_ticks >= t.election_timeout_ticks_min
                || t.election_timeout_ticks_min > t.election_timeout_ticks_max
            {
                bail!("raft_timing {t:?}: need tick > 0 and 0 < heartbeat < election min <= max");
            }
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
            None => self
                .nemesis
                .plan(self.seed, self.servers(), self.duration_ms()),
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
        if self.name == crate::swarm::SWARM && !self.swarm {
            // A drawn swarm seed: the seed and the template's own knobs redraw it exactly.
            let mut cmd = format!(
                "cargo run -p sim --release -- --seed {} --scenario swarm --ops {} --duration-s {}",
                self.seed, self.ops_per_client, self.duration_s
            );
            if !self.planted_bugs.is_empty() {
                cmd.push_str(&format!(" --bugs {}", self.planted_bugs));
            }
            return cmd;
        }
        let mut cmd = format!(
            "cargo run -p sim --release -- --seed {} --scenario {} --nodes {} --spare-nodes {} --shards {} --clients {} --ops {} --duration-s {}",
            self.seed,
            self.name,
            self.nodes,
            self.spare_nodes,
            self.shards,
            self.clients,
            self.ops_per_client,
            self.duration_s
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
    fn old_scenario_files_still_parse() {
        // A file written before sharding has none of the new fields: defaults apply.
        let mut scenario = Scenario::preset("mixed").expect("preset");
        scenario.seed = 3;
        let mut value: toml::Table = toml::from_str(&scenario.to_toml().expect("toml")).expect("t");
        for field in [
            "shards",
            "replication_factor",
            "spare_nodes",
            "dead_node_timeout_ms",
            "convergence_bound_s",
            "sim_busy_us_per_input",
            "swarm",
            "buggify_percent",
        ] {
            assert!(value.remove(field).is_some(), "{field}");
        }
        let back: Scenario = toml::from_str(&toml::to_string(&value).expect("t")).expect("parse");
        assert_eq!(back, scenario);
    }

    #[test]
    fn membership_plans_over_the_spares_too() {
        let mut scenario = Scenario::preset("membership").expect("preset");
        assert_eq!(scenario.servers(), 7);
        let mut max_node = 0;
        for seed in 0..30 {
            scenario.seed = seed;
            for f in scenario.fault_schedule() {
                if let crate::Fault::Leave { node } | crate::Fault::KillForever { node } = f.fault {
                    max_node = max_node.max(node);
                }
            }
        }
        assert!((5..7).contains(&max_node), "{max_node}");
    }

    #[test]
    fn invalid_scenarios_are_refused() {
        let mut scenario = Scenario::preset("mixed").expect("preset");
        scenario.nodes = 4;
        assert!(scenario.validate().is_err());
        let mut scenario = Scenario::preset("membership").expect("preset");
        scenario.shards = 0;
        assert!(scenario.validate().is_err());
        let mut scenario = Scenario::preset("membership").expect("preset");
        scenario.spare_nodes = MAX_SPARE_NODES + 1;
        assert!(scenario.validate().is_err());
        let mut scenario = Scenario::preset("mixed").expect("preset").concretize();
        assert!(scenario.faults.as_ref().is_some_and(|f| !f.is_empty()));
        if let Some(f) = scenario.faults.as_mut().and_then(|f| f.first_mut()) {
            f.end_ms = 1_000_000;
        }
        assert!(scenario.validate().is_err());
    }
}
