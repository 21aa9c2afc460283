//! End-to-end tests of the `quorumkv-check` binary: output lines, exit codes, HTML, errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory, removed when the test ends.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(test: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("quorumkv-check-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn run(args: &[&str]) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_quorumkv-check"))
        .args(args)
        .output()
        .expect("run quorumkv-check");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    assert!(
        status.code().is_some(),
        "killed by a signal; stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    (status.code().unwrap_or(-1), stdout)
}

const GOOD_JSONL: &str = r#"{"type":"invoke","id":0,"time_ns":1,"process":1,"key":"a","f":"write","value":1}
{"type":"invoke","id":1,"time_ns":2,"process":2,"key":"a","f":"read"}
{"type":"ok","id":1,"time_ns":3,"value":1}
{"type":"ok","id":0,"time_ns":4}
"#;

const BAD_EDN: &str = "[{:process 0, :type :invoke, :f :write, :value 1}\n\
{:process 0, :type :ok, :f :write, :value 1}\n\
{:process 1, :type :invoke, :f :read, :value nil}\n\
{:process 1, :type :ok, :f :read, :value 2}]\n";

#[test]
fn linearizable_file_exits_zero() {
    let dir = scratch("good");
    let good = write(&dir, "good.jsonl", GOOD_JSONL);
    let good = good.to_str().unwrap();
    let (code, out) = run(&[good]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{good}: linearizable\n")), "{out}");
    assert!(
        out.contains(
            "summary: 1 files: 1 linearizable, 0 NOT linearizable, 0 unknown, 0 unreadable in "
        ),
        "{out}"
    );
}

#[test]
fn violation_exits_one_with_key_reason_and_html() {
    let dir = scratch("bad");
    let bad = write(&dir, "bad.edn", BAD_EDN);
    let html = dir.join("report.html");
    let (code, out) = run(&["--html", html.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad.edn: NOT linearizable (key register, op #1 by process 1: read -> 2 cannot be placed"), "{out}");
    let report = std::fs::read_to_string(&html).expect("HTML report written");
    assert!(
        report.starts_with("<!DOCTYPE html>")
            && report.contains("<svg")
            && report.contains("cannot be placed")
    );
    assert!(
        !report.contains("<script") && !report.contains("https://"),
        "self-contained"
    );
}

#[test]
fn malformed_input_names_file_line_and_expectation() {
    let dir = scratch("malformed");
    let text = GOOD_JSONL.replace("\"f\":\"read\"", "\"f\":\"peek\"");
    let path = write(&dir, "broken.jsonl", &text);
    let (code, out) = run(&[path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("broken.jsonl: unreadable ("), "{out}");
    assert!(
        out.contains(
            "broken.jsonl:2: expected f to be read|write|cas|delete|add|read_set, found \"peek\""
        ),
        "{out}"
    );
    let edn = write(
        &dir,
        "broken.edn",
        "{:process 0 :type :invoke :f :write :value 1}\n{:process 0 :type :ok :f :write",
    );
    let (code, out) = run(&[edn.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("broken.edn:2: expected '}', found end of input"),
        "{out}"
    );
    let other = write(&dir, "history.txt", GOOD_JSONL);
    let (code, out) = run(&[other.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("expected a .edn or .jsonl file name, or --format"),
        "{out}"
    );
    let (code, out) = run(&["--format", "jsonl", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn exhausted_budget_is_unknown_and_exits_two() {
    let dir = scratch("unknown");
    let mut text = String::new();
    for i in 0..6_000u64 {
        let t = i * 10;
        text.push_str(&format!(
            "{{\"type\":\"invoke\",\"id\":{i},\"time_ns\":{t},\"process\":{},\"key\":\"k\",\"f\":\"write\",\"value\":{i}}}\n",
            i % 4
        ));
        text.push_str(&format!(
            "{{\"type\":\"ok\",\"id\":{i},\"time_ns\":{}}}\n",
            t + 5
        ));
    }
    let path = write(&dir, "long.jsonl", &text);
    let (code, out) = run(&["--timeout-s", "0", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("long.jsonl: unknown (time limit of 0.0 s reached on key k)"),
        "{out}"
    );
    let (code, out) = run(&[path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn mixed_files_json_output_and_exit_code() {
    let dir = scratch("mixed");
    let good = write(&dir, "good.jsonl", GOOD_JSONL);
    let bad = write(&dir, "bad.edn", BAD_EDN);
    let missing = dir.join("missing.jsonl");
    let (code, out) = run(&[
        "--json",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "a violation outranks unreadable files: {out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["verdict"], "linearizable");
    assert_eq!(lines[1]["verdict"], "not_linearizable");
    assert_eq!(lines[1]["details"]["key"], "register");
    assert_eq!(lines[2]["verdict"], "unreadable");
    assert_eq!(lines[3]["summary"]["not_linearizable"], 1);
}

#[test]
fn initial_value_and_set_model() {
    let dir = scratch("options");
    let edn = write(&dir, "init.edn", "{:process 0 :type :invoke :f :read :value nil}\n{:process 0 :type :ok :f :read :value 5}\n");
    assert_eq!(run(&[edn.to_str().unwrap()]).0, 1);
    assert_eq!(run(&["--initial-value", "5", edn.to_str().unwrap()]).0, 0);
    let set = write(
        &dir,
        "set.edn",
        "{:process 0 :type :invoke :f :add :value 1}\n{:process 0 :type :ok :f :add :value 1}\n\
         {:process 1 :type :invoke :f :read :value nil}\n{:process 1 :type :ok :f :read :value #{}}\n",
    );
    let (code, out) = run(&["--model", "set", set.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("element 1 lost: add #0 was acknowledged before read #1 was invoked"),
        "{out}"
    );
}

#[test]
fn knossos_dev_set_through_the_binary() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/knossos-dev");
    if !dir.is_dir() {
        println!("NOTICE: knossos-dev test data not found; skipping");
        return;
    }
    let mut files: Vec<String> = Vec::new();
    for sub in ["knossos-good", "knossos-bad"] {
        for entry in std::fs::read_dir(dir.join(sub)).expect("dev set dir") {
            files.push(entry.expect("entry").path().display().to_string());
        }
    }
    let mut args = vec!["--initial-value", "0"];
    args.extend(files.iter().map(String::as_str));
    let (code, out) = run(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "summary: 19 files: 12 linearizable, 7 NOT linearizable, 0 unknown, 0 unreadable"
        ),
        "{out}"
    );
}
