//! Sans-IO Raft core: consensus as a deterministic state machine.
//!
//! The core owns no socket, clock, thread or global. The caller feeds it ticks (`tick`),
//! messages (`step`) and requests (`propose`, `read_index`, ...), then drains a `Ready` batch
//! (entries and hard state to persist, messages to send after that, committed entries to
//! apply, confirmed reads) and acknowledges it with `advance`. Randomness (election timeouts)
//! comes only from an RNG seeded with `Config::rng_seed`; nothing iterates a hash map, so the
//! same inputs always give the same outputs.
//!
//! Implemented: randomized elections with PreVote and CheckQuorum (follower lease), log
//! replication with fast conflict back-off and per-follower flow control, batching of
//! proposals into Appends, the Figure 8 commit rule, snapshots and InstallSnapshot, ReadIndex,
//! leadership transfer and one-server-at-a-time membership changes with learners, and log
//! compaction that keeps, within bounds, the entries a catching-up member still needs.
//!
//! Invariants the code asserts or maintains (see also `log.rs`, `progress.rs`):
//! - term and vote only change through `become_*`; a message that depends on them is only
//!   handed out in the Ready that also carries them (the runtime persists before sending);
//! - committed entries are emitted once, in order, and only when locally durable;
//! - membership takes effect when its entry is appended; at most one change is uncommitted,
//!   and a leader proposes one only after committing an entry of its own term;
//! - a leader whose log has no snapshot and whose membership entries alone do not rebuild
//!   the membership writes the bootstrap membership into the log (as `AddLearner`/`Promote`
//!   entries, no-ops for nodes that already know it), so a node that joins with an empty
//!   `initial_membership` rebuilds the right membership from the log.

mod config;
mod election;
mod log;
mod membership;
mod progress;
mod read_index;
mod replication;
#[cfg(test)]
mod tests;
mod types;

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

pub use config::{Config, ConfigError};
pub use types::*;

use self::log::RaftLog;
use self::progress::Progress;
use self::read_index::ReadIndexState;

/// What a node recovered from durable storage (all empty/default for a brand-new node).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub hard_state: HardState,
    /// The last snapshot's metadata; the applied index starts here.
    pub snapshot: Option<SnapshotMeta>,
    /// Contiguous, starting at `snapshot.index + 1` (or 1). Entries at or below the snapshot
    /// index are ignored.
    pub entries: Vec<Entry>,
    /// Membership to use when neither the snapshot nor the log carries one (cluster
    /// bootstrap: every initial member is given the same set; a node that will join later
    /// gets an empty set and learns membership from the leader's snapshot/log).
    pub initial_membership: Membership,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("not the leader (leader hint: {leader:?})")]
pub struct NotLeader {
    pub leader: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProposeError {
    #[error(transparent)]
    NotLeader(NotLeader),
    /// A membership change is uncommitted, or this leader has not yet committed an entry of
    /// its own term (required before its first change).
    #[error("a membership change is already in progress")]
    MembershipChangePending,
    #[error("node {0} is not a member in the required role")]
    UnknownNode(NodeId),
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("removing node {0} would leave no voter")]
    LastVoter(NodeId),
    /// The bootstrap configuration is written by the core itself, never proposed.
    #[error("the bootstrap membership is written by the first leader, not proposed")]
    BootstrapNotProposable,
}

/// One Raft replica. See the module documentation for the driving protocol.
pub struct Raft {
    config: Config,
    rng: StdRng,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,

    /// Membership at the log's snapshot point (or the bootstrap set); `membership` is this
    /// plus every membership entry in the log.
    base_membership: Membership,
    membership: Membership,
    /// Index of the last membership entry in the log (0: none after the snapshot).
    last_membership_index: LogIndex,
    /// See `set_vote_floor`.
    vote_floor: LogIndex,

    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_timeout: u32,

    /// (Pre)votes received in the current (pre-)election, by voter.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: every other member's replication state.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: proposals were appended since the last broadcast.
    pending_bcast: bool,
    lead_transferee: Option<NodeId>,
    transfer_elapsed: u32,
    timeout_now_sent: bool,
    reads: ReadIndexState,

    msgs: Vec<Message>,
    /// The latest snapshot with its data, to send to followers behind the log start.
    snapshot: Option<Snapshot>,
    snapshot_meta: Option<SnapshotMeta>,
    /// A snapshot received from the leader that the runtime has not been handed yet.
    pending_snapshot: Option<Snapshot>,

    /// Highest index acknowledged as applied (advance).
    applied: LogIndex,
    /// Highest index handed out in `Ready.committed` / `Ready.snapshot`.
    apply_emitted: LogIndex,
    hs_emitted: HardState,
    soft_emitted: SoftState,
}

