//! Raft messages between nodes over TCP.
//!
//! Each node keeps one outbound connection per peer, owned by a task that connects (with
//! exponential backoff), introduces itself with `Hello`, then writes batches of queued messages
//! and a `Ping` every `heartbeat_interval_ms`. The receiving side answers each `Ping` with a
//! `Pong`; a sender that hears nothing for `silence_timeout_ms` drops the connection and
//! reconnects, and a receiver that reads nothing for that long closes it. Messages queued while
//! disconnected are discarded (they are stale; Raft retransmits).
//!
//! Inbound connections only carry messages *to* this node *from* the peer named in `Hello`;
//! anything else closes the connection with a logged error.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tracing::Instrument;
use tracing::{debug, info, warn};

use super::frame::{encode_frame, read_frame, FrameError};
use crate::config::TransportConfig;
use crate::raft::{Message, NodeId};

/// Everything that travels on the peer port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// First frame of every connection: who is calling whom.
    Hello {
        from: NodeId,
        to: NodeId,
    },
    Messages(Vec<Message>),
    Ping,
    Pong,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer sent nothing for {silence_ms} ms")]
    Silent { silence_ms: u64 },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("connection closed by peer")]
    Closed,
}

/// The event loop's handle on outgoing peer traffic. Dropping it stops the peer tasks.
pub struct PeerTransport {
    me: NodeId,
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    tasks: Vec<JoinHandle<()>>,
    /// Messages refused because a peer's queue was full or the peer is unknown.
    pub dropped_messages: u64,
    #[cfg(any(test, madsim))]
    faults: Option<FaultInjector>,
}

impl PeerTransport {
    /// Starts one outbound task per peer (every member but `me`).
    pub fn start(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        config: &TransportConfig,
        max_frame_bytes: usize,
    ) -> PeerTransport {
        let mut queues = BTreeMap::new();
        let mut tasks = Vec::new();
        for (&id, &addr) in peers.iter().filter(|(&id, _)| id != me) {
            let (tx, rx) = mpsc::channel(config.peer_queue_messages);
            let link = OutboundLink {
                me,
                peer: id,
                addr,
                config: config.clone(),
                max_frame_bytes,
            };
            tasks.push(tokio::spawn(link.run(rx).in_current_span()));
            queues.insert(id, tx);
        }
        PeerTransport {
            me,
            queues,
            tasks,
            dropped_messages: 0,
            #[cfg(any(test, madsim))]
            faults: None,
        }
    }

    /// Simulation/test only: subject outgoing messages to `faults`, deciding with a seeded RNG.
    #[cfg(any(test, madsim))]
    pub fn set_faults(&mut self, faults: super::TransportFaults, rng_seed: u64) {
        use rand::SeedableRng;
        self.faults = Some(FaultInjector {
            faults,
            rng: rand::rngs::StdRng::seed_from_u64(rng_seed),
            held: BTreeMap::new(),
        });
    }

    /// Queues messages for their peers without waiting; a full queue drops the message.
    pub fn send(&mut self, messages: Vec<Message>) {
        #[cfg(any(test, madsim))]
        if let Some(mut injector) = self.faults.take() {
            for message in messages {
                injector.route(self, message);
            }
            self.faults = Some(injector);
            return;
        }
        for message in messages {
            self.enqueue(message);
        }
    }

    fn enqueue(&mut self, message: Message) {
        debug_assert_eq!(
            message.from, self.me,
            "sending a message not from this node"
        );
        let Some(queue) = self.queues.get(&message.to) else {
            self.dropped_messages += 1;
            debug!(to = message.to, "message to unknown peer dropped");
            return;
        };
        if queue.try_send(message).is_err() {
            self.dropped_messages += 1;
        }
    }
}

impl Drop for PeerTransport {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(any(test, madsim))]
struct FaultInjector {
    faults: super::TransportFaults,
    rng: rand::rngs::StdRng,
    /// One held-back message per peer, released after the next one (reordering).
    held: BTreeMap<NodeId, Message>,
}

