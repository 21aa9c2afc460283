//! Import of Jepsen EDN histories (as written by Jepsen and read by Knossos).
//!
//! Accepts one EDN vector/list of op maps or one map per line; map keys in any order; extra keys
//! (`:time`, `:index`, `:error`, ...) ignored; `:process :nemesis` (any non-integer process)
//! ignored. Invocations and completions are paired per process, in file order, which is also the
//! real-time order (the importer stamps event i with `time_ns = i`). Values may be
//! `jepsen.independent` tuples `[key value]`: under `ImportModel::Kv` they are detected when every
//! invocation carries such a tuple (a cas then reads `[key [expected new]]`); otherwise all ops go
//! to the single key `REGISTER_KEY`. Semantics: `:fail` did not happen, `:info` unknown, an
//! invocation never completed is unknown.

use crate::edn::{self, Edn};
use crate::history::{History, HistoryError, OkValue, Op, OpId, Outcome};
use std::collections::HashMap;

/// The key of a history that has no independent keys.
pub const REGISTER_KEY: &str = "register";

/// How to read op values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportModel {
    /// Registers; independent `[key value]` tuples detected automatically.
    Kv,
    /// One register; values are never tuples.
    Register,
    /// Grow-only sets (`:add` element, `:read` returning a collection); tuples detected.
    Set,
}

fn malformed(line: usize, message: impl Into<String>) -> HistoryError {
    HistoryError::Malformed {
        line,
        message: message.into(),
    }
}

struct RawOp<'a> {
    line: usize,
    process: i64,
    kind: &'a str,
    f: &'a str,
    value: &'a Edn,
}

/// Parses a Jepsen EDN history.
pub fn parse_edn(text: &str, model: ImportModel) -> Result<History, HistoryError> {
    let items = edn::parse_items(text).map_err(|e| malformed(e.line, e.message))?;
    const NIL: Edn = Edn::Nil;
    let mut raw = Vec::with_capacity(items.len());
    for (line, item) in &items {
        let line = *line;
        if !matches!(item, Edn::Map(_)) {
            return Err(malformed(
                line,
                format!("expected an op map {{:process .. :type ..}}, found {item}"),
            ));
        }
        let process = match item.get("process") {
            Some(Edn::Int(p)) => *p,
            Some(_) => continue, // :nemesis and other non-client processes
            None => return Err(malformed(line, "expected a :process key")),
        };
        let kind = match item.get("type") {
            Some(Edn::Keyword(k)) if matches!(k.as_str(), "invoke" | "ok" | "fail" | "info") => k,
            other => {
                return Err(malformed(
                    line,
                    format!(
                        "expected :type :invoke|:ok|:fail|:info, found {}",
                        show(other)
                    ),
                ))
            }
        };
        let f = match item.get("f") {
            Some(Edn::Keyword(f)) => f.as_str(),
            other => {
                return Err(malformed(
                    line,
                    format!("expected :f as a keyword, found {}", show(other)),
                ))
            }
        };
        let value = item.get("value").unwrap_or(&NIL);
        raw.push(RawOp {
            line,
            process,
            kind,
            f,
            value,
        });
    }
    let independent = model != ImportModel::Register && detect_independent(&raw);
    build(&raw, model, independent)
}

fn show(value: Option<&Edn>) -> String {
    value.map_or_else(|| "nothing".to_string(), |v| v.to_string())
}

fn is_pair(value: &Edn) -> Option<(&Edn, &Edn)> {
    match value.as_seq() {
        Some([a, b]) if !matches!(value, Edn::Set(_)) => Some((a, b)),
        _ => None,
    }
}

