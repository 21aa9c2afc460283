//! `sim`: seeded simulation campaigns, one-seed replays and shrinking.
//!
//!     cargo run -p sim --release -- --seeds 1..1000                       # the swarm (default)
//!     cargo run -p sim --release -- --seeds 1..1000 --scenario partitions --nodes 5 --duration-s 60
//!     cargo run -p sim --release -- --mutation --seeds 1..100              # every planted bug
//!     cargo run -p sim --release -- --seed 42 --scenario partitions        # replay with logs
//!     cargo run -p sim --release -- --scenario-file shrunk.toml             # replay a file
//!     cargo run -p sim --release -- --seed 42 --scenario mixed --bugs ack-before-fsync --shrink
//!     cargo run -p sim --release -- --bench                                 # throughput, 3/5/7 nodes
//!
//! The simulation needs a `--cfg madsim` build. A normal build of this binary builds that
//! variant itself (into `<target>/madsim`) and runs it with the same arguments.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

/// mimalloc rather than glibc's malloc: a simulation allocates per frame, per entry and per
/// timer, and malloc/free/realloc were about a fifth of its instructions (docs/SIMULATION.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sim",
    about = "quorumkv simulator: seeded fault-injection campaigns"
)]
struct Args {
    /// Run a campaign over these seeds: `A..B` (both included) or `N`.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<String>,
    /// Replay one seed with full logs.
    #[arg(long)]
    seed: Option<u64>,
    /// Scenario: swarm (each seed draws its own configuration: the default), or a preset for
    /// replay and targeted hunts: none, partitions, messages, crashes, elections, votes,
    /// figure8, mixed, set, ycsb, membership.
    #[arg(long, default_value = "swarm")]
    scenario: String,
    /// Mutation score: run the campaign (`--seeds`, default 1..100) once per planted bug and
    /// once without, and print per bug the seeds to the first failure and the share failing.
    #[arg(long, conflicts_with_all = ["seed", "bench", "bugs"])]
    mutation: bool,
    /// Replay this scenario file (TOML, or JSON by extension) exactly.
    #[arg(long)]
    scenario_file: Option<PathBuf>,
    #[arg(long)]
    nodes: Option<u32>,
    /// Servers outside the cluster at first, started by `Join` faults.
    #[arg(long)]
    spare_nodes: Option<u32>,
    #[arg(long)]
    shards: Option<u32>,
    /// Simulated CPU time per input a node handles, in microseconds (0: free).
    #[arg(long)]
    sim_busy_us: Option<u64>,
    /// Throughput benchmark instead of a fault campaign: a saturating workload without faults
    /// on each cluster size of `--bench-nodes`; prints ops per simulated and per wall second.
    #[arg(long, conflicts_with_all = ["seeds", "scenario_file"])]
    bench: bool,
    /// Cluster sizes the benchmark runs, comma-separated.
    #[arg(long, default_value = "3,5,7")]
    bench_nodes: String,
    /// Seeds per cluster size in the benchmark (from `--seed`, default 1): where the shards'
    /// leaders land varies with the seed, and so does a small cluster's capacity.
    #[arg(long, default_value_t = 3)]
    bench_seeds: u64,
    #[arg(long)]
    clients: Option<u32>,
    /// Operations per client (upper bound).
    #[arg(long)]
    ops: Option<u64>,
    /// Simulated seconds of the main phase.
    #[arg(long)]
    duration_s: Option<u64>,
    /// Planted bugs to switch on, comma-separated (node/src/bugs.rs).
    #[arg(long)]
    bugs: Option<String>,
    #[arg(long)]
    no_buggify: bool,
    /// Worker processes for a campaign (default: available cores).
    #[arg(long)]
    workers: Option<u64>,
    /// After a failing single run, shrink it and print the smallest failing scenario.
    #[arg(long)]
    shrink: bool,
    #[arg(long, default_value_t = 150)]
    shrink_attempts: usize,
    /// Where failure artifacts go.
    #[arg(long, default_value = "target/sim-failures")]
    out: PathBuf,
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true, default_value_t = 1)]
    worker_count: u64,
    #[arg(long, hide = true, default_value_t = 0)]
    worker_index: u64,
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sim: error: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(not(madsim))]
fn run(_args: Args) -> anyhow::Result<i32> {
    use anyhow::Context;
    use std::process::Command;
    // Build the simulation variant next to this binary's target dir and hand over to it.
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("madsim");
    eprintln!(
        "sim: building the simulation variant (RUSTFLAGS=\"--cfg madsim\") into {}",
        target.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "sim", "--release", "--bin", "sim"])
        .current_dir(&workspace)
        .env("RUSTFLAGS", "--cfg madsim")
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("running cargo build for the simulation variant")?;
    if !status.success() {
        anyhow::bail!("building the simulation variant failed ({status})");
    }
    let exe = target.join("release").join("sim");
    let status = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    Ok(status.code().unwrap_or(2))
}

