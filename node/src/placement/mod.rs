//! Placement: which shard a key belongs to, and which nodes hold each shard's replicas.
//!
//! Keys map to a fixed number of shards by a stable hash (`shard_for_key`), so membership changes
//! move whole shards, never individual keys. Shards map to replica sets by consistent hashing with
//! virtual nodes: every node owns `vnodes_per_node` points on a 64-bit ring, each shard hashes to
//! a point, and its replicas are the first distinct nodes met walking clockwise from there.
//! Adding a node therefore takes over only the shards whose walk now meets it first, about
//! `replication_factor / (N + 1)` of all replicas.
//!
//! Balance is guaranteed, not hoped for, with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", 2018): no node is given more than
//! `ceil(load_factor * shards * replication_factor / nodes)` replicas; a full node is skipped.
//!
//! Invariants (proptested below): a shard's replicas are distinct nodes; when at least
//! `replication_factor` zones are declared, a shard's replicas sit in distinct zones (this wins
//! over the load bound: a node alone in its zone takes what its zone must hold); without zones no
//! node exceeds its capacity; the result depends only on the inputs (not on their order) and is the
//! same on every platform and Rust version (the hash is our own, not `std`'s).
//! Pure: no I/O, no clocks, no randomness.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

pub type ShardId = u32;

/// A node as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Failure domain (rack, availability zone). Replicas of a shard avoid sharing one.
    pub zone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementConfig {
    pub shards: u32,
    pub replication_factor: usize,
    pub vnodes_per_node: u32,
    /// Capacity multiplier over the mean load; must be >= 1.0.
    pub load_factor: f64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            shards: 64,
            replication_factor: 3,
            vnodes_per_node: 256,
            load_factor: 1.25,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("shards must be at least 1 (got {0})")]
    NoShards(u32),
    #[error("replication_factor must be at least 1 (got {0})")]
    NoReplicas(usize),
    #[error("vnodes_per_node must be at least 1 (got {0})")]
    NoVnodes(u32),
    #[error("load_factor must be a finite number >= 1.0 (got {0})")]
    BadLoadFactor(String),
    #[error(
        "replication_factor {replication_factor} needs at least that many nodes (got {nodes})"
    )]
    TooFewNodes {
        replication_factor: usize,
        nodes: usize,
    },
    #[error("node id {0} is listed twice")]
    DuplicateNode(NodeId),
}

impl PlacementConfig {
    pub fn validate(&self) -> Result<(), PlacementError> {
        if self.shards == 0 {
            return Err(PlacementError::NoShards(self.shards));
        }
        if self.replication_factor == 0 {
            return Err(PlacementError::NoReplicas(self.replication_factor));
        }
        if self.vnodes_per_node == 0 {
            return Err(PlacementError::NoVnodes(self.vnodes_per_node));
        }
        if !(self.load_factor.is_finite() && self.load_factor >= 1.0) {
            return Err(PlacementError::BadLoadFactor(self.load_factor.to_string()));
        }
        Ok(())
    }

    /// The most replicas any one node is given among `nodes` nodes.
    pub fn capacity_per_node(&self, nodes: usize) -> usize {
        assert!(nodes > 0);
        let mean = self.shards as f64 * self.replication_factor as f64 / nodes as f64;
        // At least the mean rounded up, or placement could run out of room.
        ((mean * self.load_factor).ceil() as usize).max(mean.ceil() as usize)
    }
}

/// Replica sets, indexed by shard id. The first replica is the preferred leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub replicas: Vec<Vec<NodeId>>,
}

impl ShardMap {
    pub fn shard_count(&self) -> u32 {
        self.replicas.len() as u32
    }

    /// Replicas held by each node, in node id order.
    pub fn load(&self) -> std::collections::BTreeMap<NodeId, usize> {
        let mut load = std::collections::BTreeMap::new();
        for node in self.replicas.iter().flatten() {
            *load.entry(*node).or_insert(0) += 1;
        }
        load
    }

    /// How many (shard, node) replica assignments exist here but not in `before`: the replicas
    /// that must be created (copied by snapshot) to move from `before` to `self`.
    pub fn replicas_moved_from(&self, before: &ShardMap) -> usize {
        assert_eq!(
            self.replicas.len(),
            before.replicas.len(),
            "shard count is fixed"
        );
        self.replicas
            .iter()
            .zip(&before.replicas)
            .map(|(now, was)| now.iter().filter(|n| !was.contains(n)).count())
            .sum()
    }
}

/// Stable 64-bit hash: FNV-1a followed by the SplitMix64 finalizer for avalanche.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(hash)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard a key belongs to; depends only on the key's hash part (`hash_part`) and the
/// (fixed) shard count.
pub fn shard_for_key(key: &[u8], shards: u32) -> ShardId {
    assert!(shards > 0, "shard count must be positive");
    (stable_hash(hash_part(key)) % u64::from(shards)) as ShardId
}

