//! `cargo bench -p checker`: the three figures of issue 3, printed the same way every run.
//!
//! 1. 100,000 ops, 10 clients, 1,000 keys, random overlaps (target: under 1 s).
//! 2. One key, 10 concurrent clients, 5,000 ops with unknown outcomes sprinkled in.
//! 3. 102 etcd-like histories (single register, values 0..4, 500..3,000 ops each, many crashed
//!    ops), the shape Porcupine checks in 530 ms on this machine.
//!
//! Histories come from a simulated linearizable register store driven by a seeded RNG, so they
//! are linearizable by construction and identical on every run.

use checker::{check_kv, Budget, CheckOptions, History, OkValue, Op, Outcome, Verdict};
use std::time::{Duration, Instant};

/// SplitMix64: a small seeded generator (no OS randomness; same histories every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Shape {
    ops: usize,
    clients: usize,
    keys: usize,
    /// Values are drawn from 0..value_range (0: unique values).
    value_range: i64,
    /// Percent of writes/cas whose client crashes (outcome unknown; the effect happens or not).
    crash_percent: u64,
    /// Percent of reads that time out (unknown).
    read_timeout_percent: u64,
    /// Longest time an op spends before/after its linearization point, in ns.
    max_latency_ns: u64,
}

struct Planned {
    process: u64,
    key: String,
    op: Op,
    invoke_ns: u64,
    completion: Option<(u64, Outcome)>,
}

/// Generates a linearizable history: ops are executed in linearization order on per-key
/// registers, each placed at a point inside its client's [invoke, complete] interval.
fn generate(shape: &Shape, seed: u64) -> History {
    let mut rng = Rng(seed);
    let mut registers: Vec<Option<i64>> = vec![None; shape.keys];
    let mut free_at: Vec<u64> = vec![0; shape.clients];
    let mut process_of: Vec<u64> = (0..shape.clients as u64).collect();
    let mut next_process = shape.clients as u64;
    let mut point = 0u64;
    let mut planned = Vec::with_capacity(shape.ops);
    for i in 0..shape.ops {
        point += 1 + rng.below(shape.max_latency_ns / shape.clients as u64 + 1);
        let client = (0..shape.clients).min_by_key(|c| free_at[*c]).unwrap_or(0);
        point = point.max(free_at[client] + 1);
        let invoke_ns = point
            - rng
                .below(point - free_at[client])
                .min(rng.below(shape.max_latency_ns + 1));
        let complete_ns = point + 1 + rng.below(shape.max_latency_ns + 1);
        let key = rng.below(shape.keys as u64) as usize;
        let value = if shape.value_range == 0 {
            i as i64
        } else {
            rng.below(shape.value_range as u64) as i64
        };
        let current = registers[key];
        let crash = rng.chance(shape.crash_percent);
        let takes_effect = !crash || rng.chance(50);
        let (op, mut outcome) = match rng.below(10) {
            0..=3 => {
                let timeout = rng.chance(shape.read_timeout_percent);
                (
                    Op::Read,
                    if timeout {
                        Outcome::Info
                    } else {
                        Outcome::Ok(OkValue::Read(current))
                    },
                )
            }
            4..=6 => {
                if takes_effect {
                    registers[key] = Some(value);
                }
                (Op::Write { value }, Outcome::Ok(OkValue::Done))
            }
            _ => {
                let expected = if rng.chance(50) {
                    current.unwrap_or(0)
                } else {
                    rng.below(5) as i64
                };
                if current == Some(expected) && takes_effect {
                    registers[key] = Some(value);
                    (
                        Op::Cas {
                            expected,
                            new: value,
                        },
                        Outcome::Ok(OkValue::Done),
                    )
                } else {
                    (
                        Op::Cas {
                            expected,
                            new: value,
                        },
                        Outcome::Fail,
                    )
                }
            }
        };
        if crash && !matches!(op, Op::Read) && !matches!(outcome, Outcome::Fail) {
            outcome = Outcome::Info;
        }
        let process = process_of[client];
        if matches!(outcome, Outcome::Info) {
            // Like Jepsen: a crashed client's process is retired and a new one takes over.
            process_of[client] = next_process;
            next_process += 1;
        }
        free_at[client] = complete_ns;
        planned.push(Planned {
            process,
            key: format!("k{key}"),
            op,
            invoke_ns,
            completion: Some((complete_ns, outcome)),
        });
    }
    record(planned)
}

fn record(planned: Vec<Planned>) -> History {
    let mut events: Vec<(u64, usize, bool)> = Vec::with_capacity(planned.len() * 2);
    for (i, p) in planned.iter().enumerate() {
        events.push((p.invoke_ns, i, false));
        if let Some((t, _)) = &p.completion {
            events.push((*t, i, true));
        }
    }
    events.sort_unstable();
    let mut ids = vec![None; planned.len()];
    let mut history = History::new();
    for (t, i, done) in events {
        let p = &planned[i];
        if done {
            let outcome = p
                .completion
                .as_ref()
                .map(|c| c.1.clone())
                .unwrap_or(Outcome::Info);
            let id = ids[i].expect("invoked before completed");
            history.complete(t, id, outcome).expect("valid completion");
        } else {
            ids[i] = Some(
                history
                    .invoke(t, p.process, p.key.clone(), p.op.clone())
                    .expect("valid invoke"),
            );
        }
    }
    history
}

