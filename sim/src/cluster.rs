//! The madsim cluster harness (simulation builds only): N quorumkv servers running the real
//! node runtime on `SimDisk`s, client nodes running workloads through the real client library,
//! and a nemesis node executing the scenario's fault schedule. Everything is a function of the
//! scenario (its seed included).
//!
//! Invariants: no node state lives outside the init closures except the disks and fault
//! switches (which survive restarts, like hardware); every (re)start of a server begins with a
//! power loss of its disk (pending writes dropped, or torn on every other restart); every fault
//! is healed by its end time and all are healed after the schedule, so the final
//! `final_heal_ms` of the run is fault-free and liveness is checked there; the checker runs
//! after the simulation returns (it may use OS threads and real time).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, Runtime};
use madsim::task::NodeId as SimNodeId;
use node::bugs::PlantedBugs;
use node::client::{Client, ClientOptions};
use node::config::{MemberConfig, ServerConfig};
use node::meta::GroupId;
use node::raft::Role;
use node::server::ProtocolEvent;
use node::sim_hooks::{Buggify, SimHooks};
use node::transport::{FaultPlan, TransportFaults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use workloads::remote::ClientStore;
use workloads::{ClientStats, Recorder, WorkloadClient};

use crate::fleet::{await_convergence, harness_client, member_config, send_leave, Fleet};
use crate::nemesis::{Fault, ScheduledFault, Target};
use crate::report::{judge, RunReport, RunVerdict};
use crate::safety::{SafetyMonitor, StrikeCue};
use crate::scenario::Scenario;

pub use crate::fleet::{CLIENT_PORT, PEER_PORT};
/// Per-attempt and per-operation client timeouts inside the simulation.
pub const CLIENT_REQUEST_TIMEOUT_MS: u64 = 1_000;
pub const CLIENT_OPERATION_TIMEOUT_MS: u64 = 4_000;
const CLIENTS_PER_SUBNET: u32 = 250;
/// A liveness failure names at most this many clients.
const STUCK_CLIENTS_NAMED_MAX: usize = 8;
/// Extra simulated time allowed beyond the scenario before madsim aborts the run as hung.
pub const TIME_LIMIT_SLACK_S: u64 = 600;

/// Client addresses: 10.0.2.x for the first `CLIENTS_PER_SUBNET`, then 10.1.y.x (the
/// benchmark runs hundreds of clients).
fn client_ip(index: u32) -> IpAddr {
    let (subnet, host) = (
        index / CLIENTS_PER_SUBNET,
        (index % CLIENTS_PER_SUBNET) as u8 + 1,
    );
    if subnet == 0 {
        IpAddr::V4(Ipv4Addr::new(10, 0, 2, host))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 1, subnet as u8, host))
    }
}

/// Options for one run that do not change what happens in it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Install a tracing subscriber printing node logs (replay of one seed).
    pub verbose: bool,
}

/// The simulation thread's stack: the main thread's 8 MiB, not a spawned thread's default 2 MiB
/// (every simulated node's futures are polled on it).
const SIMULATION_STACK_BYTES: usize = 8 << 20;

/// Runs `scenario` to completion and judges it.
pub fn run(scenario: &Scenario, _options: RunOptions) -> RunReport {
    let scenario = scenario.concretize();
    let wall = std::time::Instant::now();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let monitor = Arc::new(SafetyMonitor::new());
    // A fresh thread per run: madsim seeds std's HashMap keys from the seed only on a thread
    // that has not drawn them yet (see `simulate`); a replay must not depend on what the
    // process ran before (argument parsing, the scenario file's TOML, earlier seeds).
    let outcome = {
        let shared = shared.clone();
        let scenario = scenario.clone();
        let monitor = monitor.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sim-seed-{}", scenario.seed))
            .stack_size(SIMULATION_STACK_BYTES)
            .spawn(move || {
                let mut rt =
                    Runtime::with_seed_and_config(scenario.seed, madsim::Config::default());
                rt.set_time_limit(Duration::from_secs(
                    scenario.duration_s + scenario.liveness_bound_s + TIME_LIMIT_SLACK_S,
                ));
                std::panic::catch_unwind(AssertUnwindSafe(move || {
                    rt.block_on(simulate(scenario, shared, monitor))
                }))
            })
            .expect("starting the simulation thread");
        thread.join().expect("simulation thread")
    };
    let wall_s = wall.elapsed().as_secs_f64();
    let shared = match shared.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let history = shared
        .recorder
        .as_ref()
        .map(Recorder::history)
        .unwrap_or_default();
    let (verdict, stats, simulated_s) = match outcome {
        Ok(end) => (
            judge(&history, end.liveness_failure, end.convergence_failure),
            end.stats,
            end.simulated_s,
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            (
                RunVerdict::Panic { message },
                ClientStats::default(),
                shared.last_time_s,
            )
        }
    };
    // A broken Raft safety property is the root cause of whatever else the run shows.
    let violations = monitor.violations();
    let verdict = if violations.is_empty() {
        verdict
    } else {
        RunVerdict::SafetyViolation { violations }
    };
    let mut trace = shared.trace.join("\n");
    trace.push('\n');
    RunReport {
        scenario,
        verdict,
        stats,
        history,
        trace,
        simulated_s,
        wall_s,
    }
}

/// What the simulation shares with the code around it (survives a panic inside).
#[derive(Clone, Default)]
struct Shared {
    recorder: Option<Recorder>,
    trace: Vec<String>,
    last_time_s: f64,
}

struct SimEnd {
    stats: ClientStats,
    liveness_failure: Option<String>,
    convergence_failure: Option<String>,
    simulated_s: f64,
}

/// A run-local log of harness and nemesis events, time-stamped with simulated time.
#[derive(Clone)]
pub(crate) struct Trace {
    shared: Arc<Mutex<Shared>>,
    start: Instant,
}

impl Trace {
    pub(crate) fn log(&self, line: String) {
        let elapsed = self.start.elapsed();
        tracing::info!(target: "nemesis", "{line}");
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.last_time_s = elapsed.as_secs_f64();
        shared
            .trace
            .push(format!("{:>10.3}s {line}", elapsed.as_secs_f64()));
    }
}

