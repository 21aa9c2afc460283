//! Message-level network faults for the simulator (compiled only in test and madsim builds).
//!
//! madsim loses packets only at connection setup, and an open connection delivers everything in
//! order eventually. To exercise Raft against loss, duplication, reordering and delay, the
//! simulator hands each node a `TransportFaults` handle (one handle may be shared by all nodes:
//! it holds no node state) and changes its `FaultPlan` at run time. Each node draws its decisions
//! from its own seeded RNG, so a run stays a function of the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::meta::GroupId;
use crate::raft::{MessageBody, NodeId};
use crate::transport::PeerMessage;

/// What to do to outgoing peer messages. Probabilities are in [0, 1] and apply per message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// A delayed message is sent after a uniform delay in `1..=delay_ms_max` milliseconds.
    pub delay_probability: f64,
    pub delay_ms_max: u64,
    /// A reordered message is held back and sent after the next message to the same peer.
    pub reorder_probability: f64,
    /// Directed links (from, to) whose messages are all dropped (a partition filter).
    pub blocked_links: BTreeSet<(NodeId, NodeId)>,
    /// Directed links (from, to) that drop this percent of their messages (a flaky link; 100:
    /// one direction of the link is dead, the other works).
    pub link_drop_percent: BTreeMap<(NodeId, NodeId), u32>,
    /// (leader, group): the group's log replication to and from that node is lost — its
    /// `Append`s and the `AppendResponse`s sent to it — while every other message (heartbeats
    /// and their answers, votes, snapshots) gets through.
    pub appends_lost: BTreeSet<(NodeId, GroupId)>,
    /// Every `Append` leaves this many milliseconds after it was sent (0: at once), so that
    /// what a leader's turn cues (a cut as it commits) happens before its Appends of that turn
    /// (carrying the new commit index) are on the wire.
    pub append_delay_ms: u64,
}

impl FaultPlan {
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked_links.contains(&(from, to))
    }

    /// How long `message` is held back if it is an `Append` and Appends are delayed.
    pub fn append_delay(&self, message: &PeerMessage) -> Option<std::time::Duration> {
        let is_append = matches!(
            message,
            PeerMessage::Raft { message, .. } if matches!(message.body, MessageBody::Append { .. })
        );
        (self.append_delay_ms > 0 && is_append)
            .then(|| std::time::Duration::from_millis(self.append_delay_ms))
    }

    /// Whether `message` is log replication of a (leader, group) in `appends_lost`.
    pub fn loses_append(&self, message: &PeerMessage) -> bool {
        if self.appends_lost.is_empty() {
            return false;
        }
        let PeerMessage::Raft { group, message } = message else {
            return false;
        };
        let leader = match message.body {
            MessageBody::Append { .. } => message.from,
            MessageBody::AppendResponse { .. } => message.to,
            _ => return false,
        };
        self.appends_lost.contains(&(leader, *group))
    }
}

/// A shared, run-time settable `FaultPlan`.
#[derive(Clone, Debug, Default)]
pub struct TransportFaults {
    /// Shared as an `Arc` so that routing a message reads the plan without copying it.
    plan: Arc<Mutex<Arc<FaultPlan>>>,
}

impl TransportFaults {
    pub fn new() -> TransportFaults {
        TransportFaults::default()
    }

    pub fn set(&self, plan: FaultPlan) {
        *self.lock() = Arc::new(plan);
    }

    pub fn plan(&self) -> FaultPlan {
        FaultPlan::clone(&self.lock())
    }

    /// The plan in force, shared (no copy).
    pub fn current(&self) -> Arc<FaultPlan> {
        self.lock().clone()
    }

    /// Blocks both directions between `a` and `b`.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        let mut plan = self.lock();
        let plan = Arc::make_mut(&mut plan);
        plan.blocked_links.insert((a, b));
        plan.blocked_links.insert((b, a));
    }

    /// Blocks one direction only.
    pub fn block(&self, from: NodeId, to: NodeId) {
        Arc::make_mut(&mut self.lock())
            .blocked_links
            .insert((from, to));
    }

    pub fn heal_links(&self) {
        Arc::make_mut(&mut self.lock()).blocked_links.clear();
    }

    /// Back to a perfect network.
    pub fn clear(&self) {
        self.set(FaultPlan::default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<FaultPlan>> {
        // A panic while holding this lock cannot leave the plan inconsistent (plain data).
        self.plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Message;

    fn raft(group: GroupId, from: NodeId, to: NodeId, body: MessageBody) -> PeerMessage {
        PeerMessage::Raft {
            group,
            message: Message {
                from,
                to,
                term: 3,
                body,
            },
        }
    }

    #[test]
    fn lost_appends_are_the_held_leaders_log_replication_in_its_group_only() {
        let plan = FaultPlan {
            appends_lost: BTreeSet::from([(1, 2)]),
            ..FaultPlan::default()
        };
        let append = || MessageBody::Append {
            prev_index: 4,
            prev_term: 2,
            entries: Vec::new(),
            commit: 4,
        };
        let ack = || MessageBody::AppendResponse {
            success: true,
            index: 5,
            reject_hint: None,
        };
        assert!(plan.loses_append(&raft(2, 1, 3, append())));
        assert!(plan.loses_append(&raft(2, 3, 1, ack())));
        // Heartbeats and their answers carry read rounds and leadership: they get through.
        let heartbeat = MessageBody::Heartbeat {
            commit: 4,
            read_seq: 7,
        };
        assert!(!plan.loses_append(&raft(2, 1, 3, heartbeat)));
        let answer = MessageBody::HeartbeatResponse { read_seq: 7 };
        assert!(!plan.loses_append(&raft(2, 3, 1, answer)));
        // Other groups, and other nodes' replication in this group, are not touched.
        assert!(!plan.loses_append(&raft(1, 1, 3, append())));
        assert!(!plan.loses_append(&raft(2, 3, 1, append())));
        assert!(!plan.loses_append(&raft(2, 1, 3, ack())));
        assert!(!FaultPlan::default().loses_append(&raft(2, 1, 3, append())));
    }

    #[test]
    fn only_appends_are_delayed() {
        let plan = FaultPlan {
            append_delay_ms: 5,
            ..FaultPlan::default()
        };
        let append = MessageBody::Append {
            prev_index: 4,
            prev_term: 2,
            entries: Vec::new(),
            commit: 4,
        };
        let delay = Some(std::time::Duration::from_millis(5));
        assert_eq!(plan.append_delay(&raft(1, 1, 2, append.clone())), delay);
        let heartbeat = MessageBody::Heartbeat {
            commit: 4,
            read_seq: 1,
        };
        assert_eq!(plan.append_delay(&raft(1, 1, 2, heartbeat)), None);
        assert_eq!(
            FaultPlan::default().append_delay(&raft(1, 1, 2, append)),
            None
        );
    }
}