#[cfg(any(test, madsim))]
impl FaultInjector {
    fn route(&mut self, transport: &mut PeerTransport, message: Message) {
        use rand::Rng;
        let plan = self.faults.plan();
        if plan.is_blocked(message.from, message.to)
            || self.rng.random_bool(clamp(plan.drop_probability))
        {
            transport.dropped_messages += 1;
            return;
        }
        let copies = if self.rng.random_bool(clamp(plan.duplicate_probability)) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let message = message.clone();
            if plan.delay_ms_max > 0 && self.rng.random_bool(clamp(plan.delay_probability)) {
                let delay = Duration::from_millis(self.rng.random_range(1..=plan.delay_ms_max));
                if let Some(queue) = transport.queues.get(&message.to).cloned() {
                    tokio::spawn(
                        async move {
                            sleep(delay).await;
                            let _ = queue.try_send(message);
                        }
                        .in_current_span(),
                    );
                }
            } else if self.rng.random_bool(clamp(plan.reorder_probability)) {
                if let Some(earlier) = self.held.insert(message.to, message) {
                    transport.enqueue(earlier);
                }
            } else {
                let to = message.to;
                transport.enqueue(message);
                if let Some(held) = self.held.remove(&to) {
                    transport.enqueue(held);
                }
            }
        }
    }
}

#[cfg(any(test, madsim))]
fn clamp(probability: f64) -> f64 {
    if probability.is_nan() {
        0.0
    } else {
        probability.clamp(0.0, 1.0)
    }
}

/// The task that owns the outbound connection to one peer.
struct OutboundLink {
    me: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    config: TransportConfig,
    max_frame_bytes: usize,
}

impl OutboundLink {
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let backoff_min = Duration::from_millis(self.config.reconnect_backoff_ms_min);
        let backoff_max = Duration::from_millis(self.config.reconnect_backoff_ms_max);
        let mut backoff = backoff_min;
        loop {
            let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
            match timeout(connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    info!(peer = self.peer, addr = %self.addr, "connected to peer");
                    let started = Instant::now();
                    match self.drive(stream, &mut queue).await {
                        Ok(()) => return, // the event loop is gone
                        Err(e) => {
                            warn!(peer = self.peer, addr = %self.addr, error = %e, "peer connection lost")
                        }
                    }
                    if started.elapsed() > backoff_max {
                        backoff = backoff_min;
                    }
                }
                Ok(Err(e)) => {
                    debug!(peer = self.peer, addr = %self.addr, error = %e, "connect failed")
                }
                Err(_) => debug!(peer = self.peer, addr = %self.addr, "connect timed out"),
            }
            // Whatever queued up while we were not connected is stale.
            loop {
                match queue.try_recv() {
                    Ok(_) => {}
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(backoff_max);
        }
    }

    /// Runs one connection until it fails (`Err`) or the queue is closed (`Ok`).
    async fn drive(
        &self,
        stream: TcpStream,
        queue: &mut mpsc::Receiver<Message>,
    ) -> Result<(), PeerError> {
        let (read_half, mut write_half) = tokio::io::split(stream);
        let write_timeout = Duration::from_millis(self.config.silence_timeout_ms);
        let hello = PeerFrame::Hello {
            from: self.me,
            to: self.peer,
        };
        self.write(&mut write_half, &hello, write_timeout).await?;

        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let reader = tokio::spawn(
            read_pongs(read_half, last_heard.clone(), self.max_frame_bytes).in_current_span(),
        );
        let result = self
            .pump(&mut write_half, queue, &last_heard, &reader, write_timeout)
            .await;
        reader.abort();
        result
    }

