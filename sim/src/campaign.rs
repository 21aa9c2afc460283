//! Campaigns: many seeds of one scenario, spread over worker processes (one simulation per
//! process at a time: madsim runs a whole cluster on one thread), with a progress bar and a
//! summary listing every failure with the command that replays it.
//!
//! Worker protocol: the parent starts `sim --worker --scenario-file F --seeds A..=B
//! --worker-count K --worker-index I`; the worker runs the seeds S of the range with
//! (S - A) % K == I and prints one `SeedResult` JSON object per line on stdout, nothing else.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::report::RunVerdict;
use crate::scenario::Scenario;

/// An inclusive range of seeds, written `A..B` or `A..=B` (both include B) or `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedRange {
    pub first: u64,
    pub last: u64,
}

impl SeedRange {
    pub fn parse(text: &str) -> anyhow::Result<SeedRange> {
        let parse = |s: &str| -> anyhow::Result<u64> {
            s.trim()
                .parse::<u64>()
                .with_context(|| format!("seed {s:?} is not a number"))
        };
        let (first, last) = match text.split_once("..") {
            Some((a, b)) => (parse(a)?, parse(b.trim_start_matches('='))?),
            None => {
                let n = parse(text)?;
                (n, n)
            }
        };
        if first > last {
            bail!("empty seed range {text:?}");
        }
        Ok(SeedRange { first, last })
    }

    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn seeds(&self) -> impl Iterator<Item = u64> {
        self.first..=self.last
    }

    /// The seeds worker `index` of `count` runs.
    pub fn for_worker(&self, index: u64, count: u64) -> impl Iterator<Item = u64> {
        let first = self.first;
        self.seeds().filter(move |s| (s - first) % count == index)
    }
}

/// One seed's result, as a worker reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    pub verdict: RunVerdict,
    pub ops_ok: u64,
    pub ops_fail: u64,
    pub ops_info: u64,
    pub simulated_s: f64,
    pub wall_s: f64,
    pub replay: String,
    /// Where the failure's artifacts were written.
    pub artifacts: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CampaignSummary {
    pub results: Vec<SeedResult>,
    pub wall_s: f64,
}

impl CampaignSummary {
    pub fn failures(&self) -> Vec<&SeedResult> {
        self.results
            .iter()
            .filter(|r| !r.verdict.passed())
            .collect()
    }

    /// Simulated seconds per wall second over the whole campaign (all workers together), and
    /// per single simulation (one core).
    pub fn speed(&self) -> (f64, f64) {
        let simulated: f64 = self.results.iter().map(|r| r.simulated_s).sum();
        let busy: f64 = self.results.iter().map(|r| r.wall_s).sum();
        (ratio(simulated, self.wall_s), ratio(simulated, busy))
    }

    pub fn render(&self, scenario: &Scenario) -> String {
        let failures = self.failures();
        let (total_speed, per_run_speed) = self.speed();
        let ops: u64 = self
            .results
            .iter()
            .map(|r| r.ops_ok + r.ops_fail + r.ops_info)
            .sum();
        let mut out = format!(
            "campaign {}: {} seeds, {} passed, {} failed; {} ops; {:.1} s wall\n\
             speed: {:.0} simulated s per wall s (all workers), {:.0} per simulation\n",
            scenario.name,
            self.results.len(),
            self.results.len() - failures.len(),
            failures.len(),
            ops,
            self.wall_s,
            total_speed,
            per_run_speed,
        );
        for f in failures {
            out.push_str(&format!(
                "  seed {}: {}\n    replay: {}\n",
                f.seed,
                f.verdict.summary(),
                f.replay
            ));
            if let Some(dir) = &f.artifacts {
                out.push_str(&format!("    artifacts: {dir}\n"));
            }
        }
        out
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Runs `seeds` of `scenario` in `workers` child processes of this executable.
pub fn run_campaign(
    scenario: &Scenario,
    seeds: SeedRange,
    workers: u64,
    out_dir: &Path,
) -> anyhow::Result<CampaignSummary> {
    let started = Instant::now();
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let scenario_file = out_dir.join(format!("campaign-{}.toml", scenario.name));
    std::fs::write(&scenario_file, scenario.to_toml()?)
        .with_context(|| format!("writing {}", scenario_file.display()))?;
    let exe = std::env::current_exe().context("locating the sim executable")?;
    let workers = workers.clamp(1, seeds.len());
    let bar = ProgressBar::new(seeds.len());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {msg} [{elapsed}<{eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("0 failed");
    let (tx, rx) = mpsc::channel::<anyhow::Result<SeedResult>>();
    let mut children = Vec::new();
    for index in 0..workers {
        let mut child = Command::new(&exe)
            .arg("--worker")
            .arg("--scenario-file")
            .arg(&scenario_file)
            .arg("--seeds")
            .arg(format!("{}..={}", seeds.first, seeds.last))
            .arg("--worker-count")
            .arg(workers.to_string())
            .arg("--worker-index")
            .arg(index.to_string())
            .arg("--out")
            .arg(out_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {index} ({})", exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let result = line.context("reading worker output").and_then(|l| {
                    serde_json::from_str::<SeedResult>(&l)
                        .with_context(|| format!("worker line {l:?}"))
                });
                if tx.send(result).is_err() {
                    break;
                }
            }
        });
        children.push(child);
    }
    drop(tx);
    let mut summary = CampaignSummary::default();
    for result in rx {
        let result = result?;
        bar.inc(1);
        summary.results.push(result);
        bar.set_message(format!("{} failed", summary.failures().len()));
    }
    for (index, mut child) in children.into_iter().enumerate() {
        let status = child
            .wait()
            .with_context(|| format!("waiting for worker {index}"))?;
        if !status.success() {
            bar.println(format!("worker {index} exited with {status}"));
        }
    }
    bar.finish();
    summary.results.sort_by_key(|r| r.seed);
    summary.wall_s = started.elapsed().as_secs_f64();
    if summary.results.len() as u64 != seeds.len() {
        bail!(
            "workers reported {} of {} seeds (a worker crashed: see its output above)",
            summary.results.len(),
            seeds.len()
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges() {
        assert_eq!(SeedRange::parse("1..10").expect("range").len(), 10);
        assert_eq!(SeedRange::parse("1..=10").expect("range").len(), 10);
        assert_eq!(
            SeedRange::parse("7")
                .expect("single")
                .seeds()
                .collect::<Vec<_>>(),
            vec![7]
        );
        assert!(SeedRange::parse("5..1").is_err());
        assert!(SeedRange::parse("x..1").is_err());
        let range = SeedRange::parse("3..12").expect("range");
        let mut all: Vec<u64> = (0..3).flat_map(|i| range.for_worker(i, 3)).collect();
        all.sort();
        assert_eq!(all, range.seeds().collect::<Vec<_>>());
    }
}
