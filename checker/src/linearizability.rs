//! Linearizability of key-value histories: each key is an independent register
//! (P-compositionality: a history is linearizable iff each key's sub-history is), checked by
//! `search`. Keys run in parallel on rayon when `CheckOptions::parallel` is set, otherwise on
//! the calling thread only (the simulator calls the checker inside madsim, where starting OS
//! threads panics). The first violation found cancels the other keys. A key that exhausts the
//! budget yields `Verdict::Unknown`, never a guess; a definite violation on another key still
//! wins.

use crate::history::{History, OkValue, Op, OpId, OpRecord, Outcome};
use crate::search::{self, GaveUp, KeyOp, RegisterState, SearchControl, SearchResult, Step};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Resource limits for one check. Exceeding one gives `Verdict::Unknown`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Wall-clock limit for the whole check (`None`: unlimited). Under madsim this reads
    /// simulated time, which does not advance during a search: use `max_steps` there.
    pub time_limit: Option<Duration>,
    /// Limit on memoized configurations over all keys, in bytes.
    pub max_memory_bytes: usize,
    /// Limit on search steps per key (`None`: unlimited). Deterministic, unlike time.
    pub max_steps_per_key: Option<u64>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            time_limit: Some(Duration::from_secs(60)),
            max_memory_bytes: 1 << 30,
            max_steps_per_key: None,
        }
    }
}

/// Options of `check_kv`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    pub budget: Budget,
    /// Every register's value before the history (`None`: absent).
    pub initial_value: Option<i64>,
    /// Check keys on rayon's thread pool. Must be false inside madsim.
    pub parallel: bool,
}

impl Default for CheckOptions {
    /// Single-threaded (safe everywhere), 60 s, 1 GiB, registers initially absent.
    fn default() -> Self {
        CheckOptions {
            budget: Budget::default(),
            initial_value: None,
            parallel: false,
        }
    }
}

/// A key whose history has no linearization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Violation),
    /// The budget ran out before a verdict; `reason` says which limit and on which key.
    Unknown {
        reason: String,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// The register ops of one key in search form: fails and unknown reads are dropped (they
/// constrain nothing), unknown writes/cas/deletes become optional ops without a return.
pub fn compile_key(history: &History, key: &str) -> Vec<KeyOp> {
    compile_ops(history.ops().iter().filter(|r| r.key == key))
}

/// `compile_key` for records already selected by key.
fn compile_ops<'a>(records: impl Iterator<Item = &'a OpRecord>) -> Vec<KeyOp> {
    records
        .filter(|r| !r.op.is_set_op())
        .filter_map(|r| {
            let completion_seq = r.completion.as_ref().map(|c| c.seq);
            let required = |step| {
                Some(KeyOp {
                    id: r.id,
                    call: r.invoke_seq,
                    ret: completion_seq,
                    step,
                })
            };
            let unknown = |step| {
                Some(KeyOp {
                    id: r.id,
                    call: r.invoke_seq,
                    ret: None,
                    step,
                })
            };
            let effect = match r.op {
                Op::Write { value } => Step::Write(value),
                Op::Cas { expected, new } => Step::Cas { expected, new },
                Op::Delete => Step::Delete,
                Op::Read | Op::Add { .. } | Op::ReadSet => Step::Read(None),
            };
            match (r.outcome(), &r.op) {
                (Outcome::Fail, _) | (Outcome::Info, Op::Read) => None,
                (Outcome::Info, _) => unknown(effect),
                (Outcome::Ok(OkValue::Read(v)), Op::Read) => required(Step::Read(*v)),
                (Outcome::Ok(OkValue::CasMismatch), Op::Cas { expected, .. }) => {
                    required(Step::CasMismatch {
                        expected: *expected,
                    })
                }
                (Outcome::Ok(_), _) => required(effect),
            }
        })
        .collect()
}

/// Register keys of a history (keys with set ops are left to `check_set`).
pub fn register_keys(history: &History) -> Vec<String> {
    ops_by_register_key(history)
        .into_keys()
        .map(str::to_string)
        .collect()
}

