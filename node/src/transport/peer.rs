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
//!
//! Inbound slots (`InboundSlots`): a connection whose `Hello` names a current peer of this
//! node (`KnownPeers`, the transport's links) takes that peer's own slot, one per node id,
//! and replaces an older connection of the same id (a restarted member always gets back in).
//! Every other connection (still in its handshake, or from a node id this node does not know
//! yet) is a guest: at most `max_connections` guests are held, and a new connection evicts the
//! oldest guest. Idle strangers therefore can neither lock members out nor each other for long.
//! Without TLS peers are not authenticated: anyone may claim a member's id.
//! With TLS (real builds, `tls` configured) both directions are mutual TLS through
//! `stream::{Acceptor, Connector}`: the caller checks that the callee's certificate names the
//! member dialled, the callee that the caller's certificate names the member its `Hello` claims
//! to be. A refused caller is told why (`PeerFrame::Refused`) before the connection closes, so
//! both sides log the same reason.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use crate::deadline::{timeout, timeout_on, Deadline, Ticker};
use tracing::Instrument;
use tracing::{debug, info, warn};

use super::frame::{
    encode_frame, encode_frame_into, read_frame, read_frame_limited, FrameBudget, FrameError,
    ReadLimits,
};
use super::stream::{member_name, Accepted, Acceptor, Connector, PeerCertificate, Stream};
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
    /// One piece of a shard snapshot streamed from `from` (see server/snapshot_stream.rs).
    SnapshotChunk(SnapshotChunk),
    /// The receiver of a snapshot stream took chunk `seq` (or, `accepted == false`, refused
    /// it: the sender abandons the transfer).
    SnapshotAck {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        transfer: u64,
        seq: u64,
        accepted: bool,
    },
}

/// A chunk of a streamed shard snapshot: `payload` is bincode(`Vec<ChunkRecord>`), `crc` its
/// crc32; the last chunk carries `total_crc`, the crc32 of every payload in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub group: GroupId,
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term when the transfer started.
    pub term: crate::raft::Term,
    /// Identifies one transfer of the sender (a restart begins a new one at seq 0).
    pub transfer: u64,
    pub seq: u64,
    pub meta: crate::raft::SnapshotMeta,
    pub payload: Vec<u8>,
    pub crc: u32,
    pub total_crc: Option<u32>,
}

impl PeerMessage {
    pub fn from(&self) -> NodeId {
        match self {
            PeerMessage::Raft { message, .. } => message.from,
            PeerMessage::Removed { from, .. } | PeerMessage::SnapshotAck { from, .. } => *from,
            PeerMessage::SnapshotChunk(c) => c.from,
        }
    }

    pub fn to(&self) -> NodeId {
        match self {
            PeerMessage::Raft { message, .. } => message.to,
            PeerMessage::Removed { to, .. } | PeerMessage::SnapshotAck { to, .. } => *to,
            PeerMessage::SnapshotChunk(c) => c.to,
        }
    }

