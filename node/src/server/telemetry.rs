//! What the event loop publishes for the admin port: metrics sampled from its groups, and
//! the node's readiness.
//!
//! Ready means the node can serve its share: the cluster map is initialized, this node is an
//! active member of it, and every replica it hosts knows its group's leader and has applied its
//! commit index to within `catch_up_lag_entries`. Sampling happens on ticks; nothing the
//! event loop decides depends on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::group::Group;
use crate::meta::{GroupId, MemberState, MetaState};
use crate::metrics::{GroupLabels, Metrics};
use crate::raft::NodeId;

/// Readiness as `/health/ready` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    /// Why the node is not ready (empty when it is).
    pub problems: Vec<String>,
}

/// Groups named in one readiness problem line at most (the rest are counted).
const PROBLEM_GROUPS_MAX: usize = 8;

pub(super) struct Telemetry {
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: watch::Sender<Health>,
    /// The leader each group had at the last sample (to count changes).
    leaders: BTreeMap<GroupId, Option<NodeId>>,
}

impl Telemetry {
    pub(super) fn new(metrics: Arc<Metrics>, health: watch::Sender<Health>) -> Telemetry {
        Telemetry {
            metrics,
            health,
            leaders: BTreeMap::new(),
        }
    }

    /// Samples every hosted group and republishes readiness.
    pub(super) fn sample(
        &mut self,
        me: NodeId,
        meta: &MetaState,
        groups: &BTreeMap<GroupId, Group>,
        lag_entries_max: u64,
    ) {
        let m = &self.metrics;
        let (mut keys, mut stored) = (0u64, 0u64);
        let mut leaderless = Vec::new();
        let mut lagging = Vec::new();
        for (&id, group) in groups {
            let labels = GroupLabels { group: id };
            let raft = &group.raft;
            m.raft_term.get_or_create(&labels).set(gauge(raft.term()));
            m.raft_commit_index
                .get_or_create(&labels)
                .set(gauge(raft.commit_index()));
            m.raft_applied_index
                .get_or_create(&labels)
                .set(gauge(raft.applied_index()));
            m.raft_is_leader
                .get_or_create(&labels)
                .set(i64::from(group.is_leader()));
            let leader = raft.leader();
            let previous = self.leaders.insert(id, leader);
            if leader.is_some() && previous.is_some_and(|p| p != leader) {
                m.leader_changes.get_or_create(&labels).inc();
            }
            if leader.is_none() {
                leaderless.push(id);
            }
            if raft.commit_index().saturating_sub(raft.applied_index()) > lag_entries_max {
                lagging.push(id);
            }
            keys += group.machine.keys();
            stored += group.machine.stored_bytes();
        }
        self.leaders.retain(|id, _| groups.contains_key(id));
        m.groups_hosted.set(groups.len() as i64);
        m.keys.set(gauge(keys));
        m.stored.set(gauge(stored));

        let mut problems = Vec::new();
        if !meta.is_initialized() {
            problems.push("the cluster map is not initialized yet".to_string());
        } else {
            match meta.members().get(&me).map(|m| m.state) {
                Some(MemberState::Active) => {}
                Some(state) => problems.push(format!("this node is {state:?} in the map")),
                None => problems.push("this node is not a member of the map yet".to_string()),
            }
        }
        if !leaderless.is_empty() {
            problems.push(format!("no known leader: {}", name_groups(&leaderless)));
        }
        if !lagging.is_empty() {
            problems.push(format!(
                "applied more than {lag_entries_max} entries behind commit: {}",
                name_groups(&lagging)
            ));
        }
        let health = Health {
            ready: problems.is_empty(),
            problems,
        };
        m.ready.set(i64::from(health.ready));
        self.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn name_groups(groups: &[GroupId]) -> String {
    let mut text: Vec<String> = groups
        .iter()
        .take(PROBLEM_GROUPS_MAX)
        .map(|g| format!("group {g}"))
        .collect();
    if groups.len() > PROBLEM_GROUPS_MAX {
        text.push(format!("{} more", groups.len() - PROBLEM_GROUPS_MAX));
    }
    text.join(", ")
}
