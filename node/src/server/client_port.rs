//! The client port: accepts client connections and relays their requests to the event loop.
//!
//! One task per connection reads a frame, hands the request to the event loop through a bounded
//! channel together with a one-shot reply slot, and writes the answer back before reading the
//! next frame (one request in flight per connection, answers in order). Invariants: a frame error
//! closes that connection only (logged with the client address); a full event-loop queue is
//! answered `Busy`; at most `limits.max_client_connections` connections are held
//! (`ClientSlots`): at the limit a new connection evicts the connection idle the longest (no
//! request in flight), and only when every connection is busy is it refused, with a
//! `TooManyConnections` frame rather than a silent close. Idle connections therefore cannot
//! keep anyone out, in particular not the other nodes' Redis ports and admin requests, which
//! reach this node through this port. A connection idle for `transport.client_idle_timeout_ms`
//! is closed; a frame once begun must arrive within `transport.frame_read_timeout_ms`, and the
//! bytes of incomplete frames over all connections are bounded by
//! `limits.max_client_inflight_frame_bytes`; a reply not written within
//! `transport.client_write_timeout_ms` (a client that does not read) closes the connection. On a TLS port a plaintext client's first request
//! is answered `TlsRequired`, then it is closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, Instant};

use crate::deadline::timeout;
use crate::moving_deadline::MovingDeadline;
use tracing::Instrument;
use tracing::{debug, warn};

use crate::auth::gate::{hash_off_loop, AuthGate, Session, UserTable};
use crate::auth::{
    required_role, validate_new_secret, validate_user_name, Credentials, User, UserInfo,
};
use crate::client::protocol::{
    ClientFrame, ClientRequest, ClientResponse, RefusedReason, ServerFrame, UserRequest,
};
use crate::meta::{MetaCommand, MetaResult};
use crate::metrics::{op_name, Metrics};
use crate::transport::frame::{
    encode_frame, read_frame, read_frame_limited, FrameBudget, FrameError, ReadLimits,
};
use crate::transport::stream::{Accepted, Acceptor, Stream};
use tokio::io::AsyncWriteExt;

/// One client request on its way to the event loop.
#[derive(Debug)]
pub struct ClientCall {
    pub request: ClientRequest,
    pub reply: oneshot::Sender<ClientResponse>,
}

#[derive(Clone)]
pub struct ClientPortConfig {
    /// The users as this node applied them (`user list`).
    pub users: watch::Receiver<UserTable>,
    /// Some: auth is enabled and every request is checked here (`auth::gate`).
    pub auth: Option<Arc<AuthGate>>,
    pub metrics: Arc<Metrics>,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub frame_read_timeout: Duration,
    pub budget: FrameBudget,
    /// A reply not written within this closes the connection (`transport.client_write_timeout_ms`).
    pub write_timeout: Duration,
    /// Plaintext or TLS.
    pub acceptor: Acceptor,
    /// A TLS handshake (or a plaintext client's first request on a TLS port) must be done
    /// within this.
    pub handshake_timeout_ms: u64,
    /// Simulation only: BUGGIFY may refuse a connection.
    #[cfg(madsim)]
    pub sim: crate::sim_hooks::SimHooks,
}

/// The connections held, and which of them are idle (oldest idle first). A connection holds
/// its slot through the sending half of a oneshot: dropping it tells the connection to close.
struct ClientSlots {
    max_connections: usize,
    next_stamp: u64,
    /// By connection id: the eviction notice and, when idle, since which stamp.
    held: BTreeMap<u64, (oneshot::Sender<()>, Option<u64>)>,
    /// Idle connections by the stamp of when they became idle.
    idle: BTreeMap<u64, u64>,
}

impl ClientSlots {
    fn new(max_connections: usize) -> ClientSlots {
        ClientSlots {
            max_connections: max_connections.max(1),
            next_stamp: 0,
            held: BTreeMap::new(),
            idle: BTreeMap::new(),
        }
    }

