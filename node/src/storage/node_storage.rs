//! `NodeStorage`: everything one Raft node must find again after a crash — hard state, log
//! entries and the latest snapshot — behind one facade with group commit.
//!
//! Invariants:
//! - `persist` performs all its writes, then ONE log sync (plus a directory sync when it
//!   started a new segment; a snapshot costs its own syncs, written before the log records
//!   that depend on it). When `persist` returns Ok, everything it was given is durable.
//! - Recovery returns exactly what the last successful `persist`s made durable, possibly plus
//!   a prefix of a `persist` interrupted by the crash (never a torn record), as in Raft's
//!   contract: hard state, entries contiguous from `snapshot.index + 1` (or 1), and a snapshot.
//! - After any I/O error the store is poisoned: what reached the disk is unknown.

use std::sync::Arc;

use crate::raft::{Entry, HardState, LogIndex, Snapshot, SnapshotMeta, Term};

use super::disk::{Disk, DiskFile};
use super::log::{encode_record, Located, LogRecord, SegmentLog};
use super::snapshot::{self, SNAPSHOT_TMP_FILE};
use super::StorageError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageOptions {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_max_bytes: u64,
    /// Largest encoded log record (one entry or hard state).
    pub max_record_bytes: usize,
}

impl StorageOptions {
    pub fn validate(&self) -> Result<(), StorageError> {
        if self.segment_max_bytes == 0 {
            return Err(StorageError::InvalidOptions(
                "segment_max_bytes must be positive",
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u32::MAX as usize {
            return Err(StorageError::InvalidOptions(
                "max_record_bytes must be in 1..=u32::MAX",
            ));
        }
        Ok(())
    }
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            segment_max_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
        }
    }
}

/// What `NodeStorage::open` found on disk (all empty for a brand-new node). The runtime turns
/// it into the Raft core's `Restored` and restores the state machine from `snapshot.data`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Contiguous, starting at `snapshot.meta.index + 1` (or 1).
    pub entries: Vec<Entry>,
}

pub struct NodeStorage {
    disk: Arc<dyn Disk>,
    options: StorageOptions,
    log: SegmentLog,
    hard_state: HardState,
    snapshot_meta: Option<SnapshotMeta>,
    /// Terms of the live log entries; `terms[0]` is the term of entry `first_index`.
    first_index: LogIndex,
    terms: Vec<Term>,
    poisoned: Option<String>,
    /// `persist_deferred` wrote records that need a sync before anyone relies on them.
    sync_pending: bool,
}

impl std::fmt::Debug for NodeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStorage")
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("first_index", &self.first_index)
            .field("last_index", &self.last_index())
            .field("segments", &self.log.segment_count())
            .finish()
    }
}

impl NodeStorage {
    pub fn open(disk: Arc<dyn Disk>) -> Result<(NodeStorage, Recovered), StorageError> {
        NodeStorage::open_with(disk, StorageOptions::default())
    }

    pub fn open_with(
        disk: Arc<dyn Disk>,
        options: StorageOptions,
    ) -> Result<(NodeStorage, Recovered), StorageError> {
        options.validate()?;
        let tmp = SNAPSHOT_TMP_FILE;
        if disk
            .exists(tmp)
            .map_err(|e| StorageError::io(tmp, "stat", e))?
        {
            disk.remove(tmp)
                .map_err(|e| StorageError::io(tmp, "remove", e))?;
            disk.sync_dir()
                .map_err(|e| StorageError::io(".", "sync_dir", e))?;
        }
        let snapshot = snapshot::read(disk.as_ref())?;
        let (log, records) = SegmentLog::open(Arc::clone(&disk), options.max_record_bytes)?;
        let (hard_state, mut entries) = replay(records)?;
        let snapshot_index = snapshot.as_ref().map_or(0, |s| s.meta.index);
        let mut cleared = false;
        if let (Some(snap), Some(first)) = (&snapshot, entries.first()) {
            if first.index > snapshot_index + 1 {
                let reason = format!(
                    "log starts at index {} but the snapshot ends at {snapshot_index}",
                    first.index
                );
                return Err(StorageError::corrupt("log", 0, reason));
            }
            // Raft's InstallSnapshot rule: keep the entries after the snapshot only if the log
            // holds the snapshot's last entry with the same term (or starts right after it).
            let at = entries.iter().find(|e| e.index == snap.meta.index);
            let matches = at.is_some_and(|e| e.term == snap.meta.term);
            if matches || first.index == snapshot_index + 1 {
                entries.retain(|e| e.index > snap.meta.index);
            } else {
                entries.clear();
                cleared = true;
            }
        }
        if let Some(first) = entries.first() {
            if first.index != snapshot_index + 1 {
                let reason = format!("log starts at index {} without a snapshot", first.index);
                return Err(StorageError::corrupt("log", 0, reason));
            }
        }
        let mut storage = NodeStorage {
            disk,
            options,
            log,
            hard_state: hard_state.clone(),
            snapshot_meta: snapshot.as_ref().map(|s| s.meta.clone()),
            first_index: snapshot_index + 1,
            terms: entries.iter().map(|e| e.term).collect(),
            poisoned: None,
            sync_pending: false,
        };
        if cleared {
            // Make the file agree with what we return before anything is appended after it
            // (else later entries would follow conflicting or too short ones).
            storage.append(&[LogRecord::ClearLog], 0, true)?;
        }
        tracing::info!(storage = ?storage, "storage recovered");
        Ok((
            storage,
            Recovered {
                hard_state,
                snapshot,
                entries,
            },
        ))
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot_meta.as_ref()
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot_meta.as_ref().map_or(0, |m| m.index)
    }

