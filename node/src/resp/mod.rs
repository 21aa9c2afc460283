//! The Redis port: every node speaks RESP2/RESP3 so that redis-cli, redis-benchmark and any
//! language's Redis client work against the replicated store.
//!
//! Why inside the node: Redis clients do not follow quorumkv's redirects, so the node that
//! receives a command routes it itself, through the same client library users call
//! (`node::client`: shard map, leader cache, exactly-once sessions, retries). Each connection
//! borrows one `Client` from a pool (its sessions survive the connection), so a retried write
//! keeps its (client id, seq) and is applied at most once.
//!
//! Layout (as tokio's mini-redis): `frame` (wire format, limits), `connection` (buffers,
//! pipelining), `cmd/` (one file per command group, the command table), this file (accept loop,
//! connection limit, shared state). Invariants: a malformed or oversized request is answered
//! with Redis's error and closes only that connection; at most `max_redis_connections` are
//! served (more are refused); replies are written in request order. With TLS the port speaks
//! TLS only (`redis-cli --tls --cacert CA`); a plaintext client is told so and closed.
mod cmd;
mod connection;
pub mod frame;
mod glob;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tracing::{debug, warn, Instrument};

use self::connection::{Connection, ConnectionError};
use self::frame::{FrameLimits, Reply};
use crate::auth::gate::AuthGate;
use crate::auth::Credentials;
use crate::client::{Client, ClientOptions};
use crate::config::Limits;
use crate::raft::NodeId;
use crate::transport::stream::{Accepted, Acceptor, Connector, Stream};

/// Longest one Redis command may take over all its attempts (then it answers an error).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection of one node's Redis port shares.
pub struct RespContext {
    pub node_id: NodeId,
    /// This node's client port (asked first), then the other configured members'.
    pub endpoints: Vec<SocketAddr>,
    pub redis_addr: SocketAddr,
    pub limits: Limits,
    pub stats: Stats,
    /// This port's side: plaintext or TLS.
    pub acceptor: Acceptor,
    /// How the routing clients reach the client ports (TLS with the node's certificate when
    /// the node has one).
    pub connector: Connector,
    /// A TLS handshake must finish within this.
    pub handshake_timeout_ms: u64,
    /// Some: auth is enabled; commands other than AUTH, HELLO and QUIT need `AUTH` first.
    pub auth: Option<Arc<AuthGate>>,
    clients: Mutex<Vec<Client>>,
    cursors: Mutex<ScanCursors>,
}

#[derive(Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub connections_received: AtomicU64,
    pub commands_processed: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl RespContext {
    pub fn new(
        node_id: NodeId,
        endpoints: Vec<SocketAddr>,
        redis_addr: SocketAddr,
        limits: Limits,
    ) -> RespContext {
        RespContext {
            node_id,
            endpoints,
            redis_addr,
            limits,
            stats: Stats::default(),
            acceptor: Acceptor::plaintext(),
            connector: Connector::plaintext(),
            handshake_timeout_ms: crate::config::TransportConfig::default().handshake_timeout_ms,
            auth: None,
            clients: Mutex::new(Vec::new()),
            cursors: Mutex::new(ScanCursors::default()),
        }
    }

    /// A client from the pool, or a new one.
    fn checkout(&self) -> Client {
        let pooled = self.clients.lock().ok().and_then(|mut pool| pool.pop());
        pooled.unwrap_or_else(|| self.new_client(None))
    }

    /// A routing client of its own for a connection that authenticated: it presents the
    /// user's credentials to every node it reaches, which check its role again. Not pooled
    /// (its connections are authenticated as that user).
    fn new_client(&self, credentials: Option<Credentials>) -> Client {
        let options = ClientOptions {
            operation_timeout: OPERATION_TIMEOUT,
            max_frame_bytes: self.limits.max_client_frame_bytes,
            connector: self.connector.clone(),
            credentials,
            ..ClientOptions::default()
        };
        Client::new(self.endpoints.clone(), options)
            .expect("the endpoints hold at least this node's client address")
    }

    fn checkin(&self, client: Client) {
        if let Ok(mut pool) = self.clients.lock() {
            if pool.len() < self.limits.max_redis_connections {
                pool.push(client);
            }
        }
    }
}