    fn stamp(&mut self) -> u64 {
        self.next_stamp += 1;
        self.next_stamp
    }

    /// A slot for a new connection (idle until its first request), evicting the connection
    /// idle the longest when all are taken; `None` when every connection is busy.
    fn admit(&mut self) -> Option<(u64, oneshot::Receiver<()>, bool)> {
        let mut evicted = false;
        if self.held.len() >= self.max_connections {
            let (_, victim) = self.idle.pop_first()?;
            self.held.remove(&victim);
            evicted = true;
        }
        let id = self.stamp();
        let (tx, rx) = oneshot::channel();
        let since = self.stamp();
        self.held.insert(id, (tx, Some(since)));
        self.idle.insert(since, id);
        Some((id, rx, evicted))
    }

    fn set_busy(&mut self, id: u64) {
        if let Some((_, since)) = self.held.get_mut(&id) {
            if let Some(stamp) = since.take() {
                self.idle.remove(&stamp);
            }
        }
    }

    fn set_idle(&mut self, id: u64) {
        let stamp = self.stamp();
        if let Some((_, since)) = self.held.get_mut(&id) {
            if since.is_none() {
                *since = Some(stamp);
                self.idle.insert(stamp, id);
            }
        }
    }

    fn release(&mut self, id: u64) {
        if let Some((_, Some(stamp))) = self.held.remove(&id) {
            self.idle.remove(&stamp);
        }
    }
}

type SharedSlots = Arc<Mutex<ClientSlots>>;

fn lock(slots: &SharedSlots) -> std::sync::MutexGuard<'_, ClientSlots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

pub async fn accept_clients(
    listener: TcpListener,
    config: ClientPortConfig,
    calls: mpsc::Sender<ClientCall>,
) {
    let slots: SharedSlots = Arc::new(Mutex::new(ClientSlots::new(config.max_connections)));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "client accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // BUGGIFY: a connection closed as soon as it is accepted (the client must retry).
        if crate::buggify!(config.sim, "refuse-connection") {
            debug!(%addr, "buggify: client connection refused");
            continue;
        }
        let (admitted, held) = {
            let mut slots = lock(&slots);
            (slots.admit(), slots.held.len())
        };
        config.metrics.client_connections.set(held as i64);
        let Some((id, evicted, evicted_one)) = admitted else {
            config.metrics.client_connections_refused.inc();
            warn!(%addr, max_connections = config.max_connections, "too many client connections, all busy: refused");
            let max_connections = config.max_connections as u64;
            tokio::spawn(refuse(stream, max_connections, config.max_frame_bytes).in_current_span());
            continue;
        };
        if evicted_one {
            config.metrics.client_connections_evicted.inc();
            debug!(%addr, max_connections = config.max_connections, "client connections at the limit: the longest idle one is closed");
        }
        let config = config.clone();
        let calls = calls.clone();
        let slots = slots.clone();
        tokio::spawn(
            async move {
                let served = tokio::select! {
                    result = handshake_and_serve(stream, addr, &config, &calls, &slots, id) => result,
                    _ = evicted => {
                        debug!(%addr, "idle client connection evicted for a new one");
                        Ok(())
                    }
                };
                let held = {
                    let mut slots = lock(&slots);
                    slots.release(id);
                    slots.held.len()
                };
                config.metrics.client_connections.set(held as i64);
                match served {
                    Ok(()) => debug!(%addr, "client connection closed"),
                    Err(e) => warn!(%addr, error = %e, "client connection closed with error"),
                }
            }
            .in_current_span(),
        );
    }
}

/// How long a refused connection is read from (and its bytes discarded) after the refusal,
/// so that closing it does not reset the connection before the client reads the refusal.
const REFUSAL_LINGER_MS: u64 = 200;

