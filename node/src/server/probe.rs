//! Protocol probe (test and simulation builds only): the node reports the protocol's critical
//! moments to an observer the harness hands it through `ServerConfig::observer`.
//!
//! Why: a linearizability violation is the last, rarest symptom of a Raft bug. The harness can
//! check Raft's own safety properties directly (at most one leader per term; no two nodes apply
//! different entries at one index) and strike at the dangerous moments (crash a node the
//! instant it grants a vote). Invariants: an event is reported only after the state it describes
//! was acted on (a vote after the Ready carrying it was persisted, an entry when it is applied);
//! the observer never changes what the node does; production builds carry none of this.

use std::fmt;

use crate::meta::GroupId;
use crate::raft::{LogIndex, NodeId, Term};

/// One protocol moment of one Raft group, as seen by the node that lived it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolEvent {
    /// The node became leader of `term`.
    BecameLeader { term: Term },
    /// The node has just sent a granted VoteResponse to `candidate` for `term`.
    VoteGranted { term: Term, candidate: NodeId },
    /// The node applied the entry at `index` of `term` to its state machine.
    Applied { index: LogIndex, term: Term },
    /// A shard replica's data digest (`StateMachine::digest`) with everything through `index`
    /// applied (reported after each turn's applies and after a received snapshot is swapped in).
    StateDigest { index: LogIndex, digest: u64 },
    /// As leader of `term`, the node advanced its commit index to `index`, an entry of
    /// `entry_term` (Raft §5.4.2 allows this only for `entry_term == term`).
    LeaderCommitted {
        term: Term,
        index: LogIndex,
        entry_term: Term,
    },
}

/// Receives the protocol events of every node it is handed to (one may serve all nodes).
/// Terms, indexes and leaders are per group: safety is checked group by group.
pub trait ProtocolObserver: Send + Sync + fmt::Debug {
    fn observe(&self, node: NodeId, group: GroupId, event: ProtocolEvent);
}