    /// Index of the last entry (the snapshot's index when the log is empty).
    pub fn last_index(&self) -> LogIndex {
        self.first_index + self.terms.len() as u64 - 1
    }

    /// Term of entry `index`, if the live log holds it (or the snapshot ends there).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if let Some(meta) = self.snapshot_meta.as_ref().filter(|m| m.index == index) {
            return Some(meta.term);
        }
        let offset = index.checked_sub(self.first_index)?;
        self.terms.get(usize::try_from(offset).ok()?).copied()
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// Makes durable, in this order, `snapshot` (if newer than the current one), `entries`
    /// (replacing any suffix from `entries[0].index` on) and `hard_state`, with one log sync.
    /// Exception: a call that only advances the commit index (same term and vote, no entries,
    /// no snapshot) is written but not synced; it becomes durable with the next sync, and a
    /// crash before that recovers the previous commit index, which Raft tolerates.
    pub fn persist(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), StorageError> {
        self.persist_deferred(hard_state, entries, snapshot)?;
        self.sync_deferred()
    }

    /// As `persist`, but leaves the log's sync to the caller (`sync_deferred`, or
    /// `sync_stores` for many stores at once): nothing written here may be relied on before
    /// that. A snapshot is still written and synced here (rare and large).
    pub fn persist_deferred(
        &mut self,
        hard_state: Option<&HardState>,
        entries: &[Entry],
        snapshot: Option<&Snapshot>,
    ) -> Result<(), StorageError> {
        self.check_poisoned()?;
        let snapshot = snapshot.filter(|s| {
            let newer = s.meta.index > self.snapshot_index();
            if !newer {
                tracing::warn!(
                    index = s.meta.index,
                    "ignoring snapshot not newer than ours"
                );
            }
            newer
        });
        self.validate_entries(entries, snapshot.map(|s| &s.meta))?;
        let mut records = Vec::with_capacity(entries.len() + 2);
        if let Some(snap) = snapshot {
            self.poison_on_error(|s| snapshot::write(s.disk.as_ref(), snap))?;
            if self.term(snap.meta.index) == Some(snap.meta.term) {
                let keep_from = usize::try_from(snap.meta.index + 1 - self.first_index)
                    .unwrap_or(usize::MAX)
                    .min(self.terms.len());
                self.terms.drain(..keep_from);
            } else {
                self.terms.clear();
                records.push(LogRecord::ClearLog);
            }
            self.first_index = snap.meta.index + 1;
            self.snapshot_meta = Some(snap.meta.clone());
        }
        if let Some(first) = entries.first() {
            let keep = (first.index - self.first_index) as usize;
            self.terms.truncate(keep);
            self.terms.extend(entries.iter().map(|e| e.term));
            records.extend(entries.iter().cloned().map(LogRecord::Entry));
        }
        let new_hard_state = hard_state.filter(|hs| **hs != self.hard_state);
        if let Some(hs) = new_hard_state {
            records.push(LogRecord::HardState(hs.clone()));
        }
        if !records.is_empty() {
            let max_index = entries.last().map_or(0, |e| e.index);
            // Raft needs term, vote, entries and snapshots durable before it acts on them, but
            // not the commit index (a restarted node relearns it from the leader). A record
            // that only advances the commit index is written without a sync of its own; the
            // next sync makes it durable. This keeps a second fsync off every write's path:
            // appending the entry costs one, committing it costs none.
            let commit_only = snapshot.is_none()
                && entries.is_empty()
                && new_hard_state.is_some_and(|hs| {
                    hs.term == self.hard_state.term && hs.vote == self.hard_state.vote
                });
            self.append(&records, max_index, false)?;
            self.sync_pending |= !commit_only;
        }
        if snapshot.is_some() {
            // The snapshot is durable; the log records before it must be too before segments
            // are dropped below.
            self.sync_deferred()?;
        }
        if let Some(hs) = new_hard_state {
            // Only now: a segment rolled above must start with the previous hard state, or a
            // crash could keep the new one without the entries written before it.
            self.hard_state = hs.clone();
        }
        if let Some(snap) = snapshot {
            let removed = self.poison_on_error(|s| s.log.compact(snap.meta.index))?;
            tracing::debug!(index = snap.meta.index, removed, "compacted log segments");
        }
        Ok(())
    }

    /// Whether writes of `persist_deferred` still wait for a sync.
    pub fn needs_sync(&self) -> bool {
        self.sync_pending
    }

    /// Syncs what `persist_deferred` wrote (nothing when nothing waits).
    pub fn sync_deferred(&mut self) -> Result<(), StorageError> {
        if !self.sync_pending {
            return Ok(());
        }
        self.poison_on_error(|s| s.log.sync())?;
        self.sync_pending = false;
        Ok(())
    }

    /// Saves a snapshot the application took at `snapshot.meta.index` (<= applied) and drops
    /// the log segments it covers.
    pub fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.persist(None, &[], Some(snapshot))
    }

    /// The latest snapshot, read back from disk (to send to a follower).
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>, StorageError> {
        snapshot::read(self.disk.as_ref())
    }

    fn validate_entries(
        &self,
        entries: &[Entry],
        new_snapshot: Option<&SnapshotMeta>,
    ) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 {
                let why = format!("entry {} follows entry {}", pair[1].index, pair[0].index);
                return Err(StorageError::InvalidAppend(why));
            }
        }
        // The log as it will be once `new_snapshot` is installed.
        let (floor, last) = match new_snapshot {
            Some(meta) if self.term(meta.index) == Some(meta.term) => {
                (meta.index, self.last_index().max(meta.index))
            }
            Some(meta) => (meta.index, meta.index),
            None => (self.snapshot_index(), self.last_index()),
        };
        if first.index <= floor || first.index > last + 1 {
            let why = format!(
                "first entry {} must be in {}..={} (snapshot at {floor}, last entry {last})",
                first.index,
                floor + 1,
                last + 1
            );
            return Err(StorageError::InvalidAppend(why));
        }
        Ok(())
    }

    fn append(
        &mut self,
        records: &[LogRecord],
        max_index: LogIndex,
        sync: bool,
    ) -> Result<(), StorageError> {
        let max_record_bytes = self.log.max_record_bytes();
        let mut framed = Vec::new();
        for record in records {
            encode_record(record, max_record_bytes, &mut framed)?;
        }
        self.poison_on_error(|s| {
            if s.log.needs_roll(s.options.segment_max_bytes) {
                s.log.sync()?;
                s.log.roll()?;
                let mut head = Vec::new();
                let current = LogRecord::HardState(s.hard_state.clone());
                encode_record(&current, max_record_bytes, &mut head)?;
                s.log.write(&head, 0)?;
            }
            s.log.write(&framed, max_index)?;
            if sync {
                s.log.sync()?;
            }
            Ok(())
        })
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(why) => Err(StorageError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison_on_error<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let result = f(self);
        if let Err(e) = &result {
            tracing::error!(error = %e, "storage failed; refusing further writes");
            self.poisoned = Some(e.to_string());
        }
        result
    }
}

