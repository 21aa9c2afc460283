//! The simulated servers and what has happened to each (simulation builds only): started,
//! still a spare, asked to leave, stopped by itself after its removal, killed for good.
//!
//! Why: once nodes join, leave and die for good, every fault that restarts a node must ask
//! first whether the node may come back; one shared record (`Fleet`) answers it for the
//! nemesis and the fault tasks it spawns (crash storms, vote strikes), so none of them revives a
//! node that left or was killed for good. The membership faults themselves (`join`, `leave`,
//! `kill_forever`) and the end-of-run replication check (`await_convergence`) live here too.
//!
//! Invariants: every server exists in the simulated network from the start (spares included,
//! so partitions cut their links too); a spare's init does nothing until `join` gives it a
//! config; a `Killed` node and a node whose server ended by itself are never restarted; a
//! server's disk outlives its incarnations (every real start after the first begins with a power
//! loss); decisions depend only on this record and the cluster's answers, never on wall time or
//! hash order.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::Handle;
use madsim::task::NodeId as SimNodeId;
use node::client::{Client, ClientOptions};
use node::config::{MemberConfig, ServerConfig};
use node::meta::{ClusterView, MetaCommand, MetaResult};
use node::raft::NodeId;
use node::server::Server;
use node::sim_hooks::ClockFaults;
use node::storage::{CrashMode, Disk};
use tokio::time::Instant;

use crate::cluster::Trace;
use crate::convergence::{self, replication_problems};
use crate::disk::{DiskFaults, SimDisk};

pub const CLIENT_PORT: u16 = 7379;
pub const PEER_PORT: u16 = 7380;
/// A server that fails to start is retried this many times, this far apart.
pub const SERVER_START_ATTEMPTS: u32 = 50;
pub const SERVER_START_RETRY_MS: u64 = 200;
/// A joining server stops with an error containing this when the cluster refuses it;
/// `supervise_joiner` restarts it (kill + restart, which frees its ports) within `JOIN_RETRY_MS`.
const JOIN_REFUSED: &str = "join refused";
pub const JOIN_RETRY_MS: u64 = 1_000;
/// How long the harness waits for one node's answer when it polls the cluster's state.
pub const POLL_REQUEST_TIMEOUT_MS: u64 = 300;
/// Pause between two polls of the end-of-run replication check.
pub const CONVERGENCE_POLL_MS: u64 = 500;
/// Problems quoted in a failed replication check's verdict.
const PROBLEMS_QUOTED_MAX: usize = 4;

pub fn server_ip(index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, index as u8 + 1))
}

pub fn member_config(index: u32) -> MemberConfig {
    MemberConfig {
        id: u64::from(index) + 1,
        peer_addr: SocketAddr::new(server_ip(index), PEER_PORT),
        client_addr: SocketAddr::new(server_ip(index), CLIENT_PORT),
        zone: None,
    }
}

/// Where a server is in its life, as the harness made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    /// Exists in the network, never started.
    Spare,
    /// Started (a bootstrap member, or a spare that was told to join).
    Running,
    /// Its admin `Leave` was sent; it keeps serving until its server ends by itself.
    Leaving,
    /// Killed and never restarted.
    Killed,
}

struct Slot {
    sim_id: SimNodeId,
    client_addr: SocketAddr,
    disk_faults: DiskFaults,
    /// The server's clock as the nemesis bends it (survives restarts, like hardware).
    clock: ClockFaults,
    /// What the next start of this server runs; None: a spare that must not start yet.
    config: Arc<Mutex<Option<ServerConfig>>>,
    /// A spare's config until `join` starts it.
    spare_config: Option<ServerConfig>,
    /// Set when the server returned by itself (removed from the cluster after leaving).
    finished: Arc<AtomicBool>,
    /// Set when the server stopped because the cluster refused its join.
    join_refused: Arc<AtomicBool>,
    life: Life,
}

/// Every server of a run (index i = node id i + 1), shared by the nemesis and its tasks.
#[derive(Clone)]
pub struct Fleet {
    slots: Arc<Mutex<Vec<Slot>>>,
    replication_factor: usize,
}

