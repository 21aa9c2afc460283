//! The end-of-run replication check: after the final heal, has the cluster put every replica
//! where its map says, and does the map say what happened to each node?
//!
//! Why: linearizability and liveness can both pass while a shard limps on two replicas forever
//! (a dead node never replaced, a leave that never finished, a learner never promoted). Only
//! the cluster's own reports show that. The harness gathers every running node's `ClusterView`
//! and asks `replication_problems`; it repeats until no problem is left or the scenario's
//! `convergence_bound_s` has passed.
//!
//! Pure and deterministic (BTreeMaps, ties broken by node id), so it is unit-tested here
//! without a simulation. The map is the newest initialized view's (highest epoch); a group's
//! replica set is the one reported by the node that claims to lead it with the highest term.

use std::collections::{BTreeMap, BTreeSet};

use node::meta::{group_of_shard, ClusterView, GroupId, GroupStatus, MemberState, META_GROUP};
use node::raft::{NodeId, Role};

/// What the harness knows about its servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Started, not killed for good and whose server has not ended by itself.
    pub running: BTreeSet<NodeId>,
    /// Killed and never restarted.
    pub killed: BTreeSet<NodeId>,
    /// Servers that ended by themselves (they left and were removed).
    pub finished: BTreeSet<NodeId>,
}

/// Every way the reports differ from a converged cluster, one line each; empty: converged.
pub fn replication_problems(views: &[ClusterView], fleet: &Fleet) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(map) = views
        .iter()
        .filter(|v| v.initialized)
        .max_by_key(|v| (v.epoch, std::cmp::Reverse(v.node_id)))
    else {
        return vec!["no running node reported an initialized cluster map".to_string()];
    };
    let state: BTreeMap<NodeId, MemberState> =
        map.members.iter().map(|m| (m.id, m.state)).collect();
    for (&id, &s) in &state {
        let wrong = match s {
            MemberState::Leaving => Some("its leave has not finished"),
            MemberState::Active if fleet.killed.contains(&id) => {
                Some("it was killed for good but is still Active")
            }
            MemberState::Dead if fleet.running.contains(&id) => {
                Some("it is running but marked Dead")
            }
            MemberState::Removed if fleet.running.contains(&id) => {
                Some("it is running but marked Removed")
            }
            _ => None,
        };
        if let Some(wrong) = wrong {
            problems.push(format!("map epoch {}: n{id} is {s:?}: {wrong}", map.epoch));
        }
    }
    for &id in &fleet.running {
        if !state.contains_key(&id) {
            problems.push(format!(
                "map epoch {}: running n{id} is not a member (join never admitted)",
                map.epoch
            ));
        }
    }
    for &id in &fleet.finished {
        if state.get(&id).is_some_and(|&s| s != MemberState::Removed) {
            problems.push(format!("n{id} stopped by itself but is not Removed"));
        }
    }
    let gone = |id: &NodeId| {
        fleet.killed.contains(id)
            || fleet.finished.contains(id)
            || state.get(id) == Some(&MemberState::Removed)
    };
    let hosted: BTreeMap<NodeId, BTreeSet<GroupId>> = views
        .iter()
        .map(|v| (v.node_id, v.groups.iter().map(|g| g.group).collect()))
        .collect();
    let shards = map.shard_map.replicas.len() as u32;
    let groups = std::iter::once(META_GROUP).chain((0..shards).map(group_of_shard));
    for group in groups {
        let target = target_voters(map, group);
        let Some((leader, status)) = group_leader(views, group) else {
            problems.push(format!("group {group}: no node reports being its leader"));
            continue;
        };
        let voters: BTreeSet<NodeId> = status.voters.iter().copied().collect();
        if voters != target {
            problems.push(format!(
                "group {group}: voters {voters:?} (leader n{leader}, term {}) != target {target:?}",
                status.term
            ));
        }
        let stale: Vec<NodeId> = voters.iter().copied().filter(|id| gone(id)).collect();
        if !stale.is_empty() {
            problems.push(format!(
                "group {group}: removed or killed nodes {stale:?} are still voters"
            ));
        }
        if group != META_GROUP && !status.learners.is_empty() {
            problems.push(format!(
                "group {group}: learners {:?} still being added",
                status.learners
            ));
        }
        for id in &target {
            let missing = hosted.get(id).is_some_and(|g| !g.contains(&group));
            if missing {
                problems.push(format!(
                    "group {group}: target replica n{id} does not host it"
                ));
            }
        }
    }
    problems
}

/// (node, group) for every node of `ids` that some view reports as a voter of some group.
pub fn voters_among(views: &[ClusterView], ids: &BTreeSet<NodeId>) -> Vec<(NodeId, GroupId)> {
    let found: BTreeSet<(NodeId, GroupId)> = views
        .iter()
        .flat_map(|v| v.groups.iter())
        .flat_map(|g| g.voters.iter().map(move |&id| (id, g.group)))
        .filter(|(id, _)| ids.contains(id))
        .collect();
    found.into_iter().collect()
}

