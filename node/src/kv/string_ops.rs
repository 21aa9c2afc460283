//! The read-modify-write operations Redis clients need (SET with NX/XX/GET, APPEND, INCRBY,
//! MSET/MSETNX), applied as single state-machine operations so that they are atomic and, through
//! the session table, exactly once under retries.
//!
//! Why a separate file: each operation is a small function over three primitives of the key
//! space (`KeySpace`: read a key's versioned value, write, and nothing else), so that the
//! state machine's engine (and the plain map the unit tests use) only has to implement those
//! primitives. An error of the key space is a storage failure, passed up as is. Invariants: an
//! operation either writes everything it names at version `index` or writes nothing; a refused
//! operation (a condition that does not hold, a non-integer, a result over `max_value_bytes`)
//! changes nothing.

use std::collections::BTreeMap;

use super::types::{InvalidOp, OpResult, SetCondition, Version, Versioned};
use super::KvError;
use crate::raft::LogIndex;

/// The primitives the operations below are written against.
pub trait KeySpace {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, KvError>;
    fn write(&mut self, index: LogIndex, key: &[u8], value: Vec<u8>) -> Result<(), KvError>;
}

impl KeySpace for BTreeMap<Vec<u8>, Versioned> {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        Ok(self.get(key).cloned())
    }

    fn write(&mut self, index: LogIndex, key: &[u8], value: Vec<u8>) -> Result<(), KvError> {
        self.insert(
            key.to_vec(),
            Versioned {
                value,
                version: index,
            },
        );
        Ok(())
    }
}

/// Redis SET with NX/XX and GET.
pub fn set(
    space: &mut impl KeySpace,
    index: LogIndex,
    key: &[u8],
    value: &[u8],
    condition: SetCondition,
    return_previous: bool,
) -> Result<OpResult, KvError> {
    let previous = space.read(key)?;
    let holds = match condition {
        SetCondition::Always => true,
        SetCondition::IfAbsent => previous.is_none(),
        SetCondition::IfPresent => previous.is_some(),
    };
    if holds {
        space.write(index, key, value.to_vec())?;
    }
    Ok(OpResult::Set {
        written: holds,
        version: holds.then_some(index),
        previous: if return_previous { previous } else { None },
    })
}

/// Redis APPEND: refused (nothing written) when the result would exceed `max_value_bytes`.
pub fn append(
    space: &mut impl KeySpace,
    index: LogIndex,
    key: &[u8],
    suffix: &[u8],
    max_value_bytes: usize,
) -> Result<OpResult, KvError> {
    let mut value = space.read(key)?.map(|v| v.value).unwrap_or_default();
    let len_bytes = value.len() + suffix.len();
    if len_bytes > max_value_bytes {
        return Ok(OpResult::Invalid(InvalidOp::ValueTooLarge {
            len_bytes,
            max_bytes: max_value_bytes,
        }));
    }
    value.extend_from_slice(suffix);
    space.write(index, key, value)?;
    Ok(OpResult::Appended {
        len_bytes: len_bytes as u64,
        version: index,
    })
}

/// Redis INCRBY: the value must be a decimal i64 as Redis prints it (no sign `+`, no leading
/// zeros or spaces); absent counts as 0.
pub fn increment(
    space: &mut impl KeySpace,
    index: LogIndex,
    key: &[u8],
    delta: i64,
) -> Result<OpResult, KvError> {
    let current = match space.read(key)? {
        None => 0,
        Some(v) => match parse_i64(&v.value) {
            Some(n) => n,
            None => return Ok(OpResult::NotAnInteger { overflow: false }),
        },
    };
    let Some(value) = current.checked_add(delta) else {
        return Ok(OpResult::NotAnInteger { overflow: true });
    };
    space.write(index, key, value.to_string().into_bytes())?;
    Ok(OpResult::Counter {
        value,
        version: index,
    })
}

/// Redis MSET / MSETNX: every pair at version `index`, or (MSETNX with a key present) none.
pub fn put_many(
    space: &mut impl KeySpace,
    index: LogIndex,
    pairs: &[(Vec<u8>, Vec<u8>)],
    only_if_all_absent: bool,
) -> Result<OpResult, KvError> {
    if only_if_all_absent {
        for (key, _) in pairs {
            if let Some(current) = space.read(key)? {
                return Ok(OpResult::ConditionFailed {
                    current: Some(current),
                });
            }
        }
    }
    for (key, value) in pairs {
        space.write(index, key, value.clone())?;
    }
    Ok(OpResult::Written {
        version: index as Version,
    })
}

