//! The Wing–Gong / Lowe linearizability search for one register (one key).
//!
//! Events live in an array-backed doubly linked list (call and return entries in real-time
//! order). The search repeatedly linearizes a *minimal* call (one before the first pending
//! return), lifting its entries out of the list, and backtracks when it reaches a return whose
//! op is not yet linearized. Visited configurations (set of linearized ops, register state) are
//! memoized, so no configuration is explored twice. Exact reductions, each argued in its comment:
//! - unknown (info) ops have no return entry and are optional: success is reached when every
//!   *required* (ok) op is linearized, so an info op may take effect anywhere after its
//!   invocation, or never;
//! - info ops that can never matter are dropped before the search (`prune_unknown`);
//! - identical info ops are linearized in invocation order (symmetry);
//! - a pure op (ok read, ok cas mismatch) that can be linearized now is linearized now;
//! - an unknown op that took effect is immediately followed by an op that observes its result
//!   (otherwise the next op is blind and the unknown op can be dropped).
//!
//! Candidates are tried pure ops first, then earliest deadline first (`Searcher::order_key`);
//! the order only steers the search, every candidate of a configuration is tried before it is
//! abandoned. Model states are `Option<i64>` (absent or a value): `Copy`, so a step allocates
//! nothing.

use crate::history::OpId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// The register's state: absent (`None`) or a value.
pub type RegisterState = Option<i64>;

/// A register operation as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// An ok read that returned this state.
    Read(RegisterState),
    Write(i64),
    /// A cas that took effect (ok) or may have (info).
    Cas {
        expected: i64,
        new: i64,
    },
    /// An ok cas that definitely did not take effect: the state was not `Some(expected)`.
    CasMismatch {
        expected: i64,
    },
    Delete,
}

impl Step {
    /// Applies the step; `None` when it cannot happen in `state`.
    #[inline]
    pub fn apply(self, state: RegisterState) -> Option<RegisterState> {
        match self {
            Step::Read(v) => (state == v).then_some(state),
            Step::Write(v) => Some(Some(v)),
            Step::Cas { expected, new } => (state == Some(expected)).then_some(Some(new)),
            Step::CasMismatch { expected } => (state != Some(expected)).then_some(state),
            Step::Delete => Some(None),
        }
    }

    /// The state this step leaves behind, if it does not depend on the state.
    pub fn produces_state(self) -> Option<RegisterState> {
        self.produces()
    }

    fn produces(self) -> Option<RegisterState> {
        match self {
            Step::Write(v) | Step::Cas { new: v, .. } => Some(Some(v)),
            Step::Delete => Some(None),
            Step::Read(_) | Step::CasMismatch { .. } => None,
        }
    }
}

/// One operation of one key, compiled for the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyOp {
    pub id: OpId,
    /// Sequence number of the invocation event.
    pub call: u64,
    /// Sequence number of the completion event for required (ok) ops; `None` for unknown ops.
    pub ret: Option<u64>,
    pub step: Step,
}

impl KeyOp {
    fn is_pure(&self) -> bool {
        self.ret.is_some() && matches!(self.step, Step::Read(_) | Step::CasMismatch { .. })
    }

    /// Writes and deletes: the state after them does not depend on the state before.
    fn is_blind(&self) -> bool {
        matches!(self.step, Step::Write(_) | Step::Delete)
    }
}

/// Why a search gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaveUp {
    Timeout,
    MemoryLimit,
    StepLimit,
    /// Another key already failed (early exit).
    Cancelled,
}

/// Limits and shared signals for one search.
pub struct SearchControl<'a> {
    pub deadline: Option<Instant>,
    pub max_steps: Option<u64>,
    pub max_memory_bytes: usize,
    /// Memory used by all concurrent searches, in bytes.
    pub memory_used_bytes: &'a AtomicUsize,
    pub cancel: &'a AtomicBool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchResult {
    Linearizable,
    /// No linearization exists. `focus_states`: distinct states in which the focus op (if any)
    /// was tried and could not be applied (at most `MAX_FOCUS_STATES`).
    /// `deepest_return`: the latest first-pending-return any configuration reached; the events
    /// before it form the longest linearizable prefix, and it is the completion of the op
    /// that cannot be placed.
    Violation {
        focus_states: Vec<RegisterState>,
        focus_tried: bool,
        deepest_return: u64,
    },
    GaveUp(GaveUp),
}

