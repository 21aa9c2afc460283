//! The workloads, recorder and checker wired together against in-memory fakes: a store that is
//! linearizable by construction must be judged linearizable (even with failed and unknown
//! outcomes), and one that serves stale reads must be caught.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use checker::{check_kv, CheckOptions, Verdict};
use workloads::fake::{FakeFaults, FakeStore};
use workloads::{ClientStats, Recorder, WorkloadClient, WorkloadSpec};

/// A logical clock: every read is one nanosecond later than the previous one.
fn logical_clock() -> Arc<workloads::Clock> {
    let now = Arc::new(AtomicU64::new(0));
    Arc::new(move || now.fetch_add(1, Ordering::SeqCst))
}

async fn run(spec: WorkloadSpec, faults: FakeFaults, seed: u64) -> (checker::History, ClientStats) {
    let store = FakeStore::new(seed, faults);
    let recorder = Recorder::new(logical_clock());
    let clients = 4;
    let mut tasks = Vec::new();
    for index in 0..clients {
        let mut client = WorkloadClient::new(
            store.clone(),
            &spec,
            index,
            clients,
            seed * 100 + u64::from(index),
            recorder.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client.run(150, u64::MAX).await;
            client.run_final().await;
            client.stats
        }));
    }
    let mut stats = ClientStats::default();
    for task in tasks {
        stats.add(&task.await.expect("client task"));
    }
    (recorder.history(), stats)
}

#[tokio::test]
async fn linearizable_fake_is_judged_linearizable() {
    let faults = FakeFaults {
        unknown_percent: 10,
        fail_percent: 5,
        stale_read_percent: 0,
    };
    for seed in 1..=5 {
        let (history, stats) = run(WorkloadSpec::register(), faults, seed).await;
        assert_eq!(stats.total(), 600);
        assert!(
            stats.info > 0 && stats.fail > 0 && stats.ok > 400,
            "{stats:?}"
        );
        let verdict = check_kv(&history, &CheckOptions::default());
        assert_eq!(verdict, Verdict::Linearizable, "seed {seed}");
    }
}

#[tokio::test]
async fn stale_reads_are_caught() {
    let faults = FakeFaults {
        unknown_percent: 0,
        fail_percent: 0,
        stale_read_percent: 20,
    };
    let mut caught = 0;
    for seed in 1..=5 {
        let (history, _) = run(WorkloadSpec::register(), faults, seed).await;
        if matches!(
            check_kv(&history, &CheckOptions::default()),
            Verdict::NotLinearizable(_)
        ) {
            caught += 1;
        }
    }
    assert_eq!(caught, 5, "every stale run must be rejected");
}

#[tokio::test]
async fn ycsb_on_a_perfect_store_is_linearizable() {
    let (history, stats) = run(WorkloadSpec::ycsb_a(), FakeFaults::default(), 9).await;
    assert_eq!(stats.ok, 600);
    assert_eq!(
        check_kv(&history, &CheckOptions::default()),
        Verdict::Linearizable
    );
}

#[tokio::test]
async fn set_workload_ends_with_a_read_of_every_acknowledged_add() {
    let (history, _) = run(WorkloadSpec::set(), FakeFaults::default(), 3).await;
    let reads: Vec<_> = history
        .ops()
        .iter()
        .filter(|o| o.op == checker::Op::ReadSet)
        .collect();
    assert_eq!(reads.len(), 4);
    let adds = history
        .ops()
        .iter()
        .filter(|o| matches!(o.op, checker::Op::Add { .. }))
        .count();
    assert_eq!(adds, 600);
}
