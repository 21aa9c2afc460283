//! Cluster metadata: who the members are, where every shard's replicas should be, and how a
//! group's leader moves its replica set towards that target one safe step at a time.
//!
//! The metadata lives in its own Raft group (`META_GROUP`) whose voters are a few members and
//! whose learners are all the others, so every node learns every change. Everything here is
//! pure: the node's event loop feeds it applied log entries and asks it for targets and steps.
mod types;

pub use types::*;
