//! Node configuration: what a `quorumkv server` process is told, from flags or a TOML file.
//!
//! Every limit is explicit and named with its unit. `ServerConfig::validate` is the single place
//! that decides whether a configuration is usable; its errors name the offending field, so the
//! binary can print them as one line. Simulation-only knobs (transport faults, planted bugs) are
//! not part of the file format and exist only in test/simulation builds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// Default client port of `quorumkv server`; `quorumkv local` uses `LOCAL_CLIENT_PORT_BASE + i`.
pub const DEFAULT_CLIENT_PORT: u16 = 7379;
pub const DEFAULT_PEER_PORT: u16 = 7380;
pub const LOCAL_CLIENT_PORT_BASE: u16 = 7400;
pub const LOCAL_PEER_PORT_BASE: u16 = 7500;
/// `quorumkv local` serves Redis (RESP) on `LOCAL_REDIS_PORT_BASE + i`.
pub const LOCAL_REDIS_PORT_BASE: u16 = 7600;

/// One member of the cluster as every node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: NodeId,
    /// Where other nodes reach this member's peer (Raft) port.
    pub peer_addr: SocketAddr,
    /// Where clients reach this member (also returned in redirects).
    pub client_addr: SocketAddr,
    /// Failure domain (rack, availability zone); replicas of a shard avoid sharing one.
    #[serde(default)]
    pub zone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest frame accepted on the client port (must hold a key and a value).
    pub max_client_frame_bytes: usize,
    /// Largest frame accepted on the peer port (must hold the metadata group's snapshot and
    /// one shard snapshot chunk; a shard's size is not bounded by it: its snapshots stream).
    pub max_peer_frame_bytes: usize,
    /// Client requests accepted by the event loop but not yet answered, over all connections.
    pub max_pending_requests: usize,
    /// Client connections held at once; at the limit a new one evicts the connection idle the
    /// longest, and is refused with a `TooManyConnections` frame only when all are busy.
    pub max_client_connections: usize,
    /// Peer connections held at once that said `Hello` (and, with TLS, proved it) from a node
    /// id that is not a current member. A new one evicts the oldest. Each current member has
    /// its own slot on top of these, and connections still in their handshake have theirs
    /// (`max_peer_handshakes`).
    pub max_peer_connections: usize,
    /// Peer connections held at once that have not finished their handshake (TLS, then
    /// `Hello`, within `transport.handshake_timeout_ms`): unauthenticated, they never take a
    /// member's or a guest's slot. A new one evicts the oldest.
    pub max_peer_handshakes: usize,
    /// Bytes of incomplete frames held at once over all client connections (a frame's buffer
    /// grows as its bytes arrive and is charged so); a connection going over is closed.
    pub max_client_inflight_frame_bytes: usize,
    /// The same budget for the peer port (a snapshot travels as one frame).
    pub max_peer_inflight_frame_bytes: usize,
    /// Largest number of items a scan returns.
    pub max_scan_items: usize,
    /// Connections the Redis (RESP) port serves at once; more are refused.
    pub max_redis_connections: usize,
    /// Largest Redis command (all its arguments with their RESP framing), in bytes; a client
    /// that sends a longer one (or announces a longer bulk string) gets a protocol error and
    /// is disconnected.
    pub max_redis_request_bytes: usize,
    /// Most arguments one Redis command may carry.
    pub max_redis_args: usize,
    /// Most keys KEYS returns (it answers an error beyond; SCAN has no such bound).
    pub max_redis_keys_reply: usize,
    /// SCAN cursors a node remembers (the oldest is forgotten beyond: its SCAN answers an
    /// error and starts over).
    pub max_redis_scan_cursors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_client_frame_bytes: 4 * 1024 * 1024,
            max_peer_frame_bytes: 256 * 1024 * 1024,
            max_pending_requests: 16 * 1024,
            max_client_connections: 1024,
            max_peer_connections: 64,
            max_peer_handshakes: 64,
            max_client_inflight_frame_bytes: 256 * 1024 * 1024,
            max_peer_inflight_frame_bytes: 1024 * 1024 * 1024,
            max_scan_items: 10_000,
            max_redis_connections: 1024,
            max_redis_request_bytes: 4 * 1024 * 1024,
            max_redis_args: 1024 * 1024,
            max_redis_keys_reply: 100_000,
            max_redis_scan_cursors: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Raft messages queued for one peer; beyond this new messages are refused (dropped).
    pub peer_queue_messages: usize,
    /// Raft messages written to a peer in one frame.
    pub max_batch_messages: usize,
    /// A peer connection with no traffic sends a ping this often.
    pub heartbeat_interval_ms: u64,
    /// A peer connection that heard nothing (not even a pong) for this long is closed.
    pub silence_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
    /// A new connection must send its first frame within this time.
    pub handshake_timeout_ms: u64,
    /// A client connection with no request for this long is closed.
    pub client_idle_timeout_ms: u64,
    /// A frame whose header has arrived must arrive whole within this (client and peer ports).
    pub frame_read_timeout_ms: u64,
    /// A reply to a client must be written within this; a client that does not read its
    /// replies is disconnected (it would hold its connection slot, busy, for ever).
    pub client_write_timeout_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            peer_queue_messages: 4096,
            max_batch_messages: 512,
            heartbeat_interval_ms: 250,
            silence_timeout_ms: 2_000,
            connect_timeout_ms: 1_000,
            reconnect_backoff_ms_min: 20,
            reconnect_backoff_ms_max: 1_000,
            handshake_timeout_ms: 2_000,
            client_idle_timeout_ms: 60_000,
            frame_read_timeout_ms: 30_000,
            client_write_timeout_ms: 30_000,
        }
    }
}