/// BUGGIFY: knobs drawn from the seed that push the node into rarely taken paths.
fn buggify(config: &mut ServerConfig, rng: &mut StdRng, trace: &Trace) {
    // Smallest 8, not 4: every checkpoint is a durable engine commit (redb serializes its
    // allocator state for quick repair), and at 4 those made about a tenth of a run's CPU;
    // 8 still checkpoints several times per second of load.
    let snapshot_every = [8, 16, 64, config.snapshot_interval_entries];
    config.snapshot_interval_entries = snapshot_every[rng.random_range(0..snapshot_every.len())];
    let batch = [1, 2, config.transport.max_batch_messages];
    config.transport.max_batch_messages = batch[rng.random_range(0..batch.len())];
    let queue = [8, 64, config.transport.peer_queue_messages];
    config.transport.peer_queue_messages = queue[rng.random_range(0..queue.len())];
    // A narrow election timeout window makes split votes (several candidates per term) common.
    if rng.random_bool(0.5) {
        config.election_timeout_ticks_max = config.election_timeout_ticks_min + 2;
    }
    // Drawn last, so the knobs above stay what they were for a seed before this one existed.
    // Followers that catch up one or two entries at a time leave the leader with entries of an
    // older term on a quorum while its own term's entries are not (Raft Figure 8).
    let append_entries = [Some(1), Some(2), None];
    config.max_append_entries = append_entries[rng.random_range(0..append_entries.len())];
    // Small WAL segments: rolls, segment heads, rewrites and recycling happen within a run.
    let wal_segment = [4096, 32 << 10, config.wal_segment_max_bytes];
    config.wal_segment_max_bytes = wal_segment[rng.random_range(0..wal_segment.len())];
    // Half the seeds checkpoint without redb's quick repair (a production knob, default on):
    // a reopen after a crash then runs redb's full repair, and checkpoints skip serializing
    // the allocator state (a small share of their CPU: docs/SIMULATION.md, "Session 11").
    config.engine_quick_repair = rng.random_bool(0.5);
    trace.log(format!(
        "buggify: wal_segment_max_bytes={} engine_quick_repair={}",
        config.wal_segment_max_bytes, config.engine_quick_repair
    ));
    trace.log(format!(
        "buggify: snapshot_interval_entries={} max_batch_messages={} peer_queue_messages={} election_timeout_ticks={}..{} max_append_entries={:?}",
        config.snapshot_interval_entries,
        config.transport.max_batch_messages,
        config.transport.peer_queue_messages,
        config.election_timeout_ticks_min,
        config.election_timeout_ticks_max,
        config.max_append_entries
    ));
}

/// Every server's config and whether it is a spare (started later by a `Join` fault).
fn server_configs(
    scenario: &Scenario,
    trace: &Trace,
    monitor: &Arc<SafetyMonitor>,
    transport: &TransportFaults,
) -> anyhow::Result<Vec<(ServerConfig, bool)>> {
    let planted: PlantedBugs = scenario.planted_bugs.parse()?;
    let members: Vec<MemberConfig> = (0..scenario.nodes).map(member_config).collect();
    let mut knob_rng = StdRng::seed_from_u64(scenario.seed ^ 0xb066_1f1e);
    let mut base = ServerConfig {
        members,
        seed: scenario.seed,
        ..ServerConfig::default()
    };
    base.cluster.shards = scenario.shards;
    base.cluster.replication_factor = scenario.replication_factor;
    base.cluster.dead_node_timeout_ms = scenario.dead_node_timeout_ms;
    base.sim_busy_us_per_input = scenario.sim_busy_us_per_input;
    // Simulated shards hold kilobytes: small chunks make every snapshot a multi-chunk stream,
    // and a small cache keeps many nodes' engines in one process cheap.
    base.snapshot_chunk_bytes = 512;
    base.engine_cache_bytes_per_group = 256 * 1024;
    if scenario.buggify {
        buggify(&mut base, &mut knob_rng, trace);
    }
    if let Some(t) = &scenario.raft_timing {
        base.tick_interval_ms = t.tick_interval_ms;
        base.election_timeout_ticks_min = t.election_timeout_ticks_min;
        base.election_timeout_ticks_max = t.election_timeout_ticks_max;
        base.heartbeat_interval_ticks = t.heartbeat_interval_ticks;
        trace.log(format!("raft timing: {t:?}"));
    }
    if scenario.buggify_percent > 0 {
        trace.log(format!(
            "buggify: code paths fire {}% when enabled",
            scenario.buggify_percent
        ));
    }
    base.faults = Some(transport.clone());
    base.planted_bugs = planted;
    base.observer = Some(monitor.clone());
    let configs = (0..scenario.servers())
        .map(|i| {
            let mut config = base.clone();
            config.node_id = u64::from(i) + 1;
            // Each server its own clock, disk debt and BUGGIFY draws.
            config.sim = SimHooks {
                buggify: if scenario.buggify_percent > 0 {
                    Buggify::enabled(
                        scenario.seed ^ 0xb0c_1f1e ^ (config.node_id << 32),
                        scenario.buggify_percent,
                    )
                } else {
                    Buggify::default()
                },
                ..SimHooks::default()
            };
            let spare = i >= scenario.nodes;
            if spare {
                // A joining node lists only itself; `join` is filled in when it starts.
                config.members = vec![member_config(i)];
            }
            (config, spare)
        })
        .collect();
    Ok(configs)
}