/// Replays log records into the last hard state and the entry sequence they describe.
fn replay(records: Vec<Located>) -> Result<(HardState, Vec<Entry>), StorageError> {
    let mut hard_state = HardState::default();
    let mut entries: Vec<Entry> = Vec::new();
    for Located {
        file,
        offset,
        record,
    } in records
    {
        match record {
            LogRecord::HardState(hs) => hard_state = hs,
            LogRecord::ClearLog => entries.clear(),
            LogRecord::Entry(entry) => {
                if let Some(first) = entries.first() {
                    let last = first.index + entries.len() as u64 - 1;
                    if entry.index > last + 1 {
                        let why = format!("entry {} after entry {last}: gap", entry.index);
                        return Err(StorageError::corrupt(&file, offset, why));
                    }
                    if entry.index < first.index {
                        entries.clear();
                    } else {
                        entries.truncate((entry.index - first.index) as usize);
                    }
                }
                if entry.index == 0 {
                    return Err(StorageError::corrupt(&file, offset, "entry with index 0"));
                }
                entries.push(entry);
            }
        }
    }
    Ok((hard_state, entries))
}

/// Syncs the deferred writes of several stores on one disk at once (`Disk::sync_files`), so a
/// node with many Raft groups pays about one sync per turn instead of one per group. A failure
/// poisons every store involved (what reached the disk is unknown).
pub fn sync_stores(disk: &dyn Disk, stores: &mut [&mut NodeStorage]) -> Result<(), StorageError> {
    for store in stores.iter() {
        store.check_poisoned()?;
    }
    let mut files: Vec<&mut dyn DiskFile> = stores
        .iter_mut()
        .filter(|s| s.sync_pending)
        .filter_map(|s| s.log.active_file())
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    if let Err(e) = disk.sync_files(&mut files) {
        drop(files);
        let why = format!("sync of {} logs failed: {e}", stores.len());
        for store in stores.iter_mut().filter(|s| s.sync_pending) {
            store.poisoned = Some(why.clone());
        }
        return Err(StorageError::io("(group logs)", "sync", e));
    }
    drop(files);
    for store in stores.iter_mut().filter(|s| s.sync_pending) {
        store.poison_on_error(|s| s.log.sync_dir_if_needed())?;
        store.sync_pending = false;
    }
    Ok(())
}
