//! The process-level nemesis: every fault the real-cluster campaign can inject, named in one
//! enum, and the seeded schedule that alternates fault and heal periods.
//!
//! Invariants: the schedule (which fault, how many nodes, which random nodes) is a function of
//! the seed; which node leads at the moment a leader fault strikes is not (real processes are
//! not deterministic), so the applied faults are logged with their targets. A fault period is
//! always followed by a heal period that restarts every killed node and resumes every paused
//! one, and the campaign ends with a final heal.

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::process_cluster::{ClusterError, ProcessCluster};

/// One kind of process fault; a fault period applies one of them to 1..=max_faulty nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProcessFault {
    /// kill -9 random nodes (the leader may be among them); restarted at the heal.
    Kill,
    /// kill -9 the current leader (plus random others when more than one node is hit).
    KillLeader,
    /// SIGSTOP random nodes; SIGCONT at the heal.
    Pause,
    /// SIGSTOP the current leader (plus random others).
    PauseLeader,
    /// Harness self-test, never in `ALL`: kill -9 every node and delete every data directory
    /// (spawned clusters only), so the cluster restarts empty at the heal. Acknowledged writes
    /// are lost: a run with this fault must fail, or the harness is blind.
    AmnesiaAll,
}

impl ProcessFault {
    pub const ALL: [ProcessFault; 4] = [
        ProcessFault::Kill,
        ProcessFault::KillLeader,
        ProcessFault::Pause,
        ProcessFault::PauseLeader,
    ];

    /// Every fault, the self-test included.
    pub const KNOWN: [ProcessFault; 5] = [
        ProcessFault::Kill,
        ProcessFault::KillLeader,
        ProcessFault::Pause,
        ProcessFault::PauseLeader,
        ProcessFault::AmnesiaAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProcessFault::Kill => "kill",
            ProcessFault::KillLeader => "kill-leader",
            ProcessFault::Pause => "pause",
            ProcessFault::PauseLeader => "pause-leader",
            ProcessFault::AmnesiaAll => "amnesia-all",
        }
    }

    fn targets_leader(self) -> bool {
        matches!(self, ProcessFault::KillLeader | ProcessFault::PauseLeader)
    }

    /// True when the fault kills processes (false: it pauses them).
    pub fn kills(self) -> bool {
        matches!(
            self,
            ProcessFault::Kill | ProcessFault::KillLeader | ProcessFault::AmnesiaAll
        )
    }
}

impl fmt::Display for ProcessFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProcessFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProcessFault::KNOWN
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ProcessFault::KNOWN.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?} (known: {})", names.join(", "))
            })
    }
}

/// The seeded part of the nemesis: which fault comes next and on how many / which nodes.
#[derive(Debug)]
pub struct ProcessNemesis {
    rng: StdRng,
    faults: Vec<ProcessFault>,
    max_faulty: usize,
}

/// What one fault period did, for the log and the counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedFault {
    pub fault: ProcessFault,
    pub nodes: Vec<u64>,
    /// The leader found when a leader fault struck (`None`: none found; random nodes hit).
    pub leader: Option<u64>,
}

impl fmt::Display for AppliedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("n{n}")).collect();
        write!(f, "{} [{}]", self.fault, nodes.join(" "))?;
        match (self.fault.targets_leader(), self.leader) {
            (true, Some(l)) => write!(f, " (leader n{l})"),
            (true, None) => write!(f, " (no leader found: random nodes)"),
            _ => Ok(()),
        }
    }
}

impl ProcessNemesis {
    /// `max_faulty` nodes at most are hit at once (at least 1); `faults` must not be empty.
    pub fn new(seed: u64, faults: Vec<ProcessFault>, max_faulty: usize) -> ProcessNemesis {
        assert!(
            !faults.is_empty(),
            "the nemesis needs at least one fault kind"
        );
        ProcessNemesis {
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            faults,
            max_faulty: max_faulty.max(1),
        }
    }

    /// The default for `nodes` nodes: a minority at once, so a quorum survives every fault.
    pub fn minority(nodes: usize) -> usize {
        (nodes.saturating_sub(1) / 2).max(1)
    }

    /// Starts the next fault period on `cluster`.
    pub async fn strike(
        &mut self,
        cluster: &mut ProcessCluster,
    ) -> Result<AppliedFault, ClusterError> {
        let fault = self.faults[self.rng.random_range(0..self.faults.len())];
        let mut ids = cluster.node_ids();
        let count = self.rng.random_range(1..=self.max_faulty.min(ids.len()));
        ids.shuffle(&mut self.rng);
        let leader = if fault.targets_leader() {
            cluster.leader().await
        } else {
            None
        };
        if let Some(l) = leader {
            ids.retain(|&id| id != l);
            ids.insert(0, l);
        }
        let take = if fault == ProcessFault::AmnesiaAll {
            ids.len()
        } else {
            count
        };
        let mut nodes: Vec<u64> = ids.into_iter().take(take).collect();
        nodes.sort_unstable();
        for &id in &nodes {
            if fault.kills() {
                cluster.kill(id)?;
            } else {
                cluster.pause(id)?;
            }
        }
        if fault == ProcessFault::AmnesiaAll {
            for &id in &nodes {
                cluster.wipe(id)?;
            }
        }
        Ok(AppliedFault {
            fault,
            nodes,
            leader,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for f in ProcessFault::KNOWN {
            assert_eq!(f.name().parse::<ProcessFault>(), Ok(f));
        }
        let err = "partition".parse::<ProcessFault>().unwrap_err();
        assert!(err.contains("kill-leader"), "{err}");
    }

    #[test]
    fn minority_keeps_a_quorum() {
        assert_eq!(ProcessNemesis::minority(1), 1);
        assert_eq!(ProcessNemesis::minority(3), 1);
        assert_eq!(ProcessNemesis::minority(5), 2);
        assert_eq!(ProcessNemesis::minority(7), 3);
    }
}
