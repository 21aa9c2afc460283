//! Closed-loop writers of fresh keys in rounds (`quorumkv-ycsb write`): the storage
//! benchmarks of `make bench-storage` (throughput against etcd, growth to a data size,
//! writers running while a node joins).
//!
//! `clients` tasks each write `value_bytes` values to keys `PREFIX:NNNNNNNNNNNN` that were
//! never written before (a shared counter hands out the numbers), one request in flight per
//! client. Every `round` the figures of the operations that finished in that round (ops/s,
//! p50/p99/max latency, errors) are reported together with what the probe sees of the servers
//! (resident memory of given process ids, bytes under given directories). The run stops when
//! `until_bytes` of values were acknowledged, after `duration`, or when `stop_file` exists,
//! whichever comes first; the whole run's figures (after `warmup`) come last.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::client::latency::{LatencyRecorder, LatencySummary};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::adapters::{Adapter, AdapterError, Connector};

/// How often the round timer looks at `stop_file`.
const STOP_FILE_POLL_MS: u64 = 200;

#[derive(Clone, Debug)]
pub struct WriteSpec {
    pub clients: usize,
    pub value_bytes: usize,
    /// Keys are `{key_prefix}:{number:012}`; a new prefix gives fresh keys.
    pub key_prefix: String,
    pub round: Duration,
    /// Not counted in the run's total (rounds are still reported).
    pub warmup: Duration,
    /// Stop after this long (None: no time limit).
    pub duration: Option<Duration>,
    /// Stop once this many value bytes were acknowledged (None: no size limit).
    pub until_bytes: Option<u64>,
    /// Stop once this file exists.
    pub stop_file: Option<PathBuf>,
    /// Processes whose resident memory each round reports (e.g. the nodes).
    pub probe_pids: Vec<u32>,
    /// Directories whose size each round reports (e.g. each node's data directory).
    pub probe_dirs: Vec<PathBuf>,
}

/// One round's figures (one JSON line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Round {
    pub round: u64,
    /// Seconds since the writers started, at the end of the round.
    pub at_s: f64,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub errors: u64,
    pub latency: LatencySummary,
    /// Value bytes acknowledged since the start.
    pub acked_bytes: u64,
    /// Resident memory of each `probe_pids` process in bytes (None: gone or unreadable).
    pub rss_bytes: Vec<Option<u64>>,
    /// Bytes in files under each `probe_dirs` directory.
    pub disk_bytes: Vec<u64>,
}

/// The whole run after the warm-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteTotal {
    pub store: String,
    pub mode: String,
    pub clients: usize,
    pub value_bytes: usize,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub acked_bytes: u64,
    pub latency: LatencySummary,
    pub rounds: u64,
}

impl WriteTotal {
    pub fn summary_line(&self) -> String {
        format!(
            "write store={} mode=\"{}\" clients={} value_bytes={} seconds={:.1} | ops={} ops_per_s={:.0} errors={} acked_mib={:.1} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
            self.store,
            self.mode,
            self.clients,
            self.value_bytes,
            self.seconds,
            self.ops,
            self.ops_per_s,
            self.errors,
            self.acked_bytes as f64 / (1024.0 * 1024.0),
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.latency.max_ms,
        )
    }
}

impl Round {
    pub fn summary_line(&self) -> String {
        let rss: Vec<String> = self
            .rss_bytes
            .iter()
            .map(|r| r.map_or_else(|| "-".into(), |b| format!("{}", b >> 20)))
            .collect();
        let disk: Vec<String> = self
            .disk_bytes
            .iter()
            .map(|b| format!("{}", b >> 20))
            .collect();
        format!(
            "round {} at {:.0}s: ops_per_s={:.0} errors={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} acked_mib={} rss_mib=[{}] disk_mib=[{}]",
            self.round,
            self.at_s,
            self.ops_per_s,
            self.errors,
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.max_ms,
            self.acked_bytes >> 20,
            rss.join(","),
            disk.join(",")
        )
    }
}

/// What the clients share: the key counter, the stop flag and the current round's figures.
struct Shared {
    next_key: AtomicU64,
    acked_ops: AtomicU64,
    stop: AtomicBool,
    round: Mutex<RoundTally>,
    total: Mutex<RoundTally>,
}

#[derive(Default)]
struct RoundTally {
    latency: LatencyRecorder,
    errors: u64,
    first_error: Option<String>,
}