/// The voters a group should have: a shard's replicas in the map; for the metadata group the
/// `min(replication_factor, #active)` Active members with the lowest ids (`MetaState::target`).
pub fn target_voters(map: &ClusterView, group: GroupId) -> BTreeSet<NodeId> {
    if group == META_GROUP {
        let mut active: Vec<NodeId> = map
            .members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.id)
            .collect();
        active.sort_unstable();
        let rf = map.placement.replication_factor.min(active.len());
        return active.into_iter().take(rf).collect();
    }
    node::meta::shard_of_group(group)
        .and_then(|s| map.shard_map.replicas.get(s as usize))
        .map(|r| r.iter().copied().collect())
        .unwrap_or_default()
}

/// The report of the node that claims to lead `group` with the highest term (lowest id on a
/// tie, which two leaders of one term would be a safety violation the monitor reports).
fn group_leader(views: &[ClusterView], group: GroupId) -> Option<(NodeId, &GroupStatus)> {
    views
        .iter()
        .flat_map(|v| v.groups.iter().map(move |g| (v.node_id, g)))
        .filter(|(_, g)| g.group == group && g.role == Role::Leader)
        .max_by_key(|(id, g)| (g.term, std::cmp::Reverse(*id)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use node::meta::Member;
    use node::placement::{PlacementConfig, ShardMap};

    use super::*;

    fn member(id: NodeId, state: MemberState) -> Member {
        let addr = |port: u16| SocketAddr::from(([10, 0, 1, id as u8], port));
        Member {
            id,
            peer_addr: addr(7380),
            client_addr: addr(7379),
            zone: None,
            state,
        }
    }

    fn group(group: GroupId, role: Role, term: u64, voters: &[NodeId]) -> GroupStatus {
        GroupStatus {
            group,
            role,
            term,
            leader: None,
            voters: voters.to_vec(),
            learners: Vec::new(),
            commit_index: 10,
            applied_index: 10,
            snapshot_index: 0,
            match_index: BTreeMap::new(),
            keys: 0,
        }
    }

    /// Nodes 1..=4, n4 Dead; shard 0 on {1, 2, 3}; n1 leads everything.
    fn views(shard_voters: &[NodeId]) -> Vec<ClusterView> {
        let members = vec![
            member(1, MemberState::Active),
            member(2, MemberState::Active),
            member(3, MemberState::Active),
            member(4, MemberState::Dead),
        ];
        let placement = PlacementConfig {
            shards: 1,
            replication_factor: 3,
            ..PlacementConfig::default()
        };
        (1..=3)
            .map(|id| {
                let role = if id == 1 {
                    Role::Leader
                } else {
                    Role::Follower
                };
                ClusterView {
                    node_id: id,
                    initialized: true,
                    epoch: 7,
                    placement: placement.clone(),
                    members: members.clone(),
                    shard_map: ShardMap {
                        replicas: vec![vec![1, 2, 3]],
                    },
                    meta_leader: Some(1),
                    groups: vec![
                        group(0, role, 2, &[1, 2, 3]),
                        group(1, role, 3, shard_voters),
                    ],
                }
            })
            .collect()
    }

    fn fleet() -> Fleet {
        Fleet {
            running: BTreeSet::from([1, 2, 3]),
            killed: BTreeSet::from([4]),
            finished: BTreeSet::new(),
        }
    }

    #[test]
    fn converged_cluster_has_no_problems() {
        assert_eq!(
            replication_problems(&views(&[1, 2, 3]), &fleet()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_killed_voter_and_a_missing_replica_are_problems() {
        let problems = replication_problems(&views(&[1, 2, 4]), &fleet());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("!= target {1, 2, 3}"), "{problems:?}");
        assert!(problems[1].contains("[4] are still voters"), "{problems:?}");
    }

    #[test]
    fn voters_among_finds_every_group_a_node_still_votes_in() {
        let v = views(&[1, 2, 4]);
        assert_eq!(voters_among(&v, &BTreeSet::from([4])), vec![(4, 1)]);
        assert_eq!(voters_among(&v, &BTreeSet::from([3])), vec![(3, 0)]);
        assert!(voters_among(&v, &BTreeSet::from([5])).is_empty());
    }

    #[test]
    fn member_states_must_match_what_happened() {
        let mut v = views(&[1, 2, 3]);
        // n4 comes back (running) but the map still says Dead; n3 is still leaving.
        for view in &mut v {
            view.members[2].state = MemberState::Leaving;
        }
        let mut f = fleet();
        f.killed.clear();
        f.running.insert(4);
        let problems = replication_problems(&v, &f);
        assert!(
            problems.iter().any(|p| p.contains("n3 is Leaving")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("n4 is Dead")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_leaderless_group_and_no_map_are_problems() {
        let mut v = views(&[1, 2, 3]);
        v[0].groups[1].role = Role::Follower;
        let problems = replication_problems(&v, &fleet());
        assert_eq!(problems, vec!["group 1: no node reports being its leader"]);
        for view in &mut v {
            view.initialized = false;
        }
        assert_eq!(replication_problems(&v, &fleet()).len(), 1);
    }

    #[test]
    fn the_highest_term_leader_decides() {
        let mut v = views(&[1, 2, 3]);
        // n2 leads shard 0 in a later term with an unfinished replica set.
        v[1].groups[1] = group(1, Role::Leader, 9, &[1, 2]);
        let problems = replication_problems(&v, &fleet());
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("leader n2, term 9"), "{problems:?}");
    }
}
