//! Sequential models beyond the register, for Redis's read-modify-write commands, and a small
//! linearizability search over any of them.
//!
//! - `Counter` (INCR/INCRBY/DECRBY): an i64 starting at 0 (an absent key counts as 0); an
//!   increment returns the value after it.
//! - `Appends` (APPEND): a byte string that only grows by concatenation; an append returns the
//!   length after it; a read returns the whole string.
//!
//! The search is Wing–Gong with memoized configurations (set of linearized ops, model state):
//! an op may be linearized once every op that completed before its invocation is; unknown
//! (`ret: None`) ops may take effect anywhere after their invocation, or never. It is exact and
//! meant for one key's history of modest length (the state space is exponential in the number
//! of concurrent ops); `max_configurations` bounds the work.

use std::collections::HashSet;
use std::hash::Hash;

/// A sequential specification: how an operation changes the state, or that it cannot happen.
pub trait Model {
    type State: Clone + Eq + Hash;
    type Op;
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// One operation of a history: invocation and completion event sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed<O> {
    pub call: u64,
    /// `None`: the outcome is unknown (it may have taken effect, or not).
    pub ret: Option<u64>,
    pub op: O,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelVerdict {
    Linearizable,
    NotLinearizable,
    /// Gave up after `max_configurations` configurations.
    Unknown,
}

/// INCR family: `Increment { delta, result }` (result `None` when not observed), `Read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterOp {
    Increment { delta: i64, result: Option<i64> },
    Read(i64),
}

pub struct Counter;

impl Model for Counter {
    type State = i64;
    type Op = CounterOp;
    fn step(&self, state: &i64, op: &CounterOp) -> Option<i64> {
        match *op {
            CounterOp::Increment { delta, result } => {
                let next = state.checked_add(delta)?;
                result.is_none_or(|r| r == next).then_some(next)
            }
            CounterOp::Read(value) => (value == *state).then_some(*state),
        }
    }
}

/// APPEND: `Append { suffix, len_after }` (length `None` when not observed), `Read`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOp {
    Append {
        suffix: Vec<u8>,
        len_after: Option<u64>,
    },
    Read(Vec<u8>),
}

pub struct Appends;

impl Model for Appends {
    type State = Vec<u8>;
    type Op = AppendOp;
    fn step(&self, state: &Vec<u8>, op: &AppendOp) -> Option<Vec<u8>> {
        match op {
            AppendOp::Append { suffix, len_after } => {
                let next = [state.as_slice(), suffix].concat();
                len_after
                    .is_none_or(|len| len == next.len() as u64)
                    .then_some(next)
            }
            AppendOp::Read(value) => (value == state).then(|| state.clone()),
        }
    }
}

/// Whether `ops` (one key's history) can be linearized under `model` from `initial`.
pub fn check<M: Model>(
    model: &M,
    initial: M::State,
    ops: &[Timed<M::Op>],
    max_configurations: usize,
) -> ModelVerdict {
    let mut search = Search {
        model,
        ops,
        seen: HashSet::new(),
        max_configurations,
        gave_up: false,
    };
    let mut done = vec![false; ops.len()];
    if search.extend(&mut done, initial) {
        ModelVerdict::Linearizable
    } else if search.gave_up {
        ModelVerdict::Unknown
    } else {
        ModelVerdict::NotLinearizable
    }
}

struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [Timed<M::Op>],
    seen: HashSet<(Vec<bool>, M::State)>,
    max_configurations: usize,
    gave_up: bool,
}

