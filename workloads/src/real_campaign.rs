//! The simulator's campaign against real processes: register and set workloads through the
//! real client library while the process nemesis kills, restarts, pauses and resumes
//! `quorumkv server` processes, and (optionally) nodes join and leave through the real CLI;
//! then a final heal, a liveness check, and the same checker the simulator uses (`check_kv` for
//! registers, `check_set` for the set).
//!
//! Membership steps run one per heal period, before that period's fault, each until the cluster
//! has settled (`process_cluster::convergence_problem`); the main phase lasts until every step
//! ran, however long `duration_s` is, so the workload runs throughout. A failed step ends the
//! membership schedule and fails the run.
//!
//! Invariants: every key a run touches lives under a fresh namespace (`run-<nonce>/`), and every
//! client session id is fresh, so a run against a long-lived cluster never reads an earlier run's
//! data or collides with its sessions; the register and the set workloads record into separate
//! histories (each with its own process ids) on one clock; a run passes only when both checks
//! pass, every client completed an operation after the final heal within the bound, and no
//! server exited on its own.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use checker::{check_kv, check_set, CheckOptions, History, SetReport, Verdict, Violation};
use node::client::ClientOptions;
use tokio::sync::watch;

use crate::process_cluster::{ClusterError, ProcessCluster};
use crate::process_nemesis::{ProcessFault, ProcessNemesis};
use crate::remote::ClientStore;
use crate::store::{KvStore, StoreError, Value};
use crate::{ClientStats, Recorder, WorkloadClient, WorkloadSpec};

/// Everything a campaign needs besides the cluster.
#[derive(Clone, Debug)]
pub struct CampaignOptions {
    pub seed: u64,
    /// Length of the main phase (faults and heals alternate), before the final heal.
    pub duration_s: u64,
    pub fault_ms: u64,
    pub heal_ms: u64,
    pub faults: Vec<ProcessFault>,
    /// Most nodes hit by one fault (`None`: a minority).
    pub max_faulty: Option<usize>,
    pub register_clients: u32,
    pub set_clients: u32,
    pub think_time_ms: u64,
    /// After the final heal every client must complete an operation within this bound.
    pub liveness_bound_s: u64,
    pub client_request_timeout_ms: u64,
    pub client_operation_timeout_ms: u64,
    /// Nodes joining and leaving during the main phase, in order (empty: none).
    pub membership: Vec<MembershipStep>,
    /// Longest time one membership step may take until the cluster has settled.
    pub membership_bound_s: u64,
}

/// One membership change of a campaign, made with the real `quorumkv cluster` CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// `quorumkv cluster join` a new node, then wait until it holds its share of replicas and
    /// every shard's voters are its target replicas.
    Join,
    /// `quorumkv cluster leave` the most recently joined node still in the cluster (it must
    /// exit 0, the node must stop by itself), then wait until the cluster has settled.
    Leave,
}

impl MembershipStep {
    /// Two joins, then two leaves: the cluster grows by two nodes and shrinks back.
    pub const GROW_AND_SHRINK: [MembershipStep; 4] = [
        MembershipStep::Join,
        MembershipStep::Join,
        MembershipStep::Leave,
        MembershipStep::Leave,
    ];
}

/// What one membership step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipEvent {
    pub step: MembershipStep,
    /// The node that joined or left (None: the step failed before one was chosen).
    pub node: Option<u64>,
    pub ok: bool,
    /// From the command's start until the cluster had settled.
    pub took_ms: u64,
    /// Replicas the node held once settled (joins).
    pub replicas: Option<usize>,
    pub detail: String,
}

impl fmt::Display for MembershipEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = self.node.map_or_else(|| "-".into(), |n| format!("n{n}"));
        let verb = match self.step {
            MembershipStep::Join => "join",
            MembershipStep::Leave => "leave",
        };
        let outcome = if self.ok { "ok" } else { "FAILED" };
        write!(
            f,
            "{verb} {node} {outcome} after {} ms: {}",
            self.took_ms, self.detail
        )
    }
}

