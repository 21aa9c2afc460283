//! Terms, elections and roles: message dispatch by term, PreVote, votes, CheckQuorum, the
//! follower lease and leadership transfer.
//!
//! Rules (Raft §5.2, §5.4.1; dissertation §4.2.3, §9.6):
//! - a message of a higher term makes this node a follower of that term, except PreVote
//!   traffic (which never changes terms) and (pre)votes refused under the lease;
//! - with CheckQuorum, a node that heard from a live leader within `election_timeout_ticks_min`
//!   ignores (pre)vote requests unless they come from a leadership transfer, and a leader that
//!   did not hear from a quorum within that period steps down;
//! - a vote is granted at most once per term, only to a candidate whose log is at least as up
//!   to date, and the vote is persisted (Ready.hard_state) before the response is sent;
//! - a term more than `MAX_TERM_JUMP` above ours is never adopted from one message: the node
//!   moves up by `MAX_TERM_JUMP` (as if it had timed out that many times) and drops the message.

use super::membership::{apply_change, bootstrap_change};
use super::progress::ProgressState;
use super::types::{EntryPayload, Membership, Message, MessageBody, NodeId, Role, Term};
use super::{NotLeader, ProposeError, Raft};

/// Terms and indexes above this are treated as corrupt input (a real log or term counter
/// never gets near it), which also keeps every `+ 1` on them free of overflow.
const MAX_SANE_NUMBER: u64 = u64::MAX / 4;

/// The most one message can raise this node's term. Peers are not authenticated (yet), so a
/// single forged frame claiming a term near `MAX_SANE_NUMBER` used to be adopted, persisted and
/// spread by this node's replies; once every term was that high the next election's term was
/// "absurd" and dropped everywhere, and the group stayed leaderless for good, across restarts.
/// A message further ahead raises our term by this much (always safe: a higher term is what a
/// node gets by timing out, it never un-commits anything) and is dropped; a genuine leader or
/// candidate far ahead (a node back after a long absence, a fresh replica at term 0) is caught
/// up with in `gap / MAX_TERM_JUMP` of its messages, while a forger now needs about
/// `MAX_SANE_NUMBER / MAX_TERM_JUMP` = 2^46 frames to exhaust the term space.
pub(crate) const MAX_TERM_JUMP: u64 = 1 << 16;

fn numbers_are_sane(m: &Message) -> bool {
    let ok = |n: u64| n <= MAX_SANE_NUMBER;
    ok(m.term)
        && match &m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            }
            | MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => ok(*last_index) && ok(*last_term),
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                ok(*prev_index)
                    && ok(*prev_term)
                    && ok(*commit)
                    && entries.iter().all(|e| ok(e.index) && ok(e.term))
            }
            MessageBody::AppendResponse {
                index, reject_hint, ..
            } => {
                ok(*index)
                    && reject_hint
                        .as_ref()
                        .is_none_or(|h| ok(h.conflict_index) && h.conflict_term.is_none_or(ok))
            }
            MessageBody::Heartbeat { commit, .. } => ok(*commit),
            MessageBody::InstallSnapshot { snapshot } => {
                ok(snapshot.meta.index) && ok(snapshot.meta.term)
            }
            MessageBody::InstallSnapshotResponse { index } => ok(*index),
            MessageBody::PreVoteResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow => true,
        }
}

