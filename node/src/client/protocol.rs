//! The client port's request/response types (carried in `transport::frame` frames).
//!
//! A client sends one `ClientFrame` at a time per connection and waits for the `ServerFrame`
//! with the same `id`. The distinction that matters to callers is encoded in the response:
//! `Redirect` and `Refused` mean the request was NOT proposed (safe to retry anywhere);
//! `Unknown` means it was proposed and this node cannot tell whether it will take effect (retry
//! with the same (client id, seq), which the state machine applies at most once).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::auth::gate::Denied;
use crate::auth::{Credentials, Role as UserRole, Secret, SecretKind, UserInfo};
use crate::config::MemberConfig;
use crate::kv::{Command, OpResult};
use crate::meta::{ClusterView, GroupStatus, MetaCommand, MetaResult};
use crate::placement::ShardId;
use crate::raft::{LogIndex, NodeId, Role, Term};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    pub id: u64,
    pub request: ClientRequest,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// One operation on one shard. A keyed operation must name its key's shard
    /// (`placement::shard_for_key`); a scan covers only the named shard's keys. Reads (`Get`,
    /// `Scan`) ignore `client_id`/`seq`; writes are exactly-once per (client id, shard, seq).
    Execute { shard: ShardId, command: Command },
    /// This node's own status (its metadata-group role and its hosted groups).
    Status,
    /// The cluster as this node knows it: members, shard targets, map epoch, hosted groups.
    ClusterInfo,
    /// A metadata command (join, leave, ...), applied by the metadata group's leader.
    Admin(MetaCommand),
    /// Reading a shard's data at one consistent point (`quorumkv backup`).
    Backup(BackupRequest),
    /// Sent once per connection, first, when the client has credentials; answered
    /// `Authenticated` or `Refused(Denied(WrongCredentials))` (then the node closes the
    /// connection). Checked on the node that receives it (`auth::gate`).
    Authenticate(Credentials),
    /// User management (admin only). Handled by the receiving node: it hashes a new secret
    /// itself (off its event loop) and proposes the resulting `MetaCommand`, so the secret
    /// never enters the replicated log.
    User(UserRequest),
}

/// `quorumkv user ...`. Secrets travel only to the node that hashes them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UserRequest {
    /// Every user with its role and secret kind (never a secret or hash), as this node
    /// applied the metadata.
    List,
    /// Creates a user (refused if the name exists).
    Add {
        name: String,
        role: UserRole,
        kind: SecretKind,
        secret: Secret,
    },
    Remove {
        name: String,
    },
    SetRole {
        name: String,
        role: UserRole,
    },
    /// Replaces a user's password or token (its open sessions end).
    SetSecret {
        name: String,
        kind: SecretKind,
        secret: Secret,
    },
}

/// An online backup of one shard: `Open` at the shard's leader (after a ReadIndex round, so
/// the view holds every write acknowledged before the open), then `Next` pages through the
/// view on the SAME node, then `Close`. A view idle for `server::backup::BACKUP_IDLE_TIMEOUT_MS`,
/// a leadership change or a restart of the node forgets it (`BackupGone`): the client starts
/// that shard again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BackupRequest {
    /// `nonce`: chosen by the client, names the view in later requests (refused if in use).
    Open {
        shard: ShardId,
        nonce: u64,
    },
    /// Items after `after` (None: from the first key), about `max_bytes` of keys and values
    /// (the server caps it at `server::backup::BACKUP_CHUNK_BYTES_MAX`; at least one item).
    Next {
        shard: ShardId,
        nonce: u64,
        after: Option<Vec<u8>>,
        max_bytes: u64,
    },
    Close {
        shard: ShardId,
        nonce: u64,
    },
}

/// One key of a backup as stored: its last write's log index (`version`) and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupItem {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BackupResponse {
    /// The view is open at `applied_index`; it holds `keys` keys of `stored_bytes` key plus
    /// value bytes.
    Opened {
        applied_index: LogIndex,
        keys: u64,
        stored_bytes: u64,
    },
    /// The next items in key order; empty: the view is exhausted.
    Items(Vec<BackupItem>),
    Closed,
    /// This node holds no open view under that nonce (expired, leadership lost, restarted).
    Gone,
    /// Too many views are open on this node (`server::backup::MAX_OPEN_BACKUPS`): retry later.
    TooMany {
        open: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    pub id: u64,
    pub response: ClientResponse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// Applied (writes) or read at a linearizable point (reads).
    Done(OpResult),
    /// This node is not the leader and did not propose the request.
    Redirect {
        leader_id: Option<NodeId>,
        leader_addr: Option<SocketAddr>,
    },
    /// Refused before being proposed: definitely not applied.
    Refused(RefusedReason),
    /// Proposed, but this node lost track of it (leadership lost, log entry replaced, shutdown).
    Unknown {
        reason: String,
    },
    Status(NodeStatus),
    /// This node holds no replica of `shard`; as of map `epoch` these nodes (client addresses)
    /// should. Not proposed: safe to retry there.
    WrongNode {
        shard: ShardId,
        epoch: u64,
        replicas: Vec<SocketAddr>,
    },
    Cluster(ClusterView),
    Admin(MetaResult),
    Backup(BackupResponse),
    /// The connection is authenticated as `user`; `role` None: this node has auth disabled
    /// (the credentials were not checked; every request is served).
    Authenticated {
        user: String,
        role: Option<UserRole>,
    },
    Users(Vec<UserInfo>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusedReason {
    /// Too many requests in flight on this node (`limits.max_pending_requests`).
    Busy,
    ShuttingDown,
    /// The shard named does not exist, or is not the key's shard (the client's shard count is
    /// wrong: it should fetch `ClusterInfo`).
    BadShard {
        shard: ShardId,
        shards: u32,
    },
    /// This node is joining and has not learned the cluster map yet.
    NotReady,
    /// The answer would exceed the client port's max frame size (e.g. a scan: lower its limit).
    ResponseTooLarge {
        len_bytes: u64,
    },
    /// Sent (with frame id 0) on a new connection the node cannot take: all its
    /// `limits.max_client_connections` connections are busy with requests. Try another node
    /// or later.
    TooManyConnections {
        max_connections: u64,
    },
    /// The port serves TLS only and this request came in plaintext (the client needs the
    /// cluster's CA certificate).
    TlsRequired,
    /// Auth is enabled and this request is not allowed: no credentials, wrong credentials, a
    /// role too low, or a user removed since it authenticated. Nothing was proposed; retrying
    /// elsewhere does not help.
    Denied(Denied),
}

/// What `quorumkv status` shows for one node. `role`, `term`, `leader_*`, the indexes, `voters`
/// and `learners` are those of the metadata group; `groups` has every hosted group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub pid: u32,
    pub role: Role,
    pub term: Term,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<SocketAddr>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    pub snapshot_index: LogIndex,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The members this node was configured with (addresses).
    pub members: Vec<MemberConfig>,
    pub keys: u64,
    /// Every Raft group this node hosts (metadata group first).
    pub groups: Vec<GroupStatus>,
    /// Where this node serves HTTP (`/metrics`, `/health/*`), if it does.
    pub admin_addr: Option<SocketAddr>,
    /// Where the node speaks the Redis protocol (None: no Redis port).
    pub redis_addr: Option<SocketAddr>,
}
