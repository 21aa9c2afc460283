//! One-server-at-a-time membership changes (Raft dissertation §4.1), with learners.
//!
//! A configuration is in force on a node from the moment its entry is appended to that node's
//! log; truncating the entry reverts it. The leader proposes a change only when no other is
//! uncommitted and after committing an entry of its own term (the fix for the single-server
//! change bug described on raft-dev in 2015). A leader that removed itself steps down once
//! the removal commits.

use super::progress::Progress;
use super::types::{EntryPayload, LogIndex, Membership, MembershipChange, Role, Term};
use super::{NotLeader, ProposeError, Raft};

/// Applies one change to a membership. Changes that do not apply (promote a non-learner,
/// add an existing voter as learner) are no-ops, which the bootstrap entries of earlier
/// versions relied on.
pub(crate) fn apply_change(m: &mut Membership, change: &MembershipChange) {
    match change {
        MembershipChange::Bootstrap(whole) => *m = whole.clone(),
        MembershipChange::AddLearner(n) => {
            if !m.voters.contains(n) {
                m.learners.insert(*n);
            }
        }
        MembershipChange::Promote(n) => {
            if m.learners.remove(n) {
                m.voters.insert(*n);
            }
        }
        MembershipChange::Remove(n) => {
            m.voters.remove(n);
            m.learners.remove(n);
        }
    }
}

/// The entry that rebuilds `m` from an empty membership, written by the first leader of a log
/// that starts empty. It is ONE entry: every prefix of a log is then either without a
/// configuration (its holder cannot campaign) or with the real one, never a configuration the
/// cluster never had.
pub(crate) fn bootstrap_change(m: &Membership) -> MembershipChange {
    MembershipChange::Bootstrap(m.clone())
}

impl Raft {
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<(LogIndex, Term), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader(NotLeader {
                leader: self.leader,
            }));
        }
        if let Some(to) = self.handing_over() {
            return Err(ProposeError::NotLeader(Self::transferring(to)));
        }
        if self.membership_change_pending() {
            return Err(ProposeError::MembershipChangePending);
        }
        let m = &self.membership;
        match change {
            MembershipChange::AddLearner(n) => {
                if m.voters.contains(&n) || m.learners.contains(&n) {
                    return Err(ProposeError::AlreadyMember(n));
                }
            }
            MembershipChange::Promote(n) => {
                if m.voters.contains(&n) {
                    return Err(ProposeError::AlreadyMember(n));
                }
                if !m.learners.contains(&n) {
                    return Err(ProposeError::UnknownNode(n));
                }
            }
            MembershipChange::Remove(n) => {
                if !m.voters.contains(&n) && !m.learners.contains(&n) {
                    return Err(ProposeError::UnknownNode(n));
                }
                if m.voters.len() == 1 && m.voters.contains(&n) {
                    return Err(ProposeError::LastVoter(n));
                }
            }
            MembershipChange::Bootstrap(_) => return Err(ProposeError::BootstrapNotProposable),
        }
        let index = self.append_local(EntryPayload::Membership(change));
        Ok((index, self.term))
    }

    /// Rebuilds `membership` from the base and every membership entry in the log.
    pub(super) fn recompute_membership(&mut self) {
        let mut m = self.base_membership.clone();
        let mut last = 0;
        for e in self.log.entries() {
            if let EntryPayload::Membership(change) = &e.payload {
                apply_change(&mut m, change);
                last = e.index;
            }
        }
        self.membership = m;
        self.last_membership_index = last;
        self.sync_progress_with_membership();
    }

    /// Entries from `first` to the end of the log were just appended.
    pub(super) fn on_entries_appended(&mut self, first: LogIndex) {
        let mut changed = false;
        for e in self.log.slice(first, self.log.last_index()) {
            if let EntryPayload::Membership(change) = &e.payload {
                apply_change(&mut self.membership, change);
                self.last_membership_index = e.index;
                changed = true;
            }
        }
        if changed {
            tracing::info!(id = self.id(), membership = ?self.membership, "membership changed");
            self.sync_progress_with_membership();
        }
    }

    /// Leader: one Progress per member other than itself.
    pub(super) fn sync_progress_with_membership(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let me = self.config.id;
        let members: Vec<_> = self
            .membership
            .voters
            .iter()
            .chain(self.membership.learners.iter())
            .copied()
            .collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            if id != me {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next));
            }
        }
        if self
            .lead_transferee
            .is_some_and(|t| !self.membership.voters.contains(&t))
        {
            self.lead_transferee = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_change_rebuilds_membership_and_is_a_noop_for_members() {
        let mut m = Membership::default();
        m.voters.extend([1, 2, 3]);
        m.learners.insert(4);
        let change = bootstrap_change(&m);
        let mut rebuilt = Membership::default();
        let mut same = m.clone();
        apply_change(&mut rebuilt, &change);
        apply_change(&mut same, &change);
        assert_eq!(rebuilt, m);
        assert_eq!(same, m);
    }

    #[test]
    fn changes_apply_one_server_at_a_time() {
        let mut m = Membership::default();
        m.voters.insert(1);
        apply_change(&mut m, &MembershipChange::AddLearner(2));
        assert!(m.learners.contains(&2));
        apply_change(&mut m, &MembershipChange::Promote(2));
        assert!(m.voters.contains(&2) && !m.learners.contains(&2));
        apply_change(&mut m, &MembershipChange::Remove(1));
        assert_eq!(m.voters.iter().copied().collect::<Vec<_>>(), vec![2]);
    }
}
