//! Storage benchmark: what one node's log costs on this machine's disk.
//!
//! Runs `NodeStorage` on `FileDisk` in a fresh directory under /tmp (fsync on) and prints, in
//! a fixed format so that runs can be compared:
//! - `raw`: write + fdatasync of 100 bytes on a plain file (the floor set by the disk);
//! - `append+fsync`: latency of `persist` with one 100-byte entry (p50/p99/mean);
//! - `group-commit batch=N`: entries/s and syncs/s when each `persist` carries N entries.
//!
//! Usage: `cargo bench -p node --bench storage [-- <seconds per case, default 2>]`.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::raft::{Entry, EntryPayload, HardState};
use node::storage::{FileDisk, NodeStorage, StorageOptions};

const ENTRY_PAYLOAD_BYTES: usize = 100;
const BATCH_SIZES: [usize; 3] = [1, 16, 128];

fn scratch_dir(case: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quorumkv-bench-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn entry(index: u64) -> Entry {
    Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(vec![0xab; ENTRY_PAYLOAD_BYTES]),
    }
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at].as_secs_f64() * 1e6
}

fn report_latency(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    println!(
        "{name:<28} n={:<7} p50_us={:<9.1} p99_us={:<9.1} mean_us={mean:.1}",
        samples.len(),
        percentile_us(&samples, 0.50),
        percentile_us(&samples, 0.99),
    );
}

fn raw_fdatasync(budget: Duration) -> Vec<Duration> {
    let dir = scratch_dir("raw");
    std::fs::create_dir_all(&dir).expect("create bench dir");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("raw"))
        .expect("open raw file");
    let data = [0xabu8; ENTRY_PAYLOAD_BYTES + 12];
    let mut samples = Vec::new();
    let start = Instant::now();
    let mut offset = 0u64;
    while start.elapsed() < budget {
        let t = Instant::now();
        file.write_all_at(&data, offset).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
        offset += data.len() as u64;
    }
    let _ = std::fs::remove_dir_all(&dir);
    samples
}

/// Persists batches of `batch` entries (plus a hard state advancing the commit index, as a
/// follower would) until the budget is spent; returns per-persist latencies.
fn persist_batches(batch: usize, budget: Duration) -> Vec<Duration> {
    let dir = scratch_dir(&format!("batch{batch}"));
    let disk = Arc::new(FileDisk::open(&dir).expect("create bench dir"));
    let (mut storage, _) =
        NodeStorage::open_with(disk, StorageOptions::default()).expect("open storage");
    let mut next = 1u64;
    let mut samples = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget {
        let entries: Vec<Entry> = (next..next + batch as u64).map(entry).collect();
        let hard_state = HardState {
            term: 1,
            vote: Some(1),
            commit: next - 1,
        };
        let t = Instant::now();
        storage
            .persist(Some(&hard_state), &entries, None)
            .expect("persist");
        samples.push(t.elapsed());
        next += batch as u64;
    }
    drop(storage);
    let _ = std::fs::remove_dir_all(&dir);
    samples
}

fn main() {
    let seconds: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(seconds);
    println!(
        "storage bench: FileDisk under {}, {ENTRY_PAYLOAD_BYTES}-byte entries, fdatasync per persist, {seconds} s per case",
        std::env::temp_dir().display()
    );
    report_latency("raw write+fdatasync", raw_fdatasync(budget));
    report_latency("append+fsync 1 entry", persist_batches(1, budget));
    for batch in BATCH_SIZES {
        let samples = persist_batches(batch, budget);
        let total = samples.iter().sum::<Duration>().as_secs_f64();
        let syncs = samples.len() as f64;
        println!(
            "group-commit batch={batch:<4} syncs={:<7} entries_per_s={:<10.0} syncs_per_s={:.0}",
            samples.len(),
            syncs * batch as f64 / total,
            syncs / total,
        );
    }
}
