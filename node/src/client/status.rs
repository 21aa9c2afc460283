//! `cluster status`: one picture of the cluster merged from every member's `ClusterView`.
//!
//! No node sees everything: each reports the metadata as it applied it and only the groups it
//! hosts. The merge takes the map (members, targets, epoch) from the newest view, and for every
//! group the report of the node that claims to lead it with the highest term (an old leader that
//! has not yet heard of its successor claims a lower term). Without any leader report a group
//! shows no leader and the membership of its highest-term report. Lag is measured on the
//! leader's own numbers: its commit index minus each replica's match index.
//!
//! Pure and deterministic: ties are broken by node id, never by arrival or hash order.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

use crate::meta::{
    group_of_shard, shard_of_group, ClusterView, GroupId, GroupStatus, Member, MemberState,
    META_GROUP,
};
use crate::placement::{PlacementConfig, ShardId};
use crate::raft::{LogIndex, NodeId, Role, Term};

/// What one member answered to `ClusterInfo` (or why it did not).
#[derive(Clone, Debug, PartialEq)]
pub struct NodeReport {
    pub node_id: NodeId,
    pub view: Result<ClusterView, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterStatus {
    /// Epoch of the newest map any member reported.
    pub epoch: u64,
    pub placement: PlacementConfig,
    /// The metadata group's leader (from the merged group report, else the newest view's hint).
    pub meta_leader: Option<NodeId>,
    /// Every member of the newest map, in id order.
    pub members: Vec<MemberStatus>,
    /// The metadata group, then every shard in order.
    pub groups: Vec<GroupSummary>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberStatus {
    pub member: Member,
    /// None: not asked (a `Removed` member has stopped).
    pub reachable: Option<bool>,
    pub error: Option<String>,
    /// Data groups the member reported hosting (None when it did not answer).
    pub replicas: Option<usize>,
    /// Shards whose target replica set includes the member.
    pub target_replicas: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupSummary {
    pub group: GroupId,
    /// None for the metadata group.
    pub shard: Option<ShardId>,
    /// Target replicas from the map (empty for the metadata group).
    pub target: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub term: Term,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub commit_index: LogIndex,
    /// Entries each replica is behind the leader's commit index (leader-reported; empty
    /// without a leader; a replica missing from the leader's numbers is missing here).
    pub lag_entries: BTreeMap<NodeId, u64>,
    pub keys: u64,
    /// Members that reported hosting the group (may differ from voters while replicas move).
    pub hosts: Vec<NodeId>,
}

impl ClusterStatus {
    pub fn member(&self, id: NodeId) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.member.id == id)
    }

    /// Shards that still have `node` as a voter, a learner or a host.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        self.groups
            .iter()
            .filter(|g| {
                g.voters.contains(&node) || g.learners.contains(&node) || g.hosts.contains(&node)
            })
            .filter_map(|g| g.shard)
            .collect()
    }

    /// Groups no reachable member claims to lead.
    pub fn leaderless_groups(&self) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|g| g.leader.is_none())
            .map(|g| g.group)
            .collect()
    }
}

/// Merges the members' reports; None when no report carries an initialized view.
pub fn merge_cluster_status(reports: &[NodeReport]) -> Option<ClusterStatus> {
    let views: Vec<&ClusterView> = reports
        .iter()
        .filter_map(|r| r.view.as_ref().ok())
        .filter(|v| v.initialized)
        .collect();
    // Highest epoch; among equals the lowest node id.
    let newest = views
        .iter()
        .copied()
        .max_by_key(|v| (v.epoch, std::cmp::Reverse(v.node_id)))?;
    let mut groups = vec![merge_group(META_GROUP, Vec::new(), &views)];
    for shard in 0..newest.placement.shards {
        let target = newest
            .shard_map
            .replicas
            .get(shard as usize)
            .cloned()
            .unwrap_or_default();
        groups.push(merge_group(group_of_shard(shard), target, &views));
    }
    let target_load = newest.shard_map.load();
    let mut members: Vec<MemberStatus> = newest
        .members
        .iter()
        .map(|member| member_status(member, reports, &target_load))
        .collect();
    members.sort_by_key(|m| m.member.id);
    let meta_leader = groups[0].leader.or(newest.meta_leader);
    Some(ClusterStatus {
        epoch: newest.epoch,
        placement: newest.placement.clone(),
        meta_leader,
        members,
        groups,
    })
}

