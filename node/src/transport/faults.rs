//! Message-level network faults for the simulator (compiled only in test and madsim builds).
//!
//! madsim loses packets only at connection setup, and an open connection delivers everything in
//! order eventually. To exercise Raft against loss, duplication, reordering and delay, the
//! simulator hands each node a `TransportFaults` handle (one handle may be shared by all nodes:
//! it holds no node state) and changes its `FaultPlan` at run time. Each node draws its decisions
//! from its own seeded RNG, so a run stays a function of the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use crate::raft::NodeId;

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
}

impl FaultPlan {
    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked_links.contains(&(from, to))
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
