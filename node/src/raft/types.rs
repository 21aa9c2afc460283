//! The vocabulary of the Raft core: identifiers, log entries, messages, snapshots and the
//! `Ready` batch the core hands to its I/O shell.
//!
//! These types are the contract between the sans-IO core (`raft::Raft`) and the runtime that
//! drives it (server event loop, in-memory test cluster, simulator). They are plain data:
//! serializable, comparable and free of I/O.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;
pub type Term = u64;
pub type LogIndex = u64;

/// What must be durable before any message that depends on it is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

/// The replica set of one Raft group. Changes are made one server at a time (Raft
/// dissertation §4.1): a configuration takes effect on a node as soon as the entry carrying it
/// is appended to that node's log, committed or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Add a non-voting member that receives the log (and snapshots) but does not vote.
    AddLearner(NodeId),
    /// Turn a learner into a voter.
    Promote(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
    /// The whole bootstrap membership, written once by the first leader of a log that starts
    /// empty: a node that has it knows the real configuration at once. It replaces the
    /// `AddLearner`/`Promote` pairs of earlier versions, whose prefixes were configurations
    /// the cluster never had (a replica holding only `AddLearner(1), Promote(1)` believed
    /// node 1 to be the only voter and elected itself: sim `elections` seed 5178).
    /// Appended last so that logs written by earlier versions still decode.
    Bootstrap(Membership),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryPayload {
    /// Appended by every new leader so that it can commit an entry of its own term.
    Noop,
    /// Opaque application command (the KV state machine's encoded request).
    Command(#[serde(with = "serde_bytes")] Vec<u8>),
    Membership(MembershipChange),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    pub payload: EntryPayload,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Last log index covered by the snapshot.
    pub index: LogIndex,
    pub term: Term,
    /// The membership in force at `index`.
    pub membership: Membership,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    /// The application's encoded state machine at `meta.index`.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Sent with `term` = the candidate's term + 1, without the sender changing its own term.
    PreVote {
        last_index: LogIndex,
        last_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// `transfer` is set when the election was started by a leadership transfer (TimeoutNow), so
    /// receivers must not refuse it because they recently heard from a leader.
    Vote {
        last_index: LogIndex,
        last_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    Append {
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    /// On success `index` is the last index known to match the leader. On rejection the hint
    /// lets the leader skip back a whole term at a time (fast conflict back-off).
    AppendResponse {
        success: bool,
        index: LogIndex,
        reject_hint: Option<RejectHint>,
    },
    /// `read_seq` identifies the ReadIndex round the heartbeat confirms (0: none).
    Heartbeat {
        commit: LogIndex,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    InstallSnapshot {
        snapshot: Snapshot,
    },
    InstallSnapshotResponse {
        index: LogIndex,
    },
    /// Leadership transfer: the receiver starts an election at once.
    TimeoutNow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    /// The term of the follower's entry at the rejected `prev_index` (None: it has no entry there).
    pub conflict_term: Option<Term>,
    /// The first index the follower holds for `conflict_term`, or its last index + 1.
    pub conflict_index: LogIndex,
}

/// A linearizable read whose `ctx` was passed to `Raft::read_index`: it may be served from the
/// state machine once the applied index is >= `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    pub ctx: u64,
    pub index: LogIndex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Everything the core wants done, in the order it must be done:
/// 1. persist `snapshot` (if any), then `entries` (the store truncates its log from
///    `entries[0].index` first when that index is not past its last entry), then `hard_state`,
///    and sync; a `snapshot` here (installed from the leader) replaces the whole log: the
///    store discards every entry it holds, at any index, before appending `entries`;
/// 2. only then send `messages`;
/// 3. apply `committed` in order (after restoring the state machine from `snapshot`, if any);
/// 4. serve `reads` once applied index >= their index;
/// 5. call `Raft::advance(ready)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub committed: Vec<Entry>,
    pub reads: Vec<ReadState>,
    /// Set when the known leader or this node's role changed since the last Ready.
    pub soft_state: Option<SoftState>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftState {
    pub leader: Option<NodeId>,
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `EntryPayload` as it was before its bytes were (de)serialized as one block
    /// (`serde_bytes`) rather than element by element.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum ElementWisePayload {
        Noop,
        Command(Vec<u8>),
        Membership(MembershipChange),
    }

    /// WAL records and peer frames written by earlier versions must decode unchanged, and new
    /// ones must be what those versions wrote: bincode frames a byte block and a sequence of
    /// `u8` identically (length, then the bytes), and so does JSON (an array of numbers).
    #[test]
    fn command_bytes_encode_as_before() {
        let codec = bincode::config::standard();
        for data in [
            vec![],
            vec![0u8],
            (0..=255u8).cycle().take(70_000).collect(),
        ] {
            let old = ElementWisePayload::Command(data.clone());
            let new = EntryPayload::Command(data.clone());
            let old_bytes = bincode::serde::encode_to_vec(&old, codec).unwrap();
            let new_bytes = bincode::serde::encode_to_vec(&new, codec).unwrap();
            assert_eq!(old_bytes, new_bytes, "{} bytes", data.len());
            let (decoded, read): (EntryPayload, usize) =
                bincode::serde::decode_from_slice(&old_bytes, codec).unwrap();
            assert_eq!((decoded, read), (new, old_bytes.len()));

            let old_json = serde_json::to_string(&old).unwrap();
            let new_json = serde_json::to_string(&EntryPayload::Command(data.clone())).unwrap();
            assert_eq!(old_json, new_json);
            let decoded: EntryPayload = serde_json::from_str(&old_json).unwrap();
            assert_eq!(decoded, EntryPayload::Command(data));
        }
    }

    /// A length that claims more bytes than the input holds is an error, not an allocation.
    #[test]
    fn a_truncated_command_is_refused() {
        let codec = bincode::config::standard();
        let mut bytes =
            bincode::serde::encode_to_vec(EntryPayload::Command(vec![7; 300]), codec).unwrap();
        bytes.truncate(100);
        let result: Result<(EntryPayload, usize), _> =
            bincode::serde::decode_from_slice(&bytes, codec);
        assert!(result.is_err());
    }
}
