//! Hand-written histories, one per anomaly, each with the explanation it must produce; and
//! near-identical histories that are linearizable, so each test can fail both ways.

use checker::{
    check_kv, explain, render_html, CheckOptions, History, OkValue, Op, Outcome, Verdict,
};

/// A tiny history builder: ops on key "x" as (process, op, invoke time, completion).
#[derive(Default)]
struct H(Vec<Planned>);

/// (process, op, invoke time, completion time and outcome).
type Planned = (u64, Op, u64, Option<(u64, Outcome)>);

impl H {
    fn new() -> H {
        H::default()
    }

    fn op(mut self, process: u64, op: Op, start: u64, end: Option<(u64, Outcome)>) -> H {
        self.0.push((process, op, start, end));
        self
    }

    /// Records the events in time order.
    fn build(self) -> History {
        let mut events: Vec<(u64, usize, bool)> = Vec::new();
        for (i, (_, _, start, end)) in self.0.iter().enumerate() {
            events.push((*start, i, false));
            if let Some((t, _)) = end {
                events.push((*t, i, true));
            }
        }
        events.sort();
        let mut h = History::new();
        let mut ids = vec![None; self.0.len()];
        for (t, i, done) in events {
            let (process, op, _, end) = &self.0[i];
            match (done, end) {
                (true, Some((_, outcome))) => {
                    h.complete(t, ids[i].unwrap(), outcome.clone()).unwrap()
                }
                _ => ids[i] = Some(h.invoke(t, *process, "x", op.clone()).unwrap()),
            }
        }
        h
    }
}

fn ok() -> Outcome {
    Outcome::Ok(OkValue::Done)
}

fn read(v: Option<i64>) -> Outcome {
    Outcome::Ok(OkValue::Read(v))
}

fn w(v: i64) -> Op {
    Op::Write { value: v }
}

fn check(h: &History) -> Verdict {
    check_kv(h, &CheckOptions::default())
}

/// Asserts a violation on key x whose failing op performs `failing` (by display).
fn assert_violation(h: &History, failing: &str) {
    let verdict = check(h);
    let Verdict::NotLinearizable(v) = &verdict else {
        panic!("expected a violation, got {verdict:?}")
    };
    assert_eq!(v.key, "x");
    let e = explain(h, v, &CheckOptions::default()).expect("an explanation");
    let failing_op = h.op(e.failing_op).unwrap();
    assert_eq!(failing_op.op.to_string(), failing, "{e:?}");
    assert!(e.minimal_ops.contains(&e.failing_op));
    assert!(e.minimal_is_one_minimal);
    let sub = h.filtered(|r| e.minimal_ops.contains(&r.id));
    assert!(
        matches!(check(&sub), Verdict::NotLinearizable(_)),
        "the minimal sub-history must fail"
    );
    assert!(
        e.prefix_events < 2 * h.len(),
        "the failing completion is outside the prefix"
    );
    let html = render_html("t", h, &verdict, Some(&e));
    assert!(
        html.contains("<svg")
            && !html.contains("<script")
            && !html.contains("http://www.w3.org/1999/xhtml\" src")
    );
}

#[test]
fn stale_read() {
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(1, w(2), 2, Some((3, ok())))
        .op(2, Op::Read, 4, Some((5, read(Some(1)))))
        .build();
    assert_violation(&h, "read");
    let fixed = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(1, w(2), 2, Some((6, ok())))
        .op(2, Op::Read, 4, Some((5, read(Some(1)))))
        .build();
    assert_eq!(check(&fixed), Verdict::Linearizable);
}