async fn simulate(
    scenario: Scenario,
    shared: Arc<Mutex<Shared>>,
    monitor: Arc<SafetyMonitor>,
) -> SimEnd {
    let start = Instant::now();
    let trace = Trace {
        shared: shared.clone(),
        start,
    };
    trace.log(format!(
        "seed {} scenario {} nodes {} clients {}",
        scenario.seed, scenario.name, scenario.nodes, scenario.clients
    ));
    trace.log(format!(
        "shards {} workload {:?} client policy {:?} think {} ms",
        scenario.shards, scenario.workload, scenario.client_policy, scenario.think_time_ms
    ));
    // std's HashMap hashes with per-thread keys that madsim seeds from the run's seed only if
    // nothing on this thread drew them before (`run` gives each simulation a fresh thread). A
    // hash of the keys in the trace makes a run whose keys came from the OS differ from its
    // replay (the determinism tests compare traces), instead of diverging only where some
    // dependency's map order happens to matter (it did: seed 9 of `mixed`, 5 nodes, 60 s).
    trace.log(format!(
        "std hash keys: {:016x}",
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u64)
    ));
    let transport = TransportFaults::new();
    let configs = match server_configs(&scenario, &trace, &monitor, &transport) {
        Ok(configs) => configs,
        Err(e) => panic!("cluster setup failed: {e:#}"),
    };
    let fleet = Fleet::create(configs, scenario.replication_factor, scenario.seed);
    // Clients know every server's address, spares too (unreachable until they join); they
    // learn the map, and follow WrongNode and redirects, from whoever answers.
    let client_addrs = fleet.client_addrs();
    let clock_start = start;
    let recorder = Recorder::new(Arc::new(move || clock_start.elapsed().as_nanos() as u64));
    shared.lock().unwrap_or_else(|p| p.into_inner()).recorder = Some(recorder.clone());

    let handle = Handle::current();
    let nemesis_node = handle
        .create_node()
        .name("nemesis")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)))
        .build();
    let nemesis = nemesis_node.spawn(run_nemesis(
        scenario.fault_schedule(),
        fleet.clone(),
        transport.clone(),
        monitor.clone(),
        trace.clone(),
    ));

    let main_until_ns = scenario.duration_ms() * 1_000_000;
    let liveness_bound_ns = scenario.liveness_bound_s * 1_000_000_000;
    let mut client_tasks = Vec::new();
    let mut client_nodes = Vec::new();
    let recent_key = workloads::generator::RecentKey::default();
    for c in 0..scenario.clients {
        let node = handle
            .create_node()
            .name(format!("c{}", c + 1))
            .ip(client_ip(c))
            .build();
        let mut options = ClientOptions {
            request_timeout: Duration::from_millis(CLIENT_REQUEST_TIMEOUT_MS),
            operation_timeout: Duration::from_millis(CLIENT_OPERATION_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(500),
            rng_seed: Some(scenario.seed.wrapping_mul(7919).wrapping_add(u64::from(c))),
            ..ClientOptions::default()
        };
        let mut reader = false;
        if let Some(policy) = &scenario.client_policy {
            options.request_timeout = Duration::from_millis(policy.request_timeout_ms);
            options.retry_backoff_min = Duration::from_millis(policy.retry_backoff_min_ms);
            options.retry_backoff_max = Duration::from_millis(policy.retry_backoff_max_ms);
            reader = c < policy.reader_clients;
        }
        // Each client starts at a different node (as Jepsen binds clients to nodes), so that
        // followers see client traffic too.
        let mut endpoints = client_addrs.clone();
        let first = c as usize % endpoints.len().max(1);
        endpoints.rotate_left(first);
        let store = match ClientStore::new(endpoints, options) {
            Ok(store) => store,
            Err(e) => panic!("client {c}: {e}"),
        };
        let mut client = WorkloadClient::new(
            store,
            &scenario.workload,
            c,
            scenario.clients,
            scenario.seed.wrapping_mul(31).wrapping_add(u64::from(c)),
            recorder.clone(),
        )
        .with_think_time_ms(scenario.think_time_ms);
        if reader {
            client = client.with_generator(scenario.workload.reader(c));
        }
        if scenario.client_policy.is_some() {
            client = client.sharing_recent_key(recent_key.clone());
        }
        let ops = scenario.ops_per_client;
        let task = node.spawn(async move {
            client.run(ops, main_until_ns).await;
            // Liveness: the last fault ended at least final_heal_ms ago; the client must
            // complete an operation within the bound.
            let deadline_ns = recorder_now(&client) + liveness_bound_ns;
            let mut progressed = false;
            while recorder_now(&client) < deadline_ns {
                let before = client.stats.ok;
                client.run(1, u64::MAX).await;
                if client.stats.ok > before {
                    progressed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (client, progressed)
        });
        client_tasks.push(task);
        client_nodes.push(node);
    }

    let mut stats = ClientStats::default();
    let mut stuck = Vec::new();
    let mut finished = Vec::new();
    for (c, task) in client_tasks.into_iter().enumerate() {
        match task.await {
            Ok((client, progressed)) => {
                if !progressed {
                    stuck.push(format!("client {c}"));
                }
                finished.push(client);
            }
            Err(e) => panic!("client {c} task failed: {e}"),
        }
    }
    if let Err(e) = nemesis.await {
        panic!("nemesis task failed: {e}");
    }
    // Closing operations (the set's final read) by the first client, after everyone is done.
    if !finished.is_empty() {
        if let Some(node) = client_nodes.first() {
            let mut first = finished.remove(0);
            let task = node.spawn(async move {
                first.run_final().await;
                first
            });
            match task.await {
                Ok(first) => finished.insert(0, first),
                Err(e) => panic!("final operations failed: {e}"),
            }
        }
    }
    for client in &finished {
        stats.add(&client.stats);
    }
    // Every fault is healed and the clients are done: replication must be restored.
    let bound = Duration::from_secs(scenario.convergence_bound_s);
    let check = {
        let (fleet, trace) = (fleet.clone(), trace.clone());
        nemesis_node.spawn(async move { await_convergence(&fleet, bound, &trace).await })
    };
    let convergence_failure = match check.await {
        Ok(failure) => failure,
        Err(e) => panic!("replication check failed: {e}"),
    };
    let liveness_failure = if stuck.is_empty() {
        None
    } else {
        let count = stuck.len();
        stuck.truncate(STUCK_CLIENTS_NAMED_MAX);
        let more = count - stuck.len();
        Some(format!(
            "{}{} completed no operation within {} s after the final heal",
            stuck.join(", "),
            if more > 0 {
                format!(" and {more} more clients")
            } else {
                String::new()
            },
            scenario.liveness_bound_s
        ))
    };
    trace.log(format!(
        "end: ok {} fail {} info {}",
        stats.ok, stats.fail, stats.info
    ));
    SimEnd {
        stats,
        liveness_failure,
        convergence_failure,
        simulated_s: start.elapsed().as_secs_f64(),
    }
}

fn recorder_now<S: workloads::KvStore>(client: &WorkloadClient<S>) -> u64 {
    client.recorder().now_ns()
}

/// The metadata group's leader as the up servers report it: the highest-term server that
/// says it leads (its index).
async fn find_leader(status: &mut Client, fleet: &Fleet) -> Option<u32> {
    let mut best: Option<(u64, u32)> = None;
    let addrs = fleet.client_addrs();
    for index in fleet.up() {
        let addr = addrs[index as usize];
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), status.node_status(addr)).await
        {
            if s.role == Role::Leader && best.is_none_or(|(term, _)| s.term > term) {
                best = Some((s.term, index));
            }
        }
    }
    best.map(|(_, index)| index)
}

/// The up server that leads the most shard (data) groups, by the servers' own views; ties go
/// to the lowest index; None when none leads a shard.
async fn busiest_leader(status: &mut Client, fleet: &Fleet) -> Option<u32> {
    let (views, _) = fleet.gather_views(status).await;
    views
        .iter()
        .map(|view| {
            let led = view
                .groups
                .iter()
                .filter(|g| g.group != node::meta::META_GROUP && g.role == Role::Leader)
                .count();
            (led, std::cmp::Reverse(view.node_id))
        })
        .filter(|(led, _)| *led > 0)
        .max()
        .and_then(|(_, std::cmp::Reverse(id))| u32::try_from(id.checked_sub(1)?).ok())
}

/// What a started fault must undo at its end.
enum Undo {
    /// Links to unclog, and the server whose clock to restart (a stale leader).
    Links(BTreeSet<(u32, u32)>, Option<u32>),
    Transport(Fault),
    Restart(u32),
    Resume(u32),
    DiskErrors(u32),
    /// Reset a server's clock to exact.
    Clock(u32),
    /// Make a server's disk fast again.
    SlowDisk(u32),
    /// A task that runs the fault until its end (storms, strikes, an admin request).
    Task(madsim::task::JoinHandle<()>),
    RestartAll,
    /// A task that may outlive its period (an admin request); awaited when the schedule ends.
    Background(madsim::task::JoinHandle<()>),
    Nothing,
}

