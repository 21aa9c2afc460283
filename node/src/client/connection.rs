//! The client's connections: at most one per node, one request in flight on each.
//!
//! A sharded client talks to many leaders, so it keeps a connection per node it used recently
//! instead of reconnecting on every change of shard. Invariants: at most `OPEN_CONNECTIONS_MAX`
//! are open; a connection on which anything went wrong (timeout, bad frame id, closed) is dropped
//! so a late answer to an old request can never be read as the answer to a new one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::deadline::timeout;
use crate::moving_deadline::MovingDeadline;
use tracing::debug;

use std::sync::Arc;

use super::protocol::{ClientFrame, ClientRequest, ClientResponse, RefusedReason, ServerFrame};
use super::ClientError;
use crate::auth::gate::Denied;
use crate::auth::Credentials;
use crate::transport::frame::{encode_frame, read_frame};
use crate::transport::stream::{ConnectError, Connector, Stream};

/// Connections one client keeps open (one per node; the oldest-addressed goes first when full).
pub(crate) const OPEN_CONNECTIONS_MAX: usize = 16;
/// When racing connects, the next address gets its attempt this long after the previous one
/// (or at once when the previous one fails), as happy eyeballs does (RFC 8305): a node that
/// drops packets costs this much instead of a whole connect timeout.
pub(crate) const CONNECT_RACE_STAGGER_MS: u64 = 50;

struct Connection {
    reader: BufReader<ReadHalf<Stream>>,
    writer: WriteHalf<Stream>,
}

/// Why one attempt did not produce a response.
pub(crate) enum AttemptError {
    /// Nothing was sent.
    NotSent(String),
    /// The request was (possibly) sent; no usable response came back.
    AfterSend(String),
    /// The request can never succeed (e.g. larger than a frame); nothing was sent.
    Fatal(ClientError),
}

pub(crate) struct Connections {
    open: BTreeMap<SocketAddr, Connection>,
    next_frame_id: u64,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_frame_bytes: usize,
    connector: Connector,
    /// Sent in an `Authenticate` frame on every new connection.
    credentials: Option<Arc<Credentials>>,
    /// The current request's timeout; one timer serves many requests (`moving_deadline`).
    request_deadline: MovingDeadline,
}