impl Raft {
    pub fn new(config: Config, restored: Restored) -> Result<Raft, ConfigError> {
        config.validate()?;
        let (snap_index, snap_term, base) = match &restored.snapshot {
            Some(m) => (m.index, m.term, m.membership.clone()),
            None => (0, 0, restored.initial_membership.clone()),
        };
        let entries: Vec<Entry> = restored
            .entries
            .into_iter()
            .filter(|e| e.index > snap_index)
            .collect();
        let log = RaftLog::restored(snap_index, snap_term, entries, restored.hard_state.commit)
            .map_err(|e| ConfigError::RestoredLog {
                snapshot_index: snap_index,
                reason: e.to_string(),
            })?;
        // A torn write could leave entries of a term newer than the stored term: adopting
        // that term (without a vote) is always safe.
        let (term, vote) = if log.last_term() > restored.hard_state.term {
            (log.last_term(), None)
        } else {
            (restored.hard_state.term, restored.hard_state.vote)
        };
        let mut raft = Raft {
            rng: StdRng::seed_from_u64(config.rng_seed),
            term,
            vote,
            role: Role::Follower,
            leader: None,
            log,
            base_membership: base.clone(),
            membership: base,
            last_membership_index: 0,
            vote_floor: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks_min,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            pending_bcast: false,
            lead_transferee: None,
            transfer_elapsed: 0,
            timeout_now_sent: false,
            reads: ReadIndexState::default(),
            msgs: Vec::new(),
            snapshot: None,
            snapshot_meta: restored.snapshot.clone(),
            pending_snapshot: None,
            applied: snap_index,
            apply_emitted: snap_index,
            hs_emitted: restored.hard_state,
            soft_emitted: SoftState {
                leader: None,
                role: Role::Follower,
            },
            config,
        };
        raft.recompute_membership();
        raft.reset_election_timer();
        tracing::debug!(
            id = raft.id(),
            term,
            last_index = raft.last_index(),
            "raft restored"
        );
        Ok(raft)
    }

    /// One logical clock tick.
    pub fn tick(&mut self) {
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    pub fn propose(&mut self, command: Vec<u8>) -> Result<(LogIndex, Term), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.handing_over() {
            return Err(Self::transferring(to));
        }
        let index = self.append_local(EntryPayload::Command(command));
        Ok((index, self.term))
    }

    /// The transfer target once it was told to campaign (TimeoutNow sent: it had the whole
    /// log). From then on proposals are refused: an entry appended now would reach the other
    /// voters but perhaps not the target before it campaigns, and they would refuse it their
    /// votes for a log behind theirs; the group would then wait an election timeout with no
    /// leader (seen moving shards under 64 writers: 1 s without a leader, 3.4 s for one
    /// request). They resume when the target leads, or when the transfer is given up (an
    /// election timeout). Before TimeoutNow the target is still catching up and proposals
    /// go on (etcd's raft refuses them for the whole transfer).
    pub(super) fn handing_over(&self) -> Option<NodeId> {
        self.lead_transferee.filter(|_| self.timeout_now_sent)
    }

    fn transferring(to: NodeId) -> NotLeader {
        NotLeader { leader: Some(to) }
    }

    /// The application has durably saved a snapshot of its state machine at
    /// `snapshot.meta.index` (<= applied); build `meta` with `snapshot_meta_at`. The core drops
    /// its log up to that index (a leader keeps, within `Config::retained_log_entries_max` and
    /// `retained_log_bytes_max`, the entries a member still needs: see `log_needed_from`) and
    /// sends this snapshot to followers that need entries it no longer has. Call it also after
    /// a restart with the snapshot loaded from disk, so the core has its data to send. A
    /// snapshot that does not match the log is ignored.
    pub fn snapshot_saved(&mut self, snapshot: Snapshot) {
        let meta = &snapshot.meta;
        let current = self.snapshot_index();
        if meta.index < current || meta.index > self.applied {
            tracing::warn!(
                index = meta.index,
                current,
                applied = self.applied,
                "ignoring snapshot outside [snapshot index, applied]"
            );
            return;
        }
        if Some(meta) != self.snapshot_meta_at(meta.index).as_ref() {
            tracing::error!(
                index = meta.index,
                "ignoring snapshot whose metadata does not match the log"
            );
            return;
        }
        let through = self.compaction_point(meta.index);
        let at = if through == meta.index {
            Some(meta.clone())
        } else {
            self.snapshot_meta_at(through)
        };
        if let Some(at) = at {
            self.log.compact(at.index, at.term);
            self.base_membership = at.membership;
        }
        self.snapshot_meta = Some(meta.clone());
        self.snapshot = Some(snapshot);
    }