/// Kills and restarts random servers until `end` (the `CrashStorm` fault).
/// Only servers that are up are hit, and a server killed for good meanwhile stays down.
async fn crash_storm(fleet: Fleet, interval_ms: u64, end: Instant, seed: u64, trace: Trace) {
    let handle = Handle::current();
    let mut rng = StdRng::seed_from_u64(seed);
    let interval_ms = interval_ms.max(2);
    loop {
        let pause = rng.random_range(interval_ms / 2..=interval_ms + interval_ms / 2);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let up = fleet.up();
        if Instant::now() >= end || up.is_empty() {
            break;
        }
        let n = up[rng.random_range(0..up.len())];
        fleet.kill(&handle, n);
        let down_ms = rng.random_range(1..interval_ms);
        trace.log(format!("storm: crash n{} for {down_ms} ms", n + 1));
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        fleet.restart(&handle, n);
    }
}

/// The `VoteStrike` fault until `end`. The nemesis remembers who granted whom a vote in which
/// term; when a candidate reports that it became leader, its voters are killed at once (their
/// restart is a power loss of their disks) and restarted `1..=restart_ms_max` ms later, and the
/// new leader is cut off from everyone for `isolate_ms`. A node that never heard of the new
/// term may then campaign in that same term, asking the restarted voters again: only a durable
/// vote makes them refuse. One strike at a time; cues arriving meanwhile are dropped.
#[allow(clippy::too_many_arguments)]
async fn vote_strikes(
    monitor: Arc<SafetyMonitor>,
    fleet: Fleet,
    (restart_ms_max, isolate_ms): (u64, u64),
    leader: Option<u32>,
    end: Instant,
    seed: u64,
    trace: Trace,
) {
    let handle = Handle::current();
    let net = NetSim::current();
    let mut rng = StdRng::seed_from_u64(seed);
    let index_of = |node: u64| -> Option<u32> {
        let index = u32::try_from(node.checked_sub(1)?).ok()?;
        (index < fleet.len()).then_some(index)
    };
    let (cues_tx, mut cues) = tokio::sync::mpsc::unbounded_channel();
    monitor.add_cues(cues_tx);
    // The first election: the leader when the fault starts is cut off, so that the others
    // elect (and are struck) even when nothing else in this period moves leadership.
    let kick = leader.map(|n| {
        let id = fleet.sim_id(n);
        net.clog_node(id);
        trace.log(format!(
            "vote strike: cut off the leader n{} to start an election",
            n + 1
        ));
        let until = (Instant::now() + Duration::from_millis(isolate_ms)).min(end);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            NetSim::current().unclog_node(id);
        })
    });
    // (group, term, candidate) -> voters that granted it: terms are per Raft group.
    let mut grants: BTreeMap<(GroupId, u64, u64), BTreeSet<u64>> = BTreeMap::new();
    loop {
        let cue = tokio::select! {
            biased;
            cue = cues.recv() => cue,
            _ = tokio::time::sleep_until(end) => None,
        };
        let Some(cue) = cue else { break };
        let group = cue.group;
        let term = match cue.event {
            ProtocolEvent::VoteGranted { term, candidate } => {
                grants
                    .entry((group, term, candidate))
                    .or_default()
                    .insert(cue.node);
                continue;
            }
            ProtocolEvent::BecameLeader { term } => term,
            ProtocolEvent::Applied { .. }
            | ProtocolEvent::LeaderCommitted { .. }
            | ProtocolEvent::StateDigest { .. } => continue,
        };
        let voters = grants.remove(&(group, term, cue.node)).unwrap_or_default();
        grants.retain(|&(g, t, _), _| g != group || t > term);
        let (Some(leader), false) = (index_of(cue.node), voters.is_empty()) else {
            continue;
        };
        let leader = fleet.sim_id(leader);
        let voter_indexes: Vec<u32> = voters.iter().filter_map(|&v| index_of(v)).collect();
        for &v in &voter_indexes {
            fleet.kill(&handle, v);
        }
        net.clog_node(leader);
        let down_ms = rng.random_range(1..=restart_ms_max.max(1));
        trace.log(format!(
            "vote strike: n{} leads term {term} of group {group}: power loss of its voters {voters:?} for {down_ms} ms, n{} cut off for {isolate_ms} ms",
            cue.node, cue.node
        ));
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        for &v in &voter_indexes {
            fleet.restart(&handle, v);
        }
        tokio::time::sleep(Duration::from_millis(isolate_ms.saturating_sub(down_ms))).await;
        net.unclog_node(leader);
        while cues.try_recv().is_ok() {}
        grants.clear();
    }
    if let Some(task) = kick {
        if let Err(e) = task.await {
            panic!("vote strike kick task failed: {e}");
        }
    }
}

/// The `PauseNewLeader` fault until `end`: a node that reports it became leader of a group is
/// paused (its tasks and timers stop) for `pause_ms` with probability `strike_percent`%, right
/// after its election, before it has asserted its leadership; one pause at a time.
async fn pause_new_leaders(
    monitor: Arc<SafetyMonitor>,
    fleet: Fleet,
    (pause_ms, strike_percent): (u64, u32),
    end: Instant,
    seed: u64,
    trace: Trace,
) {
    let handle = Handle::current();
    let mut strikes = Strikes::new(&monitor, seed, strike_percent, end);
    let became_leader = |event: &ProtocolEvent| match event {
        ProtocolEvent::BecameLeader { term } => Some(*term),
        _ => None,
    };
    while let Some((cue, index, term)) = strikes.next(&fleet, became_leader).await {
        let id = fleet.sim_id(index);
        handle.pause(id);
        let until = (Instant::now() + Duration::from_millis(pause_ms)).min(end);
        trace.log(format!(
            "pause n{} as it became leader of term {term} of group {}",
            cue.node, cue.group
        ));
        tokio::time::sleep_until(until).await;
        handle.resume(id);
        trace.log(format!("resume n{}", cue.node));
        strikes.forget_pending();
    }
}

/// What `LaggingSuccessor` and `CutLeaderOnCommit` strike at.
enum SuccessorCue {
    /// A leader's commit index advanced to `index` in `term`.
    Committed { term: u64, index: u64 },
    /// A node became leader of `term`.
    Elected { term: u64 },
}

/// `lagging_successors` as the nemesis task of one fault (`CutLeaderOnCommit` or
/// `LaggingSuccessor`, which differ only in their windows).
fn spawn_lagging(
    monitor: &Arc<SafetyMonitor>,
    fleet: &Fleet,
    transport: &TransportFaults,
    windows: (u64, u64, u32),
    end: Instant,
    seed: u64,
    trace: &Trace,
) -> Undo {
    Undo::Task(tokio::spawn(lagging_successors(
        Arc::clone(monitor),
        fleet.clone(),
        transport.clone(),
        windows,
        end,
        seed,
        trace.clone(),
    )))
}

