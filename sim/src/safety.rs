//! Raft safety checks and strike triggers fed by every node's protocol probe.
//!
//! Why: a broken election or commit rule shows up as a linearizability violation only when the
//! workload happens to read the divergent value; the invariants themselves are cheap to check
//! the moment the nodes report them (FoundationDB and TigerBeetle's simulators do the same).
//! Checked, in every Raft group separately (a node hosts the metadata group 0 and many shard
//! groups; terms and indexes are per group): Election Safety (at most one leader per term),
//! State Machine Safety (no two nodes apply different entries, by term, at one index) and the
//! commit rule (a leader advances its commit index only to an entry of its own term, Raft
//! §5.4.2; Figure 8 shows why). A violation names its group and fails the run. The monitor also
//! forwards every event (with its group) to the nemesis when a targeted fault
//! (`Fault::VoteStrike`, `Fault::Figure8`) is active; it never changes what a node does itself.
//!
//! Invariant: state of one group never decides a check of another (every map is keyed by group
//! first).

use std::collections::BTreeMap;
use std::sync::Mutex;

use node::meta::GroupId;
use node::raft::{LogIndex, NodeId, Term};
use node::server::{ProtocolEvent, ProtocolObserver};
use tokio::sync::mpsc::UnboundedSender;

/// At most this many violations are kept (the first one matters; the rest are echoes).
const MAX_VIOLATIONS_KEPT: usize = 16;

/// A protocol moment the nemesis asked to be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StrikeCue {
    pub node: NodeId,
    pub group: GroupId,
    pub event: ProtocolEvent,
}

#[derive(Debug, Default)]
struct MonitorState {
    /// (group, term) -> the node that became its leader.
    leaders: BTreeMap<(GroupId, Term), NodeId>,
    /// (group, index) -> the term of the entry applied there, and the first node that applied it.
    applied: BTreeMap<(GroupId, LogIndex), (Term, NodeId)>,
    /// (group, index) -> a shard replica's data digest there, and the first node that reported it.
    digests: BTreeMap<(GroupId, LogIndex), (u64, NodeId)>,
    violations: Vec<String>,
    cues: Vec<UnboundedSender<StrikeCue>>,
}

/// Shared by all servers of one run (through `ServerConfig::observer`).
#[derive(Debug, Default)]
pub struct SafetyMonitor {
    state: Mutex<MonitorState>,
}

impl SafetyMonitor {
    pub fn new() -> SafetyMonitor {
        SafetyMonitor::default()
    }

    /// Until its receiver is dropped, every event is also forwarded to `cues` (targeted
    /// faults act on them).
    pub fn add_cues(&self, cues: UnboundedSender<StrikeCue>) {
        self.lock().cues.push(cues);
    }

    /// Every violation found so far, first first.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MonitorState> {
        // Plain data: a panic while holding the lock cannot leave it half-updated.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MonitorState {
    fn violation(&mut self, text: String) {
        tracing::error!(target: "safety", "{text}");
        if self.violations.len() < MAX_VIOLATIONS_KEPT {
            self.violations.push(text);
        }
    }
}