    /// Leader: the first log index a member still needs from this log (the lowest
    /// `Progress::needs_from`: a member catching up, or one being sent a snapshot, which will
    /// ask for the entries after it). Members that need entries the log no longer holds (they
    /// get a snapshot) or that were not heard from for a whole CheckQuorum round are left
    /// out; None on a follower or when no member needs any.
    pub fn log_needed_from(&self) -> Option<LogIndex> {
        if self.role != Role::Leader {
            return None;
        }
        let first = self.log.first_index();
        self.progress
            .values()
            .filter_map(Progress::needs_from)
            .filter(|&index| index >= first)
            .min()
    }

    /// Where a snapshot at `snapshot_index` compacts the log through: just before the first
    /// entry a member still needs, unless the entries kept at or below the snapshot would pass
    /// the bounds of `Config::retained_log_entries_max` / `retained_log_bytes_max`.
    fn compaction_point(&self, snapshot_index: LogIndex) -> LogIndex {
        let current = self.log.snapshot_index();
        let Some(needed) = self.log_needed_from() else {
            return snapshot_index;
        };
        let through = (needed - 1).clamp(current, snapshot_index);
        let kept = self.log.slice(through + 1, snapshot_index);
        let kept_entries = kept.len() as u64;
        let kept_bytes: u64 = kept
            .iter()
            .map(|e| self::log::payload_bytes(e) as u64)
            .sum();
        if kept_entries > self.config.retained_log_entries_max
            || kept_bytes > self.config.retained_log_bytes_max
        {
            if kept_entries > 0 && self.config.retained_log_entries_max > 0 {
                tracing::info!(
                    id = self.id(),
                    needed,
                    snapshot_index,
                    kept_entries,
                    kept_bytes,
                    "log kept for a catching-up member passes its bound: compacting through \
                     the snapshot"
                );
            }
            return snapshot_index;
        }
        through
    }

