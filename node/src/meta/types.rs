//! The cluster metadata vocabulary: members, their lifecycle, the commands of the metadata Raft
//! group and what a node reports about the groups it hosts.
//!
//! Group ids: group 0 (`META_GROUP`) holds the metadata; shard `s` is served by group `s + 1`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::auth::{Role as UserRole, SecretHash, SecretKind, User};
use crate::placement::{PlacementConfig, ShardId, ShardMap};
use crate::raft::{LogIndex, NodeId, Role, Term};

/// One Raft group hosted by a node: the metadata group or one shard.
pub type GroupId = u32;

/// The metadata group's id; shard `s` is group `s + 1`.
pub const META_GROUP: GroupId = 0;

pub fn group_of_shard(shard: ShardId) -> GroupId {
    shard + 1
}

/// None for the metadata group.
pub fn shard_of_group(group: GroupId) -> Option<ShardId> {
    group.checked_sub(1)
}

/// Where a member is in its life. Only `Active` members are given shard replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberState {
    /// Serving and eligible for replicas.
    Active,
    /// Asked to leave: its replicas are being moved away; it keeps serving until they are.
    Leaving,
    /// Silent for longer than `dead_node_timeout_ms`: its replicas are re-created elsewhere.
    /// Becomes `Active` again if it is heard from.
    Dead,
    /// Gone for good (left, or removed by an operator). Its id is never reused.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    /// Failure domain; replicas of one shard avoid sharing a zone.
    pub zone: Option<String>,
    pub state: MemberState,
}

/// A command of the metadata group's state machine. All are idempotent: applying one twice
/// leaves the state as applying it once (a retried admin request is harmless).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// First entry of a new cluster (proposed by its first metadata leader from its config);
    /// ignored once the state is initialized.
    Bootstrap {
        placement: PlacementConfig,
        members: Vec<Member>,
    },
    /// A new node asks to join (state must be `Active` in the request).
    Join(Member),
    /// Move every replica off the node, then remove it.
    Leave(NodeId),
    MarkDead(NodeId),
    MarkAlive(NodeId),
    /// Final step of a leave (or an operator's removal of a dead node).
    Remove(NodeId),
    // Users (issue 16). New variants go at the end so that older logs and snapshots decode.
    /// The first admin, proposed by the metadata leader from its `auth` config: applied only
    /// while no user exists (so racing proposals from several nodes create one admin).
    BootstrapAdmin(User),
    /// Creates a user; rejected if the name exists with another secret or role.
    AddUser(User),
    /// Rejected if it would leave no admin; absent users are already removed.
    RemoveUser(String),
    /// Rejected for an unknown user or if it would leave no admin.
    SetUserRole {
        name: String,
        role: UserRole,
    },
    /// Replaces a user's secret (the hash, made by the node that received the request).
    SetUserSecret {
        name: String,
        kind: SecretKind,
        secret_hash: SecretHash,
    },
}

/// The answer to a `MetaCommand`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResult {
    /// Applied (or already in effect); the map epoch after it.
    Applied { epoch: u64 },
    /// Not applied, with the reason (e.g. the cluster would drop below the replication factor).
    Rejected { reason: String },
}

/// What one node knows of the cluster: the metadata as it has applied it and its own groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub node_id: NodeId,
    /// False until the node applied the cluster's `Bootstrap` (a joining node, at first).
    pub initialized: bool,
    /// Incremented by every applied command that changes members or the shard map.
    pub epoch: u64,
    pub placement: PlacementConfig,
    pub members: Vec<Member>,
    /// Target replicas of every shard (index = shard id), as placement computes them.
    pub shard_map: ShardMap,
    /// The metadata group's leader as this node last heard.
    pub meta_leader: Option<NodeId>,
    /// Every group hosted by this node.
    pub groups: Vec<GroupStatus>,
}

/// One hosted group's Raft state, as `cluster status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    /// Index of the group's latest snapshot on this node (0: none).
    pub snapshot_index: LogIndex,
    /// Leader only: each other member's match index (replica health).
    pub match_index: BTreeMap<NodeId, LogIndex>,
    /// Keys held (data groups; 0 for the metadata group).
    pub keys: u64,
}