fn options(parallel: bool) -> CheckOptions {
    CheckOptions {
        budget: Budget {
            time_limit: Some(Duration::from_secs(60)),
            ..Budget::default()
        },
        initial_value: None,
        parallel,
    }
}

fn unknown_ops(history: &History) -> usize {
    history
        .ops()
        .iter()
        .filter(|r| matches!(r.outcome(), Outcome::Info))
        .count()
}

fn show(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Linearizable => "linearizable".into(),
        Verdict::NotLinearizable(v) => format!("NOT linearizable (key {})", v.key),
        Verdict::Unknown { reason } => format!("unknown ({reason})"),
    }
}

fn timed(history: &History, parallel: bool) -> (Verdict, f64) {
    let start = Instant::now();
    let verdict = check_kv(history, &options(parallel));
    (verdict, start.elapsed().as_secs_f64() * 1e3)
}

fn main() {
    // cargo passes `--bench`; there are no options.
    let many_keys = Shape {
        ops: 100_000,
        clients: 10,
        keys: 1_000,
        value_range: 0,
        crash_percent: 2,
        read_timeout_percent: 2,
        max_latency_ns: 5_000,
    };
    let h = generate(&many_keys, 1);
    let (v, parallel_ms) = timed(&h, true);
    let (v1, single_ms) = timed(&h, false);
    assert_eq!(v, v1);
    println!(
        "bench kv_100k: {} ops, 10 clients, 1000 keys, {} unknown: {} in {parallel_ms:.1} ms (rayon, {} threads), {single_ms:.1} ms (single thread)",
        h.len(),
        unknown_ops(&h),
        show(&v),
        rayon::current_num_threads()
    );

    let one_key = Shape {
        ops: 5_000,
        clients: 10,
        keys: 1,
        crash_percent: 5,
        read_timeout_percent: 5,
        ..many_keys
    };
    let h = generate(&one_key, 2);
    let (v, ms) = timed(&h, false);
    println!(
        "bench one_key_5000: {} ops, 10 clients, 1 key, {} unknown: {} in {ms:.1} ms (single thread)",
        h.len(),
        unknown_ops(&h),
        show(&v)
    );

    let mut rng = Rng(3);
    let etcd_like: Vec<History> = (0..102)
        .map(|i| {
            let shape = Shape {
                ops: 500 + rng.below(2_500) as usize,
                clients: 5,
                keys: 1,
                value_range: 5,
                crash_percent: 10,
                read_timeout_percent: 10,
                max_latency_ns: 20_000,
            };
            generate(&shape, 100 + i)
        })
        .collect();
    let total_ops: usize = etcd_like.iter().map(History::len).sum();
    let total_unknown: usize = etcd_like.iter().map(unknown_ops).sum();
    let start = Instant::now();
    let mut linearizable = 0;
    for h in &etcd_like {
        let verdict = check_kv(h, &options(false));
        assert!(
            !matches!(verdict, Verdict::NotLinearizable(_)),
            "generated histories are linearizable"
        );
        linearizable += usize::from(verdict.is_linearizable());
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    println!(
        "bench etcd_like_102: 102 histories, {total_ops} ops, {total_unknown} unknown: {linearizable} linearizable in {ms:.1} ms (single thread; Porcupine: 530 ms)"
    );
    if let Ok(dir) = std::env::var("QUORUMKV_BENCH_JSONL_DIR") {
        bench_directory(&dir);
    }
}

/// Times `check_kv` (verdicts only, no explanations) over every `.jsonl` file in `dir`.
fn bench_directory(dir: &str) {
    let mut paths: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) => return println!("bench dir {dir}: cannot read: {e}"),
    };
    paths.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    paths.sort();
    paths.retain(|p| {
        std::fs::read_to_string(p)
            .ok()
            .is_some_and(|t| History::from_jsonl(&t).is_ok())
    });
    let histories: Vec<History> = paths
        .iter()
        .filter_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| History::from_jsonl(&t).ok())
        })
        .collect();
    assert_eq!(histories.len(), paths.len(), "files changed while reading");
    let ops: usize = histories.iter().map(History::len).sum();
    let start = Instant::now();
    let mut slowest: Vec<(f64, usize)> = Vec::new();
    let mut verdicts: Vec<Verdict> = Vec::with_capacity(histories.len());
    for (i, h) in histories.iter().enumerate() {
        let one = Instant::now();
        verdicts.push(check_kv(h, &options(false)));
        slowest.push((one.elapsed().as_secs_f64() * 1e3, i));
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let top: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(t, i)| format!("{} {t:.1} ms", paths[*i].display()))
        .collect();
    let good = verdicts.iter().filter(|v| v.is_linearizable()).count();
    let bad = verdicts
        .iter()
        .filter(|v| matches!(v, Verdict::NotLinearizable(_)))
        .count();
    println!(
        "bench dir {dir}: {} histories, {ops} ops: {good} linearizable, {bad} NOT, {} unknown in {ms:.1} ms (single thread)",
        histories.len(),
        histories.len() - good - bad
    );
    println!("bench dir {dir}: slowest: {}", top.join(", "));
}
