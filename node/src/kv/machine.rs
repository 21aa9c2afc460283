//! `StateMachine`: the semantics of the key space (versions, CAS, scans, limits) and of the
//! exactly-once session table, over the `Engine` that stores them on disk.
//!
//! Applies go into the engine's open batch; the caller commits the batch once per event-loop
//! turn (`commit`, not durable) and checkpoints it durably now and then (`checkpoint`). The
//! semantic code below touches storage only through `KvStore` (get/put/delete/range).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::engine::{self, Engine, KvStore, Totals, WriteBatch};
use super::sessions::{Session, Sessions};
use super::string_ops::{self, KeySpace};
use super::types::{Command, Expected, InvalidOp, KeyRange, OpResult, Operation, Versioned};
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
    /// Largest legacy (format 1, in-memory) snapshot `restore` accepts.
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

pub struct StateMachine {
    config: KvConfig,
    engine: Engine,
    /// The data's totals as of the open batch (stored with each commit).
    totals: Totals,
    /// The session table (bounded by `max_sessions`), mirrored into the engine per batch.
    sessions: Sessions,
    /// Applied index including the open batch.
    applied_index: LogIndex,
    /// Applied index of the last committed batch.
    committed_index: LogIndex,
    #[cfg(any(test, madsim))]
    bugs: crate::bugs::PlantedBugs,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("engine", &self.engine)
            .field("applied_index", &self.applied_index)
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

/// Legacy snapshot layout (format 1: the whole state in one bincode image). Still read, to
/// upgrade a data directory written by an older build; never written by a node.
const LEGACY_SNAPSHOT_FORMAT: u32 = 1;

#[cfg(test)]
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
    /// An empty state machine in memory (tests).
    pub fn new(config: KvConfig) -> Result<StateMachine, KvError> {
        StateMachine::open(config, Engine::in_memory()?)
    }

