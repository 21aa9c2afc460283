//! The nemesis: every fault the simulator can inject is named here, in `FaultKind` (what a
//! scenario enables) and `Fault` (one concrete, fully resolved injection), and nowhere else.
//!
//! A run's faults are a `Schedule`: fault periods alternating with heal periods, planned from
//! the seed before the run starts, so that a scenario file can list them explicitly and the
//! shrinker can delete them one by one. Only choices that depend on the cluster's state (who is
//! leader right now) are resolved when the fault starts.
//!
//! Membership faults (`Join`, `Leave`, `KillForever`) are permanent changes, not periods: they
//! happen when their period starts and nothing is undone at its end. Which node they hit is
//! planned too, but resolved against the cluster as it is then (the next eligible node in index
//! order), since earlier membership faults decide who is still there.
//!
//! Invariants: every fault ends (is healed) by its `end_ms`; the last `final_heal_ms` of a run
//! is fault-free, so liveness after the final heal is always checked; node indices are in
//! `0..nodes` (`nodes` counts the spare servers too).

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The kinds of faults a scenario can enable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Cut the cluster into two random halves (both directions).
    PartitionHalves,
    /// Cut the current leader off from everyone.
    IsolateLeader,
    /// Put the current leader into a minority (with companions); the majority elects anew.
    LeaderMinority,
    /// Two halves that only one node (the bridge) can talk to.
    Bridge,
    /// Messages from one group to another are dropped; the reverse direction works.
    OneWay,
    /// Our transport drops a share of messages.
    MessageLoss,
    /// Our transport delays messages by up to a bound.
    MessageDelay,
    /// Our transport sends some messages twice.
    MessageDuplicate,
    /// Our transport reorders messages.
    MessageReorder,
    /// Kill a random node (losing unsynced disk writes, maybe tearing the last); restart at heal.
    Crash,
    /// Kill the current leader; restart at heal.
    CrashLeader,
    /// Freeze a node (its tasks stop running, its timers stop) and resume it at heal.
    Pause,
    /// A node's disk fails a share of its writes and syncs with I/O errors.
    DiskErrors,
    /// Rapid kill/restart of random nodes throughout the period (crashes mid-election,
    /// mid-replication, mid-snapshot).
    CrashStorm,
    /// Every server loses power at once (datacenter outage); all restart at heal.
    PowerLoss,
    /// Targeted: the instant a candidate wins an election, the nodes that voted for it lose
    /// power (unsynced writes dropped) and restart at once, while the new leader is cut off:
    /// the others elect again, in the same term if they never heard of it.
    VoteStrike,
    /// Targeted (Raft Figure 8): new leaders are sometimes cut off at once, so entries of
    /// their term stay on them alone; a leader whose commit ends on an entry of an older term
    /// is cut off at once.
    Figure8,
    /// Start the next spare server; it asks the running cluster to let it join.
    Join,
    /// Ask the cluster to remove an active node (its replicas are handed off first); only when
    /// at least `replication_factor` active nodes stay.
    Leave,
    /// Kill a node and never restart it: the cluster must mark it dead and re-create its
    /// replicas elsewhere (the scenario sets a short `dead_node_timeout_ms`).
    KillForever,
    /// A node's clock runs fast or slow (within a bound) for the period.
    ClockDrift,
    /// A node's clock leaps forward (many ticks at once: timeouts fire together).
    ClockJump,
    /// A node's clock stands still for the period (its timers do not fire; it still handles
    /// messages).
    ClockStall,
    /// Targeted: a node is paused the instant it becomes leader of a group, for a while.
    PauseNewLeader,
    /// Gray failure: one node's disk is slow (fsyncs and reads take simulated time) but works.
    SlowDisk,
    /// Some directed links drop a share of their messages (intermittent, per direction).
    FlakyLinks,
    /// One direction of one link drops everything; the other direction works.
    AsymmetricLink,
    /// The leader is cut off from the other servers (clients still reach it) and its clock
    /// stalls, so it does not notice (CheckQuorum never fires): a stale leader that believes
    /// it leads while the others elect a successor. Only quorum-checked reads stay correct.
    StaleLeader,
    /// Targeted: a leader is cut off from the other servers (clients still reach it) the
    /// instant its commit index advances: it has just acknowledged writes that its followers
    /// do not know are committed, and that one of them may not even hold. The others elect a
    /// successor while clients are redirected to it: it must learn what was committed before
    /// it answers anything.
    CutLeaderOnCommit,
    /// Targeted: a leader is cut off from the other servers the instant its commit index
    /// advances (as `CutLeaderOnCommit`), and each new leader's log replication (its Appends,
    /// their acknowledgements) is lost for a while, while its heartbeats and their answers get
    /// through: the successor leads, a quorum answers its read rounds, its commit index lags
    /// what its predecessor acknowledged, and it cannot commit an entry of its own term. Only
    /// the term-commit rule (Raft §6.4) keeps it from serving reads at that commit index.
    LaggingSuccessor,
}

