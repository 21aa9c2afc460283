//! The real-cluster campaign, short: three `quorumkv server` processes on loopback, register
//! and set workloads through the client library, kill -9 / restart and SIGSTOP / SIGCONT of
//! random nodes and leaders; the histories must be linearizable, the set check clean, and every
//! client must complete an operation soon after the final heal.
//!
//! Needs the `quorumkv` binary of the same profile: the test runs
//! `cargo build -p node --bin quorumkv` (a no-op when it is fresh) and prints what it does.
//! `QUORUMKV_JEPSEN_SEED=N` overrides the seed. A second test wipes every node's data in the
//! middle of a run and asserts the campaign fails: the harness must not be blind to lost data.
//! A third grows the cluster by two nodes with `quorumkv cluster join` and shrinks it back with
//! `quorumkv cluster leave` under the same workloads. Another runs the YCSB driver
//! (`quorumkv-ycsb`'s library) against a cluster for a couple of seconds. The tests take turns
//! (one cluster at a time on small machines).
#![cfg(not(madsim))]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use checker::Verdict;
use workloads::process_cluster::{NodeState, ProcessCluster, SpawnSpec};
use workloads::process_nemesis::ProcessFault;
use workloads::real_campaign::{run_campaign, write_artifacts, CampaignOptions, MembershipStep};
use workloads::ycsb::adapters::quorumkv::QuorumkvConnector;
use workloads::ycsb::driver::{self, LoadSpec, RunSpec};
use workloads::ycsb::workload::Workload;

const DEFAULT_SEED: u64 = 20_261_129;

/// One cluster at a time.
static CLUSTER_SLOT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// target/<profile>/ of this test executable (target/<profile>/deps/real_cluster-<hash>).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// The `quorumkv` binary next to the test's profile directory, built first if cargo is known.
fn quorumkv_binary() -> PathBuf {
    let dir = profile_dir();
    let exe = dir.join("quorumkv");
    let cargo = std::env::var_os("CARGO");
    let target_dir = dir.parent().map(Path::to_path_buf);
    match (cargo, target_dir) {
        (Some(cargo), Some(target_dir)) => {
            let mut command = Command::new(cargo);
            command
                .args(["build", "-p", "node", "--bin", "quorumkv"])
                .env("CARGO_TARGET_DIR", &target_dir);
            if dir.file_name().is_some_and(|n| n == "release") {
                command.arg("--release");
            }
            eprintln!(
                "building the server: {command:?} (target dir {})",
                target_dir.display()
            );
            let status = command.status().expect("running cargo build");
            assert!(status.success(), "cargo build of quorumkv failed: {status}");
        }
        _ => eprintln!("CARGO not set: using {} as it is", exe.display()),
    }
    assert!(
        exe.is_file(),
        "{} missing: run `cargo build -p node --bin quorumkv`",
        exe.display()
    );
    exe
}

