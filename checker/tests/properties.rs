//! Property tests: histories produced by a random sequential execution, stretched into random
//! real-time overlaps with random unknown and failed outcomes, are always accepted; the same
//! histories with a provable violation injected are always rejected.

use checker::{check_kv, explain, CheckOptions, History, OkValue, Op, OpId, Outcome, Verdict};
use proptest::prelude::*;

/// One generated op: (key, kind, pre-delay, post-delay, outcome roll).
type Spec = (usize, u8, u64, u64, u8);

/// Time between two consecutive linearization points.
const SLOT_NS: u64 = 1_000;
/// Values injected by violations; generated values stay far below.
const FRESH: i64 = 1_000_000;
/// Start of time, leaving room for early invocations.
const BASE_NS: u64 = 10_000;

struct Planned {
    key: usize,
    op: Op,
    invoke_ns: u64,
    /// None: never completes (unknown).
    completion: Option<(u64, Outcome)>,
}

/// Executes `specs` sequentially on registers, then stretches each op around its
/// linearization point. Every op either takes effect at its point or provably has no effect.
fn generate(specs: &[Spec]) -> Vec<Planned> {
    let mut state: Vec<Option<i64>> = vec![None; 4];
    let mut planned = Vec::new();
    for (i, &(key, kind, pre, post, roll)) in specs.iter().enumerate() {
        let point = BASE_NS + SLOT_NS * (i as u64 + 1);
        let invoke_ns = point - 1 - pre;
        let end = point + 1 + post;
        let unique = i as i64 + 1;
        let current = state[key];
        let unknown = roll < 2;
        let (op, outcome) = match kind {
            0 => (
                Op::Read,
                if roll == 2 {
                    Outcome::Fail
                } else {
                    Outcome::Ok(OkValue::Read(current))
                },
            ),
            1 => {
                state[key] = Some(unique);
                (Op::Write { value: unique }, Outcome::Ok(OkValue::Done))
            }
            2 => {
                // A write that never took effect.
                let outcome = if roll % 2 == 0 {
                    Outcome::Fail
                } else {
                    Outcome::Info
                };
                (Op::Write { value: unique }, outcome)
            }
            3 => match current {
                Some(expected) => {
                    state[key] = Some(unique);
                    (
                        Op::Cas {
                            expected,
                            new: unique,
                        },
                        Outcome::Ok(OkValue::Done),
                    )
                }
                None => (
                    Op::Cas {
                        expected: 0,
                        new: unique,
                    },
                    Outcome::Ok(OkValue::CasMismatch),
                ),
            },
            4 => {
                let expected = current.map_or(-1, |v| v + 1_000);
                let outcome = if roll % 2 == 0 {
                    Outcome::Fail
                } else {
                    Outcome::Ok(OkValue::CasMismatch)
                };
                (
                    Op::Cas {
                        expected,
                        new: unique,
                    },
                    outcome,
                )
            }
            _ => {
                state[key] = None;
                (Op::Delete, Outcome::Ok(OkValue::Done))
            }
        };
        let completion = match (unknown, &outcome) {
            (true, _) if roll == 0 => None,
            (true, _) => Some((end, Outcome::Info)),
            _ => Some((end, outcome)),
        };
        planned.push(Planned {
            key,
            op,
            invoke_ns,
            completion,
        });
    }
    planned
}

/// Records planned ops as a history, events in time order, processes reused when idle.
fn record(planned: &[Planned]) -> History {
    let mut events: Vec<(u64, usize, bool)> = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        events.push((p.invoke_ns, i, false));
        if let Some((t, _)) = &p.completion {
            events.push((*t, i, true));
        }
    }
    events.sort();
    let mut busy: Vec<bool> = Vec::new();
    let mut process_of = vec![0usize; planned.len()];
    let mut ids: Vec<Option<OpId>> = vec![None; planned.len()];
    let mut history = History::new();
    for (t, i, done) in events {
        let p = &planned[i];
        if done {
            let (_, outcome) = p.completion.clone().expect("completion event");
            if !matches!(outcome, Outcome::Info) {
                busy[process_of[i]] = false;
            }
            history
                .complete(t, ids[i].expect("invoked"), outcome)
                .expect("valid completion");
        } else {
            let process = busy.iter().position(|b| !b).unwrap_or_else(|| {
                busy.push(false);
                busy.len() - 1
            });
            busy[process] = true;
            process_of[i] = process;
            ids[i] = Some(
                history
                    .invoke(t, process as u64, format!("k{}", p.key), p.op.clone())
                    .expect("valid invoke"),
            );
        }
    }
    history
}

