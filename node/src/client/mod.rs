//! The client library: what users, the CLI, the benchmark and the simulator's workloads call.
//!
//! A `Client` is one logical client with at most one request in flight (methods take
//! `&mut self`; open several clients for concurrency). The cluster is sharded: on first use the
//! client fetches a `ClusterView` from any node and caches the shard count, the members' client
//! addresses and each shard's target replicas; every keyed operation goes to its key's shard
//! (`placement::shard_for_key`). It remembers each shard's leader from redirects, follows
//! `WrongNode` to the replicas named, and refreshes its map when a node reports a newer epoch or
//! calls the shard wrong (`BadShard`, once per request).
//!
//! Exactly-once: every shard group keeps its own session table, so the client keeps one
//! session (client id, increasing seq) per shard, opened with `Operation::OpenSession` at seq 1
//! before the shard's first write and again after that shard reports the session expired. A
//! write is retried with the SAME (client id, seq) in the same shard, so it is applied at most
//! once. Errors say whether the operation may have taken effect: `ClientError::Unknown` (a write
//! was possibly delivered: record it as :info) versus every other variant (definitely not
//! applied: :fail). Reads never take effect, so a failed read is never Unknown.
//!
//! Cross-shard reads (`scan`, `get_many`) read the shards one after another: each shard's part
//! is linearizable, the whole is not one atomic snapshot.
pub mod backup;
mod connection;
pub mod latency;
pub mod protocol;
mod routing;
mod scan;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::deadline::Deadline;

use self::connection::{AttemptError, Connections};
pub use self::protocol::{ClientRequest, ClientResponse, NodeStatus, RefusedReason};
use self::routing::{dedup, RouteMap};
pub use self::scan::{merge_scans, ScanPart};
pub use self::status::{
    merge_cluster_status, ClusterStatus, GroupSummary, MemberStatus, NodeReport,
};
use crate::kv::{
    Command, Expected, InvalidOp, KeyRange, OpResult, Operation, ScanItem, Version, Versioned,
};
use crate::meta::{ClusterView, MemberState, MetaCommand, MetaResult};
use crate::placement::ShardId;
use crate::raft::NodeId;

/// Map refreshes one request may trigger on `WrongNode` answers naming a newer epoch.
const MAP_REFRESHES_PER_REQUEST_MAX: u32 = 3;
/// Times one operation starts over in another shard because the shard count changed.
const REROUTES_PER_OPERATION_MAX: u32 = 3;
/// Rounds of `cluster_status` asking members first seen in a newer map.
const STATUS_ROUNDS_MAX: u32 = 3;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest wait for one attempt's response.
    pub request_timeout: Duration,
    /// Longest time one operation may take over all its attempts (a cross-shard `scan` is one
    /// operation; `get_many` gives each key its own).
    pub operation_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub max_frame_bytes: usize,
    /// Seeds the client's RNG (client ids, backoff jitter); `None`: seeded from `rand::rng()`.
    /// Two clients with the same seed share sessions: give every client its own seed.
    pub rng_seed: Option<u64>,
    /// How to reach nodes: plaintext (the default) or TLS (`Connector::tls`).
    pub connector: crate::transport::stream::Connector,
    /// Presented once on every new connection (`ClientRequest::Authenticate`), for clusters
    /// with auth enabled. `Debug` never shows the secret.
    pub credentials: Option<crate::auth::Credentials>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(3),
            operation_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            retry_backoff_min: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(500),
            max_frame_bytes: crate::config::Limits::default().max_client_frame_bytes,
            rng_seed: None,
            connector: crate::transport::stream::Connector::plaintext(),
            credentials: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A write may or may not have taken effect.
    #[error("outcome unknown: {reason}")]
    Unknown { reason: String },
    /// Definitely not applied, for a reason the server gave.
    #[error("failed: {reason}")]
    Failed { reason: String },
    /// No node could be contacted; definitely not applied.
    #[error("cluster unreachable: {reason}")]
    Unreachable { reason: String },
    /// Nodes answered but none could act as leader in time; definitely not applied.
    #[error("no quorum: {reason}")]
    NoQuorum { reason: String },
    /// The key or value exceeds the cluster's limits; definitely not applied.
    #[error("too large: {0}")]
    TooLarge(InvalidOp),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A TLS handshake failed, or a node serves TLS only; definitely not applied. The
    /// certificates or the TLS settings need fixing: retrying cannot help.
    #[error("TLS: {0}")]
    Tls(String),
    /// Auth is enabled and the credentials are missing or wrong, or the user's role does not
    /// allow the request; definitely not applied.
    #[error("denied: {0}")]
    Denied(String),
}

impl ClientError {
    /// True when the operation definitely did not take effect.
    pub fn is_definite(&self) -> bool {
        !matches!(self, ClientError::Unknown { .. })
    }
}

/// The outcome of a conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    Written {
        version: Version,
    },
    /// The condition did not hold; nothing was written.
    ConditionFailed {
        current: Option<Versioned>,
    },
}

/// One shard's exactly-once session.
#[derive(Clone, Copy, Debug)]
struct Session {
    client_id: u64,
    /// 0: not opened yet.
    last_seq: u64,
}

