//! `sim`: seeded simulation campaigns, one-seed replays and shrinking.
//!
//!     cargo run -p sim --release -- --seeds 1..1000 --scenario partitions --nodes 5 --duration-s 60
//!     cargo run -p sim --release -- --seed 42 --scenario partitions        # replay with logs
//!     cargo run -p sim --release -- --scenario-file shrunk.toml             # replay a file
//!     cargo run -p sim --release -- --seed 42 --scenario mixed --bugs ack-before-fsync --shrink
//!
//! The simulation needs a `--cfg madsim` build. A normal build of this binary builds that
//! variant itself (into `<target>/madsim`) and runs it with the same arguments.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::Parser;

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
    /// Preset scenario: none, partitions, messages, crashes, elections, mixed, set, ycsb.
    #[arg(long, default_value = "mixed")]
    scenario: String,
    /// Replay this scenario file (TOML, or JSON by extension) exactly.
    #[arg(long)]
    scenario_file: Option<PathBuf>,
    #[arg(long)]
    nodes: Option<u32>,
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
        if let Some(n) = args.nodes {
            scenario.nodes = n;
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
        let base = base_scenario(&args)?;
        if args.worker {
            return worker(&args, base);
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
        if let Some(seed) = args.seed {
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

    fn worker(args: &Args, base: Scenario) -> anyhow::Result<i32> {
        let seeds = SeedRange::parse(args.seeds.as_deref().unwrap_or("0"))?;
        for seed in seeds.for_worker(args.worker_index, args.worker_count.max(1)) {
            let scenario = Scenario {
                seed,
                faults: None,
                ..base.clone()
            };
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