#[cfg(madsim)]
fn run(args: Args) -> anyhow::Result<i32> {
    simulation::run(args)
}

#[cfg(madsim)]
mod simulation {
    use super::Args;
    use anyhow::Context;
    use sim::campaign::{run_campaign, SeedRange, SeedResult};
    use sim::cluster::{self, RunOptions};
    use sim::report::write_failure;
    use sim::shrink::shrink;
    use sim::Scenario;

    fn base_scenario(args: &Args) -> anyhow::Result<Scenario> {
        let mut scenario = match &args.scenario_file {
            Some(path) => return Scenario::from_file(path),
            None => Scenario::preset(&args.scenario)?,
        };
        if scenario.swarm {
            let drawn = [
                ("--nodes", args.nodes.is_some()),
                ("--spare-nodes", args.spare_nodes.is_some()),
                ("--shards", args.shards.is_some()),
                ("--clients", args.clients.is_some()),
            ];
            if let Some((flag, _)) = drawn.iter().find(|(_, given)| *given) {
                anyhow::bail!(
                    "{flag}: the swarm draws it per seed; pick a preset with --scenario to fix it"
                );
            }
        }
        if let Some(n) = args.nodes {
            scenario.nodes = n;
        }
        if let Some(n) = args.spare_nodes {
            scenario.spare_nodes = n;
        }
        if let Some(n) = args.shards {
            scenario.shards = n;
        }
        if let Some(us) = args.sim_busy_us {
            scenario.sim_busy_us_per_input = us;
        }
        if let Some(c) = args.clients {
            scenario.clients = c;
        }
        if let Some(o) = args.ops {
            scenario.ops_per_client = o;
        }
        if let Some(d) = args.duration_s {
            scenario.duration_s = d;
        }
        if let Some(b) = &args.bugs {
            scenario.planted_bugs = b.clone();
        }
        if args.no_buggify {
            scenario.buggify = false;
        }
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn run(args: Args) -> anyhow::Result<i32> {
        if args.bench {
            return bench(&args);
        }
        let base = base_scenario(&args)?;
        if args.worker {
            return worker(&args, base);
        }
        if args.mutation {
            return mutation(&args, &base);
        }
        if let Some(seeds) = &args.seeds {
            let seeds = SeedRange::parse(seeds)?;
            let workers = args.workers.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() as u64)
                    .unwrap_or(1)
            });
            println!(
                "campaign: scenario {} seeds {}..={} on {workers} workers",
                base.name, seeds.first, seeds.last
            );
            let summary = run_campaign(&base, seeds, workers, &args.out)?;
            print!("{}", summary.render(&base));
            return Ok(if summary.failures().is_empty() { 0 } else { 1 });
        }
        let mut scenario = base;
        if scenario.swarm {
            scenario = scenario.for_seed(args.seed.unwrap_or(0));
        } else if let Some(seed) = args.seed {
            scenario.seed = seed;
        }
        single(&args, scenario)
    }

    fn single(args: &Args, scenario: Scenario) -> anyhow::Result<i32> {
        println!("seed {} (scenario {})", scenario.seed, scenario.name);
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
        let report = cluster::run(&scenario, RunOptions { verbose: true });
        print!("{}", report.trace);
        println!(
            "ops ok {} fail {} info {}; {:.1} simulated s in {:.2} wall s ({:.0}x)",
            report.stats.ok,
            report.stats.fail,
            report.stats.info,
            report.simulated_s,
            report.wall_s,
            report.simulated_s / report.wall_s.max(1e-9)
        );
        if report.verdict.passed() {
            println!("verdict: {}", report.verdict.summary());
            return Ok(0);
        }
        let dir = write_failure(&report, &args.out)?;
        println!("artifacts: {}", dir.display());
        println!("replay: {}", report.scenario.replay_command());
        if args.shrink {
            println!("shrinking (at most {} runs)...", args.shrink_attempts);
            let outcome = shrink(&report.scenario, args.shrink_attempts, |candidate| {
                !cluster::run(candidate, RunOptions::default())
                    .verdict
                    .passed()
            });
            let path = dir.join("shrunk.toml");
            let text = outcome.scenario.to_toml()?;
            std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "shrunk in {} runs: {}",
                outcome.attempts,
                outcome.steps.join("; ")
            );
            println!("{text}");
            println!(
                "replay shrunk: cargo run -p sim --release -- --scenario-file {}",
                path.display()
            );
        }
        println!("verdict: {}", report.verdict.summary());
        Ok(1)
    }

    /// Operations that completed before this much of a benchmark run are not counted (leader
    /// elections of every group, sessions opening).
    const BENCH_WARMUP_S: u64 = 2;
    /// Enough closed-loop clients to saturate 3 to 7 nodes at `BENCH_BUSY_US_PER_INPUT` (with
    /// fewer, ops/s is bounded by the simulated network's latency, not by the nodes); below the
    /// node's `limits.max_client_connections` (1024), which the harness's own polls also need.
    const BENCH_CLIENTS: u32 = 512;
    /// Simulated CPU per input: a node handles at most 5,000 inputs per simulated second.
    const BENCH_BUSY_US_PER_INPUT: u64 = 200;
    const BENCH_SHARDS: u32 = 16;
    const BENCH_KEYS: u32 = 10_000;
    const BENCH_DURATION_S: u64 = 12;

    /// The throughput benchmark: for each cluster size, one run of a saturating workload (many
    /// clients, no think time, no faults, uniform keys over every shard) with a per-input CPU
    /// cost on the nodes, so that a node's capacity is finite and the cluster's grows with the
    /// nodes that share the shards' leaders and replicas.
    fn bench(args: &Args) -> anyhow::Result<i32> {
        let sizes: Vec<u32> = args
            .bench_nodes
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<u32>()
                    .context("--bench-nodes: not a number")
            })
            .collect::<anyhow::Result<_>>()?;
        let first_seed = args.seed.unwrap_or(1);
        let seeds = first_seed..first_seed + args.bench_seeds.max(1);
        let mut rows: Vec<(u32, f64)> = Vec::new();
        let mut failed = false;
        for nodes in sizes {
            let mut per_sim = Vec::new();
            let (mut ops_total, mut ok_total, mut wall_total) = (0u64, 0u64, 0f64);
            for seed in seeds.clone() {
                let scenario = bench_scenario(args, nodes, seed)?;
                if rows.is_empty() && per_sim.is_empty() {
                    println!(
                        "bench: {} shards, {} clients (closed loop, no think time), ycsb 50 % \
                         reads over {BENCH_KEYS} uniform keys, sim_busy_us_per_input {}, {} \
                         simulated s per run (first {BENCH_WARMUP_S} s not counted), seeds \
                         {}..={}, no faults",
                        scenario.shards,
                        scenario.clients,
                        scenario.sim_busy_us_per_input,
                        scenario.duration_s,
                        seeds.start,
                        seeds.end - 1
                    );
                    println!(
                        "{:>5} {:>10} {:>12} {:>17} {:>12} {:>8}",
                        "nodes", "ops", "ops/sim_s", "(min..max)", "ops/wall_s", "wall_s"
                    );
                }
                let report = cluster::run(&scenario, RunOptions::default());
                if !report.verdict.passed() {
                    failed = true;
                    println!("  {nodes} nodes seed {seed}: {}", report.verdict.summary());
                }
                let ops = ok_completions_between(
                    &report.history,
                    BENCH_WARMUP_S * 1_000_000_000,
                    scenario.duration_s * 1_000_000_000,
                );
                let counted_s = scenario.duration_s.saturating_sub(BENCH_WARMUP_S).max(1);
                per_sim.push(ops as f64 / counted_s as f64);
                ops_total += ops;
                ok_total += report.stats.ok;
                wall_total += report.wall_s;
            }
            let mean = per_sim.iter().sum::<f64>() / per_sim.len() as f64;
            let min = per_sim.iter().copied().fold(f64::MAX, f64::min);
            let max = per_sim.iter().copied().fold(0.0, f64::max);
            println!(
                "{:>5} {:>10} {:>12.0} {:>17} {:>12.0} {:>8.1}",
                nodes,
                ops_total,
                mean,
                format!("({min:.0}..{max:.0})"),
                ok_total as f64 / wall_total.max(1e-9),
                wall_total
            );
            rows.push((nodes, mean));
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            println!(
                "capacity {} -> {} nodes: x{:.2} (mean ops per simulated second)",
                first.0,
                last.0,
                last.1 / first.1.max(1e-9)
            );
        }
        println!(
            "verdict: {}",
            if failed { "FAIL (see above)" } else { "PASS" }
        );
        Ok(if failed { 1 } else { 0 })
    }

    fn bench_scenario(args: &Args, nodes: u32, seed: u64) -> anyhow::Result<Scenario> {
        let mut scenario = Scenario::preset("none")?;
        scenario.name = "bench".to_string();
        scenario.seed = seed;
        scenario.nodes = nodes;
        scenario.clients = args.clients.unwrap_or(BENCH_CLIENTS);
        scenario.ops_per_client = args.ops.unwrap_or(u64::MAX / 2);
        scenario.duration_s = args.duration_s.unwrap_or(BENCH_DURATION_S);
        scenario.think_time_ms = 0;
        scenario.shards = args.shards.unwrap_or(BENCH_SHARDS);
        scenario.sim_busy_us_per_input = args.sim_busy_us.unwrap_or(BENCH_BUSY_US_PER_INPUT);
        scenario.workload = workloads::WorkloadSpec::Ycsb {
            keys: BENCH_KEYS,
            read_percent: 50,
            hot_percent: 0,
        };
        scenario.validate()?;
        Ok(scenario)
    }

    /// Successful operations that completed in `[from_ns, to_ns)` of simulated time.
    fn ok_completions_between(history: &checker::History, from_ns: u64, to_ns: u64) -> u64 {
        history
            .ops()
            .iter()
            .filter_map(|o| o.completion.as_ref())
            .filter(|c| matches!(c.outcome, checker::Outcome::Ok(_)))
            .filter(|c| (from_ns..to_ns).contains(&c.time_ns))
            .count() as u64
    }

    /// Seeds of a mutation run unless `--seeds` says otherwise.
    const MUTATION_SEEDS: &str = "1..100";
    /// A verdict quoted in the mutation table is cut to this many characters.
    const MUTATION_VERDICT_CHARS: usize = 70;

    /// The mutation score: the campaign once without planted bugs (the baseline must pass) and
    /// once per planted bug (node/src/bugs.rs); per bug, the seeds to the first failure and the
    /// share of seeds that fail. Exit 0 when the baseline passes and every bug is found.
    fn mutation(args: &Args, base: &Scenario) -> anyhow::Result<i32> {
        let seeds = SeedRange::parse(args.seeds.as_deref().unwrap_or(MUTATION_SEEDS))?;
        let workers = args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1)
        });
        let started = std::time::Instant::now();
        let mut rows = Vec::new();
        let mut all_found = true;
        let bugs = std::iter::once("").chain(node::bugs::PlantedBugs::NAMES);
        for bug in bugs {
            let scenario = Scenario {
                planted_bugs: bug.to_string(),
                ..base.clone()
            };
            let label = if bug.is_empty() {
                "(none: baseline)"
            } else {
                bug
            };
            eprintln!("mutation: {label}, seeds {}..={}", seeds.first, seeds.last);
            let out = args
                .out
                .join("mutation")
                .join(if bug.is_empty() { "none" } else { bug });
            let summary = run_campaign(&scenario, seeds, workers, &out)?;
            let mut failures = summary.failures();
            failures.sort_by_key(|r| r.seed);
            let first = failures.first().map(|r| r.seed);
            let verdict: String = failures
                .first()
                .map(|r| r.verdict.summary())
                .unwrap_or_default()
                .chars()
                .take(MUTATION_VERDICT_CHARS)
                .collect();
            let found = first.is_some();
            if bug.is_empty() == found {
                all_found = false;
            }
            rows.push(format!(
                "| {label} | {} | {}/{} ({:.0} %) | {} |",
                first.map_or("not found".to_string(), |s| (s - seeds.first + 1)
                    .to_string()),
                failures.len(),
                summary.results.len(),
                100.0 * failures.len() as f64 / summary.results.len().max(1) as f64,
                verdict.replace('|', "/"),
            ));
        }
        println!(
            "mutation score: scenario {}, seeds {}..={}, duration {} s, {:.0} s wall",
            base.name,
            seeds.first,
            seeds.last,
            base.duration_s,
            started.elapsed().as_secs_f64()
        );
        println!("| planted bug | seeds to first failure | seeds failing | first failure |");
        println!("|---|---:|---:|---|");
        for row in rows {
            println!("{row}");
        }
        println!(
            "verdict: {}",
            if all_found {
                "PASS (baseline clean, every planted bug found)"
            } else {
                "FAIL (a planted bug not found, or the baseline failed)"
            }
        );
        Ok(if all_found { 0 } else { 1 })
    }

    fn worker(args: &Args, base: Scenario) -> anyhow::Result<i32> {
        let seeds = SeedRange::parse(args.seeds.as_deref().unwrap_or("0"))?;
        for seed in seeds.for_worker(args.worker_index, args.worker_count.max(1)) {
            let scenario = base.for_seed(seed);
            let report = cluster::run(&scenario, RunOptions::default());
            let artifacts = if report.verdict.passed() {
                None
            } else {
                Some(write_failure(&report, &args.out)?.display().to_string())
            };
            let result = SeedResult {
                seed,
                verdict: report.verdict.clone(),
                ops_ok: report.stats.ok,
                ops_fail: report.stats.fail,
                ops_info: report.stats.info,
                simulated_s: report.simulated_s,
                wall_s: report.wall_s,
                replay: scenario.replay_command(),
                artifacts,
            };
            println!("{}", serde_json::to_string(&result)?);
        }
        Ok(0)
    }
}