fn member_status(
    member: &Member,
    reports: &[NodeReport],
    target_load: &BTreeMap<NodeId, usize>,
) -> MemberStatus {
    let report = reports.iter().find(|r| r.node_id == member.id);
    let (reachable, error, replicas) = match report.map(|r| &r.view) {
        Some(Ok(view)) => {
            let data_groups = view
                .groups
                .iter()
                .filter(|g| shard_of_group(g.group).is_some())
                .count();
            (Some(true), None, Some(data_groups))
        }
        Some(Err(e)) => (Some(false), Some(e.clone()), None),
        None if member.state == MemberState::Removed => (None, None, None),
        None => (Some(false), Some("not asked".into()), None),
    };
    MemberStatus {
        member: member.clone(),
        reachable,
        error,
        replicas,
        target_replicas: target_load.get(&member.id).copied().unwrap_or(0),
    }
}

fn merge_group(group: GroupId, target: Vec<NodeId>, views: &[&ClusterView]) -> GroupSummary {
    // (reporting node, its status of this group), in node id order.
    let mut reports: Vec<(NodeId, &GroupStatus)> = views
        .iter()
        .flat_map(|v| {
            v.groups
                .iter()
                .filter(|g| g.group == group)
                .map(|g| (v.node_id, g))
        })
        .collect();
    reports.sort_by_key(|(node, _)| *node);
    let hosts: Vec<NodeId> = reports
        .iter()
        .map(|(node, _)| *node)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rank =
        |(node, g): &&(NodeId, &GroupStatus)| (g.term, g.commit_index, std::cmp::Reverse(*node));
    let leader_report = reports
        .iter()
        .filter(|(node, g)| g.role == Role::Leader && g.leader.is_none_or(|l| l == *node))
        .max_by_key(rank);
    let chosen = leader_report.or_else(|| reports.iter().max_by_key(rank));
    let mut summary = GroupSummary {
        group,
        shard: shard_of_group(group),
        target,
        leader: None,
        term: 0,
        voters: Vec::new(),
        learners: Vec::new(),
        commit_index: 0,
        lag_entries: BTreeMap::new(),
        keys: 0,
        hosts,
    };
    let Some((node, g)) = chosen else {
        return summary;
    };
    summary.term = g.term;
    summary.voters = g.voters.clone();
    summary.learners = g.learners.clone();
    summary.commit_index = g.commit_index;
    summary.keys = g.keys;
    if leader_report.is_some() {
        summary.leader = Some(*node);
        summary.lag_entries.insert(*node, 0);
        for replica in g.voters.iter().chain(&g.learners).filter(|r| *r != node) {
            if let Some(matched) = g.match_index.get(replica) {
                summary
                    .lag_entries
                    .insert(*replica, g.commit_index.saturating_sub(*matched));
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::routing::tests::{member, view};

    fn group(group: GroupId, role: Role, term: Term, leader: Option<NodeId>) -> GroupStatus {
        GroupStatus {
            group,
            role,
            term,
            leader,
            voters: vec![1, 2, 3],
            learners: Vec::new(),
            commit_index: 100,
            applied_index: 100,
            snapshot_index: 0,
            match_index: BTreeMap::new(),
            keys: 10,
        }
    }

    fn report(view: ClusterView) -> NodeReport {
        NodeReport {
            node_id: view.node_id,
            view: Ok(view),
        }
    }

    fn members(n: NodeId) -> Vec<Member> {
        (1..=n).map(|id| member(id, MemberState::Active)).collect()
    }

    #[test]
    fn the_highest_term_leader_claim_wins_and_lag_comes_from_its_match_index() {
        let targets = vec![vec![1, 2, 3]];
        let shard0 = group_of_shard(0);
        // Node 1 is a deposed leader (term 4) that has not heard of node 2's term-5 leadership.
        let mut v1 = view(1, 3, members(3), targets.clone());
        v1.groups = vec![group(shard0, Role::Leader, 4, Some(1))];
        let mut v2 = view(2, 3, members(3), targets.clone());
        let mut lead = group(shard0, Role::Leader, 5, Some(2));
        lead.learners = vec![4];
        lead.match_index = BTreeMap::from([(1, 90), (3, 100), (4, 40)]);
        v2.groups = vec![lead];
        let mut v3 = view(3, 3, members(3), targets);
        v3.groups = vec![group(shard0, Role::Follower, 5, Some(2))];
        let status = merge_cluster_status(&[report(v1), report(v2), report(v3)]).unwrap();
        let shard = &status.groups[1];
        assert_eq!(shard.shard, Some(0));
        assert_eq!((shard.leader, shard.term), (Some(2), 5));
        assert_eq!(shard.learners, vec![4]);
        assert_eq!(
            shard.lag_entries,
            BTreeMap::from([(1, 10), (2, 0), (3, 0), (4, 60)])
        );
        assert_eq!(shard.hosts, vec![1, 2, 3]);
        assert_eq!(status.shards_on(4), vec![0]);
        assert_eq!(status.shards_on(7), Vec::<ShardId>::new());
        // Nobody reported the metadata group.
        assert_eq!(status.leaderless_groups(), vec![META_GROUP]);
    }

    #[test]
    fn without_a_leader_the_highest_term_report_gives_membership_and_no_lag() {
        let shard0 = group_of_shard(0);
        let mut v1 = view(1, 1, members(3), vec![vec![1, 2, 3]]);
        let mut old = group(shard0, Role::Follower, 2, None);
        old.voters = vec![1, 2];
        let mut candidate = group(shard0, Role::Candidate, 3, None);
        candidate.voters = vec![1, 2, 3];
        v1.groups = vec![old];
        let mut v2 = view(2, 1, members(3), vec![vec![1, 2, 3]]);
        v2.groups = vec![candidate];
        let status = merge_cluster_status(&[report(v1), report(v2)]).unwrap();
        let shard = &status.groups[1];
        assert_eq!(shard.leader, None);
        assert_eq!((shard.term, shard.voters.clone()), (3, vec![1, 2, 3]));
        assert!(shard.lag_entries.is_empty());
        assert_eq!(status.leaderless_groups(), vec![META_GROUP, shard0]);
    }

    #[test]
    fn the_newest_map_names_the_members_and_unreachable_ones_are_marked() {
        // Node 3 still has epoch 4, where node 4 had not joined; node 2 is down.
        let mut newer = members(4);
        newer[2].state = MemberState::Leaving;
        let mut v1 = view(1, 5, newer, vec![vec![1, 2, 4], vec![2, 4, 1]]);
        v1.groups = vec![
            group(META_GROUP, Role::Leader, 7, Some(1)),
            group(group_of_shard(0), Role::Leader, 2, Some(1)),
            group(group_of_shard(1), Role::Follower, 2, Some(2)),
        ];
        let v3 = view(3, 4, members(3), vec![vec![1, 2, 3], vec![2, 3, 1]]);
        let mut uninitialized = view(4, 0, Vec::new(), Vec::new());
        uninitialized.initialized = false;
        let down = NodeReport {
            node_id: 2,
            view: Err("connection refused".into()),
        };
        let status =
            merge_cluster_status(&[report(v3), down, report(v1), report(uninitialized)]).unwrap();
        assert_eq!(status.epoch, 5);
        assert_eq!(status.meta_leader, Some(1));
        let ids: Vec<NodeId> = status.members.iter().map(|m| m.member.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
        let m2 = status.member(2).unwrap();
        assert_eq!((m2.reachable, m2.replicas), (Some(false), None));
        assert_eq!(m2.error.as_deref(), Some("connection refused"));
        let m1 = status.member(1).unwrap();
        assert_eq!(
            (m1.reachable, m1.replicas, m1.target_replicas),
            (Some(true), Some(2), 2)
        );
        assert_eq!(status.member(3).unwrap().member.state, MemberState::Leaving);
        assert_eq!(status.member(3).unwrap().target_replicas, 0);
        assert_eq!(status.member(4).unwrap().replicas, Some(0));
        assert_eq!(status.groups.len(), 3);
        assert_eq!(status.groups[2].target, vec![2, 4, 1]);
    }

    #[test]
    fn removed_members_are_not_expected_to_answer_and_no_map_gives_none() {
        let mut all = members(3);
        all[2].state = MemberState::Removed;
        let status = merge_cluster_status(&[report(view(1, 9, all, vec![vec![1, 2]]))]).unwrap();
        assert_eq!(status.member(3).unwrap().reachable, None);
        assert_eq!(status.member(2).unwrap().reachable, Some(false));
        let mut uninitialized = view(1, 0, Vec::new(), Vec::new());
        uninitialized.initialized = false;
        assert_eq!(merge_cluster_status(&[report(uninitialized)]), None);
        assert_eq!(merge_cluster_status(&[]), None);
    }
}