/// TLS on every port of the node (client, peer, Redis, admin): all three files or none.
/// Certificates are PEM; the node's certificate must name it `node-<id>.quorumkv` (a DNS subject
/// alternative name) and allow both server and client authentication, since peers use mutual
/// TLS with it (docs/SECURITY.md). The files are read again when they change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This node's certificate chain (leaf first).
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The CA certificates that sign every member's (and client's) certificate.
    pub ca_file: Option<PathBuf>,
    /// Clients of the client, Redis and admin ports must present a certificate signed by
    /// `ca_file` (peers always must).
    pub client_cert_required: bool,
}

impl TlsConfig {
    pub fn is_enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.ca_file.is_some()
    }
}

/// User authentication (docs/SECURITY.md, "Authentication"). Off by default: every request
/// is served as before. Set it alike on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every request on the client and Redis ports must come from an authenticated user whose
    /// role allows it.
    pub enabled: bool,
    /// The admin this node acts as: the first admin of a new cluster (created while the
    /// cluster has no user), and the user of its own admin requests (join, final removal).
    pub admin_user: String,
    /// A file holding that admin's password (first line). `QUORUMKV_ADMIN_PASSWORD` takes
    /// precedence.
    pub admin_password_file: Option<PathBuf>,
    /// The password itself, from `QUORUMKV_ADMIN_PASSWORD` or `admin_password_file` (never
    /// from TOML, never printed: `Secret`'s Debug is redacted).
    #[serde(skip)]
    pub admin_password: Option<crate::auth::Secret>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            admin_user: "admin".to_string(),
            admin_password_file: None,
            admin_password: None,
        }
    }
}

/// The variable holding the admin's password (`AuthConfig::admin_password`).
pub const ADMIN_PASSWORD_ENV: &str = "QUORUMKV_ADMIN_PASSWORD";