/// A new 3-node cluster of real processes in a fresh temporary directory (returned, to remove).
fn fresh_cluster(label: &str, seed: u64) -> (std::path::PathBuf, ProcessCluster) {
    let dir = std::env::temp_dir().join(format!(
        "quorumkv-real-cluster-{label}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = ProcessCluster::spawn(SpawnSpec {
        nodes: 3,
        quorumkv_exe: quorumkv_binary(),
        dir: dir.join("cluster"),
        snapshot_interval_entries: 200,
        seed,
    })
    .expect("spawn a 3-node cluster");
    (dir, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_against_real_processes_is_linearizable_and_live() {
    let seed = std::env::var("QUORUMKV_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let _slot = CLUSTER_SLOT.lock().await;
    eprintln!("real-cluster campaign seed {seed} (QUORUMKV_JEPSEN_SEED={seed} to rerun)");
    let (dir, mut cluster) = fresh_cluster(&format!("seed{seed}"), seed);
    let options = CampaignOptions {
        seed,
        duration_s: 20,
        fault_ms: 2_000,
        heal_ms: 1_500,
        faults: ProcessFault::ALL.to_vec(),
        register_clients: 3,
        // The default liveness bound (20 s) is generous: two busy cores, processes
        // restarting, elections.
        ..CampaignOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        run_campaign(&options, &mut cluster),
    )
    .await
    .expect("the campaign is bounded")
    .expect("the campaign ran");
    eprintln!("{}", report.figures());
    if !report.verdict.passed() {
        let files = write_artifacts(&report, &dir).expect("write artifacts");
        panic!(
            "seed {seed}: {}\nartifacts: {files:?}\nnode logs: {}",
            report.verdict.summary(),
            dir.join("cluster").display()
        );
    }
    assert_eq!(report.register_verdict, Verdict::Linearizable);
    assert!(report.set_report.is_valid(), "{:?}", report.set_report);
    assert!(report.set_report.reads_checked >= 1, "the set's final read");
    assert!(
        report.set_report.acknowledged_adds > 0,
        "{:?}",
        report.set_report
    );
    assert!(
        report.kills + report.pauses >= 4,
        "too few faults: {} kills, {} pauses",
        report.kills,
        report.pauses
    );
    assert!(
        report.register_stats.ok > 100 && report.set_stats.ok > 50,
        "the workload made little progress: {}",
        report.figures()
    );
    let recovery_ms = report.recovery_ms_max.expect("every client recovered");
    assert!(recovery_ms < options.liveness_bound_s * 1000);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiping_every_node_mid_run_is_caught() {
    let _slot = CLUSTER_SLOT.lock().await;
    let seed = 7;
    let (dir, mut cluster) = fresh_cluster("amnesia", seed);
    // One wipe at 2.5 s, back (empty) at 4 s, then 4 s of reads of the lost values.
    let options = CampaignOptions {
        seed,
        duration_s: 8,
        fault_ms: 1_500,
        heal_ms: 2_500,
        faults: vec![ProcessFault::AmnesiaAll],
        register_clients: 3,
        ..CampaignOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(90),
        run_campaign(&options, &mut cluster),
    )
    .await
    .expect("the campaign is bounded")
    .expect("the campaign ran");
    eprintln!("{}: {}", report.verdict.summary(), report.figures());
    assert!(report.kills >= 3, "the wipe happened: {}", report.figures());
    assert!(
        !report.register_verdict.is_linearizable(),
        "lost registers went unnoticed: {:?}",
        report.register_verdict
    );
    assert!(
        report
            .set_report
            .anomalies
            .iter()
            .any(|a| matches!(a, checker::SetAnomaly::Lost { .. })),
        "lost set elements went unnoticed: {:?}",
        report.set_report
    );
    assert!(!report.verdict.passed());
    // The failure artifacts are written and explain the violation.
    let files = write_artifacts(&report, &dir).expect("write artifacts");
    let explanation = std::fs::read_to_string(dir.join("explanation.txt")).expect("explanation");
    assert!(explanation.contains("cannot be placed"), "{explanation}");
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report.html");
    assert!(html.contains("NOT linearizable"), "{files:?}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real CLI grows a running cluster and shrinks it back while clients read and write: node 4
/// joins and takes over shards, then leaves (`cluster leave` exits 0 and the node stops by
/// itself); after every step every shard's voters are exactly its target replicas. The register
/// history must be linearizable (a lost acknowledged write shows as a stale read) and the set
/// must keep every acknowledged add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_leaves_under_load_without_losing_writes() {
    let steps = [MembershipStep::Join, MembershipStep::Leave];
    membership_campaign(
        "grow1",
        &steps,
        &[(MembershipStep::Join, 4), (MembershipStep::Leave, 4)],
    )
    .await;
}

/// As above with two nodes, the README's grow-and-shrink: 3 -> 5 -> 3 (4 joins, 5 joins, 5
/// leaves, 4 leaves) with the real CLI while the workloads run. (It found the bug of a re-added
/// replica deleting itself while replaying its earlier removal.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_join_and_leave_under_load_without_losing_writes() {
    membership_campaign(
        "grow2",
        &MembershipStep::GROW_AND_SHRINK,
        &[
            (MembershipStep::Join, 4),
            (MembershipStep::Join, 5),
            (MembershipStep::Leave, 5),
            (MembershipStep::Leave, 4),
        ],
    )
    .await;
}

/// Runs the register and set workloads on a fresh 3-node cluster while `steps` run (no process
/// faults), and asserts the steps (`expected`: step and node), the checks and the progress.
async fn membership_campaign(
    name: &str,
    steps: &[MembershipStep],
    expected: &[(MembershipStep, u64)],
) {
    let _slot = CLUSTER_SLOT.lock().await;
    let seed = 11;
    let (dir, mut cluster) = fresh_cluster(name, seed);
    // No process faults: the membership steps are the disturbance. The main phase lasts until
    // every step ran (one per 1 s heal period), at least `duration_s`.
    let options = CampaignOptions {
        seed,
        duration_s: 3,
        fault_ms: 1_000,
        heal_ms: 1_000,
        faults: Vec::new(),
        register_clients: 3,
        membership: steps.to_vec(),
        membership_bound_s: 30,
        ..CampaignOptions::default()
    };
    let report = tokio::time::timeout(
        Duration::from_secs(150),
        run_campaign(&options, &mut cluster),
    )
    .await
    .expect("the campaign is bounded")
    .expect("the campaign ran");
    eprintln!("{}", report.figures());
    for event in &report.membership {
        eprintln!("{event}");
    }
    if !report.verdict.passed() {
        let files = write_artifacts(&report, &dir).expect("write artifacts");
        panic!(
            "seed {seed}: {}\nartifacts: {files:?}\nnode logs: {}",
            report.verdict.summary(),
            dir.join("cluster").display()
        );
    }
    let done: Vec<(MembershipStep, Option<u64>, bool)> = report
        .membership
        .iter()
        .map(|e| (e.step, e.node, e.ok))
        .collect();
    let wanted: Vec<(MembershipStep, Option<u64>, bool)> = expected
        .iter()
        .map(|&(step, node)| (step, Some(node), true))
        .collect();
    assert_eq!(done, wanted);
    for join in report
        .membership
        .iter()
        .filter(|e| e.step == MembershipStep::Join)
    {
        assert!(
            join.replicas.is_some_and(|r| r > 0),
            "the new node took over shards: {join}"
        );
    }
    let left: Vec<u64> = expected
        .iter()
        .filter(|(step, _)| *step == MembershipStep::Leave)
        .map(|&(_, node)| node)
        .collect();
    assert_eq!(cluster.left(), left.as_slice());
    assert_eq!(cluster.node_ids(), vec![1, 2, 3]);
    assert_eq!(report.register_verdict, Verdict::Linearizable);
    assert!(report.set_report.is_valid(), "{:?}", report.set_report);
    assert!(report.set_report.reads_checked >= 1, "the set's final read");
    assert!(
        report.register_stats.ok > 100 && report.set_stats.ok > 50,
        "the workload made little progress: {}",
        report.figures()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Running (not a zombie, not gone), per /proc.
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_change_node_states_and_drop_leaves_no_process() {
    let _slot = CLUSTER_SLOT.lock().await;
    let exe = quorumkv_binary();
    let dir =
        std::env::temp_dir().join(format!("quorumkv-real-cluster-drop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cluster = ProcessCluster::spawn(SpawnSpec {
        nodes: 3,
        quorumkv_exe: exe,
        dir: dir.clone(),
        snapshot_interval_entries: 200,
        seed: 1,
    })
    .expect("spawn a 3-node cluster");
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let old_pid = cluster.pid(3).unwrap().expect("node 3 runs");
    cluster.pause(1).unwrap();
    cluster.kill(2).unwrap();
    cluster.kill(3).unwrap();
    assert_eq!(cluster.state(1).unwrap(), NodeState::Paused);
    assert_eq!(cluster.state(2).unwrap(), NodeState::Down);
    assert!(!process_alive(old_pid), "kill -9 reaped node 3");
    cluster.restart(3).unwrap();
    let new_pid = cluster.pid(3).unwrap().expect("node 3 runs again");
    assert_ne!(new_pid, old_pid);
    let pids: Vec<u32> = [1, 3]
        .into_iter()
        .filter_map(|id| cluster.pid(id).unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&pid| process_alive(pid)));
    drop(cluster);
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} survived the drop");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The YCSB driver end to end against a real 3-node cluster: load 200 records, then workload A
/// closed loop and workload E (scans and inserts) open loop, two seconds each. Asserts that
/// operations happened without errors and that the histograms hold them; no timing is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ycsb_driver_loads_and_runs_against_a_real_cluster() {
    let _slot = CLUSTER_SLOT.lock().await;
    let (dir, mut cluster) = fresh_cluster("ycsb", 7);
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .expect("a leader");
    let connector = Arc::new(QuorumkvConnector {
        endpoints: cluster.endpoints(),
        operation_timeout: Duration::from_secs(5),
    });
    driver::wait_ready(Arc::clone(&connector), Duration::from_secs(30))
        .await
        .expect("the cluster accepts writes");
    let records = 200;
    let load = LoadSpec {
        record_count: records,
        value_bytes: 64,
        clients: 4,
    };
    let loaded = driver::load(Arc::clone(&connector), &load)
        .await
        .expect("load phase");
    assert_eq!(
        (loaded.records, loaded.errors),
        (records, 0),
        "{:?}",
        loaded.first_error
    );
    for (workload, target_ops_per_s) in [(Workload::A, None), (Workload::E, Some(100.0))] {
        let spec = RunSpec {
            workload,
            record_count: records,
            value_bytes: 64,
            clients: 4,
            target_ops_per_s,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(2),
            seed: 3,
        };
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            driver::run(Arc::clone(&connector), &spec),
        )
        .await
        .expect("the run is bounded")
        .expect("the run");
        eprintln!("{}", result.summary_line());
        assert_eq!(result.errors, 0, "{:?}", result.first_error);
        assert!(result.ops >= 10, "{}", result.summary_line());
        assert_eq!(result.latency.count, result.ops);
        assert!(result.latency.p50_ms > 0.0);
        assert!(result.latency.max_ms >= result.latency.p99_ms);
        assert_eq!(result.store, "quorumkv");
        let kinds: Vec<&str> = result.per_operation.keys().map(String::as_str).collect();
        match workload {
            Workload::A => {
                assert_eq!(kinds, ["read", "update"]);
                assert_eq!(result.not_found, 0, "every loaded record is there");
            }
            _ => assert!(kinds.contains(&"scan"), "{kinds:?}"),
        }
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