    async fn pump<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        queue: &mut mpsc::Receiver<Message>,
        last_heard: &Mutex<Instant>,
        reader: &JoinHandle<Result<(), PeerError>>,
        write_timeout: Duration,
    ) -> Result<(), PeerError> {
        let silence = Duration::from_millis(self.config.silence_timeout_ms);
        let mut ping =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms));
        loop {
            tokio::select! {
                first = queue.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let mut batch = vec![first];
                    while batch.len() < self.config.max_batch_messages {
                        match queue.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    self.write_batch(writer, batch, write_timeout).await?;
                }
                _ = ping.tick() => {
                    if reader.is_finished() {
                        return Err(PeerError::Closed);
                    }
                    let heard = *last_heard.lock().unwrap_or_else(|p| p.into_inner());
                    if heard.elapsed() > silence {
                        return Err(PeerError::Silent { silence_ms: self.config.silence_timeout_ms });
                    }
                    self.write(writer, &PeerFrame::Ping, write_timeout).await?;
                }
            }
        }
    }

    /// Writes a batch as one frame; a batch too large for one frame is split, and a single
    /// message too large for any frame is dropped with an error (the limit is misconfigured).
    async fn write_batch<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        batch: Vec<Message>,
        write_timeout: Duration,
    ) -> Result<(), PeerError> {
        let frame = PeerFrame::Messages(batch);
        match encode_frame(&frame, self.max_frame_bytes) {
            Ok(bytes) => write_bytes(writer, &bytes, write_timeout).await,
            Err(FrameError::TooLarge { .. }) => {
                let PeerFrame::Messages(batch) = frame else {
                    unreachable!()
                };
                if batch.len() == 1 {
                    warn!(
                        peer = self.peer,
                        "a single Raft message exceeds max_peer_frame_bytes: dropped"
                    );
                    return Ok(());
                }
                let mut first = batch;
                let second = first.split_off(first.len() / 2);
                Box::pin(self.write_batch(writer, first, write_timeout)).await?;
                Box::pin(self.write_batch(writer, second, write_timeout)).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        frame: &PeerFrame,
        write_timeout: Duration,
    ) -> Result<(), PeerError> {
        let bytes = encode_frame(frame, self.max_frame_bytes)?;
        write_bytes(writer, &bytes, write_timeout).await
    }
}

async fn write_bytes<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    write_timeout: Duration,
) -> Result<(), PeerError> {
    use tokio::io::AsyncWriteExt;
    let write = async {
        writer.write_all(bytes).await?;
        writer.flush().await
    };
    match timeout(write_timeout, write).await {
        Ok(result) => result.map_err(|e| PeerError::Frame(FrameError::Io(e))),
        Err(_) => Err(PeerError::Silent {
            silence_ms: write_timeout.as_millis() as u64,
        }),
    }
}

async fn read_pongs<R: tokio::io::AsyncRead + Unpin>(
    read_half: R,
    last_heard: Arc<Mutex<Instant>>,
    max_frame_bytes: usize,
) -> Result<(), PeerError> {
    let mut reader = BufReader::new(read_half);
    loop {
        match read_frame::<_, PeerFrame>(&mut reader, max_frame_bytes).await? {
            Some(PeerFrame::Pong) => {
                *last_heard.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now()
            }
            Some(other) => {
                return Err(PeerError::Protocol(format!(
                    "unexpected {other:?} on outbound link"
                )))
            }
            None => return Err(PeerError::Closed),
        }
    }
}

/// Settings of the inbound (accepting) side.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    pub me: NodeId,
    pub members: BTreeSet<NodeId>,
    pub transport: TransportConfig,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
}

