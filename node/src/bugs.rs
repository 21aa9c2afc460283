//! Deliberately planted bugs, compiled only into test and simulation builds.
//!
//! The simulator proves its bug-finding power by switching one of these on by name and showing
//! that a seeded campaign finds it (issue 5). Production builds carry none of this: the module
//! and every field that refers to it exist only under `cfg(any(test, madsim))`.

use std::fmt;
use std::str::FromStr;

/// One switch per planted bug; all off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Raft: the leader advances commit on a quorum for entries of earlier terms (Figure 8).
    pub commit_counts_old_terms: bool,
    /// Raft/storage: a granted vote is not made durable before the VoteResponse is sent.
    pub vote_not_persisted: bool,
    /// Server: a follower answers reads from its local state machine without ReadIndex.
    pub follower_local_reads: bool,
    /// Server: the leader replies to a client before its own log append is synced.
    pub ack_before_fsync: bool,
    /// KV: a retried (client id, seq) is applied again instead of answered from the session.
    pub no_retry_dedup: bool,
    /// KV: snapshots omit the session table, so dedup is lost after restore.
    pub snapshot_drops_sessions: bool,
    /// Engine: a checkpoint's applied index is made durable (token saved, log compacted
    /// through it) while the data it covers is not (the checkpoint commit is not `Immediate`).
    pub applied_before_data: bool,
    /// Snapshot stream: the sender resumes each chunk after the first key it should send
    /// (one key lost per chunk boundary).
    pub snapshot_chunk_skips_key: bool,
    /// Storage: the WAL deletes old segments while a group still has live entries in them
    /// (only the segment heads' hard states are taken into account).
    pub wal_recycles_live_segment: bool,
    /// Raft read path: a ReadIndex round is released without a quorum's heartbeat
    /// acknowledgements, so a deposed leader that does not know it yet serves stale reads.
    pub read_skips_quorum: bool,
    /// Raft read path: a new leader starts ReadIndex rounds before it has committed an entry of
    /// its own term, so its read index may lie below what earlier leaders committed.
    pub read_before_term_commit: bool,
    /// Raft election rules: a vote is granted without checking that the candidate's log is at
    /// least as up to date as the voter's (§5.4.1), so a leader may lack committed entries.
    pub vote_ignores_log: bool,
    /// Raft membership: a candidate counts votes from nodes that are not voters of its
    /// configuration (learners, removed or not yet promoted replicas).
    pub votes_from_non_voters: bool,
}

impl PlantedBugs {
    pub const NAMES: [&'static str; 13] = [
        "commit-counts-old-terms",
        "vote-not-persisted",
        "follower-local-reads",
        "ack-before-fsync",
        "no-retry-dedup",
        "snapshot-drops-sessions",
        "applied-before-data",
        "snapshot-chunk-skips-key",
        "wal-recycles-live-segment",
        "read-skips-quorum",
        "read-before-term-commit",
        "vote-ignores-log",
        "votes-from-non-voters",
    ];

    pub fn any(&self) -> bool {
        *self != PlantedBugs::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownBug(pub String);

impl fmt::Display for UnknownBug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown planted bug {:?}; known: {}",
            self.0,
            PlantedBugs::NAMES.join(", ")
        )
    }
}

impl std::error::Error for UnknownBug {}

impl FromStr for PlantedBugs {
    type Err = UnknownBug;

    /// Parses a comma-separated list of bug names (empty: none).
    fn from_str(names: &str) -> Result<Self, Self::Err> {
        let mut bugs = PlantedBugs::default();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "commit-counts-old-terms" => bugs.commit_counts_old_terms = true,
                "vote-not-persisted" => bugs.vote_not_persisted = true,
                "follower-local-reads" => bugs.follower_local_reads = true,
                "ack-before-fsync" => bugs.ack_before_fsync = true,
                "no-retry-dedup" => bugs.no_retry_dedup = true,
                "snapshot-drops-sessions" => bugs.snapshot_drops_sessions = true,
                "applied-before-data" => bugs.applied_before_data = true,
                "snapshot-chunk-skips-key" => bugs.snapshot_chunk_skips_key = true,
                "wal-recycles-live-segment" => bugs.wal_recycles_live_segment = true,
                "read-skips-quorum" => bugs.read_skips_quorum = true,
                "read-before-term-commit" => bugs.read_before_term_commit = true,
                "vote-ignores-log" => bugs.vote_ignores_log = true,
                "votes-from-non-voters" => bugs.votes_from_non_voters = true,
                other => return Err(UnknownBug(other.to_string())),
            }
        }
        Ok(bugs)
    }
}
