//! The replicated key-value state machine, applied from the Raft log.
//!
//! Why it exists: it turns committed log entries into key-value state and client responses,
//! deterministically, so that every replica that applies the same log holds the same state.
//!
//! Invariants:
//! - no clock or randomness; all maps are `BTreeMap`, so iteration order never depends on
//!   hashing; storage only through `Engine` (redb on the node's `Disk`, see `engine.rs`);
//! - `apply` is called with strictly increasing log indexes; a key's version is the index of
//!   its last write, so versions only grow;
//! - exactly-once (Raft dissertation §6.3): a retried `(client_id, seq)` returns the response
//!   recorded the first time and changes nothing; sessions expire only as a function of log
//!   indexes, never of time, and the session table is stored with the data.
pub mod engine;
mod machine;
pub(crate) mod sessions;
pub mod string_ops;
mod types;

pub use engine::{Engine, ReadView};
pub use machine::{KvConfig, StateMachine};
pub use types::{
    decode_command, encode_command, Command, Expected, InvalidOp, KeyRange, OpResult, Operation,
    ScanItem, SetCondition, Version, Versioned, MAX_COMMAND_BYTES,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("corrupt snapshot: {0}")]
    Snapshot(String),
    #[error("operation is not a read: {0}")]
    NotARead(&'static str),
    #[error("invalid kv config: {0}")]
    Config(&'static str),
    /// The engine (redb over the node's disk) failed or holds damaged data.
    #[error("state machine storage: {0}")]
    Storage(String),
}

#[cfg(test)]
mod engine_tests;
#[cfg(test)]
mod tests;
