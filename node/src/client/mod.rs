//! The client library: what users, the CLI, the benchmark and the simulator's workloads call.
//!
//! A `Client` is one logical client: one exactly-once session (`client_id`, increasing `seq`)
//! and at most one request in flight (methods take `&mut self`; open several clients for
//! concurrency). It finds the leader from any list of node addresses, follows redirects, and
//! retries a write with the SAME (client id, seq), so the state machine applies it at most once.
//!
//! Errors say whether the operation may have taken effect: `ClientError::Unknown` (a write was
//! possibly delivered and its outcome is unknown: record it as :info) versus every other variant
//! (definitely not applied: :fail). Reads never take effect, so a failed read is never Unknown.
pub mod protocol;

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};
use tracing::debug;

use self::protocol::{ClientFrame, ServerFrame};
pub use self::protocol::{ClientRequest, ClientResponse, NodeStatus, RefusedReason};
use crate::kv::{
    Command, Expected, InvalidOp, KeyRange, OpResult, Operation, ScanItem, Version, Versioned,
};
use crate::transport::frame::{encode_frame, read_frame};
use tokio::io::AsyncWriteExt;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Longest wait for one attempt's response.
    pub request_timeout: Duration,
    /// Longest time one operation may take over all its attempts.
    pub operation_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub max_frame_bytes: usize,
    /// Seeds the client's RNG (client id, backoff jitter); `None`: seeded from `rand::rng()`.
    /// Two clients with the same seed share a session: give every client its own seed.
    pub rng_seed: Option<u64>,
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

struct Connection {
    addr: SocketAddr,
    reader: BufReader<ReadHalf<TcpStream>>,
    writer: WriteHalf<TcpStream>,
}

/// Why one attempt did not produce a response.
enum AttemptError {
    /// Nothing was sent.
    NotSent(String),
    /// The request was (possibly) sent; no usable response came back.
    AfterSend(String),
    /// The request can never succeed (e.g. larger than a frame); nothing was sent.
    Fatal(ClientError),
}

