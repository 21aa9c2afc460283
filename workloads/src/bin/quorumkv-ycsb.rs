//! `quorumkv-ycsb`: YCSB core workloads against quorumkv, etcd or Redis, and the report.
//!
//!     quorumkv-ycsb load   --store quorumkv --endpoints 127.0.0.1:7401 --records 10000
//!     quorumkv-ycsb run    --store quorumkv --endpoints 127.0.0.1:7401 --records 10000 \
//!                          --workload a --clients 16 --duration-s 10 --out results.jsonl
//!     quorumkv-ycsb report --results results.jsonl --out-dir target/bench
//!
//! `make bench-peers` starts the stores and runs all of it. Exit codes: 0 done, 1 the run or
//! load had errors or no operation succeeded, 2 bad arguments or store unreachable.
//! The simulation build has no real servers to drive: there this binary does nothing.

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
mod cli {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::Duration;

    use clap::{Parser, Subcommand, ValueEnum};
    use workloads::ycsb::adapters::quorumkv::QuorumkvConnector;
    use workloads::ycsb::adapters::redis::RedisConnector;
    use workloads::ycsb::adapters::{AdapterError, Connector};
    use workloads::ycsb::driver::{self, LoadOutcome, LoadSpec, RunResult, RunSpec};
    use workloads::ycsb::report;
    use workloads::ycsb::workload::Workload;
    use workloads::ycsb::writers::{self, WriteSpec, WriteTotal};

    const EXIT_FAILED: u8 = 1;
    const EXIT_USAGE: u8 = 2;

