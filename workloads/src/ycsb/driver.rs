//! The YCSB driver: a load phase that inserts the records, then a run phase of one core
//! workload by `clients` tasks, each with its own adapter (connection), key chooser and rng.
//!
//! Closed loop (no target rate): each client sends its next operation as soon as the previous
//! one is answered; latency is send to answer. Open loop (`target_ops_per_s`): each client
//! follows a fixed schedule (rate / clients per client, clients offset from each other) and
//! latency runs from the intended send time (`OpenLoopPacer`, `LatencyRecorder::
//! record_from_intended`), so a stall counts against every operation it delayed: coordinated
//! omission corrected. Sends still due when the run ends are counted as `behind_schedule`.
//!
//! Only operations that start (closed loop: are sent; open loop: are due) after the warm-up
//! and before the end are recorded; closed-loop ones must also be answered before the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use node::client::latency::{LatencyRecorder, LatencySummary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::adapters::{Adapter, AdapterError, Connector};
use super::keys::{key_name, KeyChooser};
use super::workload::{Mix, OpKind, Workload, SCAN_LENGTH_MAX};

/// Tries of one insert of the load phase before it counts as failed.
pub const LOAD_INSERT_TRIES: u32 = 3;
/// Delay between the last client connecting and the common start, so that every client
/// starts on the same schedule.
const START_DELAY_MS: u64 = 50;

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub record_count: u64,
    pub value_bytes: usize,
    /// Concurrent inserting tasks.
    pub clients: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadOutcome {
    pub records: u64,
    pub errors: u64,
    pub seconds: f64,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RunSpec {
    pub workload: Workload,
    /// Records the load phase inserted (record numbers `0..record_count`).
    pub record_count: u64,
    pub value_bytes: usize,
    pub clients: usize,
    /// Open loop at this total rate; `None`: closed loop.
    pub target_ops_per_s: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub seed: u64,
}

/// One run's figures: one JSON line in a results file, one text line on stdout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub store: String,
    pub mode: String,
    pub workload: Workload,
    pub clients: usize,
    pub target_ops_per_s: Option<f64>,
    pub record_count: u64,
    pub value_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Operations answered without error in the measured window.
    pub ops: u64,
    pub ops_per_s: f64,
    pub errors: u64,
    /// Reads of a key that was not there (inserts still in flight in D and E).
    pub not_found: u64,
    /// Open loop: sends that were due in the window but never made (the store fell behind).
    pub behind_schedule: u64,
    pub first_error: Option<String>,
    pub latency: LatencySummary,
    /// `(percentile, ms)` pairs of all operations.
    pub latency_curve: Vec<(f64, f64)>,
    pub per_operation: BTreeMap<String, LatencySummary>,
}

impl RunResult {
    /// The line printed after a run, the same fields every time so runs can be compared.
    pub fn summary_line(&self) -> String {
        let loop_kind = match self.target_ops_per_s {
            Some(rate) => format!("open-loop target_ops_per_s={rate:.0}"),
            None => "closed-loop".to_string(),
        };
        format!(
            "ycsb store={} mode=\"{}\" workload={} clients={} {} records={} value_bytes={} duration_s={:.1} | ops={} ops_per_s={:.0} errors={} not_found={} behind_schedule={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
            self.store,
            self.mode,
            self.workload.letter(),
            self.clients,
            loop_kind,
            self.record_count,
            self.value_bytes,
            self.duration_s,
            self.ops,
            self.ops_per_s,
            self.errors,
            self.not_found,
            self.behind_schedule,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
        )
    }
}

/// The send times of one open-loop client: `first`, `first + interval`, ...
#[derive(Clone, Debug)]
pub struct OpenLoopPacer {
    next: Instant,
    interval: Duration,
}

impl OpenLoopPacer {
    pub fn new(first: Instant, interval: Duration) -> OpenLoopPacer {
        assert!(
            !interval.is_zero(),
            "an open loop needs a positive interval"
        );
        OpenLoopPacer {
            next: first,
            interval,
        }
    }