    /// The state machine stored in `engine` (its applied index and session table).
    pub fn open(config: KvConfig, engine: Engine) -> Result<StateMachine, KvError> {
        config.validate()?;
        let applied_index = engine.committed_applied_index()?;
        let sessions = Sessions::from_map(engine.load_sessions()?.into_iter().collect());
        Ok(StateMachine {
            config,
            totals: engine.committed_totals()?,
            engine,
            sessions,
            applied_index,
            committed_index: applied_index,
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

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Index of the last log entry applied (or skipped with `skip`), committed or not.
    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// Keys stored, the open batch included (0 when the engine cannot be read).
    pub fn len(&self) -> usize {
        self.engine.key_count().unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key plus value bytes of every key held.
    pub fn stored_bytes(&self) -> u64 {
        self.totals.stored_bytes
    }

    /// Order-independent checksum of every key, version and value (see `engine::Totals`):
    /// replicas at one applied index hold equal data exactly when (but for a 2^-64 chance)
    /// their digests are equal.
    pub fn digest(&self) -> u64 {
        self.totals.digest
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Records that log entry `index` carries no command (a no-op or membership change).
    pub fn skip(&mut self, index: LogIndex) -> Result<(), KvError> {
        assert!(
            index > self.applied_index,
            "skip({index}) after applied {}",
            self.applied_index
        );
        self.engine.batch()?;
        self.applied_index = index;
        Ok(())
    }

    /// Applies the command of log entry `index`, exactly once per `(client_id, seq)`. An
    /// error means the engine failed: the result must not be used, the node must stop.
    pub fn apply(&mut self, index: LogIndex, command: &Command) -> Result<OpResult, KvError> {
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
                return Ok(OpResult::Stale {
                    last_seq: s.last_seq,
                });
            }
            Some(s) if command.seq == s.last_seq && !self.retry_dedup_disabled() => {
                tracing::debug!(client = command.client_id, seq = command.seq, "duplicate");
                return Ok(s.last_response.clone());
            }
            None if command.seq != 1 => return Ok(OpResult::SessionExpired),
            _ => {}
        }
        let limits = self.check_limits(&command.op);
        let max_value_bytes = self.config.max_value_bytes;
        let txn = self.engine.batch()?;
        let mut keys = AccountedKeys {
            store: WriteBatch { txn },
            totals: &mut self.totals,
        };
        let result = match limits {
            Err(invalid) => OpResult::Invalid(invalid),
            Ok(()) => execute(&mut keys, index, &command.op, max_value_bytes)?,
        };
        self.sessions
            .record(command.client_id, command.seq, result.clone(), index);
        let cfg = &self.config;
        self.sessions
            .expire(index, cfg.session_idle_entries, cfg.max_sessions);
        Ok(result)
    }

    /// `apply` for tests: panics on an engine failure.
    #[cfg(test)]
    pub fn apply_ok(&mut self, index: LogIndex, command: &Command) -> OpResult {
        self.apply(index, command).expect("engine failure")
    }

    #[cfg(any(test, madsim))]
    fn retry_dedup_disabled(&self) -> bool {
        self.bugs.no_retry_dedup
    }

    #[cfg(not(any(test, madsim)))]
    fn retry_dedup_disabled(&self) -> bool {
        false
    }

    /// Commits the applies since the last commit in one engine transaction, together with
    /// the session changes and the applied index that covers them. Durable only with
    /// `durable` (a checkpoint: the Raft log may then be compacted through
    /// `applied_index()`).
    pub fn commit(&mut self, durable: bool) -> Result<(), KvError> {
        // Planted bug: a checkpoint is reported done (its applied index then lets the log be
        // compacted) while the data it covers is not durable.
        let durable = durable && !self.applied_before_data();
        let changed = self.applied_index != self.committed_index || self.engine.has_batch();
        if changed {
            let txn = self.engine.batch()?;
            for (client, session) in self.sessions.take_dirty() {
                let bytes = session.map(engine::encode_session);
                engine::write_session(txn, client, bytes.as_deref())?;
            }
            engine::write_applied(txn, self.applied_index)?;
            engine::write_totals(txn, self.totals)?;
        }
        self.engine.commit_batch(durable)?;
        self.committed_index = self.applied_index;
        Ok(())
    }

    #[cfg(any(test, madsim))]
    fn applied_before_data(&self) -> bool {
        self.bugs.applied_before_data
    }

    #[cfg(not(any(test, madsim)))]
    fn applied_before_data(&self) -> bool {
        false
    }

    /// Serves a read (`Get` or `Scan`) from the current state (the open batch included).
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
        match &self.engine.batch {
            Some(txn) => read_op(&WriteBatch { txn }, op),
            None => read_op(&self.engine.read_view()?, op),
        }
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

    /// Every key with its version, ascending (tests and the legacy image).
    pub fn contents(&self) -> Result<Vec<(Vec<u8>, Versioned)>, KvError> {
        let (items, _) = match &self.engine.batch {
            Some(txn) => {
                WriteBatch { txn }.range(Bound::Unbounded, Bound::Unbounded, None, usize::MAX)?
            }
            None => self.engine.read_view()?.range(
                Bound::Unbounded,
                Bound::Unbounded,
                None,
                usize::MAX,
            )?,
        };
        Ok(items
            .into_iter()
            .map(|i| {
                (
                    i.key,
                    Versioned {
                        value: i.value,
                        version: i.version,
                    },
                )
            })
            .collect())
    }

    /// The whole state in the legacy format-1 image (tests: what an older build wrote).
    #[cfg(test)]
    pub fn legacy_image(&self) -> Vec<u8> {
        let data: BTreeMap<Vec<u8>, Versioned> = self
            .contents()
            .expect("engine failure")
            .into_iter()
            .collect();
        let image = ImageRef {
            format: LEGACY_SNAPSHOT_FORMAT,
            applied_index: self.applied_index,
            data: &data,
            sessions: self.sessions.as_map(),
        };
        bincode::serde::encode_to_vec(&image, bincode::config::standard())
            .expect("encoding a state machine image into memory cannot fail")
    }

    /// Rebuilds a state machine in memory from a legacy format-1 image (tests).
    pub fn restore(config: KvConfig, snapshot: &[u8]) -> Result<StateMachine, KvError> {
        StateMachine::upgrade(config, Engine::in_memory()?, snapshot)
    }

    /// Upgrades a legacy format-1 image (written by an older build, which kept the whole
    /// shard in memory) into `engine`, which must be empty, and checkpoints it durably.
    pub fn upgrade(
        config: KvConfig,
        engine: Engine,
        snapshot: &[u8],
    ) -> Result<StateMachine, KvError> {
        let image: Image = crate::bounded_decode::decode_exact_within(
            snapshot,
            "max_snapshot_bytes",
            config.max_snapshot_bytes,
        )
        .map_err(|e| KvError::Snapshot(format!("legacy state image: {e}")))?;
        if image.format != LEGACY_SNAPSHOT_FORMAT {
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
        let mut machine = StateMachine::open(config, engine)?;
        if machine.applied_index != 0 || !machine.is_empty() {
            return Err(KvError::Storage(format!(
                "{}: upgrading a legacy snapshot into a non-empty engine",
                machine.engine.name()
            )));
        }
        {
            let txn = machine.engine.batch()?;
            let mut keys = AccountedKeys {
                store: WriteBatch { txn },
                totals: &mut machine.totals,
            };
            for (key, v) in &image.data {
                keys.put(key, v)?;
            }
        }
        for (client, s) in image.sessions {
            machine
                .sessions
                .record(client, s.last_seq, s.last_response, s.last_active_index);
        }
        machine.applied_index = image.applied_index;
        machine.commit(true)?;
        Ok(machine)
    }
}

fn read_op(store: &impl KvStore, op: &Operation) -> Result<OpResult, KvError> {
    Ok(match op {
        Operation::Get { key } => OpResult::Value(store.get(key)?),
        Operation::Scan { range, limit } => scan(store, range, *limit)?,
        _ => unreachable!("writes rejected by the caller"),
    })
}

/// The open batch as the operations see it: every change of a key goes through `put` or
/// `delete` here, which keep the data's `Totals` (bytes stored, digest) up to date.
struct AccountedKeys<'a, S> {
    store: S,
    totals: &'a mut Totals,
}

impl<S: KvStore> AccountedKeys<'_, S> {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        self.store.get(key)
    }

    fn put(&mut self, key: &[u8], value: &Versioned) -> Result<(), KvError> {
        self.store.put(key, value, self.totals)
    }

    fn delete(&mut self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        let previous = self.store.delete(key)?;
        if let Some(p) = &previous {
            self.totals.remove(key, &engine::encode_versioned(p));
        }
        Ok(previous)
    }
}

impl<S: KvStore> KeySpace for AccountedKeys<'_, S> {
    fn read(&self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        self.get(key)
    }