impl ProtocolObserver for SafetyMonitor {
    fn observe(&self, node: NodeId, group: GroupId, event: ProtocolEvent) {
        let mut state = self.lock();
        // A targeted fault that ended dropped its receiver: forget it.
        state
            .cues
            .retain(|cues| cues.send(StrikeCue { node, group, event }).is_ok());
        match event {
            ProtocolEvent::BecameLeader { term } => {
                match state.leaders.get(&(group, term)).copied() {
                    Some(other) if other != node => state.violation(format!(
                        "election safety: group {group}: n{node} and n{other} both became leader \
                         of term {term}"
                    )),
                    Some(_) => {}
                    None => {
                        state.leaders.insert((group, term), node);
                    }
                }
            }
            ProtocolEvent::Applied { index, term } => {
                match state.applied.get(&(group, index)).copied() {
                    Some((other_term, other)) if other_term != term => state.violation(format!(
                        "state machine safety: group {group}: n{node} applied index {index} of \
                         term {term}, n{other} applied index {index} of term {other_term}"
                    )),
                    Some(_) => {}
                    None => {
                        state.applied.insert((group, index), (term, node));
                    }
                }
            }
            ProtocolEvent::LeaderCommitted {
                term,
                index,
                entry_term,
            } => {
                if entry_term != term {
                    state.violation(format!(
                        "commit rule (Raft 5.4.2): group {group}: n{node}, leader of term {term}, \
                         committed index {index} of term {entry_term} by counting replicas"
                    ));
                }
            }
            ProtocolEvent::StateDigest { index, digest } => {
                match state.digests.get(&(group, index)).copied() {
                    Some((other_digest, other)) if other_digest != digest => {
                        state.violation(format!(
                            "replica divergence: group {group}: n{node} and n{other} hold \
                             different data at applied index {index} (digest {digest:016x} vs \
                             {other_digest:016x})"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        state.digests.insert((group, index), (digest, node));
                    }
                }
            }
            ProtocolEvent::VoteGranted { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leaders_in_one_term_and_divergent_entries_are_violations() {
        let m = SafetyMonitor::new();
        m.observe(1, 1, ProtocolEvent::BecameLeader { term: 3 });
        m.observe(1, 1, ProtocolEvent::BecameLeader { term: 3 });
        m.observe(2, 1, ProtocolEvent::BecameLeader { term: 4 });
        m.observe(1, 1, ProtocolEvent::Applied { index: 5, term: 3 });
        m.observe(2, 1, ProtocolEvent::Applied { index: 5, term: 3 });
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        m.observe(3, 1, ProtocolEvent::BecameLeader { term: 4 });
        m.observe(3, 1, ProtocolEvent::Applied { index: 5, term: 4 });
        let v = m.violations();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("election safety"), "{v:?}");
        assert!(v[1].contains("state machine safety"), "{v:?}");
    }

    #[test]
    fn groups_are_checked_separately() {
        let m = SafetyMonitor::new();
        // Each group has its own terms and indexes: the same (term, index) in two groups with
        // different leaders or entries is fine.
        m.observe(1, 0, ProtocolEvent::BecameLeader { term: 2 });
        m.observe(2, 1, ProtocolEvent::BecameLeader { term: 2 });
        m.observe(3, 2, ProtocolEvent::BecameLeader { term: 2 });
        m.observe(1, 0, ProtocolEvent::Applied { index: 4, term: 2 });
        m.observe(2, 1, ProtocolEvent::Applied { index: 4, term: 1 });
        m.observe(3, 1, ProtocolEvent::Applied { index: 4, term: 1 });
        let commit = |term, entry_term| ProtocolEvent::LeaderCommitted {
            term,
            index: 4,
            entry_term,
        };
        m.observe(1, 0, commit(2, 2));
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        // Within one group the rules still hold.
        m.observe(1, 2, ProtocolEvent::BecameLeader { term: 2 });
        m.observe(1, 1, ProtocolEvent::Applied { index: 4, term: 2 });
        m.observe(2, 1, commit(3, 2));
        let v = m.violations();
        assert_eq!(v.len(), 3, "{v:?}");
        assert!(v[0].contains("election safety: group 2"), "{v:?}");
        assert!(v[1].contains("state machine safety: group 1"), "{v:?}");
        assert!(v[2].contains("commit rule (Raft 5.4.2): group 1"), "{v:?}");
    }

    #[test]
    fn replicas_with_different_data_at_one_index_are_reported() {
        let m = SafetyMonitor::new();
        let digest = |index, digest| ProtocolEvent::StateDigest { index, digest };
        m.observe(1, 3, digest(10, 0xaa));
        m.observe(2, 3, digest(10, 0xaa));
        // Other indexes and other groups are compared separately.
        m.observe(3, 3, digest(12, 0xbb));
        m.observe(3, 4, digest(10, 0xcc));
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        m.observe(3, 3, digest(10, 0xab));
        let v = m.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("replica divergence: group 3: n3 and n1"),
            "{v:?}"
        );
    }
}