/// How many distinct rejected states explanations keep for the focus op.
pub const MAX_FOCUS_STATES: usize = 8;
/// Steps (configurations visited) between two looks at the clock and the cancel flag.
const CONTROL_INTERVAL_STEPS: u64 = 1024;

/// Drops unknown ops that provably cannot change the verdict, until nothing changes:
/// - an info cas whose expected value no op (nor the initial state) can produce never succeeds;
/// - an info write/cas/delete X leaving state `s` is dropped when no op that could be
///   linearized after X observes `s`: no read returning `s`, no cas expecting `s` and no ok
///   cas-mismatch expecting something else completes after X's invocation. In any
///   linearization the op after X is then blind (write/delete), so X's effect is never seen
///   and the linearization without X is valid too.
pub fn prune_unknown(ops: &mut Vec<KeyOp>, initial: RegisterState) {
    use std::collections::{HashMap, HashSet};
    loop {
        let before = ops.len();
        let mut producible: HashSet<RegisterState> = HashSet::new();
        producible.insert(initial);
        // Latest completion among the ops observing each state (unknown ops: u64::MAX).
        let mut last_observer: HashMap<RegisterState, u64> = HashMap::new();
        // The latest mismatch (completion, expected), and the latest with another expected.
        let mut mismatch_latest: Option<(u64, i64)> = None;
        let mut mismatch_other_ret = 0u64;
        for o in ops.iter() {
            if let Some(p) = o.step.produces() {
                producible.insert(p);
            }
            let ret = o.ret.unwrap_or(u64::MAX);
            let observed = match o.step {
                Step::Read(v) => Some(v),
                Step::Cas { expected, .. } => Some(Some(expected)),
                _ => None,
            };
            if let Some(v) = observed {
                let latest = last_observer.entry(v).or_insert(0);
                *latest = (*latest).max(ret);
            }
            if let Step::CasMismatch { expected } = o.step {
                mismatch_latest = match mismatch_latest {
                    None => Some((ret, expected)),
                    Some((r, e)) if ret > r => {
                        if e != expected {
                            mismatch_other_ret = mismatch_other_ret.max(r);
                        }
                        Some((ret, expected))
                    }
                    Some((r, e)) => {
                        if e != expected {
                            mismatch_other_ret = mismatch_other_ret.max(ret);
                        }
                        Some((r, e))
                    }
                };
            }
        }
        let mismatch_after = |state: RegisterState| match mismatch_latest {
            None => 0,
            Some((ret, expected)) if state != Some(expected) => ret,
            Some(_) => mismatch_other_ret,
        };
        ops.retain(|o| {
            if o.ret.is_some() {
                return true;
            }
            if let Step::Cas { expected, .. } = o.step {
                if !producible.contains(&Some(expected)) {
                    return false;
                }
            }
            match o.step.produces() {
                Some(p) => {
                    let observer = last_observer.get(&p).copied().unwrap_or(0);
                    observer > o.call || mismatch_after(p) > o.call
                }
                None => true,
            }
        });
        if ops.len() == before {
            return;
        }
    }
}

const NONE: u32 = u32::MAX;

/// The event list: node 0 is the head sentinel, the last node the tail sentinel.
struct EventList {
    next: Vec<u32>,
    prev: Vec<u32>,
    /// For each node: the op index, and whether it is a call entry.
    node_op: Vec<u32>,
    node_is_call: Vec<bool>,
    /// Event sequence number of each node.
    node_seq: Vec<u64>,
    call_node: Vec<u32>,
    ret_node: Vec<u32>,
    tail: u32,
}

