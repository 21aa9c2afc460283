//! `quorumkv-jepsen`: the simulator's campaign against real `quorumkv server` processes on
//! loopback — register and set workloads, a seeded process nemesis (kill -9 / restart,
//! SIGSTOP / SIGCONT), optionally nodes joining and leaving through `quorumkv cluster join` /
//! `leave` (`--grow`), a final heal, a liveness check and the checker's verdict.
//!
//! Exit codes: 0 pass, 1 the run failed a check (artifacts written), 2 usage or setup error
//! (no cluster, missing binary), 130 interrupted. Every process it started is stopped on exit.
#![forbid(unsafe_code)]

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// Real processes only: the binary is empty in simulation builds.
#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
mod cli {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::process::ExitCode;

    use clap::Parser;
    use workloads::process_cluster::{ProcessCluster, SpawnSpec};
    use workloads::process_nemesis::ProcessFault;
    use workloads::real_campaign::{
        run_campaign, write_artifacts, CampaignOptions, MembershipStep,
    };

    #[derive(Parser, Debug)]
    #[command(
        name = "quorumkv-jepsen",
        about = "Fault-injection campaign against real quorumkv processes, checked for linearizability"
    )]
    struct Args {
        /// Seeds the nemesis schedule and the workloads (default: random, printed first).
        #[arg(long)]
        seed: Option<u64>,
        /// Nodes to spawn (ignored with --attach-dir).
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        /// Length of the main phase (alternating heal and fault periods).
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        #[arg(long, default_value_t = 3000)]
        fault_ms: u64,
        #[arg(long, default_value_t = 3000)]
        heal_ms: u64,
        /// Comma-separated faults: kill, kill-leader, pause, pause-leader; `amnesia-all` (wipes
        /// every node's data: a harness self-test that must fail) only when asked for.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "kill,kill-leader,pause,pause-leader"
        )]
        faults: Vec<ProcessFault>,
        /// Most nodes one fault hits (default: a minority, so a quorum survives).
        #[arg(long)]
        max_faulty: Option<usize>,
        #[arg(long, default_value_t = 4)]
        register_clients: u32,
        #[arg(long, default_value_t = 2)]
        set_clients: u32,
        #[arg(long, default_value_t = 5)]
        think_time_ms: u64,
        /// After the final heal every client must complete an operation within this bound.
        #[arg(long, default_value_t = 20)]
        liveness_bound_s: u64,
        #[arg(long, default_value_t = 1000)]
        client_request_timeout_ms: u64,
        #[arg(long, default_value_t = 4000)]
        client_operation_timeout_ms: u64,
        /// Spawned nodes snapshot after this many applied entries (small: restarts catch up by
        /// snapshot).
        #[arg(long, default_value_t = 500)]
        snapshot_interval_entries: u64,
        /// The quorumkv executable (default: next to this one).
        #[arg(long)]
        quorumkv: Option<PathBuf>,
        /// Histories, logs and (spawned) cluster data go here (default: a new temp directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep the spawned cluster's data directories after a passing run.
        #[arg(long)]
        keep_data: bool,
        /// Attach to a running `quorumkv local` started with `--dir DIR` instead of spawning.
        /// Nodes the nemesis restarts are this program's children and are stopped when it exits.
        #[arg(long, requires = "endpoints")]
        attach_dir: Option<PathBuf>,
        /// During the main phase two nodes join (`quorumkv cluster join`) and then leave again
        /// (`quorumkv cluster leave`), one step per heal period, each until every shard's voters
        /// are its target replicas; the main phase lasts until all four steps ran.
        #[arg(long)]
        grow: bool,
        /// Longest time one join or leave may take until the cluster has settled.
        #[arg(long, default_value_t = 60)]
        membership_bound_s: u64,
        /// With --attach-dir or --external: client addresses of the cluster (comma-separated).
        #[arg(long, value_delimiter = ',')]
        endpoints: Vec<SocketAddr>,
        /// Attach to a cluster this program cannot control (e.g. containers): no nemesis
        /// (`--faults` is ignored), the faults come from outside (`deploy/test.sh`).
        #[arg(long, requires = "endpoints", conflicts_with = "attach_dir")]
        external: bool,
    }

    const EXIT_FAILED: u8 = 1;
    const EXIT_SETUP: u8 = 2;
    const EXIT_INTERRUPTED: u8 = 130;

    pub fn main() -> ExitCode {
        let args = Args::parse();
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::from(EXIT_SETUP);
            }
        };
        let code = runtime.block_on(async {
            tokio::select! {
                code = run(args) => code,
                _ = tokio::signal::ctrl_c() => {
                    // Dropping `run` drops the cluster: paused nodes resumed, children killed.
                    eprintln!("interrupted: stopping the cluster");
                    EXIT_INTERRUPTED
                }
            }
        });
        ExitCode::from(code)
    }

    fn quorumkv_exe(args: &Args) -> Result<PathBuf, String> {
        let exe = match &args.quorumkv {
            Some(path) => path.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this executable: {e}"))?
                .with_file_name("quorumkv"),
        };
        if exe.is_file() {
            Ok(exe)
        } else {
            Err(format!(
                "{} not found: build it with `cargo build -p node --bin quorumkv` (same profile) or pass --quorumkv",
                exe.display()
            ))
        }
    }

    async fn run(args: Args) -> u8 {
        let seed = args.seed.unwrap_or_else(rand::random);
        println!("quorumkv-jepsen seed {seed}");
        let exe = match quorumkv_exe(&args) {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_SETUP;
            }
        };
        if args.attach_dir.is_some() && args.faults.contains(&ProcessFault::AmnesiaAll) {
            eprintln!("error: amnesia-all deletes data: not allowed with --attach-dir");
            return EXIT_SETUP;
        }
        let out = args.out.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "quorumkv-jepsen-seed{seed}-pid{}",
                std::process::id()
            ))
        });
        let data_dir = out.join("cluster");
        if args.external {
            if let Err(e) = std::fs::create_dir_all(&out) {
                eprintln!("error: creating {}: {e}", out.display());
                return EXIT_SETUP;
            }
        }
        let cluster = match &args.attach_dir {
            None if args.external => {
                ProcessCluster::attach_external(args.endpoints.clone(), &out, exe).await
            }
            Some(dir) => ProcessCluster::attach(args.endpoints.clone(), dir, exe).await,
            None => ProcessCluster::spawn(SpawnSpec {
                nodes: args.nodes,
                quorumkv_exe: exe,
                dir: data_dir.clone(),
                snapshot_interval_entries: args.snapshot_interval_entries,
                seed,
            }),
        };
        let mut cluster = match cluster {
            Ok(cluster) => cluster,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_SETUP;
            }
        };
        let options = CampaignOptions {
            seed,
            duration_s: args.duration_s,
            fault_ms: args.fault_ms,
            heal_ms: args.heal_ms,
            faults: if args.external {
                Vec::new()
            } else {
                args.faults.clone()
            },
            max_faulty: args.max_faulty,
            register_clients: args.register_clients,
            set_clients: args.set_clients,
            think_time_ms: args.think_time_ms,
            liveness_bound_s: args.liveness_bound_s,
            client_request_timeout_ms: args.client_request_timeout_ms,
            client_operation_timeout_ms: args.client_operation_timeout_ms,
            membership: if args.grow {
                MembershipStep::GROW_AND_SHRINK.to_vec()
            } else {
                Vec::new()
            },
            membership_bound_s: args.membership_bound_s,
        };
        let report = match run_campaign(&options, &mut cluster).await {
            Ok(report) => report,
            Err(e) => {
                eprintln!("error: {e} (node logs in {})", cluster.dir().display());
                return EXIT_SETUP;
            }
        };
        println!("{}", report.figures());
        match write_artifacts(&report, &out) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
            }
            Err(e) => eprintln!("error: writing artifacts to {}: {e}", out.display()),
        }
        println!("verdict: {}", report.verdict.summary());
        let restarted = cluster.spawned_here();
        if args.attach_dir.is_some() && !restarted.is_empty() {
            println!(
                "note: nodes {restarted:?} were restarted by this campaign and stop with it; \
                 restart the `quorumkv local` cluster to get them back"
            );
        }
        if report.verdict.passed() {
            drop(cluster);
            if args.attach_dir.is_none() && !args.external && !args.keep_data {
                if let Err(e) = std::fs::remove_dir_all(&data_dir) {
                    eprintln!("warning: removing {}: {e}", data_dir.display());
                }
            }
            0
        } else {
            let faults: Vec<&str> = args.faults.iter().map(|f| f.name()).collect();
            let max_faulty = args
                .max_faulty
                .map_or_else(String::new, |m| format!(" --max-faulty {m}"));
            let grow = if args.grow { " --grow" } else { "" };
            println!(
                "replay the schedule: quorumkv-jepsen --seed {seed} --nodes {} --duration-s {} \
                 --fault-ms {} --heal-ms {} --faults {}{max_faulty} --register-clients {} \
                 --set-clients {} --think-time-ms {}{grow}",
                report.nodes,
                args.duration_s,
                args.fault_ms,
                args.heal_ms,
                faults.join(","),
                args.register_clients,
                args.set_clients,
                args.think_time_ms
            );
            println!("node logs: {}", cluster.dir().display());
            EXIT_FAILED
        }
    }
}