impl FaultKind {
    pub const ALL: [FaultKind; 15] = [
        FaultKind::PartitionHalves,
        FaultKind::IsolateLeader,
        FaultKind::LeaderMinority,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::MessageLoss,
        FaultKind::MessageDelay,
        FaultKind::MessageDuplicate,
        FaultKind::MessageReorder,
        FaultKind::Crash,
        FaultKind::CrashLeader,
        FaultKind::Pause,
        FaultKind::DiskErrors,
        FaultKind::CrashStorm,
        FaultKind::PowerLoss,
    ];

    pub const PARTITIONS: [FaultKind; 5] = [
        FaultKind::PartitionHalves,
        FaultKind::IsolateLeader,
        FaultKind::LeaderMinority,
        FaultKind::Bridge,
        FaultKind::OneWay,
    ];

    pub const MESSAGES: [FaultKind; 4] = [
        FaultKind::MessageLoss,
        FaultKind::MessageDelay,
        FaultKind::MessageDuplicate,
        FaultKind::MessageReorder,
    ];

    /// Faults aimed at the protocol's dangerous moments, driven by the nodes' protocol probes.
    /// Not in `ALL` (which fixes the plans of the CI presets); see the `votes` preset.
    pub const TARGETED: [FaultKind; 2] = [FaultKind::VoteStrike, FaultKind::Figure8];

    /// Changes of the cluster's membership. Not in `ALL`; see the `membership` preset.
    pub const MEMBERSHIP: [FaultKind; 3] =
        [FaultKind::Join, FaultKind::Leave, FaultKind::KillForever];

    pub const PROCESSES: [FaultKind; 3] =
        [FaultKind::Crash, FaultKind::CrashLeader, FaultKind::Pause];

    /// Faults of a node's clock and its scheduling. Not in `ALL` (the presets' plans stay
    /// what they were); the swarm draws them.
    pub const TIME: [FaultKind; 4] = [
        FaultKind::ClockDrift,
        FaultKind::ClockJump,
        FaultKind::ClockStall,
        FaultKind::PauseNewLeader,
    ];

    /// Gray failures of disks and links. Not in `ALL`; the swarm draws them.
    pub const GRAY: [FaultKind; 5] = [
        FaultKind::SlowDisk,
        FaultKind::FlakyLinks,
        FaultKind::AsymmetricLink,
        FaultKind::StaleLeader,
        FaultKind::CutLeaderOnCommit,
    ];

    /// Kinds the swarm gained after its draws were in use: `swarm::draw` decides them after
    /// every other knob of a seed, so that each seed's other choices stay what they were (and
    /// a seed that leaves them off runs exactly as before). Not in `ALL`.
    pub const SWARM_LATE: [FaultKind; 1] = [FaultKind::LaggingSuccessor];

    /// Every kind the swarm may enable (membership kinds only with spare servers).
    pub fn swarm() -> Vec<FaultKind> {
        let mut kinds = FaultKind::ALL.to_vec();
        kinds.extend(FaultKind::TARGETED);
        kinds.extend(FaultKind::TIME);
        kinds.extend(FaultKind::GRAY);
        kinds.extend(FaultKind::MEMBERSHIP);
        kinds.extend(FaultKind::SWARM_LATE);
        kinds
    }

    /// Faults that occupy the network topology; two of them at once would undo each other.
    fn is_partition(self) -> bool {
        FaultKind::PARTITIONS.contains(&self)
            || matches!(
                self,
                FaultKind::StaleLeader | FaultKind::CutLeaderOnCommit | FaultKind::LaggingSuccessor
            )
    }
}

