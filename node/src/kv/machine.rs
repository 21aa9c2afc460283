//! `StateMachine`: the key space, per-key versions and the session table, plus snapshots.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::sessions::{Session, Sessions};
use super::string_ops;
use super::types::{
    Command, Expected, InvalidOp, KeyRange, OpResult, Operation, ScanItem, Versioned,
};
use super::KvError;
use crate::raft::LogIndex;

/// Limits of the state machine. Every replica of a group must use the same values: they
/// decide how commands are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Largest `limit` a scan may ask for.
    pub max_scan_limit: u32,
    /// Open sessions kept; beyond it the least recently active (by log index) is dropped.
    pub max_sessions: usize,
    /// A session with no command in this many log entries is dropped.
    pub session_idle_entries: u64,
    /// Largest snapshot `restore` accepts.
    pub max_snapshot_bytes: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_scan_limit: 10_000,
            max_sessions: 100_000,
            session_idle_entries: 10_000_000,
            max_snapshot_bytes: 1 << 30,
        }
    }
}

impl KvConfig {
    pub fn validate(&self) -> Result<(), KvError> {
        if self.max_sessions == 0 {
            return Err(KvError::Config("max_sessions must be at least 1"));
        }
        if self.max_scan_limit == 0 {
            return Err(KvError::Config("max_scan_limit must be at least 1"));
        }
        if self.max_key_bytes + self.max_value_bytes + 1024 > super::MAX_COMMAND_BYTES {
            return Err(KvError::Config(
                "max_key_bytes + max_value_bytes exceed MAX_COMMAND_BYTES",
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct StateMachine {
    config: KvConfig,
    data: BTreeMap<Vec<u8>, Versioned>,
    /// Key plus value bytes over `data` (kept up to date by every change of `data`).
    stored_bytes: u64,
    sessions: Sessions,
    applied_index: LogIndex,
    #[cfg(any(test, madsim))]
    bugs: crate::bugs::PlantedBugs,
}

fn entry_bytes(key: &[u8], value: &Versioned) -> u64 {
    (key.len() + value.value.len()) as u64
}

/// The key space as the Redis string operations see it, keeping `stored_bytes` up to date
/// like every other change of the data.
struct AccountedKeys<'a> {
    data: &'a mut BTreeMap<Vec<u8>, Versioned>,
    stored_bytes: &'a mut u64,
}

impl string_ops::KeySpace for AccountedKeys<'_> {
    fn read(&self, key: &[u8]) -> Option<Versioned> {
        self.data.read(key)
    }

    fn write(&mut self, index: LogIndex, key: &[u8], value: Vec<u8>) {
        let versioned = Versioned {
            value,
            version: index,
        };
        *self.stored_bytes += entry_bytes(key, &versioned);
        if let Some(previous) = self.data.insert(key.to_vec(), versioned) {
            *self.stored_bytes -= entry_bytes(key, &previous);
        }
    }
}

/// Snapshot layout (bincode, standard config). `format` guards against reading a snapshot
/// written by an incompatible build.
const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Serialize)]
struct ImageRef<'a> {
    format: u32,
    applied_index: LogIndex,
    data: &'a BTreeMap<Vec<u8>, Versioned>,
    sessions: &'a BTreeMap<u64, Session>,
}

#[derive(Deserialize)]
struct Image {
    format: u32,
    applied_index: LogIndex,
    data: BTreeMap<Vec<u8>, Versioned>,
    sessions: BTreeMap<u64, Session>,
}

impl StateMachine {
    pub fn new(config: KvConfig) -> Result<StateMachine, KvError> {
        config.validate()?;
        Ok(StateMachine {
            config,
            data: BTreeMap::new(),
            stored_bytes: 0,
            sessions: Sessions::default(),
            applied_index: 0,
            #[cfg(any(test, madsim))]
            bugs: Default::default(),
        })
    }

