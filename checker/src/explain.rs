//! Explanations of a violation, for people: which key, the longest linearizable prefix of that
//! key's history, the operation that cannot be placed and why, and a small failing
//! sub-history.
//!
//! Linearizability is prefix-closed (ops still pending at the cut are unknown, hence optional),
//! so the longest linearizable prefix is found by binary search over the key's events; the
//! event right after it is necessarily a completion, of the op that cannot be placed. The
//! sub-history is then shrunk by removing chunks of ops (delta debugging), keeping that op and,
//! for every value an op observes, an op that produces it, so the result still reads as a
//! story. Every step re-runs the exact search; when the budget runs out the result is reported
//! as not minimal rather than guessed.

use crate::history::{History, OkValue, Op, OpId, Outcome};
use crate::linearizability::{compile_key, CheckControl, CheckOptions, Violation};
use crate::search::{KeyOp, RegisterState, SearchResult, Step};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub key: String,
    /// The op whose completion makes the history non-linearizable.
    pub failing_op: OpId,
    /// Why it cannot be placed, in words.
    pub reason: String,
    /// States in which the failing op was tried and could not take effect (`None`: absent).
    pub rejected_states: Vec<Option<i64>>,
    /// Events of this key (ignoring failed ops and unknown reads) in the longest linearizable
    /// prefix, and the ops invoked within it.
    pub prefix_events: usize,
    pub prefix_ops: Vec<OpId>,
    /// The smallest failing sub-history found (ops of this key, in invocation order).
    pub minimal_ops: Vec<OpId>,
    /// True when no single op can be removed from `minimal_ops` (within the rules above).
    pub minimal_is_one_minimal: bool,
}

/// One event of the key: (sequence number, op index, is completion).
type KeyEvent = (u64, usize, bool);

fn key_events(ops: &[KeyOp]) -> Vec<KeyEvent> {
    let mut events: Vec<KeyEvent> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, i, false));
        if let Some(r) = o.ret {
            events.push((r, i, true));
        }
    }
    events.sort_unstable();
    events
}

/// The ops invoked within the first `len` events; ops completing later become unknown (pure
/// ones are dropped: an unknown read constrains nothing).
fn prefix(ops: &[KeyOp], events: &[KeyEvent], len: usize) -> Vec<KeyOp> {
    let Some(&(cut, _, _)) = len.checked_sub(1).and_then(|i| events.get(i)) else {
        return Vec::new();
    };
    ops.iter()
        .filter(|o| o.call <= cut)
        .filter_map(|o| match o.ret {
            Some(r) if r <= cut => Some(*o),
            _ if matches!(o.step, Step::Read(_) | Step::CasMismatch { .. }) => None,
            _ => Some(KeyOp { ret: None, ..*o }),
        })
        .collect()
}

enum Probe {
    Ok,
    Fails,
    GaveUp,
}

fn probe(control: &CheckControl, ops: &[KeyOp], initial: RegisterState) -> Probe {
    match control.search(ops, initial, None) {
        SearchResult::Linearizable => Probe::Ok,
        SearchResult::Violation { .. } => Probe::Fails,
        SearchResult::GaveUp(_) => Probe::GaveUp,
    }
}

