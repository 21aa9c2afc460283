//! The outcome of one simulated run and how it is judged: the checker's verdicts on the
//! recorded history, plus liveness after the final heal.
//!
//! Invariant: a run passes only when every check that applies to its workload passed; a checker
//! that ran out of budget is a failure to report ("unknown"), never a pass.

use std::path::{Path, PathBuf};

use anyhow::Context;
use checker::{check_kv, explain, render_html, CheckOptions, History, Verdict};
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
    /// A set read missed acknowledged adds or contained elements never (successfully) added;
    /// one line per anomaly, from `checker::check_set`.
    SetAnomaly {
        anomalies: Vec<String>,
    },
    /// After the final heal some client could not complete an operation within the bound.
    NoProgress {
        detail: String,
    },
    /// After the final heal, replication was not restored within the scenario's
    /// `convergence_bound_s`: some shard's voters differ from its target in the map, a removed
    /// or killed node is still a voter, or a member's state does not match what happened to it.
    NotConverged {
        detail: String,
    },
    /// The checker gave up (budget) — neither a pass nor a proven violation.
    CheckerUnknown {
        reason: String,
    },
    /// A Raft safety property failed (sim/src/safety.rs): one line per violation, first first.
    SafetyViolation {
        violations: Vec<String>,
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
            RunVerdict::SetAnomaly { anomalies } => format!(
                "FAIL set anomaly ({} found; first: {})",
                anomalies.len(),
                anomalies.first().map(String::as_str).unwrap_or("-")
            ),
            RunVerdict::NoProgress { detail } => format!("FAIL no progress after heal: {detail}"),
            RunVerdict::NotConverged { detail } => {
                format!("FAIL replication not restored after heal: {detail}")
            }
            RunVerdict::CheckerUnknown { reason } => format!("FAIL checker unknown: {reason}"),
            RunVerdict::SafetyViolation { violations } => format!(
                "FAIL raft safety ({} found; first: {})",
                violations.len(),
                violations.first().map(String::as_str).unwrap_or("-")
            ),
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
/// read. `liveness` carries the harness's own finding, if any; `convergence` the end-of-run
/// replication check's (reported after every history check).
pub fn judge(
    history: &History,
    liveness: Option<String>,
    convergence: Option<String>,
) -> RunVerdict {
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
    if let Some(detail) = liveness {
        return RunVerdict::NoProgress { detail };
    }
    match convergence {
        Some(detail) => RunVerdict::NotConverged { detail },
        None => RunVerdict::Pass,
    }
}

/// The set check (`checker::check_set`) over the set keys.
fn check_sets(history: &History) -> Option<RunVerdict> {
    let report = checker::check_set(history);
    if report.anomalies.is_empty() {
        return None;
    }
    let anomalies = report.anomalies.iter().map(ToString::to_string).collect();
    Some(RunVerdict::SetAnomaly { anomalies })
}

/// Where `write_failure` puts a failing run's artifacts under `dir`.
pub fn failure_artifacts_dir(dir: &Path, scenario: &crate::Scenario) -> PathBuf {
    dir.join(format!("{}-seed{}", scenario.name, scenario.seed))
}

/// Writes a failing run's artifacts (scenario, history, explanation, trace) into
/// `dir/<scenario>-seed<seed>/` and returns that directory.
pub fn write_failure(report: &RunReport, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = failure_artifacts_dir(dir, &report.scenario);
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
    let registers = report.history.filtered(|o| !o.op.is_set_op());
    let options = CheckOptions::default();
    let verdict = check_kv(&registers, &options);
    let why = match &verdict {
        Verdict::NotLinearizable(violation) => explain(&registers, violation, &options),
        _ => None,
    };
    let mut explanation = explanation;
    if let Some(why) = &why {
        explanation.push_str(&format!(
            "key {}: operation {} cannot be placed: {}\nstates it was tried in: {:?}\n\
             longest linearizable prefix: {} events; minimal failing sub-history: {:?}\n",
            why.key,
            why.failing_op,
            why.reason,
            why.rejected_states,
            why.prefix_events,
            why.minimal_ops
        ));
    }
    write("explanation.txt", &explanation)?;
    let title = format!(
        "{} seed {}: {}",
        report.scenario.name,
        report.scenario.seed,
        report.verdict.summary()
    );
    write(
        "timeline.html",
        &render_html(&title, &registers, &verdict, why.as_ref()),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use checker::{OkValue, Op, Outcome};

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
            judge(&h, None, None),
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
        match judge(&h, None, None) {
            RunVerdict::SetAnomaly { anomalies } => {
                assert_eq!(anomalies.len(), 2, "{anomalies:?}");
                assert!(
                    anomalies.iter().any(|a| a.contains("element 2 lost")),
                    "{anomalies:?}"
                );
                assert!(
                    anomalies.iter().any(|a| a.contains("returned 9")),
                    "{anomalies:?}"
                );
            }
            other => panic!("expected a set anomaly, got {other:?}"),
        }
    }

    #[test]
    fn clean_history_passes_unless_liveness_failed() {
        let h = history(&[
            (0, "k", Op::Write { value: 1 }, Outcome::Ok(OkValue::Done)),
            (1, "k", Op::Read, Outcome::Ok(OkValue::Read(Some(1)))),
            (1, "s", Op::Add { element: 3 }, Outcome::Info),
            (1, "s", Op::ReadSet, Outcome::Ok(OkValue::Elements(vec![3]))),
        ]);
        assert_eq!(judge(&h, None, None), RunVerdict::Pass);
        assert!(!judge(&h, Some("client 2".into()), None).passed());
        assert!(matches!(
            judge(
                &h,
                None,
                Some("shard 3 voters [1, 2] != target [1, 2, 4]".into())
            ),
            RunVerdict::NotConverged { .. }
        ));
    }

    #[test]
    fn failure_artifacts_explain_and_draw_the_violation() {
        let h = history(&[
            (0, "k", Op::Write { value: 1 }, Outcome::Ok(OkValue::Done)),
            (0, "k", Op::Write { value: 2 }, Outcome::Ok(OkValue::Done)),
            (1, "k", Op::Read, Outcome::Ok(OkValue::Read(Some(1)))),
        ]);
        let scenario = crate::Scenario::preset("partitions")
            .expect("preset")
            .concretize();
        let report = RunReport {
            scenario,
            verdict: judge(&h, None, None),
            stats: ClientStats::default(),
            history: h,
            trace: "0.000s start\n".to_string(),
            simulated_s: 1.0,
            wall_s: 1.0,
        };
        let dir = std::env::temp_dir().join(format!("sim-report-test-{}", std::process::id()));
        let out = write_failure(&report, &dir).expect("write artifacts");
        let read = |name: &str| std::fs::read_to_string(out.join(name)).expect(name);
        assert!(read("explanation.txt").contains("cannot be placed"));
        assert!(read("explanation.txt").contains("--scenario-file"));
        assert!(read("timeline.html").contains("<html"));
        assert_eq!(
            History::from_jsonl(&read("history.jsonl"))
                .expect("jsonl")
                .len(),
            3
        );
        let replayed = crate::Scenario::from_file(&out.join("scenario.toml")).expect("scenario");
        assert_eq!(replayed, report.scenario);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