/// Which node a process fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Node(u32),
    /// The node that is leader when the fault starts (a random node if there is none).
    Leader,
}

/// One concrete fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// Links between nodes of different groups are cut in both directions.
    Partition {
        groups: Vec<Vec<u32>>,
    },
    IsolateLeader,
    /// The leader plus the first `minority_size - 1` of `companions` that are not the leader.
    LeaderMinority {
        minority_size: u32,
        companions: Vec<u32>,
    },
    /// `left` and `right` cannot talk to each other; `bridge` talks to both.
    Bridge {
        left: Vec<u32>,
        bridge: u32,
        right: Vec<u32>,
    },
    /// Messages from `from` to `to` are dropped (the other direction works).
    OneWay {
        from: Vec<u32>,
        to: Vec<u32>,
    },
    MessageLoss {
        percent: u32,
    },
    MessageDelay {
        max_ms: u64,
    },
    MessageDuplicate {
        percent: u32,
    },
    MessageReorder {
        percent: u32,
    },
    Crash {
        target: Target,
    },
    Pause {
        target: Target,
    },
    DiskErrors {
        node: u32,
        percent: u32,
    },
    /// Every ~`interval_ms` (jittered) a random node is killed and restarted after a random
    /// downtime shorter than `interval_ms`.
    CrashStorm {
        interval_ms: u64,
    },
    /// Every server is killed at once (power loss: unsynced writes dropped everywhere); all
    /// restart at heal.
    PowerLoss,
    /// While active, when a node becomes leader, the nodes that granted it their vote in that
    /// term are killed (power loss) and restarted after `1..=restart_ms_max` ms, and the new
    /// leader is cut off from everyone (both directions) for `isolate_ms`.
    VoteStrike {
        restart_ms_max: u64,
        isolate_ms: u64,
    },
    /// While active: a node that becomes leader is cut off from everyone (both directions,
    /// clients too) for `isolate_ms` with probability `strike_percent`%; a leader that applies
    /// a batch of committed entries ending on an entry of an older term is cut off at once.
    Figure8 {
        isolate_ms: u64,
        strike_percent: u32,
    },
    /// The lowest-numbered spare server that never started starts now, with `join` = the
    /// client addresses of the servers running then. Skipped when no spare is left.
    Join,
    /// Admin `Leave` of server `node`, or, if it is not an active member then, of the next
    /// active one (in index order, wrapping). Skipped unless at least `replication_factor`
    /// active members stay.
    Leave {
        node: u32,
    },
    /// Server `node` (or the next running one, as for `Leave`) is killed and never restarted.
    /// Skipped unless at least `replication_factor` active members stay and every node killed
    /// for good before is already out of every group's voters (two permanent losses in one
    /// group of three would lose it).
    KillForever {
        node: u32,
    },
    /// Server `node`'s clock runs at `rate_percent` of simulated time.
    ClockDrift {
        node: u32,
        rate_percent: u32,
    },
    /// Server `node`'s clock leaps forward by `ticks` ticks when the period starts.
    ClockJump {
        node: u32,
        ticks: u64,
    },
    /// Server `node`'s clock stands still for the period.
    ClockStall {
        node: u32,
    },
    /// While active: a node that becomes leader of a group is paused for `pause_ms` with
    /// probability `strike_percent`% (one pause at a time).
    PauseNewLeader {
        pause_ms: u64,
        strike_percent: u32,
    },
    /// Server `node`'s fsyncs take up to `sync_ms_max` and its reads up to `read_ms_max`
    /// simulated milliseconds (uniform).
    SlowDisk {
        node: u32,
        sync_ms_max: u64,
        read_ms_max: u64,
    },
    /// Messages on each directed link `(from, to)` are dropped with `percent`% probability.
    FlakyLinks {
        links: Vec<(u32, u32)>,
        percent: u32,
    },
    /// Messages from `from` to `to` are all dropped (on open connections too); `to` to `from`
    /// works.
    AsymmetricLink {
        from: u32,
        to: u32,
    },
    /// The leader when the period starts is cut off from every other server (both
    /// directions; clients still reach it) and its clock stands still until the period ends.
    StaleLeader,
    /// While active: a leader whose commit index advances is cut off from every other server
    /// (both directions; clients still reach it) for `isolate_ms`, with probability
    /// `strike_percent`% (one cut at a time).
    CutLeaderOnCommit {
        isolate_ms: u64,
        strike_percent: u32,
    },
    /// While active, each with probability `strike_percent`%: a leader whose commit index
    /// advances is cut off from every other server (both directions; clients still reach it)
    /// for `cut_ms`, one cut at a time; a node that becomes leader of a group loses that
    /// group's Appends from it and AppendResponses to it for `loss_ms` (every other message
    /// gets through). Each (new leader, group) is struck on its own: one cut elects new leaders
    /// in every group the cut leader led.
    LaggingSuccessor {
        cut_ms: u64,
        loss_ms: u64,
        strike_percent: u32,
    },
}