    /// Switches planted bugs on (test and simulation builds only).
    #[cfg(any(test, madsim))]
    pub fn set_planted_bugs(&mut self, bugs: crate::bugs::PlantedBugs) {
        self.bugs = bugs;
    }

    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// Index of the last log entry applied (or skipped with `skip`).
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Key plus value bytes of every key held.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Records that log entry `index` carries no command (a no-op or membership change).
    pub fn skip(&mut self, index: LogIndex) {
        assert!(
            index > self.applied_index,
            "skip({index}) after applied {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    /// Applies the command of log entry `index`, exactly once per `(client_id, seq)`.
    pub fn apply(&mut self, index: LogIndex, command: &Command) -> OpResult {
        assert!(
            index > self.applied_index,
            "apply({index}) after applied {}: indexes must increase",
            self.applied_index
        );
        self.applied_index = index;
        let cfg = &self.config;
        self.sessions
            .expire(index, cfg.session_idle_entries, cfg.max_sessions);
        match self.sessions.get(command.client_id) {
            Some(s) if command.seq < s.last_seq => {
                return OpResult::Stale {
                    last_seq: s.last_seq,
                };
            }
            Some(s) if command.seq == s.last_seq && !self.retry_dedup_disabled() => {
                tracing::debug!(client = command.client_id, seq = command.seq, "duplicate");
                return s.last_response.clone();
            }
            None if command.seq != 1 => return OpResult::SessionExpired,
            _ => {}
        }
        let result = self.execute(index, &command.op);
        self.sessions
            .record(command.client_id, command.seq, result.clone(), index);
        let cfg = &self.config;
        self.sessions
            .expire(index, cfg.session_idle_entries, cfg.max_sessions);
        result
    }

    #[cfg(any(test, madsim))]
    fn retry_dedup_disabled(&self) -> bool {
        self.bugs.no_retry_dedup
    }

    #[cfg(not(any(test, madsim)))]
    fn retry_dedup_disabled(&self) -> bool {
        false
    }

    /// Serves a read (`Get` or `Scan`) from the current state.
    pub fn read(&self, op: &Operation) -> Result<OpResult, KvError> {
        match op {
            Operation::Get { .. } | Operation::Scan { .. } => {}
            Operation::Put { .. } => return Err(KvError::NotARead("put")),
            Operation::Delete { .. } => return Err(KvError::NotARead("delete")),
            Operation::CompareAndSwap { .. } => return Err(KvError::NotARead("cas")),
            Operation::PutIfAbsent { .. } => return Err(KvError::NotARead("put-if-absent")),
            Operation::OpenSession => return Err(KvError::NotARead("open-session")),
            Operation::Set { .. } => return Err(KvError::NotARead("set")),
            Operation::Append { .. } => return Err(KvError::NotARead("append")),
            Operation::Increment { .. } => return Err(KvError::NotARead("increment")),
            Operation::PutMany { .. } => return Err(KvError::NotARead("put-many")),
        }
        if let Err(invalid) = self.check_limits(op) {
            return Ok(OpResult::Invalid(invalid));
        }
        Ok(match op {
            Operation::Get { key } => OpResult::Value(self.data.get(key).cloned()),
            Operation::Scan { range, limit } => self.scan(range, *limit),
            _ => unreachable!("writes rejected above"),
        })
    }

    /// Checks an operation against the limits (the server calls it before proposing, and
    /// `apply` calls it again, so an oversized command is refused the same way everywhere).
    pub fn check_limits(&self, op: &Operation) -> Result<(), InvalidOp> {
        let cfg = &self.config;
        let key_ok = |key: &[u8]| {
            if key.len() > cfg.max_key_bytes {
                Err(InvalidOp::KeyTooLarge {
                    len_bytes: key.len(),
                    max_bytes: cfg.max_key_bytes,
                })
            } else {
                Ok(())
            }
        };
        let value_ok = |value: &[u8]| {
            if value.len() > cfg.max_value_bytes {
                Err(InvalidOp::ValueTooLarge {
                    len_bytes: value.len(),
                    max_bytes: cfg.max_value_bytes,
                })
            } else {
                Ok(())
            }
        };
        match op {
            Operation::Get { key }
            | Operation::Delete { key }
            | Operation::Increment { key, .. } => key_ok(key),
            Operation::Put { key, value }
            | Operation::PutIfAbsent { key, value }
            | Operation::Set { key, value, .. }
            | Operation::Append { key, suffix: value } => {
                key_ok(key)?;
                value_ok(value)
            }
            Operation::PutMany { pairs, .. } => {
                let len_bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
                let max_bytes = cfg.max_key_bytes + cfg.max_value_bytes;
                if pairs.is_empty() || len_bytes > max_bytes {
                    return Err(InvalidOp::BadBatch {
                        pairs: pairs.len(),
                        len_bytes,
                        max_bytes,
                    });
                }
                pairs.iter().try_for_each(|(k, v)| {
                    key_ok(k)?;
                    value_ok(v)
                })
            }
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            } => {
                key_ok(key)?;
                value_ok(new_value)?;
                match expected {
                    Expected::Value(v) => value_ok(v),
                    Expected::Absent | Expected::Version(_) => Ok(()),
                }
            }
            Operation::Scan { range, limit } => {
                if *limit == 0 || *limit > cfg.max_scan_limit {
                    return Err(InvalidOp::BadScanLimit {
                        limit: *limit,
                        max: cfg.max_scan_limit,
                    });
                }
                match range {
                    KeyRange::Prefix(p) => key_ok(p),
                    KeyRange::Between { start, end } => {
                        key_ok(start)?;
                        end.as_deref().map_or(Ok(()), key_ok)
                    }
                }
            }
            Operation::OpenSession => Ok(()),
        }
    }

    fn execute(&mut self, index: LogIndex, op: &Operation) -> OpResult {
        if let Err(invalid) = self.check_limits(op) {
            return OpResult::Invalid(invalid);
        }
        match op {
            Operation::Get { key } => OpResult::Value(self.data.get(key).cloned()),
            Operation::Scan { range, limit } => self.scan(range, *limit),
            Operation::Put { key, value } => self.write(index, key, value),
            Operation::Delete { key } => {
                let previous = self.data.remove(key);
                if let Some(previous) = &previous {
                    self.stored_bytes -= entry_bytes(key, previous);
                }
                OpResult::Deleted { previous }
            }
            Operation::PutIfAbsent { key, value } => match self.data.get(key) {
                None => self.write(index, key, value),
                Some(current) => OpResult::ConditionFailed {
                    current: Some(current.clone()),
                },
            },
            Operation::CompareAndSwap {
                key,
                expected,
                new_value,
            } => {
                let current = self.data.get(key);
                let holds = match (expected, current) {
                    (Expected::Absent, None) => true,
                    (Expected::Value(v), Some(c)) => *v == c.value,
                    (Expected::Version(v), Some(c)) => *v == c.version,
                    _ => false,
                };
                if holds {
                    self.write(index, key, new_value)
                } else {
                    OpResult::ConditionFailed {
                        current: current.cloned(),
                    }
                }
            }
            // The session itself is recorded by `apply`.
            Operation::OpenSession => OpResult::SessionOpened,
            Operation::Set {
                key,
                value,
                condition,
                return_previous,
            } => string_ops::set(
                &mut self.accounted_keys(),
                index,
                key,
                value,
                *condition,
                *return_previous,
            ),
            Operation::Append { key, suffix } => {
                let max_value_bytes = self.config.max_value_bytes;
                string_ops::append(
                    &mut self.accounted_keys(),
                    index,
                    key,
                    suffix,
                    max_value_bytes,
                )
            }
            Operation::Increment { key, delta } => {
                string_ops::increment(&mut self.accounted_keys(), index, key, *delta)
            }
            Operation::PutMany {
                pairs,
                only_if_all_absent,
            } => string_ops::put_many(
                &mut self.accounted_keys(),
                index,
                pairs,
                *only_if_all_absent,
            ),
        }
    }

    fn accounted_keys(&mut self) -> AccountedKeys<'_> {
        AccountedKeys {
            data: &mut self.data,
            stored_bytes: &mut self.stored_bytes,
        }
    }