    #[derive(Parser, Debug)]
    #[command(
        name = "quorumkv-ycsb",
        about = "YCSB core workloads against quorumkv, etcd or Redis"
    )]
    struct Args {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand, Debug)]
    enum Command {
        /// Insert records 0..records (the load phase).
        Load {
            #[command(flatten)]
            store: StoreArgs,
            #[arg(long, default_value_t = 16)]
            clients: usize,
        },
        /// Run one workload for a fixed time and print (and append to --out) its figures.
        Run {
            #[command(flatten)]
            store: StoreArgs,
            /// Core workload: a, b, c, d, e or f.
            #[arg(long, value_parser = parse_workload)]
            workload: Workload,
            #[arg(long, default_value_t = 1)]
            clients: usize,
            /// Open loop at this total rate (latency from the intended send time); default:
            /// closed loop.
            #[arg(long)]
            target_ops_per_s: Option<f64>,
            #[arg(long, default_value_t = 1.0)]
            warmup_s: f64,
            #[arg(long, default_value_t = 10.0)]
            duration_s: f64,
            #[arg(long, default_value_t = 1)]
            seed: u64,
            /// Append the result as one JSON line to this file.
            #[arg(long)]
            out: Option<PathBuf>,
        },
        /// Closed-loop writers of fresh keys, reported every round (storage benchmarks):
        /// stops after --duration-s, after --until-mib of values, or when --stop-file exists.
        Write {
            #[command(flatten)]
            store: StoreArgs,
            #[arg(long, default_value_t = 64)]
            clients: usize,
            /// Keys are PREFIX:NNNNNNNNNNNN (a new prefix: fresh keys).
            #[arg(long, default_value = "w")]
            key_prefix: String,
            #[arg(long, default_value_t = 10.0)]
            round_s: f64,
            /// Rounds that start within this long are left out of the total.
            #[arg(long, default_value_t = 0.0)]
            warmup_s: f64,
            #[arg(long)]
            duration_s: Option<f64>,
            /// Stop once this many MiB of values were acknowledged.
            #[arg(long)]
            until_mib: Option<u64>,
            #[arg(long)]
            stop_file: Option<PathBuf>,
            /// Comma-separated process ids whose RSS each round reports.
            #[arg(long, value_delimiter = ',')]
            probe_pids: Vec<u32>,
            /// Comma-separated directories whose size each round reports.
            #[arg(long, value_delimiter = ',')]
            probe_dirs: Vec<PathBuf>,
            /// Label of this run in the JSON lines (e.g. growth, transfer).
            #[arg(long, default_value = "write")]
            label: String,
            /// Append every round and the total as JSON lines to this file.
            #[arg(long)]
            out: Option<PathBuf>,
        },
        /// Wait until the store accepts a write (exit 2 if it does not within --timeout-s).
        Wait {
            #[command(flatten)]
            store: StoreArgs,
            #[arg(long, default_value_t = 60)]
            timeout_s: u64,
        },
        /// Markdown table and SVG charts from a results file.
        Report {
            #[arg(long)]
            results: PathBuf,
            #[arg(long, default_value = "target/bench")]
            out_dir: PathBuf,
            /// Markdown put before the tables (machine, versions, command).
            #[arg(long)]
            preamble: Option<PathBuf>,
        },
    }

    #[derive(Clone, Copy, Debug, ValueEnum)]
    enum StoreKind {
        Quorumkv,
        Etcd,
        Redis,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    enum EtcdReads {
        Linearizable,
        Serializable,
    }

    #[derive(clap::Args, Debug)]
    struct StoreArgs {
        #[arg(long, value_enum)]
        store: StoreKind,
        /// Comma-separated host:port of the store's client ports (quorumkv: any nodes;
        /// etcd: every member; redis or any RESP server: the first is used).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        /// Records the load phase inserts (and the run reads).
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// etcd's read consistency.
        #[arg(long, value_enum, default_value_t = EtcdReads::Linearizable)]
        etcd_reads: EtcdReads,
        /// Label of the store's settings in the results (Redis: asked of the server if unset).
        #[arg(long)]
        mode: Option<String>,
        /// quorumkv: longest time one operation may take over all its retries.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    }

    fn parse_workload(text: &str) -> Result<Workload, String> {
        Workload::parse(text).ok_or_else(|| format!("unknown workload {text:?}: one of a-f"))
    }

    enum Action {
        Wait(Duration),
        Load(LoadSpec),
        Run(RunSpec),
        Write(WriteSpec, Option<PathBuf>, String),
    }

    enum Outcome {
        Ready,
        Loaded(LoadOutcome),
        Ran(Box<RunResult>),
        Wrote(Box<WriteTotal>, Option<PathBuf>, String),
    }

    impl Action {
        async fn apply<C: Connector>(&self, connector: C) -> Result<Outcome, AdapterError> {
            let connector = Arc::new(connector);
            match self {
                Action::Wait(timeout) => driver::wait_ready(connector, *timeout)
                    .await
                    .map(|()| Outcome::Ready),
                Action::Load(spec) => driver::load(connector, spec).await.map(Outcome::Loaded),
                Action::Run(spec) => driver::run(connector, spec)
                    .await
                    .map(|r| Outcome::Ran(Box::new(r))),
                Action::Write(spec, out, label) => {
                    let on_round = |round: &writers::Round| {
                        println!("{label} {}", round.summary_line());
                        if let Some(path) = out {
                            let line = serde_json::json!({"label": label, "kind": "round", "round": round});
                            if let Err(e) = append_line(path, &line.to_string()) {
                                eprintln!("error: appending to {}: {e}", path.display());
                            }
                        }
                    };
                    writers::write(connector, spec.clone(), on_round)
                        .await
                        .map(|t| Outcome::Wrote(Box::new(t), out.clone(), label.clone()))
                }
            }
        }
    }

    async fn dispatch(store: &StoreArgs, action: Action) -> Result<Outcome, AdapterError> {
        match store.store {
            StoreKind::Quorumkv => {
                let endpoints = store
                    .endpoints
                    .iter()
                    .map(|e| e.parse())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| AdapterError::new("quorumkv", format!("bad endpoint: {e}")))?;
                let connector = QuorumkvConnector {
                    endpoints,
                    operation_timeout: Duration::from_millis(store.timeout_ms),
                };
                action.apply(connector).await
            }
            StoreKind::Redis => {
                let connector = RedisConnector::new(&store.endpoints[0], store.mode.clone());
                action.apply(connector).await
            }
            StoreKind::Etcd => etcd(store, action).await,
        }
    }

    #[cfg(feature = "etcd")]
    async fn etcd(store: &StoreArgs, action: Action) -> Result<Outcome, AdapterError> {
        let connector = workloads::ycsb::adapters::etcd::EtcdConnector {
            endpoints: store
                .endpoints
                .iter()
                .map(|e| format!("http://{e}"))
                .collect(),
            serializable_reads: store.etcd_reads == EtcdReads::Serializable,
        };
        action.apply(connector).await
    }

    #[cfg(not(feature = "etcd"))]
    async fn etcd(_store: &StoreArgs, _action: Action) -> Result<Outcome, AdapterError> {
        Err(AdapterError::new(
            "etcd",
            "built without the etcd adapter: cargo build --release -p workloads --features etcd (needs protoc)",
        ))
    }

    fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(file, "{line}")
    }

    fn report(results: &Path, out_dir: &Path, preamble: Option<&PathBuf>) -> ExitCode {
        let text = match std::fs::read_to_string(results) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("error: reading {}: {e}", results.display());
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let preamble = match preamble.map(std::fs::read_to_string).transpose() {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                eprintln!("error: reading the preamble: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let rows = match report::parse_results(&text) {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("error: {}: {e}", results.display());
                return ExitCode::from(EXIT_USAGE);
            }
        };
        match report::write_report(&rows, &preamble, out_dir) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: writing the report into {}: {e}", out_dir.display());
                ExitCode::from(EXIT_FAILED)
            }
        }
    }

    pub fn main() -> ExitCode {
        let args = Args::parse();
        let (store, action, out) = match args.command {
            Command::Report {
                results,
                out_dir,
                preamble,
            } => return report(&results, &out_dir, preamble.as_ref()),
            Command::Write {
                store,
                clients,
                key_prefix,
                round_s,
                warmup_s,
                duration_s,
                until_mib,
                stop_file,
                probe_pids,
                probe_dirs,
                label,
                out,
            } => {
                if !(round_s > 0.0 && warmup_s >= 0.0 && duration_s.is_none_or(|d| d > 0.0))
                    || store.value_bytes == 0
                {
                    eprintln!("error: --round-s, --duration-s and --value-bytes must be positive, --warmup-s not negative");
                    return ExitCode::from(EXIT_USAGE);
                }
                let spec = WriteSpec {
                    clients,
                    value_bytes: store.value_bytes,
                    key_prefix,
                    round: Duration::from_secs_f64(round_s),
                    warmup: Duration::from_secs_f64(warmup_s),
                    duration: duration_s.map(Duration::from_secs_f64),
                    until_bytes: until_mib.map(|m| m * 1024 * 1024),
                    stop_file,
                    probe_pids,
                    probe_dirs,
                };
                (store, Action::Write(spec, out, label), None)
            }
            Command::Wait { store, timeout_s } => {
                (store, Action::Wait(Duration::from_secs(timeout_s)), None)
            }
            Command::Load { store, clients } => {
                let spec = LoadSpec {
                    record_count: store.records,
                    value_bytes: store.value_bytes,
                    clients,
                };
                (store, Action::Load(spec), None)
            }
            Command::Run {
                store,
                workload,
                clients,
                target_ops_per_s,
                warmup_s,
                duration_s,
                seed,
                out,
            } => {
                if !(duration_s > 0.0 && warmup_s >= 0.0)
                    || target_ops_per_s.is_some_and(|r| r <= 0.0)
                {
                    eprintln!("error: --duration-s and --target-ops-per-s must be positive, --warmup-s not negative");
                    return ExitCode::from(EXIT_USAGE);
                }
                let spec = RunSpec {
                    workload,
                    record_count: store.records,
                    value_bytes: store.value_bytes,
                    clients,
                    target_ops_per_s,
                    warmup: Duration::from_secs_f64(warmup_s),
                    duration: Duration::from_secs_f64(duration_s),
                    seed,
                };
                (store, Action::Run(spec), out)
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: starting the runtime: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        };
        match runtime.block_on(dispatch(&store, action)) {
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_USAGE)
            }
            Ok(Outcome::Ready) => {
                println!("ycsb wait store={:?}: ready", store.store);
                ExitCode::SUCCESS
            }
            Ok(Outcome::Loaded(outcome)) => {
                println!(
                    "ycsb load store={:?} records={} errors={} seconds={:.1} records_per_s={:.0}",
                    store.store,
                    outcome.records,
                    outcome.errors,
                    outcome.seconds,
                    outcome.records as f64 / outcome.seconds.max(1e-9)
                );
                if let Some(e) = &outcome.first_error {
                    eprintln!("first error: {e}");
                }
                if outcome.errors > 0 {
                    ExitCode::from(EXIT_FAILED)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Ok(Outcome::Wrote(total, out, label)) => {
                println!("{label} {}", total.summary_line());
                if let Some(e) = &total.first_error {
                    eprintln!("first error: {e}");
                }
                if let Some(path) = &out {
                    let line = serde_json::json!({"label": label, "kind": "total", "total": total});
                    if let Err(e) = append_line(path, &line.to_string()) {
                        eprintln!("error: appending to {}: {e}", path.display());
                        return ExitCode::from(EXIT_FAILED);
                    }
                }
                if total.errors > 0 || total.ops == 0 {
                    ExitCode::from(EXIT_FAILED)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Ok(Outcome::Ran(result)) => {
                println!("{}", result.summary_line());
                if let Some(e) = &result.first_error {
                    eprintln!("first error: {e}");
                }
                if let Some(path) = &out {
                    let line = serde_json::to_string(&result).unwrap_or_default();
                    if let Err(e) = append_line(path, &line) {
                        eprintln!("error: appending to {}: {e}", path.display());
                        return ExitCode::from(EXIT_FAILED);
                    }
                }
                if result.errors > 0 || result.ops == 0 {
                    ExitCode::from(EXIT_FAILED)
                } else {
                    ExitCode::SUCCESS
                }
            }
        }
    }
}