/// Where the client last found a shard's leader, and whom a `WrongNode` named.
#[derive(Clone, Debug, Default)]
struct ShardRoute {
    leader: Option<SocketAddr>,
    hints: Vec<SocketAddr>,
}

/// How one request to one shard ended, short of an error.
enum ShardOutcome {
    Result(OpResult),
    /// The shard no longer knows the session (a new one was started); nothing was applied.
    SessionExpired,
    /// The map's shard count changed: the key may live in another shard; nothing was applied.
    Reroute,
}

/// One request's attempts so far. Nodes tried in the current round are not tried again until
/// the round ends with a pause (backoff), so stale redirects cannot make the client spin.
struct Attempts {
    deadline: Instant,
    tried: BTreeSet<SocketAddr>,
    heard_from_a_node: bool,
    maybe_delivered: bool,
    last_problem: String,
    /// The last problem a node that answered reported: what the error leads with, so that a
    /// default endpoint nothing listens on does not hide what the cluster said.
    heard_problem: Option<String>,
    backoff: Duration,
}

impl Attempts {
    fn new(deadline: Instant, backoff: Duration) -> Attempts {
        Attempts {
            deadline,
            tried: BTreeSet::new(),
            heard_from_a_node: false,
            maybe_delivered: false,
            last_problem: String::from("operation timed out"),
            heard_problem: None,
            backoff,
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn heard(&mut self, problem: String) {
        self.heard_from_a_node = true;
        self.heard_problem = Some(problem.clone());
        self.last_problem = problem;
    }

    /// What went wrong: the last answer a node gave, then the last attempt if that differs.
    fn problem(&self) -> String {
        match &self.heard_problem {
            Some(heard) if *heard != self.last_problem => {
                format!("{heard} (then: {})", self.last_problem)
            }
            Some(heard) => heard.clone(),
            None => self.last_problem.clone(),
        }
    }

    /// The error after the deadline: Unknown if a write may have been delivered.
    fn into_error(self, tried: &[SocketAddr]) -> ClientError {
        if self.maybe_delivered {
            ClientError::Unknown {
                reason: self.problem(),
            }
        } else if self.heard_from_a_node {
            ClientError::NoQuorum {
                reason: self.problem(),
            }
        } else {
            let tried: Vec<String> = tried.iter().map(ToString::to_string).collect();
            let reason = format!(
                "no node answered at {} (last: {})",
                tried.join(","),
                self.last_problem
            );
            ClientError::Unreachable { reason }
        }
    }

    /// A definite failure unless an earlier attempt may have delivered the write.
    fn give_up(self, reason: String) -> ClientError {
        if self.maybe_delivered {
            ClientError::Unknown { reason }
        } else {
            ClientError::Failed { reason }
        }
    }
}

pub struct Client {
    endpoints: Vec<SocketAddr>,
    options: ClientOptions,
    /// The id of this client's first session in every shard.
    client_id: u64,
    sessions: BTreeMap<ShardId, Session>,
    routes: BTreeMap<ShardId, ShardRoute>,
    map: Option<RouteMap>,
    meta_leader: Option<SocketAddr>,
    connections: Connections,
    rng: StdRng,
}

impl Client {
    /// A client with default options; checks that some node answers.
    pub async fn connect(endpoints: Vec<SocketAddr>) -> Result<Client, ClientError> {
        Client::connect_with(endpoints, ClientOptions::default()).await
    }

    pub async fn connect_with(
        endpoints: Vec<SocketAddr>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let mut client = Client::new(endpoints, options)?;
        client.status_any().await?;
        Ok(client)
    }

    /// A client that has not contacted anything yet (it connects on first use).
    pub fn new(endpoints: Vec<SocketAddr>, options: ClientOptions) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::InvalidArgument("no endpoints given".into()));
        }
        let mut rng = match options.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let client_id = rng.random_range(1..u64::MAX);
        let connections = Connections::new(
            options.connect_timeout,
            options.request_timeout,
            options.max_frame_bytes,
            options.connector.clone(),
            options.credentials.clone(),
        );
        Ok(Client {
            endpoints,
            options,
            client_id,
            sessions: BTreeMap::new(),
            routes: BTreeMap::new(),
            map: None,
            meta_leader: None,
            connections,
            rng,
        })
    }

    /// The client id of this client's first session in every shard (a shard whose session
    /// expired continues under a new id).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The metadata group leader's client address as last learned (None: unknown).
    pub fn leader_hint(&self) -> Option<SocketAddr> {
        self.meta_leader
    }

    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>, ClientError> {
        match self.execute(Operation::Get { key: key.to_vec() }).await? {
            OpResult::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Reads every key (grouped by shard, so each shard's leader is found once); the answers
    /// are in the order of `keys`. Each key is its own linearizable read.
    pub async fn get_many(
        &mut self,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Versioned>>, ClientError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + self.options.operation_timeout;
        let map = self.ensure_map(deadline).await?;
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        for (index, key) in keys.iter().enumerate() {
            by_shard.entry(map.shard_of(key)).or_default().push(index);
        }
        let mut found = vec![None; keys.len()];
        for index in by_shard.into_values().flatten() {
            found[index] = self.get(&keys[index]).await?;
        }
        Ok(found)
    }

    /// Returns the key's new version.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Version, ClientError> {
        match self
            .execute(Operation::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            })
            .await?
        {
            OpResult::Written { version } => Ok(version),
            other => Err(unexpected(other)),
        }
    }

    /// Returns what was there before (None: the key was absent).
    pub async fn delete(&mut self, key: &[u8]) -> Result<Option<Versioned>, ClientError> {
        match self
            .execute(Operation::Delete { key: key.to_vec() })
            .await?
        {
            OpResult::Deleted { previous } => Ok(previous),
            other => Err(unexpected(other)),
        }
    }

    pub async fn cas(
        &mut self,
        key: &[u8],
        expected: Expected,
        new_value: &[u8],
    ) -> Result<CasOutcome, ClientError> {
        let op = Operation::CompareAndSwap {
            key: key.to_vec(),
            expected,
            new_value: new_value.to_vec(),
        };
        cas_outcome(self.execute(op).await?)
    }

    pub async fn put_if_absent(
        &mut self,
        key: &[u8],
        value: &[u8],
    ) -> Result<CasOutcome, ClientError> {
        cas_outcome(
            self.execute(Operation::PutIfAbsent {
                key: key.to_vec(),
                value: value.to_vec(),
            })
            .await?,
        )
    }

    /// Returns the items in key order and whether the limit cut the result short. Asks every
    /// shard for its first `limit` items in `range` and merges them (`merge_scans`).
    pub async fn scan(
        &mut self,
        range: KeyRange,
        limit: u32,
    ) -> Result<(Vec<ScanItem>, bool), ClientError> {
        match self.execute(Operation::Scan { range, limit }).await? {
            OpResult::Scan { items, more } => Ok((items, more)),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a metadata command (join, leave, ...) on the metadata group's leader, following
    /// redirects. Commands are idempotent, so retries are harmless; `MetaResult::Rejected` is
    /// an answer, not an error.
    pub async fn admin(&mut self, command: MetaCommand) -> Result<MetaResult, ClientError> {
        self.admin_request(ClientRequest::Admin(command)).await
    }

    /// Creates, changes or removes a user (admin only), on the metadata leader; the node that
    /// receives a new secret hashes it. `MetaResult::Rejected` is an answer (e.g. the name
    /// exists), not an error.
    pub async fn manage_user(
        &mut self,
        request: crate::client::protocol::UserRequest,
    ) -> Result<MetaResult, ClientError> {
        self.admin_request(ClientRequest::User(request)).await
    }

    /// The users (names, roles, kinds: never a secret) as the first node that answers applied
    /// them.
    pub async fn list_users(&mut self) -> Result<Vec<crate::auth::UserInfo>, ClientError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        let _ = self.ensure_map(deadline).await;
        let mut attempts = Attempts::new(deadline, self.options.retry_backoff_min);
        while attempts.running() {
            let Some(target) = self.pick_admin_target(&attempts.tried) else {
                self.pause(&mut attempts).await;
                continue;
            };
            attempts.tried.insert(target);
            let request = ClientRequest::User(crate::client::protocol::UserRequest::List);
            match self.connections.exchange(target, request, deadline).await {
                Ok(ClientResponse::Users(users)) => return Ok(users),
                Ok(other) => attempts.heard(format!("{target} answered {other:?} to user list")),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::NotSent(e) | AttemptError::AfterSend(e)) => {
                    attempts.last_problem = e;
                }
            }
        }
        Err(attempts.into_error(&self.endpoints))
    }

    async fn admin_request(&mut self, request: ClientRequest) -> Result<MetaResult, ClientError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        // Best effort: the map resolves the leader ids in redirects and lists every member.
        let _ = self.ensure_map(deadline).await;
        let mut attempts = Attempts::new(deadline, self.options.retry_backoff_min);
        while attempts.running() {
            let Some(target) = self.pick_admin_target(&attempts.tried) else {
                self.pause(&mut attempts).await;
                continue;
            };
            attempts.tried.insert(target);
            let outcome = self
                .connections
                .exchange(target, request.clone(), deadline)
                .await;
            match outcome {
                Ok(ClientResponse::Admin(result)) => {
                    self.meta_leader = Some(target);
                    return Ok(result);
                }
                Ok(ClientResponse::Redirect {
                    leader_id,
                    leader_addr,
                }) => {
                    attempts.heard(format!(
                        "{target} is not the metadata leader and knows none"
                    ));
                    let leader = self.resolve(leader_id, leader_addr);
                    self.meta_leader = leader.filter(|a| !attempts.tried.contains(a));
                }
                Ok(ClientResponse::Unknown { reason }) => {
                    attempts.heard(format!("{target}: {reason}"));
                    attempts.maybe_delivered = true;
                    self.meta_leader = None;
                    self.backoff(&mut attempts).await;
                }
                Ok(ClientResponse::Refused(
                    reason @ (RefusedReason::Busy | RefusedReason::ShuttingDown),
                )) => {
                    attempts.heard(format!("{target} refused: {reason:?}"));
                    self.meta_leader = None;
                    self.backoff(&mut attempts).await;
                }
                Ok(other) => {
                    attempts.heard(format!("{target} answered {other:?} to an admin command"));
                    self.meta_leader = None;
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::NotSent(e)) => {
                    attempts.last_problem = e;
                    self.meta_leader = None;
                }
                Err(AttemptError::AfterSend(e)) => {
                    attempts.last_problem = e;
                    attempts.maybe_delivered = true;
                    self.meta_leader = None;
                    self.backoff(&mut attempts).await;
                }
            }
        }
        Err(attempts.into_error(&self.endpoints))
    }

    /// The cluster as the first node that answers knows it (an initialized node preferred).
    /// Refreshes this client's map when the view is newer.
    pub async fn cluster_info(&mut self) -> Result<ClusterView, ClientError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        let mut uninitialized = None;
        let mut problems = Vec::new();
        let mut tls_failed = false;
        for addr in self.known_addrs() {
            if Instant::now() >= deadline {
                break;
            }
            match self.node_cluster_info_until(addr, deadline).await {
                Ok(view) if view.initialized => {
                    self.learn(&view);
                    return Ok(view);
                }
                Ok(view) => {
                    uninitialized.get_or_insert(view);
                }
                Err(ClientError::Tls(reason)) => {
                    tls_failed = true;
                    problems.push(reason);
                }
                Err(e) => problems.push(problem_at(addr, &e)),
            }
        }
        uninitialized.ok_or_else(|| {
            let reason = problems.join("; ");
            if tls_failed {
                ClientError::Tls(reason)
            } else {
                ClientError::Unreachable { reason }
            }
        })
    }

    /// What one node knows of the cluster (no redirect, no retry).
    pub async fn node_cluster_info(
        &mut self,
        addr: SocketAddr,
    ) -> Result<ClusterView, ClientError> {
        let deadline = Instant::now() + self.options.request_timeout;
        self.node_cluster_info_until(addr, deadline).await
    }

    /// Asks every member that is not `Removed` for its view and merges them
    /// (`merge_cluster_status`). Members seen only in a newer view are asked too.
    pub async fn cluster_status(&mut self) -> Result<ClusterStatus, ClientError> {
        let first = self.cluster_info().await?;
        let mut asked = BTreeSet::from([first.node_id]);
        let mut reports = vec![NodeReport {
            node_id: first.node_id,
            view: Ok(first),
        }];
        for _ in 0..STATUS_ROUNDS_MAX {
            let newest = reports
                .iter()
                .filter_map(|r| r.view.as_ref().ok())
                .filter(|v| v.initialized)
                .max_by_key(|v| v.epoch);
            let Some(newest) = newest else { break };
            let to_ask: Vec<(NodeId, SocketAddr)> = newest
                .members
                .iter()
                .filter(|m| m.state != MemberState::Removed && !asked.contains(&m.id))
                .map(|m| (m.id, m.client_addr))
                .collect();
            if to_ask.is_empty() {
                break;
            }
            for (node_id, addr) in to_ask {
                asked.insert(node_id);
                let view = self.node_cluster_info(addr).await;
                if let Ok(view) = &view {
                    self.learn(view);
                }
                reports.push(NodeReport {
                    node_id,
                    view: view.map_err(|e| e.to_string()),
                });
            }
        }
        merge_cluster_status(&reports).ok_or_else(|| ClientError::NoQuorum {
            reason: "no member has learned the cluster map yet".into(),
        })
    }

    /// The status of one node (no redirect, no retry).
    pub async fn node_status(&mut self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        let deadline = Instant::now() + self.options.request_timeout;
        match self
            .connections
            .exchange(addr, ClientRequest::Status, deadline)
            .await
        {
            Ok(ClientResponse::Status(status)) => Ok(status),
            Ok(other) => Err(ClientError::Failed {
                reason: format!("unexpected response {other:?}"),
            }),
            Err(AttemptError::NotSent(e) | AttemptError::AfterSend(e)) => {
                Err(ClientError::Unreachable { reason: e })
            }
            Err(AttemptError::Fatal(e)) => Err(e),
        }
    }

    /// The status of the first endpoint that answers; learns the metadata leader from it.
    pub async fn status_any(&mut self) -> Result<NodeStatus, ClientError> {
        let mut errors = Vec::new();
        let deadline = Instant::now() + self.options.operation_timeout;
        let mut order = self.endpoints.clone();
        if let Some(up) = self.connections.connect_first(&order, deadline).await {
            order.retain(|a| *a != up);
            order.insert(0, up);
        }
        for addr in order {
            match self.node_status(addr).await {
                Ok(status) => {
                    if status.leader_addr.is_some() {
                        self.meta_leader = status.leader_addr;
                    }
                    return Ok(status);
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(ClientError::Unreachable {
            reason: errors.join("; "),
        })
    }

    /// Runs one operation to completion in its key's shard (a scan: in every shard), finding
    /// the shard's leader, following redirects and retrying.
    ///
    /// Writes run inside the shard's exactly-once session, which this client opens with
    /// `Operation::OpenSession` (seq 1) before its first write there, and again after the shard
    /// reports the session expired. No real operation is ever the one that creates a session,
    /// so a retry after an expiry is refused by the state machine rather than applied twice.
    pub async fn execute(&mut self, op: Operation) -> Result<OpResult, ClientError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        match op {
            Operation::Scan { range, limit } => {
                let (items, more) = self.scan_until(range, limit, deadline).await?;
                Ok(OpResult::Scan { items, more })
            }
            Operation::OpenSession => Err(ClientError::InvalidArgument(
                "sessions are opened by the client itself".into(),
            )),
            op => self.execute_keyed(op, deadline).await,
        }
    }

    async fn execute_keyed(
        &mut self,
        op: Operation,
        deadline: Instant,
    ) -> Result<OpResult, ClientError> {
        let Some(key) = op.key() else {
            return Err(ClientError::InvalidArgument(format!("{op:?} has no key")));
        };
        for _ in 0..=REROUTES_PER_OPERATION_MAX {
            let shard = self.ensure_map(deadline).await?.shard_of(key);
            let outcome = if op.is_read() {
                self.execute_until(shard, op.clone(), deadline).await?
            } else {
                self.write(shard, op.clone(), deadline).await?
            };
            match outcome {
                ShardOutcome::Result(result) => return Ok(result),
                ShardOutcome::Reroute => continue,
                ShardOutcome::SessionExpired => break,
            }
        }
        Err(ClientError::Failed {
            reason: "the shard map kept changing; the operation was not applied".into(),
        })
    }

    async fn scan_until(
        &mut self,
        range: KeyRange,
        limit: u32,
        deadline: Instant,
    ) -> Result<(Vec<ScanItem>, bool), ClientError> {
        'restart: for _ in 0..=REROUTES_PER_OPERATION_MAX {
            let shards = self.ensure_map(deadline).await?.shards;
            let mut parts = Vec::with_capacity(shards as usize);
            for shard in scan_shards(&range, shards) {
                let op = Operation::Scan {
                    range: range.clone(),
                    limit,
                };
                match self.execute_until(shard, op, deadline).await? {
                    ShardOutcome::Result(OpResult::Scan { items, more }) => {
                        parts.push((items, more))
                    }
                    ShardOutcome::Result(other) => return Err(unexpected(other)),
                    ShardOutcome::Reroute => continue 'restart,
                    ShardOutcome::SessionExpired => break 'restart,
                }
            }
            return Ok(merge_scans(parts, limit));
        }
        Err(ClientError::Failed {
            reason: "the shard map kept changing during the scan".into(),
        })
    }

    /// One write in `shard`'s session, opening the session first when needed.
    async fn write(
        &mut self,
        shard: ShardId,
        op: Operation,
        deadline: Instant,
    ) -> Result<ShardOutcome, ClientError> {
        loop {
            if self.session(shard).last_seq == 0 && !self.open_session(shard, deadline).await? {
                return Ok(ShardOutcome::Reroute);
            }
            match self.execute_until(shard, op.clone(), deadline).await? {
                // `execute_until` already started a new session and knows nothing was applied.
                ShardOutcome::SessionExpired if Instant::now() < deadline => continue,
                ShardOutcome::SessionExpired => {
                    return Err(ClientError::Failed {
                        reason: "session expired and the operation timed out".into(),
                    })
                }
                other => return Ok(other),
            }
        }
    }

    /// Opens `shard`'s session; false when the shard count changed (nothing of the caller's
    /// operation was sent).
    async fn open_session(
        &mut self,
        shard: ShardId,
        deadline: Instant,
    ) -> Result<bool, ClientError> {
        debug_assert_eq!(self.session(shard).last_seq, 0);
        match self
            .execute_until(shard, Operation::OpenSession, deadline)
            .await
        {
            Ok(ShardOutcome::Result(OpResult::SessionOpened)) => Ok(true),
            Ok(ShardOutcome::Reroute) => {
                self.new_session(shard);
                Ok(false)
            }
            Ok(ShardOutcome::Result(other)) => {
                self.new_session(shard);
                Err(ClientError::Failed {
                    reason: format!("unexpected answer to opening a session: {other:?}"),
                })
            }
            Ok(ShardOutcome::SessionExpired) => {
                self.new_session(shard);
                Err(ClientError::Failed {
                    reason: "the session expired while being opened".into(),
                })
            }
            // The operation itself was never sent, so its failure is definite even when the
            // session's opening is in doubt; a fresh session avoids any seq confusion.
            Err(ClientError::Unknown { reason }) => {
                self.new_session(shard);
                Err(ClientError::Failed {
                    reason: format!("could not open a session in shard {shard}: {reason}"),
                })
            }
            Err(e) => {
                self.new_session(shard);
                Err(e)
            }
        }
    }

    /// One operation on one shard under its current session, retried until `deadline`.
    /// Returns `SessionExpired` (after starting a new, unopened session) when the shard no longer
    /// knows the session and nothing of this operation can have been applied, and `Reroute` when
    /// the map's shard count changed and nothing was applied.
    async fn execute_until(
        &mut self,
        shard: ShardId,
        op: Operation,
        deadline: Instant,
    ) -> Result<ShardOutcome, ClientError> {
        let is_read = op.is_read();
        let mut command = Command {
            client_id: self.client_id,
            seq: 0,
            op,
        };
        if !is_read {
            let session = self.session(shard);
            session.last_seq += 1;
            command.client_id = session.client_id;
            command.seq = session.last_seq;
        }
        let mut attempts = Attempts::new(deadline, self.options.retry_backoff_min);
        let mut bad_shard_refreshed = false;
        let mut refreshes_left = MAP_REFRESHES_PER_REQUEST_MAX;
        while attempts.running() {
            let Some(target) = self
                .pick_reachable_target(shard, &attempts.tried, deadline)
                .await
            else {
                // Every candidate failed this round: the map may be stale (nodes left), so
                // fetch it again before the next round.
                self.pause(&mut attempts).await;
                let _ = self.refresh_map(None, 0, attempts.deadline).await;
                continue;
            };
            attempts.tried.insert(target);
            let request = ClientRequest::Execute {
                shard,
                command: command.clone(),
            };
            let outcome = self.connections.exchange(target, request, deadline).await;
            match outcome {
                Ok(ClientResponse::Done(result)) => {
                    self.route(shard).leader = Some(target);
                    match result {
                        OpResult::Invalid(invalid) => return Err(ClientError::TooLarge(invalid)),
                        OpResult::Stale { last_seq } => {
                            return Err(ClientError::Unknown {
                                reason: format!(
                                    "request is stale (session at seq {last_seq} in shard {shard})"
                                ),
                            })
                        }
                        OpResult::SessionExpired => {
                            self.new_session(shard);
                            if attempts.maybe_delivered {
                                return Err(ClientError::Unknown {
                                    reason: "session expired during retries".into(),
                                });
                            }
                            return Ok(ShardOutcome::SessionExpired);
                        }
                        result => return Ok(ShardOutcome::Result(result)),
                    }
                }
                Ok(ClientResponse::Redirect {
                    leader_id,
                    leader_addr,
                }) => {
                    attempts.heard(format!(
                        "{target} is not shard {shard}'s leader and knows none"
                    ));
                    let leader = self.resolve(leader_id, leader_addr);
                    self.route(shard).leader = leader.filter(|a| !attempts.tried.contains(a));
                }
                Ok(ClientResponse::WrongNode {
                    shard: named,
                    epoch,
                    replicas,
                }) if named == shard => {
                    attempts.heard(format!(
                        "{target} holds no replica of shard {shard} (map epoch {epoch})"
                    ));
                    let route = self.route(shard);
                    route.leader = None;
                    route.hints = replicas;
                    if epoch > self.map_epoch() && refreshes_left > 0 {
                        refreshes_left -= 1;
                        if self.refresh_changed_shards(target, epoch, deadline).await {
                            return reroute(attempts);
                        }
                    }
                }
                Ok(ClientResponse::Refused(RefusedReason::BadShard { shard: _, shards })) => {
                    let problem = format!(
                        "{target}: shard {shard} is not the key's shard (it has {shards} shards)"
                    );
                    if bad_shard_refreshed {
                        return Err(attempts.give_up(problem));
                    }
                    attempts.heard(problem);
                    bad_shard_refreshed = true;
                    if self.refresh_changed_shards(target, 0, deadline).await {
                        return reroute(attempts);
                    }
                }
                Ok(ClientResponse::Refused(RefusedReason::ResponseTooLarge { len_bytes })) => {
                    // Over a limit, like a too-large value: the caller's request must change.
                    return Err(ClientError::InvalidArgument(format!(
                        "the response of {len_bytes} bytes exceeds the client frame limit \
                         (limits.max_client_frame_bytes); use a smaller scan limit"
                    )));
                }
                Ok(ClientResponse::Refused(RefusedReason::NotReady)) => {
                    attempts.heard(format!("{target} has not learned the cluster map yet"));
                    self.forget_leader(shard, target);
                }
                Ok(ClientResponse::Refused(reason)) => {
                    attempts.heard(format!("{target} refused: {reason:?}"));
                    self.forget_leader(shard, target);
                    self.backoff(&mut attempts).await;
                }
                Ok(ClientResponse::Unknown { reason }) => {
                    attempts.heard(format!("{target}: {reason}"));
                    attempts.maybe_delivered = true;
                    self.forget_leader(shard, target);
                    self.backoff(&mut attempts).await;
                }
                Ok(other) => {
                    attempts.heard(format!("{target} answered {other:?} to an operation"));
                    self.forget_leader(shard, target);
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::NotSent(e)) => {
                    attempts.last_problem = e;
                    self.forget_leader(shard, target);
                }
                Err(AttemptError::AfterSend(e)) => {
                    attempts.maybe_delivered |= !is_read;
                    attempts.last_problem = e;
                    self.forget_leader(shard, target);
                    self.backoff(&mut attempts).await;
                }
            }
        }
        let tried = self.known_addrs();
        Err(attempts.into_error(&tried))
    }

    /// Refreshes the map (asking `first` first, wanting at least `min_epoch`); true when the
    /// shard count changed, so the operation's key may now live in another shard.
    async fn refresh_changed_shards(
        &mut self,
        first: SocketAddr,
        min_epoch: u64,
        deadline: Instant,
    ) -> bool {
        let before = self.map.as_ref().map(|m| m.shards);
        let _ = self.refresh_map(Some(first), min_epoch, deadline).await;
        self.map.as_ref().map(|m| m.shards) != before
    }

    /// The map, fetched first if this client has none.
    async fn ensure_map(&mut self, deadline: Instant) -> Result<&RouteMap, ClientError> {
        if self.map.is_none() {
            self.refresh_map(None, 0, deadline).await?;
        }
        self.map.as_ref().ok_or_else(|| ClientError::NoQuorum {
            reason: "no node knows the cluster map yet".into(),
        })
    }

    /// Asks nodes (`first`, then the endpoints, then the members) for their view until one has
    /// an initialized map of at least `min_epoch`; failing that, keeps the newest one seen.
    async fn refresh_map(
        &mut self,
        first: Option<SocketAddr>,
        min_epoch: u64,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let mut order = dedup(first.into_iter().chain(self.known_addrs()));
        // Ask a node that answers a connect first: a member whose address drops packets then
        // costs a stagger, not a connect timeout.
        if let Some(up) = self.connections.connect_first(&order, deadline).await {
            order.retain(|a| *a != up);
            order.insert(0, up);
        }
        let mut newest: Option<ClusterView> = None;
        let mut heard = false;
        let mut tls_failed = false;
        let mut problems = Vec::new();
        for addr in order {
            if Instant::now() >= deadline {
                break;
            }
            match self.node_cluster_info_until(addr, deadline).await {
                Ok(view) if view.initialized => {
                    heard = true;
                    let enough = view.epoch >= min_epoch;
                    if newest.as_ref().is_none_or(|n| view.epoch > n.epoch) {
                        newest = Some(view);
                    }
                    if enough {
                        break;
                    }
                }
                Ok(_) => {
                    heard = true;
                    problems.push(format!("{addr} has not learned the cluster map yet"));
                }
                // Every node checks the same replicated users: another would deny it too.
                Err(
                    e @ (ClientError::InvalidArgument(_)
                    | ClientError::TooLarge(_)
                    | ClientError::Denied(_)),
                ) => return Err(e),
                // Another node may still answer; if none does, the TLS reason is the error.
                Err(ClientError::Tls(reason)) => {
                    tls_failed = true;
                    problems.push(reason);
                }
                Err(e) => {
                    heard |= !matches!(e, ClientError::Unreachable { .. });
                    problems.push(problem_at(addr, &e));
                }
            }
        }
        match newest {
            Some(view) => {
                self.learn(&view);
                Ok(())
            }
            None if tls_failed => Err(ClientError::Tls(problems.join("; "))),
            None if heard => Err(ClientError::NoQuorum {
                reason: format!(
                    "no node knows the cluster map yet ({})",
                    problems.join("; ")
                ),
            }),
            None => Err(ClientError::Unreachable {
                reason: format!("cannot fetch the cluster map: {}", problems.join("; ")),
            }),
        }
    }

    async fn node_cluster_info_until(
        &mut self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<ClusterView, ClientError> {
        match self
            .connections
            .exchange(addr, ClientRequest::ClusterInfo, deadline)
            .await
        {
            Ok(ClientResponse::Cluster(view)) => Ok(view),
            Ok(other) => Err(ClientError::Failed {
                reason: format!("{addr} answered {other:?} to ClusterInfo"),
            }),
            Err(AttemptError::NotSent(e) | AttemptError::AfterSend(e)) => {
                Err(ClientError::Unreachable { reason: e })
            }
            Err(AttemptError::Fatal(e)) => Err(e),
        }
    }

    /// Adopts `view`'s map unless this client already has a newer one.
    fn learn(&mut self, view: &ClusterView) {
        let Some(map) = RouteMap::from_view(view) else {
            return;
        };
        if self.map.as_ref().is_some_and(|m| m.epoch > map.epoch) {
            return;
        }
        if self.meta_leader.is_none() {
            self.meta_leader = map.meta_leader;
        }
        for route in self.routes.values_mut() {
            route.hints.clear();
        }
        self.map = Some(map);
    }

    fn map_epoch(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.epoch)
    }

    /// The endpoints, then every known member.
    fn known_addrs(&self) -> Vec<SocketAddr> {
        let members = self.map.iter().flat_map(|m| m.member_addrs());
        dedup(self.endpoints.iter().copied().chain(members))
    }

    /// The leader's address from a redirect (its id resolved through the map if needed).
    fn resolve(
        &self,
        leader_id: Option<NodeId>,
        leader_addr: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        leader_addr.or_else(|| leader_id.and_then(|id| self.map.as_ref()?.member_addr(id)))
    }

    /// `pick_target`, but when there is no open connection to it, connects to it and the
    /// other untried candidates in a race (`Connections::connect_first`) and takes the first
    /// that answers: a candidate whose address drops packets then costs a stagger, not a
    /// connect timeout (a non-leader that answers redirects).
    async fn pick_reachable_target(
        &mut self,
        shard: ShardId,
        tried: &BTreeSet<SocketAddr>,
        deadline: Instant,
    ) -> Option<SocketAddr> {
        let first = self.pick_target(shard, tried)?;
        if self.connections.is_open(first) {
            return Some(first);
        }
        let route = self.routes.entry(shard).or_default();
        let others = match &self.map {
            Some(map) => map.candidates(shard, &route.hints, &self.endpoints),
            None => dedup(route.hints.iter().chain(&self.endpoints).copied()),
        };
        let order =
            dedup(std::iter::once(first).chain(others.into_iter().filter(|a| !tried.contains(a))));
        let winner = self.connections.connect_first(&order, deadline).await;
        Some(winner.unwrap_or(first))
    }

    /// The shard's leader if known and not yet tried, else the first untried candidate.
    fn pick_target(&mut self, shard: ShardId, tried: &BTreeSet<SocketAddr>) -> Option<SocketAddr> {
        let route = self.routes.entry(shard).or_default();
        if let Some(leader) = route.leader.filter(|l| !tried.contains(l)) {
            return Some(leader);
        }
        let candidates = match &self.map {
            Some(map) => map.candidates(shard, &route.hints, &self.endpoints),
            None => dedup(route.hints.iter().chain(&self.endpoints).copied()),
        };
        candidates.into_iter().find(|a| !tried.contains(a))
    }

    fn pick_admin_target(&self, tried: &BTreeSet<SocketAddr>) -> Option<SocketAddr> {
        let hinted = self.map.as_ref().and_then(|m| m.meta_leader);
        dedup(
            self.meta_leader
                .into_iter()
                .chain(hinted)
                .chain(self.known_addrs()),
        )
        .into_iter()
        .find(|a| !tried.contains(a))
    }

    fn route(&mut self, shard: ShardId) -> &mut ShardRoute {
        self.routes.entry(shard).or_default()
    }

    fn forget_leader(&mut self, shard: ShardId, target: SocketAddr) {
        let route = self.route(shard);
        if route.leader == Some(target) {
            route.leader = None;
        }
    }

    fn session(&mut self, shard: ShardId) -> &mut Session {
        let client_id = self.client_id;
        self.sessions.entry(shard).or_insert(Session {
            client_id,
            last_seq: 0,
        })
    }

    fn new_session(&mut self, shard: ShardId) {
        let client_id = self.rng.random_range(1..u64::MAX);
        self.sessions.insert(
            shard,
            Session {
                client_id,
                last_seq: 0,
            },
        );
    }

    /// Backs off (with jitter) within a round: the nodes already tried stay tried, so a node
    /// that keeps failing (e.g. one that left the cluster but is still in a stale map) is not
    /// retried before the others.
    async fn backoff(&mut self, attempts: &mut Attempts) {
        let backoff = attempts.backoff;
        let jitter = self
            .rng
            .random_range(0..=backoff.as_millis() as u64 / 2 + 1);
        let pause = backoff + Duration::from_millis(jitter);
        let remaining = attempts.deadline.saturating_duration_since(Instant::now());
        // One timer however often the task is woken meanwhile (madsim's `sleep` arms one per poll).
        Deadline::after(pause.min(remaining)).await;
        attempts.backoff = (backoff * 2).min(self.options.retry_backoff_max);
    }

    /// Ends a round: backs off and starts a new round in which every node may be tried again.
    async fn pause(&mut self, attempts: &mut Attempts) {
        self.backoff(attempts).await;
        attempts.tried.clear();
    }
}