/// The `LaggingSuccessor` fault until `end` (and `CutLeaderOnCommit`, with `cut_ms` =
/// `loss_ms` = its `isolate_ms`): each cue strikes with probability `strike_percent`%. A
/// leader whose commit index advances (not for the first time in its term: the first commit is
/// its own no-op, which no client waits for) is cut off from every other server for `cut_ms`
/// (clients still reach it; one cut at a time): its followers do not know what it just
/// acknowledged, since its Appends are held back a few milliseconds while the fault lasts, so
/// the cut lands before the Appends that carry the new commit index are on the wire. A node
/// that becomes leader of a group loses that group's Appends from it and AppendResponses to it
/// for `loss_ms`, and at least while the cut lasts (its heartbeats and their answers get
/// through): it leads and a quorum answers its read rounds, but it cannot commit an entry of
/// its term, so its commit index stays what it inherited and reads must wait until the clients
/// that timed out at the cut leader have come over. Its first Appends left before it reported
/// its election (they go out before its sync): losing their acknowledgements is what keeps it
/// from committing. Each (new leader, group) is struck on its own, since one cut elects new
/// leaders in every group the cut leader led.
async fn lagging_successors(
    monitor: Arc<SafetyMonitor>,
    fleet: Fleet,
    transport: TransportFaults,
    (cut_ms, loss_ms, strike_percent): (u64, u64, u32),
    end: Instant,
    seed: u64,
    trace: Trace,
) {
    // A leader's Appends of the turn in which it commits carry the new commit index; they
    // must still be on their way when the cut lands.
    set_append_delay_ms(&transport, LAGGING_APPEND_DELAY_MS);
    let mut strikes = Strikes::new(&monitor, seed, strike_percent, end);
    let cue_of = |event: &ProtocolEvent| match event {
        ProtocolEvent::LeaderCommitted { term, index, .. } => Some(SuccessorCue::Committed {
            term: *term,
            index: *index,
        }),
        ProtocolEvent::BecameLeader { term } => Some(SuccessorCue::Elected { term: *term }),
        _ => None,
    };
    // The leader cut off (fleet index, node id) and until when.
    let mut cut: Option<(u32, u64, Instant)> = None;
    // (node id, group, term) of the leaders seen committing.
    let mut terms_committed: BTreeSet<(u64, GroupId, u64)> = BTreeSet::new();
    // (node id, group) -> when its log replication gets through again.
    let mut lost: BTreeMap<(u64, GroupId), Instant> = BTreeMap::new();
    while Instant::now() < end {
        let wake = lost
            .values()
            .chain(cut.as_ref().map(|(_, _, until)| until))
            .min()
            .copied()
            .unwrap_or(end);
        let strike = tokio::select! {
            biased;
            _ = tokio::time::sleep_until(wake) => None,
            strike = strikes.next(&fleet, cue_of) => Some(strike),
        };
        match strike {
            None => {
                let now = Instant::now();
                if let Some((leader, node, _)) = cut.filter(|(_, _, until)| *until <= now) {
                    reconnect(&fleet, leader);
                    trace.log(format!("lagging successor: n{node} reconnected"));
                    cut = None;
                }
                let released: Vec<(u64, GroupId)> = lost
                    .iter()
                    .filter(|(_, until)| **until <= now)
                    .map(|(key, _)| *key)
                    .collect();
                for key in released {
                    lost.remove(&key);
                    set_appends_lost(&transport, key, false, &trace);
                }
            }
            Some(None) => break,
            Some(Some((cue, leader, SuccessorCue::Committed { term, index }))) => {
                // A leader's first commit of its term is its own no-op (and what its
                // predecessors left): no client waited on it. Later ones acknowledge writes.
                let first = terms_committed.insert((cue.node, cue.group, term));
                if cut.is_some() || first {
                    continue;
                }
                cut_off(&fleet, leader);
                let until = (Instant::now() + Duration::from_millis(cut_ms)).min(end);
                cut = Some((leader, cue.node, until));
                trace.log(format!(
                    "lagging successor: cut off n{} for {cut_ms} ms as it committed index {index} of term {term} of group {}",
                    cue.node, cue.group
                ));
            }
            Some(Some((cue, _, SuccessorCue::Elected { term }))) => {
                // At least while its predecessor is away: the clients that wait for it to
                // answer come over when their requests time out.
                let until = (Instant::now() + Duration::from_millis(loss_ms))
                    .max(cut.map_or(end, |(_, _, until)| until))
                    .min(end);
                lost.insert((cue.node, cue.group), until);
                set_appends_lost(&transport, (cue.node, cue.group), true, &trace);
                trace.log(format!(
                    "lagging successor: n{} leads term {term} of group {}: its appends are lost for {loss_ms} ms",
                    cue.node, cue.group
                ));
            }
        }
    }
    if let Some((leader, node, _)) = cut {
        reconnect(&fleet, leader);
        trace.log(format!("lagging successor: n{node} reconnected"));
    }
    for key in lost.into_keys() {
        set_appends_lost(&transport, key, false, &trace);
    }
    set_append_delay_ms(&transport, 0);
}

/// How long Appends are held back while `LaggingSuccessor` lasts.
const LAGGING_APPEND_DELAY_MS: u64 = 5;

fn set_append_delay_ms(transport: &TransportFaults, delay_ms: u64) {
    let mut plan = transport.plan();
    plan.append_delay_ms = delay_ms;
    transport.set(plan);
}

/// Cuts server `leader` off from every other server, both directions (clients still reach
/// it).
fn cut_off(fleet: &Fleet, leader: u32) {
    let net = NetSim::current();
    let ids = fleet.sim_ids();
    let me = ids[leader as usize];
    for (i, &other) in ids.iter().enumerate() {
        if i != leader as usize {
            net.clog_link(me, other);
            net.clog_link(other, me);
        }
    }
}

/// Undoes `cut_off`.
fn reconnect(fleet: &Fleet, leader: u32) {
    let net = NetSim::current();
    let ids = fleet.sim_ids();
    let me = ids[leader as usize];
    for (i, &other) in ids.iter().enumerate() {
        if i != leader as usize {
            net.unclog_link(me, other);
            net.unclog_link(other, me);
        }
    }
}

/// Adds or removes one (leader, group) of the transport plan's lost log replication.
fn set_appends_lost(transport: &TransportFaults, key: (u64, GroupId), lost: bool, trace: &Trace) {
    let mut plan = transport.plan();
    if lost {
        plan.appends_lost.insert(key);
    } else {
        plan.appends_lost.remove(&key);
        trace.log(format!(
            "lagging successor: appends of n{} in group {} get through again",
            key.0, key.1
        ));
    }
    transport.set(plan);
}

/// The cues of a fault that strikes at protocol events (see `SafetyMonitor::add_cues`): each
/// accepted event of a node that is up strikes with probability `strike_percent`%.
struct Strikes {
    cues: tokio::sync::mpsc::UnboundedReceiver<StrikeCue>,
    rng: StdRng,
    strike_percent: u32,
    end: Instant,
}

