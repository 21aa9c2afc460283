//! The final-state check, run after the faults are healed: every replica holds the same
//! key-value state, and that state is one the history allows, i.e. the history followed by a
//! read of every key returning the agreed value is still linearizable (so no acknowledged write
//! was lost and nothing unwritten appeared).

use crate::history::{History, OkValue, Op, Outcome};
use crate::linearizability::{check_kv, register_keys, CheckOptions, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One replica's final registers: key -> value (a missing key is absent).
pub type ReplicaState = BTreeMap<String, i64>;

/// Process id used for the synthetic final reads.
pub const FINAL_READ_PROCESS: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FinalStateVerdict {
    Ok,
    /// Replicas disagree on `key`: each replica's value (`None`: absent).
    Diverged {
        key: String,
        values: Vec<(String, Option<i64>)>,
    },
    /// The agreed state is not reachable by the history (e.g. a lost acknowledged write).
    Inconsistent {
        key: String,
    },
    Unknown {
        reason: String,
    },
}

/// Checks `replicas` (name, state) against each other and against `history`.
pub fn check_final_state(
    history: &History,
    replicas: &[(String, ReplicaState)],
    options: &CheckOptions,
) -> FinalStateVerdict {
    let Some((_, first)) = replicas.first() else {
        return FinalStateVerdict::Unknown {
            reason: "no replica states given".into(),
        };
    };
    let keys: BTreeSet<&String> = replicas.iter().flat_map(|(_, s)| s.keys()).collect();
    for key in &keys {
        let values: Vec<(String, Option<i64>)> = replicas
            .iter()
            .map(|(n, s)| (n.clone(), s.get(*key).copied()))
            .collect();
        if values.iter().any(|(_, v)| *v != values[0].1) {
            return FinalStateVerdict::Diverged {
                key: (*key).clone(),
                values,
            };
        }
    }
    let mut extended = history.clone();
    let time_ns = history.last_time_ns();
    let mut all_keys: BTreeSet<String> = register_keys(history).into_iter().collect();
    all_keys.extend(keys.iter().map(|k| (*k).clone()));
    let mut reads = Vec::with_capacity(all_keys.len());
    for key in &all_keys {
        match extended.invoke(time_ns, FINAL_READ_PROCESS, key.clone(), Op::Read) {
            Ok(id) => reads.push((id, first.get(key).copied())),
            Err(e) => {
                return FinalStateVerdict::Unknown {
                    reason: e.to_string(),
                }
            }
        }
    }
    for (id, value) in reads {
        if let Err(e) = extended.complete(time_ns, id, Outcome::Ok(OkValue::Read(value))) {
            return FinalStateVerdict::Unknown {
                reason: e.to_string(),
            };
        }
    }
    match check_kv(&extended, options) {
        Verdict::Linearizable => FinalStateVerdict::Ok,
        Verdict::NotLinearizable(v) => FinalStateVerdict::Inconsistent { key: v.key },
        Verdict::Unknown { reason } => FinalStateVerdict::Unknown { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        let mut h = History::new();
        let w = h.invoke(0, 1, "x", Op::Write { value: 1 }).unwrap();
        h.complete(1, w, Outcome::Ok(OkValue::Done)).unwrap();
        let w = h.invoke(2, 1, "x", Op::Write { value: 2 }).unwrap();
        h.complete(3, w, Outcome::Ok(OkValue::Done)).unwrap();
        let w = h.invoke(4, 2, "y", Op::Write { value: 7 }).unwrap();
        h.complete(5, w, Outcome::Info).unwrap();
        h
    }

    fn state(pairs: &[(&str, i64)]) -> ReplicaState {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn agreed_state_with_latest_writes_passes() {
        let opts = CheckOptions::default();
        let replicas = vec![
            ("a".to_string(), state(&[("x", 2)])),
            ("b".to_string(), state(&[("x", 2)])),
        ];
        assert_eq!(
            check_final_state(&history(), &replicas, &opts),
            FinalStateVerdict::Ok
        );
        let replicas = vec![("a".to_string(), state(&[("x", 2), ("y", 7)]))];
        assert_eq!(
            check_final_state(&history(), &replicas, &opts),
            FinalStateVerdict::Ok
        );
    }

    #[test]
    fn divergence_and_lost_writes_fail() {
        let opts = CheckOptions::default();
        let replicas = vec![
            ("a".to_string(), state(&[("x", 2)])),
            ("b".to_string(), state(&[("x", 1)])),
        ];
        assert!(
            matches!(check_final_state(&history(), &replicas, &opts), FinalStateVerdict::Diverged { key, .. } if key == "x")
        );
        let replicas = vec![("a".to_string(), state(&[("x", 1)]))];
        assert_eq!(
            check_final_state(&history(), &replicas, &opts),
            FinalStateVerdict::Inconsistent { key: "x".into() }
        );
        let replicas = vec![("a".to_string(), state(&[]))];
        assert_eq!(
            check_final_state(&history(), &replicas, &opts),
            FinalStateVerdict::Inconsistent { key: "x".into() }
        );
    }
}
