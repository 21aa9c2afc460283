//! The client-facing vocabulary of the KV state machine: operations, the command that travels
//! through the Raft log, and the results handed back to clients.
//!
//! These types are shared with the client protocol, so they are plain serializable data. A
//! `Command` is the only thing the state machine ever decodes from the log; its decoding is
//! bounded by `MAX_COMMAND_BYTES` so that a corrupt or hostile payload cannot make us allocate
//! without limit.

use serde::{Deserialize, Serialize};

use super::KvError;

/// Log index of a key's last write (like etcd's `mod_revision`).
pub type Version = u64;

/// Upper bound on an encoded `Command`, in bytes: the largest key and value the default limits
/// allow plus framing. Decoding refuses anything longer.
pub const MAX_COMMAND_BYTES: usize = 4096 + (1 << 20) + 1024;

/// What a client asks for. `Get` and `Scan` are reads: they are served from the state machine
/// after a ReadIndex round and never go through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Writes `new_value` only if the key's current state matches `expected`.
    CompareAndSwap {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        expected: Expected,
        #[serde(with = "serde_bytes")]
        new_value: Vec<u8>,
    },
    /// Writes `value` only if the key is absent.
    PutIfAbsent {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Keys in `range`, in ascending byte order, at most `limit` of them.
    Scan { range: KeyRange, limit: u32 },
    /// Opens the exactly-once session of `Command::client_id` (Raft dissertation §6.3,
    /// RegisterClient). The state machine starts a session at any seq-1 command; `node::client`
    /// always makes seq 1 an `OpenSession`, so no real operation is ever the one that creates
    /// a session: after an expiry, a retried real operation (seq > 1) meets `SessionExpired`
    /// instead of silently starting a fresh session and being applied twice.
    OpenSession,
    /// Redis SET: writes `value` when `condition` holds; `return_previous` asks for the value
    /// before (SET ... GET, GETSET). Answered by `OpResult::Set`.
    Set {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        condition: SetCondition,
        return_previous: bool,
    },
    /// Redis APPEND: the key's value (absent: empty) followed by `suffix`. Answered by
    /// `OpResult::Appended` with the new length.
    Append {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        suffix: Vec<u8>,
    },
    /// Redis INCRBY/DECRBY: adds `delta` to the key's value read as a decimal i64 (absent: 0)
    /// and stores the sum in decimal. Answered by `OpResult::Counter` or `OpResult::NotAnInteger`.
    Increment {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
    /// Redis MSET (`only_if_all_absent: false`) and MSETNX (`true`): writes every pair at one
    /// log index, all or nothing. Every key must be in one shard (the server refuses others).
    PutMany {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        only_if_all_absent: bool,
    },
}

/// When a `Set` writes (Redis SET's NX/XX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    Always,
    /// NX: only when the key is absent.
    IfAbsent,
    /// XX: only when the key exists.
    IfPresent,
}

impl Operation {
    /// True for operations that never change state (served by ReadIndex, not the log).
    pub fn is_read(&self) -> bool {
        matches!(self, Operation::Get { .. } | Operation::Scan { .. })
    }

    /// The one key the operation touches (None: scans and session opening, which name a shard).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Operation::Get { key }
            | Operation::Put { key, .. }
            | Operation::Delete { key }
            | Operation::CompareAndSwap { key, .. }
            | Operation::PutIfAbsent { key, .. }
            | Operation::Set { key, .. }
            | Operation::Append { key, .. }
            | Operation::Increment { key, .. } => Some(key),
            Operation::PutMany { pairs, .. } => pairs.first().map(|(key, _)| key.as_slice()),
            Operation::Scan { .. } | Operation::OpenSession => None,
        }
    }

    /// Every key the operation touches (the server checks that all are in the shard asked).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Operation::PutMany { pairs, .. } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
            other => other.key().into_iter().collect(),
        }
    }
}