    fn write(&mut self, index: LogIndex, key: &[u8], value: &[u8]) -> OpResult {
        let versioned = Versioned {
            value: value.to_vec(),
            version: index,
        };
        self.stored_bytes += entry_bytes(key, &versioned);
        if let Some(previous) = self.data.insert(key.to_vec(), versioned) {
            self.stored_bytes -= entry_bytes(key, &previous);
        }
        OpResult::Written { version: index }
    }

    fn scan(&self, range: &KeyRange, limit: u32) -> OpResult {
        let limit = limit as usize;
        let (lower, upper): (Bound<&[u8]>, Bound<&[u8]>) = match range {
            KeyRange::Between { start, end } => {
                if end.as_ref().is_some_and(|e| e <= start) {
                    return OpResult::Scan {
                        items: Vec::new(),
                        more: false,
                    };
                }
                let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                (Bound::Included(start.as_slice()), upper)
            }
            KeyRange::Prefix(prefix) => (Bound::Included(prefix.as_slice()), Bound::Unbounded),
        };
        let prefix = match range {
            KeyRange::Prefix(p) => Some(p.as_slice()),
            KeyRange::Between { .. } => None,
        };
        let mut items = Vec::new();
        let mut more = false;
        let matching = self
            .data
            .range::<[u8], _>((lower, upper))
            .take_while(|(k, _)| prefix.is_none_or(|p| k.starts_with(p)));
        for (key, v) in matching {
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(ScanItem {
                key: key.clone(),
                value: v.value.clone(),
                version: v.version,
            });
        }
        OpResult::Scan { items, more }
    }