/// The shard count changed under a request: start over in the key's new shard, unless a write
/// may already have been delivered to the old one.
fn reroute(attempts: Attempts) -> Result<ShardOutcome, ClientError> {
    if attempts.maybe_delivered {
        Err(ClientError::Unknown {
            reason: "the shard map changed while the outcome was in doubt".into(),
        })
    } else {
        Ok(ShardOutcome::Reroute)
    }
}

/// One node's problem for a list of them (a connection error already names the address).
fn problem_at(addr: SocketAddr, error: &ClientError) -> String {
    match error {
        ClientError::Unreachable { reason } => reason.clone(),
        other => format!("{addr}: {other}"),
    }
}

fn cas_outcome(result: OpResult) -> Result<CasOutcome, ClientError> {
    match result {
        OpResult::Written { version } => Ok(CasOutcome::Written { version }),
        OpResult::ConditionFailed { current } => Ok(CasOutcome::ConditionFailed { current }),
        other => Err(unexpected(other)),
    }
}

fn unexpected(result: OpResult) -> ClientError {
    ClientError::Failed {
        reason: format!("unexpected result {result:?}"),
    }
}

/// The shards a scan must read: one when every key of the range shares a hash tag (a prefix
/// holding a complete `{tag}`, see `placement::hash_part`), else all of them.
fn scan_shards(range: &KeyRange, shards: u32) -> std::ops::Range<ShardId> {
    if let KeyRange::Prefix(prefix) = range {
        let tag = crate::placement::hash_part(prefix);
        if tag.len() < prefix.len() {
            let shard = crate::placement::shard_for_key(prefix, shards);
            return shard..shard + 1;
        }
    }
    0..shards
}
