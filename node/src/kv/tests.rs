//! State machine tests: examples per operation, sessions and limits, plus property tests
//! against a deliberately naive model (a list of triples).

use proptest::prelude::*;

use super::*;
use crate::bugs::PlantedBugs;

fn cmd(client_id: u64, seq: u64, op: Operation) -> Command {
    Command { client_id, seq, op }
}

fn put(key: &str, value: &str) -> Operation {
    Operation::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn get(key: &str) -> Operation {
    Operation::Get { key: key.into() }
}

fn versioned(value: &str, version: u64) -> Option<Versioned> {
    Some(Versioned {
        value: value.into(),
        version,
    })
}

fn machine() -> StateMachine {
    StateMachine::new(KvConfig::default()).unwrap()
}

#[test]
fn versions_are_the_log_index_of_the_last_write() {
    let mut m = machine();
    assert_eq!(
        m.apply_ok(3, &cmd(1, 1, put("a", "x"))),
        OpResult::Written { version: 3 }
    );
    m.skip(4).unwrap();
    assert_eq!(
        m.apply_ok(5, &cmd(1, 2, put("a", "y"))),
        OpResult::Written { version: 5 }
    );
    assert_eq!(
        m.read(&get("a")).unwrap(),
        OpResult::Value(versioned("y", 5))
    );
    assert_eq!(m.applied_index(), 5);
    let deleted = m.apply_ok(6, &cmd(1, 3, Operation::Delete { key: "a".into() }));
    assert_eq!(
        deleted,
        OpResult::Deleted {
            previous: versioned("y", 5)
        }
    );
    assert_eq!(m.read(&get("a")).unwrap(), OpResult::Value(None));
}

#[test]
fn compare_and_swap_on_value_version_and_absence() {
    let mut m = machine();
    let cas = |expected, new: &str| Operation::CompareAndSwap {
        key: "k".into(),
        expected,
        new_value: new.into(),
    };
    assert_eq!(
        m.apply_ok(1, &cmd(1, 1, cas(Expected::Value("x".into()), "a"))),
        OpResult::ConditionFailed { current: None }
    );
    assert_eq!(
        m.apply_ok(2, &cmd(1, 2, cas(Expected::Absent, "a"))),
        OpResult::Written { version: 2 }
    );
    assert_eq!(
        m.apply_ok(3, &cmd(1, 3, cas(Expected::Absent, "b"))),
        OpResult::ConditionFailed {
            current: versioned("a", 2)
        }
    );
    assert_eq!(
        m.apply_ok(4, &cmd(1, 4, cas(Expected::Value("a".into()), "b"))),
        OpResult::Written { version: 4 }
    );
    assert_eq!(
        m.apply_ok(5, &cmd(1, 5, cas(Expected::Version(2), "c"))),
        OpResult::ConditionFailed {
            current: versioned("b", 4)
        }
    );
    assert_eq!(
        m.apply_ok(6, &cmd(1, 6, cas(Expected::Version(4), "c"))),
        OpResult::Written { version: 6 }
    );
    let pia = |v: &str| Operation::PutIfAbsent {
        key: "k".into(),
        value: v.into(),
    };
    assert_eq!(
        m.apply_ok(7, &cmd(1, 7, pia("d"))),
        OpResult::ConditionFailed {
            current: versioned("c", 6)
        }
    );
    assert_eq!(
        m.apply_ok(8, &cmd(1, 8, pia("z").clone())),
        OpResult::ConditionFailed {
            current: versioned("c", 6)
        }
    );
}

#[test]
fn scans_by_range_and_prefix_respect_the_limit() {
    let mut m = machine();
    for (i, k) in ["a", "ab", "abc", "b", "ba", "c"].iter().enumerate() {
        m.apply_ok(i as u64 + 1, &cmd(1, i as u64 + 1, put(k, k)));
    }
    let keys = |r: OpResult| match r {
        OpResult::Scan { items, more } => (
            items
                .into_iter()
                .map(|i| String::from_utf8(i.key).unwrap())
                .collect::<Vec<_>>(),
            more,
        ),
        other => panic!("not a scan: {other:?}"),
    };
    let scan = |range, limit| m.read(&Operation::Scan { range, limit }).unwrap();
    let between = |s: &str, e: Option<&str>| KeyRange::Between {
        start: s.into(),
        end: e.map(Into::into),
    };
    assert_eq!(
        keys(scan(between("ab", Some("ba")), 10)),
        (vec!["ab".into(), "abc".into(), "b".into()], false)
    );
    assert_eq!(
        keys(scan(between("ab", None), 2)),
        (vec!["ab".into(), "abc".into()], true)
    );
    assert_eq!(keys(scan(between("b", Some("a")), 5)), (vec![], false));
    assert_eq!(
        keys(scan(KeyRange::Prefix("ab".into()), 5)),
        (vec!["ab".into(), "abc".into()], false)
    );
    assert_eq!(
        keys(scan(KeyRange::Prefix("b".into()), 1)),
        (vec!["b".into()], true)
    );
    assert_eq!(keys(scan(KeyRange::Prefix(vec![]), 6)).0.len(), 6);
}

#[test]
fn limits_reject_without_applying() {
    let config = KvConfig {
        max_key_bytes: 4,
        max_value_bytes: 8,
        max_scan_limit: 3,
        ..KvConfig::default()
    };
    let mut m = StateMachine::new(config).unwrap();
    let r = m.apply_ok(1, &cmd(1, 1, put("12345", "v")));
    assert_eq!(
        r,
        OpResult::Invalid(InvalidOp::KeyTooLarge {
            len_bytes: 5,
            max_bytes: 4
        })
    );
    let r = m.apply_ok(2, &cmd(1, 2, put("k", "123456789")));
    assert_eq!(
        r,
        OpResult::Invalid(InvalidOp::ValueTooLarge {
            len_bytes: 9,
            max_bytes: 8
        })
    );
    let scan = Operation::Scan {
        range: KeyRange::Prefix(vec![]),
        limit: 4,
    };
    assert_eq!(
        m.read(&scan).unwrap(),
        OpResult::Invalid(InvalidOp::BadScanLimit { limit: 4, max: 3 })
    );
    assert!(m.is_empty());
    assert!(matches!(m.read(&put("k", "v")), Err(KvError::NotARead(_))));
    let bad = KvConfig {
        max_sessions: 0,
        ..KvConfig::default()
    };
    assert!(StateMachine::new(bad).is_err());
}

#[test]
fn retries_are_answered_from_the_session_and_older_seqs_are_stale() {
    let mut m = machine();
    assert_eq!(
        m.apply_ok(1, &cmd(7, 1, put("k", "a"))),
        OpResult::Written { version: 1 }
    );
    assert_eq!(
        m.apply_ok(2, &cmd(8, 1, put("k", "b"))),
        OpResult::Written { version: 2 }
    );
    // The retry of client 7's seq 1 returns the original answer and does not overwrite "b".
    assert_eq!(
        m.apply_ok(3, &cmd(7, 1, put("k", "a"))),
        OpResult::Written { version: 1 }
    );
    assert_eq!(
        m.read(&get("k")).unwrap(),
        OpResult::Value(versioned("b", 2))
    );
    assert_eq!(
        m.apply_ok(4, &cmd(7, 3, put("k", "c"))),
        OpResult::Written { version: 4 }
    );
    assert_eq!(
        m.apply_ok(5, &cmd(7, 2, put("k", "old"))),
        OpResult::Stale { last_seq: 3 }
    );
    assert_eq!(
        m.read(&get("k")).unwrap(),
        OpResult::Value(versioned("c", 4))
    );
}

#[test]
fn planted_bug_no_retry_dedup_applies_a_retry_twice() {
    let mut m = machine();
    m.set_planted_bugs(PlantedBugs {
        no_retry_dedup: true,
        ..Default::default()
    });
    m.apply_ok(1, &cmd(7, 1, put("k", "a")));
    m.apply_ok(2, &cmd(8, 1, put("k", "b")));
    assert_eq!(
        m.apply_ok(3, &cmd(7, 1, put("k", "a"))),
        OpResult::Written { version: 3 }
    );
    assert_eq!(
        m.read(&get("k")).unwrap(),
        OpResult::Value(versioned("a", 3))
    );
}

#[test]
fn sessions_expire_by_log_index_only() {
    let config = KvConfig {
        max_sessions: 2,
        session_idle_entries: 10,
        ..KvConfig::default()
    };
    let mut m = StateMachine::new(config).unwrap();
    m.apply_ok(1, &cmd(1, 1, put("a", "1")));
    m.apply_ok(2, &cmd(2, 1, put("b", "1")));
    m.apply_ok(3, &cmd(1, 2, put("a", "2")));
    // A third session evicts the least recently active one (client 2, last seen at 2).
    m.apply_ok(4, &cmd(3, 1, put("c", "1")));
    assert_eq!(m.session_count(), 2);
    assert_eq!(
        m.apply_ok(5, &cmd(2, 2, put("b", "2"))),
        OpResult::SessionExpired
    );
    // Client 1 was last active at 3: idle for more than 10 entries by index 14.
    assert_eq!(
        m.apply_ok(14, &cmd(1, 3, put("a", "3"))),
        OpResult::SessionExpired
    );
    assert_eq!(
        m.read(&get("a")).unwrap(),
        OpResult::Value(versioned("2", 3))
    );
    // A brand-new client starts at seq 1.
    assert_eq!(
        m.apply_ok(15, &cmd(9, 1, put("z", "1"))),
        OpResult::Written { version: 15 }
    );
}

#[test]
fn legacy_image_upgrades_with_sessions() {
    let mut m = machine();
    m.apply_ok(1, &cmd(7, 1, put("k", "a")));
    m.apply_ok(2, &cmd(8, 1, put("k", "b")));
    let mut restored = StateMachine::restore(KvConfig::default(), &m.legacy_image()).unwrap();
    assert_eq!(restored, m);
    assert_eq!(
        restored.apply_ok(3, &cmd(7, 1, put("k", "a"))),
        OpResult::Written { version: 1 }
    );
}

#[test]
fn corrupt_snapshots_and_commands_are_errors() {
    let mut m = machine();
    m.apply_ok(1, &cmd(7, 1, put("k", "a")));
    let image = m.legacy_image();
    for cut in [0, 1, image.len() / 2, image.len() - 1] {
        assert!(
            StateMachine::restore(KvConfig::default(), &image[..cut]).is_err(),
            "cut {cut}"
        );
    }
    let mut longer = image.clone();
    longer.push(0);
    assert!(StateMachine::restore(KvConfig::default(), &longer).is_err());
    let small = KvConfig {
        max_snapshot_bytes: 4,
        ..KvConfig::default()
    };
    assert!(StateMachine::restore(small, &image).is_err());

    let command = cmd(3, 4, put("key", "value"));
    let bytes = encode_command(&command).unwrap();
    assert_eq!(decode_command(&bytes).unwrap(), command);
    assert!(decode_command(&bytes[..bytes.len() - 1]).is_err());
    assert!(decode_command(&[0xff; 16]).is_err());
    assert!(decode_command(&vec![0u8; MAX_COMMAND_BYTES + 1]).is_err());
    // A length prefix claiming a huge key must not allocate it.
    let mut huge = bytes[..2].to_vec();
    huge.extend_from_slice(&[251, 0xff, 0xff]);
    assert!(decode_command(&huge).is_err());
}

// ---------------------------------------------------------------------------------------
// Property tests.

/// A deliberately different representation: an unordered list of (key, value, version).
#[derive(Default, Clone)]
struct Model {
    rows: Vec<(Vec<u8>, Vec<u8>, u64)>,
}

impl Model {
    fn find(&self, key: &[u8]) -> Option<Versioned> {
        self.rows
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, ver)| Versioned {
                value: v.clone(),
                version: *ver,
            })
    }

    fn set(&mut self, key: &[u8], value: &[u8], version: u64) -> OpResult {
        self.rows.retain(|(k, _, _)| k != key);
        self.rows.push((key.to_vec(), value.to_vec(), version));
        OpResult::Written { version }
    }

    fn run(&mut self, index: u64, op: &Operation) -> OpResult {
        match op {
            Operation::Get { key } => OpResult::Value(self.find(key)),
            Operation::OpenSession => OpResult::SessionOpened,
            Operation::Put { key, value } => self.set(key, value, index),
            Operation::Delete { key } => {
                let previous = self.find(key);
                self.rows.retain(|(k, _, _)| k != key);
                OpResult::Deleted { previous }
            }
            Operation::PutIfAbsent { key, value } => match self.find(key) {
                None => self.set(key, value, index),
                current => OpResult::ConditionFailed { current },
            },
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            } => {
                let current = self.find(key);
                let ok = match (expected, &current) {
                    (Expected::Absent, None) => true,
                    (Expected::Value(v), Some(c)) => v == &c.value,
                    (Expected::Version(v), Some(c)) => *v == c.version,
                    _ => false,
                };
                if ok {
                    self.set(key, new_value, index)
                } else {
                    OpResult::ConditionFailed { current }
                }
            }
            Operation::Scan { range, limit } => {
                let inside = |k: &Vec<u8>| match range {
                    KeyRange::Prefix(p) => k.starts_with(p),
                    KeyRange::Between { start, end } => {
                        k >= start && end.as_ref().is_none_or(|e| k < e)
                    }
                };
                let mut hits: Vec<_> = self.rows.iter().filter(|(k, _, _)| inside(k)).collect();
                hits.sort();
                let more = hits.len() > *limit as usize;
                let items = hits
                    .into_iter()
                    .take(*limit as usize)
                    .map(|(k, v, ver)| ScanItem {
                        key: k.clone(),
                        value: v.clone(),
                        version: *ver,
                    })
                    .collect();
                OpResult::Scan { items, more }
            }
            Operation::Set {
                key,
                value,
                condition,
                return_previous,
            } => {
                let previous = self.find(key);
                let holds = match condition {
                    SetCondition::Always => true,
                    SetCondition::IfAbsent => previous.is_none(),
                    SetCondition::IfPresent => previous.is_some(),
                };
                if holds {
                    self.set(key, value, index);
                }
                OpResult::Set {
                    written: holds,
                    version: if holds { Some(index) } else { None },
                    previous: previous.filter(|_| *return_previous),
                }
            }
            Operation::Append { key, suffix } => {
                let mut value = self.find(key).map_or_else(Vec::new, |v| v.value);
                value.extend_from_slice(suffix);
                self.set(key, &value, index);
                OpResult::Appended {
                    len_bytes: value.len() as u64,
                    version: index,
                }
            }
            Operation::Increment { key, delta } => {
                // Canonical decimal: parsing and printing back gives the same text.
                let current = match self.find(key) {
                    None => Some(0),
                    Some(v) => String::from_utf8(v.value.clone())
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok().filter(|n| n.to_string() == t)),
                };
                match current.map(|n| n.checked_add(*delta)) {
                    None => OpResult::NotAnInteger { overflow: false },
                    Some(None) => OpResult::NotAnInteger { overflow: true },
                    Some(Some(value)) => {
                        self.set(key, value.to_string().as_bytes(), index);
                        OpResult::Counter {
                            value,
                            version: index,
                        }
                    }
                }
            }
            Operation::PutMany {
                pairs,
                only_if_all_absent,
            } => {
                if *only_if_all_absent {
                    if let Some(current) = pairs.iter().find_map(|(k, _)| self.find(k)) {
                        return OpResult::ConditionFailed {
                            current: Some(current),
                        };
                    }
                }
                for (k, v) in pairs {
                    self.set(k, v, index);
                }
                OpResult::Written { version: index }
            }
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 0..3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..4)
}