    /// Encodes the whole state (keys, versions, sessions, applied index).
    pub fn snapshot(&self) -> Vec<u8> {
        let empty = BTreeMap::new();
        let sessions = if self.snapshot_drops_sessions() {
            &empty
        } else {
            self.sessions.as_map()
        };
        let image = ImageRef {
            format: SNAPSHOT_FORMAT,
            applied_index: self.applied_index,
            data: &self.data,
            sessions,
        };
        // Encoding plain maps of bytes and integers into a Vec cannot fail.
        bincode::serde::encode_to_vec(&image, bincode::config::standard())
            .expect("encoding a state machine image into memory cannot fail")
    }

    #[cfg(any(test, madsim))]
    fn snapshot_drops_sessions(&self) -> bool {
        self.bugs.snapshot_drops_sessions
    }

    #[cfg(not(any(test, madsim)))]
    fn snapshot_drops_sessions(&self) -> bool {
        false
    }

    /// Rebuilds a state machine from `snapshot()` output.
    pub fn restore(config: KvConfig, snapshot: &[u8]) -> Result<StateMachine, KvError> {
        if snapshot.len() > config.max_snapshot_bytes {
            return Err(KvError::Snapshot(format!(
                "{} bytes exceed max_snapshot_bytes {}",
                snapshot.len(),
                config.max_snapshot_bytes
            )));
        }
        let codec = bincode::config::standard().with_limit::<{ 1 << 31 }>();
        let (image, read): (Image, usize) = bincode::serde::decode_from_slice(snapshot, codec)
            .map_err(|e| KvError::Snapshot(e.to_string()))?;
        if read != snapshot.len() {
            return Err(KvError::Snapshot(format!(
                "{} trailing bytes",
                snapshot.len() - read
            )));
        }
        if image.format != SNAPSHOT_FORMAT {
            return Err(KvError::Snapshot(format!(
                "unknown format {}",
                image.format
            )));
        }
        if let Some((key, v)) = image
            .data
            .iter()
            .find(|(_, v)| v.version > image.applied_index)
        {
            return Err(KvError::Snapshot(format!(
                "key {key:?} has version {} past applied index {}",
                v.version, image.applied_index
            )));
        }
        let mut machine = StateMachine::new(config)?;
        machine.stored_bytes = image.data.iter().map(|(k, v)| entry_bytes(k, v)).sum();
        machine.data = image.data;
        machine.sessions = Sessions::from_map(image.sessions);
        machine.applied_index = image.applied_index;
        Ok(machine)
    }
}

impl PartialEq for StateMachine {
    /// Equal replicated state (config and planted bugs are local settings, not state).
    fn eq(&self, other: &Self) -> bool {
        self.applied_index == other.applied_index
            && self.data == other.data
            && self.sessions == other.sessions
    }
}