    /// The next intended send time (whether or not the previous send was on time).
    pub fn next_intended(&mut self) -> Instant {
        let intended = self.next;
        self.next += self.interval;
        intended
    }

    /// How many intended sends from `from` (inclusive) fall before `end`.
    pub fn due_between(&self, from: Instant, end: Instant) -> u64 {
        let span = end.saturating_duration_since(from);
        span.as_nanos().div_ceil(self.interval.as_nanos()) as u64
    }
}

/// Record numbers of inserts, shared by the clients of a run: the next one to insert and the
/// newest acknowledged one (what the choosers may pick).
#[derive(Debug)]
pub struct InsertSequence {
    next: AtomicU64,
    latest: AtomicU64,
}

impl InsertSequence {
    pub fn new(record_count: u64) -> InsertSequence {
        InsertSequence {
            next: AtomicU64::new(record_count),
            latest: AtomicU64::new(record_count.saturating_sub(1)),
        }
    }

    fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn acknowledge(&self, number: u64) {
        self.latest.fetch_max(number, Ordering::Relaxed);
    }

    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::Relaxed)
    }
}

/// What one client (or the whole run, merged) measured.
#[derive(Debug, Default)]
pub struct Tally {
    all: LatencyRecorder,
    per_kind: BTreeMap<OpKind, LatencyRecorder>,
    errors: u64,
    not_found: u64,
    behind_schedule: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, kind: OpKind, outcome: &Result<Found, AdapterError>, latency: Duration) {
        match outcome {
            Ok(found) => {
                self.all.record(latency);
                self.per_kind.entry(kind).or_default().record(latency);
                if *found == Found::No {
                    self.not_found += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.all.merge(&other.all);
        for (kind, recorder) in other.per_kind {
            self.per_kind.entry(kind).or_default().merge(&recorder);
        }
        self.errors += other.errors;
        self.not_found += other.not_found;
        self.behind_schedule += other.behind_schedule;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    Yes,
    No,
}

/// A value of `bytes` bytes, different for each seed.
fn value_of(bytes: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..bytes).map(|_| rng.random_range(b'a'..=b'z')).collect()
}

/// How often `wait_ready` tries the store.
const READY_POLL_INTERVAL_MS: u64 = 200;
/// The key `wait_ready` writes.
pub const READY_KEY: &str = "ycsb:ready";

/// Waits until the store accepts a write (a fresh cluster may still be electing leaders).
pub async fn wait_ready<C: Connector>(
    connector: Arc<C>,
    timeout: Duration,
) -> Result<(), AdapterError> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let mut adapter = connector.connect(0).await?;
            adapter.update(READY_KEY, b"1").await
        };
        let last = match tokio::time::timeout(timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(AdapterError::new(connector.store(), "no answer")),
        };
        match last {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(AdapterError::new(
                    connector.store(),
                    format!("not ready after {timeout:?}: {}", e.detail),
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(READY_POLL_INTERVAL_MS)).await,
        }
    }
}

