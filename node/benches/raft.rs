//! Raft core alone: entries committed per second in a 3-node in-memory cluster.
//!
//! No disk and no network: every Ready is "persisted" by appending to an in-memory log and its
//! messages are delivered at once, so the figure is the cost of the consensus core itself
//! (stepping, batching, Ready/advance). Each round the leader gets `batch` proposals of
//! `COMMAND_BYTES` bytes, then the cluster runs until they are committed and applied on the
//! leader; every node snapshots every 10,000 entries. Run: `cargo bench -p node --bench raft` (`RAFT_BENCH_SECS` per batch size, default 2).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use node::raft::{Config, Entry, Membership, Message, NodeId, Raft, Restored, Role, Snapshot};

const COMMAND_BYTES: usize = 100;
const NODES: [NodeId; 3] = [1, 2, 3];
const BATCHES: [usize; 3] = [1, 16, 256];
const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;

struct Cluster {
    nodes: BTreeMap<NodeId, Raft>,
    /// What each node "persisted" (kept so that the Ready contents are really consumed).
    stored: BTreeMap<NodeId, Vec<Entry>>,
    network: VecDeque<Message>,
    applied_on_leader: u64,
}

impl Cluster {
    fn new() -> Cluster {
        let membership = Membership {
            voters: NODES.into_iter().collect(),
            ..Membership::default()
        };
        let mut nodes = BTreeMap::new();
        for id in NODES {
            let mut config = Config::new(id, id);
            config.max_inflight_appends = 256;
            let restored = Restored {
                initial_membership: membership.clone(),
                ..Restored::default()
            };
            nodes.insert(id, Raft::new(config, restored).expect("valid config"));
        }
        Cluster {
            nodes,
            stored: BTreeMap::new(),
            network: VecDeque::new(),
            applied_on_leader: 0,
        }
    }

    /// Handles every Ready and delivers every message until the cluster is quiet.
    fn pump(&mut self, leader: Option<NodeId>) {
        loop {
            let mut busy = false;
            for (id, raft) in self.nodes.iter_mut() {
                while raft.has_ready() {
                    busy = true;
                    let rd = raft.ready();
                    let log = self.stored.entry(*id).or_default();
                    if let Some(first) = rd.entries.first() {
                        let keep = log.partition_point(|e| e.index < first.index);
                        log.truncate(keep);
                        log.extend(rd.entries.iter().cloned());
                    }
                    self.network.extend(rd.messages.iter().cloned());
                    if Some(*id) == leader {
                        self.applied_on_leader += rd.committed.len() as u64;
                    }
                    raft.advance(rd);
                }
            }
            while let Some(m) = self.network.pop_front() {
                busy = true;
                if let Some(to) = self.nodes.get_mut(&m.to) {
                    to.step(m);
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// Every `SNAPSHOT_EVERY_ENTRIES` applied entries a node snapshots (an empty state
    /// machine here), so the in-memory logs stay bounded as they would in a real node.
    fn compact_logs(&mut self) {
        for (id, raft) in self.nodes.iter_mut() {
            let applied = raft.applied_index();
            let snapshot_index = raft.snapshot_meta().map_or(0, |m| m.index);
            if applied - snapshot_index < SNAPSHOT_EVERY_ENTRIES {
                continue;
            }
            let meta = raft
                .snapshot_meta_at(applied)
                .expect("applied index is in the log");
            raft.snapshot_saved(Snapshot {
                meta,
                data: Vec::new(),
            });
            if let Some(log) = self.stored.get_mut(id) {
                let keep = log.partition_point(|e| e.index <= applied);
                log.drain(..keep);
            }
        }
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..1000 {
            for raft in self.nodes.values_mut() {
                raft.tick();
            }
            self.pump(None);
            if let Some((id, _)) = self.nodes.iter().find(|(_, r)| r.role() == Role::Leader) {
                return *id;
            }
        }
        panic!("no leader elected");
    }
}

struct Figures {
    entries: u64,
    rounds: u64,
    elapsed: Duration,
}

fn run(batch: usize, duration: Duration) -> Figures {
    let mut c = Cluster::new();
    let leader = c.elect();
    c.pump(Some(leader));
    c.applied_on_leader = 0;
    let command = vec![0xAB; COMMAND_BYTES];
    let started = Instant::now();
    let mut rounds = 0;
    let mut proposed = 0u64;
    while started.elapsed() < duration {
        let raft = c.nodes.get_mut(&leader).expect("leader exists");
        for _ in 0..batch {
            raft.propose(command.clone()).expect("still leader");
        }
        proposed += batch as u64;
        c.pump(Some(leader));
        rounds += 1;
        c.compact_logs();
    }
    let elapsed = started.elapsed();
    assert_eq!(c.applied_on_leader, proposed, "every proposal committed");
    Figures {
        entries: c.applied_on_leader,
        rounds,
        elapsed,
    }
}

fn main() {
    let secs: f64 = std::env::var("RAFT_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let duration = Duration::from_secs_f64(secs);
    println!(
        "raft core: 3 nodes in memory, {COMMAND_BYTES}-byte commands, {secs} s per batch size"
    );
    for batch in BATCHES {
        let f = run(batch, duration);
        let s = f.elapsed.as_secs_f64();
        println!(
            "raft-core batch={batch:<4} rounds={:<8} entries={:<9} entries/s={:<10.0} rounds/s={:.0}",
            f.rounds,
            f.entries,
            f.entries as f64 / s,
            f.rounds as f64 / s
        );
    }
}