impl Strikes {
    fn new(monitor: &SafetyMonitor, seed: u64, strike_percent: u32, end: Instant) -> Strikes {
        let (cues_tx, cues) = tokio::sync::mpsc::unbounded_channel();
        monitor.add_cues(cues_tx);
        Strikes {
            cues,
            rng: StdRng::seed_from_u64(seed),
            strike_percent,
            end,
        }
    }

    /// The next cue to strike at: its event as `accept` reads it, from a node that is up (with
    /// that node's fleet index), having won the draw; `None` once `end` has come.
    async fn next<T>(
        &mut self,
        fleet: &Fleet,
        accept: impl Fn(&ProtocolEvent) -> Option<T>,
    ) -> Option<(StrikeCue, u32, T)> {
        loop {
            let cue = tokio::select! {
                biased;
                cue = self.cues.recv() => cue,
                _ = tokio::time::sleep_until(self.end) => None,
            }?;
            let Some(what) = accept(&cue.event) else {
                continue;
            };
            let Some(index) = cue
                .node
                .checked_sub(1)
                .and_then(|i| u32::try_from(i).ok())
                .filter(|&i| fleet.is_up(i))
            else {
                continue;
            };
            if self.rng.random_range(0..100) < self.strike_percent {
                return Some((cue, index, what));
            }
        }
    }

    /// Drops the cues that came while a strike was under way (one strike at a time).
    fn forget_pending(&mut self) {
        while self.cues.try_recv().is_ok() {}
    }
}

/// The `Figure8` fault until `end` (see `Fault::Figure8`): leaders' fresh entries are kept off
/// the others by cutting the leader off, and a leader that commits up to an entry of an older
/// term (what Raft forbids, Figure 8) is cut off at once, before its own term's entries reach
/// a quorum, so that the others may elect a leader that overwrites the entry it committed.
async fn figure8_strikes(
    monitor: Arc<SafetyMonitor>,
    ids: Vec<SimNodeId>,
    (isolate_ms, strike_percent): (u64, u32),
    leader: Option<u32>,
    end: Instant,
    seed: u64,
    trace: Trace,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (cues_tx, mut cues) = tokio::sync::mpsc::unbounded_channel();
    monitor.add_cues(cues_tx);
    // (node, group) -> the term it last became leader of; terms are per Raft group.
    let mut led: BTreeMap<(u64, GroupId), u64> = BTreeMap::new();
    let mut struck: BTreeSet<(u64, GroupId, u64)> = BTreeSet::new();
    let mut isolations = Vec::new();
    let mut isolate = |node: u64, why: String| {
        let slot = usize::try_from(node.saturating_sub(1)).unwrap_or(usize::MAX);
        let Some(&id) = ids.get(slot) else { return };
        let until = (Instant::now() + Duration::from_millis(isolate_ms)).min(end);
        NetSim::current().clog_node(id);
        trace.log(format!("figure8: cut off n{node} ({why})"));
        let trace = trace.clone();
        isolations.push(tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            NetSim::current().unclog_node(id);
            trace.log(format!("figure8: n{node} reconnected"));
        }));
    };
    // Start with a leader change: the current leader is the first one cut off.
    if let Some(n) = leader {
        isolate(
            u64::from(n) + 1,
            "leader when the fault started".to_string(),
        );
    }
    loop {
        let first = tokio::select! {
            biased;
            cue = cues.recv() => cue,
            _ = tokio::time::sleep_until(end) => None,
        };
        let Some(first) = first else { break };
        // A Ready's events arrive together: judge a node's commit by the last entry it applied.
        let mut batch = vec![first];
        while let Ok(cue) = cues.try_recv() {
            batch.push(cue);
        }
        let mut last_applied: BTreeMap<(u64, GroupId), u64> = BTreeMap::new();
        for cue in &batch {
            match cue.event {
                ProtocolEvent::BecameLeader { term } => {
                    led.insert((cue.node, cue.group), term);
                    if rng.random_range(0..100) < strike_percent {
                        isolate(
                            cue.node,
                            format!("new leader of term {term} of group {}", cue.group),
                        );
                    }
                }
                ProtocolEvent::Applied { term, .. } => {
                    last_applied.insert((cue.node, cue.group), term);
                }
                ProtocolEvent::VoteGranted { .. }
                | ProtocolEvent::LeaderCommitted { .. }
                | ProtocolEvent::StateDigest { .. } => {}
            }
        }
        for ((node, group), term) in last_applied {
            let Some(&leader_term) = led.get(&(node, group)) else {
                continue;
            };
            if term < leader_term && struck.insert((node, group, leader_term)) {
                isolate(
                    node,
                    format!(
                        "leader of term {leader_term} of group {group} applied up to an entry of term {term}"
                    ),
                );
            }
        }
    }
    drop(cues);
    for task in isolations {
        if let Err(e) = task.await {
            panic!("figure8 isolation task failed: {e}");
        }
    }
}