impl RoundTally {
    fn record(&mut self, outcome: &Result<(), AdapterError>, latency: Duration) {
        match outcome {
            Ok(()) => self.latency.record(latency),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Resident memory of a process (`VmRSS` of /proc/PID/status), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes in the regular files under `dir` (allocated size, as `du` counts: sparse files
/// count what they hold); 0 when it does not exist.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

fn key(prefix: &str, number: u64) -> String {
    format!("{prefix}:{number:012}")
}

async fn writer<A: Adapter>(mut adapter: A, shared: Arc<Shared>, spec: Arc<WriteSpec>, seed: u64) {
    let value: Vec<u8> = (0..spec.value_bytes)
        .map(|i| b'a' + ((seed as usize + i * 7) % 26) as u8)
        .collect();
    let max_ops = spec
        .until_bytes
        .map(|b| b.div_ceil(spec.value_bytes.max(1) as u64));
    while !shared.stop.load(Ordering::Relaxed) {
        let number = shared.next_key.fetch_add(1, Ordering::Relaxed);
        if max_ops.is_some_and(|max| number >= max) {
            break;
        }
        let sent = Instant::now();
        let outcome = adapter.update(&key(&spec.key_prefix, number), &value).await;
        let latency = sent.elapsed();
        if outcome.is_ok() {
            shared.acked_ops.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut round) = shared.round.lock() {
            round.record(&outcome, latency);
        }
    }
}

/// Runs the writers; `on_round` sees every round as it ends.
pub async fn write<C: Connector>(
    connector: Arc<C>,
    spec: WriteSpec,
    mut on_round: impl FnMut(&Round),
) -> Result<WriteTotal, AdapterError> {
    let clients = spec.clients.max(1);
    let spec = Arc::new(spec);
    let shared = Arc::new(Shared {
        next_key: AtomicU64::new(0),
        acked_ops: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        round: Mutex::new(RoundTally::default()),
        total: Mutex::new(RoundTally::default()),
    });
    let mut adapters = Vec::with_capacity(clients);
    for index in 0..clients {
        adapters.push(connector.connect(index).await?);
    }
    let started = Instant::now();
    let measure_from = started + spec.warmup;
    let mut tasks = Vec::with_capacity(clients);
    for (index, adapter) in adapters.into_iter().enumerate() {
        tasks.push(tokio::spawn(writer(
            adapter,
            Arc::clone(&shared),
            Arc::clone(&spec),
            index as u64,
        )));
    }
    let value_bytes = spec.value_bytes as u64;
    let mut round_no = 0;
    let mut round_start = started;
    let mut measured = Duration::ZERO;
    loop {
        let round_end = round_start + spec.round;
        // Wait for the round's end, a stop condition, or every writer being done.
        let mut done = false;
        while Instant::now() < round_end {
            tokio::time::sleep(
                Duration::from_millis(STOP_FILE_POLL_MS)
                    .min(round_end.saturating_duration_since(Instant::now())),
            )
            .await;
            if spec.stop_file.as_ref().is_some_and(|f| f.exists())
                || spec.duration.is_some_and(|d| started.elapsed() >= d)
                || tasks.iter().all(|t| t.is_finished())
            {
                done = true;
                break;
            }
        }
        let now = Instant::now();
        let tally = match shared.round.lock() {
            Ok(mut round) => std::mem::take(&mut *round),
            Err(_) => RoundTally::default(),
        };
        let seconds = now.duration_since(round_start).as_secs_f64();
        round_no += 1;
        let round = Round {
            round: round_no,
            at_s: now.duration_since(started).as_secs_f64(),
            seconds,
            ops: tally.latency.count(),
            ops_per_s: tally.latency.count() as f64 / seconds.max(1e-9),
            errors: tally.errors,
            latency: tally.latency.summary(),
            acked_bytes: shared.acked_ops.load(Ordering::Relaxed) * value_bytes,
            rss_bytes: spec.probe_pids.iter().map(|p| rss_bytes(*p)).collect(),
            disk_bytes: spec.probe_dirs.iter().map(|d| disk_bytes(d)).collect(),
        };
        on_round(&round);
        if round_start >= measure_from {
            measured += now.duration_since(round_start);
            if let Ok(mut total) = shared.total.lock() {
                total.latency.merge(&tally.latency);
                total.errors += tally.errors;
                if total.first_error.is_none() {
                    total.first_error = tally.first_error;
                }
            }
        } else if let Ok(mut total) = shared.total.lock() {
            // Errors of the warm-up still count (the figures of a failing run mean little).
            total.errors += tally.errors;
            if total.first_error.is_none() {
                total.first_error = tally.first_error;
            }
        }
        round_start = now;
        if done {
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await
            .map_err(|e| AdapterError::new(connector.store(), format!("writer task: {e}")))?;
    }
    let total = match shared.total.lock() {
        Ok(mut total) => std::mem::take(&mut *total),
        Err(_) => RoundTally::default(),
    };
    let seconds = measured.as_secs_f64();
    Ok(WriteTotal {
        store: connector.store().to_string(),
        mode: connector.mode(),
        clients,
        value_bytes: spec.value_bytes,
        seconds,
        ops: total.latency.count(),
        ops_per_s: total.latency.count() as f64 / seconds.max(1e-9),
        errors: total.errors,
        first_error: total.first_error,
        acked_bytes: shared.acked_ops.load(Ordering::Relaxed) * value_bytes,
        latency: total.latency.summary(),
        rounds: round_no,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_per_prefix_and_sort_by_number() {
        assert_eq!(key("g1", 7), "g1:000000000007");
        assert!(key("g1", 9) < key("g1", 10));
        assert_ne!(key("g1", 7), key("g2", 7));
    }

    #[test]
    fn probes_read_this_process_and_a_directory() {
        assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        assert_eq!(rss_bytes(u32::MAX), None);
        let dir = std::env::temp_dir().join(format!("qkv-writers-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), vec![1u8; 10_000]).unwrap();
        let bytes = disk_bytes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(bytes >= 10_000, "{bytes}");
        assert_eq!(disk_bytes(&dir), 0);
    }
}
