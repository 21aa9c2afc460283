//! What a leader knows about one follower's log, and the flow control of Appends to it.
//!
//! A follower is in one of three states: `Probe` (one Append in flight until it answers: used
//! after a rejection or when its position is unknown), `Replicate` (pipelined Appends, at most
//! `max_inflight_appends` unacknowledged) or `Snapshot` (an InstallSnapshot is in flight; no
//! Appends until it is acknowledged or stalls). Invariant: `matched < next`.

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
    /// Highest ReadIndex round (`read_seq`) this follower has acknowledged.
    pub(crate) read_ack_seq: u64,
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
            read_ack_seq: 0,
        }
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
}