    pub fn group(&self) -> GroupId {
        match self {
            PeerMessage::Raft { group, .. }
            | PeerMessage::Removed { group, .. }
            | PeerMessage::SnapshotAck { group, .. } => *group,
            PeerMessage::SnapshotChunk(c) => c.group,
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
    /// The callee's last word before it closes a connection it will not serve (e.g. the
    /// caller's certificate names another member).
    Refused {
        reason: String,
    },
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
    #[error("evicted: {0}")]
    Evicted(&'static str),
    #[error("refused by the peer: {0}")]
    Refused(String),
}

/// The node ids this node has a link to (its current peers), shared by the outbound side,
/// which keeps it up to date, and the accepting side, which reserves each of them a slot.
#[derive(Clone, Debug, Default)]
pub struct KnownPeers(Arc<Mutex<BTreeSet<NodeId>>>);

impl KnownPeers {
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> KnownPeers {
        KnownPeers(Arc::new(Mutex::new(ids.into_iter().collect())))
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.lock().contains(&id)
    }

    fn insert(&self, id: NodeId) {
        self.lock().insert(id);
    }

    fn remove(&self, id: NodeId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<NodeId>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
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
    /// The ids in `links`, for the accepting side.
    known: KnownPeers,
    /// Dials peers: plaintext, or mutual TLS with this node's certificate.
    connector: Connector,
    /// Messages refused because a peer's queue was full or the peer is unknown.
    pub dropped_messages: u64,
    /// Boxed: taken out and put back around every `send` (its RNG state is large).
    #[cfg(any(test, madsim))]
    faults: Option<Box<FaultInjector>>,
}

impl PeerTransport {
    /// Starts one outbound task per peer (every entry of `peers` but `me`).
    pub fn start(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        config: &TransportConfig,
        max_frame_bytes: usize,
    ) -> PeerTransport {
        let plain = Connector::plaintext();
        PeerTransport::start_named(
            me,
            peers,
            &BTreeMap::new(),
            None,
            plain,
            config,
            max_frame_bytes,
        )
    }

    /// As `start`; a peer in `names` is looked up by that name before each connect (its
    /// address in `peers` is the fallback while the name does not resolve); traffic is counted
    /// in `metrics` if given; connections are made by `connector` (TLS or not).
    pub fn start_named(
        me: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        names: &BTreeMap<NodeId, String>,
        metrics: Option<Arc<Metrics>>,
        connector: Connector,
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
            known: KnownPeers::default(),
            connector,
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
            connector: self.connector.clone(),
            config: self.config.clone(),
            max_frame_bytes: self.max_frame_bytes,
        };
        let task = tokio::spawn(link.run(rx).in_current_span());
        info!(peer = id, %addr, "peer added");
        // Replacing a link drops the old one, which stops its task.
        self.links.insert(id, PeerLink { addr, queue, task });
        self.known.insert(id);
    }

    /// Stops sending to `id` (its task ends, its queued messages are discarded).
    pub fn remove_peer(&mut self, id: NodeId) {
        if self.links.remove(&id).is_some() {
            self.known.remove(id);
            info!(peer = id, "peer removed");
        }
    }

    /// The peers' ids as the accepting side sees them (kept up to date by this transport).
    pub fn known_peers(&self) -> KnownPeers {
        self.known.clone()
    }

    /// The peers this transport sends to, in id order.
    pub fn peers(&self) -> Vec<NodeId> {
        self.links.keys().copied().collect()
    }

    /// Simulation/test only: subject outgoing messages to `faults`, deciding with a seeded RNG.
    #[cfg(any(test, madsim))]
    pub fn set_faults(&mut self, faults: super::TransportFaults, rng_seed: u64) {
        use rand::SeedableRng;
        self.faults = Some(Box::new(FaultInjector {
            faults,
            rng: rand::rngs::StdRng::seed_from_u64(rng_seed),
            held: BTreeMap::new(),
        }));
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
            || plan.loses_append(&message)
            || self.rng.random_bool(clamp(plan.drop_probability))
            || plan
                .link_drop_percent
                .get(&link)
                .is_some_and(|&percent| self.rng.random_range(0..100) < percent)
        {
            transport.dropped_messages += 1;
            return;
        }
        if self.rng.random_bool(clamp(plan.duplicate_probability)) {
            self.deliver(transport, &plan, message.clone());
        }
        self.deliver(transport, &plan, message);
    }

    /// Delays, holds back (reorders) or queues one copy of a message.
    fn deliver(
        &mut self,
        transport: &mut PeerTransport,
        plan: &super::FaultPlan,
        message: PeerMessage,
    ) {
        use rand::Rng;
        let delay = match plan.append_delay(&message) {
            Some(delay) => Some(delay),
            None if plan.delay_ms_max > 0
                && self.rng.random_bool(clamp(plan.delay_probability)) =>
            {
                Some(Duration::from_millis(
                    self.rng.random_range(1..=plan.delay_ms_max),
                ))
            }
            None => None,
        };
        if let Some(delay) = delay {
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
    connector: Connector,
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
        // A refusal repeats at every reconnect: logged as a warning when it changes only.
        let mut last_refusal = String::new();
        loop {
            let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms);
            addr = self.current_addr(addr).await;
            match self
                .connector
                .connect(addr, Some(self.peer), connect_timeout)
                .await
            {
                Ok(stream) => {
                    info!(peer = self.peer, %addr, tls = stream.is_tls(), "connected to peer");
                    let started = Instant::now();
                    self.set_connected(1);
                    let result = self.drive(stream, &mut queue).await;
                    self.set_connected(0);
                    match result {
                        Ok(()) => return, // the event loop is gone
                        Err(PeerError::Refused(reason)) => {
                            if reason != last_refusal {
                                warn!(peer = self.peer, %addr, %reason, "peer refused the connection");
                                last_refusal = reason;
                            }
                        }
                        Err(e) => {
                            warn!(peer = self.peer, %addr, error = %e, "peer connection lost")
                        }
                    }
                    if started.elapsed() > backoff_max {
                        backoff = backoff_min;
                    }
                }
                Err(e @ super::stream::ConnectError::Tls { .. }) => {
                    let reason = e.to_string();
                    if reason != last_refusal {
                        warn!(peer = self.peer, %addr, error = %reason, "cannot connect to peer");
                        last_refusal = reason;
                    }
                }
                Err(e) => debug!(peer = self.peer, %addr, error = %e, "connect failed"),
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
        stream: Stream,
        queue: &mut mpsc::Receiver<PeerMessage>,
    ) -> Result<(), PeerError> {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut writer = FrameWriter {
            link: self,
            writer: write_half,
            buf: Vec::new(),
            timeout: Duration::from_millis(self.config.silence_timeout_ms),
        };
        let hello = PeerFrame::Hello {
            from: self.me,
            to: self.peer,
        };
        writer.write(&hello).await?;

        let last_heard = Arc::new(Mutex::new(Instant::now()));
        let mut reader = tokio::spawn(
            read_pongs(read_half, last_heard.clone(), self.max_frame_bytes).in_current_span(),
        );
        let result = self
            .pump(&mut writer, queue, &last_heard, &mut reader)
            .await;
        reader.abort();
        result
    }

    async fn pump<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut FrameWriter<'_, W>,
        queue: &mut mpsc::Receiver<PeerMessage>,
        last_heard: &Mutex<Instant>,
        reader: &mut JoinHandle<Result<(), PeerError>>,
    ) -> Result<(), PeerError> {
        let silence = Duration::from_millis(self.config.silence_timeout_ms);
        let mut ping = Ticker::new(Duration::from_millis(self.config.heartbeat_interval_ms));
        // Reused from one batch to the next (its capacity stays).
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                first = queue.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    batch.push(first);
                    while batch.len() < self.config.max_batch_messages {
                        match queue.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    batch = writer.write_batch(batch).await?;
                    batch.clear();
                }
                // The reader ends only on an error (a refusal, a closed connection).
                ended = &mut *reader => {
                    return Err(match ended {
                        Ok(Err(e)) => e,
                        _ => PeerError::Closed,
                    });
                }
                _ = ping.tick() => {
                    let heard = *last_heard.lock().unwrap_or_else(|p| p.into_inner());
                    if heard.elapsed() > silence {
                        return Err(PeerError::Silent { silence_ms: self.config.silence_timeout_ms });
                    }
                    writer.write(&PeerFrame::Ping).await?;
                }
            }
        }
    }
}

/// The writing half of an outbound connection, with one encode buffer for all its frames.
struct FrameWriter<'a, W> {
    link: &'a OutboundLink,
    writer: W,
    buf: Vec<u8>,
    /// A frame not written within this fails the connection (`silence_timeout_ms`).
    timeout: Duration,
}

impl<W: AsyncWrite + Unpin> FrameWriter<'_, W> {
    /// Writes a batch as one frame; a batch too large for one frame is split, and a single
    /// message too large for any frame is dropped with an error (the limit is misconfigured).
    /// Gives the batch back (its messages are sent or dropped; the caller reuses the vector).
    async fn write_batch(
        &mut self,
        batch: Vec<PeerMessage>,
    ) -> Result<Vec<PeerMessage>, PeerError> {
        let frame = PeerFrame::Messages(batch);
        let encoded = encode_frame_into(&frame, self.link.max_frame_bytes, &mut self.buf);
        let PeerFrame::Messages(mut batch) = frame else {
            unreachable!("built as Messages above")
        };
        match encoded {
            Ok(()) => {
                self.send_buf().await?;
                Ok(batch)
            }
            Err(FrameError::TooLarge { .. }) => {
                if batch.len() == 1 {
                    warn!(
                        peer = self.link.peer,
                        "a single Raft message exceeds max_peer_frame_bytes: dropped"
                    );
                    return Ok(batch);
                }
                let second = batch.split_off(batch.len() / 2);
                let first = Box::pin(self.write_batch(batch)).await?;
                Box::pin(self.write_batch(second)).await?;
                Ok(first)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn write(&mut self, frame: &PeerFrame) -> Result<(), PeerError> {
        encode_frame_into(frame, self.link.max_frame_bytes, &mut self.buf)?;
        self.send_buf().await
    }

    /// Writes the encoded frame in `buf`.
    async fn send_buf(&mut self) -> Result<(), PeerError> {
        write_bytes(&mut self.writer, &self.buf, self.timeout).await?;
        self.link.count_sent(self.buf.len());
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
            Some(PeerFrame::Refused { reason }) => return Err(PeerError::Refused(reason)),
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
    /// Guest connections held at once (see `InboundSlots`); members' slots come on top.
    pub max_connections: usize,
    /// Connections in their handshake held at once (see `InboundSlots`).
    pub max_handshakes: usize,
    /// Who gets a member slot.
    pub members: KnownPeers,
    /// Bytes of incomplete peer frames held over all connections (`frame::FrameBudget`).
    pub budget: FrameBudget,
    /// Plaintext, or mutual TLS (a caller must present a member's certificate).
    pub acceptor: Acceptor,
}

/// Who holds the accepting side's connection slots, in three pools that never take from
/// each other: connections in their handshake (at most `max_handshakes`, unauthenticated),
/// one slot per known peer id (taken only once the connection proved it is that member),
/// and at most `max_guests` connections that finished their handshake as a node id this node
/// does not know. In the two bounded pools the oldest is evicted first. A slot is held
/// through the sending half of a oneshot: dropping it tells the connection to close.
struct InboundSlots {
    max_handshakes: usize,
    max_guests: usize,
    next_seq: u64,
    handshaking: BTreeMap<u64, oneshot::Sender<()>>,
    guests: BTreeMap<u64, oneshot::Sender<()>>,
    members: BTreeMap<NodeId, (u64, oneshot::Sender<()>)>,
}

impl InboundSlots {
    fn new(max_handshakes: usize, max_guests: usize) -> InboundSlots {
        InboundSlots {
            max_handshakes: max_handshakes.max(1),
            max_guests: max_guests.max(1),
            next_seq: 0,
            handshaking: BTreeMap::new(),
            guests: BTreeMap::new(),
            members: BTreeMap::new(),
        }
    }

    /// A new connection's handshake slot (its sequence number and eviction notice); the
    /// oldest handshake is evicted when all are taken. Returns whether one was.
    fn admit(&mut self) -> (u64, oneshot::Receiver<()>, bool) {
        let evicted =
            self.handshaking.len() >= self.max_handshakes && self.handshaking.pop_first().is_some();
        self.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        self.handshaking.insert(self.next_seq, tx);
        (self.next_seq, rx, evicted)
    }

    /// Connection `seq` finished its handshake as node `id`: a member takes `id`'s slot and
    /// the connection that held it, if any, is told to close (the newest one wins: a member
    /// that restarted must get back in at once); anyone else becomes a guest, the oldest
    /// guest evicted when all are taken. Returns whether a connection was displaced.
    fn settle(&mut self, seq: u64, id: NodeId, member: bool) -> bool {
        let Some(tx) = self.handshaking.remove(&seq) else {
            return false;
        };
        if member {
            return self.members.insert(id, (seq, tx)).is_some();
        }
        let evicted = self.guests.len() >= self.max_guests && self.guests.pop_first().is_some();
        self.guests.insert(seq, tx);
        evicted
    }

    /// Connection `seq` ended: frees its slot (unless someone took it already).
    fn release(&mut self, seq: u64) {
        self.handshaking.remove(&seq);
        self.guests.remove(&seq);
        self.members.retain(|_, (held, _)| *held != seq);
    }
}

type SharedSlots = Arc<Mutex<InboundSlots>>;

fn lock_slots(slots: &SharedSlots) -> std::sync::MutexGuard<'_, InboundSlots> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts peer connections forever, delivering their messages to `inbox` (with back-pressure).
pub async fn accept_peers(
    listener: TcpListener,
    config: InboundConfig,
    inbox: mpsc::Sender<PeerMessage>,
) {
    let slots: SharedSlots = Arc::new(Mutex::new(InboundSlots::new(
        config.max_handshakes,
        config.max_connections,
    )));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (seq, evicted, evicted_one) = lock_slots(&slots).admit();
        if evicted_one {
            warn!(%addr, max_handshakes = config.max_handshakes, "peer handshake slots full: the oldest connection still in its handshake is evicted");
        }
        let config = config.clone();
        let inbox = inbox.clone();
        let slots = slots.clone();
        tokio::spawn(
            async move {
                let served = tokio::select! {
                    result = handshake_and_serve(stream, &config, &inbox, &slots, seq) => result,
                    _ = evicted => Err(PeerError::Evicted("its slot was given to a newer connection")),
                };
                lock_slots(&slots).release(seq);
                match served {
                    Ok(()) => debug!(%addr, "peer connection closed"),
                    Err(e) => warn!(%addr, error = %e, "peer connection closed with error"),
                }
            }
            .in_current_span(),
        );
    }
}

async fn handshake_and_serve(
    tcp: TcpStream,
    config: &InboundConfig,
    inbox: &mpsc::Sender<PeerMessage>,
    slots: &SharedSlots,
    seq: u64,
) -> Result<(), PeerError> {
    let handshake_ms = config.transport.handshake_timeout_ms;
    let accepted = config
        .acceptor
        .accept(tcp, handshake_ms)
        .await
        .map_err(|e| PeerError::Protocol(e.to_string()))?;
    match accepted {
        Accepted::Ready {
            stream,
            client_cert,
        } => serve_inbound(stream, client_cert, config, inbox, slots, seq).await,
        Accepted::Plaintext(mut stream) => {
            let reason = format!(
                "node {} requires TLS on its peer port (configure tls.cert_file, tls.key_file and tls.ca_file)",
                config.me
            );
            let refusal = encode_frame(
                &PeerFrame::Refused {
                    reason: reason.clone(),
                },
                config.max_frame_bytes,
            )?;
            let _ = write_bytes(&mut stream, &refusal, Duration::from_millis(handshake_ms)).await;
            Err(PeerError::Protocol(format!(
                "plaintext caller refused: {reason}"
            )))
        }
    }
}

/// Whether the caller may speak as `from`: always on a plaintext port, else only with a
/// certificate that names member `from`.
fn check_identity(
    acceptor: &Acceptor,
    client_cert: Option<&PeerCertificate>,
    from: NodeId,
) -> Result<(), String> {
    if !acceptor.is_tls() {
        return Ok(());
    }
    match client_cert {
        Some(cert) if cert.names_member(from) => Ok(()),
        Some(_) => Err(format!(
            "the caller says it is node {from} but its certificate does not name {}",
            member_name(from)
        )),
        None => Err(format!("node {from} presented no certificate")),
    }
}

async fn serve_inbound(
    stream: Stream,
    client_cert: Option<PeerCertificate>,
    config: &InboundConfig,
    inbox: &mpsc::Sender<PeerMessage>,
    slots: &SharedSlots,
    seq: u64,
) -> Result<(), PeerError> {
    let (read_half, mut write_half) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    let max = config.max_frame_bytes;
    let limits = ReadLimits {
        max_frame_bytes: max,
        budget: Some(&config.budget),
        payload_timeout: Some(Duration::from_millis(
            config.transport.frame_read_timeout_ms,
        )),
    };
    let handshake = Duration::from_millis(config.transport.handshake_timeout_ms);
    let first = timeout(
        handshake,
        read_frame_limited::<_, PeerFrame>(&mut reader, &limits),
    )
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
    if let Err(reason) = check_identity(&config.acceptor, client_cert.as_ref(), from) {
        let refusal = encode_frame(
            &PeerFrame::Refused {
                reason: reason.clone(),
            },
            max,
        )?;
        let _ = write_bytes(&mut write_half, &refusal, handshake).await;
        return Err(PeerError::Protocol(format!("refused: {reason}")));
    }
    let member = config.members.contains(from);
    let displaced = lock_slots(slots).settle(seq, from, member);
    if member {
        if displaced {
            info!(
                peer = from,
                "a new connection from this peer replaces its older one"
            );
        }
    } else {
        if displaced {
            warn!(
                peer = from,
                max_connections = config.max_connections,
                "peer guest slots full: the oldest guest connection is evicted"
            );
        }
        debug!(
            peer = from,
            "connection from a node id not (yet) known here: held as a guest"
        );
    }
    debug!(peer = from, "peer connected");
    let silence = Duration::from_millis(config.transport.silence_timeout_ms);
    // One deadline for the connection: each read restarts the wait, but the timer armed for
    // an earlier read is kept until it fires (one timer per silence period, not per frame).
    let mut silent_at = Deadline::after(silence);
    loop {
        let frame = timeout_on(
            &mut silent_at,
            silence,
            read_frame_limited::<_, PeerFrame>(&mut reader, &limits),
        )
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
        PeerFrame::Refused { .. } => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::MessageBody;
    use tokio::net::TcpStream;

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
            max_handshakes: 4,
            members: KnownPeers::new([1]),
            budget: FrameBudget::new(4 << 20),
            acceptor: Acceptor::plaintext(),
        }
    }

    /// Node 2 listens; returns its address and the messages it receives.
    async fn listening_node() -> (SocketAddr, mpsc::Receiver<PeerMessage>, JoinHandle<()>) {
        listening_node_with(inbound_config()).await
    }

    async fn listening_node_with(
        config: InboundConfig,
    ) -> (SocketAddr, mpsc::Receiver<PeerMessage>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let server = tokio::spawn(accept_peers(listener, config, tx));
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

    /// Issue 16: idle connections from unknown node ids filled `max_peer_connections`, and a
    /// restarted member could not get back in. Members have their own slot; strangers are
    /// guests, the oldest evicted first.
    #[tokio::test]
    async fn strangers_cannot_lock_a_member_out() {
        // Silent connections stay open for the whole test unless evicted.
        let mut config = inbound_config();
        config.transport.silence_timeout_ms = 30_000;
        let (addr, mut rx, _server) = listening_node_with(config).await;
        let max_guests = inbound_config().max_connections;
        let mut strangers = Vec::new();
        for i in 0..(2 * max_guests as u64) {
            let from = 100 + i;
            strangers.push(raw_peer(addr, PeerFrame::Hello { from, to: 2 }, vec![]).await);
        }
        // The member (node 1) gets in and is heard.
        let _member = raw_peer(
            addr,
            PeerFrame::Hello { from: 1, to: 2 },
            vec![heartbeat(1, 2, 42)],
        )
        .await;
        assert_eq!(recv(&mut rx).await, Some(heartbeat(1, 2, 42)));
        // The oldest strangers were evicted to make room for the newer ones.
        let oldest = strangers.remove(0);
        assert_closed_by_node(oldest).await;
        // A new connection of the same member replaces its older one.
        let again = raw_peer(
            addr,
            PeerFrame::Hello { from: 1, to: 2 },
            vec![heartbeat(1, 2, 43)],
        )
        .await;
        assert_eq!(recv(&mut rx).await, Some(heartbeat(1, 2, 43)));
        assert_closed_by_node(_member).await;
        drop(again);
    }

    #[test]
    fn inbound_slots_keep_one_per_member_and_evict_the_oldest_guest() {
        let mut slots = InboundSlots::new(8, 2);
        let (a, _a_rx, evicted) = slots.admit();
        assert!(!evicted);
        let (b, mut b_rx, _) = slots.admit();
        let (c, _c_rx, _) = slots.admit();
        let (d, _d_rx, _) = slots.admit();
        assert!(!slots.settle(a, 1, true), "a takes member 1's free slot");
        assert!(!slots.settle(b, 100, false), "b is a guest");
        assert!(
            !slots.settle(c, 101, false),
            "c is a guest; a member's slot is not a guest's"
        );
        assert!(
            slots.settle(d, 102, false),
            "b, the oldest guest, made room for d"
        );
        assert!(matches!(
            b_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        let (e, _e_rx, _) = slots.admit();
        assert!(slots.settle(e, 1, true), "e replaces a in member 1's slot");
        slots.release(a);
        assert_eq!(slots.members.get(&1).map(|(seq, _)| *seq), Some(e));
    }

    /// Issue 16: a connection took a guest slot before its (TLS) handshake, so a flood of
    /// handshakes evicted authenticated connections. Handshakes now have their own pool: a
    /// flood of them evicts only other handshakes, never a member or a guest.
    #[test]
    fn handshakes_never_displace_members_or_guests() {
        let mut slots = InboundSlots::new(2, 2);
        let (member, mut member_rx, _) = slots.admit();
        let (guest, mut guest_rx, _) = slots.admit();
        assert!(!slots.settle(member, 1, true));
        assert!(!slots.settle(guest, 100, false));
        let mut flood = Vec::new();
        let mut evictions = 0;
        for _ in 0..1_000 {
            let (seq, rx, evicted) = slots.admit();
            evictions += usize::from(evicted);
            flood.push((seq, rx));
        }
        assert_eq!(
            evictions,
            1_000 - 2,
            "all but the newest two handshakes were evicted"
        );
        assert_eq!(slots.handshaking.len(), 2);
        assert!(matches!(
            member_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert!(matches!(
            guest_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        // An evicted handshake that finishes late gets no slot at all.
        let (oldest, _) = &flood[0];
        assert!(!slots.settle(*oldest, 1, true));
        assert_eq!(slots.members.get(&1).map(|(seq, _)| *seq), Some(member));
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