/// The bytes of a key that decide its shard. A key holding a non-empty `{tag}` (the first `{`
/// and the first `}` after it) is placed by the tag alone, as Redis Cluster's hash tags are, so
/// keys sharing a tag share a shard: a prefix scan over `{tag}...` then reads one shard, at one
/// linearizable point. Any other key is placed by all of its bytes.
pub fn hash_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

fn vnode_point(node: NodeId, vnode: u32) -> u64 {
    let mut bytes = [0u8; 13];
    bytes[0] = b'n';
    bytes[1..9].copy_from_slice(&node.to_le_bytes());
    bytes[9..13].copy_from_slice(&vnode.to_le_bytes());
    stable_hash(&bytes)
}

fn shard_point(shard: ShardId) -> u64 {
    let mut bytes = [0u8; 5];
    bytes[0] = b's';
    bytes[1..5].copy_from_slice(&shard.to_le_bytes());
    stable_hash(&bytes)
}

/// Places every shard's replicas on `nodes`.
pub fn place(config: &PlacementConfig, nodes: &[NodeInfo]) -> Result<ShardMap, PlacementError> {
    config.validate()?;
    let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
    sorted.sort();
    for pair in sorted.windows(2) {
        if pair[0].id == pair[1].id {
            return Err(PlacementError::DuplicateNode(pair[0].id));
        }
    }
    if sorted.len() < config.replication_factor {
        return Err(PlacementError::TooFewNodes {
            replication_factor: config.replication_factor,
            nodes: sorted.len(),
        });
    }

    // The ring: (point, index into `sorted`), ordered by point; ties broken by node id.
    let mut ring: Vec<(u64, usize)> =
        Vec::with_capacity(sorted.len() * config.vnodes_per_node as usize);
    for (position, node) in sorted.iter().enumerate() {
        for vnode in 0..config.vnodes_per_node {
            ring.push((vnode_point(node.id, vnode), position));
        }
    }
    ring.sort_unstable_by_key(|&(point, position)| (point, sorted[position].id));

    let zones: BTreeSet<&str> = sorted.iter().filter_map(|n| n.zone.as_deref()).collect();
    let spread_zones = zones.len() >= config.replication_factor;
    let capacity = config.capacity_per_node(sorted.len());
    let mut load = vec![0usize; sorted.len()];

    let mut replicas = Vec::with_capacity(config.shards as usize);
    for shard in 0..config.shards {
        let start = ring.partition_point(|&(point, _)| point < shard_point(shard));
        let mut chosen: Vec<usize> = Vec::with_capacity(config.replication_factor);
        // Pass 0 honours zones and capacity; pass 1 keeps zones but lets capacity give way (zone
        // spread is the harder guarantee: a lone node in its zone must take its share); pass 2
        // relaxes zones too, which only happens with fewer zones than replicas.
        for pass in 0..3 {
            for step in 0..ring.len() {
                if chosen.len() == config.replication_factor {
                    break;
                }
                let position = ring[(start + step) % ring.len()].1;
                if chosen.contains(&position) {
                    continue;
                }
                let zone_clash = spread_zones
                    && pass < 2
                    && chosen.iter().any(|&c| {
                        sorted[c].zone.is_some() && sorted[c].zone == sorted[position].zone
                    });
                let full = pass == 0 && load[position] >= capacity;
                if !zone_clash && !full {
                    chosen.push(position);
                    load[position] += 1;
                }
            }
        }
        assert_eq!(
            chosen.len(),
            config.replication_factor,
            "placement must fill every shard"
        );
        replicas.push(chosen.into_iter().map(|p| sorted[p].id).collect());
    }
    Ok(ShardMap { replicas })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn nodes(ids: impl IntoIterator<Item = NodeId>) -> Vec<NodeInfo> {
        ids.into_iter()
            .map(|id| NodeInfo { id, zone: None })
            .collect()
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned values (computed independently): a change here would silently move every key to
        // another shard on upgrade.
        assert_eq!(stable_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(stable_hash(b"a"), 0x02c0_bdbf_4814_20f8);
        assert_eq!(stable_hash(b"user:42"), 0xd68c_b863_fc5e_0c34);
        assert_eq!(shard_for_key(b"user:42", 64), 52);
    }

    #[test]
    fn rejects_bad_configs() {
        let ok = PlacementConfig::default();
        assert_eq!(
            place(
                &PlacementConfig {
                    shards: 0,
                    ..ok.clone()
                },
                &nodes(1..=3)
            ),
            Err(PlacementError::NoShards(0))
        );
        assert!(matches!(
            place(
                &PlacementConfig {
                    load_factor: 0.5,
                    ..ok.clone()
                },
                &nodes(1..=3)
            ),
            Err(PlacementError::BadLoadFactor(_))
        ));
        assert_eq!(
            place(&ok, &nodes(1..=2)),
            Err(PlacementError::TooFewNodes {
                replication_factor: 3,
                nodes: 2
            })
        );
        assert_eq!(
            place(&ok, &nodes([1, 2, 2])),
            Err(PlacementError::DuplicateNode(2))
        );
    }

    #[test]
    fn three_nodes_hold_every_shard() {
        let map = place(&PlacementConfig::default(), &nodes(1..=3)).unwrap();
        for replicas in &map.replicas {
            let set: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(set.len(), 3);
        }
        assert!(map.load().values().all(|&l| l == 64));
    }

    #[test]
    fn zones_are_spread() {
        let nodes: Vec<NodeInfo> = (1..=9)
            .map(|id| NodeInfo {
                id,
                zone: Some(format!("z{}", id % 3)),
            })
            .collect();
        let map = place(&PlacementConfig::default(), &nodes).unwrap();
        for replicas in &map.replicas {
            let zones: BTreeSet<_> = replicas.iter().map(|id| id % 3).collect();
            assert_eq!(zones.len(), 3, "replicas {replicas:?} share a zone");
        }
    }

    proptest! {
        #[test]
        fn placement_invariants(
            node_count in 3usize..12,
            shards in 1u32..200,
            rf in 1usize..4,
            zones in 0u64..5,
            seed in any::<u64>(),
        ) {
            let config = PlacementConfig { shards, replication_factor: rf, ..PlacementConfig::default() };
            let ids: Vec<NodeId> = (0..node_count as u64).map(|i| mix64(seed ^ i)).collect();
            let nodes: Vec<NodeInfo> = ids
                .iter()
                .map(|&id| NodeInfo { id, zone: (zones > 0).then(|| format!("z{}", id % zones)) })
                .collect();
            let map = place(&config, &nodes).unwrap();
            prop_assert_eq!(map.shard_count(), shards);
            let capacity = config.capacity_per_node(node_count);
            for replicas in &map.replicas {
                let distinct: BTreeSet<_> = replicas.iter().collect();
                prop_assert_eq!(distinct.len(), rf);
            }
            let distinct_zones: BTreeSet<_> = nodes.iter().filter_map(|n| n.zone.clone()).collect();
            if zones == 0 {
                for (_, load) in map.load() {
                    prop_assert!(load <= capacity, "load {} over capacity {}", load, capacity);
                }
            } else if distinct_zones.len() >= rf {
                for replicas in &map.replicas {
                    let z: BTreeSet<_> = replicas.iter().map(|id| id % zones).collect();
                    prop_assert_eq!(z.len(), rf, "replicas {:?} share a zone", replicas);
                }
            }
            // Input order does not matter.
            let mut reversed = nodes.clone();
            reversed.reverse();
            prop_assert_eq!(place(&config, &reversed).unwrap(), map);
        }

        #[test]
        fn adding_a_node_moves_few_replicas(node_count in 3usize..10, seed in any::<u64>()) {
            let config = PlacementConfig::default();
            let ids: Vec<NodeId> = (0..=node_count as u64).map(|i| mix64(seed ^ i)).collect();
            let before = place(&config, &nodes(ids[..node_count].iter().copied())).unwrap();
            let after = place(&config, &nodes(ids.iter().copied())).unwrap();
            let total = (config.shards as usize) * config.replication_factor;
            let ideal = total as f64 / (node_count + 1) as f64;
            let moved = after.replicas_moved_from(&before);
            let new_node = ids[node_count];
            // The new node receives replicas, and only they, or replicas that bounded loads push on
            // by one step, move: within twice the ideal 1/(N+1) share (figures: docs/SHARDING.md).
            prop_assert!(after.load().get(&new_node).copied().unwrap_or(0) > 0, "new node got nothing");
            prop_assert!(moved as f64 <= ideal * 2.0, "moved {} ideal {}", moved, ideal);
        }
    }

    #[test]
    fn hash_tags_place_keys_together() {
        assert_eq!(hash_part(b"{user42}/name"), b"user42");
        assert_eq!(hash_part(b"a{b}c{d}"), b"b");
        assert_eq!(hash_part(b"{}x"), b"{}x");
        assert_eq!(hash_part(b"{open"), b"{open");
        assert_eq!(hash_part(b"plain"), b"plain");
        for shards in [1, 7, 64] {
            let s = shard_for_key(b"{set-3}/", shards);
            for element in 0..100 {
                let key = format!("{{set-3}}/{element}");
                assert_eq!(shard_for_key(key.as_bytes(), shards), s);
            }
        }
        // Tags spread over shards like keys do.
        let distinct: std::collections::BTreeSet<ShardId> = (0..200)
            .map(|i| shard_for_key(format!("{{t{i}}}x").as_bytes(), 16))
            .collect();
        assert!(distinct.len() > 12, "{distinct:?}");
    }
}
