//! The checker's fuzz targets' inputs, replayed in the normal `cargo test`: every seed of
//! `fuzz/seeds/{edn,jsonl}/` and every input that once made a target fail
//! (`checker/tests/fuzz-regressions/<target>/`). None may panic.
//!
//! `cargo test -p checker --test fuzz_regressions -- --ignored write_fuzz_seeds` rewrites the
//! seeds.

use std::path::{Path, PathBuf};

use checker::fuzz_targets;
use checker::{History, OkValue, Op, Outcome};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 2] = [("edn", fuzz_targets::edn), ("jsonl", fuzz_targets::jsonl)];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_past_crash_input_reads_without_panic() {
    for (name, target) in TARGETS {
        let seeds = files(&repo().join("fuzz/seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for fuzz target {name}");
        let crashes = files(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fuzz-regressions")
                .join(name),
        );
        for file in seeds.iter().chain(&crashes) {
            let bytes = std::fs::read(file).expect("read a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name} panicked on {}", file.display());
        }
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = repo().join("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create the seed folder");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand after a format change"]
fn write_fuzz_seeds() {
    let mut history = History::new();
    let w = history.invoke(10, 1, "k", Op::Write { value: 3 }).unwrap();
    let r = history.invoke(20, 2, "k", Op::Read).unwrap();
    let c = history
        .invoke(
            25,
            3,
            "j",
            Op::Cas {
                expected: 1,
                new: 2,
            },
        )
        .unwrap();
    history.complete(30, w, Outcome::Ok(OkValue::Done)).unwrap();
    history
        .complete(40, r, Outcome::Ok(OkValue::Read(Some(3))))
        .unwrap();
    history.complete(50, c, Outcome::Info).unwrap();
    let a = history.invoke(60, 1, "s", Op::Add { element: 4 }).unwrap();
    history.complete(70, a, Outcome::Fail).unwrap();
    write("jsonl", "mixed", history.to_jsonl().as_bytes());

    write(
        "edn",
        "register",
        b"{:process 0, :type :invoke, :f :write, :value 1}\n\
          {:process 1, :type :invoke, :f :read, :value nil}\n\
          {:process 0, :type :ok, :f :write, :value 1}\n\
          {:process 1, :type :ok, :f :read, :value 1}\n\
          {:process 2, :type :invoke, :f :cas, :value [1 2]}\n\
          {:process 2, :type :fail, :f :cas, :value [1 2]}\n",
    );
    write(
        "edn",
        "independent",
        b"[{:process 0, :type :invoke, :f :write, :value [:a 5]}\n\
          {:process 0, :type :info, :f :write, :value [:a 5], :time 12}]\n",
    );
    write(
        "edn",
        "set",
        b"{:process 0, :type :invoke, :f :add, :value 1}\n\
          {:process 0, :type :ok, :f :add, :value 1}\n\
          {:process 1, :type :invoke, :f :read, :value nil}\n\
          {:process 1, :type :ok, :f :read, :value #{1 \"x\" \\a 2.5 -3}}\n",
    );
}