impl Fault {
    /// Resolves a partition-like fault into directed cut links `(from, to)` for a cluster of
    /// `nodes`, given the current leader. Non-partition faults cut nothing.
    pub fn cut_links(&self, nodes: u32, leader: Option<u32>) -> BTreeSet<(u32, u32)> {
        let mut cut = BTreeSet::new();
        let mut cut_between = |a: &[u32], b: &[u32]| {
            for &x in a {
                for &y in b {
                    if x != y {
                        cut.insert((x, y));
                        cut.insert((y, x));
                    }
                }
            }
        };
        let all: Vec<u32> = (0..nodes).collect();
        match self {
            Fault::Partition { groups } => {
                for (i, a) in groups.iter().enumerate() {
                    for b in groups.iter().skip(i + 1) {
                        cut_between(a, b);
                    }
                }
            }
            Fault::IsolateLeader | Fault::StaleLeader => {
                if let Some(leader) = leader {
                    cut_between(&[leader], &all);
                }
            }
            Fault::LeaderMinority {
                minority_size,
                companions,
            } => {
                if let Some(leader) = leader {
                    let mut minority = vec![leader];
                    minority.extend(
                        companions
                            .iter()
                            .copied()
                            .filter(|&c| c != leader && c < nodes)
                            .take((*minority_size as usize).saturating_sub(1)),
                    );
                    let majority: Vec<u32> = all
                        .iter()
                        .copied()
                        .filter(|n| !minority.contains(n))
                        .collect();
                    cut_between(&minority, &majority);
                }
            }
            Fault::Bridge { left, right, .. } => cut_between(left, right),
            Fault::OneWay { from, to } => {
                for &x in from {
                    for &y in to {
                        if x != y {
                            cut.insert((x, y));
                        }
                    }
                }
            }
            _ => {}
        }
        cut
    }

    /// A permanent change of the membership (nothing to undo at the period's end).
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            Fault::Join | Fault::Leave { .. } | Fault::KillForever { .. }
        )
    }

    pub fn is_partition(&self) -> bool {
        matches!(
            self,
            Fault::Partition { .. }
                | Fault::IsolateLeader
                | Fault::StaleLeader
                | Fault::LeaderMinority { .. }
                | Fault::Bridge { .. }
                | Fault::OneWay { .. }
        )
    }
}

/// A fault active from `start_ms` to `end_ms` (simulated milliseconds since the run started).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledFault {
    pub start_ms: u64,
    pub end_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// How the nemesis plans a run's faults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NemesisSpec {
    pub kinds: Vec<FaultKind>,
    /// Mean length of a fault period; each is drawn from [mean/2, 3*mean/2].
    pub fault_ms: u64,
    /// Mean length of a heal period.
    pub heal_ms: u64,
    /// At most this many faults at once (at most one partition among them).
    pub max_concurrent: u32,
    /// The fault-free tail of the run in which every client must make progress again.
    pub final_heal_ms: u64,
}

impl NemesisSpec {
    pub fn with_kinds(kinds: &[FaultKind]) -> NemesisSpec {
        NemesisSpec {
            kinds: kinds.to_vec(),
            fault_ms: 3_000,
            heal_ms: 2_000,
            max_concurrent: 2,
            final_heal_ms: 5_000,
        }
    }

