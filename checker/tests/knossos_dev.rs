//! The public Knossos development set: every verdict in VERDICTS.tsv must match.

use checker::{check_kv, parse_edn, Budget, CheckOptions, ImportModel, Verdict};
use std::path::PathBuf;

fn dev_set() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/knossos-dev");
    dir.is_dir().then_some(dir)
}

#[test]
fn all_knossos_dev_verdicts_match() {
    let Some(dir) = dev_set() else {
        println!("NOTICE: knossos-dev test data not found next to the repository; skipping");
        return;
    };
    let table = std::fs::read_to_string(dir.join("VERDICTS.tsv")).expect("VERDICTS.tsv");
    let mut checked = 0;
    for line in table.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 3, "VERDICTS.tsv line {line:?}");
        let (file, initial, expected) = (fields[0], fields[1], fields[2]);
        let text = std::fs::read_to_string(dir.join(file)).expect(file);
        let history = parse_edn(&text, ImportModel::Kv).unwrap_or_else(|e| panic!("{file}: {e}"));
        let options = CheckOptions {
            budget: Budget {
                max_steps_per_key: Some(50_000_000),
                ..Budget::default()
            },
            initial_value: if initial == "nil" {
                None
            } else {
                Some(initial.parse().expect("initial"))
            },
            parallel: false,
        };
        let verdict = check_kv(&history, &options);
        match expected {
            "linearizable" => assert_eq!(verdict, Verdict::Linearizable, "{file}"),
            "not" => assert!(
                matches!(verdict, Verdict::NotLinearizable(_)),
                "{file}: {verdict:?}"
            ),
            other => panic!("unknown expected verdict {other}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 19);
}
