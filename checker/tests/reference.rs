//! Differential test: on small random histories (linearizable or not), `check_kv` must agree
//! with a brute-force checker that tries every order of every subset of the unknown ops. This
//! covers the search's reductions (pruning of unknown ops, symmetry, eager pure ops, memo).

use checker::{check_kv, CheckOptions, History, OkValue, Op, OpRecord, Outcome, Verdict};
use proptest::prelude::*;

/// (kind, value a, value b, start, duration, outcome roll, read result)
type Spec = (u8, i64, i64, u64, u64, u8, u8);

fn build(specs: &[Spec]) -> History {
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        events.push((s.3, i, false));
        if s.5 != 0 {
            events.push((s.3 + s.4, i, true));
        }
    }
    events.sort();
    let mut history = History::new();
    let mut ids = vec![None; specs.len()];
    for (t, i, done) in events {
        let (kind, a, b, _, _, roll, result) = specs[i];
        let op = match kind {
            0 => Op::Read,
            1 => Op::Write { value: a },
            2 => Op::Cas {
                expected: a,
                new: b,
            },
            _ => Op::Delete,
        };
        if !done {
            ids[i] = Some(history.invoke(t, i as u64, "x", op).expect("invoke"));
            continue;
        }
        let outcome = match (roll, &op) {
            (1, _) => Outcome::Fail,
            (2, _) => Outcome::Info,
            (_, Op::Read) => Outcome::Ok(OkValue::Read((result < 3).then_some(i64::from(result)))),
            (3, Op::Cas { .. }) => Outcome::Ok(OkValue::CasMismatch),
            _ => Outcome::Ok(OkValue::Done),
        };
        history
            .complete(t, ids[i].expect("invoked"), outcome)
            .expect("complete");
    }
    history
}

/// Applies `record` to `state` if it can take effect there (`None` otherwise).
fn apply(record: &OpRecord, state: Option<i64>) -> Option<Option<i64>> {
    let required = matches!(record.outcome(), Outcome::Ok(_));
    match (&record.op, record.outcome()) {
        (Op::Read, Outcome::Ok(OkValue::Read(v))) => (state == *v).then_some(state),
        (Op::Write { value }, _) => Some(Some(*value)),
        (Op::Delete, _) => Some(None),
        (Op::Cas { expected, .. }, Outcome::Ok(OkValue::CasMismatch)) => {
            (state != Some(*expected)).then_some(state)
        }
        (Op::Cas { expected, new }, _) => (state == Some(*expected)).then_some(Some(*new)),
        _ => {
            assert!(!required);
            Some(state)
        }
    }
}

/// Brute force: extend the placed sequence with any op all of whose real-time predecessors
/// are placed; done when every ok op is placed.
fn brute_force(ops: &[&OpRecord], placed: &mut Vec<bool>, state: Option<i64>) -> bool {
    let required = |r: &OpRecord| matches!(r.outcome(), Outcome::Ok(_));
    if ops
        .iter()
        .zip(placed.iter())
        .all(|(r, p)| *p || !required(r))
    {
        return true;
    }
    for i in 0..ops.len() {
        if placed[i] {
            continue;
        }
        let ready = ops.iter().zip(placed.iter()).all(|(a, p)| {
            *p || !required(a)
                || a.completion
                    .as_ref()
                    .is_none_or(|c| c.seq > ops[i].invoke_seq)
        });
        if !ready {
            continue;
        }
        if let Some(next) = apply(ops[i], state) {
            placed[i] = true;
            let found = brute_force(ops, placed, next);
            placed[i] = false;
            if found {
                return true;
            }
        }
    }
    false
}

fn spec() -> impl Strategy<Value = Spec> {
    (0..4u8, 0..3i64, 0..3i64, 0..30u64, 1..12u64, 0..5u8, 0..4u8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn search_agrees_with_brute_force(specs in prop::collection::vec(spec(), 1..8), initial in prop::option::of(0..3i64)) {
        let history = build(&specs);
        // Fail ops and unknown reads never take effect: the reference leaves them out too.
        let ops: Vec<&OpRecord> = history
            .ops()
            .iter()
            .filter(|r| !matches!(r.outcome(), Outcome::Fail))
            .filter(|r| !(matches!(r.op, Op::Read) && matches!(r.outcome(), Outcome::Info)))
            .collect();
        let expected = brute_force(&ops, &mut vec![false; ops.len()], initial);
        let options = CheckOptions { initial_value: initial, ..CheckOptions::default() };
        let verdict = check_kv(&history, &options);
        prop_assert_eq!(verdict.is_linearizable(), expected, "{:?}\n{}", verdict, history.to_jsonl());
        let unknown = matches!(verdict, Verdict::Unknown { .. });
        prop_assert!(!unknown, "small histories never exhaust the budget");
    }
}
