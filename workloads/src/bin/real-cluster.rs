//! `real-cluster`: the workloads and a process-level nemesis against real `quorumkv server`
//! processes on loopback, checked by the same checker as the simulator, so that what the
//! simulator claims is confirmed outside it.
//!
//!     cargo build --release -p node -p workloads
//!     ./target/release/real-cluster --nodes 3 --clients 4 --duration-s 30 --seed 1
//!
//! Faults: `kill -9` of a random node (restarted at heal) and SIGSTOP/SIGCONT pauses, in
//! alternating fault/heal periods; the last `--final-heal-s` are fault-free. Every process is
//! killed when the command ends, even on error (a drop guard). Exit code 0: linearizable (and
//! the set check clean), 1: a violation, 2: setup error.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use node::client::{Client, ClientOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use workloads::remote::ClientStore;
use workloads::{ClientStats, Recorder, WorkloadClient, WorkloadSpec};

#[derive(Parser, Debug)]
#[command(
    name = "real-cluster",
    about = "workloads + process nemesis against real quorumkv servers"
)]
struct Args {
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    #[arg(long, default_value_t = 4)]
    clients: u32,
    #[arg(long, default_value_t = 30)]
    duration_s: u64,
    #[arg(long, default_value_t = 10)]
    final_heal_s: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// register, set or ycsb.
    #[arg(long, default_value = "register")]
    workload: String,
    /// First port: node i uses base+2i (peers) and base+2i+1 (clients).
    #[arg(long, default_value_t = 17400)]
    base_port: u16,
    /// The quorumkv binary (default: next to this executable).
    #[arg(long)]
    quorumkv: Option<PathBuf>,
    /// Data and log directory (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The cluster's processes; dropping it kills them all.
struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    members: Vec<String>,
    seed: u64,
    children: BTreeMap<u32, Child>,
}

impl Cluster {
    fn start_node(&mut self, i: u32) -> anyhow::Result<()> {
        let log_path = self.dir.join(format!("n{}.log", i + 1));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("server").arg("--id").arg((i + 1).to_string());
        for m in &self.members {
            cmd.arg("--member").arg(m);
        }
        cmd.arg("--data-dir")
            .arg(self.dir.join(format!("n{}", i + 1)))
            .arg("--seed")
            .arg(self.seed.to_string())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.children.insert(i, child);
        Ok(())
    }

    /// `kill -9`: the process dies without flushing anything.
    fn kill(&mut self, i: u32) {
        if let Some(mut child) = self.children.remove(&i) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, i: u32, signal: &str) -> anyhow::Result<()> {
        let Some(child) = self.children.get(&i) else {
            return Ok(());
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill {signal} {} failed", child.id());
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u32> = self.children.keys().copied().collect();
        for i in ids {
            let _ = self.signal(i, "-CONT");
            self.kill(i);
        }
    }
}

fn default_exe(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let dir = me.parent().context("executable has no directory")?;
    Ok(dir.join(name))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => std::process::exit(0),
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("real-cluster: error: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    println!(
        "seed {} nodes {} clients {} workload {}",
        args.seed, args.nodes, args.clients, args.workload
    );
    let spec = match args.workload.as_str() {
        "register" => WorkloadSpec::register(),
        "set" => WorkloadSpec::set(),
        "ycsb" => WorkloadSpec::ycsb_a(),
        other => bail!("unknown workload {other:?} (register, set, ycsb)"),
    };
    let exe = match &args.quorumkv {
        Some(p) => p.clone(),
        None => default_exe("quorumkv")?,
    };
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "quorumkv-real-{}-{}",
            std::process::id(),
            args.seed
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("data and logs: {}", dir.display());
    let mut members = Vec::new();
    let mut client_addrs = Vec::new();
    for i in 0..args.nodes {
        let peer = SocketAddr::from(([127, 0, 0, 1], args.base_port + 2 * i as u16));
        let client = SocketAddr::from(([127, 0, 0, 1], args.base_port + 2 * i as u16 + 1));
        members.push(format!("{}={peer},{client}", i + 1));
        client_addrs.push(client);
    }
    let mut cluster = Cluster {
        exe,
        dir: dir.clone(),
        members,
        seed: args.seed,
        children: BTreeMap::new(),
    };
    for i in 0..args.nodes {
        cluster.start_node(i)?;
    }
    wait_for_leader(&client_addrs).await?;

    let start = Instant::now();
    let recorder = Recorder::new(Arc::new(move || start.elapsed().as_nanos() as u64));
    let main_until_ns = args.duration_s * 1_000_000_000;
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let mut endpoints = client_addrs.clone();
        let first = c as usize % endpoints.len();
        endpoints.rotate_left(first);
        let options = ClientOptions {
            rng_seed: Some(args.seed * 7919 + u64::from(c)),
            ..ClientOptions::default()
        };
        let store = ClientStore::new(endpoints, options).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut client = WorkloadClient::new(
            store,
            &spec,
            c,
            args.clients,
            args.seed * 31 + u64::from(c),
            recorder.clone(),
        )
        .with_think_time_ms(10);
        tasks.push(tokio::spawn(async move {
            client.run(u64::MAX, main_until_ns).await;
            client
        }));
    }

