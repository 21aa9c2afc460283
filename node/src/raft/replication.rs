//! Log replication: Appends with flow control, heartbeats, InstallSnapshot, conflict back-off
//! and the commit rule.
//!
//! Rules (Raft §5.3, §5.4.2, §7):
//! - a follower accepts an Append only if its log holds `prev_index` with `prev_term`; it then
//!   truncates at the first conflicting entry (never a committed one) and appends the rest;
//! - a rejection carries a `RejectHint` so the leader skips a whole term per round trip;
//! - the leader commits index `i` only when a quorum of voters has it durable and the entry
//!   at `i` is of the leader's current term (Figure 8); its own copy counts once persisted;
//! - a follower's commit never passes the last entry it knows to match the leader's log.

use super::log::check_shape;
use super::progress::ProgressState;
use super::types::{Entry, LogIndex, MessageBody, NodeId, RejectHint, Role, Snapshot, Term};
use super::Raft;

impl Raft {
    pub(super) fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_append(to, true);
        }
    }

    /// Sends `to` the entries it needs next (or a snapshot). `allow_empty`: also send an Append
    /// without entries (to carry the commit index or probe). Returns whether a message went out.
    pub(super) fn send_append(&mut self, to: NodeId, allow_empty: bool) -> bool {
        let max_inflight = self.config.max_inflight_appends;
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.is_paused(max_inflight) {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            return self.send_snapshot(to);
        };
        let entries = self.log.entries_for_append(
            next,
            self.config.max_append_entries,
            self.config.max_append_bytes,
        );
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let last = entries.last().map(|e| e.index);
        if let (Some(last), Some(pr)) = (last, self.progress.get_mut(&to)) {
            pr.sent_entries(last);
        } else if let Some(pr) = self.progress.get_mut(&to) {
            if pr.state == ProgressState::Probe {
                pr.probe_sent = true;
            }
        }
        let commit = self.log.commit;
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let Some(snapshot) = self.snapshot.clone() else {
            tracing::warn!(
                id = self.id(),
                to,
                "follower needs a snapshot but none is loaded (call snapshot_saved)"
            );
            return false;
        };
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(snapshot.meta.index);
        }
        // Debug: the core asks again on every stall interval while a shard's snapshot streams
        // (the stream logs its start and end once, at info).
        tracing::debug!(
            id = self.id(),
            to,
            index = snapshot.meta.index,
            "sending snapshot"
        );
        self.send(to, MessageBody::InstallSnapshot { snapshot });
        true
    }

    pub(super) fn bcast_heartbeat(&mut self) {
        let read_seq = self.reads.last_seq();
        let targets: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(id, pr)| (*id, pr.matched.min(self.log.commit)))
            .collect();
        for (to, commit) in targets {
            self.send(to, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        mut prev_index: LogIndex,
        mut prev_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        if check_shape(&entries, prev_index + 1, prev_term).is_err()
            || entries.last().is_some_and(|e| e.term > self.term)
        {
            tracing::error!(id = self.id(), from, prev_index, "malformed Append ignored");
            return;
        }
        let commit = self.log.commit;
        if prev_index < commit {
            // Everything up to our commit index matches the leader: skip that part.
            entries.retain(|e| e.index > commit);
            if entries.is_empty() {
                self.send(
                    from,
                    MessageBody::AppendResponse {
                        success: true,
                        index: commit,
                        reject_hint: None,
                    },
                );
                return;
            }
            prev_index = commit;
            prev_term = self.log.term(commit).unwrap_or(0);
        }
        if !self.log.matches(prev_index, prev_term) {
            let reject_hint = Some(self.reject_hint(prev_index));
            tracing::debug!(
                id = self.id(),
                from,
                prev_index,
                ?reject_hint,
                "Append rejected"
            );
            self.send(
                from,
                MessageBody::AppendResponse {
                    success: false,
                    index: prev_index,
                    reject_hint,
                },
            );
            return;
        }
        let last_new = prev_index + entries.len() as LogIndex;
        let old_last = self.log.last_index();
        match self.log.append_after_match(entries) {
            Err(at) => {
                tracing::error!(
                    id = self.id(),
                    from,
                    at,
                    "Append conflicts with a committed entry: ignored"
                );
                return;
            }
            Ok(Some(truncated)) if truncated <= self.last_membership_index => {
                self.recompute_membership()
            }
            Ok(Some(truncated)) => self.on_entries_appended(truncated),
            Ok(None) => self.on_entries_appended(old_last + 1),
        }
        self.commit_to(leader_commit.min(last_new));
        self.send(
            from,
            MessageBody::AppendResponse {
                success: true,
                index: last_new,
                reject_hint: None,
            },
        );
    }

    fn reject_hint(&self, prev_index: LogIndex) -> RejectHint {
        if prev_index > self.log.last_index() {
            return RejectHint {
                conflict_term: None,
                conflict_index: self.log.last_index() + 1,
            };
        }
        RejectHint {
            conflict_term: self.log.term(prev_index),
            conflict_index: self.log.first_index_of_term_at(prev_index),
        }
    }

    /// Follower: advance commit (never backwards, never past the log).
    pub(super) fn commit_to(&mut self, index: LogIndex) {
        let index = index.min(self.log.last_index());
        if index > self.log.commit {
            self.log.commit = index;
        }
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, commit: LogIndex, read_seq: u64) {
        self.commit_to(commit);
        self.send(from, MessageBody::HeartbeatResponse { read_seq });
    }

    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let meta = snapshot.meta.clone();
        if meta.index <= self.log.commit {
            let index = self.log.commit;
            self.send(from, MessageBody::InstallSnapshotResponse { index });
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            self.commit_to(meta.index);
        } else {
            tracing::info!(
                id = self.id(),
                from,
                index = meta.index,
                "installing snapshot"
            );
            self.log.restore(meta.index, meta.term);
            self.base_membership = meta.membership.clone();
            self.recompute_membership();
            self.snapshot_meta = Some(meta.clone());
            self.snapshot = Some(snapshot.clone());
            self.pending_snapshot = Some(snapshot);
        }
        let index = self.log.commit;
        self.send(from, MessageBody::InstallSnapshotResponse { index });
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: LogIndex,
        reject_hint: Option<RejectHint>,
    ) {
        let last_index = self.log.last_index();
        let hint_next = reject_hint.map(|h| match h.conflict_term {
            Some(t) => self
                .log
                .last_index_of_term(t, index)
                .map_or(h.conflict_index, |i| i + 1),
            None => h.conflict_index,
        });
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if success {
            if index > last_index {
                tracing::error!(
                    id = self.config.id,
                    from,
                    index,
                    "ack beyond our log ignored"
                );
                return;
            }
            if pr.acknowledge(index) && self.maybe_commit() {
                self.bcast_append();
            }
            while self.send_append(from, false) {}
            self.maybe_send_timeout_now();
        } else if index <= last_index {
            let hint_next = hint_next.unwrap_or(index);
            if pr.reject(index, hint_next) {
                tracing::debug!(
                    id = self.config.id,
                    from,
                    index,
                    hint_next,
                    "follower rejected: probing"
                );
                self.send_append(from, true);
            }
        }
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        let max_inflight = self.config.max_inflight_appends;
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.probe_sent = false;
        pr.read_ack_seq = pr.read_ack_seq.max(read_seq);
        if pr.state == ProgressState::Replicate && pr.inflight.len() >= max_inflight {
            pr.inflight.pop_front();
        }
        if pr.matched < last_index {
            self.send_append(from, true);
        }
        self.confirm_reads();
    }

    pub(super) fn handle_install_snapshot_response(&mut self, from: NodeId, index: LogIndex) {
        if index > self.log.last_index() {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let moved = index > pr.matched;
        pr.matched = pr.matched.max(index);
        if matches!(pr.state, ProgressState::Snapshot { .. }) {
            pr.next = pr.matched + 1;
            pr.become_probe();
        }
        // Also when a stall already put it back to probing: its `next` may lie below the
        // snapshot it now holds (probing there would send it another snapshot).
        pr.next = pr.next.max(pr.matched + 1);
        if moved && self.maybe_commit() {
            self.bcast_append();
        }
        self.send_append(from, false);
    }

    /// Leader: advances commit to the highest index durable on a quorum of voters, if that
    /// entry is of the current term. Returns whether commit moved.
    pub(super) fn maybe_commit(&mut self) -> bool {
        if self.role != Role::Leader {
            return false;
        }
        let me = self.config.id;
        let mut matched: Vec<LogIndex> = self
            .membership
            .voters
            .iter()
            .map(|v| {
                if *v == me {
                    self.log.persisted
                } else {
                    self.progress.get(v).map_or(0, |p| p.matched)
                }
            })
            .collect();
        if matched.is_empty() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.quorum() - 1];
        if candidate <= self.log.commit {
            return false;
        }
        let current_term = self.log.term(candidate) == Some(self.term);
        if !current_term && !self.bug_commit_counts_old_terms() {
            return false;
        }
        self.log.commit = candidate;
        self.on_commit_advanced();
        true
    }

    fn on_commit_advanced(&mut self) {
        if !self.is_voter() && self.last_membership_index <= self.log.commit {
            tracing::info!(id = self.id(), "removed from the voters: stepping down");
            self.become_follower(self.term, None);
        }
    }

    fn bug_commit_counts_old_terms(&self) -> bool {
        #[cfg(any(test, madsim))]
        {
            self.config.bugs.commit_counts_old_terms
        }
        #[cfg(not(any(test, madsim)))]
        {
            false
        }
    }
}
