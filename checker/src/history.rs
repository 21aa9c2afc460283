//! The history model: what clients asked for, when, and what they learned.
//!
//! A history is a sequence of events; each operation has one invocation event and at most one
//! completion event. Real-time order is the order of events: operation A precedes B when A's
//! completion event comes before B's invocation event. Timestamps (`time_ns`) are supplied by
//! the caller (the simulator passes simulated time) and must never go backwards; the checker
//! itself never reads a clock to build or order a history.
//!
//! Invariants kept by every constructor (`History::invoke`/`complete`, `from_jsonl`, the EDN
//! importer): op ids are dense indices into `ops`, event sequence numbers are strictly
//! increasing, `time_ns` is non-decreasing along the event sequence, and a completion's outcome
//! matches its operation's function (a read's ok carries a value, a write's does not).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Index of an operation in its history (dense, starting at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub u32);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a client asked for. Register values and set elements are `i64`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Read a register; the ok outcome carries the value (`None`: absent).
    Read,
    /// Overwrite a register.
    Write { value: i64 },
    /// Compare-and-set: if the register holds `expected`, set it to `new`.
    Cas { expected: i64, new: i64 },
    /// Remove the register's value (it becomes absent).
    Delete,
    /// Add an element to a grow-only set.
    Add { element: i64 },
    /// Read the whole set; the ok outcome carries its elements.
    ReadSet,
}

impl Op {
    /// The function name as written in JSONL and EDN (`read`, `write`, `cas`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write { .. } => "write",
            Op::Cas { .. } => "cas",
            Op::Delete => "delete",
            Op::Add { .. } => "add",
            Op::ReadSet => "read_set",
        }
    }

    /// True for the set workload's operations.
    pub fn is_set_op(&self) -> bool {
        matches!(self, Op::Add { .. } | Op::ReadSet)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read => write!(f, "read"),
            Op::Write { value } => write!(f, "write {value}"),
            Op::Cas { expected, new } => write!(f, "cas {expected}->{new}"),
            Op::Delete => write!(f, "delete"),
            Op::Add { element } => write!(f, "add {element}"),
            Op::ReadSet => write!(f, "read set"),
        }
    }
}

/// What the client learned when the operation completed successfully.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OkValue {
    /// Write, delete, add, or a cas that took effect.
    Done,
    /// A register read: the value, or `None` when absent.
    Read(Option<i64>),
    /// A cas that definitely did not take effect because the register did not hold `expected`
    /// at its linearization point (a stronger statement than `Outcome::Fail`).
    CasMismatch,
    /// A set read: the elements.
    Elements(Vec<i64>),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It took effect once, between invocation and completion, and returned this.
    Ok(OkValue),
    /// It definitely did not take effect.
    Fail,
    /// Unknown: it may have taken effect at any time after its invocation, or never
    /// (crashed or timed-out requests). An op that never completes is treated the same way.
    Info,
}

/// A completion: when and how an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub time_ns: u64,
    /// Position of the completion event in the history's event sequence.
    pub seq: u64,
    pub outcome: Outcome,
}

/// One operation with its invocation and (optional) completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub id: OpId,
    /// The client/process that issued it (for display; it does not affect the verdict).
    pub process: u64,
    pub key: String,
    pub op: Op,
    pub invoke_ns: u64,
    /// Position of the invocation event in the history's event sequence.
    pub invoke_seq: u64,
    /// `None` while pending; a history checked with pending ops treats them as `Info`.
    pub completion: Option<Completion>,
}

impl OpRecord {
    /// The outcome, with a missing completion read as `Info`.
    pub fn outcome(&self) -> &Outcome {
        const INFO: Outcome = Outcome::Info;
        self.completion.as_ref().map_or(&INFO, |c| &c.outcome)
    }
}