fn at(key: usize, op: Op, invoke_ns: u64, end_ns: u64, outcome: Outcome) -> Planned {
    Planned {
        key,
        op,
        invoke_ns,
        completion: Some((end_ns, outcome)),
    }
}

/// Ops that make any history containing them non-linearizable, at time `t`.
fn violation(kind: u8, t: u64) -> Vec<Planned> {
    let (a, b) = (FRESH + 1, FRESH + 2);
    let done = || Outcome::Ok(OkValue::Done);
    let read = |v| Outcome::Ok(OkValue::Read(Some(v)));
    match kind {
        0 => vec![
            at(0, Op::Write { value: a }, t + 1, t + 2, done()),
            at(0, Op::Write { value: b }, t + 3, t + 4, done()),
            at(0, Op::Read, t + 5, t + 6, read(a)),
        ],
        1 => vec![at(0, Op::Read, t + 1, t + 2, read(FRESH + 7))],
        2 => vec![at(
            0,
            Op::Cas {
                expected: FRESH + 9,
                new: a,
            },
            t + 1,
            t + 2,
            done(),
        )],
        3 => vec![
            at(0, Op::Write { value: a }, t + 1, t + 2, done()),
            at(0, Op::Write { value: b }, t + 3, t + 9, done()),
            at(0, Op::Read, t + 4, t + 5, read(b)),
            at(0, Op::Read, t + 6, t + 7, read(a)),
        ],
        4 => vec![
            at(0, Op::Read, t + 1, t + 2, read(a)),
            at(0, Op::Write { value: a }, t + 3, t + 4, done()),
        ],
        _ => vec![
            at(0, Op::Write { value: a }, t + 1, t + 2, Outcome::Fail),
            at(0, Op::Read, t + 3, t + 4, read(a)),
        ],
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (0..3usize, 0..6u8, 0..3_500u64, 0..3_500u64, 0..10u8)
}

fn quick() -> CheckOptions {
    CheckOptions::default()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn sequential_executions_stretched_in_time_are_linearizable(specs in prop::collection::vec(spec(), 0..60)) {
        let history = record(&generate(&specs));
        prop_assert_eq!(check_kv(&history, &quick()), Verdict::Linearizable);
        let round_trip = History::from_jsonl(&history.to_jsonl()).expect("own JSONL parses");
        prop_assert_eq!(&round_trip, &history);
    }

    #[test]
    fn injected_violations_are_rejected(
        specs in prop::collection::vec(spec(), 0..60),
        kind in 0..6u8,
        slot in 0..61u64,
    ) {
        let mut planned = generate(&specs);
        planned.extend(violation(kind, BASE_NS + slot * SLOT_NS + SLOT_NS / 3));
        let history = record(&planned);
        let verdict = check_kv(&history, &quick());
        prop_assert_eq!(&verdict, &Verdict::NotLinearizable(checker::Violation { key: "k0".into() }));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn explanations_shrink_to_failing_sub_histories(
        specs in prop::collection::vec(spec(), 0..30),
        kind in 0..6u8,
        slot in 0..31u64,
    ) {
        let mut planned = generate(&specs);
        planned.extend(violation(kind, BASE_NS + slot * SLOT_NS + SLOT_NS / 3));
        let history = record(&planned);
        let parallel = CheckOptions { parallel: true, ..quick() };
        let Verdict::NotLinearizable(v) = check_kv(&history, &parallel) else {
            return Err(TestCaseError::fail("expected a violation"));
        };
        let e = explain(&history, &v, &quick()).expect("an explanation");
        prop_assert!(e.minimal_ops.contains(&e.failing_op));
        let sub = history.filtered(|r| e.minimal_ops.contains(&r.id));
        prop_assert!(matches!(check_kv(&sub, &quick()), Verdict::NotLinearizable(_)));
        prop_assert!(e.minimal_ops.len() <= 4, "injected cores have at most 4 ops: {:?}", e.minimal_ops);
    }
}
