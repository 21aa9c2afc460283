//! The set workload's check: a grow-only set per key (`add`, `read_set`).
//!
//! For every ok read: each element whose add was acknowledged before the read was invoked must
//! be present (else it is lost); each present element must come from an add that did not fail
//! and was invoked before the read completed (else it was never added, appeared before its add,
//! or comes from a failed add). Adds with unknown outcome may go either way. These are exactly
//! the conditions a linearizable grow-only set must meet for each read on its own.

use crate::history::{History, OkValue, Op, OpId, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "anomaly", rename_all = "snake_case")]
pub enum SetAnomaly {
    /// `add` was acknowledged before `read` was invoked, but `read` lacks the element.
    Lost {
        key: String,
        element: i64,
        add: OpId,
        read: OpId,
    },
    /// `read` returned an element no operation ever tried to add.
    NeverAdded {
        key: String,
        element: i64,
        read: OpId,
    },
    /// `read` returned an element whose only adds definitely failed.
    FailedAddObserved {
        key: String,
        element: i64,
        read: OpId,
    },
    /// `read` completed before any add of the element was invoked.
    VisibleBeforeAdd {
        key: String,
        element: i64,
        read: OpId,
    },
}

impl std::fmt::Display for SetAnomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetAnomaly::Lost { key, element, add, read } => write!(
                f,
                "key {key}: element {element} lost: add {add} was acknowledged before read {read} was invoked, which lacks it"
            ),
            SetAnomaly::NeverAdded { key, element, read } => {
                write!(f, "key {key}: read {read} returned {element}, which nothing tried to add")
            }
            SetAnomaly::FailedAddObserved { key, element, read } => {
                write!(f, "key {key}: read {read} returned {element}, whose adds all failed")
            }
            SetAnomaly::VisibleBeforeAdd { key, element, read } => write!(
                f,
                "key {key}: read {read} returned {element} before any add of it was invoked"
            ),
        }
    }
}

/// Counts over each key's last ok read, plus every anomaly found on any read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReport {
    pub keys: usize,
    pub reads_checked: usize,
    /// Over final reads: acknowledged adds, and adds with unknown outcome that are present.
    pub acknowledged_adds: usize,
    pub unknown_adds_present: usize,
    pub anomalies: Vec<SetAnomaly>,
}

impl SetReport {
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }
}

/// Most anomalies kept in a report (the rest are counted by the caller's reading of the
/// history; one is enough to fail).
pub const MAX_SET_ANOMALIES: usize = 1000;

struct AddInfo {
    id: OpId,
    invoke_seq: u64,
    ok_completion_seq: Option<u64>,
    failed: bool,
}

/// An ok set read: (op, invocation seq, completion seq, elements).
type ReadInfo<'a> = (OpId, u64, u64, &'a [i64]);