    /// Plans the faults of a run of `duration_ms` on `nodes` nodes from `seed`.
    pub fn plan(&self, seed: u64, nodes: u32, duration_ms: u64) -> Vec<ScheduledFault> {
        assert!(nodes >= 1, "a cluster has at least one node");
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
        let mut schedule = Vec::new();
        if self.kinds.is_empty() || self.max_concurrent == 0 {
            return schedule;
        }
        let last_fault_end_ms = duration_ms.saturating_sub(self.final_heal_ms);
        let mut now_ms = jitter(&mut rng, self.heal_ms);
        while now_ms < last_fault_end_ms {
            let end_ms = (now_ms + jitter(&mut rng, self.fault_ms).max(1)).min(last_fault_end_ms);
            let count = rng.random_range(1..=self.max_concurrent);
            let mut kinds = self.kinds.clone();
            kinds.sort();
            kinds.dedup();
            kinds.shuffle(&mut rng);
            let mut have_partition = false;
            let mut crashed_or_paused = BTreeSet::new();
            for kind in kinds.into_iter().take(count as usize) {
                if kind.is_partition() {
                    if have_partition {
                        continue;
                    }
                    have_partition = true;
                }
                let fault = resolve(kind, nodes, &mut rng);
                if let Fault::Crash {
                    target: Target::Node(n),
                }
                | Fault::Pause {
                    target: Target::Node(n),
                } = fault
                {
                    if !crashed_or_paused.insert(n) {
                        continue;
                    }
                }
                schedule.push(ScheduledFault {
                    start_ms: now_ms,
                    end_ms,
                    fault,
                });
            }
            now_ms = end_ms + jitter(&mut rng, self.heal_ms).max(1);
        }
        schedule
    }
}

fn jitter(rng: &mut StdRng, mean_ms: u64) -> u64 {
    if mean_ms == 0 {
        return 0;
    }
    rng.random_range(mean_ms / 2..=mean_ms + mean_ms / 2)
}

fn shuffled_nodes(rng: &mut StdRng, nodes: u32) -> Vec<u32> {
    let mut all: Vec<u32> = (0..nodes).collect();
    all.shuffle(rng);
    all
}

/// Bounds of `LaggingSuccessor`'s cut: longer than most election timeouts (the successor
/// must be elected while the leader is away).
const LAGGING_CUT_MS_MIN: u64 = 500;
const LAGGING_CUT_MS_MAX: u64 = 2_000;
/// Bounds of `LaggingSuccessor`'s loss: long enough for clients that timed out at the cut
/// leader (250-1,000 ms) to reach its successor while it still cannot commit.
const LAGGING_LOSS_MS_MIN: u64 = 200;
const LAGGING_LOSS_MS_MAX: u64 = 1_500;