/// Inserts records `0..record_count` with `spec.clients` tasks.
pub async fn load<C: Connector>(
    connector: Arc<C>,
    spec: &LoadSpec,
) -> Result<LoadOutcome, AdapterError> {
    let loaders = spec.clients.max(1) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for loader in 0..loaders {
        let mut adapter = connector.connect(loader as usize).await?;
        let (records, value) = (spec.record_count, value_of(spec.value_bytes, loader));
        tasks.push(tokio::spawn(async move {
            let mut outcome = LoadOutcome {
                records: 0,
                errors: 0,
                seconds: 0.0,
                first_error: None,
            };
            for number in (loader..records).step_by(loaders as usize) {
                let mut last = Ok(());
                for _ in 0..LOAD_INSERT_TRIES {
                    last = adapter.insert(&key_name(number), &value).await;
                    if last.is_ok() {
                        break;
                    }
                }
                match last {
                    Ok(()) => outcome.records += 1,
                    Err(e) => {
                        outcome.errors += 1;
                        outcome.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            outcome
        }));
    }
    let mut total = LoadOutcome {
        records: 0,
        errors: 0,
        seconds: 0.0,
        first_error: None,
    };
    for task in tasks {
        let outcome = task
            .await
            .map_err(|e| AdapterError::new(connector.store(), format!("loader task: {e}")))?;
        total.records += outcome.records;
        total.errors += outcome.errors;
        if total.first_error.is_none() {
            total.first_error = outcome.first_error;
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok(total)
}

/// The measured window of a run, shared by its clients.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

struct ClientState {
    mix: Mix,
    chooser: KeyChooser,
    rng: StdRng,
    value: Vec<u8>,
    inserts: Arc<InsertSequence>,
}

impl ClientState {
    async fn execute<A: Adapter>(
        &mut self,
        adapter: &mut A,
        kind: OpKind,
    ) -> Result<Found, AdapterError> {
        let found = |yes: bool| if yes { Found::Yes } else { Found::No };
        match kind {
            OpKind::Read => {
                let key = self.choose_key();
                adapter.read(&key).await.map(found)
            }
            OpKind::Update => {
                let key = self.choose_key();
                adapter.update(&key, &self.value).await.map(|()| Found::Yes)
            }
            OpKind::Insert => {
                let number = self.inserts.take();
                adapter.insert(&key_name(number), &self.value).await?;
                self.inserts.acknowledge(number);
                Ok(Found::Yes)
            }
            OpKind::Scan => {
                let key = self.choose_key();
                let length = self.rng.random_range(1..=SCAN_LENGTH_MAX);
                adapter.scan(&key, length).await.map(|n| found(n > 0))
            }
            OpKind::ReadModifyWrite => {
                let key = self.choose_key();
                let was_there = adapter.read(&key).await?;
                adapter.update(&key, &self.value).await?;
                Ok(found(was_there))
            }
        }
    }

    fn choose_key(&mut self) -> String {
        let latest = self.inserts.latest();
        key_name(self.chooser.next(latest, &mut self.rng))
    }
}

async fn closed_loop<A: Adapter>(mut adapter: A, mut state: ClientState, window: Window) -> Tally {
    let mut tally = Tally::default();
    tokio::time::sleep_until(window.start).await;
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let kind = state.mix.next_kind(&mut state.rng);
        let outcome = state.execute(&mut adapter, kind).await;
        let done = Instant::now();
        if sent >= window.measure_from && done <= window.end {
            tally.record(kind, &outcome, done.duration_since(sent));
        }
    }
    tally
}

async fn open_loop<A: Adapter>(
    mut adapter: A,
    mut state: ClientState,
    window: Window,
    mut pacer: OpenLoopPacer,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let intended = pacer.next_intended();
        if intended >= window.end {
            break;
        }
        tokio::time::sleep_until(intended).await;
        if Instant::now() >= window.end {
            // Due but never sent: the store (or this client) fell behind the schedule.
            let from = intended.max(window.measure_from);
            tally.behind_schedule += pacer.due_between(from, window.end);
            break;
        }
        let kind = state.mix.next_kind(&mut state.rng);
        let outcome = state.execute(&mut adapter, kind).await;
        let done = Instant::now();
        if intended >= window.measure_from {
            tally.record(kind, &outcome, done.saturating_duration_since(intended));
        }
    }
    tally
}

/// Runs `spec.workload` against records `0..spec.record_count` (loaded before).
pub async fn run<C: Connector>(
    connector: Arc<C>,
    spec: &RunSpec,
) -> Result<RunResult, AdapterError> {
    let clients = spec.clients.max(1);
    let mix = spec.workload.mix();
    let inserts = Arc::new(InsertSequence::new(spec.record_count));
    // Room for inserts in the zipfian's key space (YCSB sizes it by the expected inserts).
    let key_space = if spec.workload.inserts() {
        spec.record_count.saturating_mul(2)
    } else {
        spec.record_count
    };
    let mut adapters = Vec::with_capacity(clients);
    for index in 0..clients {
        adapters.push(connector.connect(index).await?);
    }
    let start = Instant::now() + Duration::from_millis(START_DELAY_MS);
    let window = Window {
        start,
        measure_from: start + spec.warmup,
        end: start + spec.warmup + spec.duration,
    };
    let mut tasks = Vec::with_capacity(clients);
    for (index, adapter) in adapters.into_iter().enumerate() {
        let seed = spec.seed ^ ((index as u64 + 1) << 32);
        let state = ClientState {
            mix: mix.clone(),
            chooser: KeyChooser::new(mix.distribution, key_space, inserts.latest()),
            rng: StdRng::seed_from_u64(seed),
            value: value_of(spec.value_bytes, seed),
            inserts: Arc::clone(&inserts),
        };
        tasks.push(match spec.target_ops_per_s {
            None => tokio::spawn(closed_loop(adapter, state, window)),
            Some(rate) => {
                let interval = Duration::from_secs_f64(clients as f64 / rate.max(1e-3));
                let offset = interval.mul_f64(index as f64 / clients as f64);
                let pacer = OpenLoopPacer::new(start + offset, interval);
                tokio::spawn(open_loop(adapter, state, window, pacer))
            }
        });
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| AdapterError::new(connector.store(), format!("client task: {e}")))?;
        total.merge(tally);
    }
    let duration_s = spec.duration.as_secs_f64();
    Ok(RunResult {
        store: connector.store().to_string(),
        mode: connector.mode(),
        workload: spec.workload,
        clients,
        target_ops_per_s: spec.target_ops_per_s,
        record_count: spec.record_count,
        value_bytes: spec.value_bytes,
        warmup_s: spec.warmup.as_secs_f64(),
        duration_s,
        ops: total.all.count(),
        ops_per_s: total.all.count() as f64 / duration_s.max(1e-9),
        errors: total.errors,
        not_found: total.not_found,
        behind_schedule: total.behind_schedule,
        first_error: total.first_error,
        latency: total.all.summary(),
        latency_curve: total.all.curve(),
        per_operation: total
            .per_kind
            .iter()
            .map(|(kind, r)| (kind.name().to_string(), r.summary()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that answers in 1 ms, except one 1-second stall, driven at 100 ops/s for 10 s
    /// with the pacer's schedule: the stall must show in the corrected percentiles.
    #[test]
    fn open_loop_latency_counts_the_queueing_a_stall_causes() {
        let start = Instant::now();
        let mut pacer = OpenLoopPacer::new(start, Duration::from_millis(10));
        let mut corrected = LatencyRecorder::new();
        let mut naive = LatencyRecorder::new();
        let mut free_at = start;
        for op in 0..1000 {
            let intended = pacer.next_intended();
            let sent = intended.max(free_at);
            let service = if op == 300 {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(1)
            };
            let done = sent + service;
            free_at = done;
            corrected.record_from_intended(intended, done);
            naive.record(done.duration_since(sent));
        }
        // Only the stalled operation is slow when measured from its actual send ...
        assert!(
            naive.percentile_ms(99.0) < 2.0,
            "{}",
            naive.percentile_ms(99.0)
        );
        // ... but ~100 operations were due during the stall and waited for it.
        assert!(
            corrected.percentile_ms(95.0) > 100.0,
            "{:?}",
            corrected.summary()
        );
        assert!(corrected.percentile_ms(50.0) < 2.0);
        assert!((corrected.summary().max_ms - 1000.0).abs() < 2.0);
    }

    #[test]
    fn pacer_counts_sends_due_before_the_end() {
        let start = Instant::now();
        let mut pacer = OpenLoopPacer::new(start, Duration::from_millis(10));
        assert_eq!(pacer.next_intended(), start);
        assert_eq!(pacer.next_intended(), start + Duration::from_millis(10));
        assert_eq!(
            pacer.due_between(start, start + Duration::from_millis(95)),
            10
        );
        assert_eq!(pacer.due_between(start, start), 0);
    }

    #[test]
    fn insert_sequence_hands_out_new_numbers_and_tracks_the_newest() {
        let s = InsertSequence::new(100);
        assert_eq!(s.latest(), 99);
        let (a, b) = (s.take(), s.take());
        assert_eq!((a, b), (100, 101));
        s.acknowledge(b);
        s.acknowledge(a);
        assert_eq!(s.latest(), 101);
    }
}