/// Executes `schedule` against the fleet. Faults planned for a server that is not up then (a
/// spare, one that left or was killed for good) hit the next server that is up instead.
async fn run_nemesis(
    schedule: Vec<ScheduledFault>,
    fleet: Fleet,
    transport: TransportFaults,
    monitor: Arc<SafetyMonitor>,
    trace: Trace,
) {
    let handle = Handle::current();
    let net = NetSim::current();
    let nodes = fleet.len();
    let ids = fleet.sim_ids();
    let mut status = harness_client(fleet.client_addrs(), 0x5747);
    // Timeline: (time, 0 = end / 1 = start, fault index); ends sort before starts.
    let mut timeline: Vec<(u64, u8, usize)> = Vec::new();
    for (i, f) in schedule.iter().enumerate() {
        timeline.push((f.start_ms, 1, i));
        timeline.push((f.end_ms, 0, i));
    }
    timeline.sort();
    let mut undo: BTreeMap<usize, Undo> = BTreeMap::new();
    let mut background = Vec::new();
    let mut rng = StdRng::seed_from_u64(0x6e65_6d65);
    let start = trace.start;
    let node_of = |i: u32| -> SimNodeId { ids[i as usize % ids.len()] };
    for (at_ms, kind, index) in timeline {
        let at = start + Duration::from_millis(at_ms);
        tokio::time::sleep_until(at).await;
        let fault = &schedule[index].fault;
        if kind == 0 {
            match undo.remove(&index) {
                Some(Undo::Background(task)) => background.push(task),
                Some(action) => heal(action, fault, &fleet, &transport, &trace).await,
                None => {}
            }
            continue;
        }
        let needs_leader = matches!(
            fault,
            Fault::IsolateLeader
                | Fault::StaleLeader
                | Fault::LeaderMinority { .. }
                | Fault::Crash {
                    target: Target::Leader
                }
                | Fault::Pause {
                    target: Target::Leader
                }
                | Fault::Figure8 { .. }
                | Fault::VoteStrike { .. }
        );
        let leader = match fault {
            // The node leading the most shard groups goes stale: the clients' data is there.
            Fault::StaleLeader => match busiest_leader(&mut status, &fleet).await {
                Some(node) => Some(node),
                None => find_leader(&mut status, &fleet).await,
            },
            _ if needs_leader => find_leader(&mut status, &fleet).await,
            _ => None,
        };
        // The server a process fault hits: the leader, or the planned node if it is up (else
        // the next one that is).
        let target = |t: &Target, rng: &mut StdRng| -> Option<u32> {
            match t {
                Target::Node(n) => fleet.pick_up(*n % nodes),
                Target::Leader => leader.or_else(|| {
                    let up = fleet.up();
                    (!up.is_empty()).then(|| up[rng.random_range(0..up.len())])
                }),
            }
        };
        let end = start + Duration::from_millis(schedule[index].end_ms);
        let action = match fault {
            f if f.is_partition() => {
                let links = f.cut_links(nodes, leader);
                for (a, b) in &links {
                    net.clog_link(node_of(*a), node_of(*b));
                }
                trace.log(format!(
                    "start {f:?} (leader {leader:?}): {} links cut",
                    links.len()
                ));
                let stalled = match (f, leader) {
                    (Fault::StaleLeader, Some(l)) => fleet.clock(l).map(|clock| {
                        clock.set_stalled(true);
                        trace.log(format!("clock of n{} stalls (stale leader)", l + 1));
                        l
                    }),
                    _ => None,
                };
                Undo::Links(links, stalled)
            }
            Fault::MessageLoss { percent } => {
                let mut plan: FaultPlan = transport.plan();
                plan.drop_probability = f64::from(*percent) / 100.0;
                transport.set(plan);
                trace.log(format!("start {fault:?}"));
                Undo::Transport(fault.clone())
            }
            Fault::MessageDelay { max_ms } => {
                let mut plan = transport.plan();
                plan.delay_probability = 0.5;
                plan.delay_ms_max = *max_ms;
                transport.set(plan);
                trace.log(format!("start {fault:?}"));
                Undo::Transport(fault.clone())
            }
            Fault::MessageDuplicate { percent } => {
                let mut plan = transport.plan();
                plan.duplicate_probability = f64::from(*percent) / 100.0;
                transport.set(plan);
                trace.log(format!("start {fault:?}"));
                Undo::Transport(fault.clone())
            }
            Fault::MessageReorder { percent } => {
                let mut plan = transport.plan();
                plan.reorder_probability = f64::from(*percent) / 100.0;
                transport.set(plan);
                trace.log(format!("start {fault:?}"));
                Undo::Transport(fault.clone())
            }
            Fault::Crash { target: t } => match target(t, &mut rng) {
                Some(n) => {
                    fleet.kill(&handle, n);
                    trace.log(format!("crash n{} ({t:?})", n + 1));
                    Undo::Restart(n)
                }
                None => skip(&trace, fault, "no server is up"),
            },
            Fault::Pause { target: t } => match target(t, &mut rng) {
                Some(n) => {
                    handle.pause(node_of(n));
                    trace.log(format!("pause n{} ({t:?})", n + 1));
                    Undo::Resume(n)
                }
                None => skip(&trace, fault, "no server is up"),
            },
            Fault::DiskErrors { node, percent } => {
                match fleet
                    .pick_up(node % nodes)
                    .and_then(|n| Some((n, fleet.disk_faults(n)?)))
                {
                    Some((n, disk)) => {
                        disk.set_error_percent(*percent);
                        trace.log(format!("disk errors {percent}% on n{}", n + 1));
                        Undo::DiskErrors(n)
                    }
                    None => skip(&trace, fault, "no server is up"),
                }
            }
            Fault::CrashStorm { interval_ms } => {
                let seed = rng.random::<u64>();
                trace.log(format!("start {fault:?}"));
                Undo::Task(tokio::spawn(crash_storm(
                    fleet.clone(),
                    *interval_ms,
                    end,
                    seed,
                    trace.clone(),
                )))
            }
            Fault::VoteStrike {
                restart_ms_max,
                isolate_ms,
            } => {
                let seed = rng.random::<u64>();
                trace.log(format!("start {fault:?}"));
                Undo::Task(tokio::spawn(vote_strikes(
                    monitor.clone(),
                    fleet.clone(),
                    (*restart_ms_max, *isolate_ms),
                    leader,
                    end,
                    seed,
                    trace.clone(),
                )))
            }
            Fault::Figure8 {
                isolate_ms,
                strike_percent,
            } => {
                let seed = rng.random::<u64>();
                trace.log(format!("start {fault:?} (leader {leader:?})"));
                Undo::Task(tokio::spawn(figure8_strikes(
                    monitor.clone(),
                    ids.clone(),
                    (*isolate_ms, *strike_percent),
                    leader,
                    end,
                    seed,
                    trace.clone(),
                )))
            }
            Fault::ClockDrift { node, rate_percent } => {
                match fleet
                    .pick_up(node % nodes)
                    .and_then(|n| Some((n, fleet.clock(n)?)))
                {
                    Some((n, clock)) => {
                        clock.set_rate_percent(*rate_percent);
                        trace.log(format!("clock of n{} runs at {rate_percent}%", n + 1));
                        Undo::Clock(n)
                    }
                    None => skip(&trace, fault, "no server is up"),
                }
            }
            Fault::ClockJump { node, ticks } => {
                match fleet
                    .pick_up(node % nodes)
                    .and_then(|n| Some((n, fleet.clock(n)?)))
                {
                    Some((n, clock)) => {
                        clock.jump(*ticks);
                        trace.log(format!("clock of n{} jumps {ticks} ticks ahead", n + 1));
                        Undo::Nothing
                    }
                    None => skip(&trace, fault, "no server is up"),
                }
            }
            Fault::ClockStall { node } => {
                match fleet
                    .pick_up(node % nodes)
                    .and_then(|n| Some((n, fleet.clock(n)?)))
                {
                    Some((n, clock)) => {
                        clock.set_stalled(true);
                        trace.log(format!("clock of n{} stalls", n + 1));
                        Undo::Clock(n)
                    }
                    None => skip(&trace, fault, "no server is up"),
                }
            }
            Fault::SlowDisk {
                node,
                sync_ms_max,
                read_ms_max,
            } => {
                match fleet
                    .pick_up(node % nodes)
                    .and_then(|n| Some((n, fleet.disk_faults(n)?)))
                {
                    Some((n, disk)) => {
                        disk.set_slow(*sync_ms_max, *read_ms_max);
                        trace.log(format!(
                            "slow disk on n{}: sync <= {sync_ms_max} ms, read <= {read_ms_max} ms",
                            n + 1
                        ));
                        Undo::SlowDisk(n)
                    }
                    None => skip(&trace, fault, "no server is up"),
                }
            }
            Fault::FlakyLinks { links, percent } => {
                let mut plan = transport.plan();
                for &(a, b) in links {
                    plan.link_drop_percent
                        .insert((u64::from(a) + 1, u64::from(b) + 1), *percent);
                }
                transport.set(plan);
                trace.log(format!("start {fault:?}"));
                Undo::Transport(fault.clone())
            }
            Fault::AsymmetricLink { from, to } => {
                let mut plan = transport.plan();
                plan.link_drop_percent
                    .insert((u64::from(*from) + 1, u64::from(*to) + 1), 100);
                transport.set(plan);
                trace.log(format!("start {fault:?}"));
                Undo::Transport(fault.clone())
            }
            Fault::CutLeaderOnCommit {
                isolate_ms,
                strike_percent,
            } => {
                let windows = (*isolate_ms, *isolate_ms, *strike_percent);
                let seed = rng.random::<u64>();
                trace.log(format!("start {fault:?}"));
                spawn_lagging(&monitor, &fleet, &transport, windows, end, seed, &trace)
            }
            Fault::LaggingSuccessor {
                cut_ms,
                loss_ms,
                strike_percent,
            } => {
                let windows = (*cut_ms, *loss_ms, *strike_percent);
                let seed = rng.random::<u64>();
                trace.log(format!("start {fault:?}"));
                spawn_lagging(&monitor, &fleet, &transport, windows, end, seed, &trace)
            }
            Fault::PauseNewLeader {
                pause_ms,
                strike_percent,
            } => {
                let seed = rng.random::<u64>();
                trace.log(format!("start {fault:?}"));
                Undo::Task(tokio::spawn(pause_new_leaders(
                    monitor.clone(),
                    fleet.clone(),
                    (*pause_ms, *strike_percent),
                    end,
                    seed,
                    trace.clone(),
                )))
            }
            Fault::PowerLoss => {
                for n in fleet.up() {
                    fleet.kill(&handle, n);
                }
                trace.log("power loss: kill all servers".to_string());
                Undo::RestartAll
            }
            Fault::Join => match fleet.join(&handle, &trace) {
                Some(n) => {
                    trace.log(format!("join: start spare n{}", n + 1));
                    Undo::Nothing
                }
                None => skip(&trace, fault, "no spare left"),
            },
            Fault::Leave { node } => match fleet.begin_leave(node % nodes) {
                Ok(n) => {
                    trace.log(format!("leave: ask the cluster to remove n{}", n + 1));
                    let admin = harness_client(fleet.client_addrs(), rng.random());
                    Undo::Background(tokio::spawn(send_leave(
                        fleet.clone(),
                        n,
                        admin,
                        trace.clone(),
                    )))
                }
                Err(why) => skip(&trace, fault, &why),
            },
            Fault::KillForever { node } => {
                match fleet.kill_forever(&handle, node % nodes, &mut status).await {
                    Ok(n) => {
                        trace.log(format!("kill n{} for good", n + 1));
                        Undo::Nothing
                    }
                    Err(why) => skip(&trace, fault, &why),
                }
            }
            _ => Undo::Nothing,
        };
        undo.insert(index, action);
    }
    for task in background {
        if let Err(e) = task.await {
            panic!("nemesis background task failed: {e}");
        }
    }
    // Everything is healed by the schedule; make sure of it.
    transport.clear();
    for n in 0..fleet.len() {
        if let Some(clock) = fleet.clock(n) {
            clock.reset();
        }
        if let Some(disk) = fleet.disk_faults(n) {
            disk.set_slow(0, 0);
        }
    }
    for &id in &ids {
        net.unclog_node(id);
    }
    for &a in &ids {
        for &b in &ids {
            if a != b {
                net.unclog_link(a, b);
            }
        }
    }
    trace.log("nemesis done: all healed".to_string());
}