impl Default for CampaignOptions {
    fn default() -> Self {
        CampaignOptions {
            seed: 1,
            duration_s: 60,
            fault_ms: 3_000,
            heal_ms: 3_000,
            faults: ProcessFault::ALL.to_vec(),
            max_faulty: None,
            register_clients: 4,
            set_clients: 2,
            think_time_ms: 5,
            liveness_bound_s: 20,
            client_request_timeout_ms: 1_000,
            client_operation_timeout_ms: 4_000,
            membership: Vec::new(),
            membership_bound_s: 60,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CampaignVerdict {
    Pass,
    NotLinearizable {
        key: String,
    },
    SetAnomaly {
        anomalies: usize,
        first: String,
    },
    /// The checker ran out of budget: neither a pass nor a proven violation.
    CheckerUnknown {
        reason: String,
    },
    /// A server process exited without being killed by the nemesis.
    ServerExited {
        detail: String,
    },
    /// After the final heal some client completed no operation within the bound.
    NoProgress {
        detail: String,
    },
    /// A join or leave failed or the cluster did not settle after it.
    MembershipFailed {
        detail: String,
    },
}

impl CampaignVerdict {
    pub fn passed(&self) -> bool {
        matches!(self, CampaignVerdict::Pass)
    }

    pub fn summary(&self) -> String {
        match self {
            CampaignVerdict::Pass => "PASS".into(),
            CampaignVerdict::NotLinearizable { key } => {
                format!("FAIL not linearizable (key {key})")
            }
            CampaignVerdict::SetAnomaly { anomalies, first } => {
                format!("FAIL set: {anomalies} anomalies; first: {first}")
            }
            CampaignVerdict::CheckerUnknown { reason } => format!("FAIL checker unknown: {reason}"),
            CampaignVerdict::ServerExited { detail } => format!("FAIL server exited: {detail}"),
            CampaignVerdict::NoProgress { detail } => format!("FAIL no progress: {detail}"),
            CampaignVerdict::MembershipFailed { detail } => {
                format!("FAIL membership change: {detail}")
            }
        }
    }
}

/// What a campaign produced.
#[derive(Clone, Debug)]
pub struct CampaignReport {
    pub seed: u64,
    pub nodes: usize,
    pub verdict: CampaignVerdict,
    pub register_verdict: Verdict,
    pub set_report: SetReport,
    pub register_history: History,
    pub set_history: History,
    pub register_stats: ClientStats,
    pub set_stats: ClientStats,
    /// Time-stamped nemesis and harness events, one per line.
    pub log: Vec<String>,
    pub kills: usize,
    pub pauses: usize,
    /// Every membership step, in order.
    pub membership: Vec<MembershipEvent>,
    /// Slowest client's first ok operation after the final heal, in ms (`None`: some never).
    pub recovery_ms_max: Option<u64>,
    pub wall_s: f64,
    pub check_s: f64,
}

impl CampaignReport {
    /// The figures printed after every run, the same way every time.
    pub fn figures(&self) -> String {
        let r = &self.register_stats;
        let s = &self.set_stats;
        let elapsed = self.wall_s.max(1e-9);
        format!(
            "nodes {} | register ops {} (ok {} fail {} info {}) | set ops {} (ok {} fail {} info {}) | \
             {:.0} ops/s | faults: {} kills, {} pauses | membership: {} steps ({} ok) | recovery after final heal: {} | \
             set: {} acknowledged adds, {} unknown adds present | check {:.2} s | wall {:.1} s",
            self.nodes,
            r.total(),
            r.ok,
            r.fail,
            r.info,
            s.total(),
            s.ok,
            s.fail,
            s.info,
            (r.total() + s.total()) as f64 / elapsed,
            self.kills,
            self.pauses,
            self.membership.len(),
            self.membership.iter().filter(|e| e.ok).count(),
            self.recovery_ms_max
                .map_or_else(|| "never".to_string(), |ms| format!("{ms} ms")),
            self.set_report.acknowledged_adds,
            self.set_report.unknown_adds_present,
            self.check_s,
            self.wall_s
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("client setup: {0}")]
    Client(String),
    #[error("a workload task failed: {0}")]
    Task(String),
}

/// Prefixes every key, so that runs against one long-lived cluster never share keys.
struct NamespacedStore<S> {
    inner: S,
    prefix: String,
}

impl<S> NamespacedStore<S> {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl<S: KvStore> KvStore for NamespacedStore<S> {
    async fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        self.inner.get(&self.key(key)).await
    }
    async fn put(&self, key: &str, value: Value) -> Result<(), StoreError> {
        self.inner.put(&self.key(key), value).await
    }
    async fn cas(&self, key: &str, expected: Value, new: Value) -> Result<bool, StoreError> {
        self.inner.cas(&self.key(key), expected, new).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(&self.key(key)).await
    }
    async fn set_add(&self, set: &str, element: Value) -> Result<(), StoreError> {
        self.inner.set_add(&self.key(set), element).await
    }
    async fn set_read(&self, set: &str) -> Result<BTreeSet<Value>, StoreError> {
        self.inner.set_read(&self.key(set)).await
    }
}

type Client = WorkloadClient<NamespacedStore<ClientStore>>;

/// Time-stamped lines, printed as they happen and kept for the report.
struct EventLog {
    start: Instant,
    lines: Vec<String>,
}

impl EventLog {
    fn log(&mut self, line: impl AsRef<str>) {
        let line = format!(
            "[{:>8.3} s] {}",
            self.start.elapsed().as_secs_f64(),
            line.as_ref()
        );
        println!("{line}");
        self.lines.push(line);
    }
}

/// How one client task ended.
struct ClientEnd {
    client: Client,
    /// First ok operation after the final heal, in ms after it (`None`: none within the bound).
    recovery_ms: Option<u64>,
}

/// Runs one campaign against `cluster` (spawned or attached; at least one node must lead
/// within the liveness bound before the workload starts).
pub async fn run_campaign(
    options: &CampaignOptions,
    cluster: &mut ProcessCluster,
) -> Result<CampaignReport, CampaignError> {
    let started = Instant::now();
    let mut log = EventLog {
        start: started,
        lines: Vec::new(),
    };
    let bound = Duration::from_secs(options.liveness_bound_s);
    let leader = cluster.wait_for_leader(bound).await?;
    // Fresh per run (not per seed): a rerun against the same cluster must not reuse sessions.
    let nonce: u64 = rand::random();
    log.log(format!(
        "seed {} | {} nodes | leader n{leader} | namespace run-{nonce:016x}/",
        options.seed,
        cluster.node_ids().len()
    ));

    // The history and the event log share one time origin, so faults line up with ops.
    let clock_start = started;
    let clock: Arc<crate::Clock> = Arc::new(move || clock_start.elapsed().as_nanos() as u64);
    let register_recorder = Recorder::new(clock.clone());
    let set_recorder = Recorder::new(clock);
    // The nemesis ends the main phase (after `duration_s`, and after the last membership step).
    let main_until_ns = Arc::new(AtomicU64::new(u64::MAX));
    let (healed_tx, healed_rx) = watch::channel::<Option<Instant>>(None);

    let mut tasks = Vec::new();
    let groups = [
        (
            WorkloadSpec::register(),
            options.register_clients,
            &register_recorder,
        ),
        (WorkloadSpec::set(), options.set_clients, &set_recorder),
    ];
    for (group, (spec, count, recorder)) in groups.into_iter().enumerate() {
        for index in 0..count {
            let client_seed = options
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add((group as u64) << 32 | u64::from(index));
            let client = new_client(
                options,
                cluster,
                nonce,
                &spec,
                index,
                count,
                client_seed,
                recorder,
            )?;
            let rx = healed_rx.clone();
            let until = main_until_ns.clone();
            tasks.push(tokio::spawn(client_task(client, until, rx, bound)));
        }
    }
    let set_task_start = options.register_clients as usize;

    let ending = MainPhaseEnd {
        started,
        until_ns: &main_until_ns,
        healed: &healed_tx,
    };
    let (kills, pauses, exits, membership) =
        run_nemesis(options, cluster, &mut log, &ending).await?;

    let mut ends = Vec::new();
    for task in tasks {
        ends.push(task.await.map_err(|e| CampaignError::Task(e.to_string()))?);
    }
    let stuck: Vec<String> = ends
        .iter()
        .enumerate()
        .filter(|(_, e)| e.recovery_ms.is_none())
        .map(|(i, _)| format!("client {i}"))
        .collect();
    let recovery_ms_max = if stuck.is_empty() {
        ends.iter().filter_map(|e| e.recovery_ms).max()
    } else {
        None
    };
    let final_read_ok = match ends.get_mut(set_task_start) {
        Some(first_set_client) => final_set_read(&mut first_set_client.client, bound).await,
        None => true,
    };
    log.log("workload done");
    let (mut register_stats, mut set_stats) = (ClientStats::default(), ClientStats::default());
    for (i, end) in ends.iter().enumerate() {
        if i < set_task_start {
            register_stats.add(&end.client.stats);
        } else {
            set_stats.add(&end.client.stats);
        }
    }

    let check_started = Instant::now();
    let register_history = register_recorder.history();
    let set_history = set_recorder.history();
    let register_verdict = check_kv(&register_history, &check_options());
    let set_report = check_set(&set_history);
    let check_s = check_started.elapsed().as_secs_f64();

    let verdict = judge(&Findings {
        register_verdict: &register_verdict,
        set_report: &set_report,
        exits: &exits,
        stuck: &stuck,
        final_read_ok,
        liveness_bound_s: options.liveness_bound_s,
        membership: &membership,
    });
    Ok(CampaignReport {
        seed: options.seed,
        nodes: cluster.node_ids().len(),
        verdict,
        register_verdict,
        set_report,
        register_history,
        set_history,
        register_stats,
        set_stats,
        log: log.lines,
        kills,
        pauses,
        membership,
        recovery_ms_max,
        wall_s: started.elapsed().as_secs_f64(),
        check_s,
    })
}

/// What a finished run observed, for `judge`.
struct Findings<'a> {
    register_verdict: &'a Verdict,
    set_report: &'a SetReport,
    /// Servers that exited on their own.
    exits: &'a [String],
    /// Clients that completed nothing after the final heal.
    stuck: &'a [String],
    final_read_ok: bool,
    liveness_bound_s: u64,
    membership: &'a [MembershipEvent],
}

/// Safety violations first (they are what the campaign is for), then checker give-ups, then
/// crashes and liveness; a pass needs all of them clean.
fn judge(f: &Findings<'_>) -> CampaignVerdict {
    if let Verdict::NotLinearizable(Violation { key }) = f.register_verdict {
        CampaignVerdict::NotLinearizable { key: key.clone() }
    } else if let Some(first) = f.set_report.anomalies.first() {
        CampaignVerdict::SetAnomaly {
            anomalies: f.set_report.anomalies.len(),
            first: first.to_string(),
        }
    } else if let Verdict::Unknown { reason } = f.register_verdict {
        CampaignVerdict::CheckerUnknown {
            reason: reason.clone(),
        }
    } else if !f.exits.is_empty() {
        CampaignVerdict::ServerExited {
            detail: f.exits.join("; "),
        }
    } else if let Some(failed) = f.membership.iter().find(|e| !e.ok) {
        CampaignVerdict::MembershipFailed {
            detail: failed.to_string(),
        }
    } else if !f.stuck.is_empty() {
        CampaignVerdict::NoProgress {
            detail: format!(
                "{} completed no operation within {} s after the final heal",
                f.stuck.join(", "),
                f.liveness_bound_s
            ),
        }
    } else if !f.final_read_ok {
        CampaignVerdict::NoProgress {
            detail: format!(
                "the set's final read did not succeed within {} s",
                f.liveness_bound_s
            ),
        }
    } else {
        CampaignVerdict::Pass
    }
}

/// Single-threaded check (the histories are small) with a generous time budget.
fn check_options() -> CheckOptions {
    CheckOptions::default()
}

#[allow(clippy::too_many_arguments)]
fn new_client(
    options: &CampaignOptions,
    cluster: &ProcessCluster,
    nonce: u64,
    spec: &WorkloadSpec,
    index: u32,
    count: u32,
    client_seed: u64,
    recorder: &Recorder,
) -> Result<Client, CampaignError> {
    let client_options = ClientOptions {
        request_timeout: Duration::from_millis(options.client_request_timeout_ms),
        operation_timeout: Duration::from_millis(options.client_operation_timeout_ms),
        connect_timeout: Duration::from_millis(500),
        rng_seed: Some(client_seed ^ nonce),
        ..ClientOptions::default()
    };
    // Each client starts at a different node, so followers see client traffic too.
    let mut endpoints = cluster.endpoints();
    let first = (index as usize) % endpoints.len().max(1);
    endpoints.rotate_left(first);
    let store = ClientStore::new(endpoints, client_options)
        .map_err(|e| CampaignError::Client(e.to_string()))?;
    let store = NamespacedStore {
        inner: store,
        prefix: format!("run-{nonce:016x}/"),
    };
    Ok(
        WorkloadClient::new(store, spec, index, count, client_seed, recorder.clone())
            .with_think_time_ms(options.think_time_ms),
    )
}

/// The main phase, then (after the final heal) the client's liveness probe.
async fn client_task(
    mut client: Client,
    main_until_ns: Arc<AtomicU64>,
    mut healed: watch::Receiver<Option<Instant>>,
    bound: Duration,
) -> ClientEnd {
    // One operation at a time, so that the end the nemesis publishes takes effect at once.
    loop {
        let before = client.stats.total();
        client.run(1, main_until_ns.load(Ordering::SeqCst)).await;
        if client.stats.total() == before {
            break;
        }
    }
    let healed_at = loop {
        if let Some(at) = *healed.borrow_and_update() {
            break at;
        }
        if healed.changed().await.is_err() {
            // The nemesis is gone without healing: the campaign failed; report no recovery.
            return ClientEnd {
                client,
                recovery_ms: None,
            };
        }
    };
    let mut recovery_ms = None;
    while healed_at.elapsed() < bound {
        let before = client.stats.ok;
        client.run(1, u64::MAX).await;
        if client.stats.ok > before {
            recovery_ms = Some(healed_at.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ClientEnd {
        client,
        recovery_ms,
    }
}

/// Runs the set's closing read until one succeeds or `bound` passes.
async fn final_set_read(client: &mut Client, bound: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < bound {
        let before = client.stats.ok;
        client.run_final().await;
        if client.stats.ok > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// When the main phase started, and where its end and the final heal are published.
struct MainPhaseEnd<'a> {
    started: Instant,
    /// Clock time (ns since `started`) at which clients stop the main phase.
    until_ns: &'a AtomicU64,
    healed: &'a watch::Sender<Option<Instant>>,
}

/// Alternates heal and fault periods until the main phase ends (not before every membership
/// step ran; each step runs at the end of a heal period, before the fault), then ends the main
/// phase, heals for good and tells the clients. Returns (kills, pauses, servers that exited on
/// their own, membership steps).
async fn run_nemesis(
    options: &CampaignOptions,
    cluster: &mut ProcessCluster,
    log: &mut EventLog,
    ending: &MainPhaseEnd<'_>,
) -> Result<(usize, usize, Vec<String>, Vec<MembershipEvent>), CampaignError> {
    let nodes = cluster.node_ids().len();
    let mut nemesis = (!options.faults.is_empty()).then(|| {
        ProcessNemesis::new(
            options.seed,
            options.faults.clone(),
            options
                .max_faulty
                .unwrap_or_else(|| ProcessNemesis::minority(nodes)),
        )
    });
    let main_end = ending.started + Duration::from_secs(options.duration_s);
    let until = |ms: u64| (Instant::now() + Duration::from_millis(ms)).min(main_end);
    let mut steps: VecDeque<MembershipStep> = options.membership.iter().copied().collect();
    let mut joined = Vec::new();
    let mut events = Vec::new();
    let membership_bound = Duration::from_secs(options.membership_bound_s);
    let (mut kills, mut pauses, mut exits) = (0, 0, Vec::new());
    loop {
        let heal_end = if steps.is_empty() {
            until(options.heal_ms)
        } else {
            Instant::now() + Duration::from_millis(options.heal_ms)
        };
        tokio::time::sleep_until(heal_end.into()).await;
        note_exits(cluster, log, &mut exits);
        if let Some(step) = steps.pop_front() {
            let event = membership_step(step, cluster, &mut joined, membership_bound).await;
            log.log(event.to_string());
            if !event.ok {
                steps.clear();
            }
            events.push(event);
            note_exits(cluster, log, &mut exits);
        }
        if Instant::now() >= main_end {
            if steps.is_empty() {
                break;
            }
            continue;
        }
        let Some(nemesis) = nemesis.as_mut() else {
            continue;
        };
        let applied = nemesis.strike(cluster).await?;
        if applied.fault.kills() {
            kills += applied.nodes.len();
        } else {
            pauses += applied.nodes.len();
        }
        log.log(format!("fault {applied}"));
        tokio::time::sleep_until(until(options.fault_ms).into()).await;
        note_exits(cluster, log, &mut exits);
        let actions = cluster.heal_all()?;
        log.log(format!("heal [{}]", actions.join(", ")));
    }
    ending
        .until_ns
        .store(ending.started.elapsed().as_nanos() as u64, Ordering::SeqCst);
    let actions = cluster.heal_all()?;
    log.log(format!(
        "main phase over; final heal [{}]",
        actions.join(", ")
    ));
    let _ = ending.healed.send(Some(Instant::now()));
    Ok((kills, pauses, exits, events))
}

/// Runs one membership step through the real CLI and waits until the cluster has settled.
async fn membership_step(
    step: MembershipStep,
    cluster: &mut ProcessCluster,
    joined: &mut Vec<u64>,
    bound: Duration,
) -> MembershipEvent {
    let started = Instant::now();
    let mut event = MembershipEvent {
        step,
        node: None,
        ok: false,
        took_ms: 0,
        replicas: None,
        detail: String::new(),
    };
    let outcome: Result<String, String> = match step {
        MembershipStep::Join => match cluster.join_node().await {
            Err(e) => Err(e.to_string()),
            Ok(id) => {
                event.node = Some(id);
                joined.push(id);
                match cluster.wait_converged(bound, Some(id)).await {
                    Err(e) => Err(e.to_string()),
                    Ok(status) => {
                        let replicas = status.member(id).and_then(|m| m.replicas).unwrap_or(0);
                        event.replicas = Some(replicas);
                        if replicas == 0 {
                            Err(format!("settled, but node {id} holds no replica"))
                        } else {
                            Ok(format!(
                                "holds {replicas} replicas; every shard's voters are its target (map epoch {})",
                                status.epoch
                            ))
                        }
                    }
                }
            }
        },
        MembershipStep::Leave => match joined.pop() {
            None => Err("no joined node is left to leave".into()),
            Some(id) => {
                event.node = Some(id);
                match cluster.leave_node(id, bound).await {
                    Err(e) => Err(e.to_string()),
                    Ok(left) => match cluster.wait_converged(bound, None).await {
                        Err(e) => Err(e.to_string()),
                        Ok(status) => Ok(format!(
                            "`cluster leave` exited 0 after {} ms, the node stopped by itself ({}) after {} ms; settled (map epoch {})",
                            left.cli_ms, left.node_exit, left.total_ms, status.epoch
                        )),
                    },
                }
            }
        },
    };
    event.took_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(detail) => {
            event.ok = true;
            event.detail = detail;
        }
        Err(detail) => {
            let now = cluster.convergence_report().await;
            event.detail = format!("{detail} | cluster now: {now}");
        }
    }
    event
}

fn note_exits(cluster: &mut ProcessCluster, log: &mut EventLog, exits: &mut Vec<String>) {
    while let Err(e) = cluster.check_alive() {
        log.log(format!("unexpected: {e}"));
        exits.push(e.to_string());
    }
}

/// Writes the histories, the event log and a summary into `dir`; on failure also
/// `explanation.txt` and `report.html`. Returns the files written.
pub fn write_artifacts(report: &CampaignReport, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str| -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
        Ok(())
    };
    write("register.jsonl", &report.register_history.to_jsonl())?;
    write("set.jsonl", &report.set_history.to_jsonl())?;
    write("nemesis.log", &(report.log.join("\n") + "\n"))?;
    let summary = format!(
        "seed {}\nverdict: {}\n{}\n",
        report.seed,
        report.verdict.summary(),
        report.figures()
    );
    write("summary.txt", &summary)?;
    if !report.verdict.passed() {
        let (explanation, html) = explain_failure(report);
        write("explanation.txt", &explanation)?;
        write("report.html", &html)?;
    }
    Ok(written)
}

/// The checker's explanation of a failed run in words, and the HTML report.
fn explain_failure(report: &CampaignReport) -> (String, String) {
    let mut text = format!(
        "verdict: {}\nseed: {}\n",
        report.verdict.summary(),
        report.seed
    );
    let mut sections = Vec::new();
    let explanation = match &report.register_verdict {
        Verdict::NotLinearizable(violation) => {
            checker::explain(&report.register_history, violation, &check_options())
        }
        _ => None,
    };
    if let Some(e) = &explanation {
        text.push_str(&format!(
            "register key {}: op {} cannot be placed: {}\nminimal failing sub-history: {:?}\n",
            e.key, e.failing_op, e.reason, e.minimal_ops
        ));
        for id in &e.minimal_ops {
            if let Some(record) = report.register_history.op(*id) {
                text.push_str(&format!("  {}\n", checker::explain::describe(record)));
            }
        }
    }
    sections.push(checker::html_section(
        "register workload",
        &report.register_history,
        &report.register_verdict,
        explanation.as_ref(),
    ));
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut set_section = format!(
        "<h2>set workload: {}</h2>\n<ul>\n",
        if report.set_report.is_valid() {
            "valid"
        } else {
            "NOT valid"
        }
    );
    for anomaly in report.set_report.anomalies.iter().take(100) {
        text.push_str(&format!("set: {anomaly}\n"));
        set_section.push_str(&format!("<li>{}</li>\n", escape(&anomaly.to_string())));
    }
    set_section.push_str("</ul>\n");
    sections.push(set_section);
    let log_section = format!(
        "<h2>nemesis</h2>\n<pre>{}</pre>\n",
        escape(&report.log.join("\n"))
    );
    sections.push(log_section);
    text.push_str("nemesis:\n");
    text.push_str(&report.log.join("\n"));
    text.push('\n');
    let html = checker::html_document(
        &format!("quorumkv real-cluster campaign, seed {}", report.seed),
        &sections,
    );
    (text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings<'a>(
        register_verdict: &'a Verdict,
        set_report: &'a SetReport,
        exits: &'a [String],
        stuck: &'a [String],
    ) -> Findings<'a> {
        Findings {
            register_verdict,
            set_report,
            exits,
            stuck,
            final_read_ok: true,
            liveness_bound_s: 5,
            membership: &[],
        }
    }

    #[test]
    fn safety_violations_outrank_crashes_and_liveness() {
        let clean = SetReport::default();
        let stuck = vec!["client 1".to_string()];
        let exits = vec!["node 2 exited".to_string()];
        let violation = Verdict::NotLinearizable(Violation { key: "r1".into() });
        assert_eq!(
            judge(&findings(&violation, &clean, &exits, &stuck)),
            CampaignVerdict::NotLinearizable { key: "r1".into() }
        );
        let lost = SetReport {
            anomalies: vec![checker::SetAnomaly::NeverAdded {
                key: "s".into(),
                element: 9,
                read: checker::OpId(3),
            }],
            ..SetReport::default()
        };
        let verdict = judge(&findings(&Verdict::Linearizable, &lost, &exits, &stuck));
        assert!(
            matches!(verdict, CampaignVerdict::SetAnomaly { anomalies: 1, .. }),
            "{verdict:?}"
        );
        let verdict = judge(&findings(&Verdict::Linearizable, &clean, &exits, &stuck));
        assert!(
            matches!(verdict, CampaignVerdict::ServerExited { .. }),
            "{verdict:?}"
        );
        let verdict = judge(&findings(&Verdict::Linearizable, &clean, &[], &stuck));
        assert!(
            matches!(verdict, CampaignVerdict::NoProgress { .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn pass_needs_every_check_clean() {
        let clean = SetReport::default();
        assert_eq!(
            judge(&findings(&Verdict::Linearizable, &clean, &[], &[])),
            CampaignVerdict::Pass
        );
        let unknown = Verdict::Unknown {
            reason: "budget".into(),
        };
        assert!(!judge(&findings(&unknown, &clean, &[], &[])).passed());
        let mut no_final_read = findings(&Verdict::Linearizable, &clean, &[], &[]);
        no_final_read.final_read_ok = false;
        assert!(!judge(&no_final_read).passed());
    }
}