impl EventList {
    fn new(ops: &[KeyOp]) -> EventList {
        let mut events: Vec<(u64, u32, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, o) in ops.iter().enumerate() {
            events.push((o.call, i as u32, true));
            if let Some(r) = o.ret {
                events.push((r, i as u32, false));
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let nodes = events.len() + 2;
        let tail = (nodes - 1) as u32;
        let mut list = EventList {
            next: (1..=nodes as u32).collect(),
            prev: (0..nodes as u32).map(|i| i.wrapping_sub(1)).collect(),
            node_op: vec![NONE; nodes],
            node_is_call: vec![false; nodes],
            node_seq: vec![u64::MAX; nodes],
            call_node: vec![NONE; ops.len()],
            ret_node: vec![NONE; ops.len()],
            tail,
        };
        list.next[tail as usize] = NONE;
        for (index, &(seq, op, is_call)) in events.iter().enumerate() {
            let node = index + 1;
            list.node_seq[node] = seq;
            list.node_op[node] = op;
            list.node_is_call[node] = is_call;
            if is_call {
                list.call_node[op as usize] = node as u32;
            } else {
                list.ret_node[op as usize] = node as u32;
            }
        }
        list
    }

    fn unlink(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = n;
        self.prev[n as usize] = p;
    }

    fn relink(&mut self, node: u32) {
        let (p, n) = (self.prev[node as usize], self.next[node as usize]);
        self.next[p as usize] = node;
        self.prev[n as usize] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if self.ret_node[op] != NONE {
            self.unlink(self.ret_node[op]);
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.ret_node[op] != NONE {
            self.relink(self.ret_node[op]);
        }
        self.relink(self.call_node[op]);
    }
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The model state plus whether the next op must observe it (see `Searcher::run`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    state: RegisterState,
    must_observe: bool,
}

fn config_hash(config: Config) -> u64 {
    let state = match config.state {
        None => mix(0x5EED_0000_0000_0001),
        Some(v) => mix(v as u64 ^ 0xA5A5_5A5A_0F0F_F0F0),
    };
    if config.must_observe {
        mix(state)
    } else {
        state
    }
}

/// Visited configurations: an open-addressing table over (bitset, state) with the bitsets
/// stored flat. Insertion allocates only when the arena grows.
struct Memo {
    words: usize,
    bits: Vec<u64>,
    states: Vec<Config>,
    /// (hash, entry + 1); 0 marks an empty slot.
    slots: Vec<(u64, u32)>,
    len: usize,
}

impl Memo {
    fn new(words: usize) -> Memo {
        Memo {
            words,
            bits: Vec::new(),
            states: Vec::new(),
            slots: vec![(0, 0); 1024],
            len: 0,
        }
    }

    fn bytes_per_entry(&self) -> usize {
        self.words * 8
            + std::mem::size_of::<RegisterState>()
            + 2 * std::mem::size_of::<(u64, u32)>()
    }

    /// Inserts; false when already present.
    fn insert(&mut self, hash: u64, bits: &[u64], state: Config) -> bool {
        let mask = self.slots.len() - 1;
        let mut slot = (hash as usize) & mask;
        loop {
            let (h, entry) = self.slots[slot];
            if entry == 0 {
                break;
            }
            if h == hash {
                let e = (entry - 1) as usize;
                if self.states[e] == state
                    && &self.bits[e * self.words..(e + 1) * self.words] == bits
                {
                    return false;
                }
            }
            slot = (slot + 1) & mask;
        }
        self.bits.extend_from_slice(bits);
        self.states.push(state);
        self.len += 1;
        self.slots[slot] = (hash, self.len as u32);
        if self.len * 2 > self.slots.len() {
            self.grow();
        }
        true
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        self.slots = vec![(0, 0); old.len() * 2];
        let mask = self.slots.len() - 1;
        for (h, entry) in old.into_iter().filter(|s| s.1 != 0) {
            let mut slot = (h as usize) & mask;
            while self.slots[slot].1 != 0 {
                slot = (slot + 1) & mask;
            }
            self.slots[slot] = (h, entry);
        }
    }
}

/// Searches for a linearization of `ops` (one key) from `initial`. `focus`: an op id whose
/// rejected states are recorded for explanations.
pub fn search(
    ops: &[KeyOp],
    initial: RegisterState,
    control: &SearchControl<'_>,
    focus: Option<OpId>,
) -> SearchResult {
    let mut ops: Vec<KeyOp> = ops.to_vec();
    prune_unknown(&mut ops, initial);
    ops.sort_by_key(|o| o.call);
    let mut searcher = Searcher::new(&ops, initial, focus);
    let result = searcher.run(control);
    control
        .memory_used_bytes
        .fetch_sub(searcher.memory_charged_bytes, Ordering::Relaxed);
    result
}

struct Searcher<'o> {
    ops: &'o [KeyOp],
    list: EventList,
    /// For each info op: the previous info op with the identical step (symmetry), or NONE.
    same_before: Vec<u32>,
    /// For each info op: completions (sorted) of the required ops that observe the state it
    /// produces (reads of it, cas expecting it); see `order_key`.
    observer_rets: Vec<Vec<u64>>,
    zobrist: Vec<u64>,
    bits: Vec<u64>,
    memo: Memo,
    state: RegisterState,
    focus: Option<usize>,
    focus_states: Vec<RegisterState>,
    focus_tried: bool,
    deepest_return: u64,
    memory_charged_bytes: usize,
}

impl<'o> Searcher<'o> {
    fn new(ops: &'o [KeyOp], initial: RegisterState, focus: Option<OpId>) -> Searcher<'o> {
        let mut same_before = vec![NONE; ops.len()];
        let mut last_same: std::collections::HashMap<Step, u32> = std::collections::HashMap::new();
        for (i, o) in ops.iter().enumerate() {
            if o.ret.is_none() {
                if let Some(prev) = last_same.insert(o.step, i as u32) {
                    same_before[i] = prev;
                }
            }
        }
        let mut observed_by: std::collections::HashMap<RegisterState, Vec<u64>> =
            std::collections::HashMap::new();
        for o in ops.iter() {
            let observed = match o.step {
                Step::Read(v) => Some(v),
                Step::Cas { expected, .. } => Some(Some(expected)),
                _ => None,
            };
            if let (Some(v), Some(ret)) = (observed, o.ret) {
                observed_by.entry(v).or_default().push(ret);
            }
        }
        for list in observed_by.values_mut() {
            list.sort_unstable();
        }
        let observer_rets = ops
            .iter()
            .map(|o| match (o.ret, o.step.produces()) {
                (None, Some(p)) => observed_by.get(&p).cloned().unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect();
        let words = ops.len().div_ceil(64).max(1);
        Searcher {
            ops,
            list: EventList::new(ops),
            same_before,
            observer_rets,
            zobrist: (0..ops.len() as u64)
                .map(|i| mix(i.wrapping_mul(0x2545_F491_4F6C_DD1D)))
                .collect(),
            bits: vec![0; words],
            memo: Memo::new(words),
            state: initial,
            focus: focus.and_then(|id| ops.iter().position(|o| o.id == id)),
            focus_states: Vec::new(),
            focus_tried: false,
            deepest_return: 0,
            memory_charged_bytes: 0,
        }
    }

    fn is_set(&self, op: usize) -> bool {
        self.bits[op / 64] & (1 << (op % 64)) != 0
    }

    fn flip(&mut self, op: usize) {
        self.bits[op / 64] ^= 1 << (op % 64);
    }

    fn control(&mut self, control: &SearchControl<'_>, steps: u64) -> Option<GaveUp> {
        if control.cancel.load(Ordering::Relaxed) {
            return Some(GaveUp::Cancelled);
        }
        if control.max_steps.is_some_and(|max| steps > max) {
            return Some(GaveUp::StepLimit);
        }
        if control.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(GaveUp::Timeout);
        }
        let bytes = self.memo.len * self.memo.bytes_per_entry() + self.memo.slots.len() * 12;
        let delta = bytes.saturating_sub(self.memory_charged_bytes);
        self.memory_charged_bytes = bytes.max(self.memory_charged_bytes);
        let total = control
            .memory_used_bytes
            .fetch_add(delta, Ordering::Relaxed)
            + delta;
        (total > control.max_memory_bytes).then_some(GaveUp::MemoryLimit)
    }

    fn note_focus(&mut self, op: usize) {
        if Some(op) == self.focus {
            self.focus_tried = true;
            if self.focus_states.len() < MAX_FOCUS_STATES
                && !self.focus_states.contains(&self.state)
            {
                self.focus_states.push(self.state);
            }
        }
    }

    /// The order in which a configuration's candidates are tried: pure ops first (if one
    /// fits, it is forced), then earliest deadline first: a required op's completion, an
    /// unknown op's first observer completing at or after `frontier` (the first pending
    /// return; unobserved unknown ops last). The order only steers the search; every
    /// candidate is still tried.
    fn order_key(&self, op: usize, frontier: u64) -> OrderKey {
        let o = &self.ops[op];
        let deadline = match o.ret {
            Some(ret) => ret,
            None => {
                let rets = &self.observer_rets[op];
                rets.get(rets.partition_point(|&r| r < frontier))
                    .copied()
                    .unwrap_or(u64::MAX)
            }
        };
        (!o.is_pure(), deadline, o.call, op)
    }

    /// The minimal calls (before the first pending return) that can take effect now, with
    /// the state each leaves, in trying order.
    fn candidates(&mut self, must_observe: bool, out: &mut Vec<Candidate>) {
        out.clear();
        let mut entry = self.list.next[0];
        while entry != self.list.tail && self.list.node_is_call[entry as usize] {
            entry = self.list.next[entry as usize];
        }
        let frontier = if entry == self.list.tail {
            u64::MAX
        } else {
            self.list.node_seq[entry as usize]
        };
        self.deepest_return = self.deepest_return.max(frontier);
        let mut entry = self.list.next[0];
        while entry != self.list.tail && self.list.node_is_call[entry as usize] {
            let op = self.list.node_op[entry as usize] as usize;
            entry = self.list.next[entry as usize];
            let o = self.ops[op];
            let same = self.same_before[op];
            if same != NONE && !self.is_set(same as usize) {
                continue; // symmetry: the identical earlier unknown op goes first
            }
            if must_observe && o.is_blind() {
                continue;
            }
            match o.step.apply(self.state) {
                Some(next_state) => out.push((self.order_key(op, frontier), op, next_state)),
                None => self.note_focus(op),
            }
        }
        out.sort_unstable_by_key(|c| c.0);
    }

    fn run(&mut self, control: &SearchControl<'_>) -> SearchResult {
        let mut required_left = self.ops.iter().filter(|o| o.ret.is_some()).count();
        if required_left == 0 {
            return SearchResult::Linearizable;
        }
        // (op, its order key, configuration before it, memo hash before it)
        let mut stack: Vec<(usize, OrderKey, Config, u64)> = Vec::new();
        // After an unknown op takes effect, the next op must observe the state it left: were
        // the next one blind (write, delete), the unknown op's effect would be invisible and
        // the same linearization without it (the op "never happened") is equally valid.
        let mut must_observe = false;
        let mut hash = 0u64;
        let mut steps = 0u64;
        let mut candidates: Vec<Candidate> = Vec::new();
        // Candidates up to this key were already tried in the current configuration.
        let mut resume_after: Option<OrderKey> = None;
        loop {
            steps += 1;
            if steps.is_multiple_of(CONTROL_INTERVAL_STEPS) {
                if let Some(reason) = self.control(control, steps) {
                    return SearchResult::GaveUp(reason);
                }
            }
            self.candidates(must_observe, &mut candidates);
            let mut descended = false;
            for &(key, op, next_state) in &candidates {
                if resume_after.is_some_and(|r| key <= r) {
                    continue;
                }
                let o = self.ops[op];
                self.flip(op);
                let next_hash = hash ^ self.zobrist[op];
                let next = Config {
                    state: next_state,
                    must_observe: o.ret.is_none(),
                };
                if self
                    .memo
                    .insert(next_hash ^ config_hash(next), &self.bits, next)
                {
                    stack.push((
                        op,
                        key,
                        Config {
                            state: self.state,
                            must_observe,
                        },
                        hash,
                    ));
                    hash = next_hash;
                    self.state = next_state;
                    must_observe = next.must_observe;
                    self.list.lift(op);
                    if o.ret.is_some() {
                        required_left -= 1;
                        if required_left == 0 {
                            return SearchResult::Linearizable;
                        }
                    }
                    descended = true;
                    break;
                }
                self.flip(op);
                if o.is_pure() {
                    // A pure op that fits leads to an explored, failed configuration: this
                    // configuration fails too (see the module comment).
                    break;
                }
            }
            if descended {
                resume_after = None;
                continue;
            }
            // Backtrack: undo the last op; if it was pure, its parent configuration failed too.
            loop {
                let Some((op, key, before, previous_hash)) = stack.pop() else {
                    return SearchResult::Violation {
                        focus_states: std::mem::take(&mut self.focus_states),
                        focus_tried: self.focus_tried,
                        deepest_return: self.deepest_return,
                    };
                };
                self.state = before.state;
                must_observe = before.must_observe;
                hash = previous_hash;
                self.flip(op);
                self.list.unlift(op);
                if self.ops[op].ret.is_some() {
                    required_left += 1;
                }
                if !self.ops[op].is_pure() {
                    resume_after = Some(key);
                    break;
                }
            }
        }
    }
}

/// A candidate: its order key, op index, and the state it leaves.
type Candidate = (OrderKey, usize, RegisterState);

/// (not pure, completion sequence or MAX, invocation sequence, op index).
type OrderKey = (bool, u64, u64, usize);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ops: &[KeyOp]) -> SearchResult {
        let memory = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        let control = SearchControl {
            deadline: None,
            max_steps: None,
            max_memory_bytes: usize::MAX,
            memory_used_bytes: &memory,
            cancel: &cancel,
        };
        let result = search(ops, None, &control, None);
        assert_eq!(
            memory.load(Ordering::Relaxed),
            0,
            "memory accounting must return to zero"
        );
        result
    }

    fn op(id: u32, call: u64, ret: Option<u64>, step: Step) -> KeyOp {
        KeyOp {
            id: OpId(id),
            call,
            ret,
            step,
        }
    }

    #[test]
    fn concurrent_write_and_read_either_order() {
        let ops = [
            op(0, 0, Some(3), Step::Write(1)),
            op(1, 1, Some(2), Step::Read(Some(1))),
        ];
        assert_eq!(run(&ops), SearchResult::Linearizable);
        let ops = [
            op(0, 0, Some(3), Step::Write(1)),
            op(1, 1, Some(2), Step::Read(None)),
        ];
        assert_eq!(run(&ops), SearchResult::Linearizable);
    }

    #[test]
    fn read_before_write_invocation_is_rejected() {
        let ops = [
            op(0, 2, Some(3), Step::Write(1)),
            op(1, 0, Some(1), Step::Read(Some(1))),
        ];
        assert!(matches!(run(&ops), SearchResult::Violation { .. }));
    }

    #[test]
    fn unknown_write_may_land_late_or_never() {
        let ops = [
            op(0, 0, None, Step::Write(1)),
            op(1, 1, Some(2), Step::Read(None)),
            op(2, 3, Some(4), Step::Read(Some(1))),
            op(3, 5, Some(6), Step::Read(Some(1))),
        ];
        assert_eq!(run(&ops), SearchResult::Linearizable);
        let ops = [
            op(0, 0, None, Step::Write(1)),
            op(1, 1, Some(2), Step::Read(Some(1))),
            op(2, 3, Some(4), Step::Read(None)),
        ];
        assert!(matches!(run(&ops), SearchResult::Violation { .. }));
    }

    /// Distinct unknown writes, each observed by a long read, and a read of a value nobody
    /// wrote: the search space is exponential, so a small budget must give up, not guess.
    #[test]
    fn exhausted_budget_gives_up() {
        let mut ops = Vec::new();
        for i in 0..14u32 {
            ops.push(op(2 * i, u64::from(i), None, Step::Write(i64::from(i))));
            ops.push(op(
                2 * i + 1,
                u64::from(i),
                Some(1_000 + u64::from(i)),
                Step::Read(Some(i64::from(i))),
            ));
        }
        ops.push(op(100, 500, Some(2_000), Step::Read(Some(999))));
        let memory = AtomicUsize::new(0);
        let cancel = AtomicBool::new(false);
        let mut control = SearchControl {
            deadline: None,
            max_steps: None,
            max_memory_bytes: 4 << 20,
            memory_used_bytes: &memory,
            cancel: &cancel,
        };
        assert_eq!(
            search(&ops, None, &control, None),
            SearchResult::GaveUp(GaveUp::MemoryLimit)
        );
        assert_eq!(memory.load(Ordering::Relaxed), 0);
        control.max_memory_bytes = usize::MAX;
        control.max_steps = Some(100_000);
        assert_eq!(
            search(&ops, None, &control, None),
            SearchResult::GaveUp(GaveUp::StepLimit)
        );
        cancel.store(true, Ordering::Relaxed);
        control.max_steps = None;
        assert_eq!(
            search(&ops, None, &control, None),
            SearchResult::GaveUp(GaveUp::Cancelled)
        );
    }

    #[test]
    fn pruning_keeps_observed_and_drops_unobservable_unknowns() {
        let mut ops = vec![
            op(0, 0, None, Step::Write(1)),
            op(1, 1, None, Step::Write(2)),
            op(
                2,
                2,
                None,
                Step::Cas {
                    expected: 9,
                    new: 3,
                },
            ),
            op(3, 3, Some(4), Step::Read(Some(2))),
        ];
        prune_unknown(&mut ops, None);
        let kept: Vec<u32> = ops.iter().map(|o| o.id.0).collect();
        assert_eq!(kept, vec![1, 3]);
    }
}