/// Explains a violation found by `check_kv`. `None` when the key's history turns out
/// linearizable or the budget runs out before the failing op is found.
pub fn explain(
    history: &History,
    violation: &Violation,
    options: &CheckOptions,
) -> Option<Explanation> {
    let control = CheckControl::new(&options.budget);
    let initial = options.initial_value;
    let ops = compile_key(history, &violation.key);
    let events = key_events(&ops);
    // Invariant of the binary search: prefix(lo) linearizable, prefix(hi) not.
    let (mut lo, mut hi) = (0usize, events.len());
    let deepest = match control.search(&ops, initial, None) {
        SearchResult::Violation { deepest_return, .. } => deepest_return,
        SearchResult::Linearizable | SearchResult::GaveUp(_) => return None,
    };
    // The search's deepest point is the answer; confirm it with two probes (cheap compared
    // to a binary search of failing probes) and fall back to the binary search otherwise.
    let guess = events.partition_point(|e| e.0 < deepest);
    if guess < events.len() && events[guess].2 {
        let confirmed = matches!(
            probe(&control, &prefix(&ops, &events, guess), initial),
            Probe::Ok
        ) && matches!(
            probe(&control, &prefix(&ops, &events, guess + 1), initial),
            Probe::Fails
        );
        if confirmed {
            (lo, hi) = (guess, guess + 1);
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match probe(&control, &prefix(&ops, &events, mid), initial) {
            Probe::Ok => lo = mid,
            Probe::Fails => hi = mid,
            Probe::GaveUp => return None,
        }
    }
    let (_, failing_index, is_completion) = events[hi - 1];
    assert!(
        is_completion,
        "adding an invocation cannot make a history non-linearizable"
    );
    let failing = ops[failing_index];
    let failing_prefix = prefix(&ops, &events, hi);
    let (rejected, tried) = match control.search(&failing_prefix, initial, Some(failing.id)) {
        SearchResult::Violation {
            mut focus_states,
            focus_tried,
            ..
        } => {
            focus_states.sort_unstable();
            (focus_states, focus_tried)
        }
        _ => (Vec::new(), false),
    };
    let prefix_ops = prefix(&ops, &events, lo).iter().map(|o| o.id).collect();
    let why = reason(
        history,
        failing,
        &rejected,
        tried,
        &failing_prefix,
        &ops,
        initial,
    );
    let (minimal, one_minimal) = shrink(&control, failing_prefix, failing.id, initial);
    Some(Explanation {
        key: violation.key.clone(),
        failing_op: failing.id,
        reason: why,
        rejected_states: rejected,
        prefix_events: lo,
        prefix_ops,
        minimal_ops: minimal.iter().map(|o| o.id).collect(),
        minimal_is_one_minimal: one_minimal,
    })
}

fn show_state(state: RegisterState) -> String {
    state.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

fn reason(
    history: &History,
    failing: KeyOp,
    rejected: &[RegisterState],
    tried: bool,
    failing_prefix: &[KeyOp],
    all: &[KeyOp],
    initial: RegisterState,
) -> String {
    let what = history
        .op(failing.id)
        .map_or_else(|| failing.id.to_string(), describe);
    let observed = match failing.step {
        Step::Read(v) => Some(v),
        Step::Cas { expected, .. } => Some(Some(expected)),
        _ => None,
    };
    if let Some(v) = observed.filter(|v| !produced(failing_prefix, initial).contains(v)) {
        let later = all
            .iter()
            .find(|o| o.step.produces_state() == Some(v))
            .map_or(String::new(), |o| {
                let writer = history.op(o.id).map_or_else(|| o.id.to_string(), describe);
                format!(" ({writer} was invoked only after it completed)")
            });
        return format!(
            "{what} cannot be placed: it observes {} but no op that could produce it (other than failed ones) \
             was invoked before it completed{later}",
            show_state(v)
        );
    }
    let needs = match failing.step {
        Step::Read(v) => format!(
            "a read returning {} needs the register to hold {}",
            show_state(v),
            show_state(v)
        ),
        Step::Cas { expected, .. } => {
            format!("a successful cas needs the register to hold {expected}")
        }
        Step::CasMismatch { expected } => {
            format!("a failed cas needs the register not to hold {expected}")
        }
        Step::Write(_) | Step::Delete => String::new(),
    };
    if tried && !rejected.is_empty() {
        let states: Vec<String> = rejected.iter().map(|s| show_state(*s)).collect();
        format!(
            "{what} cannot be placed: {needs}, but wherever the earlier ops allow it to take effect \
             (after its invocation, before its completion) the register holds {}",
            states.join(" or ")
        )
    } else {
        format!(
            "{what} cannot be placed: no order of the ops completed before it leaves a point between \
             its invocation and completion where it can take effect{}",
            if needs.is_empty() { String::new() } else { format!(" ({needs})") }
        )
    }
}

/// Searches the shrinking may run before it reports what it has (not 1-minimal).
pub const MAX_SHRINK_PROBES: usize = 5_000;

/// Shrinks a failing sub-history; returns it and whether it is 1-minimal.
fn shrink(
    control: &CheckControl,
    mut ops: Vec<KeyOp>,
    keep: OpId,
    initial: RegisterState,
) -> (Vec<KeyOp>, bool) {
    let mut chunk = ops.len().div_ceil(2).max(1);
    let mut probes = 0usize;
    let unsupported_from_start = unsupported(&ops, initial);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < ops.len() {
            if control.out_of_time() || probes >= MAX_SHRINK_PROBES {
                return (ops, false);
            }
            let end = (start + chunk).min(ops.len());
            let candidate: Vec<KeyOp> = ops[..start].iter().chain(&ops[end..]).copied().collect();
            let candidate = drop_unsupported(candidate, initial, &unsupported_from_start);
            let allowed = candidate.len() < ops.len() && candidate.iter().any(|o| o.id == keep);
            if allowed {
                probes += 1;
                match probe(control, &candidate, initial) {
                    Probe::Fails => {
                        ops = candidate;
                        removed_any = true;
                        continue;
                    }
                    Probe::GaveUp => return (ops, false),
                    Probe::Ok => {}
                }
            }
            start = end;
        }
        if chunk == 1 && !removed_any {
            return (ops, true);
        }
        if !removed_any {
            chunk = chunk.div_ceil(2);
        }
    }
}

/// Removes, until none is left, ops observing a value no remaining op produces (unless it was
/// unproduced from the start), so a shrunk history never "fails" merely by reading a value
/// nobody wrote: removing a write also removes the reads of it.
fn drop_unsupported(
    mut ops: Vec<KeyOp>,
    initial: RegisterState,
    unsupported_from_start: &HashSet<RegisterState>,
) -> Vec<KeyOp> {
    loop {
        let produced = produced(&ops, initial);
        let fine = |v: &RegisterState| produced.contains(v) || unsupported_from_start.contains(v);
        let before = ops.len();
        ops.retain(|o| match o.step {
            Step::Read(v) => fine(&v),
            Step::Cas { expected, .. } => fine(&Some(expected)),
            _ => true,
        });
        if ops.len() == before {
            return ops;
        }
    }
}

/// States some op of `ops` can leave behind, and the initial state.
fn produced(ops: &[KeyOp], initial: RegisterState) -> HashSet<RegisterState> {
    ops.iter()
        .filter_map(|o| match o.step {
            Step::Write(v) | Step::Cas { new: v, .. } => Some(Some(v)),
            Step::Delete => Some(None),
            _ => None,
        })
        .chain(std::iter::once(initial))
        .collect()
}

/// Values observed by ops of `ops` that no op of `ops` produces.
fn unsupported(ops: &[KeyOp], initial: RegisterState) -> HashSet<RegisterState> {
    let produced = produced(ops, initial);
    ops.iter()
        .filter_map(|o| match o.step {
            Step::Read(v) => Some(v),
            Step::Cas { expected, .. } => Some(Some(expected)),
            _ => None,
        })
        .filter(|v| !produced.contains(v))
        .collect()
}

/// "process 3: read -> 5 (ok)", for reports.
pub fn describe(record: &crate::history::OpRecord) -> String {
    let result = match record.outcome() {
        Outcome::Ok(OkValue::Read(v)) => format!(" -> {}", show_state(*v)),
        Outcome::Ok(OkValue::Elements(e)) => format!(" -> {e:?}"),
        Outcome::Ok(OkValue::CasMismatch) => " -> mismatch".to_string(),
        Outcome::Ok(OkValue::Done) => String::new(),
        Outcome::Fail => " (failed)".to_string(),
        Outcome::Info => " (unknown outcome)".to_string(),
    };
    let what = match &record.op {
        Op::Read => "read".to_string(),
        other => other.to_string(),
    };
    format!(
        "op {} by process {}: {what}{result}",
        record.id, record.process
    )
}