#[test]
fn lost_write_then_read_of_initial() {
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(2, Op::Read, 2, Some((3, read(None))))
        .build();
    assert_violation(&h, "read");
    let h = H::new()
        .op(1, w(1), 0, Some((3, ok())))
        .op(2, Op::Read, 1, Some((2, read(None))))
        .build();
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn read_of_a_value_never_written() {
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(2, Op::Read, 2, Some((3, read(Some(42)))))
        .build();
    assert_violation(&h, "read");
}

#[test]
fn cas_succeeding_on_the_wrong_value() {
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(
            2,
            Op::Cas {
                expected: 2,
                new: 3,
            },
            2,
            Some((3, ok())),
        )
        .build();
    assert_violation(&h, "cas 2->3");
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(
            2,
            Op::Cas {
                expected: 1,
                new: 3,
            },
            2,
            Some((3, ok())),
        )
        .op(3, Op::Read, 4, Some((5, read(Some(3)))))
        .build();
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn cas_reporting_mismatch_on_the_matching_value() {
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(
            2,
            Op::Cas {
                expected: 1,
                new: 3,
            },
            2,
            Some((3, Outcome::Ok(OkValue::CasMismatch))),
        )
        .build();
    assert_violation(&h, "cas 1->3");
}

#[test]
fn reads_going_backwards_across_clients() {
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(1, w(2), 2, Some((20, ok())))
        .op(2, Op::Read, 3, Some((4, read(Some(2)))))
        .op(3, Op::Read, 5, Some((6, read(Some(1)))))
        .build();
    assert_violation(&h, "read");
    let h = H::new()
        .op(1, w(1), 0, Some((1, ok())))
        .op(1, w(2), 2, Some((20, ok())))
        .op(2, Op::Read, 3, Some((4, read(Some(1)))))
        .op(3, Op::Read, 5, Some((6, read(Some(2)))))
        .build();
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn effect_visible_before_its_invocation() {
    let h = H::new()
        .op(2, Op::Read, 0, Some((1, read(Some(5)))))
        .op(1, w(5), 2, Some((3, ok())))
        .build();
    assert_violation(&h, "read");
}

#[test]
fn failed_write_that_is_observed() {
    let h = H::new()
        .op(1, w(5), 0, Some((1, Outcome::Fail)))
        .op(2, Op::Read, 2, Some((3, read(Some(5)))))
        .build();
    assert_violation(&h, "read");
    // The same write with an unknown outcome may have taken effect.
    let h = H::new()
        .op(1, w(5), 0, Some((1, Outcome::Info)))
        .op(2, Op::Read, 2, Some((3, read(Some(5)))))
        .build();
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn unknown_write_may_take_effect_late_but_not_before_invocation() {
    let h = H::new()
        .op(1, w(5), 0, None)
        .op(2, Op::Read, 1, Some((2, read(None))))
        .op(2, Op::Read, 10, Some((11, read(Some(5)))))
        .op(3, Op::Read, 12, Some((13, read(Some(5)))))
        .build();
    assert_eq!(check(&h), Verdict::Linearizable);
    let h = H::new()
        .op(2, Op::Read, 0, Some((1, read(Some(5)))))
        .op(1, w(5), 2, None)
        .build();
    assert_violation(&h, "read");
}

#[test]
fn delete_makes_register_absent() {
    let h = H::new()
        .op(1, w(5), 0, Some((1, ok())))
        .op(1, Op::Delete, 2, Some((3, ok())))
        .op(2, Op::Read, 4, Some((5, read(Some(5)))))
        .build();
    assert_violation(&h, "read");
    let h = H::new()
        .op(1, w(5), 0, Some((1, ok())))
        .op(1, Op::Delete, 2, Some((3, ok())))
        .op(2, Op::Read, 4, Some((5, read(None))))
        .build();
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn explanation_names_the_failing_op_and_a_small_core_in_a_larger_history() {
    // Noise on the same key around a stale read.
    let mut b = H::new();
    for i in 0..20u64 {
        b = b.op(
            10 + i % 3,
            w(100 + i as i64),
            i * 10,
            Some((i * 10 + 5, ok())),
        );
        b = b.op(
            20 + i % 3,
            Op::Read,
            i * 10 + 6,
            Some((i * 10 + 8, read(Some(100 + i as i64)))),
        );
    }
    b = b.op(30, Op::Read, 300, Some((301, read(Some(105)))));
    let h = b.build();
    let Verdict::NotLinearizable(v) = check(&h) else {
        panic!("expected a violation")
    };
    let e = explain(&h, &v, &CheckOptions::default()).unwrap();
    assert_eq!(h.op(e.failing_op).unwrap().invoke_ns, 300);
    assert!(e.minimal_ops.len() <= 3, "{:?}", e.minimal_ops);
    assert_eq!(
        e.prefix_ops.len(),
        40,
        "everything before the stale read is linearizable"
    );
    assert!(e.reason.contains("holds 119"), "{}", e.reason);
}