/// The condition of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key must exist with exactly this version.
    Version(Version),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// `[start, end)`; `end: None` means unbounded.
    Between {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// Every key that starts with these bytes.
    Prefix(Vec<u8>),
}

/// The payload of a Raft log entry: one client operation inside an exactly-once session.
/// A session starts at `seq` 1 (the client library sends `Operation::OpenSession` there); `seq` grows by at least 1 per new
/// operation; a retry reuses the seq of the operation it retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client_id: u64,
    pub seq: u64,
    pub op: Operation,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: Version,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanItem {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: Version,
}

/// The outcome of one operation, as returned to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// `Get`: the current value and version, or `None` when the key is absent.
    Value(Option<Versioned>),
    /// `Put`, or a successful `CompareAndSwap`/`PutIfAbsent`: the key's new version.
    Written { version: Version },
    /// `Delete`: what was there before (`None`: the key was already absent).
    Deleted { previous: Option<Versioned> },
    /// A `CompareAndSwap` or `PutIfAbsent` whose condition did not hold: nothing was written;
    /// `current` is the key's state it was compared against.
    ConditionFailed { current: Option<Versioned> },
    /// `Scan`: the items in key order; `more` is true when the limit cut the result short.
    Scan { items: Vec<ScanItem>, more: bool },
    /// The session already applied a later seq (`last_seq`): this older request is not applied
    /// and its original response is no longer kept.
    Stale { last_seq: u64 },
    /// `OpenSession`: the session is open.
    SessionOpened,
    /// The session for this client id is unknown (expired, or never opened with seq 1): the
    /// request was not applied. The client must start a new session (new client id); the
    /// outcome of its earlier unacknowledged request is unknown.
    SessionExpired,
    /// The operation breaks a limit; nothing was applied.
    Invalid(InvalidOp),
    /// `Set`: whether it wrote (the condition held), the new version if so, and the value
    /// before when `return_previous` asked for it (else `None`).
    Set {
        written: bool,
        version: Option<Version>,
        previous: Option<Versioned>,
    },
    /// `Append`: the value's length after the append, and its new version.
    Appended { len_bytes: u64, version: Version },
    /// `Increment`: the value after the increment, and its new version.
    Counter { value: i64, version: Version },
    /// `Increment` on a value that is not a decimal i64, or whose sum overflows: nothing was
    /// written.
    NotAnInteger { overflow: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum InvalidOp {
    #[error("key of {len_bytes} bytes exceeds max_key_bytes {max_bytes}")]
    KeyTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("value of {len_bytes} bytes exceeds max_value_bytes {max_bytes}")]
    ValueTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("scan limit {limit} is 0 or exceeds max_scan_limit {max}")]
    BadScanLimit { limit: u32, max: u32 },
    /// A `PutMany` with no pairs, or whose keys and values together exceed
    /// max_key_bytes + max_value_bytes (one command must fit one log entry).
    #[error("batch of {pairs} pairs and {len_bytes} bytes is empty or exceeds {max_bytes} bytes")]
    BadBatch {
        pairs: usize,
        len_bytes: usize,
        max_bytes: usize,
    },
}

fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_COMMAND_BYTES>()
}

/// Encodes a command as a log payload.
pub fn encode_command(command: &Command) -> Result<Vec<u8>, KvError> {
    bincode::serde::encode_to_vec(command, codec()).map_err(|e| KvError::Encode(e.to_string()))
}

/// Decodes a log payload; refuses trailing bytes and anything over `MAX_COMMAND_BYTES`.
pub fn decode_command(bytes: &[u8]) -> Result<Command, KvError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(KvError::Decode(format!(
            "command of {} bytes exceeds {MAX_COMMAND_BYTES}",
            bytes.len()
        )));
    }
    let (command, read) = bincode::serde::decode_from_slice(bytes, codec())
        .map_err(|e| KvError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(KvError::Decode(format!(
            "{} trailing bytes after command",
            bytes.len() - read
        )));
    }
    Ok(command)
}