/// Tells a connection the node cannot take it, then closes it.
async fn refuse(stream: TcpStream, max_connections: u64, max_frame_bytes: usize) {
    let frame = ServerFrame {
        id: 0,
        response: ClientResponse::Refused(RefusedReason::TooManyConnections { max_connections }),
    };
    let Ok(bytes) = encode_frame(&frame, max_frame_bytes) else {
        return;
    };
    let (mut read_half, mut writer) = tokio::io::split(stream);
    let linger = Duration::from_millis(REFUSAL_LINGER_MS);
    let _ = timeout(linger, async {
        writer.write_all(&bytes).await?;
        writer.flush().await?;
        writer.shutdown().await
    })
    .await;
    let _ = timeout(linger, async {
        let mut sink = [0u8; 4096];
        while matches!(read_half.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn handshake_and_serve(
    tcp: TcpStream,
    addr: SocketAddr,
    config: &ClientPortConfig,
    calls: &mpsc::Sender<ClientCall>,
    slots: &SharedSlots,
    slot: u64,
) -> Result<(), FrameError> {
    match config
        .acceptor
        .accept(tcp, config.handshake_timeout_ms)
        .await
    {
        Ok(Accepted::Ready { stream, .. }) => {
            serve_client(stream, addr, config, calls, slots, slot).await
        }
        Ok(Accepted::Plaintext(stream)) => {
            warn!(%addr, "plaintext client on the TLS client port: refused");
            refuse_plaintext(stream, config).await
        }
        Err(e) => {
            warn!(%addr, error = %e, "client connection refused");
            Ok(())
        }
    }
}

/// Answers a plaintext client's first request `TlsRequired` (so that it can say why), then
/// closes; a client that sends no decodable request in time is just closed.
async fn refuse_plaintext(stream: Stream, config: &ClientPortConfig) -> Result<(), FrameError> {
    let (read_half, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let within = Duration::from_millis(config.handshake_timeout_ms);
    let first = read_frame::<_, ClientFrame>(&mut reader, config.max_frame_bytes);
    let Ok(Ok(Some(ClientFrame { id, .. }))) = timeout(within, first).await else {
        return Ok(());
    };
    let response = ClientResponse::Refused(RefusedReason::TlsRequired);
    let frame = encode_frame(&ServerFrame { id, response }, config.max_frame_bytes)?;
    let _ = timeout(within, async {
        writer.write_all(&frame).await?;
        writer.flush().await
    })
    .await;
    Ok(())
}

async fn serve_client(
    stream: Stream,
    addr: SocketAddr,
    config: &ClientPortConfig,
    calls: &mpsc::Sender<ClientCall>,
    slots: &SharedSlots,
    slot: u64,
) -> Result<(), FrameError> {
    let (read_half, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let mut session: Option<Session> = None;
    let limits = ReadLimits {
        max_frame_bytes: config.max_frame_bytes,
        budget: Some(&config.budget),
        payload_timeout: Some(config.frame_read_timeout),
    };
    // One idle timer per connection, not one per request (`moving_deadline`).
    let mut idle = MovingDeadline::new(Instant::now() + config.idle_timeout);
    loop {
        idle.set(Instant::now() + config.idle_timeout);
        let read = tokio::select! {
            biased;
            frame = read_frame_limited::<_, ClientFrame>(&mut reader, &limits) => Ok(frame),
            () = idle.elapsed() => Err(()),
        };
        let frame = match read {
            Ok(frame) => frame?,
            Err(()) => {
                debug!(%addr, idle_timeout_ms = config.idle_timeout.as_millis() as u64, "idle client connection closed");
                return Ok(());
            }
        };
        let Some(ClientFrame { id, request }) = frame else {
            return Ok(());
        };
        lock(slots).set_busy(slot);
        let op = op_name(&request);
        let started = Instant::now();
        config.metrics.pending_requests.inc();
        let mut close_after = false;
        let response = match admit(config, &mut session, request, addr).await {
            Admission::Forward(request) => forward(calls, request).await,
            Admission::Answer(response) => response,
            Admission::AnswerAndClose(response) => {
                close_after = true;
                response
            }
        };
        config.metrics.pending_requests.dec();
        let seconds = started.elapsed().as_secs_f64();
        config.metrics.request_done(op, &response, seconds);
        let frame = match encode_frame(&ServerFrame { id, response }, config.max_frame_bytes) {
            Ok(bytes) => bytes,
            Err(FrameError::TooLarge { len_bytes, .. }) => {
                warn!(%addr, len_bytes, "response exceeds max_client_frame_bytes: refused");
                let response =
                    ClientResponse::Refused(RefusedReason::ResponseTooLarge { len_bytes });
                encode_frame(&ServerFrame { id, response }, config.max_frame_bytes)?
            }
            Err(e) => return Err(e),
        };
        let written = timeout(config.write_timeout, async {
            writer.write_all(&frame).await?;
            writer.flush().await
        })
        .await;
        match written {
            Ok(result) => result?,
            Err(_) => {
                config.metrics.client_write_timeouts.inc();
                warn!(%addr, write_timeout_ms = config.write_timeout.as_millis() as u64, "client does not read its replies: closed");
                return Ok(());
            }
        }
        if close_after {
            return Ok(());
        }
        lock(slots).set_idle(slot);
    }
}

/// Hands a request to the event loop and waits for its answer.
async fn forward(calls: &mpsc::Sender<ClientCall>, request: ClientRequest) -> ClientResponse {
    let (reply, answer) = oneshot::channel();
    match calls.try_send(ClientCall { request, reply }) {
        Ok(()) => answer
            .await
            .unwrap_or(ClientResponse::Refused(RefusedReason::ShuttingDown)),
        Err(mpsc::error::TrySendError::Full(call)) => {
            drop(call);
            ClientResponse::Refused(RefusedReason::Busy)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            ClientResponse::Refused(RefusedReason::ShuttingDown)
        }
    }
}

/// What the port does with one request before (or instead of) the event loop.
enum Admission {
    Forward(ClientRequest),
    Answer(ClientResponse),
    /// A failed login: answered, then the connection is closed.
    AnswerAndClose(ClientResponse),
}

/// The auth check of every request (when auth is enabled), logins, and user management (which
/// becomes a metadata command here, with any new secret already hashed).
async fn admit(
    config: &ClientPortConfig,
    session: &mut Option<Session>,
    request: ClientRequest,
    addr: SocketAddr,
) -> Admission {
    if let ClientRequest::Authenticate(credentials) = &request {
        return authenticate(config, session, credentials, addr).await;
    }
    if let (Some(gate), Some(need)) = (&config.auth, required_role(&request)) {
        if let Err(denied) = gate.authorize(session.as_ref(), need) {
            let user = session.as_ref().map(|s| s.user.as_str()).unwrap_or("-");
            warn!(%addr, user, op = op_name(&request), %denied, "request denied");
            return Admission::Answer(ClientResponse::Refused(RefusedReason::Denied(denied)));
        }
    }
    match request {
        ClientRequest::User(user_request) => manage_users(config, user_request).await,
        request => Admission::Forward(request),
    }
}

async fn authenticate(
    config: &ClientPortConfig,
    session: &mut Option<Session>,
    credentials: &Credentials,
    addr: SocketAddr,
) -> Admission {
    let Some(gate) = &config.auth else {
        return Admission::Answer(ClientResponse::Authenticated {
            user: credentials.user.clone(),
            role: None,
        });
    };
    match gate.authenticate(credentials, addr).await {
        Ok((verified, role)) => {
            let user = verified.user.clone();
            *session = Some(verified);
            Admission::Answer(ClientResponse::Authenticated {
                user,
                role: Some(role),
            })
        }
        Err(denied) => {
            *session = None;
            Admission::AnswerAndClose(ClientResponse::Refused(RefusedReason::Denied(denied)))
        }
    }
}

/// `List` is answered from this node's applied table; changes become metadata commands (the
/// client sends them to the metadata leader, which proposes them).
async fn manage_users(config: &ClientPortConfig, request: UserRequest) -> Admission {
    let rejected =
        |reason: String| Admission::Answer(ClientResponse::Admin(MetaResult::Rejected { reason }));
    let command = match request {
        UserRequest::List => {
            let users = config.users.borrow().clone();
            let infos = users.values().map(UserInfo::from).collect();
            return Admission::Answer(ClientResponse::Users(infos));
        }
        UserRequest::Add {
            name,
            role,
            kind,
            secret,
        } => {
            if let Err(reason) = validate_user_name(&name).and(validate_new_secret(&secret)) {
                return rejected(reason);
            }
            if config.users.borrow().contains_key(&name) {
                return rejected(format!("user {name:?} already exists"));
            }
            match hash_off_loop(secret).await {
                Ok(secret_hash) => MetaCommand::AddUser(User {
                    name,
                    role,
                    kind,
                    secret_hash,
                }),
                Err(reason) => return rejected(reason),
            }
        }
        UserRequest::Remove { name } => {
            if !config.users.borrow().contains_key(&name) {
                return rejected(format!("no user {name:?}"));
            }
            MetaCommand::RemoveUser(name)
        }
        UserRequest::SetRole { name, role } => MetaCommand::SetUserRole { name, role },
        UserRequest::SetSecret { name, kind, secret } => {
            if let Err(reason) = validate_new_secret(&secret) {
                return rejected(reason);
            }
            match hash_off_loop(secret).await {
                Ok(secret_hash) => MetaCommand::SetUserSecret {
                    name,
                    kind,
                    secret_hash,
                },
                Err(reason) => return rejected(reason),
            }
        }
    };
    Admission::Forward(ClientRequest::Admin(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(rx: &mut oneshot::Receiver<()>) -> bool {
        matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed))
    }

    #[test]
    fn at_the_limit_the_longest_idle_connection_makes_room() {
        let mut slots = ClientSlots::new(3);
        let (a, mut a_rx, _) = slots.admit().unwrap();
        let (b, mut b_rx, _) = slots.admit().unwrap();
        let (c, _c_rx, _) = slots.admit().unwrap();
        slots.set_busy(a);
        slots.set_busy(c);
        // b is the only idle one: it goes.
        let (_d, _d_rx, evicted) = slots.admit().unwrap();
        assert!(evicted);
        assert!(closed(&mut b_rx) && !slots.held.contains_key(&b));
        assert!(matches!(
            a_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // d is idle now: the next newcomer takes its place; then a, once idle, is oldest.
        slots.set_idle(a);
        let (_e, _e_rx, _) = slots.admit().unwrap();
        let (_f, _f_rx, evicted) = slots.admit().unwrap();
        assert!(evicted);
        assert!(closed(&mut a_rx), "a was the longest idle");
        // Every connection busy: refused.
        let busy: Vec<u64> = slots.held.keys().copied().collect();
        for id in busy {
            slots.set_busy(id);
        }
        assert!(slots.admit().is_none());
        slots.release(c);
        assert!(slots.admit().is_some(), "a released slot is free again");
    }

    /// Issue 16: a connection the node cannot take is told so, not silently closed; the
    /// client library names the reason (and tries elsewhere: nothing was applied).
    #[tokio::test]
    async fn a_refused_connection_gets_a_too_many_connections_frame() {
        use crate::client::protocol::ClientFrame;
        use crate::transport::frame::read_frame;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let node = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            refuse(stream, 7, 1 << 20).await;
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The client has sent its request already: the refusal must still be readable.
        let request = ClientFrame {
            id: 5,
            request: crate::client::protocol::ClientRequest::Status,
        };
        stream
            .write_all(&encode_frame(&request, 1 << 20).unwrap())
            .await
            .unwrap();
        let frame = read_frame::<_, ServerFrame>(&mut stream, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            frame,
            Some(ServerFrame {
                id: 0,
                response: ClientResponse::Refused(RefusedReason::TooManyConnections {
                    max_connections: 7
                }),
            })
        );
        node.await.unwrap();
    }
}