impl<M: Model> Search<'_, M> {
    /// Depth first: true when every completed op can be linearized after `done`.
    fn extend(&mut self, done: &mut [bool], state: M::State) -> bool {
        if (0..self.ops.len()).all(|i| done[i] || self.ops[i].ret.is_none()) {
            return true;
        }
        if self.seen.len() >= self.max_configurations {
            self.gave_up = true;
            return false;
        }
        if !self.seen.insert((done.to_vec(), state.clone())) {
            return false;
        }
        // An op may go next only if it was invoked before every pending op's completion.
        let first_return = (0..self.ops.len())
            .filter(|&i| !done[i])
            .filter_map(|i| self.ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            if done[i] || self.ops[i].call > first_return {
                continue;
            }
            if let Some(next) = self.model.step(&state, &self.ops[i].op) {
                done[i] = true;
                if self.extend(done, next) {
                    return true;
                }
                done[i] = false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: usize = 100_000;

    fn op<O>(call: u64, ret: Option<u64>, op: O) -> Timed<O> {
        Timed { call, ret, op }
    }

    fn incr(delta: i64, result: i64) -> CounterOp {
        CounterOp::Increment {
            delta,
            result: Some(result),
        }
    }

    #[test]
    fn counter_accepts_concurrent_increments_in_either_order() {
        // Two overlapping INCRs return 1 and 2 (either may be first); a later read sees 2.
        let ops = [
            op(0, Some(3), incr(1, 2)),
            op(1, Some(2), incr(1, 1)),
            op(4, Some(5), CounterOp::Read(2)),
        ];
        assert_eq!(check(&Counter, 0, &ops, BOUND), ModelVerdict::Linearizable);
    }

    #[test]
    fn counter_rejects_a_lost_or_doubled_increment() {
        // Sequential INCRs both answering 1: one increment was lost.
        let lost = [op(0, Some(1), incr(1, 1)), op(2, Some(3), incr(1, 1))];
        assert_eq!(
            check(&Counter, 0, &lost, BOUND),
            ModelVerdict::NotLinearizable
        );
        // A retried INCR applied twice: a read after one acknowledged INCR sees 2.
        let doubled = [
            op(0, Some(1), incr(1, 1)),
            op(2, Some(3), CounterOp::Read(2)),
        ];
        assert_eq!(
            check(&Counter, 0, &doubled, BOUND),
            ModelVerdict::NotLinearizable
        );
        // ... unless an unknown INCR may explain it.
        let explained = [
            op(0, Some(1), incr(1, 1)),
            op(
                0,
                None,
                CounterOp::Increment {
                    delta: 1,
                    result: None,
                },
            ),
            op(2, Some(3), CounterOp::Read(2)),
        ];
        assert_eq!(
            check(&Counter, 0, &explained, BOUND),
            ModelVerdict::Linearizable
        );
    }

    #[test]
    fn counter_rejects_a_stale_read() {
        let ops = [
            op(0, Some(1), incr(5, 5)),
            op(2, Some(3), CounterOp::Read(0)),
        ];
        assert_eq!(
            check(&Counter, 0, &ops, BOUND),
            ModelVerdict::NotLinearizable
        );
    }

    fn append(suffix: &str, len: u64) -> AppendOp {
        AppendOp::Append {
            suffix: suffix.as_bytes().to_vec(),
            len_after: Some(len),
        }
    }

    fn read(value: &str) -> AppendOp {
        AppendOp::Read(value.as_bytes().to_vec())
    }

    #[test]
    fn appends_grow_by_concatenation() {
        let ops = [
            op(0, Some(3), append("a,", 4)),
            op(1, Some(2), append("b,", 2)),
            op(4, Some(5), read("b,a,")),
        ];
        assert_eq!(
            check(&Appends, vec![], &ops, BOUND),
            ModelVerdict::Linearizable
        );
    }

    #[test]
    fn appends_reject_reordered_lost_and_duplicated_suffixes() {
        // Sequential appends read back in the wrong order.
        let reordered = [
            op(0, Some(1), append("a,", 2)),
            op(2, Some(3), append("b,", 4)),
            op(4, Some(5), read("b,a,")),
        ];
        assert_eq!(
            check(&Appends, vec![], &reordered, BOUND),
            ModelVerdict::NotLinearizable
        );
        // An acknowledged append missing from a later read.
        let lost = [op(0, Some(1), append("a,", 2)), op(2, Some(3), read(""))];
        assert_eq!(
            check(&Appends, vec![], &lost, BOUND),
            ModelVerdict::NotLinearizable
        );
        // An append applied twice (a retry without deduplication).
        let duplicated = [
            op(0, Some(1), append("a,", 2)),
            op(2, Some(3), read("a,a,")),
        ];
        assert_eq!(
            check(&Appends, vec![], &duplicated, BOUND),
            ModelVerdict::NotLinearizable
        );
        // A length that contradicts the order the reads show.
        let wrong_len = [op(0, Some(1), append("a,", 4)), op(2, Some(3), read("a,"))];
        assert_eq!(
            check(&Appends, vec![], &wrong_len, BOUND),
            ModelVerdict::NotLinearizable
        );
    }

    #[test]
    fn the_search_gives_up_at_its_bound() {
        // 12 concurrent increments (4,096 orders reach distinct subsets), then an impossible read.
        let mut ops: Vec<_> = (0..12)
            .map(|i| {
                let increment = CounterOp::Increment {
                    delta: 1 << i,
                    result: None,
                };
                op(0, Some(100), increment)
            })
            .collect();
        ops.push(op(101, Some(102), CounterOp::Read(-1)));
        assert_eq!(
            check(&Counter, 0, &ops, BOUND),
            ModelVerdict::NotLinearizable
        );
        assert_eq!(check(&Counter, 0, &ops, 50), ModelVerdict::Unknown);
    }
}
