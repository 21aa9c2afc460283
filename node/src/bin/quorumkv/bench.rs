//! `quorumkv bench`: closed-loop clients against a running cluster.
//!
//! Each of `--clients` tasks owns one `Client` and issues its next request as soon as the
//! previous one completes, for `--duration-s` seconds after a `--warmup-s` warm-up. Latencies go
//! into the HdrHistogram recorder the YCSB driver (`quorumkv-ycsb`) uses too. The output is one
//! stable line of figures so runs can be compared.

use crate::output::out;
use std::time::Duration;

use clap::Args;
use node::client::latency::LatencyRecorder;
use node::client::{Client, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cli::{ConnArgs, EXIT_NO_QUORUM, EXIT_OK, EXIT_UNREACHABLE};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent closed-loop clients (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,
    /// Number of distinct keys (at least 1).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Fraction of operations that are reads (0.0 = write-only).
    #[arg(long, default_value_t = 0.0)]
    read_fraction: f64,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    duration_s: u64,
    #[arg(long, default_value_t = 1)]
    warmup_s: u64,
    /// Seeds the key choice of each client.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Default)]
struct Tally {
    latencies: LatencyRecorder,
    reads: u64,
    writes: u64,
    errors: u64,
    unknown: u64,
    first_error: Option<ClientError>,
}

pub async fn run(args: BenchArgs) -> u8 {
    let endpoints = match args.conn.resolved_endpoints().await {
        Ok(endpoints) => endpoints,
        Err(e) => return crate::cli::report(e),
    };
    let read_fraction = args.read_fraction.clamp(0.0, 1.0);
    let options = match args.conn.options() {
        Ok(options) => options,
        Err(e) => return crate::cli::report(e),
    };
    let mut probe = match Client::new(endpoints.clone(), options.clone()) {
        Ok(c) => c,
        Err(e) => return crate::cli::report(e),
    };
    if let Err(e) = probe.put(b"bench-probe", b"1").await {
        eprintln!("error: cluster not writable: {e}");
        return EXIT_UNREACHABLE;
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_s);
    let end = measure_from + Duration::from_secs(args.duration_s);
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        // Client ids stay random: a fixed seed would reuse a previous run's sessions.
        let options = options.clone();
        let endpoints = endpoints.clone();
        let (keys, value_bytes) = (args.keys.max(1), args.value_bytes);
        let seed = args.seed ^ (i << 32);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut tally = Tally::default();
            let Ok(mut client) = Client::new(endpoints, options) else {
                return tally;
            };
            let value: Vec<u8> = (0..value_bytes).map(|j| b'a' + (j % 26) as u8).collect();
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let key = format!("bench-{:08}", rng.random_range(0..keys));
                let is_read = rng.random_bool(read_fraction);
                let result = if is_read {
                    client.get(key.as_bytes()).await.map(|_| ())
                } else {
                    client.put(key.as_bytes(), &value).await.map(|_| ())
                };
                let done = Instant::now();
                if let Err(e) = &result {
                    // Kept even outside the window: it explains a run with no result at all.
                    tally.first_error.get_or_insert_with(|| e.clone());
                }
                if now < measure_from || done > end {
                    continue;
                }
                match result {
                    Ok(()) => {
                        tally.latencies.record(done.duration_since(now));
                        if is_read {
                            tally.reads += 1;
                        } else {
                            tally.writes += 1;
                        }
                    }
                    Err(e) => {
                        if e.is_definite() {
                            tally.errors += 1;
                        } else {
                            tally.unknown += 1;
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            total.latencies.merge(&t.latencies);
            total.reads += t.reads;
            total.writes += t.writes;
            total.errors += t.errors;
            total.unknown += t.unknown;
            if total.first_error.is_none() {
                total.first_error = t.first_error;
            }
        }
    }
    let ops = total.latencies.count() as f64;
    let latency = total.latencies.summary();
    out!(
        "bench clients={} keys={} value_bytes={} read_fraction={:.2} duration_s={} | ops={} reads={} writes={} errors={} unknown={} ops_per_s={:.0} p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2}",
        args.clients,
        args.keys,
        args.value_bytes,
        read_fraction,
        args.duration_s,
        ops,
        total.reads,
        total.writes,
        total.errors,
        total.unknown,
        ops / args.duration_s.max(1) as f64,
        latency.p50_ms,
        latency.p99_ms,
        latency.p999_ms,
        latency.max_ms,
    );
    if let Some(e) = &total.first_error {
        eprintln!("first error: {e}");
    }
    if total.latencies.count() > 0 {
        return EXIT_OK;
    }
    // Nothing succeeded: the run measured nothing, and a script must not read it as a result.
    match &total.first_error {
        Some(e) => {
            eprintln!("error: every operation failed");
            crate::cli::exit_code(e)
        }
        None => {
            eprintln!("error: no operation completed within the measured window");
            EXIT_NO_QUORUM
        }
    }
}
