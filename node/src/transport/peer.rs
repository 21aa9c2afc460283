//! Raft messages between nodes over TCP, for every Raft group the two nodes share.
//!
//! Each node keeps one outbound connection per peer node (not per group), owned by a task that
//! connects (with exponential backoff), introduces itself with `Hello`, then writes batches of
//! queued messages and a `Ping` every `heartbeat_interval_ms`. Every message is a
//! `PeerMessage` tagged with its group, and all groups' messages to one peer share that peer's
//! queue: whatever the event loop sends in one turn (in particular the heartbeats of all the
//! groups two nodes share) goes out in the same batch frame. Coalescing is per node pair, so
//! the cost of idle groups is bytes in a frame, not frames or connections. The receiving side answers each `Ping` with a
//! `Pong`; a sender that hears nothing for `silence_timeout_ms` drops the connection and
//! reconnects, and a receiver that reads nothing for that long closes it. Messages queued while
//! disconnected are discarded (they are stale; Raft retransmits).
//!
//! Peers come and go at run time (`add_peer`, `remove_peer`): a node that joins the cluster is
//! in no static member list, so the inbound side accepts a `Hello` from any node id but 0 and
//! its own. An inbound connection only carries messages *to* this node *from* the peer named in
//! its `Hello`; anything else closes the connection with a logged error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use crate::deadline::{timeout, Ticker};
use tracing::Instrument;
use tracing::{debug, info, warn};

use super::frame::{encode_frame, read_frame, FrameError};
use crate::config::TransportConfig;
use crate::meta::GroupId;
use crate::metrics::{Metrics, PeerLabels};
use crate::raft::{LogIndex, Message, NodeId};

/// What travels between two nodes' event loops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A Raft message of one group.
    Raft { group: GroupId, message: Message },
    /// From the leader of `group` in `term`: its committed membership (set at
    /// `membership_index`) no longer includes the receiver, which may delete its replica.
    Removed {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        term: crate::raft::Term,
        membership_index: LogIndex,
    },
}

impl PeerMessage {
    pub fn from(&self) -> NodeId {
        match self {
            PeerMessage::Raft { message, .. } => message.from,
            PeerMessage::Removed { from, .. } => *from,
        }
    }

    pub fn to(&self) -> NodeId {
        match self {
            PeerMessage::Raft { message, .. } => message.to,
            PeerMessage::Removed { to, .. } => *to,
        }
    }

    pub fn group(&self) -> GroupId {
        match self {
            PeerMessage::Raft { group, .. } | PeerMessage::Removed { group, .. } => *group,
        }
    }
}

/// Everything that travels on the peer port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// First frame of every connection: who is calling whom.
    Hello {
        from: NodeId,
        to: NodeId,
    },
    Messages(Vec<PeerMessage>),
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

/// One peer's outbound queue and the task that drains it onto its connection.
struct PeerLink {
    addr: SocketAddr,
    queue: mpsc::Sender<PeerMessage>,
    task: JoinHandle<()>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The event loop's handle on outgoing peer traffic. Dropping it stops the peer tasks.
pub struct PeerTransport {
    me: NodeId,
    config: TransportConfig,
    max_frame_bytes: usize,
    links: BTreeMap<NodeId, PeerLink>,
    /// Host names to look up again before each connect, by peer (see `ServerConfig::peer_names`).
    names: BTreeMap<NodeId, String>,
    metrics: Option<Arc<Metrics>>,
    /// Messages refused because a peer's queue was full or the peer is unknown.
    pub dropped_messages: u64,
    #[cfg(any(test, madsim))]
    faults: Option<FaultInjector>,
}

impl PeerTransport {
    /// Starts one outbound task per peer (every entry of `peers` but `me`).
    pub fn start(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        config: &TransportConfig,
        max_frame_bytes: usize,
    ) -> PeerTransport {
        PeerTransport::start_named(me, peers, &BTreeMap::new(), None, config, max_frame_bytes)
    }