fn detect_independent(raw: &[RawOp<'_>]) -> bool {
    let mut invokes = raw.iter().filter(|r| r.kind == "invoke").peekable();
    if invokes.peek().is_none() {
        return false;
    }
    invokes.all(|r| match is_pair(r.value) {
        Some((key, inner)) => {
            let scalar_key = matches!(
                key,
                Edn::Int(_) | Edn::Str(_) | Edn::Keyword(_) | Edn::Symbol(_)
            );
            scalar_key && (r.f != "cas" || is_pair(inner).is_some())
        }
        None => false,
    })
}

fn key_name(key: &Edn) -> String {
    match key {
        Edn::Str(s) => s.clone(),
        other => other.to_string(),
    }
}

fn int(value: &Edn, line: usize, what: &str) -> Result<i64, HistoryError> {
    match value {
        Edn::Int(i) => Ok(*i),
        other => Err(malformed(
            line,
            format!("expected {what} (an integer), found {other}"),
        )),
    }
}

fn op_of(f: &str, value: &Edn, model: ImportModel, line: usize) -> Result<Op, HistoryError> {
    Ok(match (model, f) {
        (ImportModel::Set, "add") => Op::Add {
            element: int(value, line, "the added element")?,
        },
        (ImportModel::Set, "read") => Op::ReadSet,
        (ImportModel::Set, other) => {
            return Err(malformed(
                line,
                format!("expected :f :add or :read for a set, found :{other}"),
            ))
        }
        (_, "read") => Op::Read,
        (_, "write") => Op::Write {
            value: int(value, line, "the written value")?,
        },
        (_, "cas") => {
            let (expected, new) = is_pair(value).ok_or_else(|| {
                malformed(
                    line,
                    format!("expected [expected new] for :cas, found {value}"),
                )
            })?;
            Op::Cas {
                expected: int(expected, line, "cas expected")?,
                new: int(new, line, "cas new")?,
            }
        }
        (_, "delete") => Op::Delete,
        (_, other) => {
            return Err(malformed(
                line,
                format!("expected :f :read, :write, :cas or :delete, found :{other}"),
            ))
        }
    })
}

fn ok_value(op: &Op, value: &Edn, line: usize) -> Result<OkValue, HistoryError> {
    Ok(match op {
        Op::Read => match value {
            Edn::Nil => OkValue::Read(None),
            other => OkValue::Read(Some(int(other, line, "the value read")?)),
        },
        Op::ReadSet => {
            let items = value.as_seq().ok_or_else(|| {
                malformed(
                    line,
                    format!("expected a collection of elements, found {value}"),
                )
            })?;
            let elements: Result<Vec<i64>, _> = items
                .iter()
                .map(|e| int(e, line, "a set element"))
                .collect();
            OkValue::Elements(elements?)
        }
        _ => OkValue::Done,
    })
}

fn build(
    raw: &[RawOp<'_>],
    model: ImportModel,
    independent: bool,
) -> Result<History, HistoryError> {
    let mut history = History::new();
    let mut pending: HashMap<i64, OpId> = HashMap::new();
    for (index, r) in raw.iter().enumerate() {
        let time_ns = index as u64;
        let (key, value) = if independent {
            let (key, value) = is_pair(r.value).ok_or_else(|| {
                malformed(
                    r.line,
                    format!(
                        "expected an independent [key value] tuple, found {}",
                        r.value
                    ),
                )
            })?;
            (key_name(key), value)
        } else {
            (REGISTER_KEY.to_string(), r.value)
        };
        if r.kind == "invoke" {
            if let Some(previous) = pending.get(&r.process) {
                return Err(malformed(
                    r.line,
                    format!(
                        "expected process {} to complete op {previous} before invoking again",
                        r.process
                    ),
                ));
            }
            let op = op_of(r.f, value, model, r.line)?;
            let id = history
                .invoke(time_ns, r.process as u64, key, op)
                .map_err(|e| malformed(r.line, e.to_string()))?;
            pending.insert(r.process, id);
            continue;
        }
        let id = pending.remove(&r.process).ok_or_else(|| {
            malformed(
                r.line,
                format!("expected an earlier :invoke by process {}", r.process),
            )
        })?;
        let op = history
            .op(id)
            .map(|o| o.op.clone())
            .ok_or(HistoryError::UnknownOp(id))?;
        let outcome = match r.kind {
            "ok" => Outcome::Ok(ok_value(&op, value, r.line)?),
            "fail" => Outcome::Fail,
            _ => Outcome::Info,
        };
        history
            .complete(time_ns, id, outcome)
            .map_err(|e| malformed(r.line, e.to_string()))?;
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_by_process_and_ignores_nemesis_and_extra_keys() {
        let text = "[{:process 1 :type :invoke :f :write :value 3 :time 5}\n\
                    {:process :nemesis :type :info :f :start :value nil}\n\
                    {:type :invoke, :process 2, :f :read, :value nil, :index 9}\n\
                    {:process 1 :type :ok :f :write :value 3}\n\
                    {:process 2 :type :ok :f :read :value 3 :error nil}\n\
                    {:process 3 :type :invoke :f :cas :value [3 4]}]";
        let h = parse_edn(text, ImportModel::Kv).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h.ops()[0].op, Op::Write { value: 3 });
        assert_eq!(h.ops()[1].outcome(), &Outcome::Ok(OkValue::Read(Some(3))));
        assert_eq!(
            h.ops()[2].op,
            Op::Cas {
                expected: 3,
                new: 4
            }
        );
        assert_eq!(h.ops()[2].outcome(), &Outcome::Info);
        assert_eq!(h.keys(), vec![REGISTER_KEY]);
    }

    #[test]
    fn independent_tuples_become_keys() {
        let text = "{:process 1 :type :invoke :f :cas :value [7 [1 2]]}\n\
                    {:process 1 :type :fail :f :cas :value [7 [1 2]]}\n\
                    {:process 2 :type :invoke :f :read :value [8 nil]}\n\
                    {:process 2 :type :ok :f :read :value [8 5]}\n";
        let h = parse_edn(text, ImportModel::Kv).unwrap();
        assert_eq!(h.keys(), vec!["7", "8"]);
        assert_eq!(h.ops()[1].outcome(), &Outcome::Ok(OkValue::Read(Some(5))));
        let err = parse_edn(text, ImportModel::Register).unwrap_err();
        assert!(
            matches!(err, HistoryError::Malformed { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn set_histories_and_errors() {
        let text = "{:process 0 :type :invoke :f :add :value 1}\n{:process 0 :type :ok :f :add :value 1}\n\
                    {:process 0 :type :invoke :f :read :value nil}\n{:process 0 :type :ok :f :read :value #{1 2}}";
        let h = parse_edn(text, ImportModel::Set).unwrap();
        assert_eq!(
            h.ops()[1].outcome(),
            &Outcome::Ok(OkValue::Elements(vec![1, 2]))
        );
        let err =
            parse_edn("{:process 0 :type :ok :f :read :value 1}", ImportModel::Kv).unwrap_err();
        assert!(
            err.to_string()
                .contains("line 1: expected an earlier :invoke"),
            "{err}"
        );
        let err = parse_edn(
            "{:process 0 :type :invoke :f :write :value \"x\"}",
            ImportModel::Kv,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("expected the written value (an integer)"),
            "{err}"
        );
    }
}
