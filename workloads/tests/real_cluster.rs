//! The process-level campaign end to end: 3 real `quorumkv server` processes on loopback, the
//! register workload, kill -9/restart and SIGSTOP/SIGCONT, history checked. Needs the
//! `quorumkv` binary next to `real-cluster` (built by `cargo test --workspace`); skipped with a
//! notice when it is absent.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn real_processes_under_kill_and_pause_stay_linearizable() {
    let runner = PathBuf::from(env!("CARGO_BIN_EXE_real-cluster"));
    let quorumkv = runner.with_file_name("quorumkv");
    if !quorumkv.exists() {
        println!(
            "skipped: {} not built (run `cargo build -p node` first)",
            quorumkv.display()
        );
        return;
    }
    let output = Command::new(&runner)
        .args([
            "--nodes",
            "3",
            "--clients",
            "3",
            "--duration-s",
            "12",
            "--final-heal-s",
            "5",
        ])
        .args(["--seed", "7", "--base-port", "17650"])
        .arg("--quorumkv")
        .arg(&quorumkv)
        .output()
        .expect("run real-cluster");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("seed 7")),
        "seed first"
    );
    assert!(
        stdout.contains("kill -9") || stdout.contains("SIGSTOP"),
        "no fault injected"
    );
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("verdict: PASS")),
        "verdict last: PASS"
    );
    assert!(output.status.success());
}