/// Checks every key that has set operations.
pub fn check_set(history: &History) -> SetReport {
    let mut adds: BTreeMap<&str, BTreeMap<i64, Vec<AddInfo>>> = BTreeMap::new();
    let mut reads: BTreeMap<&str, Vec<ReadInfo<'_>>> = BTreeMap::new();
    for r in history.ops() {
        match (&r.op, r.outcome(), &r.completion) {
            (Op::Add { element }, outcome, completion) => {
                adds.entry(&r.key)
                    .or_default()
                    .entry(*element)
                    .or_default()
                    .push(AddInfo {
                        id: r.id,
                        invoke_seq: r.invoke_seq,
                        ok_completion_seq: completion
                            .as_ref()
                            .filter(|_| matches!(outcome, Outcome::Ok(_)))
                            .map(|c| c.seq),
                        failed: matches!(outcome, Outcome::Fail),
                    });
            }
            (Op::ReadSet, Outcome::Ok(OkValue::Elements(elements)), Some(c)) => {
                reads
                    .entry(&r.key)
                    .or_default()
                    .push((r.id, r.invoke_seq, c.seq, elements));
            }
            _ => {}
        }
    }
    let mut report = SetReport::default();
    let no_adds = BTreeMap::new();
    let keys: BTreeSet<&str> = adds.keys().chain(reads.keys()).copied().collect();
    report.keys = keys.len();
    for key in keys {
        let key_adds = adds.get(key).unwrap_or(&no_adds);
        let key_reads = reads.get(key).map_or(&[][..], |v| v.as_slice());
        for &(read, invoked, completed, elements) in key_reads {
            report.reads_checked += 1;
            let present: BTreeSet<i64> = elements.iter().copied().collect();
            for (&element, infos) in key_adds {
                let acked_before = infos
                    .iter()
                    .find(|a| a.ok_completion_seq.is_some_and(|s| s < invoked));
                if let (Some(add), false) = (acked_before, present.contains(&element)) {
                    report.anomalies.push(SetAnomaly::Lost {
                        key: key.to_string(),
                        element,
                        add: add.id,
                        read,
                    });
                }
            }
            for &element in &present {
                let infos = key_adds.get(&element).map_or(&[][..], |v| v.as_slice());
                let anomaly = if infos.is_empty() {
                    Some(SetAnomaly::NeverAdded {
                        key: key.to_string(),
                        element,
                        read,
                    })
                } else if infos.iter().all(|a| a.failed) {
                    Some(SetAnomaly::FailedAddObserved {
                        key: key.to_string(),
                        element,
                        read,
                    })
                } else if !infos.iter().any(|a| !a.failed && a.invoke_seq < completed) {
                    Some(SetAnomaly::VisibleBeforeAdd {
                        key: key.to_string(),
                        element,
                        read,
                    })
                } else {
                    None
                };
                report.anomalies.extend(anomaly);
            }
            report.anomalies.truncate(MAX_SET_ANOMALIES);
        }
        if let Some(&(_, _, _, elements)) = key_reads.iter().max_by_key(|r| r.2) {
            let present: BTreeSet<i64> = elements.iter().copied().collect();
            for (element, infos) in key_adds {
                if infos.iter().any(|a| a.ok_completion_seq.is_some()) {
                    report.acknowledged_adds += 1;
                } else if present.contains(element) && infos.iter().any(|a| !a.failed) {
                    report.unknown_adds_present += 1;
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(h: &mut History, t: u64, element: i64, outcome: Outcome) -> OpId {
        let id = h.invoke(t, 1, "s", Op::Add { element }).unwrap();
        h.complete(t + 1, id, outcome).unwrap();
        id
    }

    fn read(h: &mut History, t: u64, elements: Vec<i64>) -> OpId {
        let id = h.invoke(t, 2, "s", Op::ReadSet).unwrap();
        h.complete(t + 1, id, Outcome::Ok(OkValue::Elements(elements)))
            .unwrap();
        id
    }

    #[test]
    fn acknowledged_and_unknown_adds() {
        let mut h = History::new();
        add(&mut h, 0, 1, Outcome::Ok(OkValue::Done));
        add(&mut h, 2, 2, Outcome::Info);
        add(&mut h, 4, 3, Outcome::Info);
        read(&mut h, 6, vec![1, 2]);
        let report = check_set(&h);
        assert!(report.is_valid(), "{report:?}");
        assert_eq!(
            (report.acknowledged_adds, report.unknown_adds_present),
            (1, 1)
        );
    }

    #[test]
    fn every_anomaly_is_reported() {
        let mut h = History::new();
        let a1 = add(&mut h, 0, 1, Outcome::Ok(OkValue::Done));
        add(&mut h, 2, 2, Outcome::Fail);
        let r = read(&mut h, 4, vec![2, 3, 4]);
        add(&mut h, 6, 4, Outcome::Ok(OkValue::Done));
        let report = check_set(&h);
        let key = "s".to_string();
        assert!(report.anomalies.contains(&SetAnomaly::Lost {
            key: key.clone(),
            element: 1,
            add: a1,
            read: r
        }));
        assert!(report.anomalies.contains(&SetAnomaly::FailedAddObserved {
            key: key.clone(),
            element: 2,
            read: r
        }));
        assert!(report.anomalies.contains(&SetAnomaly::NeverAdded {
            key: key.clone(),
            element: 3,
            read: r
        }));
        assert!(report.anomalies.contains(&SetAnomaly::VisibleBeforeAdd {
            key,
            element: 4,
            read: r
        }));
        assert_eq!(report.anomalies.len(), 4);
    }
}
