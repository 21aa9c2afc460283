//! The outcome of one simulated run and how it is judged: the checker's verdicts on the
//! recorded history, plus liveness after the final heal.
//!
//! Invariant: a run passes only when every check that applies to its workload passed; a checker
//! that ran out of budget is a failure to report ("unknown"), never a pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use checker::{check_kv, CheckOptions, History, OkValue, Op, Outcome, Verdict};
use serde::{Deserialize, Serialize};
use workloads::ClientStats;

use crate::scenario::Scenario;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum RunVerdict {
    Pass,
    NotLinearizable {
        key: String,
    },
    /// The set's final read missed acknowledged adds or contained elements never added.
    SetAnomaly {
        lost: Vec<i64>,
        unexpected: Vec<i64>,
    },
    /// After the final heal some client could not complete an operation within the bound.
    NoProgress {
        detail: String,
    },
    /// The checker gave up (budget) — neither a pass nor a proven violation.
    CheckerUnknown {
        reason: String,
    },
    /// Node or harness code panicked, or the simulation deadlocked.
    Panic {
        message: String,
    },
}

impl RunVerdict {
    pub fn passed(&self) -> bool {
        matches!(self, RunVerdict::Pass)
    }

    pub fn summary(&self) -> String {
        match self {
            RunVerdict::Pass => "PASS".to_string(),
            RunVerdict::NotLinearizable { key } => format!("FAIL not linearizable (key {key})"),
            RunVerdict::SetAnomaly { lost, unexpected } => format!(
                "FAIL set anomaly ({} acknowledged adds lost, {} unexpected elements)",
                lost.len(),
                unexpected.len()
            ),
            RunVerdict::NoProgress { detail } => format!("FAIL no progress after heal: {detail}"),
            RunVerdict::CheckerUnknown { reason } => format!("FAIL checker unknown: {reason}"),
            RunVerdict::Panic { message } => format!("FAIL panic: {message}"),
        }
    }
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The concretized scenario (explicit faults): write it out to replay.
    pub scenario: Scenario,
    pub verdict: RunVerdict,
    pub stats: ClientStats,
    pub history: History,
    /// Nemesis and harness events with simulated time stamps, one per line.
    pub trace: String,
    pub simulated_s: f64,
    pub wall_s: f64,
}

/// Judges a finished run's history: register keys by linearizability, set keys by the final
/// read. `liveness` carries the harness's own finding, if any.
pub fn judge(history: &History, liveness: Option<String>) -> RunVerdict {
    let registers = history.filtered(|o| !o.op.is_set_op());
    let options = CheckOptions::default();
    match check_kv(&registers, &options) {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable(violation) => {
            return RunVerdict::NotLinearizable { key: violation.key };
        }
        Verdict::Unknown { reason } => return RunVerdict::CheckerUnknown { reason },
    }
    if let Some(anomaly) = check_sets(history) {
        return anomaly;
    }
    match liveness {
        Some(detail) => RunVerdict::NoProgress { detail },
        None => RunVerdict::Pass,
    }
}

/// The set check: the last ok read of each set must contain every add acknowledged before the
/// read was invoked, and only elements some add attempted.
fn check_sets(history: &History) -> Option<RunVerdict> {
    let mut keys: Vec<&str> = history
        .ops()
        .iter()
        .filter(|o| o.op.is_set_op())
        .map(|o| o.key.as_str())
        .collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let ops: Vec<_> = history.ops().iter().filter(|o| o.key == key).collect();
        let Some((read, elements)) = ops.iter().rev().find_map(|o| match (&o.op, o.outcome()) {
            (Op::ReadSet, Outcome::Ok(OkValue::Elements(e))) => Some((*o, e)),
            _ => None,
        }) else {
            continue;
        };
        let read_set: BTreeSet<i64> = elements.iter().copied().collect();
        let mut attempted = BTreeSet::new();
        let mut lost = Vec::new();
        for o in &ops {
            if let Op::Add { element } = o.op {
                attempted.insert(element);
                let acked_before_read = matches!(o.outcome(), Outcome::Ok(_))
                    && o.completion
                        .as_ref()
                        .is_some_and(|c| c.seq < read.invoke_seq);
                if acked_before_read && !read_set.contains(&element) {
                    lost.push(element);
                }
            }
        }
        let unexpected: Vec<i64> = read_set.difference(&attempted).copied().collect();
        if !lost.is_empty() || !unexpected.is_empty() {
            return Some(RunVerdict::SetAnomaly { lost, unexpected });
        }
    }
    None
}

/// Writes a failing run's artifacts (scenario, history, explanation, trace) into
/// `dir/<scenario>-seed<seed>/` and returns that directory.
pub fn write_failure(report: &RunReport, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join(format!(
        "{}-seed{}",
        report.scenario.name, report.scenario.seed
    ));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("scenario.toml", &report.scenario.to_toml()?)?;
    write("history.jsonl", &report.history.to_jsonl())?;
    write("trace.txt", &report.trace)?;
    let explanation = format!(
        "verdict: {}\nreplay: {}\nreplay (shrunk/exact scenario): cargo run -p sim --release -- --scenario-file {}\n",
        report.verdict.summary(),
        report.scenario.replay_command(),
        out.join("scenario.toml").display()
    );
    write("explanation.txt", &explanation)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(events: &[(u64, &str, Op, Outcome)]) -> History {
        let mut h = History::new();
        let mut t = 0;
        for (process, key, op, outcome) in events {
            t += 1;
            let id = h.invoke(t, *process, *key, op.clone()).expect("invoke");
            t += 1;
            h.complete(t, id, outcome.clone()).expect("complete");
        }
        h
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        let h = history(&[
            (0, "k", Op::Write { value: 1 }, Outcome::Ok(OkValue::Done)),
            (0, "k", Op::Write { value: 2 }, Outcome::Ok(OkValue::Done)),
            (1, "k", Op::Read, Outcome::Ok(OkValue::Read(Some(1)))),
        ]);
        assert_eq!(
            judge(&h, None),
            RunVerdict::NotLinearizable { key: "k".into() }
        );
    }

    #[test]
    fn lost_add_is_a_set_anomaly() {
        let h = history(&[
            (0, "s", Op::Add { element: 1 }, Outcome::Ok(OkValue::Done)),
            (0, "s", Op::Add { element: 2 }, Outcome::Ok(OkValue::Done)),
            (1, "s", Op::Add { element: 3 }, Outcome::Info),
            (
                1,
                "s",
                Op::ReadSet,
                Outcome::Ok(OkValue::Elements(vec![1, 9])),
            ),
        ]);
        assert_eq!(
            judge(&h, None),
            RunVerdict::SetAnomaly {
                lost: vec![2],
                unexpected: vec![9]
            }
        );
    }

    #[test]
    fn clean_history_passes_unless_liveness_failed() {
        let h = history(&[
            (0, "k", Op::Write { value: 1 }, Outcome::Ok(OkValue::Done)),
            (1, "k", Op::Read, Outcome::Ok(OkValue::Read(Some(1)))),
            (1, "s", Op::Add { element: 3 }, Outcome::Info),
            (1, "s", Op::ReadSet, Outcome::Ok(OkValue::Elements(vec![3]))),
        ]);
        assert_eq!(judge(&h, None), RunVerdict::Pass);
        assert!(!judge(&h, Some("client 2".into())).passed());
    }
}