    /// As `start`; a peer in `names` is looked up by that name before each connect (its
    /// address in `peers` is the fallback while the name does not resolve); traffic is counted
    /// in `metrics` if given.
    pub fn start_named(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        names: &BTreeMap<NodeId, String>,
        metrics: Option<Arc<Metrics>>,
        config: &TransportConfig,
        max_frame_bytes: usize,
    ) -> PeerTransport {
        let mut transport = PeerTransport {
            me,
            config: config.clone(),
            max_frame_bytes,
            links: BTreeMap::new(),
            names: names.clone(),
            metrics,
            dropped_messages: 0,
            #[cfg(any(test, madsim))]
            faults: None,
        };
        for (&id, &addr) in peers {
            transport.add_peer(id, addr);
        }
        transport
    }

    /// Starts sending to `id` at `addr`. A no-op when `id` is known at the same address (or is
    /// this node); a new address restarts the link, discarding what was queued for the old one.
    pub fn add_peer(&mut self, id: NodeId, addr: SocketAddr) {
        if id == self.me || self.links.get(&id).is_some_and(|l| l.addr == addr) {
            return;
        }
        let (queue, rx) = mpsc::channel(self.config.peer_queue_messages);
        let link = OutboundLink {
            me: self.me,
            peer: id,
            addr,
            name: self.names.get(&id).cloned(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            max_frame_bytes: self.max_frame_bytes,
        };
        let task = tokio::spawn(link.run(rx).in_current_span());
        info!(peer = id, %addr, "peer added");
        // Replacing a link drops the old one, which stops its task.
        self.links.insert(id, PeerLink { addr, queue, task });
    }

    /// Stops sending to `id` (its task ends, its queued messages are discarded).
    pub fn remove_peer(&mut self, id: NodeId) {
        if self.links.remove(&id).is_some() {
            info!(peer = id, "peer removed");
        }
    }

    /// The peers this transport sends to, in id order.
    pub fn peers(&self) -> Vec<NodeId> {
        self.links.keys().copied().collect()
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
    pub fn send(&mut self, messages: Vec<PeerMessage>) {
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

    fn enqueue(&mut self, message: PeerMessage) {
        debug_assert_eq!(
            message.from(),
            self.me,
            "sending a message not from this node"
        );
        let to = message.to();
        let is_snapshot = matches!(
            &message,
            PeerMessage::Raft { message, .. } if matches!(message.body, crate::raft::MessageBody::InstallSnapshot { .. })
        );
        let Some(link) = self.links.get(&to) else {
            self.count_dropped();
            debug!(
                to,
                group = message.group(),
                "message to unknown peer dropped"
            );
            return;
        };
        if link.queue.try_send(message).is_err() {
            self.count_dropped();
        } else if is_snapshot {
            if let Some(m) = &self.metrics {
                m.snapshots_sent.inc();
            }
        }
    }

    fn count_dropped(&mut self) {
        self.dropped_messages += 1;
        if let Some(m) = &self.metrics {
            m.peer_messages_dropped.inc();
        }
    }
}

#[cfg(any(test, madsim))]
struct FaultInjector {
    faults: super::TransportFaults,
    rng: rand::rngs::StdRng,
    /// One held-back message per peer, released after the next one (reordering).
    held: BTreeMap<NodeId, PeerMessage>,
}

#[cfg(any(test, madsim))]
impl FaultInjector {
    fn route(&mut self, transport: &mut PeerTransport, message: PeerMessage) {
        use rand::Rng;
        let plan = self.faults.current();
        let link = (message.from(), message.to());
        if plan.is_blocked(link.0, link.1)
            || self.rng.random_bool(clamp(plan.drop_probability))
            || plan
                .link_drop_percent
                .get(&link)
                .is_some_and(|&percent| self.rng.random_range(0..100) < percent)
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
                if let Some(queue) = transport.links.get(&message.to()).map(|l| l.queue.clone()) {
                    tokio::spawn(
                        async move {
                            sleep(delay).await;
                            let _ = queue.try_send(message);
                        }
                        .in_current_span(),
                    );
                }
            } else if self.rng.random_bool(clamp(plan.reorder_probability)) {
                if let Some(earlier) = self.held.insert(message.to(), message) {
                    transport.enqueue(earlier);
                }
            } else {
                let to = message.to();
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
    /// Looked up before each connect when set (falls back to the last address it gave).
    name: Option<String>,
    metrics: Option<Arc<Metrics>>,
    config: TransportConfig,
    max_frame_bytes: usize,
}

impl OutboundLink {
    fn set_connected(&self, up: i64) {
        if let Some(m) = &self.metrics {
            m.peer_connected
                .get_or_create(&PeerLabels { peer: self.peer })
                .set(up);
        }
    }

    fn count_sent(&self, len_bytes: usize) {
        if let Some(m) = &self.metrics {
            m.peer_sent
                .get_or_create(&PeerLabels { peer: self.peer })
                .inc_by(len_bytes as u64);
        }
    }

    /// Where to connect now: the name's current address, else the last one known.
    async fn current_addr(&self, last: SocketAddr) -> SocketAddr {
        let Some(name) = &self.name else { return last };
        match crate::addr::resolve(name).await {
            Ok(addr) => {
                if addr != last {
                    info!(peer = self.peer, %name, from = %last, to = %addr, "peer name resolves to a new address");
                }
                addr
            }
            Err(e) => {
                debug!(peer = self.peer, %name, error = %e, "peer name does not resolve; using its last address");
                last
            }
        }
    }

    async fn run(self, mut queue: mpsc::Receiver<PeerMessage>) {
        let mut addr = self.addr;
        let backoff_min = Duration::from_millis(self.config.reconnect_backoff_ms_min);
        let backoff_max = Duration::from_millis(self.config.reconnect_backoff_ms_max);
        let mut backoff = backoff_min;
        loop {
            let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
            addr = self.current_addr(addr).await;
            match timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    info!(peer = self.peer, %addr, "connected to peer");
                    let started = Instant::now();
                    self.set_connected(1);
                    let result = self.drive(stream, &mut queue).await;
                    self.set_connected(0);
                    match result {
                        Ok(()) => return, // the event loop is gone
                        Err(e) => {
                            warn!(peer = self.peer, %addr, error = %e, "peer connection lost")
                        }
                    }
                    if started.elapsed() > backoff_max {
                        backoff = backoff_min;
                    }
                }
                Ok(Err(e)) => {
                    debug!(peer = self.peer, %addr, error = %e, "connect failed")
                }
                Err(_) => debug!(peer = self.peer, %addr, "connect timed out"),
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
        queue: &mut mpsc::Receiver<PeerMessage>,
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
        queue: &mut mpsc::Receiver<PeerMessage>,
        last_heard: &Mutex<Instant>,
        reader: &JoinHandle<Result<(), PeerError>>,
        write_timeout: Duration,
    ) -> Result<(), PeerError> {
        let silence = Duration::from_millis(self.config.silence_timeout_ms);
        let mut ping = Ticker::new(Duration::from_millis(self.config.heartbeat_interval_ms));
        loop {
            tokio::select! {
                biased;
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
        batch: Vec<PeerMessage>,
        write_timeout: Duration,
    ) -> Result<(), PeerError> {
        let frame = PeerFrame::Messages(batch);
        match encode_frame(&frame, self.max_frame_bytes) {
            Ok(bytes) => {
                write_bytes(writer, &bytes, write_timeout).await?;
                self.count_sent(bytes.len());
                Ok(())
            }
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
        write_bytes(writer, &bytes, write_timeout).await?;
        self.count_sent(bytes.len());
        Ok(())
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
    pub transport: TransportConfig,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
}

/// Accepts peer connections forever, delivering their messages to `inbox` (with back-pressure).
pub async fn accept_peers(
    listener: TcpListener,
    config: InboundConfig,
    inbox: mpsc::Sender<PeerMessage>,
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
    inbox: &mpsc::Sender<PeerMessage>,
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
        // Any node may call (a joining node is in no member list); what it may send is checked
        // per message below.
        Some(PeerFrame::Hello { from, to })
            if to == config.me && from != config.me && from != 0 =>
        {
            from
        }
        Some(PeerFrame::Hello { from, to }) => {
            return Err(PeerError::Protocol(format!(
                "hello from {from} to {to} refused by node {}",
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
                    if message.from() != from || message.to() != config.me {
                        return Err(PeerError::Protocol(format!(
                            "message from {} to {} on the link from {from}",
                            message.from(),
                            message.to()
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

    fn group_heartbeat(group: GroupId, from: NodeId, to: NodeId, commit: u64) -> PeerMessage {
        PeerMessage::Raft {
            group,
            message: Message {
                from,
                to,
                term: 1,
                body: MessageBody::Heartbeat {
                    commit,
                    read_seq: 0,
                },
            },
        }
    }

    fn heartbeat(from: NodeId, to: NodeId, commit: u64) -> PeerMessage {
        group_heartbeat(0, from, to, commit)
    }

    fn commit_of(m: &PeerMessage) -> Option<u64> {
        match m {
            PeerMessage::Raft {
                message:
                    Message {
                        body: MessageBody::Heartbeat { commit, .. },
                        ..
                    },
                ..
            } => Some(*commit),
            _ => None,
        }
    }

    fn fast_config() -> TransportConfig {
        TransportConfig {
            heartbeat_interval_ms: 20,
            silence_timeout_ms: 200,
            ..TransportConfig::default()
        }
    }

    fn inbound_config() -> InboundConfig {
        InboundConfig {
            me: 2,
            transport: fast_config(),
            max_frame_bytes: 1 << 20,
            max_connections: 4,
        }
    }

    /// Node 2 listens; returns its address and the messages it receives.
    async fn listening_node() -> (SocketAddr, mpsc::Receiver<PeerMessage>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let server = tokio::spawn(accept_peers(listener, inbound_config(), tx));
        (addr, rx, server)
    }

    async fn recv(rx: &mut mpsc::Receiver<PeerMessage>) -> Option<PeerMessage> {
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
            if let Some(commit) = commit_of(&m).filter(|&c| c >= 1000) {
                commits.push(commit);
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
        let _server = tokio::spawn(accept_peers(listener, inbound_config(), tx));
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

    /// Writes `hello` then `messages` on a raw connection to `addr`; returns the reader half.
    async fn raw_peer(
        addr: SocketAddr,
        hello: PeerFrame,
        messages: Vec<PeerMessage>,
    ) -> tokio::io::ReadHalf<TcpStream> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read_half, mut write_half) = tokio::io::split(stream);
        let hello = encode_frame(&hello, 1024).unwrap();
        write_bytes(&mut write_half, &hello, Duration::from_secs(1))
            .await
            .unwrap();
        let batch = encode_frame(&PeerFrame::Messages(messages), 1024).unwrap();
        let _ = write_bytes(&mut write_half, &batch, Duration::from_secs(1)).await;
        // Keep the write half open: only the node may close this connection.
        std::mem::forget(write_half);
        read_half
    }

    async fn assert_closed_by_node(mut read_half: tokio::io::ReadHalf<TcpStream>) {
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
    }

    #[tokio::test]
    async fn bad_hello_is_refused() {
        let (addr, mut rx, _server) = listening_node().await;
        // Node 0 does not exist; 2 is the listener itself; 3 is not the listener.
        for (from, to) in [(0, 2), (2, 2), (9, 3)] {
            let conn = raw_peer(
                addr,
                PeerFrame::Hello { from, to },
                vec![heartbeat(from, to, 1)],
            )
            .await;
            assert_closed_by_node(conn).await;
        }
        assert!(timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_node_in_no_member_list_may_call_but_only_in_its_own_name() {
        let (addr, mut rx, _server) = listening_node().await;
        let removed = PeerMessage::Removed {
            group: 4,
            from: 9,
            to: 2,
            term: 3,
            membership_index: 17,
        };
        let _open = raw_peer(
            addr,
            PeerFrame::Hello { from: 9, to: 2 },
            vec![group_heartbeat(3, 9, 2, 5), removed.clone()],
        )
        .await;
        assert_eq!(recv(&mut rx).await, Some(group_heartbeat(3, 9, 2, 5)));
        assert_eq!(recv(&mut rx).await, Some(removed));

        // A message not from the caller closes the connection; nothing of it is delivered.
        let forged = raw_peer(
            addr,
            PeerFrame::Hello { from: 9, to: 2 },
            vec![heartbeat(8, 2, 1)],
        )
        .await;
        assert_closed_by_node(forged).await;
        assert!(timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err());
    }

    #[test]
    fn peer_message_accessors() {
        let raft = group_heartbeat(7, 1, 2, 0);
        assert_eq!((raft.from(), raft.to(), raft.group()), (1, 2, 7));
        let removed = PeerMessage::Removed {
            group: 3,
            from: 4,
            to: 5,
            term: 3,
            membership_index: 9,
        };
        assert_eq!((removed.from(), removed.to(), removed.group()), (4, 5, 3));
    }

    /// Sends heartbeats until one arrives (the first are lost while the link connects).
    async fn wait_connected(
        transport: &mut PeerTransport,
        rx: &mut mpsc::Receiver<PeerMessage>,
    ) -> bool {
        for i in 0..100 {
            transport.send(vec![heartbeat(1, 2, i)]);
            if let Ok(Some(_)) = timeout(Duration::from_millis(50), rx.recv()).await {
                sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                return true;
            }
        }
        false
    }

    #[tokio::test]
    async fn peers_are_added_moved_and_removed_at_run_time() {
        let mut transport = PeerTransport::start(1, &BTreeMap::new(), &fast_config(), 1 << 20);
        assert!(transport.peers().is_empty());
        transport.send(vec![heartbeat(1, 2, 0)]);
        assert_eq!(transport.dropped_messages, 1, "unknown peer");

        let (first_addr, mut first_rx, _first) = listening_node().await;
        transport.add_peer(2, first_addr);
        transport.add_peer(1, first_addr); // itself: ignored
        assert_eq!(transport.peers(), vec![2]);
        assert!(wait_connected(&mut transport, &mut first_rx).await);
        transport.add_peer(2, first_addr); // same address: the link stays up
        transport.send(vec![heartbeat(1, 2, 77)]);
        assert_eq!(
            recv(&mut first_rx).await.as_ref().and_then(commit_of),
            Some(77)
        );

        // Node 2 moves: the link follows it and the old address hears nothing more.
        let (second_addr, mut second_rx, _second) = listening_node().await;
        transport.add_peer(2, second_addr);
        assert_eq!(transport.peers(), vec![2]);
        assert!(wait_connected(&mut transport, &mut second_rx).await);
        assert!(first_rx.try_recv().is_err(), "old address still served");

        transport.remove_peer(2);
        assert!(transport.peers().is_empty());
        let dropped = transport.dropped_messages;
        transport.send(vec![heartbeat(1, 2, 88)]);
        assert_eq!(transport.dropped_messages, dropped + 1);
        assert!(
            timeout(Duration::from_millis(200), second_rx.recv())
                .await
                .ok()
                .flatten()
                .is_none(),
            "a removed peer still gets messages"
        );
    }

    async fn read(reader: &mut BufReader<TcpStream>) -> Option<PeerFrame> {
        let frame = read_frame::<_, PeerFrame>(reader, 1 << 20);
        timeout(Duration::from_secs(5), frame)
            .await
            .expect("no frame within 5 s")
            .expect("bad frame")
    }

    #[tokio::test]
    async fn messages_of_all_groups_to_one_peer_share_one_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = [(2, addr)].into_iter().collect();
        let mut transport = PeerTransport::start(1, &peers, &fast_config(), 1 << 20);
        let sent: Vec<PeerMessage> = (0..5).map(|g| group_heartbeat(g, 1, 2, 10)).collect();
        // Queued in one turn, before the link task runs (current-thread runtime).
        transport.send(sent.clone());
        let (stream, _) = timeout(Duration::from_secs(5), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut reader = BufReader::new(stream);
        assert_eq!(
            read(&mut reader).await,
            Some(PeerFrame::Hello { from: 1, to: 2 })
        );
        loop {
            match read(&mut reader).await {
                Some(PeerFrame::Ping) => continue,
                Some(PeerFrame::Messages(batch)) => {
                    assert_eq!(batch, sent, "one frame carries every group's heartbeat");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
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