    // The nemesis runs here, on this task, until the final heal.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x7265_616c);
    let faults_until = Duration::from_secs(args.duration_s.saturating_sub(args.final_heal_s));
    while start.elapsed() + Duration::from_secs(3) < faults_until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1000..3000))).await;
        let n = rng.random_range(0..args.nodes);
        let fault_ms = rng.random_range(1000..3000);
        if rng.random_bool(0.5) {
            println!("{:>8.3}s kill -9 n{}", start.elapsed().as_secs_f64(), n + 1);
            cluster.kill(n);
            tokio::time::sleep(Duration::from_millis(fault_ms)).await;
            println!("{:>8.3}s restart n{}", start.elapsed().as_secs_f64(), n + 1);
            cluster.start_node(n)?;
        } else {
            println!("{:>8.3}s SIGSTOP n{}", start.elapsed().as_secs_f64(), n + 1);
            cluster.signal(n, "-STOP")?;
            tokio::time::sleep(Duration::from_millis(fault_ms)).await;
            println!("{:>8.3}s SIGCONT n{}", start.elapsed().as_secs_f64(), n + 1);
            cluster.signal(n, "-CONT")?;
        }
    }
    println!("{:>8.3}s final heal", start.elapsed().as_secs_f64());

    let mut stats = ClientStats::default();
    let mut finished = Vec::new();
    for task in tasks {
        let client = task.await.context("client task")?;
        stats.add(&client.stats);
        finished.push(client);
    }
    // Liveness: after the final heal every client completes an operation within 10 s.
    let mut stuck = 0;
    for client in &mut finished {
        let before = client.stats.ok;
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.stats.ok == before && Instant::now() < deadline {
            client.run(1, u64::MAX).await;
        }
        if client.stats.ok == before {
            stuck += 1;
        }
    }
    if let Some(first) = finished.first_mut() {
        first.run_final().await;
    }
    drop(cluster);
    let history = recorder.history();
    let path = dir.join("history.jsonl");
    std::fs::write(&path, history.to_jsonl())
        .with_context(|| format!("writing {}", path.display()))?;
    let registers = history.filtered(|o| !o.op.is_set_op());
    let options = checker::CheckOptions {
        parallel: true,
        ..checker::CheckOptions::default()
    };
    let verdict = checker::check_kv(&registers, &options);
    let set_report = checker::check_set(&history);
    println!(
        "ops ok {} fail {} info {}; history {}",
        stats.ok,
        stats.fail,
        stats.info,
        path.display()
    );
    for anomaly in &set_report.anomalies {
        println!("set anomaly: {anomaly}");
    }
    let passed = verdict.is_linearizable() && set_report.anomalies.is_empty() && stuck == 0;
    println!(
        "verdict: {} (linearizability: {verdict:?}; {} set anomalies; {stuck} clients without progress after heal)",
        if passed { "PASS" } else { "FAIL" },
        set_report.anomalies.len()
    );
    if passed && args.dir.is_none() {
        // Nothing to look at: don't leave data behind.
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(passed)
}

async fn wait_for_leader(addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = Client::new(addrs.to_vec(), ClientOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    while Instant::now() < deadline {
        if let Ok(status) = client.status_any().await {
            if status.leader_id.is_some() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("no leader within 20 s (see the node logs)")
}