fn resolve(kind: FaultKind, nodes: u32, rng: &mut StdRng) -> Fault {
    let minority = (nodes.saturating_sub(1) / 2).max(1);
    match kind {
        FaultKind::PartitionHalves => {
            let all = shuffled_nodes(rng, nodes);
            let (a, b) = all.split_at((nodes / 2) as usize);
            let mut groups = vec![a.to_vec(), b.to_vec()];
            groups.iter_mut().for_each(|g| g.sort());
            Fault::Partition { groups }
        }
        FaultKind::IsolateLeader => Fault::IsolateLeader,
        FaultKind::StaleLeader => Fault::StaleLeader,
        FaultKind::CutLeaderOnCommit => Fault::CutLeaderOnCommit {
            isolate_ms: rng.random_range(100..=1_500),
            strike_percent: rng.random_range(30..=100),
        },
        FaultKind::LeaderMinority => Fault::LeaderMinority {
            minority_size: minority,
            companions: shuffled_nodes(rng, nodes),
        },
        FaultKind::Bridge => {
            let all = shuffled_nodes(rng, nodes);
            let (bridge, rest) = match all.split_first() {
                Some((b, rest)) => (*b, rest.to_vec()),
                None => (0, Vec::new()),
            };
            let (left, right) = rest.split_at(rest.len() / 2);
            let (mut left, mut right) = (left.to_vec(), right.to_vec());
            left.sort();
            right.sort();
            Fault::Bridge {
                left,
                bridge,
                right,
            }
        }
        FaultKind::OneWay => {
            let all = shuffled_nodes(rng, nodes);
            let (from, to) = all.split_at((minority as usize).min(all.len()));
            let (mut from, mut to) = (from.to_vec(), to.to_vec());
            from.sort();
            to.sort();
            Fault::OneWay { from, to }
        }
        FaultKind::MessageLoss => Fault::MessageLoss {
            percent: rng.random_range(5..=40),
        },
        FaultKind::MessageDelay => Fault::MessageDelay {
            max_ms: rng.random_range(10..=2000),
        },
        FaultKind::MessageDuplicate => Fault::MessageDuplicate {
            percent: rng.random_range(5..=30),
        },
        FaultKind::MessageReorder => Fault::MessageReorder {
            percent: rng.random_range(5..=30),
        },
        FaultKind::Crash => Fault::Crash {
            target: Target::Node(rng.random_range(0..nodes)),
        },
        FaultKind::CrashLeader => Fault::Crash {
            target: Target::Leader,
        },
        FaultKind::Pause => Fault::Pause {
            target: Target::Node(rng.random_range(0..nodes)),
        },
        FaultKind::DiskErrors => Fault::DiskErrors {
            node: rng.random_range(0..nodes),
            percent: rng.random_range(1..=20),
        },
        FaultKind::PowerLoss => Fault::PowerLoss,
        FaultKind::CrashStorm => Fault::CrashStorm {
            interval_ms: rng.random_range(50..=400),
        },
        FaultKind::VoteStrike => Fault::VoteStrike {
            restart_ms_max: rng.random_range(1..=50),
            isolate_ms: rng.random_range(500..=1_500),
        },
        FaultKind::Figure8 => Fault::Figure8 {
            isolate_ms: rng.random_range(300..=1_000),
            strike_percent: rng.random_range(30..=70),
        },
        FaultKind::Join => Fault::Join,
        FaultKind::Leave => Fault::Leave {
            node: rng.random_range(0..nodes),
        },
        FaultKind::KillForever => Fault::KillForever {
            node: rng.random_range(0..nodes),
        },
        FaultKind::ClockDrift => Fault::ClockDrift {
            node: rng.random_range(0..nodes),
            rate_percent: if rng.random_bool(0.5) {
                rng.random_range(50..=95)
            } else {
                rng.random_range(105..=200)
            },
        },
        FaultKind::ClockJump => Fault::ClockJump {
            node: rng.random_range(0..nodes),
            ticks: rng.random_range(5..=200),
        },
        FaultKind::ClockStall => Fault::ClockStall {
            node: rng.random_range(0..nodes),
        },
        FaultKind::LaggingSuccessor => Fault::LaggingSuccessor {
            cut_ms: rng.random_range(LAGGING_CUT_MS_MIN..=LAGGING_CUT_MS_MAX),
            loss_ms: rng.random_range(LAGGING_LOSS_MS_MIN..=LAGGING_LOSS_MS_MAX),
            strike_percent: rng.random_range(30..=100),
        },
        FaultKind::PauseNewLeader => Fault::PauseNewLeader {
            pause_ms: rng.random_range(50..=1_500),
            strike_percent: rng.random_range(30..=100),
        },
        FaultKind::SlowDisk => Fault::SlowDisk {
            node: rng.random_range(0..nodes),
            sync_ms_max: rng.random_range(5..=500),
            read_ms_max: rng.random_range(1..=50),
        },
        FaultKind::FlakyLinks => {
            let count = rng.random_range(1..=nodes.max(2));
            let mut links = BTreeSet::new();
            for _ in 0..count {
                let from = rng.random_range(0..nodes);
                let to = rng.random_range(0..nodes);
                if from != to {
                    links.insert((from, to));
                }
            }
            Fault::FlakyLinks {
                links: links.into_iter().collect(),
                percent: rng.random_range(10..=90),
            }
        }
        FaultKind::AsymmetricLink => {
            let from = rng.random_range(0..nodes);
            let to = (from + rng.random_range(1..nodes.max(2))) % nodes.max(1);
            Fault::AsymmetricLink { from, to }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_a_function_of_the_seed() {
        let spec = NemesisSpec::with_kinds(&FaultKind::ALL);
        assert_eq!(spec.plan(3, 5, 60_000), spec.plan(3, 5, 60_000));
        assert_ne!(spec.plan(3, 5, 60_000), spec.plan(4, 5, 60_000));
    }

    #[test]
    fn plan_respects_bounds_and_final_heal() {
        let spec = NemesisSpec::with_kinds(&FaultKind::ALL);
        for seed in 0..200 {
            let plan = spec.plan(seed, 5, 60_000);
            assert!(!plan.is_empty());
            for f in &plan {
                assert!(f.start_ms < f.end_ms, "{f:?}");
                assert!(f.end_ms <= 60_000 - spec.final_heal_ms, "{f:?}");
            }
            // At most one partition at any time, at most max_concurrent faults per period.
            for f in plan.iter().filter(|f| f.fault.is_partition()) {
                let overlapping = plan
                    .iter()
                    .filter(|g| {
                        g.fault.is_partition() && g.start_ms < f.end_ms && f.start_ms < g.end_ms
                    })
                    .count();
                assert_eq!(overlapping, 1);
            }
        }
    }

    #[test]
    fn every_kind_gets_planned() {
        let spec = NemesisSpec::with_kinds(&FaultKind::ALL);
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            for f in spec.plan(seed, 5, 60_000) {
                let name = format!("{:?}", f.fault);
                let variant = name
                    .split([' ', '{'])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                seen.insert(variant);
            }
        }
        // Crash and CrashLeader share the Crash variant.
        assert_eq!(seen.len(), FaultKind::ALL.len() - 1);
    }

    #[test]
    fn membership_faults_get_planned_and_cut_nothing() {
        let mut kinds = FaultKind::MEMBERSHIP.to_vec();
        kinds.push(FaultKind::Crash);
        let spec = NemesisSpec::with_kinds(&kinds);
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            for f in spec.plan(seed, 7, 30_000) {
                if let Fault::Leave { node } | Fault::KillForever { node } = f.fault {
                    assert!(node < 7, "{f:?}");
                }
                if f.fault.is_membership() {
                    assert!(f.fault.cut_links(7, Some(0)).is_empty());
                    seen.insert(format!("{:?}", f.fault).chars().take(4).collect::<String>());
                }
            }
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        // Not in ALL: the plans of the existing presets do not change.
        assert!(FaultKind::MEMBERSHIP
            .iter()
            .all(|k| !FaultKind::ALL.contains(k)));
    }

    #[test]
    fn partitions_cut_the_right_links() {
        let halves = Fault::Partition {
            groups: vec![vec![0, 1], vec![2, 3, 4]],
        };
        let cut = halves.cut_links(5, None);
        assert_eq!(cut.len(), 2 * 2 * 3);
        assert!(cut.contains(&(0, 2)) && cut.contains(&(2, 0)) && !cut.contains(&(0, 1)));

        let isolate = Fault::IsolateLeader.cut_links(5, Some(3));
        assert_eq!(isolate.len(), 8);
        assert!(isolate.iter().all(|&(a, b)| a == 3 || b == 3));
        assert!(Fault::IsolateLeader.cut_links(5, None).is_empty());

        let minority = Fault::LeaderMinority {
            minority_size: 2,
            companions: vec![4, 1, 2],
        };
        let cut = minority.cut_links(5, Some(4));
        // Minority {4, 1} against majority {0, 2, 3}.
        assert_eq!(cut.len(), 2 * 2 * 3);
        assert!(cut.contains(&(1, 0)) && !cut.contains(&(1, 4)));

        let bridge = Fault::Bridge {
            left: vec![0, 1],
            bridge: 2,
            right: vec![3, 4],
        };
        let cut = bridge.cut_links(5, None);
        assert!(!cut.iter().any(|&(a, b)| a == 2 || b == 2));
        assert_eq!(cut.len(), 8);

        let one_way = Fault::OneWay {
            from: vec![0],
            to: vec![1, 2],
        };
        assert_eq!(one_way.cut_links(3, None), BTreeSet::from([(0, 1), (0, 2)]));
    }

    #[test]
    fn faults_round_trip_through_toml_and_json() {
        let plan = NemesisSpec::with_kinds(&FaultKind::ALL).plan(9, 5, 60_000);
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Wrapper {
            faults: Vec<ScheduledFault>,
        }
        let wrapper = Wrapper { faults: plan };
        let toml_text = toml::to_string(&wrapper).expect("serialize toml");
        assert_eq!(
            toml::from_str::<Wrapper>(&toml_text).expect("parse toml"),
            wrapper
        );
        let json = serde_json::to_string(&wrapper).expect("serialize json");
        assert_eq!(
            serde_json::from_str::<Wrapper>(&json).expect("parse json"),
            wrapper
        );
    }
}