fn op() -> impl Strategy<Value = Operation> {
    let expected = prop_oneof![
        Just(Expected::Absent),
        value().prop_map(Expected::Value),
        (0u64..20).prop_map(Expected::Version),
    ];
    let range = prop_oneof![
        key().prop_map(KeyRange::Prefix),
        (key(), prop::option::of(key())).prop_map(|(start, end)| KeyRange::Between { start, end }),
    ];
    prop_oneof![
        key().prop_map(|key| Operation::Get { key }),
        (key(), value()).prop_map(|(key, value)| Operation::Put { key, value }),
        key().prop_map(|key| Operation::Delete { key }),
        (key(), expected, value()).prop_map(|(key, expected, new_value)| {
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            }
        }),
        (key(), value()).prop_map(|(key, value)| Operation::PutIfAbsent { key, value }),
        (range, 1u32..5).prop_map(|(range, limit)| Operation::Scan { range, limit }),
        (key(), -3i64..3).prop_map(|(key, n)| Operation::Put {
            key,
            value: n.to_string().into_bytes(),
        }),
        (key(), value(), 0u8..3, any::<bool>()).prop_map(|(key, value, c, return_previous)| {
            let condition = [
                SetCondition::Always,
                SetCondition::IfAbsent,
                SetCondition::IfPresent,
            ][usize::from(c)];
            Operation::Set {
                key,
                value,
                condition,
                return_previous,
            }
        }),
        (key(), value()).prop_map(|(key, suffix)| Operation::Append { key, suffix }),
        (key(), prop_oneof![Just(i64::MAX), Just(i64::MIN), -3i64..3])
            .prop_map(|(key, delta)| Operation::Increment { key, delta }),
        (prop::collection::vec((key(), value()), 1..4), any::<bool>()).prop_map(
            |(pairs, only_if_all_absent)| Operation::PutMany {
                pairs,
                only_if_all_absent,
            }
        ),
    ]
}