impl Connections {
    pub fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        max_frame_bytes: usize,
        connector: Connector,
        credentials: Option<Credentials>,
    ) -> Connections {
        Connections {
            open: BTreeMap::new(),
            next_frame_id: 1,
            connect_timeout,
            request_timeout,
            max_frame_bytes,
            connector,
            credentials: credentials.map(Arc::new),
            request_deadline: MovingDeadline::new(Instant::now()),
        }
    }

    pub fn is_open(&self, addr: SocketAddr) -> bool {
        self.open.contains_key(&addr)
    }

    /// Makes sure one of `addrs` has an open connection, racing connects to them in order with
    /// staggered starts; returns the address that won (already open ones win at once).
    pub async fn connect_first(
        &mut self,
        addrs: &[SocketAddr],
        deadline: Instant,
    ) -> Option<SocketAddr> {
        if let Some(open) = addrs.iter().find(|a| self.open.contains_key(a)) {
            return Some(*open);
        }
        let stagger = Duration::from_millis(CONNECT_RACE_STAGGER_MS);
        let (addr, connection) = race(
            addrs,
            &self.dialer(),
            self.connect_timeout,
            stagger,
            deadline,
        )
        .await?;
        while self.open.len() >= OPEN_CONNECTIONS_MAX {
            self.open.pop_first();
        }
        self.open.insert(addr, connection);
        Some(addr)
    }

    /// Sends `request` to `addr` and waits for its answer, until `deadline` at the latest.
    pub async fn exchange(
        &mut self,
        addr: SocketAddr,
        request: ClientRequest,
        deadline: Instant,
    ) -> Result<ClientResponse, AttemptError> {
        let id = self.next_frame_id;
        self.next_frame_id += 1;
        let bytes =
            encode_frame(&ClientFrame { id, request }, self.max_frame_bytes).map_err(|e| {
                AttemptError::Fatal(ClientError::InvalidArgument(format!(
                    "request not sent: {e}"
                )))
            })?;
        if !self.open.contains_key(&addr) {
            let dialer = self.dialer();
            let connection = connect(&dialer, self.connect_timeout, addr, deadline).await?;
            while self.open.len() >= OPEN_CONNECTIONS_MAX {
                self.open.pop_first();
            }
            self.open.insert(addr, connection);
        }
        let now = Instant::now();
        let request_timeout = self
            .request_timeout
            .min(deadline.saturating_duration_since(now));
        let max = self.max_frame_bytes;
        let Some(connection) = self.open.get_mut(&addr) else {
            return Err(AttemptError::NotSent(format!("no connection to {addr}")));
        };
        let exchange = async {
            connection.writer.write_all(&bytes).await?;
            connection.writer.flush().await?;
            read_frame::<_, ServerFrame>(&mut connection.reader, max).await
        };
        let request_deadline = &mut self.request_deadline;
        request_deadline.set(now + request_timeout);
        let answered = tokio::select! {
            biased;
            answer = exchange => Ok(answer),
            () = request_deadline.elapsed() => Err(()),
        };
        let response = match answered {
            Ok(Ok(Some(ServerFrame {
                response: ClientResponse::Refused(RefusedReason::TlsRequired),
                ..
            }))) => {
                self.open.remove(&addr);
                return Err(AttemptError::Fatal(ClientError::Tls(format!(
                    "{addr} serves TLS only: give the cluster's CA certificate (--ca or QUORUMKV_CA)"
                ))));
            }
            Ok(Ok(Some(ServerFrame {
                response: ClientResponse::Refused(RefusedReason::Denied(denied)),
                ..
            }))) => {
                // Nothing was proposed; another node would answer the same.
                if !matches!(denied, Denied::PermissionDenied { .. }) {
                    self.open.remove(&addr);
                }
                return Err(AttemptError::Fatal(ClientError::Denied(denied.to_string())));
            }
            Ok(Ok(Some(frame))) if frame.id == id => return Ok(frame.response),
            Ok(Ok(Some(ServerFrame {
                id: 0,
                response:
                    ClientResponse::Refused(RefusedReason::TooManyConnections { max_connections }),
            }))) => {
                // Sent before our request was read: nothing of it was applied.
                self.open.remove(&addr);
                return Err(AttemptError::NotSent(format!(
                    "{addr} refused the connection: too many connections (max_client_connections = {max_connections})"
                )));
            }
            Ok(Ok(Some(frame))) => format!("{addr} answered frame {} to request {id}", frame.id),
            Ok(Ok(None)) => format!("{addr} closed the connection"),
            Ok(Err(e)) => format!("{addr}: {e}"),
            Err(_) => format!(
                "{addr} did not answer within {} ms",
                request_timeout.as_millis()
            ),
        };
        debug!(error = %response, "client attempt failed");
        self.open.remove(&addr);
        Err(AttemptError::AfterSend(response))
    }
}

impl Connections {
    fn dialer(&self) -> Dialer {
        Dialer {
            connector: self.connector.clone(),
            credentials: self.credentials.clone(),
            max_frame_bytes: self.max_frame_bytes,
        }
    }
}

/// What opening a connection needs (owned: the `Connections` it serves is not `Sync` in
/// simulation builds, so no reference to it may be held across an await).
#[derive(Clone)]
struct Dialer {
    connector: Connector,
    credentials: Option<Arc<Credentials>>,
    max_frame_bytes: usize,
}

type Attempt = std::pin::Pin<
    Box<dyn std::future::Future<Output = (SocketAddr, Result<Connection, AttemptError>)> + Send>,
>;

/// Connects to `addrs` in order, starting the next attempt `stagger` after the previous one or
/// as soon as it fails; the first connection made wins and the other attempts are dropped.
async fn race(
    addrs: &[SocketAddr],
    connector: &Dialer,
    connect_timeout: Duration,
    stagger: Duration,
    deadline: Instant,
) -> Option<(SocketAddr, Connection)> {
    use std::task::Poll;
    let mut pending: Vec<Attempt> = Vec::new();
    let mut next = 0;
    let mut next_start = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        if next < addrs.len() && now >= next_start {
            let addr = addrs[next];
            let connector = connector.clone();
            pending.push(Box::pin(async move {
                (
                    addr,
                    connect(&connector, connect_timeout, addr, deadline).await,
                )
            }));
            next += 1;
            next_start = now + stagger;
        }
        if pending.is_empty() && next >= addrs.len() {
            return None;
        }
        let wake_at = if next < addrs.len() {
            next_start
        } else {
            deadline
        };
        let finished = tokio::select! {
            biased;
            done = std::future::poll_fn(|cx| {
                for (i, attempt) in pending.iter_mut().enumerate() {
                    if let Poll::Ready(result) = attempt.as_mut().poll(cx) {
                        return Poll::Ready((i, result));
                    }
                }
                Poll::Pending
            }), if !pending.is_empty() => Some(done),
            _ = tokio::time::sleep_until(wake_at) => None,
        };
        if let Some((i, (addr, result))) = finished {
            drop(pending.swap_remove(i));
            match result {
                Ok(connection) => return Some((addr, connection)),
                Err(_) => next_start = Instant::now(),
            }
        }
    }
}

