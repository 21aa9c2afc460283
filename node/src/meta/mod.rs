//! Cluster metadata: who the members are, where every shard's replicas should be, and how a
//! group's leader moves its replica set towards that target one safe step at a time.
//!
//! The metadata lives in its own Raft group (`META_GROUP`) whose voters are a few members and
//! whose learners are all the others, so every node learns every change. Everything here is
//! pure: the node's event loop feeds it applied log entries and asks it for targets and steps.
mod reconcile;
mod state;
mod types;

pub use reconcile::{next_step, LeaderView, Step};
pub use state::{
    decode_command, encode_command, MetaError, MetaState, Target, MAX_MEMBERS,
    MAX_META_COMMAND_BYTES, MAX_META_SNAPSHOT_BYTES, MAX_REPLICATION_FACTOR, MAX_SHARDS,
    MAX_VNODES_PER_NODE,
};
pub use types::*;
