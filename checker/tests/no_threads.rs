//! The simulator calls the checker inside madsim, where starting an OS thread panics: with
//! `parallel: false`, checking, explaining and rendering must not start any thread. (This file
//! holds one test so that no other test's threads come and go meanwhile.)

use checker::{
    check_kv, explain, render_html, CheckOptions, History, OkValue, Op, Outcome, Verdict,
};

fn threads() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn sequential_mode_starts_no_threads() {
    let Some(before) = threads() else {
        println!("NOTICE: /proc/self/status not available; skipping");
        return;
    };
    let mut h = History::new();
    for key in 0..50u64 {
        let w = h
            .invoke(key * 10, key, format!("k{key}"), Op::Write { value: 1 })
            .unwrap();
        h.complete(key * 10 + 1, w, Outcome::Ok(OkValue::Done))
            .unwrap();
        let r = h
            .invoke(key * 10 + 2, key, format!("k{key}"), Op::Read)
            .unwrap();
        let value = if key == 49 { 2 } else { 1 };
        h.complete(key * 10 + 3, r, Outcome::Ok(OkValue::Read(Some(value))))
            .unwrap();
    }
    let options = CheckOptions {
        parallel: false,
        ..CheckOptions::default()
    };
    let verdict = check_kv(&h, &options);
    let Verdict::NotLinearizable(v) = &verdict else {
        panic!("expected a violation: {verdict:?}")
    };
    assert_eq!(v.key, "k49");
    let e = explain(&h, v, &options).expect("explanation");
    assert!(render_html("t", &h, &verdict, Some(&e)).contains("<svg"));
    assert_eq!(
        threads(),
        Some(before),
        "the sequential checker started a thread"
    );
}