/// Errors when building a history or reading one from a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("time went backwards: {time_ns} ns after an event at {last_ns} ns")]
    TimeWentBackwards { time_ns: u64, last_ns: u64 },
    #[error("unknown operation {0}")]
    UnknownOp(OpId),
    #[error("operation {0} is already completed")]
    AlreadyCompleted(OpId),
    #[error("operation {id} ({op}): outcome {outcome} does not fit the function")]
    OutcomeMismatch {
        id: OpId,
        op: String,
        outcome: String,
    },
    #[error("too many operations (limit {limit})")]
    TooManyOps { limit: usize },
    #[error("line {line}: {message}")]
    Malformed { line: usize, message: String },
}

/// Upper bound on operations in one history: op ids are `u32`.
pub const MAX_OPS: usize = u32::MAX as usize;

/// A recorded history. Build it live with `invoke`/`complete`, or read one with `from_jsonl`
/// (native) or `crate::jepsen::parse_edn` (Jepsen).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HistoryRepr")]
pub struct History {
    ops: Vec<OpRecord>,
    next_seq: u64,
    last_ns: u64,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// All operations, indexed by `OpId`.
    pub fn ops(&self) -> &[OpRecord] {
        &self.ops
    }

    pub fn op(&self, id: OpId) -> Option<&OpRecord> {
        self.ops.get(id.0 as usize)
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The time of the latest event (0 for an empty history).
    pub fn last_time_ns(&self) -> u64 {
        self.last_ns
    }

    fn stamp(&mut self, time_ns: u64) -> Result<u64, HistoryError> {
        if time_ns < self.last_ns {
            return Err(HistoryError::TimeWentBackwards {
                time_ns,
                last_ns: self.last_ns,
            });
        }
        self.last_ns = time_ns;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Records an invocation at `time_ns` (non-decreasing across all events of this history).
    pub fn invoke(
        &mut self,
        time_ns: u64,
        process: u64,
        key: impl Into<String>,
        op: Op,
    ) -> Result<OpId, HistoryError> {
        if self.ops.len() >= MAX_OPS {
            return Err(HistoryError::TooManyOps { limit: MAX_OPS });
        }
        let seq = self.stamp(time_ns)?;
        let id = OpId(self.ops.len() as u32);
        self.ops.push(OpRecord {
            id,
            process,
            key: key.into(),
            op,
            invoke_ns: time_ns,
            invoke_seq: seq,
            completion: None,
        });
        Ok(id)
    }

    /// Records the completion of `id` at `time_ns`.
    pub fn complete(
        &mut self,
        time_ns: u64,
        id: OpId,
        outcome: Outcome,
    ) -> Result<(), HistoryError> {
        let record = self
            .ops
            .get(id.0 as usize)
            .ok_or(HistoryError::UnknownOp(id))?;
        if record.completion.is_some() {
            return Err(HistoryError::AlreadyCompleted(id));
        }
        if !outcome_fits(&record.op, &outcome) {
            return Err(HistoryError::OutcomeMismatch {
                id,
                op: record.op.to_string(),
                outcome: format!("{outcome:?}"),
            });
        }
        let seq = self.stamp(time_ns)?;
        let record = &mut self.ops[id.0 as usize];
        record.completion = Some(Completion {
            time_ns,
            seq,
            outcome,
        });
        Ok(())
    }

    /// Distinct keys in sorted order.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.ops.iter().map(|o| o.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The events in order: `(op id, is_completion)`.
    pub fn events(&self) -> Vec<(OpId, bool)> {
        let mut events: Vec<(u64, OpId, bool)> = Vec::with_capacity(self.ops.len() * 2);
        for record in &self.ops {
            events.push((record.invoke_seq, record.id, false));
            if let Some(c) = &record.completion {
                events.push((c.seq, record.id, true));
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        events.into_iter().map(|(_, id, done)| (id, done)).collect()
    }

    /// Serializes to the native JSON Lines format (one event per line; see README.md).
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for (id, done) in self.events() {
            let record = &self.ops[id.0 as usize];
            let line = if done {
                let Some(c) = &record.completion else {
                    continue;
                };
                completion_line(record, c)
            } else {
                invocation_line(record)
            };
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }

    /// Parses the native JSON Lines format. Blank lines and lines starting with `#` are skipped.
    pub fn from_jsonl(text: &str) -> Result<History, HistoryError> {
        let mut history = History::new();
        let mut ids: std::collections::HashMap<u64, OpId> = std::collections::HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let malformed = |message: String| HistoryError::Malformed { line, message };
            let event: JsonEvent = serde_json::from_str(trimmed).map_err(|e| {
                malformed(format!(
                    "expected a JSON object {{\"type\":\"invoke\"|\"ok\"|\"fail\"|\"info\", \"id\", \"time_ns\", ...}}: {e}"
                ))
            })?;
            if event.kind == "invoke" {
                if ids.contains_key(&event.id) {
                    return Err(malformed(format!("id {} is invoked twice", event.id)));
                }
                let op = json_op(&event).map_err(malformed)?;
                let key = event
                    .key
                    .clone()
                    .ok_or_else(|| malformed("expected a \"key\" on an invoke event".into()))?;
                let process = event.process.unwrap_or(0);
                let id = history
                    .invoke(event.time_ns, process, key, op)
                    .map_err(|e| malformed(e.to_string()))?;
                ids.insert(event.id, id);
            } else {
                let id = *ids.get(&event.id).ok_or_else(|| {
                    malformed(format!("expected an earlier invoke with id {}", event.id))
                })?;
                let op = history.ops[id.0 as usize].op.clone();
                let outcome = json_outcome(&event, &op).map_err(malformed)?;
                history
                    .complete(event.time_ns, id, outcome)
                    .map_err(|e| malformed(e.to_string()))?;
            }
        }
        Ok(history)
    }

    /// Keeps only the operations for which `keep` is true (ids are renumbered; event order and
    /// times are preserved). Used by explanations to build sub-histories.
    pub fn filtered(&self, mut keep: impl FnMut(&OpRecord) -> bool) -> History {
        let mut out = History {
            ops: Vec::new(),
            next_seq: self.next_seq,
            last_ns: self.last_ns,
        };
        for record in &self.ops {
            if keep(record) {
                let mut copy = record.clone();
                copy.id = OpId(out.ops.len() as u32);
                out.ops.push(copy);
            }
        }
        out
    }
}

/// The serialized shape of a `History`, validated on the way in.
#[derive(Deserialize)]
struct HistoryRepr {
    ops: Vec<OpRecord>,
    next_seq: u64,
    last_ns: u64,
}

impl TryFrom<HistoryRepr> for History {
    type Error = HistoryError;

    fn try_from(repr: HistoryRepr) -> Result<History, HistoryError> {
        let mut seqs = Vec::with_capacity(repr.ops.len() * 2);
        for (index, record) in repr.ops.iter().enumerate() {
            let bad = |message: String| HistoryError::Malformed {
                line: index + 1,
                message,
            };
            if record.id.0 as usize != index {
                return Err(bad(format!("expected op id {index}, found {}", record.id)));
            }
            seqs.push((record.invoke_seq, record.invoke_ns));
            if let Some(c) = &record.completion {
                if c.seq <= record.invoke_seq || !outcome_fits(&record.op, &c.outcome) {
                    return Err(bad(
                        "expected a completion after the invocation, fitting the op".into(),
                    ));
                }
                seqs.push((c.seq, c.time_ns));
            }
        }
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if pair[0].0 == pair[1].0 || pair[0].1 > pair[1].1 {
                return Err(HistoryError::Malformed {
                    line: 0,
                    message: "expected unique event sequence numbers with non-decreasing times"
                        .into(),
                });
            }
        }
        let (max_seq, max_ns) = seqs.last().copied().unwrap_or((0, 0));
        if !seqs.is_empty() && (repr.next_seq <= max_seq || repr.last_ns < max_ns) {
            return Err(HistoryError::Malformed {
                line: 0,
                message: "expected next_seq/last_ns past every event".into(),
            });
        }
        Ok(History {
            ops: repr.ops,
            next_seq: repr.next_seq,
            last_ns: repr.last_ns,
        })
    }
}

/// Whether `outcome` is a possible completion of `op`.
pub fn outcome_fits(op: &Op, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Fail | Outcome::Info => true,
        Outcome::Ok(value) => matches!(
            (op, value),
            (Op::Read, OkValue::Read(_))
                | (Op::Write { .. }, OkValue::Done)
                | (Op::Delete, OkValue::Done)
                | (Op::Cas { .. }, OkValue::Done)
                | (Op::Cas { .. }, OkValue::CasMismatch)
                | (Op::Add { .. }, OkValue::Done)
                | (Op::ReadSet, OkValue::Elements(_))
        ),
    }
}

/// One JSONL line. `value` depends on `f` (invoke) or on the op (ok completion).
#[derive(Deserialize)]
struct JsonEvent {
    #[serde(rename = "type")]
    kind: String,
    id: u64,
    time_ns: u64,
    #[serde(default)]
    process: Option<u64>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    f: Option<String>,
    #[serde(default)]
    value: serde_json::Value,
}

fn json_i64(value: &serde_json::Value, what: &str) -> Result<i64, String> {
    value
        .as_i64()
        .ok_or_else(|| format!("expected {what} (an integer), found {value}"))
}

fn json_op(event: &JsonEvent) -> Result<Op, String> {
    let f = event
        .f
        .as_deref()
        .ok_or("expected \"f\" on an invoke event")?;
    let v = &event.value;
    Ok(match f {
        "read" => Op::Read,
        "write" => Op::Write {
            value: json_i64(v, "the written value")?,
        },
        "cas" => {
            let pair = v.as_array().filter(|a| a.len() == 2);
            let pair =
                pair.ok_or_else(|| format!("expected [expected, new] for cas, found {v}"))?;
            Op::Cas {
                expected: json_i64(&pair[0], "cas expected value")?,
                new: json_i64(&pair[1], "cas new value")?,
            }
        }
        "delete" => Op::Delete,
        "add" => Op::Add {
            element: json_i64(v, "the added element")?,
        },
        "read_set" => Op::ReadSet,
        other => {
            return Err(format!(
                "expected f to be read|write|cas|delete|add|read_set, found {other:?}"
            ))
        }
    })
}

fn json_outcome(event: &JsonEvent, op: &Op) -> Result<Outcome, String> {
    let v = &event.value;
    match event.kind.as_str() {
        "fail" => Ok(Outcome::Fail),
        "info" => Ok(Outcome::Info),
        "ok" => Ok(Outcome::Ok(match op {
            Op::Read if v.is_null() => OkValue::Read(None),
            Op::Read => OkValue::Read(Some(json_i64(v, "the value read")?)),
            Op::Cas { .. } if v == &serde_json::Value::Bool(false) => OkValue::CasMismatch,
            Op::ReadSet => {
                let items = v
                    .as_array()
                    .ok_or_else(|| format!("expected an array, found {v}"))?;
                let elements: Result<Vec<i64>, String> =
                    items.iter().map(|x| json_i64(x, "a set element")).collect();
                OkValue::Elements(elements?)
            }
            _ => OkValue::Done,
        })),
        other => Err(format!(
            "expected type invoke|ok|fail|info, found {other:?}"
        )),
    }
}

fn invocation_line(record: &OpRecord) -> serde_json::Value {
    let value = match &record.op {
        Op::Write { value } => serde_json::json!(value),
        Op::Cas { expected, new } => serde_json::json!([expected, new]),
        Op::Add { element } => serde_json::json!(element),
        Op::Read | Op::Delete | Op::ReadSet => serde_json::Value::Null,
    };
    let mut line = serde_json::json!({
        "type": "invoke",
        "id": record.id.0,
        "time_ns": record.invoke_ns,
        "process": record.process,
        "key": record.key,
        "f": record.op.name(),
    });
    if !value.is_null() {
        line["value"] = value;
    }
    line
}

fn completion_line(record: &OpRecord, c: &Completion) -> serde_json::Value {
    let (kind, value) = match &c.outcome {
        Outcome::Fail => ("fail", None),
        Outcome::Info => ("info", None),
        Outcome::Ok(OkValue::Done) => ("ok", None),
        Outcome::Ok(OkValue::Read(v)) => ("ok", Some(serde_json::json!(v))),
        Outcome::Ok(OkValue::CasMismatch) => ("ok", Some(serde_json::json!(false))),
        Outcome::Ok(OkValue::Elements(e)) => ("ok", Some(serde_json::json!(e))),
    };
    let mut line = serde_json::json!({
        "type": kind,
        "id": record.id.0,
        "time_ns": c.time_ns,
        "process": record.process,
    });
    if let Some(value) = value {
        line["value"] = value;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trip_keeps_every_event() {
        let mut h = History::new();
        let a = h.invoke(1, 1, "x", Op::Write { value: 5 }).unwrap();
        let b = h.invoke(2, 2, "x", Op::Read).unwrap();
        let c = h
            .invoke(
                3,
                3,
                "x",
                Op::Cas {
                    expected: 5,
                    new: 6,
                },
            )
            .unwrap();
        let s = h.invoke(3, 3, "s", Op::ReadSet).unwrap();
        h.complete(4, a, Outcome::Ok(OkValue::Done)).unwrap();
        h.complete(5, b, Outcome::Ok(OkValue::Read(None))).unwrap();
        h.complete(6, c, Outcome::Ok(OkValue::CasMismatch)).unwrap();
        h.complete(7, s, Outcome::Ok(OkValue::Elements(vec![1, 2])))
            .unwrap();
        h.invoke(8, 4, "y", Op::Delete).unwrap();
        let text = h.to_jsonl();
        assert_eq!(text.lines().count(), 9);
        let back = History::from_jsonl(&text).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn serde_round_trip_validates_invariants() {
        let mut h = History::new();
        let a = h.invoke(1, 1, "x", Op::Write { value: 5 }).unwrap();
        h.complete(2, a, Outcome::Ok(OkValue::Done)).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), h);
        let bad = json.replace("\"id\":0", "\"id\":3");
        assert!(serde_json::from_str::<History>(&bad).is_err());
        let backwards = json.replace("\"time_ns\":2", "\"time_ns\":0");
        assert!(serde_json::from_str::<History>(&backwards).is_err());
    }

    #[test]
    fn builder_rejects_backwards_time_and_wrong_outcomes() {
        let mut h = History::new();
        let a = h.invoke(10, 1, "x", Op::Write { value: 5 }).unwrap();
        assert!(matches!(
            h.invoke(9, 1, "x", Op::Read),
            Err(HistoryError::TimeWentBackwards { .. })
        ));
        assert!(matches!(
            h.complete(11, a, Outcome::Ok(OkValue::Read(Some(1)))),
            Err(HistoryError::OutcomeMismatch { .. })
        ));
        h.complete(11, a, Outcome::Ok(OkValue::Done)).unwrap();
        assert_eq!(
            h.complete(12, a, Outcome::Fail),
            Err(HistoryError::AlreadyCompleted(a))
        );
        assert_eq!(
            h.complete(12, OpId(7), Outcome::Fail),
            Err(HistoryError::UnknownOp(OpId(7)))
        );
    }

    #[test]
    fn malformed_jsonl_names_the_line_and_the_expectation() {
        let text = "{\"type\":\"invoke\",\"id\":1,\"time_ns\":1,\"key\":\"x\",\"f\":\"write\",\"value\":1}\n\
                    {\"type\":\"ok\",\"id\":2,\"time_ns\":2}\n";
        let err = History::from_jsonl(text).unwrap_err();
        assert!(
            matches!(&err, HistoryError::Malformed { line: 2, message } if message.contains("expected an earlier invoke")),
            "{err}"
        );
        let err = History::from_jsonl(
            "{\"type\":\"invoke\",\"id\":1,\"time_ns\":1,\"key\":\"x\",\"f\":\"cas\",\"value\":3}",
        )
        .unwrap_err();
        assert!(
            matches!(&err, HistoryError::Malformed { line: 1, message } if message.contains("[expected, new]")),
            "{err}"
        );
        let err = History::from_jsonl("not json").unwrap_err();
        assert!(
            matches!(&err, HistoryError::Malformed { line: 1, .. }),
            "{err}"
        );
    }
}
