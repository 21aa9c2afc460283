//! Operations as workloads describe them, and their results.
//!
//! An `Op` is what a generator asks for; `execute` performs it on any `KvStore`. Keeping the op
//! as data (not a closure) lets the recorder log the invocation before the request is sent, which
//! is what makes the recorded invocation time a sound lower bound.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::store::{KvStore, StoreError, Value};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Read {
        key: String,
    },
    Write {
        key: String,
        value: Value,
    },
    Cas {
        key: String,
        expected: Value,
        new: Value,
    },
    Delete {
        key: String,
    },
    SetAdd {
        set: String,
        element: Value,
    },
    SetRead {
        set: String,
    },
}

impl Op {
    /// The key (or set name) the operation touches; the checker checks keys independently.
    pub fn key(&self) -> &str {
        match self {
            Op::Read { key } | Op::Write { key, .. } | Op::Cas { key, .. } | Op::Delete { key } => {
                key
            }
            Op::SetAdd { set, .. } | Op::SetRead { set } => set,
        }
    }

    /// Reads change nothing, so a read whose outcome is unknown can be recorded as failed.
    pub fn is_read(&self) -> bool {
        matches!(self, Op::Read { .. } | Op::SetRead { .. })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read { key } => write!(f, "read {key}"),
            Op::Write { key, value } => write!(f, "write {key} {value}"),
            Op::Cas { key, expected, new } => write!(f, "cas {key} {expected}->{new}"),
            Op::Delete { key } => write!(f, "delete {key}"),
            Op::SetAdd { set, element } => write!(f, "add {set} {element}"),
            Op::SetRead { set } => write!(f, "read-set {set}"),
        }
    }
}

/// What a completed (ok) operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Read(Option<Value>),
    Written,
    /// true: swapped; false: the current value differed and nothing was written.
    Cas(bool),
    Deleted,
    Added,
    SetRead(BTreeSet<Value>),
}

/// Performs `op` on `store`.
pub async fn execute<S: KvStore>(store: &S, op: &Op) -> Result<OpResult, StoreError> {
    Ok(match op {
        Op::Read { key } => OpResult::Read(store.get(key).await?),
        Op::Write { key, value } => {
            store.put(key, *value).await?;
            OpResult::Written
        }
        Op::Cas { key, expected, new } => OpResult::Cas(store.cas(key, *expected, *new).await?),
        Op::Delete { key } => {
            store.delete(key).await?;
            OpResult::Deleted
        }
        Op::SetAdd { set, element } => {
            store.set_add(set, *element).await?;
            OpResult::Added
        }
        Op::SetRead { set } => OpResult::SetRead(store.set_read(set).await?),
    })
}