    fn write(&mut self, index: LogIndex, key: &[u8], value: Vec<u8>) -> Result<(), KvError> {
        self.put(
            key,
            &Versioned {
                value,
                version: index,
            },
        )
    }
}

/// The semantics of one operation whose limits were checked.
fn execute<S: KvStore>(
    keys: &mut AccountedKeys<'_, S>,
    index: LogIndex,
    op: &Operation,
    max_value_bytes: usize,
) -> Result<OpResult, KvError> {
    Ok(match op {
        Operation::Get { .. } | Operation::Scan { .. } => read_op(&keys.store, op)?,
        Operation::Put { key, value } => write(keys, index, key, value)?,
        Operation::Delete { key } => OpResult::Deleted {
            previous: keys.delete(key)?,
        },
        Operation::PutIfAbsent { key, value } => match keys.get(key)? {
            None => write(keys, index, key, value)?,
            Some(current) => OpResult::ConditionFailed {
                current: Some(current),
            },
        },
        Operation::CompareAndSwap {
            key,
            expected,
            new_value,
        } => {
            let current = keys.get(key)?;
            let holds = match (expected, &current) {
                (Expected::Absent, None) => true,
                (Expected::Value(v), Some(c)) => *v == c.value,
                (Expected::Version(v), Some(c)) => *v == c.version,
                _ => false,
            };
            if holds {
                write(keys, index, key, new_value)?
            } else {
                OpResult::ConditionFailed { current }
            }
        }
        // The session itself is recorded by `apply`.
        Operation::OpenSession => OpResult::SessionOpened,
        Operation::Set {
            key,
            value,
            condition,
            return_previous,
        } => string_ops::set(keys, index, key, value, *condition, *return_previous)?,
        Operation::Append { key, suffix } => {
            string_ops::append(keys, index, key, suffix, max_value_bytes)?
        }
        Operation::Increment { key, delta } => string_ops::increment(keys, index, key, *delta)?,
        Operation::PutMany {
            pairs,
            only_if_all_absent,
        } => string_ops::put_many(keys, index, pairs, *only_if_all_absent)?,
    })
}

fn write<S: KvStore>(
    keys: &mut AccountedKeys<'_, S>,
    index: LogIndex,
    key: &[u8],
    value: &[u8],
) -> Result<OpResult, KvError> {
    let versioned = Versioned {
        value: value.to_vec(),
        version: index,
    };
    keys.put(key, &versioned)?;
    Ok(OpResult::Written { version: index })
}

fn scan(store: &impl KvStore, range: &KeyRange, limit: u32) -> Result<OpResult, KvError> {
    let (lower, upper): (Bound<&[u8]>, Bound<&[u8]>) = match range {
        KeyRange::Between { start, end } => {
            if end.as_ref().is_some_and(|e| e <= start) {
                return Ok(OpResult::Scan {
                    items: Vec::new(),
                    more: false,
                });
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
    let (items, more) = store.range(lower, upper, prefix, limit as usize)?;
    Ok(OpResult::Scan { items, more })
}

impl PartialEq for StateMachine {
    /// Equal replicated state (config and planted bugs are local settings, not state).
    fn eq(&self, other: &Self) -> bool {
        self.applied_index == other.applied_index
            && self.sessions == other.sessions
            && self.contents().ok() == other.contents().ok()
    }
}