impl Fleet {
    /// Creates every server (`configs[i]` for server i, and whether it is a spare) on its own
    /// simulated node with its own disk; the non-spares start at once.
    pub fn create(
        configs: Vec<(ServerConfig, bool)>,
        replication_factor: usize,
        seed: u64,
    ) -> Fleet {
        let handle = Handle::current();
        let mut slots = Vec::new();
        for (i, (config, spare)) in configs.into_iter().enumerate() {
            let index = i as u32;
            let disk = SimDisk::new(
                seed.wrapping_mul(1000).wrapping_add(u64::from(index)),
                config.sim.disk_stall.clone(),
            );
            let clock = config.sim.clock.clone();
            let (life, config, spare_config) = if spare {
                (Life::Spare, None, Some(config))
            } else {
                (Life::Running, Some(config), None)
            };
            let config = Arc::new(Mutex::new(config));
            let finished = Arc::new(AtomicBool::new(false));
            let join_refused = Arc::new(AtomicBool::new(false));
            let init = server_init(
                disk.clone(),
                config.clone(),
                finished.clone(),
                join_refused.clone(),
            );
            let node = handle
                .create_node()
                .name(format!("n{}", i + 1))
                .ip(server_ip(index))
                .init(init)
                .build();
            slots.push(Slot {
                sim_id: node.id(),
                client_addr: member_config(index).client_addr,
                disk_faults: disk.faults(),
                clock,
                config,
                spare_config,
                finished,
                join_refused,
                life,
            });
        }
        Fleet {
            slots: Arc::new(Mutex::new(slots)),
            replication_factor,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // Plain data: a panic while holding the lock cannot leave it half-updated.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> u32 {
        self.lock().len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The simulated node of server `index` (`index` modulo the number of servers).
    pub fn sim_id(&self, index: u32) -> SimNodeId {
        let slots = self.lock();
        slots[index as usize % slots.len()].sim_id
    }

    /// All servers' simulated nodes, by index.
    pub fn sim_ids(&self) -> Vec<SimNodeId> {
        self.lock().iter().map(|s| s.sim_id).collect()
    }

    /// Every server's client address (spares and departed ones included), by index.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|s| s.client_addr).collect()
    }

    pub fn disk_faults(&self, index: u32) -> Option<DiskFaults> {
        self.lock()
            .get(index as usize)
            .map(|s| s.disk_faults.clone())
    }

    pub fn clock(&self, index: u32) -> Option<ClockFaults> {
        self.lock().get(index as usize).map(|s| s.clock.clone())
    }

    pub fn life(&self, index: u32) -> Option<Life> {
        self.lock().get(index as usize).map(|s| s.life)
    }

    fn slot_up(slot: &Slot) -> bool {
        matches!(slot.life, Life::Running | Life::Leaving) && !slot.finished.load(Ordering::SeqCst)
    }

    /// Started, not killed for good, and its server has not ended by itself.
    pub fn is_up(&self, index: u32) -> bool {
        self.lock().get(index as usize).is_some_and(Fleet::slot_up)
    }

    /// Indexes of the servers that are up.
    pub fn up(&self) -> Vec<u32> {
        let slots = self.lock();
        (0..slots.len() as u32)
            .filter(|&i| Fleet::slot_up(&slots[i as usize]))
            .collect()
    }

    /// Up and not asked to leave: the members that hold replicas.
    pub fn active(&self) -> Vec<u32> {
        let slots = self.lock();
        (0..slots.len() as u32)
            .filter(|&i| {
                let slot = &slots[i as usize];
                slot.life == Life::Running && Fleet::slot_up(slot)
            })
            .collect()
    }

    /// The first of `candidates` at or after `from` in index order, wrapping.
    fn next_of(candidates: &[u32], from: u32) -> Option<u32> {
        candidates
            .iter()
            .copied()
            .find(|&i| i >= from)
            .or_else(|| candidates.first().copied())
    }

    /// A fault planned for server `from` hits the next server that is up instead (None: none).
    pub fn pick_up(&self, from: u32) -> Option<u32> {
        Fleet::next_of(&self.up(), from)
    }

    /// Kills server `index` (it may come back: see `restart`).
    pub fn kill(&self, handle: &Handle, index: u32) {
        handle.kill(self.sim_id(index));
    }

    /// Restarts server `index` (running or killed) unless it must stay down (spare, killed for
    /// good, removed). madsim's `restart` alone does not release the old incarnation's sockets
    /// (its drop guards skip a killed node), so the new incarnation could never bind its ports
    /// again; `kill` first clears them. Returns whether it restarted.
    pub fn restart(&self, handle: &Handle, index: u32) -> bool {
        if !self.is_up(index) {
            return false;
        }
        let id = self.sim_id(index);
        handle.kill(id);
        handle.restart(id);
        true
    }

    /// The `Join` fault: starts the lowest spare with `join` = the client addresses of the
    /// servers up now. Returns its index, or None when no spare is left.
    pub(crate) fn join(&self, handle: &Handle, trace: &Trace) -> Option<u32> {
        let up_addrs: Vec<SocketAddr> = {
            let slots = self.lock();
            slots
                .iter()
                .filter(|s| Fleet::slot_up(s))
                .map(|s| s.client_addr)
                .collect()
        };
        let (index, id) = {
            let mut slots = self.lock();
            let index = slots.iter().position(|s| s.life == Life::Spare)?;
            let slot = &mut slots[index];
            let mut config = slot.spare_config.take()?;
            config.join = up_addrs;
            *slot.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(config);
            slot.life = Life::Running;
            (index as u32, slot.sim_id)
        };
        handle.kill(id);
        handle.restart(id);
        tokio::spawn(supervise_joiner(self.clone(), index, trace.clone()));
        Some(index)
    }

    /// The `Leave` fault: picks the next active server from `from` and marks it `Leaving`,
    /// unless fewer than `replication_factor` active servers would stay. Returns its index;
    /// `send_leave` then asks the cluster.
    pub fn begin_leave(&self, from: u32) -> Result<u32, String> {
        let active = self.active();
        if active.len() <= self.replication_factor {
            return Err(format!(
                "only {} active nodes (replication factor {})",
                active.len(),
                self.replication_factor
            ));
        }
        let index = Fleet::next_of(&active, from).ok_or("no active node")?;
        if let Some(slot) = self.lock().get_mut(index as usize) {
            slot.life = Life::Leaving;
        }
        Ok(index)
    }

    /// After a definite refusal of a leave, the node counts as active again.
    pub fn leave_refused(&self, index: u32) {
        if let Some(slot) = self.lock().get_mut(index as usize) {
            if slot.life == Life::Leaving {
                slot.life = Life::Running;
            }
        }
    }

    /// The `KillForever` fault: picks the next active server from `from`, unless fewer than
    /// `replication_factor` active servers would stay or an earlier kill is not repaired yet
    /// (all up servers must answer, and none may report a killed node as a voter of any group:
    /// a second permanent loss in one group of three would lose it). Kills it for good.
    pub async fn kill_forever(
        &self,
        handle: &Handle,
        from: u32,
        poller: &mut Client,
    ) -> Result<u32, String> {
        let active = self.active();
        if active.len() <= self.replication_factor {
            return Err(format!(
                "only {} active nodes (replication factor {})",
                active.len(),
                self.replication_factor
            ));
        }
        let killed = self.state().killed;
        if !killed.is_empty() {
            let (views, silent) = self.gather_views(poller).await;
            if !silent.is_empty() {
                return Err(format!(
                    "an earlier kill may not be repaired: n{silent:?} did not answer"
                ));
            }
            let stale = convergence::voters_among(&views, &killed);
            if !stale.is_empty() {
                return Err(format!(
                    "an earlier kill is not repaired: (node, group) voters {stale:?}"
                ));
            }
        }
        let index = Fleet::next_of(&self.active(), from).ok_or("no active node")?;
        if let Some(slot) = self.lock().get_mut(index as usize) {
            slot.life = Life::Killed;
        }
        self.kill(handle, index);
        Ok(index)
    }

    /// What the convergence check needs to know.
    pub fn state(&self) -> convergence::Fleet {
        let slots = self.lock();
        let mut state = convergence::Fleet::default();
        for (i, slot) in slots.iter().enumerate() {
            let id = i as NodeId + 1;
            if slot.life == Life::Killed {
                state.killed.insert(id);
            } else if slot.finished.load(Ordering::SeqCst) {
                state.finished.insert(id);
            } else if Fleet::slot_up(slot) {
                state.running.insert(id);
            }
        }
        state
    }

    /// Every up server's view of the cluster, and the ids of those that did not answer.
    pub async fn gather_views(&self, poller: &mut Client) -> (Vec<ClusterView>, BTreeSet<NodeId>) {
        let mut views = Vec::new();
        let mut silent = BTreeSet::new();
        let targets: Vec<(NodeId, SocketAddr)> = {
            let slots = self.lock();
            (0..slots.len())
                .filter(|&i| Fleet::slot_up(&slots[i]))
                .map(|i| (i as NodeId + 1, slots[i].client_addr))
                .collect()
        };
        for (id, addr) in targets {
            let answer = tokio::time::timeout(
                Duration::from_millis(POLL_REQUEST_TIMEOUT_MS),
                poller.node_cluster_info(addr),
            )
            .await;
            match answer {
                Ok(Ok(view)) => views.push(view),
                _ => {
                    silent.insert(id);
                }
            }
        }
        (views, silent)
    }
}

/// The init of server node `index`: a spare (no config yet) does nothing; otherwise the server
/// runs, every start after the first beginning with a power loss of its disk.
fn server_init(
    disk: SimDisk,
    config: Arc<Mutex<Option<ServerConfig>>>,
    finished: Arc<AtomicBool>,
    join_refused: Arc<AtomicBool>,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync + 'static
{
    let starts = Arc::new(AtomicU64::new(0));
    move || {
        let config = config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let disk = disk.clone();
        let finished = finished.clone();
        let join_refused = join_refused.clone();
        let starts = starts.clone();
        Box::pin(async move {
            let Some(config) = config else { return };
            let start = starts.fetch_add(1, Ordering::SeqCst);
            if start > 0 {
                let mode = if start.is_multiple_of(2) {
                    CrashMode::Torn
                } else {
                    CrashMode::Drop
                };
                disk.crash(mode);
            }
            let disk: Arc<dyn Disk> = Arc::new(disk);
            // Like a process supervisor: a node that cannot start (e.g. its port is still held
            // by the killed incarnation) is retried; a joining node whose join was refused
            // (e.g. asked while the metadata group was still electing its first leader) is
            // restarted by `supervise_joiner`.
            for attempt in 1..=SERVER_START_ATTEMPTS {
                match Server::new(config.clone(), disk.clone()).await {
                    Ok(server) => {
                        match server.run(std::future::pending::<()>()).await {
                            // The server ends by itself only once the cluster removed it.
                            Ok(()) => {
                                tracing::info!(target: "nemesis", "server stopped by itself");
                                finished.store(true, Ordering::SeqCst);
                            }
                            Err(e) if e.to_string().contains(JOIN_REFUSED) => {
                                tracing::warn!("join refused: {e}");
                                join_refused.store(true, Ordering::SeqCst);
                            }
                            Err(e) => tracing::error!("server stopped: {e}"),
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::error!("server failed to start (attempt {attempt}): {e}");
                        tokio::time::sleep(Duration::from_millis(SERVER_START_RETRY_MS)).await;
                    }
                }
            }
        })
    }
}

/// Watches a joined server for as long as it is up: whenever its join was refused, it is
/// started again (the operator's retry).
async fn supervise_joiner(fleet: Fleet, index: u32, trace: Trace) {
    let handle = Handle::current();
    loop {
        tokio::time::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
        let refused = {
            let slots = fleet.lock();
            let Some(slot) = slots.get(index as usize) else {
                return;
            };
            if !Fleet::slot_up(slot) {
                return;
            }
            slot.join_refused.swap(false, Ordering::SeqCst)
        };
        if refused {
            fleet.restart(&handle, index);
            trace.log(format!(
                "n{}: its join was refused; started again",
                index + 1
            ));
        }
    }
}

/// Sends the admin `Leave` of server `index` (node id `index + 1`) and logs the answer; a
/// definite refusal makes the node active again in the fleet's record.
pub(crate) async fn send_leave(fleet: Fleet, index: u32, mut admin: Client, trace: Trace) {
    let id = NodeId::from(index) + 1;
    match admin.admin(MetaCommand::Leave(id)).await {
        Ok(MetaResult::Applied { epoch }) => {
            trace.log(format!("leave n{id}: applied (map epoch {epoch})"));
        }
        Ok(MetaResult::Rejected { reason }) => {
            fleet.leave_refused(index);
            trace.log(format!("leave n{id}: rejected: {reason}"));
        }
        // Maybe applied: the node stays `Leaving` (its server ends if the leave went through).
        Err(e) => trace.log(format!("leave n{id}: no answer: {e}")),
    }
}

/// A client the harness uses for polling and admin commands (short timeouts, seeded).
pub fn harness_client(endpoints: Vec<SocketAddr>, seed: u64) -> Client {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(POLL_REQUEST_TIMEOUT_MS * 3),
        rng_seed: Some(seed),
        ..ClientOptions::default()
    };
    match Client::new(endpoints, options) {
        Ok(client) => client,
        Err(e) => panic!("harness client: {e}"),
    }
}

/// The end-of-run replication check: polls every up server until `replication_problems` finds
/// none, or `bound` has passed (then returns the problems of the last poll).
pub(crate) async fn await_convergence(
    fleet: &Fleet,
    bound: Duration,
    trace: &Trace,
) -> Option<String> {
    let started = Instant::now();
    let deadline = started + bound;
    let mut poller = harness_client(fleet.client_addrs(), 0xc0_4e76);
    loop {
        let state = fleet.state();
        let (views, silent) = fleet.gather_views(&mut poller).await;
        let mut problems = replication_problems(&views, &state);
        problems.extend(silent.iter().map(|id| format!("n{id} (up) did not answer")));
        if problems.is_empty() {
            trace.log(format!(
                "replication restored {:.1} s after the check started",
                started.elapsed().as_secs_f64()
            ));
            return None;
        }
        if Instant::now() >= deadline {
            let count = problems.len();
            problems.truncate(PROBLEMS_QUOTED_MAX);
            let detail = format!(
                "after {} s: {count} problems: {}",
                bound.as_secs(),
                problems.join("; ")
            );
            trace.log(format!("replication NOT restored {detail}"));
            return Some(detail);
        }
        tokio::time::sleep(Duration::from_millis(CONVERGENCE_POLL_MS)).await;
    }
}