impl Raft {
    /// Handles any message: stale, duplicated or addressed elsewhere ones are ignored.
    pub fn step(&mut self, m: Message) {
        if m.to != self.config.id || m.from == self.config.id {
            tracing::debug!(
                id = self.id(),
                from = m.from,
                to = m.to,
                "ignoring misaddressed message"
            );
            return;
        }
        if !numbers_are_sane(&m) {
            tracing::error!(
                id = self.id(),
                from = m.from,
                "ignoring message with absurd term or index"
            );
            return;
        }
        if m.term > self.term {
            let (is_vote_request, transfer) = match &m.body {
                MessageBody::Vote { transfer, .. } => (true, *transfer),
                MessageBody::PreVote { .. } => (true, false),
                _ => (false, false),
            };
            if is_vote_request && !transfer && self.in_lease() {
                tracing::debug!(
                    id = self.id(),
                    from = m.from,
                    term = m.term,
                    "lease: ignoring vote request"
                );
                return;
            }
            let changes_term = !matches!(
                &m.body,
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true }
            );
            if changes_term && m.term - self.term > MAX_TERM_JUMP {
                let term = self.term + MAX_TERM_JUMP;
                tracing::warn!(
                    id = self.id(),
                    from = m.from,
                    claimed = m.term,
                    term,
                    "message term too far ahead: moving up by MAX_TERM_JUMP only, message dropped"
                );
                self.become_follower(term, None);
                return;
            }
            match &m.body {
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                // Tell a stale leader about the newer term so it steps down (without this a
                // PreVote/CheckQuorum cluster can get stuck behind a node with a higher term).
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => self.send(
                    m.from,
                    MessageBody::AppendResponse {
                        success: false,
                        index: 0,
                        reject_hint: None,
                    },
                ),
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false })
                }
                // A candidate behind in term learns ours and can catch up (otherwise two
                // nodes that each need the other's vote can leapfrog terms forever).
                MessageBody::Vote { .. } => {
                    self.send(m.from, MessageBody::VoteResponse { granted: false })
                }
                _ => {}
            }
            return;
        }
        self.step_current_term(m);
    }

    fn step_current_term(&mut self, m: Message) {
        let from = m.from;
        match m.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(from, m.term, last_index, last_term, true),
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(from, m.term, last_index, last_term, false),
            MessageBody::PreVoteResponse { granted } => {
                self.handle_vote_response(from, m.term, granted, true)
            }
            MessageBody::VoteResponse { granted } => {
                self.handle_vote_response(from, m.term, granted, false)
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                if self.accept_leader(from) {
                    self.handle_append(from, prev_index, prev_term, entries, commit);
                }
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                if self.accept_leader(from) {
                    self.handle_heartbeat(from, commit, read_seq);
                }
            }
            MessageBody::InstallSnapshot { snapshot } => {
                if self.accept_leader(from) {
                    self.handle_install_snapshot(from, snapshot);
                }
            }
            MessageBody::AppendResponse {
                success,
                index,
                reject_hint,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, success, index, reject_hint);
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, read_seq);
                }
            }
            MessageBody::InstallSnapshotResponse { index } => {
                if self.role == Role::Leader {
                    self.handle_install_snapshot_response(from, index);
                }
            }
            MessageBody::TimeoutNow => {
                if self.role == Role::Follower && self.leader == Some(from) && self.can_campaign() {
                    tracing::info!(id = self.id(), term = self.term, "TimeoutNow: campaigning");
                    self.become_candidate(true);
                }
            }
        }
    }

    /// A leader message of the current term: follow its sender. False if this node is itself
    /// the leader of the term (impossible for a correct peer; the message is dropped).
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            tracing::error!(
                id = self.id(),
                from,
                term = self.term,
                "two leaders in one term"
            );
            return false;
        }
        if self.role != Role::Follower || self.leader != Some(from) {
            self.become_follower(self.term, Some(from));
        }
        self.election_elapsed = 0;
        true
    }

    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_timeout_ticks_min
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        msg_term: Term,
        last_index: u64,
        last_term: Term,
        pre: bool,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre && msg_term > self.term);
        #[cfg(any(test, madsim))]
        let log_ok =
            self.config.bugs.vote_ignores_log || self.log.is_up_to_date(last_index, last_term);
        #[cfg(not(any(test, madsim)))]
        let log_ok = self.log.is_up_to_date(last_index, last_term);
        let granted = can_vote && self.past_vote_floor() && log_ok;
        tracing::debug!(id = self.id(), from, msg_term, pre, granted, "vote request");
        if pre {
            let term = if granted { msg_term } else { self.term };
            self.send_with_term(from, term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.vote = Some(from);
                self.election_elapsed = 0;
            }
            self.send(from, MessageBody::VoteResponse { granted });
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, msg_term: Term, granted: bool, pre: bool) {
        let counts = if pre {
            self.role == Role::PreCandidate
                && ((granted && msg_term == self.term + 1) || (!granted && msg_term == self.term))
        } else {
            self.role == Role::Candidate
        };
        #[cfg(any(test, madsim))]
        let from_voter =
            self.config.bugs.votes_from_non_voters || self.membership.voters.contains(&from);
        #[cfg(not(any(test, madsim)))]
        let from_voter = self.membership.voters.contains(&from);
        if !counts || !from_voter {
            return;
        }
        self.votes.insert(from, granted);
        self.tally_election(pre);
    }

    /// Counts the (pre)votes of current voters: wins, loses, or keeps waiting.
    fn tally_election(&mut self, pre: bool) {
        let voters = &self.membership.voters;
        #[cfg(any(test, madsim))]
        let any_voter = self.config.bugs.votes_from_non_voters;
        #[cfg(not(any(test, madsim)))]
        let any_voter = false;
        let counted = self
            .votes
            .iter()
            .filter(|(id, _)| any_voter || voters.contains(id));
        let (yes, no) = counted.fold(
            (0, 0),
            |(y, n), (_, g)| if *g { (y + 1, n) } else { (y, n + 1) },
        );
        if yes >= self.quorum() {
            if pre {
                self.become_candidate(false);
            } else {
                self.become_leader();
            }
        } else if voters.len().saturating_sub(no) < self.quorum() {
            self.become_follower(self.term, None);
        }
    }

    /// A voter campaigns; so does a node whose own removal is appended but not committed (it
    /// may hold the only copy of that entry, and the nodes that still count it as a voter
    /// would otherwise wait for it forever).
    fn can_campaign(&self) -> bool {
        if !self.past_vote_floor() {
            return false;
        }
        if self.is_voter() {
            return true;
        }
        if self.last_membership_index <= self.log.commit {
            return false;
        }
        self.snapshot_meta_at(self.last_membership_index - 1)
            .is_some_and(|m| m.membership.voters.contains(&self.config.id))
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        // A node that may not campaign keeps counting, so that its lease (which makes it
        // ignore vote requests) expires once the leader falls silent.
        if self.election_elapsed >= self.randomized_election_timeout && self.can_campaign() {
            self.election_elapsed = 0;
            self.campaign();
        }
    }

    pub(super) fn tick_leader(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        self.heartbeat_elapsed = self.heartbeat_elapsed.saturating_add(1);
        if self.election_elapsed >= self.config.election_timeout_ticks_min {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                tracing::info!(
                    id = self.id(),
                    term = self.term,
                    "CheckQuorum failed: stepping down"
                );
                self.become_follower(self.term, None);
                return;
            }
            for pr in self.progress.values_mut() {
                pr.start_activity_round();
            }
        }
        if self.lead_transferee.is_some() {
            self.transfer_elapsed = self.transfer_elapsed.saturating_add(1);
            if self.transfer_elapsed >= self.config.election_timeout_ticks_min {
                tracing::info!(id = self.id(), to = ?self.lead_transferee, "leadership transfer aborted");
                self.lead_transferee = None;
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
            self.tick_snapshot_stalls();
        }
    }

    fn tick_snapshot_stalls(&mut self) {
        let limit = self.config.election_timeout_ticks_min;
        for pr in self.progress.values_mut() {
            if let ProgressState::Snapshot { index, stall_ticks } = pr.state {
                if stall_ticks + self.config.heartbeat_interval_ticks >= limit {
                    pr.become_probe(); // the snapshot was lost: try again
                } else {
                    pr.state = ProgressState::Snapshot {
                        index,
                        stall_ticks: stall_ticks + self.config.heartbeat_interval_ticks,
                    };
                }
            }
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let me = self.config.id;
        let active = self
            .membership
            .voters
            .iter()
            .filter(|v| **v == me || self.progress.get(v).is_some_and(|p| p.recent_active))
            .count();
        active >= self.quorum()
    }

    fn campaign(&mut self) {
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role != Role::Follower || self.leader != leader {
            tracing::debug!(id = self.id(), term, ?leader, "following");
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_role_state();
    }

    fn reset_role_state(&mut self) {
        self.reset_election_timer();
        self.heartbeat_elapsed = 0;
        self.votes.clear();
        self.progress.clear();
        self.pending_bcast = false;
        self.lead_transferee = None;
        self.timeout_now_sent = false;
        self.reads.clear();
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.reset_role_state();
        self.votes.insert(self.config.id, true);
        tracing::debug!(id = self.id(), term = self.term, "pre-campaign");
        let body = MessageBody::PreVote {
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
        };
        let term = self.term + 1;
        for v in self.other_voters() {
            self.send_with_term(v, term, body.clone());
        }
        self.tally_election(true);
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.term += 1;
        self.vote = Some(self.config.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.reset_role_state();
        self.votes.insert(self.config.id, true);
        tracing::info!(id = self.id(), term = self.term, transfer, "campaign");
        let body = MessageBody::Vote {
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        for v in self.other_voters() {
            self.send(v, body.clone());
        }
        self.tally_election(false);
    }

    fn other_voters(&self) -> Vec<NodeId> {
        #[cfg(any(test, madsim))]
        if self.config.bugs.votes_from_non_voters {
            // The planted bug canvasses learners as well (and counts their votes).
            return (self.membership.voters.iter())
                .chain(self.membership.learners.iter())
                .copied()
                .filter(|v| *v != self.config.id)
                .collect();
        }
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.config.id)
            .collect()
    }

    fn become_leader(&mut self) {
        tracing::info!(
            id = self.id(),
            term = self.term,
            last_index = self.log.last_index(),
            "leader"
        );
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.reset_role_state();
        self.election_elapsed = 0;
        self.sync_progress_with_membership();
        if self.log_lacks_bootstrap() {
            let change = bootstrap_change(&self.membership);
            self.append_local(EntryPayload::Membership(change));
        }
        self.append_local(EntryPayload::Noop);
    }

    /// True when no snapshot covers the log start and the log's membership entries alone do
    /// not rebuild the membership (a node joining with an empty `initial_membership` would
    /// see a wrong configuration). The earlier bootstrap may be missing or only partly
    /// replicated before its leader failed.
    fn log_lacks_bootstrap(&self) -> bool {
        if self.log.snapshot_index() > 0 {
            return false;
        }
        let mut from_log = Membership::default();
        for e in self.log.entries() {
            if let EntryPayload::Membership(change) = &e.payload {
                apply_change(&mut from_log, change);
            }
        }
        from_log != self.membership
    }

    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader(NotLeader {
                leader: self.leader,
            }));
        }
        if to == self.config.id {
            return Ok(());
        }
        if !self.membership.voters.contains(&to) {
            return Err(ProposeError::UnknownNode(to));
        }
        match self.lead_transferee {
            Some(t) if t == to => return Ok(()),
            Some(_) => return Err(ProposeError::TransferInProgress),
            None => {}
        }
        tracing::info!(id = self.id(), to, "leadership transfer");
        self.lead_transferee = Some(to);
        self.transfer_elapsed = 0;
        self.timeout_now_sent = false;
        self.maybe_send_timeout_now();
        if !self.timeout_now_sent {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Sends TimeoutNow once the transfer target has the whole log.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(to) = self.lead_transferee else {
            return;
        };
        if self.timeout_now_sent {
            return;
        }
        if self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index())
        {
            self.timeout_now_sent = true;
            self.send(to, MessageBody::TimeoutNow);
        }
    }
}