pub struct Client {
    endpoints: Vec<SocketAddr>,
    options: ClientOptions,
    client_id: u64,
    last_seq: u64,
    next_frame_id: u64,
    next_endpoint: usize,
    leader: Option<SocketAddr>,
    connection: Option<Connection>,
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
        Ok(Client {
            endpoints,
            options,
            client_id,
            last_seq: 0,
            next_frame_id: 1,
            next_endpoint: 0,
            leader: None,
            connection: None,
            rng,
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The leader's client address as last learned (None: unknown).
    pub fn leader_hint(&self) -> Option<SocketAddr> {
        self.leader
    }

    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Versioned>, ClientError> {
        match self.execute(Operation::Get { key: key.to_vec() }).await? {
            OpResult::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
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

    /// Returns the items in key order and whether the limit cut the result short.
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

    /// The status of one node (no redirect, no retry).
    pub async fn node_status(&mut self, addr: SocketAddr) -> Result<NodeStatus, ClientError> {
        let deadline = Instant::now() + self.options.request_timeout;
        match self.attempt(addr, ClientRequest::Status, deadline).await {
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

    /// The status of the first endpoint that answers; learns the leader from it.
    pub async fn status_any(&mut self) -> Result<NodeStatus, ClientError> {
        let mut errors = Vec::new();
        for addr in self.endpoints.clone() {
            match self.node_status(addr).await {
                Ok(status) => {
                    if status.leader_addr.is_some() {
                        self.leader = status.leader_addr;
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

    /// Runs one operation to completion: finds the leader, follows redirects, retries.
    ///
    /// Writes run inside an exactly-once session that this client opens with
    /// `Operation::OpenSession` (seq 1) before its first write, and again after the cluster
    /// reports the session expired. No real operation is ever the one that creates a session,
    /// so a retry after an expiry is refused by the state machine rather than applied twice.
    pub async fn execute(&mut self, op: Operation) -> Result<OpResult, ClientError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        if op.is_read() {
            return self.execute_until(op, deadline).await;
        }
        loop {
            if self.last_seq == 0 {
                self.open_session(deadline).await?;
            }
            match self.execute_until(op.clone(), deadline).await? {
                // `execute_until` already started a new session and knows nothing was applied.
                OpResult::SessionExpired if Instant::now() < deadline => continue,
                OpResult::SessionExpired => {
                    return Err(ClientError::Failed {
                        reason: "session expired and the operation timed out".into(),
                    })
                }
                result => return Ok(result),
            }
        }
    }

    async fn open_session(&mut self, deadline: Instant) -> Result<(), ClientError> {
        debug_assert_eq!(self.last_seq, 0);
        match self.execute_until(Operation::OpenSession, deadline).await {
            Ok(OpResult::SessionOpened) => Ok(()),
            Ok(other) => {
                self.new_session();
                Err(ClientError::Failed {
                    reason: format!("unexpected answer to opening a session: {other:?}"),
                })
            }
            // The operation itself was never sent, so its failure is definite even when the
            // session's opening is in doubt; a fresh session avoids any seq confusion.
            Err(ClientError::Unknown { reason }) => {
                self.new_session();
                Err(ClientError::Failed {
                    reason: format!("could not open a session: {reason}"),
                })
            }
            Err(e) => {
                self.new_session();
                Err(e)
            }
        }
    }

    /// One operation under the current session, retried until `deadline`. Returns
    /// `Ok(OpResult::SessionExpired)` (after starting a new, unopened session) when the cluster no
    /// longer knows the session and nothing of this operation can have been applied.
    async fn execute_until(
        &mut self,
        op: Operation,
        deadline: Instant,
    ) -> Result<OpResult, ClientError> {
        let is_read = op.is_read();
        let mut command = Command {
            client_id: self.client_id,
            seq: 0,
            op,
        };
        if !is_read {
            self.last_seq += 1;
            command.seq = self.last_seq;
        }
        let mut maybe_delivered = false;
        let mut heard_from_a_node = false;
        let mut last_problem = String::from("operation timed out");
        let mut backoff = self.options.retry_backoff_min;
        while Instant::now() < deadline {
            let target = self.pick_target();
            let outcome = self
                .attempt(
                    target,
                    ClientRequest::Execute {
                        shard: 0,
                        command: command.clone(),
                    },
                    deadline,
                )
                .await;
            let wait = match outcome {
                Ok(ClientResponse::Done(result)) => match result {
                    OpResult::Invalid(invalid) => return Err(ClientError::TooLarge(invalid)),
                    OpResult::Stale { last_seq } => {
                        return Err(ClientError::Unknown {
                            reason: format!("request is stale (session at seq {last_seq})"),
                        })
                    }
                    OpResult::SessionExpired => {
                        self.new_session();
                        if maybe_delivered {
                            return Err(ClientError::Unknown {
                                reason: "session expired during retries".into(),
                            });
                        }
                        return Ok(OpResult::SessionExpired);
                    }
                    result => return Ok(result),
                },
                Ok(ClientResponse::Redirect { leader_addr, .. }) => {
                    heard_from_a_node = true;
                    last_problem = format!("{target} is not the leader and knows none");
                    let follow = leader_addr.filter(|&addr| addr != target);
                    self.leader = follow;
                    self.connection = None;
                    follow.is_none()
                }
                Ok(ClientResponse::Unknown { reason }) => {
                    heard_from_a_node = true;
                    maybe_delivered = true;
                    last_problem = format!("{target}: {reason}");
                    self.forget_target();
                    true
                }
                Ok(ClientResponse::Refused(RefusedReason::ResponseTooLarge { len_bytes })) => {
                    return Err(ClientError::Failed {
                        reason: format!("response of {len_bytes} bytes exceeds the frame limit; use a smaller scan limit"),
                    })
                }
                Ok(ClientResponse::Refused(reason)) => {
                    heard_from_a_node = true;
                    last_problem = format!("{target} refused: {reason:?}");
                    self.forget_target();
                    true
                }
                Ok(
                    ClientResponse::Status(_)
                    | ClientResponse::WrongNode { .. }
                    | ClientResponse::Cluster(_)
                    | ClientResponse::Admin(_),
                ) => {
                    last_problem = format!("{target} answered something else to an operation");
                    self.forget_target();
                    true
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::NotSent(e)) => {
                    last_problem = e;
                    self.forget_target();
                    self.next_endpoint.is_multiple_of(self.endpoints.len())
                }
                Err(AttemptError::AfterSend(e)) => {
                    maybe_delivered |= !is_read;
                    last_problem = e;
                    self.forget_target();
                    true
                }
            };
            if wait {
                let jitter = self
                    .rng
                    .random_range(0..=backoff.as_millis() as u64 / 2 + 1);
                let pause = backoff + Duration::from_millis(jitter);
                let remaining = deadline.saturating_duration_since(Instant::now());
                sleep(pause.min(remaining)).await;
                backoff = (backoff * 2).min(self.options.retry_backoff_max);
            }
        }
        Err(if maybe_delivered {
            ClientError::Unknown {
                reason: last_problem,
            }
        } else if heard_from_a_node {
            ClientError::NoQuorum {
                reason: last_problem,
            }
        } else {
            let tried: Vec<String> = self.endpoints.iter().map(ToString::to_string).collect();
            let reason = format!(
                "no node answered at {} (last: {last_problem})",
                tried.join(",")
            );
            ClientError::Unreachable { reason }
        })
    }

    fn new_session(&mut self) {
        self.client_id = self.rng.random_range(1..u64::MAX);
        self.last_seq = 0;
    }

    fn pick_target(&mut self) -> SocketAddr {
        if let Some(leader) = self.leader {
            return leader;
        }
        let target = self.endpoints[self.next_endpoint % self.endpoints.len()];
        self.next_endpoint = self.next_endpoint.wrapping_add(1);
        target
    }

    fn forget_target(&mut self) {
        self.leader = None;
        self.connection = None;
    }

    async fn attempt(
        &mut self,
        addr: SocketAddr,
        request: ClientRequest,
        deadline: Instant,
    ) -> Result<ClientResponse, AttemptError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if self.connection.as_ref().map(|c| c.addr) != Some(addr) {
            self.connection = None;
            let connect_timeout = self.options.connect_timeout.min(remaining);
            let stream = match timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    return Err(AttemptError::NotSent(format!(
                        "cannot connect to {addr}: {e}"
                    )))
                }
                Err(_) => {
                    return Err(AttemptError::NotSent(format!(
                        "connecting to {addr} timed out"
                    )))
                }
            };
            let _ = stream.set_nodelay(true);
            let (read_half, write_half) = tokio::io::split(stream);
            self.connection = Some(Connection {
                addr,
                reader: BufReader::new(read_half),
                writer: write_half,
            });
        }
        let id = self.next_frame_id;
        self.next_frame_id += 1;
        let max = self.options.max_frame_bytes;
        let request_timeout = self
            .options
            .request_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let Some(connection) = self.connection.as_mut() else {
            return Err(AttemptError::NotSent("no connection".into()));
        };
        let bytes = match encode_frame(&ClientFrame { id, request }, max) {
            Ok(bytes) => bytes,
            Err(e) => {
                return Err(AttemptError::Fatal(ClientError::InvalidArgument(format!(
                    "request not sent: {e}"
                ))))
            }
        };
        let exchange = async {
            connection.writer.write_all(&bytes).await?;
            connection.writer.flush().await?;
            read_frame::<_, ServerFrame>(&mut connection.reader, max).await
        };
        let result = timeout(request_timeout, exchange).await;
        let response = match result {
            Ok(Ok(Some(frame))) if frame.id == id => Ok(frame.response),
            Ok(Ok(Some(frame))) => Err(format!(
                "{addr} answered frame {} to request {id}",
                frame.id
            )),
            Ok(Ok(None)) => Err(format!("{addr} closed the connection")),
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!(
                "{addr} did not answer within {} ms",
                request_timeout.as_millis()
            )),
        };
        response.map_err(|e| {
            debug!(error = %e, "client attempt failed");
            self.connection = None;
            AttemptError::AfterSend(e)
        })
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