/// The ops of each register key, in history order (keys with any set op are left out).
fn ops_by_register_key(history: &History) -> BTreeMap<&str, Vec<&OpRecord>> {
    let mut keys: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    let mut set_keys: Vec<&str> = Vec::new();
    for r in history.ops() {
        keys.entry(&r.key).or_default().push(r);
        if r.op.is_set_op() {
            set_keys.push(&r.key);
        }
    }
    for key in set_keys {
        keys.remove(key);
    }
    keys
}

/// Shared limits of one check.
pub(crate) struct CheckControl {
    deadline: Option<Instant>,
    max_steps: Option<u64>,
    max_memory_bytes: usize,
    memory_used_bytes: AtomicUsize,
    cancel: AtomicBool,
}

impl CheckControl {
    pub(crate) fn new(budget: &Budget) -> CheckControl {
        CheckControl {
            deadline: budget.time_limit.map(|limit| Instant::now() + limit),
            max_steps: budget.max_steps_per_key,
            max_memory_bytes: budget.max_memory_bytes,
            memory_used_bytes: AtomicUsize::new(0),
            cancel: AtomicBool::new(false),
        }
    }

    pub(crate) fn search(
        &self,
        ops: &[KeyOp],
        initial: RegisterState,
        focus: Option<OpId>,
    ) -> SearchResult {
        let control = SearchControl {
            deadline: self.deadline,
            max_steps: self.max_steps,
            max_memory_bytes: self.max_memory_bytes,
            memory_used_bytes: &self.memory_used_bytes,
            cancel: &self.cancel,
        };
        search::search(ops, initial, &control, focus)
    }

    pub(crate) fn out_of_time(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

fn gave_up_reason(reason: GaveUp, key: &str, budget: &Budget) -> String {
    match reason {
        GaveUp::Timeout => format!(
            "time limit of {:.1} s reached on key {key}",
            budget.time_limit.unwrap_or_default().as_secs_f64()
        ),
        GaveUp::MemoryLimit => format!(
            "memory limit of {} MiB reached on key {key}",
            budget.max_memory_bytes >> 20
        ),
        GaveUp::StepLimit => format!(
            "step limit of {} reached on key {key}",
            budget.max_steps_per_key.unwrap_or(0)
        ),
        GaveUp::Cancelled => format!("cancelled on key {key}"),
    }
}

/// Checks every register key of `history` for linearizability.
pub fn check_kv(history: &History, options: &CheckOptions) -> Verdict {
    let keys: Vec<(&str, Vec<&OpRecord>)> = ops_by_register_key(history).into_iter().collect();
    let control = CheckControl::new(&options.budget);
    let check_one = |(key, records): &(&str, Vec<&OpRecord>)| -> (String, SearchResult) {
        let ops = compile_ops(records.iter().copied());
        let result = control.search(&ops, options.initial_value, None);
        if matches!(result, SearchResult::Violation { .. }) {
            control.cancel.store(true, Ordering::Relaxed);
        }
        (key.to_string(), result)
    };
    let results: Vec<(String, SearchResult)> = if options.parallel {
        use rayon::prelude::*;
        keys.par_iter().map(check_one).collect()
    } else {
        let mut results = Vec::with_capacity(keys.len());
        for key in &keys {
            let result = check_one(key);
            let violated = matches!(result.1, SearchResult::Violation { .. });
            results.push(result);
            if violated {
                break;
            }
        }
        results
    };
    let mut unknown: Option<String> = None;
    for (key, result) in results {
        match result {
            SearchResult::Violation { .. } => return Verdict::NotLinearizable(Violation { key }),
            SearchResult::GaveUp(GaveUp::Cancelled) | SearchResult::Linearizable => {}
            SearchResult::GaveUp(reason) => {
                unknown.get_or_insert_with(|| gave_up_reason(reason, &key, &options.budget));
            }
        }
    }
    match unknown {
        Some(reason) => Verdict::Unknown { reason },
        None => Verdict::Linearizable,
    }
}