/// SCAN cursors: a cursor names the key the next SCAN call starts from. Cursor numbers are
/// never reused, so a forgotten cursor is detected, not misread.
#[derive(Default)]
struct ScanCursors {
    next_id: u64,
    start_keys: BTreeMap<u64, Vec<u8>>,
}

impl ScanCursors {
    fn remember(&mut self, start_key: Vec<u8>, max_cursors: usize) -> u64 {
        self.next_id += 1;
        self.start_keys.insert(self.next_id, start_key);
        while self.start_keys.len() > max_cursors {
            self.start_keys.pop_first();
        }
        self.next_id
    }

    fn start_key(&self, cursor: u64) -> Option<Vec<u8>> {
        self.start_keys.get(&cursor).cloned()
    }
}

/// Binds nothing itself: serves `listener` until the task is aborted.
pub async fn accept_redis_clients(listener: TcpListener, context: Arc<RespContext>) {
    let permits = Arc::new(Semaphore::new(context.limits.max_redis_connections));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "redis accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%addr, max_redis_connections = context.limits.max_redis_connections,
                "too many redis connections: refused");
            let context = context.clone();
            tokio::spawn(
                async move {
                    let accepted = context
                        .acceptor
                        .accept(stream, context.handshake_timeout_ms)
                        .await;
                    if let Ok(Accepted::Ready { stream, .. } | Accepted::Plaintext(stream)) =
                        accepted
                    {
                        refuse(
                            stream,
                            "ERR max number of clients reached (max_redis_connections)",
                        )
                        .await;
                    }
                }
                .in_current_span(),
            );
            continue;
        };
        let context = context.clone();
        tokio::spawn(
            async move {
                let stream = match context
                    .acceptor
                    .accept(stream, context.handshake_timeout_ms)
                    .await
                {
                    Ok(Accepted::Ready { stream, .. }) => stream,
                    Ok(Accepted::Plaintext(stream)) => {
                        warn!(%addr, "plaintext client on the TLS redis port: refused");
                        refuse(
                            stream,
                            "ERR this port serves TLS only (redis-cli --tls --cacert CA_FILE)",
                        )
                        .await;
                        drop(permit);
                        return;
                    }
                    Err(e) => {
                        warn!(%addr, error = %e, "redis connection refused");
                        drop(permit);
                        return;
                    }
                };
                context.stats.connected.fetch_add(1, Ordering::Relaxed);
                context
                    .stats
                    .connections_received
                    .fetch_add(1, Ordering::Relaxed);
                match serve(stream, addr, &context).await {
                    Ok(()) => debug!(%addr, "redis connection closed"),
                    Err(e) => warn!(%addr, error = %e, "redis connection closed with error"),
                }
                context.stats.connected.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// Tells a client why it is dropped (as Redis does for the connection limit).
async fn refuse(stream: Stream, error: &str) {
    let limits = FrameLimits {
        max_request_bytes: 0,
        max_args: 0,
    };
    let mut connection = Connection::new(stream, limits);
    connection.queue(Reply::error(error), false);
    let _ = tokio::time::timeout(Duration::from_secs(1), connection.flush()).await;
}

async fn serve(
    stream: Stream,
    peer: SocketAddr,
    context: &RespContext,
) -> Result<(), ConnectionError> {
    let limits = FrameLimits {
        max_request_bytes: context.limits.max_redis_request_bytes,
        max_args: context.limits.max_redis_args,
    };
    let mut connection = Connection::new(stream, limits);
    let mut state = cmd::ConnState::new(context.checkout(), peer);
    let result = loop {
        let args = match connection.next_request().await {
            Ok(Some(args)) => args,
            Ok(None) => break Ok(()),
            Err(ConnectionError::Protocol(e)) => {
                context
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                connection.queue(Reply::error(e.0.clone()), state.resp3);
                let _ = connection.flush().await;
                break Err(ConnectionError::Protocol(e));
            }
            Err(e) => break Err(e),
        };
        context
            .stats
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
        let reply = cmd::run(context, &mut state, args).await;
        connection.queue(reply, state.resp3);
        if state.quit {
            break connection.flush().await;
        }
    };
    if let Some(client) = state.into_pooled_client() {
        context.checkin(client);
    }
    result
}