/// `(client, op, retry)`: `retry` re-sends the client's previous command right after.
fn workload() -> impl Strategy<Value = Vec<(u64, Operation, bool)>> {
    prop::collection::vec((0u64..4, op(), prop::bool::weighted(0.2)), 1..60)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_model(ops in workload()) {
        let mut m = machine();
        let mut model = Model::default();
        for (i, (client, op, _)) in ops.iter().enumerate() {
            let index = i as u64 + 1;
            let expected = model.run(index, op);
            if op.is_read() {
                prop_assert_eq!(&m.read(op).unwrap(), &expected);
            }
            // Every command opens a fresh session: dedup plays no part here.
            let got = m.apply_ok(index, &cmd(index * 10 + client, 1, op.clone()));
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_retried_command_takes_effect_once(ops in workload()) {
        // `with_retries` receives every command and, where asked, its retry; `once` receives
        // each command once and a no-op entry where the retry was. Both must answer and end
        // alike.
        let mut with_retries = machine();
        let mut once = machine();
        let mut seqs = [0u64; 4];
        let mut index = 0;
        for (client, op, retry) in ops {
            seqs[client as usize] += 1;
            let command = cmd(client, seqs[client as usize], op);
            index += 1;
            let first = with_retries.apply_ok(index, &command);
            prop_assert_eq!(&once.apply_ok(index, &command), &first);
            if retry {
                index += 1;
                prop_assert_eq!(with_retries.apply_ok(index, &command), first);
                once.skip(index).unwrap();
            }
        }
        prop_assert_eq!(with_retries, once);
    }

    #[test]
    fn snapshot_restore_round_trips(ops in workload(), more in workload()) {
        let mut m = machine();
        let mut seqs = [0u64; 4];
        let mut index = 0;
        for (client, op, _) in ops {
            seqs[client as usize] += 1;
            index += 1;
            m.apply_ok(index, &cmd(client, seqs[client as usize], op));
        }
        let mut restored = StateMachine::restore(KvConfig::default(), &m.legacy_image()).unwrap();
        prop_assert_eq!(&restored, &m);
        prop_assert_eq!(restored.legacy_image(), m.legacy_image());
        // Both continue identically, retries of pre-snapshot commands included.
        for (client, op, retry) in more {
            if !retry {
                seqs[client as usize] += 1;
            }
            index += 1;
            let command = cmd(client, seqs[client as usize].max(1), op);
            prop_assert_eq!(restored.apply_ok(index, &command), m.apply_ok(index, &command));
        }
        prop_assert_eq!(restored, m);
    }

    #[test]
    fn command_codec_round_trips(client_id in any::<u64>(), seq in any::<u64>(), op in op()) {
        let command = Command { client_id, seq, op };
        prop_assert_eq!(decode_command(&encode_command(&command).unwrap()).unwrap(), command);
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_command(&bytes);
        let _ = StateMachine::restore(KvConfig::default(), &bytes);
    }
}

#[test]
fn retry_after_session_expiry_is_refused_not_reapplied() {
    // The client library opens every session with `OpenSession` at seq 1, so its first real
    // operation is seq 2. If the session expires while that operation's outcome is unknown to
    // the client, the retry must be refused (not applied a second time).
    let config = KvConfig {
        max_sessions: 1,
        ..KvConfig::default()
    };
    let mut m = StateMachine::new(config).unwrap();
    assert_eq!(
        m.apply_ok(1, &cmd(1, 1, Operation::OpenSession)),
        OpResult::SessionOpened
    );
    assert_eq!(
        m.apply_ok(2, &cmd(1, 2, put("k", "once"))),
        OpResult::Written { version: 2 }
    );
    // Another client's session evicts client 1's (max_sessions = 1).
    m.apply_ok(3, &cmd(2, 1, Operation::OpenSession));
    assert_eq!(
        m.apply_ok(4, &cmd(1, 2, put("k", "once"))),
        OpResult::SessionExpired
    );
    assert_eq!(
        m.read(&get("k")).unwrap(),
        OpResult::Value(versioned("once", 2))
    );
    // Retrying the session opening itself is harmless: it applies nothing.
    assert_eq!(
        m.apply_ok(5, &cmd(2, 1, Operation::OpenSession)),
        OpResult::SessionOpened
    );
}