impl AuthConfig {
    /// Fills `admin_password` from `env_value` (the `QUORUMKV_ADMIN_PASSWORD` variable) or else
    /// the first line of `admin_password_file`.
    pub fn load_admin_password(&mut self, env_value: Option<String>) -> Result<(), String> {
        if let Some(text) = env_value.filter(|t| !t.is_empty()) {
            self.admin_password = Some(crate::auth::Secret::new(text));
            return Ok(());
        }
        if let Some(path) = &self.admin_password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.admin_password_file {}: {e}", path.display()))?;
            let line = text.lines().next().unwrap_or_default().to_string();
            self.admin_password = Some(crate::auth::Secret::new(line));
        }
        Ok(())
    }

    /// The credentials of this node's own admin requests, if it has a password.
    pub fn admin_credentials(&self) -> Option<crate::auth::Credentials> {
        let secret = self.admin_password.clone()?;
        Some(crate::auth::Credentials {
            user: self.admin_user.clone(),
            secret,
        })
    }
}

/// How the cluster spreads and moves shards. `shards`, `replication_factor`, `vnodes_per_node`
/// and `load_factor` are fixed when the cluster bootstraps (a joining node takes the cluster's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub shards: u32,
    pub replication_factor: usize,
    pub vnodes_per_node: u32,
    /// No node gets more than `load_factor` x the mean number of replicas.
    pub load_factor: f64,
    /// A member silent for this long is marked dead and its replicas are re-created elsewhere
    /// (only when enough other members are active to hold them).
    pub dead_node_timeout_ms: u64,
    /// How often group leaders compare their replica set with the target and take a step.
    pub reconcile_interval_ms: u64,
    /// A learner within this many entries of the leader's commit index is promoted to voter.
    pub catch_up_lag_entries: u64,
    /// A member heard from whose match index has stayed below the leader's log end for this
    /// long is probed afresh (its match index may be a re-created replica's stale one). Must
    /// exceed the time to send a shard's snapshot.
    pub learner_stall_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            shards: 16,
            replication_factor: 3,
            vnodes_per_node: 256,
            load_factor: 1.25,
            dead_node_timeout_ms: 60_000,
            reconcile_interval_ms: 200,
            catch_up_lag_entries: 64,
            learner_stall_timeout_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    pub fn placement(&self) -> crate::placement::PlacementConfig {
        crate::placement::PlacementConfig {
            shards: self.shards,
            replication_factor: self.replication_factor,
            vnodes_per_node: self.vnodes_per_node,
            load_factor: self.load_factor,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub node_id: NodeId,
    /// All members at bootstrap, this node included. A node that joins a running cluster
    /// (`join` not empty) lists only itself here.
    pub members: Vec<MemberConfig>,
    /// Client addresses of running nodes to ask for admission. Empty: this node is one of the
    /// bootstrap `members`. Ignored once the node has joined (its data directory says so).
    pub join: Vec<SocketAddr>,
    pub cluster: ClusterConfig,
    /// Addresses to bind; default: this node's addresses in `members`.
    pub listen_peer_addr: Option<SocketAddr>,
    pub listen_client_addr: Option<SocketAddr>,
    /// The HTTP admin port (`/metrics`, `/health/live`, `/health/ready`); none: not served.
    pub admin_addr: Option<SocketAddr>,
    /// Where this node speaks the Redis protocol (RESP2/RESP3); None: no Redis port.
    pub redis_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The `HOST:PORT` each member's `peer_addr` was resolved from, when the operator gave a
    /// name: the transport looks it up again before each reconnect (a restarted container may
    /// come back at a new address). Filled by `config_layers::resolve_names`.
    #[serde(skip)]
    pub peer_names: BTreeMap<NodeId, String>,
    /// Seeds the node's RNG (election timeouts, fault decisions) together with `node_id`.
    pub seed: u64,
    pub tick_interval_ms: u64,
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
    /// A snapshot is taken after this many entries were applied since the last one. For a
    /// shard a snapshot is a durable checkpoint of its engine (no copy of the data): the
    /// group's Raft log is then compacted through the checkpoint's applied index.
    pub snapshot_interval_entries: u64,
    /// ... or after this many bytes of command payloads were applied since the last one. It
    /// bounds the memory of a group's uncompacted log (the Raft core keeps it in memory).
    pub snapshot_interval_log_bytes: u64,
    /// On SIGTERM the node hands the leadership of every group it leads to another voter and
    /// stops when none is left, or after this long at the latest.
    pub shutdown_handoff_timeout_ms: u64,
    /// Page cache of each shard's engine (redb); a node's state-machine memory is about this
    /// times the shards it hosts, whatever the data size.
    pub engine_cache_bytes_per_group: usize,
    /// Whether a checkpoint (a durable engine commit) also records redb's allocator state
    /// ("quick repair"; a two-phase commit: two syncs). On (the default): an engine reopened
    /// after a crash loads that state, in time independent of its size. Off: a checkpoint
    /// costs one sync and less CPU (redb serializes its region trackers, a fixed few hundred
    /// thousand instructions per commit, whatever the data size), but an engine reopened
    /// after a crash is repaired by reading and checksumming every page of its file first
    /// (restart time grows with the data). Crash safety is the same either way.
    pub engine_quick_repair: bool,
    /// Keys and values per chunk of a streamed snapshot (one peer frame each).
    pub snapshot_chunk_bytes: usize,
    /// A snapshot chunk not acknowledged after this many ticks is sent again; after
    /// `SNAPSHOT_CHUNK_RETRIES` resends the transfer is abandoned (Raft asks again later).
    pub snapshot_chunk_timeout_ticks: u32,
    /// The write-ahead log starts a new segment file once the newest holds this many bytes.
    pub wal_segment_max_bytes: u64,
    pub limits: Limits,
    pub transport: TransportConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Simulation/test only: faults injected into this node's outgoing peer messages.
    #[cfg(any(test, madsim))]
    #[serde(skip)]
    pub faults: Option<crate::transport::TransportFaults>,
    /// Simulation/test only: deliberately planted bugs.
    #[cfg(any(test, madsim))]
    #[serde(skip)]
    pub planted_bugs: crate::bugs::PlantedBugs,
    /// Simulation/test only: told of votes, leaderships and applied entries (safety checks).
    #[cfg(any(test, madsim))]
    #[serde(skip)]
    pub observer: Option<std::sync::Arc<dyn crate::server::ProtocolObserver>>,
    /// Simulation/test only (BUGGIFY): log entries per Append message instead of the Raft
    /// core's default, so that a follower catches up one or two entries at a time.
    #[cfg(any(test, madsim))]
    #[serde(skip)]
    pub max_append_entries: Option<usize>,
    /// Simulation/test only: simulated processing time per input (peer message or client
    /// request) the event loop handles, in microseconds; 0 = free. Models a node's CPU so that
    /// a simulated cluster's capacity depends on how work spreads over nodes.
    #[cfg(any(test, madsim))]
    #[serde(skip)]
    pub sim_busy_us_per_input: u64,
    /// Simulation/test only: the clock, slow-disk and BUGGIFY hooks (`sim_hooks`).
    #[cfg(any(test, madsim))]
    #[serde(skip)]
    pub sim: crate::sim_hooks::SimHooks,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            node_id: 1,
            members: vec![MemberConfig {
                id: 1,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PEER_PORT)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], DEFAULT_CLIENT_PORT)),
                zone: None,
            }],
            join: Vec::new(),
            cluster: ClusterConfig::default(),
            listen_peer_addr: None,
            listen_client_addr: None,
            admin_addr: None,
            redis_addr: None,
            data_dir: PathBuf::from("quorumkv-data"),
            peer_names: BTreeMap::new(),
            seed: 0,
            tick_interval_ms: 20,
            election_timeout_ticks_min: 15,
            election_timeout_ticks_max: 30,
            heartbeat_interval_ticks: 3,
            snapshot_interval_entries: 10_000,
            shutdown_handoff_timeout_ms: 5_000,
            snapshot_interval_log_bytes: 4 * 1024 * 1024,
            engine_cache_bytes_per_group: 16 * 1024 * 1024,
            engine_quick_repair: true,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_chunk_timeout_ticks: 50,
            wal_segment_max_bytes: 64 << 20,
            limits: Limits::default(),
            transport: TransportConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            #[cfg(any(test, madsim))]
            faults: None,
            #[cfg(any(test, madsim))]
            planted_bugs: crate::bugs::PlantedBugs::default(),
            #[cfg(any(test, madsim))]
            observer: None,
            #[cfg(any(test, madsim))]
            max_append_entries: None,
            #[cfg(any(test, madsim))]
            sim_busy_us_per_input: 0,
            #[cfg(any(test, madsim))]
            sim: crate::sim_hooks::SimHooks::default(),
        }
    }
}

