//! ReadIndex: linearizable reads without writing to the log (Raft dissertation §6.4).
//!
//! A read requested at the leader waits until the leader has committed an entry of its own
//! term (so its commit index is at least that of every earlier leader), then joins a round:
//! the round records the commit index as its read index and broadcasts a heartbeat carrying
//! the round's `read_seq`. Once a quorum of voters has answered a heartbeat with a `read_seq`
//! at least that of the round, this node was still leader after the read was requested, and
//! the read may be served once the applied index reaches the read index. All reads requested
//! between two Readys share one round. Reads pending when leadership is lost are dropped: the
//! runtime fails them when `Ready.soft_state` shows this node is no longer leader.

use std::collections::VecDeque;

use super::types::{LogIndex, ReadState, Role};
use super::{NotLeader, Raft};

#[derive(Debug)]
struct ReadRound {
    seq: u64,
    index: LogIndex,
    ctxs: Vec<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct ReadIndexState {
    /// Requested, not yet in a round.
    waiting: Vec<u64>,
    rounds: VecDeque<ReadRound>,
    /// The seq of the latest round started (monotonic for the life of the process).
    seq: u64,
    confirmed: Vec<ReadState>,
}

impl ReadIndexState {
    pub(crate) fn clear(&mut self) {
        if !self.waiting.is_empty() || !self.rounds.is_empty() {
            tracing::debug!(
                waiting = self.waiting.len(),
                rounds = self.rounds.len(),
                "dropping reads"
            );
        }
        self.waiting.clear();
        self.rounds.clear();
    }

    pub(crate) fn has_output(&self, can_start_round: bool) -> bool {
        !self.confirmed.is_empty() || (can_start_round && !self.waiting.is_empty())
    }

    pub(crate) fn take_confirmed(&mut self) -> Vec<ReadState> {
        std::mem::take(&mut self.confirmed)
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.seq
    }
}

impl Raft {
    /// Requests a linearizable read; `ReadState { ctx, index }` arrives in a later Ready once
    /// leadership is confirmed.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), NotLeader> {
        if self.role != Role::Leader {
            return Err(NotLeader {
                leader: self.leader,
            });
        }
        self.reads.waiting.push(ctx);
        Ok(())
    }

    /// Leader: puts every waiting read into one new round, once an entry of this term is
    /// committed.
    pub(super) fn start_read_round(&mut self) {
        #[cfg(any(test, madsim))]
        let term_committed =
            self.committed_current_term() || self.config.bugs.read_before_term_commit;
        #[cfg(not(any(test, madsim)))]
        let term_committed = self.committed_current_term();
        if self.reads.waiting.is_empty() || !term_committed {
            return;
        }
        self.reads.seq += 1;
        let round = ReadRound {
            seq: self.reads.seq,
            index: self.log.commit,
            ctxs: std::mem::take(&mut self.reads.waiting),
        };
        self.reads.rounds.push_back(round);
        self.bcast_heartbeat();
        self.confirm_reads();
    }

    /// Releases every round acknowledged by a quorum of voters.
    pub(super) fn confirm_reads(&mut self) {
        if self.reads.rounds.is_empty() {
            return;
        }
        let me = self.config.id;
        let mut acks: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|v| {
                if *v == me {
                    u64::MAX
                } else {
                    self.progress.get(v).map_or(0, |p| p.read_ack_seq)
                }
            })
            .collect();
        if acks.is_empty() {
            return;
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        #[allow(unused_mut)]
        let mut confirmed_seq = acks[self.quorum() - 1];
        #[cfg(any(test, madsim))]
        if self.config.bugs.read_skips_quorum {
            confirmed_seq = u64::MAX;
        }
        while self
            .reads
            .rounds
            .front()
            .is_some_and(|r| r.seq <= confirmed_seq)
        {
            let Some(round) = self.reads.rounds.pop_front() else {
                break;
            };
            for ctx in round.ctxs {
                self.reads.confirmed.push(ReadState {
                    ctx,
                    index: round.index,
                });
            }
        }
    }
}