    /// The metadata a snapshot taken at `index` must carry (term and membership in force
    /// there), if `index` is between the log's snapshot point and its last entry.
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        let term = self.log.term(index)?;
        let mut membership = self.base_membership.clone();
        for e in self.log.slice(self.log.first_index(), index) {
            if let EntryPayload::Membership(change) = &e.payload {
                membership::apply_change(&mut membership, change);
            }
        }
        Some(SnapshotMeta {
            index,
            term,
            membership,
        })
    }

    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || self.pending_bcast
            || self.pending_snapshot.is_some()
            || self.log.unstable_from <= self.log.last_index()
            || self.hard_state() != self.hs_emitted
            || self.soft_state() != self.soft_emitted
            || self.log.commit.min(self.log.persisted) > self.apply_emitted
            || self
                .reads
                .has_output(self.role == Role::Leader && self.committed_current_term())
    }

    /// Everything the core wants done; see the ordering contract on `Ready`.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.pending_bcast {
                self.pending_bcast = false;
                self.bcast_append();
            }
            self.start_read_round();
        }
        let mut rd = Ready::default();
        let soft = self.soft_state();
        if soft != self.soft_emitted {
            rd.soft_state = Some(soft.clone());
            self.soft_emitted = soft;
        }
        if let Some(snapshot) = self.pending_snapshot.take() {
            self.apply_emitted = self.apply_emitted.max(snapshot.meta.index);
            rd.snapshot = Some(snapshot);
        }
        rd.entries = self.log.take_unstable();
        let hs = self.hard_state();
        if hs != self.hs_emitted {
            rd.hard_state = Some(self.hard_state_to_persist(&hs));
            self.hs_emitted = hs;
        }
        rd.messages = std::mem::take(&mut self.msgs);
        let upto = self.log.commit.min(self.log.persisted);
        if upto > self.apply_emitted {
            let committed = self.log.slice(self.apply_emitted + 1, upto);
            assert_eq!(
                committed.len() as u64,
                upto - self.apply_emitted,
                "committed entries missing"
            );
            rd.committed = committed.to_vec();
            self.apply_emitted = upto;
        }
        rd.reads = self.reads.take_confirmed();
        rd
    }

    /// The hard state as the Ready carries it: the real one, unless a planted bug drops a
    /// newly granted vote from it.
    fn hard_state_to_persist(&self, hs: &HardState) -> HardState {
        #[cfg(any(test, madsim))]
        if self.config.bugs.vote_not_persisted && hs.vote != self.hs_emitted.vote {
            let vote = if hs.term == self.hs_emitted.term {
                self.hs_emitted.vote
            } else {
                None
            };
            return HardState { vote, ..hs.clone() };
        }
        hs.clone()
    }

    /// Acknowledges a Ready: its snapshot and entries are durable, its messages sent and its
    /// committed entries applied.
    pub fn advance(&mut self, ready: Ready) {
        if let Some(s) = &ready.snapshot {
            self.applied = self.applied.max(s.meta.index);
            if self.log.snapshot_index() == s.meta.index {
                self.log.persisted = self.log.persisted.max(s.meta.index);
            }
        }
        if let Some(last) = ready.entries.last() {
            // Entries superseded by a truncation since this Ready was taken do not count.
            if self.log.matches(last.index, last.term) {
                self.log.persisted = self.log.persisted.max(last.index);
            }
        }
        if let Some(last) = ready.committed.last() {
            self.applied = self.applied.max(last.index);
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.pending_bcast = true;
        }
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    pub fn commit_index(&self) -> LogIndex {
        self.log.commit
    }
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit,
        }
    }
    /// The in-memory (uncompacted) log, for checkers.
    pub fn log_entries(&self) -> &[Entry] {
        self.log.entries()
    }
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot_meta.as_ref()
    }

    /// Leader: each other member's match index (voters and learners); empty when not leader.
    /// Leader: forgets what it knows of `node`'s log and probes it afresh from the end of the
    /// log. For a member whose match index stopped moving because it came from an earlier
    /// incarnation of its replica (deleted and re-created: a delayed acknowledgement of the old
    /// one), whose rejections below that index would otherwise be ignored forever. Lowering a
    /// match index only makes commitment more conservative. Returns whether it was reset.
    pub fn reset_progress(&mut self, node: NodeId) -> bool {
        if self.role != Role::Leader || node == self.config.id {
            return false;
        }
        let next = self.log.last_index() + 1;
        let Some(pr) = self.progress.get_mut(&node) else {
            return false;
        };
        let (recent_active, active_before) = (pr.recent_active, pr.active_before);
        *pr = Progress::new(next);
        pr.recent_active = recent_active;
        pr.active_before = active_before;
        self.send_append(node, true);
        true
    }

    pub fn match_index(&self) -> BTreeMap<NodeId, LogIndex> {
        if self.role != Role::Leader {
            return BTreeMap::new();
        }
        self.progress
            .iter()
            .map(|(&id, pr)| (id, pr.matched))
            .collect()
    }

    /// Index of the log entry (or snapshot) that set the current membership; 0 for the initial one.
    ///
    /// When the log since the snapshot holds no membership entry, this is the snapshot's index:
    /// the membership was set at or before it and did not change between. So the value never
    /// decreases while the membership stays, is the same after a restart, and a membership
    /// with a higher index is a later one.
    /// Marks this replica as a re-creation on a node whose earlier replica of the group was
    /// deleted after the membership at `index` removed it. Until this replica knows a newer
    /// membership, it grants no vote or pre-vote and does not campaign: a node cut off while it
    /// was removed may still hold a membership that counts this node as a voter, and this empty
    /// (or still catching up) replica must not help it win an election its old replica would
    /// have refused. 0 (the default): no floor.
    pub fn set_vote_floor(&mut self, index: LogIndex) {
        self.vote_floor = index;
    }

    fn past_vote_floor(&self) -> bool {
        self.vote_floor == 0 || self.membership_index() > self.vote_floor
    }

    pub fn membership_index(&self) -> LogIndex {
        self.last_membership_index.max(self.snapshot_index())
    }

    /// The index of the latest snapshot (0: none). A leader's log may still hold entries at
    /// or below it (see `log_needed_from`).
    fn snapshot_index(&self) -> LogIndex {
        self.snapshot_meta
            .as_ref()
            .map_or(0, |m| m.index)
            .max(self.log.snapshot_index())
    }

    /// True while a membership change is uncommitted or the leader has not yet committed an entry of its term.
    ///
    /// `propose_membership` refuses a change exactly when this holds (on a leader).
    pub fn membership_change_pending(&self) -> bool {
        self.last_membership_index > self.log.commit || !self.committed_current_term()
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    fn is_voter(&self) -> bool {
        self.membership.voters.contains(&self.config.id)
    }

    fn quorum(&self) -> usize {
        self.membership.voters.len() / 2 + 1
    }

    fn committed_current_term(&self) -> bool {
        self.log.term(self.log.commit) == Some(self.term)
    }

    /// Whether an entry of the current term is committed (a new leader's first commit).
    pub fn term_committed(&self) -> bool {
        self.committed_current_term()
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_election_timeout = self.rng.random_range(
            self.config.election_timeout_ticks_min..self.config.election_timeout_ticks_max,
        );
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message {
            from: self.config.id,
            to,
            term,
            body,
        });
    }

    /// Leader: appends an entry of the current term and schedules its replication.
    fn append_local(&mut self, payload: EntryPayload) -> LogIndex {
        let index = self.log.last_index() + 1;
        self.log.append(Entry {
            index,
            term: self.term,
            payload,
        });
        self.on_entries_appended(index);
        self.pending_bcast = true;
        if self.progress.is_empty() || self.quorum() == 1 {
            // Commit may depend only on this node; it waits for local persistence in advance.
            self.maybe_commit();
        }
        index
    }
}
