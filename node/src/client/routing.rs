//! What a client knows of the cluster's layout, and where it sends a shard's requests.
//!
//! Built from one node's `ClusterView` (only an initialized one: a joining node's view has no
//! map). The map may be stale: a node that no longer holds a shard answers `WrongNode`, and the
//! client then tries the replicas it names, then the shard's targets, then every member, then the
//! addresses it was started with. Any replica of the shard redirects to the shard's leader, so
//! walking that list always reaches the leader while any listed node is current.
//!
//! Invariants: `shards >= 1`; candidate lists have no duplicates and keep the order above; no
//! `Removed` member is ever a candidate (it has stopped). Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::meta::{ClusterView, MemberState};
use crate::placement::{shard_for_key, ShardId};
use crate::raft::NodeId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RouteMap {
    pub epoch: u64,
    pub shards: u32,
    /// Client addresses of every member that is not `Removed`.
    members: BTreeMap<NodeId, SocketAddr>,
    /// Client addresses of each shard's target replicas (index = shard id).
    targets: Vec<Vec<SocketAddr>>,
    pub meta_leader: Option<SocketAddr>,
}

impl RouteMap {
    /// None when the view has no usable map (not initialized, or no shards).
    pub fn from_view(view: &ClusterView) -> Option<RouteMap> {
        if !view.initialized || view.placement.shards == 0 {
            return None;
        }
        let members: BTreeMap<NodeId, SocketAddr> = view
            .members
            .iter()
            .filter(|m| m.state != MemberState::Removed)
            .map(|m| (m.id, m.client_addr))
            .collect();
        let targets = (0..view.placement.shards as usize)
            .map(|shard| {
                view.shard_map
                    .replicas
                    .get(shard)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| members.get(id).copied())
                    .collect()
            })
            .collect();
        let meta_leader = view.meta_leader.and_then(|id| members.get(&id).copied());
        Some(RouteMap {
            epoch: view.epoch,
            shards: view.placement.shards,
            members,
            targets,
            meta_leader,
        })
    }

    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.shards)
    }

    pub fn member_addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.members.get(&id).copied()
    }

    pub fn member_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.members.values().copied()
    }

    /// Where to look for `shard`'s leader, best first: `hints` (from a `WrongNode`), the target
    /// replicas, every member, then `endpoints`; without duplicates.
    pub fn candidates(
        &self,
        shard: ShardId,
        hints: &[SocketAddr],
        endpoints: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let targets = self.targets.get(shard as usize).map(Vec::as_slice);
        dedup(
            hints
                .iter()
                .chain(targets.unwrap_or(&[]))
                .chain(self.members.values())
                .chain(endpoints)
                .copied(),
        )
    }
}

/// The addresses in their first-seen order, each once.
pub(crate) fn dedup(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = BTreeSet::new();
    addrs.into_iter().filter(|a| seen.insert(*a)).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kv::Operation;
    use crate::meta::Member;
    use crate::placement::{PlacementConfig, ShardMap};

    pub fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    pub fn member(id: NodeId, state: MemberState) -> Member {
        Member {
            id,
            peer_addr: addr(7500 + id as u16),
            client_addr: addr(7400 + id as u16),
            zone: None,
            state,
        }
    }

    /// An initialized view from node `node_id` with `replicas[s]` as shard `s`'s targets.
    pub fn view(
        node_id: NodeId,
        epoch: u64,
        members: Vec<Member>,
        replicas: Vec<Vec<NodeId>>,
    ) -> ClusterView {
        ClusterView {
            node_id,
            initialized: true,
            epoch,
            placement: PlacementConfig {
                shards: replicas.len() as u32,
                ..PlacementConfig::default()
            },
            members,
            shard_map: ShardMap { replicas },
            meta_leader: Some(1),
            groups: Vec::new(),
        }
    }

    #[test]
    fn uninitialized_views_give_no_map() {
        let mut v = view(1, 3, vec![member(1, MemberState::Active)], vec![vec![1]]);
        assert!(RouteMap::from_view(&v).is_some());
        v.initialized = false;
        assert_eq!(RouteMap::from_view(&v), None);
    }

    #[test]
    fn candidates_are_hints_targets_members_endpoints_without_duplicates_or_removed() {
        let members = vec![
            member(1, MemberState::Active),
            member(2, MemberState::Leaving),
            member(3, MemberState::Removed),
            member(4, MemberState::Dead),
            member(5, MemberState::Active),
        ];
        // Shard 1 still targets the removed node 3: it must not be tried.
        let map =
            RouteMap::from_view(&view(1, 7, members, vec![vec![1, 2], vec![5, 3, 4]])).unwrap();
        assert_eq!(map.shards, 2);
        assert_eq!(map.meta_leader, Some(addr(7401)));
        assert_eq!(map.member_addr(3), None);
        let endpoints = [addr(7379), addr(7401)];
        assert_eq!(
            map.candidates(1, &[addr(7402)], &endpoints),
            vec![addr(7402), addr(7405), addr(7404), addr(7401), addr(7379)]
        );
        assert_eq!(
            map.candidates(0, &[], &endpoints),
            vec![addr(7401), addr(7402), addr(7404), addr(7405), addr(7379)]
        );
        // A shard beyond the map (cannot happen with a consistent view) still has candidates.
        assert_eq!(map.candidates(9, &[], &[]).len(), 4);
    }

    #[test]
    fn keys_route_by_the_placement_hash() {
        let map = RouteMap::from_view(&view(
            1,
            1,
            vec![member(1, MemberState::Active)],
            vec![vec![1]; 8],
        ))
        .unwrap();
        for key in [&b"a"[..], b"bench-00000001", b""] {
            assert_eq!(map.shard_of(key), shard_for_key(key, 8));
        }
        assert_eq!(
            Operation::Delete { key: b"k".to_vec() }.key(),
            Some(&b"k"[..])
        );
        assert_eq!(Operation::OpenSession.key(), None);
    }
}
