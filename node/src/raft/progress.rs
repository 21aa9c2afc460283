//! What a leader knows about one follower's log, and the flow control of Appends to it.
//!
//! A follower is in one of three states: `Probe` (one Append in flight until it answers: used
//! after a rejection or when its position is unknown), `Replicate` (pipelined Appends, at most
//! `max_inflight_appends` unacknowledged) or `Snapshot` (an InstallSnapshot is in flight; no
//! Appends until it is acknowledged or stalls). Invariant: `matched < next`.
//!
//! `needs_from` is the first log index the follower will still ask for; the leader does not
//! compact its log past it (within bounds, see `Config::retained_log_entries_max`).

use std::collections::VecDeque;

use super::types::LogIndex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    Probe,
    Replicate,
    /// Waiting for an InstallSnapshot at `index` to be acknowledged.
    Snapshot {
        index: LogIndex,
        stall_ticks: u32,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) matched: LogIndex,
    pub(crate) next: LogIndex,
    pub(crate) state: ProgressState,
    /// Probe state: an Append is outstanding.
    pub(crate) probe_sent: bool,
    /// Replicate state: the last index of each unacknowledged Append, oldest first.
    pub(crate) inflight: VecDeque<LogIndex>,
    /// Heard from since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// Heard from in the CheckQuorum round before that.
    pub(crate) active_before: bool,
    /// Highest ReadIndex round (`read_seq`) this follower has acknowledged.
    pub(crate) read_ack_seq: u64,
    /// The index of the oldest snapshot sent to this follower since it last acknowledged
    /// reaching one (meaningful while above `matched`). A stalled InstallSnapshot is sent
    /// again, perhaps a newer one, while the first may still be on its way: a shard streams
    /// its snapshot for seconds to minutes and ignores the repeat, and the follower, once it
    /// has installed the first, asks for the entries after that one.
    pub(crate) snapshot_sent: Option<LogIndex>,
}

impl Progress {
    pub(crate) fn new(next: LogIndex) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            active_before: false,
            read_ack_seq: 0,
            snapshot_sent: None,
        }
    }

    /// The first log index this follower will ask the leader for: the entry after the oldest
    /// snapshot on its way to it, else the entry after its match index. None when it has not
    /// been heard from for a whole CheckQuorum round (one to two election timeouts): a
    /// member that is down does not hold the leader's log in memory.
    pub(crate) fn needs_from(&self) -> Option<LogIndex> {
        if !self.recent_active && !self.active_before {
            return None;
        }
        Some(match self.snapshot_sent {
            Some(index) if index > self.matched => index + 1,
            _ => self.matched + 1,
        })
    }

    /// A CheckQuorum round ends.
    pub(crate) fn start_activity_round(&mut self) {
        self.active_before = self.recent_active;
        self.recent_active = false;
    }

    pub(crate) fn is_paused(&self, max_inflight_appends: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= max_inflight_appends,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an Append carrying entries up to `last` (inclusive) as sent.
    pub(crate) fn sent_entries(&mut self, last: LogIndex) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last + 1;
                self.inflight.push_back(last);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// A successful AppendResponse up to `index`. Returns whether `matched` moved.
    pub(crate) fn acknowledge(&mut self, index: LogIndex) -> bool {
        let moved = index > self.matched;
        if moved {
            self.matched = index;
        }
        self.next = self.next.max(self.matched + 1);
        while self.inflight.front().is_some_and(|&last| last <= index) {
            self.inflight.pop_front();
        }
        self.probe_sent = false;
        match self.state {
            ProgressState::Probe => self.become_replicate(),
            ProgressState::Snapshot { index: snap, .. } if self.matched >= snap => {
                self.become_probe()
            }
            _ => {}
        }
        moved
    }

    pub(crate) fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        self.next = self.next.max(self.matched + 1);
    }

    fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.inflight.clear();
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, index: LogIndex) {
        self.snapshot_sent = Some(match self.snapshot_sent {
            Some(earlier) if earlier > self.matched => earlier.min(index),
            _ => index,
        });
        self.state = ProgressState::Snapshot {
            index,
            stall_ticks: 0,
        };
        self.inflight.clear();
        self.probe_sent = false;
    }

    /// A rejection of the Append whose previous index was `rejected`: move `next` back to
    /// `hint_next` (bounded to (matched, rejected]) and probe. Returns false for a stale
    /// rejection, which is ignored.
    pub(crate) fn reject(&mut self, rejected: LogIndex, hint_next: LogIndex) -> bool {
        let stale = match self.state {
            ProgressState::Replicate => false,
            ProgressState::Probe => rejected + 1 != self.next,
            ProgressState::Snapshot { .. } => true,
        };
        if stale || rejected <= self.matched {
            return false;
        }
        self.next = hint_next.clamp(self.matched + 1, rejected);
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_then_pipeline_after_ack() {
        let mut pr = Progress::new(5);
        assert!(!pr.is_paused(2));
        pr.sent_entries(7);
        assert!(pr.is_paused(2), "probe waits for an answer");
        assert_eq!(pr.next, 5, "probe does not advance next");
        assert!(pr.acknowledge(7));
        assert_eq!(pr.state, ProgressState::Replicate);
        assert_eq!(pr.next, 8);
        pr.sent_entries(9);
        pr.sent_entries(11);
        assert!(pr.is_paused(2), "inflight window full");
        pr.acknowledge(9);
        assert!(!pr.is_paused(2));
        assert_eq!((pr.matched, pr.next), (9, 12));
    }

    #[test]
    fn rejection_moves_back_and_stale_rejection_is_ignored() {
        let mut pr = Progress::new(10);
        pr.acknowledge(4);
        pr.sent_entries(8); // replicate: next 9
        assert!(!pr.reject(4, 1), "rejection at or below matched is stale");
        assert!(pr.reject(6, 2));
        assert_eq!(pr.state, ProgressState::Probe);
        assert_eq!(pr.next, 5, "never below matched + 1");
        assert!(
            !pr.reject(7, 6),
            "probe: only the outstanding rejection counts"
        );
    }

    #[test]
    fn a_follower_sent_a_snapshot_needs_the_entries_after_the_oldest_one() {
        let mut pr = Progress::new(3);
        pr.recent_active = true;
        pr.acknowledge(2);
        assert_eq!(pr.needs_from(), Some(3));
        pr.become_snapshot(10);
        assert_eq!(pr.needs_from(), Some(11));
        // Stalled, asked again with a newer snapshot: the first may still arrive.
        pr.become_probe();
        pr.become_snapshot(15);
        assert_eq!(pr.needs_from(), Some(11));
        // It installed the first one; later snapshots start a new count.
        pr.matched = 10;
        pr.become_probe();
        assert_eq!(pr.needs_from(), Some(11));
        pr.acknowledge(12);
        pr.become_snapshot(20);
        assert_eq!(pr.needs_from(), Some(21));
    }

    #[test]
    fn a_follower_silent_for_a_whole_round_needs_nothing_kept() {
        let mut pr = Progress::new(3);
        assert_eq!(pr.needs_from(), None, "never heard from");
        pr.recent_active = true;
        pr.start_activity_round();
        assert_eq!(pr.needs_from(), Some(1), "heard from in the round before");
        pr.start_activity_round();
        assert_eq!(pr.needs_from(), None);
    }
}