/// Opens one connection (a free function: the `Connections` it serves is not `Sync` in
/// simulation builds, so no reference to it may be held across this await).
/// A failed TLS handshake is `Fatal`: the certificates or settings are wrong, and trying again
/// (or elsewhere in the same cluster) would fail the same way.
async fn connect(
    dialer: &Dialer,
    connect_timeout_max: Duration,
    addr: SocketAddr,
    deadline: Instant,
) -> Result<Connection, AttemptError> {
    let connect_timeout =
        connect_timeout_max.min(deadline.saturating_duration_since(Instant::now()));
    let stream = match dialer.connector.connect(addr, None, connect_timeout).await {
        Ok(stream) => stream,
        Err(e @ ConnectError::Tls { .. }) => {
            return Err(AttemptError::Fatal(ClientError::Tls(e.to_string())))
        }
        Err(e) => return Err(AttemptError::NotSent(e.to_string())),
    };
    let (read_half, write_half) = tokio::io::split(stream);
    let mut connection = Connection {
        reader: BufReader::new(read_half),
        writer: write_half,
    };
    if let Some(credentials) = &dialer.credentials {
        authenticate(
            &mut connection,
            credentials,
            addr,
            dialer.max_frame_bytes,
            deadline,
        )
        .await?;
    }
    Ok(connection)
}

/// Frame id of the `Authenticate` request a new connection starts with (requests count from 1).
const AUTHENTICATE_FRAME_ID: u64 = 0;

/// Presents the credentials on a new connection. Wrong credentials are `Fatal` (every node
/// checks the same replicated users); a node with auth disabled accepts them unchecked.
async fn authenticate(
    connection: &mut Connection,
    credentials: &Credentials,
    addr: SocketAddr,
    max_frame_bytes: usize,
    deadline: Instant,
) -> Result<(), AttemptError> {
    let frame = ClientFrame {
        id: AUTHENTICATE_FRAME_ID,
        request: ClientRequest::Authenticate(credentials.clone()),
    };
    let bytes = encode_frame(&frame, max_frame_bytes)
        .map_err(|e| AttemptError::Fatal(ClientError::InvalidArgument(e.to_string())))?;
    let exchange = async {
        connection.writer.write_all(&bytes).await?;
        connection.writer.flush().await?;
        read_frame::<_, ServerFrame>(&mut connection.reader, max_frame_bytes).await
    };
    let wait = deadline.saturating_duration_since(Instant::now());
    match timeout(wait, exchange).await {
        Ok(Ok(Some(ServerFrame {
            response: ClientResponse::Authenticated { .. },
            ..
        }))) => Ok(()),
        Ok(Ok(Some(ServerFrame {
            response: ClientResponse::Refused(RefusedReason::Denied(denied)),
            ..
        }))) => Err(AttemptError::Fatal(ClientError::Denied(format!(
            "{addr}: {denied}"
        )))),
        Ok(Ok(Some(ServerFrame {
            response: ClientResponse::Refused(RefusedReason::TlsRequired),
            ..
        }))) => Err(AttemptError::Fatal(ClientError::Tls(format!(
            "{addr} serves TLS only: give the cluster's CA certificate (--ca or QUORUMKV_CA)"
        )))),
        Ok(Ok(Some(frame))) => Err(AttemptError::NotSent(format!(
            "{addr} answered {:?} to authentication",
            frame.response
        ))),
        Ok(Ok(None)) => Err(AttemptError::NotSent(format!(
            "{addr} closed the connection during authentication"
        ))),
        Ok(Err(e)) => Err(AttemptError::NotSent(format!("{addr}: {e}"))),
        Err(_) => Err(AttemptError::NotSent(format!(
            "{addr} did not answer the authentication in time"
        ))),
    }
}