fn skip(trace: &Trace, fault: &Fault, why: &str) -> Undo {
    trace.log(format!("skip {fault:?}: {why}"));
    Undo::Nothing
}

/// Ends one fault.
async fn heal(
    action: Undo,
    fault: &Fault,
    fleet: &Fleet,
    transport: &TransportFaults,
    trace: &Trace,
) {
    let handle = Handle::current();
    let net = NetSim::current();
    let ids = fleet.sim_ids();
    let node_of = |i: u32| -> SimNodeId { ids[i as usize % ids.len()] };
    match action {
        Undo::Links(links, stalled) => {
            for (a, b) in &links {
                net.unclog_link(node_of(*a), node_of(*b));
            }
            if let Some(clock) = stalled.and_then(|n| fleet.clock(n)) {
                clock.reset();
            }
            trace.log(format!("heal {fault:?}"));
        }
        Undo::Transport(f) => {
            let mut plan = transport.plan();
            match &f {
                Fault::MessageLoss { .. } => plan.drop_probability = 0.0,
                Fault::MessageDelay { .. } => plan.delay_probability = 0.0,
                Fault::MessageDuplicate { .. } => plan.duplicate_probability = 0.0,
                Fault::MessageReorder { .. } => plan.reorder_probability = 0.0,
                Fault::FlakyLinks { links, .. } => {
                    for &(a, b) in links {
                        plan.link_drop_percent
                            .remove(&(u64::from(a) + 1, u64::from(b) + 1));
                    }
                }
                Fault::AsymmetricLink { from, to } => {
                    plan.link_drop_percent
                        .remove(&(u64::from(*from) + 1, u64::from(*to) + 1));
                }
                _ => {}
            }
            transport.set(plan);
            trace.log(format!("heal {f:?}"));
        }
        Undo::Restart(n) => {
            if fleet.restart(&handle, n) {
                trace.log(format!("restart n{}", n + 1));
            } else {
                trace.log(format!("n{} stays down ({:?})", n + 1, fleet.life(n)));
            }
        }
        Undo::Clock(n) => {
            if let Some(clock) = fleet.clock(n) {
                clock.reset();
            }
            trace.log(format!("clock of n{} exact again", n + 1));
        }
        Undo::SlowDisk(n) => {
            if let Some(disk) = fleet.disk_faults(n) {
                disk.set_slow(0, 0);
            }
            trace.log(format!("disk of n{} fast again", n + 1));
        }
        Undo::Resume(n) => {
            handle.resume(node_of(n));
            trace.log(format!("resume n{}", n + 1));
        }
        Undo::DiskErrors(n) => {
            let injected = fleet.disk_faults(n).map_or(0, |disk| {
                disk.set_error_percent(0);
                disk.injected()
            });
            // A node that stopped on an I/O error is brought back, as an operator would.
            let restarted = fleet.restart(&handle, n);
            trace.log(format!(
                "disk errors off on n{} ({injected} injected so far); restarted: {restarted}",
                n + 1
            ));
        }
        Undo::Task(task) => {
            if let Err(e) = task.await {
                panic!("fault task failed: {e}");
            }
            trace.log(format!("heal {fault:?}"));
        }
        Undo::RestartAll => {
            for n in 0..fleet.len() {
                fleet.restart(&handle, n);
            }
            trace.log("power back: restart all servers".to_string());
        }
        Undo::Background(task) => {
            if let Err(e) = task.await {
                panic!("nemesis background task failed: {e}");
            }
        }
        Undo::Nothing => {}
    }
}