/// Accepts peer connections forever, delivering their messages to `inbox` (with back-pressure).
pub async fn accept_peers(
    listener: TcpListener,
    config: InboundConfig,
    inbox: mpsc::Sender<Message>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%addr, max_connections = config.max_connections, "too many peer connections: refused");
            continue;
        };
        let config = config.clone();
        let inbox = inbox.clone();
        tokio::spawn(
            async move {
                match serve_inbound(stream, &config, &inbox).await {
                    Ok(()) => debug!(%addr, "peer connection closed"),
                    Err(e) => warn!(%addr, error = %e, "peer connection closed with error"),
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

async fn serve_inbound(
    stream: TcpStream,
    config: &InboundConfig,
    inbox: &mpsc::Sender<Message>,
) -> Result<(), PeerError> {
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let max = config.max_frame_bytes;
    let handshake = Duration::from_millis(config.transport.handshake_timeout_ms);
    let first = timeout(handshake, read_frame::<_, PeerFrame>(&mut reader, max))
        .await
        .map_err(|_| PeerError::Silent {
            silence_ms: config.transport.handshake_timeout_ms,
        })??;
    let from = match first {
        Some(PeerFrame::Hello { from, to })
            if to == config.me && from != config.me && config.members.contains(&from) =>
        {
            from
        }
        Some(PeerFrame::Hello { from, to }) => {
            return Err(PeerError::Protocol(format!(
                "hello from {from} to {to}: not a peer of node {}",
                config.me
            )))
        }
        Some(other) => {
            return Err(PeerError::Protocol(format!(
                "expected Hello, got {}",
                frame_kind(&other)
            )))
        }
        None => return Ok(()),
    };
    debug!(peer = from, "peer connected");
    let silence = Duration::from_millis(config.transport.silence_timeout_ms);
    loop {
        let frame = timeout(silence, read_frame::<_, PeerFrame>(&mut reader, max))
            .await
            .map_err(|_| PeerError::Silent {
                silence_ms: config.transport.silence_timeout_ms,
            })??;
        match frame {
            Some(PeerFrame::Messages(messages)) => {
                for message in messages {
                    if message.from != from || message.to != config.me {
                        return Err(PeerError::Protocol(format!(
                            "message from {} to {} on the link from {from}",
                            message.from, message.to
                        )));
                    }
                    if inbox.send(message).await.is_err() {
                        return Ok(()); // the event loop is gone
                    }
                }
            }
            Some(PeerFrame::Ping) => {
                write_bytes(
                    &mut write_half,
                    &encode_frame(&PeerFrame::Pong, max)?,
                    silence,
                )
                .await?
            }
            Some(other) => {
                return Err(PeerError::Protocol(format!(
                    "unexpected {} after Hello",
                    frame_kind(&other)
                )))
            }
            None => return Ok(()),
        }
    }
}

fn frame_kind(frame: &PeerFrame) -> &'static str {
    match frame {
        PeerFrame::Hello { .. } => "Hello",
        PeerFrame::Messages(_) => "Messages",
        PeerFrame::Ping => "Ping",
        PeerFrame::Pong => "Pong",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::MessageBody;

    fn heartbeat(from: NodeId, to: NodeId, commit: u64) -> Message {
        Message {
            from,
            to,
            term: 1,
            body: MessageBody::Heartbeat {
                commit,
                read_seq: 0,
            },
        }
    }

    fn fast_config() -> TransportConfig {
        TransportConfig {
            heartbeat_interval_ms: 20,
            silence_timeout_ms: 200,
            ..TransportConfig::default()
        }
    }

    /// Node 2 listens; returns its address and the messages it receives.
    async fn listening_node() -> (SocketAddr, mpsc::Receiver<Message>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let config = InboundConfig {
            me: 2,
            members: [1, 2].into_iter().collect(),
            transport: fast_config(),
            max_frame_bytes: 1 << 20,
            max_connections: 4,
        };
        (addr, rx, tokio::spawn(accept_peers(listener, config, tx)))
    }

    async fn recv(rx: &mut mpsc::Receiver<Message>) -> Option<Message> {
        timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_reconnect_after_restart() {
        let (addr, mut rx, server) = listening_node().await;
        let peers = [(2, addr)].into_iter().collect();
        let mut transport = PeerTransport::start(1, &peers, &fast_config(), 1 << 20);
        // The first messages may be discarded while connecting: resend until one arrives.
        let mut first = None;
        for i in 0..100 {
            transport.send(vec![heartbeat(1, 2, i)]);
            if let Ok(Some(m)) = timeout(Duration::from_millis(50), rx.recv()).await {
                first = Some(m);
                break;
            }
        }
        assert!(first.is_some(), "no message arrived");
        transport.send((1000..1100).map(|i| heartbeat(1, 2, i)).collect());
        let mut commits = Vec::new();
        while commits.len() < 100 {
            let m = recv(&mut rx)
                .await
                .expect("message lost on an open connection");
            if let MessageBody::Heartbeat { commit, .. } = m.body {
                if commit >= 1000 {
                    commits.push(commit);
                }
            }
        }
        assert_eq!(commits, (1000..1100).collect::<Vec<_>>());

        // Restart the listener on the same port: the link reconnects by itself.
        server.abort();
        let _ = server.await;
        drop(rx); // the old connection's task ends at its next message
        transport.send(vec![heartbeat(1, 2, 4999)]);
        sleep(Duration::from_millis(300)).await; // let the old connection notice
        let listener = TcpListener::bind(addr).await.unwrap();
        let (tx, mut rx2) = mpsc::channel(1024);
        let config = InboundConfig {
            me: 2,
            members: [1, 2].into_iter().collect(),
            transport: fast_config(),
            max_frame_bytes: 1 << 20,
            max_connections: 4,
        };
        let _server = tokio::spawn(accept_peers(listener, config, tx));
        let mut arrived = false;
        for i in 0..200 {
            transport.send(vec![heartbeat(1, 2, 5000 + i)]);
            if timeout(Duration::from_millis(50), rx2.recv())
                .await
                .ok()
                .flatten()
                .is_some()
            {
                arrived = true;
                break;
            }
        }
        assert!(arrived, "link did not reconnect");
    }

    #[tokio::test]
    async fn hello_from_a_stranger_is_refused() {
        let (addr, mut rx, _server) = listening_node().await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut read_half, mut write_half) = tokio::io::split(stream);
        let hello = encode_frame(&PeerFrame::Hello { from: 9, to: 2 }, 1024).unwrap();
        write_bytes(&mut write_half, &hello, Duration::from_secs(1))
            .await
            .unwrap();
        let batch = encode_frame(&PeerFrame::Messages(vec![heartbeat(9, 2, 1)]), 1024).unwrap();
        let _ = write_bytes(&mut write_half, &batch, Duration::from_secs(1)).await;
        // The connection is closed by the node and nothing is delivered.
        let mut buf = [0u8; 16];
        let n = timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut read_half, &mut buf),
        )
        .await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "connection left open: {n:?}"
        );
        assert!(timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn faults_drop_blocked_links_and_duplicate() {
        let (addr, mut rx, _server) = listening_node().await;
        let peers = [(2, addr)].into_iter().collect();
        let mut transport = PeerTransport::start(1, &peers, &fast_config(), 1 << 20);
        let faults = super::super::TransportFaults::new();
        transport.set_faults(faults.clone(), 42);
        // Connect first.
        let mut connected = false;
        for i in 0..100 {
            transport.send(vec![heartbeat(1, 2, i)]);
            if timeout(Duration::from_millis(50), rx.recv())
                .await
                .ok()
                .flatten()
                .is_some()
            {
                connected = true;
                break;
            }
        }
        assert!(connected);
        sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}

        faults.cut(1, 2);
        transport.send((0..50).map(|i| heartbeat(1, 2, 10_000 + i)).collect());
        assert!(
            timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "blocked link delivered"
        );

        faults.set(super::super::FaultPlan {
            duplicate_probability: 1.0,
            ..Default::default()
        });
        transport.send(vec![heartbeat(1, 2, 20_000)]);
        for _ in 0..2 {
            let m = recv(&mut rx).await.expect("duplicate missing");
            assert_eq!(m, heartbeat(1, 2, 20_000));
        }
    }
}