/// A configuration that cannot be used: names the field and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad config: `{field}`: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn bad(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

impl ServerConfig {
    /// Parses a TOML file's text; unknown fields are errors.
    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let field = e.span().map(|s| text.get(s).unwrap_or("?").to_string());
            bad(field.as_deref().unwrap_or("file"), e.message().to_string())
        })
    }

    /// Parses a config table (a file's, with the environment and flags applied); unknown
    /// fields are errors.
    pub fn from_table(table: toml::Table) -> Result<ServerConfig, ConfigError> {
        ServerConfig::deserialize(toml::Value::Table(table))
            .map_err(|e| bad("config", e.message().to_string()))
    }

    pub fn me(&self) -> Option<&MemberConfig> {
        self.members.iter().find(|m| m.id == self.node_id)
    }

    pub fn member(&self, id: NodeId) -> Option<&MemberConfig> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn peer_listen_addr(&self) -> Option<SocketAddr> {
        self.listen_peer_addr
            .or_else(|| self.me().map(|m| m.peer_addr))
    }

    pub fn client_listen_addr(&self) -> Option<SocketAddr> {
        self.listen_client_addr
            .or_else(|| self.me().map(|m| m.client_addr))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(bad("node_id", "must be >= 1"));
        }
        if self.members.is_empty() {
            return Err(bad("members", "must list at least this node"));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for m in &self.members {
            if m.id == 0 {
                return Err(bad("members.id", "must be >= 1"));
            }
            if !ids.insert(m.id) {
                return Err(bad("members.id", format!("node id {} listed twice", m.id)));
            }
            for addr in [m.peer_addr, m.client_addr] {
                if !addrs.insert(addr) {
                    return Err(bad("members", format!("address {addr} used twice")));
                }
            }
        }
        if self.me().is_none() {
            return Err(bad(
                "node_id",
                format!("{} is not one of the members {:?}", self.node_id, ids),
            ));
        }
        if self.tick_interval_ms == 0 {
            return Err(bad("tick_interval_ms", "must be >= 1"));
        }
        self.validate_auth()?;
        if self.election_timeout_ticks_min >= self.election_timeout_ticks_max {
            return Err(bad(
                "election_timeout_ticks_min",
                "must be below election_timeout_ticks_max",
            ));
        }
        if self.heartbeat_interval_ticks == 0
            || self.heartbeat_interval_ticks >= self.election_timeout_ticks_min
        {
            return Err(bad(
                "heartbeat_interval_ticks",
                "must be >= 1 and below election_timeout_ticks_min",
            ));
        }
        if self.wal_segment_max_bytes < 4096 {
            return Err(bad("wal_segment_max_bytes", "must be >= 4096"));
        }
        if self.snapshot_interval_entries == 0 {
            return Err(bad("snapshot_interval_entries", "must be >= 1"));
        }
        if self.snapshot_interval_log_bytes == 0 {
            return Err(bad("snapshot_interval_log_bytes", "must be >= 1"));
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes.saturating_mul(2) > self.limits.max_peer_frame_bytes
        {
            return Err(bad(
                "snapshot_chunk_bytes",
                "must be >= 1 and at most half of limits.max_peer_frame_bytes",
            ));
        }
        if self.snapshot_chunk_timeout_ticks == 0 {
            return Err(bad("snapshot_chunk_timeout_ticks", "must be >= 1"));
        }
        if !self.join.is_empty() && self.members.len() != 1 {
            return Err(bad(
                "members",
                "a joining node (join = [...]) lists only itself in members",
            ));
        }
        self.validate_cluster()?;
        self.validate_limits()?;
        self.validate_transport()?;
        self.validate_tls()
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if !a.enabled {
            return Ok(());
        }
        crate::auth::validate_user_name(&a.admin_user).map_err(|e| bad("auth.admin_user", e))?;
        match &a.admin_password {
            Some(secret) => crate::auth::validate_new_secret(secret)
                .map_err(|e| bad("auth.admin_password_file", e)),
            None if self.join.is_empty() => Err(bad(
                "auth.admin_password_file",
                "auth.enabled on a bootstrap node needs the first admin's password \
                 (QUORUMKV_ADMIN_PASSWORD or --admin-password-file)",
            )),
            None => Ok(()),
        }
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        if !t.is_enabled() {
            if t.client_cert_required {
                return Err(bad(
                    "tls.client_cert_required",
                    "needs tls.cert_file, tls.key_file and tls.ca_file",
                ));
            }
            return Ok(());
        }
        if cfg!(madsim) {
            return Err(bad("tls", "TLS is not part of simulation builds"));
        }
        for (field, value) in [
            ("tls.cert_file", &t.cert_file),
            ("tls.key_file", &t.key_file),
            ("tls.ca_file", &t.ca_file),
        ] {
            if value.is_none() {
                return Err(bad(
                    field,
                    "missing: TLS needs tls.cert_file, tls.key_file and tls.ca_file together",
                ));
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        c.placement()
            .validate()
            .map_err(|e| bad("cluster", e.to_string()))?;
        for (field, value) in [
            ("cluster.dead_node_timeout_ms", c.dead_node_timeout_ms),
            ("cluster.reconcile_interval_ms", c.reconcile_interval_ms),
            (
                "cluster.learner_stall_timeout_ms",
                c.learner_stall_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(bad(field, "must be >= 1"));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (field, value) in [
            ("limits.max_key_bytes", l.max_key_bytes),
            ("limits.max_value_bytes", l.max_value_bytes),
            ("limits.max_pending_requests", l.max_pending_requests),
            ("limits.max_client_connections", l.max_client_connections),
            ("limits.max_peer_connections", l.max_peer_connections),
            ("limits.max_peer_handshakes", l.max_peer_handshakes),
            ("limits.max_scan_items", l.max_scan_items),
            ("limits.max_redis_connections", l.max_redis_connections),
            ("limits.max_redis_args", l.max_redis_args),
            ("limits.max_redis_keys_reply", l.max_redis_keys_reply),
            ("limits.max_redis_scan_cursors", l.max_redis_scan_cursors),
        ] {
            if value == 0 {
                return Err(bad(field, "must be >= 1"));
            }
        }
        let needed = l.max_key_bytes + l.max_value_bytes + 1024;
        if l.max_client_frame_bytes < needed {
            return Err(bad(
                "limits.max_client_frame_bytes",
                format!("must be >= max_key_bytes + max_value_bytes + 1024 = {needed}"),
            ));
        }
        if l.max_redis_request_bytes < needed {
            return Err(bad(
                "limits.max_redis_request_bytes",
                format!("must be >= max_key_bytes + max_value_bytes + 1024 = {needed}"),
            ));
        }
        let max = crate::transport::frame::DECODE_LIMIT_BYTES;
        for (field, value) in [
            ("limits.max_client_frame_bytes", l.max_client_frame_bytes),
            ("limits.max_peer_frame_bytes", l.max_peer_frame_bytes),
        ] {
            if value > max {
                return Err(bad(field, format!("must be <= {max}")));
            }
        }
        if l.max_peer_frame_bytes < l.max_client_frame_bytes {
            return Err(bad(
                "limits.max_peer_frame_bytes",
                "must be >= max_client_frame_bytes",
            ));
        }
        // One largest frame must fit in its port's budget, or it could never be read.
        for (field, budget, frame) in [
            (
                "limits.max_client_inflight_frame_bytes",
                l.max_client_inflight_frame_bytes,
                l.max_client_frame_bytes,
            ),
            (
                "limits.max_peer_inflight_frame_bytes",
                l.max_peer_inflight_frame_bytes,
                l.max_peer_frame_bytes,
            ),
        ] {
            let needed = frame + crate::transport::frame::READ_CHUNK_BYTES;
            if budget < needed {
                return Err(bad(
                    field,
                    format!("must be >= the port's max frame bytes + 64 KiB = {needed}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_transport(&self) -> Result<(), ConfigError> {
        let t = &self.transport;
        for (field, value) in [
            (
                "transport.peer_queue_messages",
                t.peer_queue_messages as u64,
            ),
            ("transport.max_batch_messages", t.max_batch_messages as u64),
            ("transport.heartbeat_interval_ms", t.heartbeat_interval_ms),
            ("transport.connect_timeout_ms", t.connect_timeout_ms),
            (
                "transport.reconnect_backoff_ms_min",
                t.reconnect_backoff_ms_min,
            ),
            ("transport.handshake_timeout_ms", t.handshake_timeout_ms),
            ("transport.client_idle_timeout_ms", t.client_idle_timeout_ms),
            ("transport.frame_read_timeout_ms", t.frame_read_timeout_ms),
            (
                "transport.client_write_timeout_ms",
                t.client_write_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(bad(field, "must be >= 1"));
            }
        }
        if t.silence_timeout_ms <= t.heartbeat_interval_ms {
            return Err(bad(
                "transport.silence_timeout_ms",
                "must be above transport.heartbeat_interval_ms",
            ));
        }
        if t.reconnect_backoff_ms_max < t.reconnect_backoff_ms_min {
            return Err(bad(
                "transport.reconnect_backoff_ms_max",
                "must be >= reconnect_backoff_ms_min",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_valid_single_node() {
        let config = ServerConfig::default();
        config.validate().unwrap();
        assert_eq!(
            config.client_listen_addr().unwrap().port(),
            DEFAULT_CLIENT_PORT
        );
    }

    #[test]
    fn toml_round_trip_and_unknown_field() {
        let text = r#"
            node_id = 2
            data_dir = "/tmp/x"
            [[members]]
            id = 1
            peer_addr = "127.0.0.1:1"
            client_addr = "127.0.0.1:2"
            [[members]]
            id = 2
            peer_addr = "127.0.0.1:3"
            client_addr = "127.0.0.1:4"
            [limits]
            max_value_bytes = 100
        "#;
        let config = ServerConfig::from_toml(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.limits.max_value_bytes, 100);
        assert_eq!(config.limits.max_key_bytes, 4096);
        let err = ServerConfig::from_toml("node_idd = 3").unwrap_err();
        assert!(err.to_string().contains("node_idd"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = ServerConfig {
            node_id: 5,
            ..ServerConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "node_id");
        config.node_id = 1;
        config.election_timeout_ticks_max = 10;
        assert_eq!(
            config.validate().unwrap_err().field,
            "election_timeout_ticks_min"
        );
        config = ServerConfig::default();
        config.limits.max_client_frame_bytes = 10;
        assert_eq!(
            config.validate().unwrap_err().field,
            "limits.max_client_frame_bytes"
        );
        config = ServerConfig::default();
        config.transport.silence_timeout_ms = 1;
        assert_eq!(
            config.validate().unwrap_err().field,
            "transport.silence_timeout_ms"
        );
    }
}