/// Parses a decimal i64 the way Redis's `string2ll` accepts it: an optional `-`, digits, no
/// leading zeros (except "0" itself), nothing else.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Space = BTreeMap<Vec<u8>, Versioned>;

    fn value(space: &Space, key: &[u8]) -> Option<Vec<u8>> {
        space.get(key).map(|v| v.value.clone())
    }

    #[test]
    fn set_conditions_and_previous() {
        let mut space = Space::new();
        let nx = set(&mut space, 1, b"k", b"a", SetCondition::IfAbsent, true).unwrap();
        assert_eq!(
            nx,
            OpResult::Set {
                written: true,
                version: Some(1),
                previous: None
            }
        );
        let nx_again = set(&mut space, 2, b"k", b"b", SetCondition::IfAbsent, false).unwrap();
        assert!(matches!(nx_again, OpResult::Set { written: false, .. }));
        assert_eq!(value(&space, b"k"), Some(b"a".to_vec()));
        let xx = set(&mut space, 3, b"k", b"c", SetCondition::IfPresent, true).unwrap();
        let OpResult::Set {
            written: true,
            previous: Some(previous),
            ..
        } = xx
        else {
            panic!("{xx:?}")
        };
        assert_eq!(previous.value, b"a");
        let xx_absent = set(&mut space, 4, b"z", b"c", SetCondition::IfPresent, false).unwrap();
        assert!(matches!(xx_absent, OpResult::Set { written: false, .. }));
        assert_eq!(value(&space, b"z"), None);
    }

    #[test]
    fn append_grows_and_respects_the_limit() {
        let mut space = Space::new();
        assert!(matches!(
            append(&mut space, 1, b"k", b"ab", 4).unwrap(),
            OpResult::Appended { len_bytes: 2, .. }
        ));
        assert!(matches!(
            append(&mut space, 2, b"k", b"cd", 4).unwrap(),
            OpResult::Appended { len_bytes: 4, .. }
        ));
        assert!(matches!(
            append(&mut space, 3, b"k", b"e", 4).unwrap(),
            OpResult::Invalid(InvalidOp::ValueTooLarge { len_bytes: 5, .. })
        ));
        assert_eq!(value(&space, b"k"), Some(b"abcd".to_vec()));
        assert_eq!(space[b"k".as_slice()].version, 2);
    }

    #[test]
    fn increment_parses_like_redis_and_refuses_overflow() {
        let mut space = Space::new();
        assert!(matches!(
            increment(&mut space, 1, b"n", 5).unwrap(),
            OpResult::Counter { value: 5, .. }
        ));
        assert!(matches!(
            increment(&mut space, 2, b"n", -7).unwrap(),
            OpResult::Counter { value: -2, .. }
        ));
        assert_eq!(value(&space, b"n"), Some(b"-2".to_vec()));
        space.write(3, b"s", b"12a".to_vec()).unwrap();
        assert_eq!(
            increment(&mut space, 4, b"s", 1).unwrap(),
            OpResult::NotAnInteger { overflow: false }
        );
        space
            .write(5, b"m", i64::MAX.to_string().into_bytes())
            .unwrap();
        assert_eq!(
            increment(&mut space, 6, b"m", 1).unwrap(),
            OpResult::NotAnInteger { overflow: true }
        );
        assert_eq!(value(&space, b"m"), Some(i64::MAX.to_string().into_bytes()));
        for bad in [
            "",
            "-",
            "+1",
            " 1",
            "01",
            "-0",
            "1.5",
            "99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad:?}");
        }
        for good in ["0", "-1", "42", "-9223372036854775808"] {
            assert!(parse_i64(good.as_bytes()).is_some(), "{good:?}");
        }
    }

    #[test]
    fn msetnx_is_all_or_nothing() {
        let mut space = Space::new();
        let pairs = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
        ];
        assert_eq!(
            put_many(&mut space, 1, &pairs, true).unwrap(),
            OpResult::Written { version: 1 }
        );
        let more = vec![
            (b"c".to_vec(), b"3".to_vec()),
            (b"b".to_vec(), b"9".to_vec()),
        ];
        assert!(matches!(
            put_many(&mut space, 2, &more, true).unwrap(),
            OpResult::ConditionFailed { .. }
        ));
        assert_eq!(value(&space, b"c"), None);
        assert_eq!(value(&space, b"b"), Some(b"2".to_vec()));
        assert_eq!(
            put_many(&mut space, 3, &more, false).unwrap(),
            OpResult::Written { version: 3 }
        );
        assert_eq!(value(&space, b"b"), Some(b"9".to_vec()));
    }
}
