//! The node's write-ahead log: ONE append-only log shared by every Raft group the node hosts
//! (the design of TiKV's raft-engine), so that a turn of the event loop costs one write and
//! one fsync for all groups together.
//!
//! Files: `wal-<seq, 20 digits>.log` segments of framed records (`record`), each record
//! bincode(`WalRecord { group, body }`), plus the format marker `storage.format`. Only the
//! newest segment is written. Per group the records say: an entry (an index not past the
//! group's last one truncates from there), a hard state, "clear the log", "compacted through
//! index I", a checkpoint (hard state + compaction point, and optionally the group's whole live
//! log rewritten in one record) and "group removed".
//!
//! Invariants:
//! - every segment but the newest was fully synced before the next one got records, so only
//!   the newest may have a torn tail; a bad record anywhere else is `Corrupt { file, offset }`;
//! - the newest segment's file may run on past its last record with zeros
//!   (`zero_ahead_bytes`, written with the records that reach into new room), so that most
//!   appends overwrite bytes the file has and their fdatasync need not also commit a new file
//!   size; a closing segment is cut to its records (durably) before the next segment is
//!   created, so zeros past the records anywhere else are damage;
//! - records of one `persist` are contiguous and in order (entries, then hard state), so any
//!   prefix of a turn's buffer recovers, per group, a prefix of that group's records;
//! - a new segment starts with a checkpoint of every group (taken right after a sync, when the
//!   in-memory state is the durable one): once that head is durable, no older segment is needed
//!   for hard states, compaction points, clears or removals;
//! - segments are deleted oldest first, and only below both the newest durable head and the
//!   oldest segment holding a live entry (index above the group's compaction point) of any
//!   group. A group whose few live entries pin an old segment gets them rewritten into the next
//!   head (one checksummed record: all or nothing), up to `rewrite_max_bytes`; a group with more
//!   live bytes keeps its segments until it compacts. Deleted segments are removed, never
//!   reused: a reused file could hold valid-looking old records after a torn tail.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::meta::GroupId;
use crate::raft::{Entry, HardState, LogIndex, Term};

use super::disk::{Disk, DiskFile};
use super::record;
use super::snapshot::read_all;
use super::{StorageError, StorageOptions};

/// The file naming the on-disk format; written before the first segment.
pub const FORMAT_FILE: &str = "storage.format";
const FORMAT_TMP_FILE: &str = "storage.format.tmp";
/// Format 1: one log per group (`g<N>.log-<seq>.seg`). Format 2: this node-wide WAL.
pub const FORMAT_VERSION: u32 = 2;
const FORMAT_MAX_BYTES: usize = 256;

const PREFIX: &str = "wal-";
const SUFFIX: &str = ".log";
/// Zeros written past the newest segment's records (`StorageOptions::zero_ahead_bytes`).
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

fn segment_name(seq: u64) -> String {
    format!("{PREFIX}{seq:020}{SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A log segment of storage format 1 (`log-<seq>.seg`, or `g<N>.log-<seq>.seg`).
fn is_format1_segment(name: &str) -> bool {
    let tail = match name.split_once('.') {
        Some((head, tail)) if head.starts_with('g') => tail,
        _ => name,
    };
    tail.strip_prefix("log-")
        .and_then(|t| t.strip_suffix(".seg"))
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FormatMarker {
    version: u32,
}

/// What one record says about its group (decoding side).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Body {
    Entry(Entry),
    HardState(HardState),
    /// Every entry before this record is void (a snapshot replaced a conflicting log).
    ClearLog,
    /// Entries at or below this index are void (covered by a snapshot or checkpoint).
    Compact(LogIndex),
    /// A segment's head: the group's state; `log`, when present, replaces its live entries.
    Checkpoint {
        hard_state: HardState,
        compacted: LogIndex,
        log: Option<Vec<Entry>>,
    },
    /// The group was destroyed: everything before is garbage.
    Removed,
}

/// The encoding side of `Body`: the same shape (so the same bytes), borrowing.
#[derive(Serialize)]
enum BodyRef<'a> {
    Entry(&'a Entry),
    HardState(&'a HardState),
    ClearLog,
    Compact(LogIndex),
    Checkpoint {
        hard_state: &'a HardState,
        compacted: LogIndex,
        log: Option<&'a [Entry]>,
    },
    Removed,
}

#[derive(Deserialize)]
struct WalRecord {
    group: GroupId,
    body: Body,
}

#[derive(Serialize)]
struct WalRecordRef<'a> {
    group: GroupId,
    body: BodyRef<'a>,
}

fn codec() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Where a record starts: segment sequence number and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    seq: u64,
    offset: u64,
}

/// One live entry of a group: its index, term, where it is and its framed size.
#[derive(Clone, Copy, Debug)]
struct Slot {
    index: LogIndex,
    term: Term,
    loc: Loc,
    bytes: u64,
}

/// A group's log as the WAL knows it.
#[derive(Default)]
struct GroupLog {
    /// The newest hard state written (durable once the WAL synced).
    hard_state: HardState,
    /// Entries at or below it are void.
    compacted: LogIndex,
    /// Live entries, contiguous, above `compacted`.
    slots: Vec<Slot>,
    live_bytes: u64,
    /// The newest entries, for reads without disk I/O (a suffix of `slots`).
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Entries found by recovery, handed out once to the group's `NodeStorage`.
    recovered: Option<Vec<Entry>>,
}

impl GroupLog {
    fn truncate_from(&mut self, index: LogIndex) {
        // Slots are contiguous: everything from `index` on is at and after this position.
        let keep = self.slots.first().map_or(0, |first| {
            usize::try_from(index.saturating_sub(first.index))
                .unwrap_or(usize::MAX)
                .min(self.slots.len())
        });
        for slot in self.slots.drain(keep..) {
            self.live_bytes -= slot.bytes;
        }
        while self.cache.back().is_some_and(|e| e.index >= index) {
            let e = self.cache.pop_back().expect("checked");
            self.cache_bytes -= entry_cost(&e);
        }
    }

    fn compact(&mut self, index: LogIndex) {
        self.compacted = self.compacted.max(index);
        let drop = self.slots.iter().take_while(|s| s.index <= index).count();
        for slot in self.slots.drain(..drop) {
            self.live_bytes -= slot.bytes;
        }
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let e = self.cache.pop_front().expect("checked");
            self.cache_bytes -= entry_cost(&e);
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.live_bytes = 0;
        self.cache.clear();
        self.cache_bytes = 0;
    }

    fn push(&mut self, entry: &Entry, loc: Loc, bytes: u64, cache_cap_bytes: usize) {
        self.truncate_from(entry.index);
        if self
            .slots
            .last()
            .is_some_and(|s| s.index + 1 != entry.index)
        {
            // Not contiguous with what we hold (the caller validated the append against its
            // own view, which includes a snapshot): start over from this entry.
            self.clear();
        }
        self.slots.push(Slot {
            index: entry.index,
            term: entry.term,
            loc,
            bytes,
        });
        self.live_bytes += bytes;
        if cache_cap_bytes == 0 {
            return;
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != entry.index)
        {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.cache.push_back(entry.clone());
        self.cache_bytes += entry_cost(entry);
        while self.cache_bytes > cache_cap_bytes {
            let Some(e) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= entry_cost(&e);
        }
    }

    fn first_live_seq(&self) -> Option<u64> {
        self.slots.first().map(|s| s.loc.seq)
    }
}

/// Memory an entry costs in the cache (payload plus bookkeeping).
fn entry_cost(entry: &Entry) -> usize {
    let payload = match &entry.payload {
        crate::raft::EntryPayload::Command(bytes) => bytes.len(),
        _ => 64,
    };
    payload + 48
}

struct Segment {
    seq: u64,
    name: String,
    len_bytes: u64,
    /// The newest segment's file is this long, every byte past `len_bytes` zero
    /// (`StorageOptions::zero_ahead_bytes`); older segments end at `len_bytes`.
    file_bytes: u64,
    /// Open handle (the newest segment always has one; older ones on first read).
    file: Option<Box<dyn DiskFile>>,
}

struct WalCore {
    disk: Arc<dyn Disk>,
    options: StorageOptions,
    segments: Vec<Segment>,
    groups: BTreeMap<GroupId, GroupLog>,
    /// Framed records not yet written to the newest segment.
    pending: Vec<u8>,
    /// `pending` (or an earlier write) holds records that must be synced before use.
    sync_needed: bool,
    /// A new segment's directory entry is not durable yet.
    dir_dirty: bool,
    /// The newest segment whose head checkpoint is durable: older segments are needed only
    /// for live entries.
    head_durable_seq: u64,
    /// Segments no group needs any more, closed, waiting for `take_doomed` (the caller
    /// removes them off its critical path: unlinking a large file costs the file system
    /// time proportional to its size).
    doomed: Vec<String>,
    poisoned: Option<String>,
    #[cfg(any(test, madsim))]
    planted_bugs: crate::bugs::PlantedBugs,
}

/// The node-wide WAL. Cheap to clone: clones share it (each group's `NodeStorage` holds one).
#[derive(Clone)]
pub struct Wal {
    core: Arc<Mutex<WalCore>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let core = self.lock();
        f.debug_struct("Wal")
            .field("segments", &core.segments.len())
            .field("groups", &core.groups.len())
            .finish()
    }
}

/// What recovery found for one group.
pub(crate) struct GroupRecovery {
    pub hard_state: HardState,
    pub compacted: LogIndex,
    pub entries: Vec<Entry>,
}

impl Wal {
    /// Opens the WAL in `disk`'s directory: checks the format (refusing format 1), reads every
    /// segment, cuts a torn tail off the newest (durably), and rebuilds every group's state.
    pub fn open(disk: Arc<dyn Disk>, options: StorageOptions) -> Result<Wal, StorageError> {
        options.validate()?;
        check_format(disk.as_ref())?;
        let names = disk.list().map_err(|e| StorageError::io(".", "list", e))?;
        let mut seqs: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|n| parse_segment_name(&n).map(|seq| (seq, n)))
            .collect();
        seqs.sort();
        let mut core = WalCore {
            disk,
            options,
            segments: Vec::new(),
            groups: BTreeMap::new(),
            pending: Vec::new(),
            sync_needed: false,
            dir_dirty: false,
            head_durable_seq: seqs.first().map_or(1, |(seq, _)| *seq),
            doomed: Vec::new(),
            poisoned: None,
            #[cfg(any(test, madsim))]
            planted_bugs: Default::default(),
        };
        let mut recovered: BTreeMap<GroupId, Vec<Entry>> = BTreeMap::new();
        let count = seqs.len();
        for (i, (seq, name)) in seqs.into_iter().enumerate() {
            let is_last = i + 1 == count;
            core.replay_segment(seq, name, is_last, &mut recovered)?;
        }
        for (group, entries) in recovered {
            if let Some(log) = core.groups.get_mut(&group) {
                log.recovered = Some(entries);
            }
        }
        if core.segments.is_empty() {
            core.roll()?;
        }
        tracing::info!(
            segments = core.segments.len(),
            groups = core.groups.len(),
            "write-ahead log recovered"
        );
        Ok(Wal {
            core: Arc::new(Mutex::new(core)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, WalCore> {
        // The event loop is the only user; a panic while holding the lock already ended it.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(any(test, madsim))]
    pub fn set_planted_bugs(&self, bugs: crate::bugs::PlantedBugs) {
        self.lock().planted_bugs = bugs;
    }

    /// Groups with state in the log (not removed), in id order.
    pub fn groups(&self) -> BTreeSet<GroupId> {
        self.lock().groups.keys().copied().collect()
    }

    /// Whether records wait for `sync` before anyone may rely on them.
    pub fn needs_sync(&self) -> bool {
        self.lock().sync_needed
    }

    /// Writes every buffered record of every group to the newest segment with ONE write, and
    /// (when any of them needs it) ONE fsync; then deletes the segments no group needs and
    /// starts a new segment when the newest is full. A failure poisons the WAL.
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut core = self.lock();
        core.check_poisoned()?;
        let result = core.sync();
        if let Err(e) = &result {
            tracing::error!(error = %e, "write-ahead log failed; refusing further writes");
            core.poisoned = Some(e.to_string());
        }
        result
    }

    /// Makes the removal of `group` durable (a `Removed` record, synced): its records become
    /// garbage. Idempotent.
    pub fn remove_group(&self, group: GroupId) -> Result<(), StorageError> {
        {
            let mut core = self.lock();
            core.check_poisoned()?;
            core.append(group, BodyRef::Removed, true)?;
            core.groups.remove(&group);
        }
        self.sync()
    }

    pub fn segment_count(&self) -> usize {
        self.lock().segments.len()
    }

    /// Removes, here and now, the segments `sync` found no group needs any more (tests and
    /// tools; the server removes them on a blocking thread, see `take_doomed`).
    pub fn remove_doomed(&self) {
        if let Some((disk, names)) = self.take_doomed() {
            remove_segments(disk.as_ref(), &names);
        }
    }

    /// The segments `sync` found no group needs any more (each handed out once), with the
    /// disk that holds them: remove them with `remove_segments`, on a thread that may wait.
    /// Until they are removed they are ordinary old segments to a recovery.
    pub fn take_doomed(&self) -> Option<(Arc<dyn Disk>, Vec<String>)> {
        let mut core = self.lock();
        if core.doomed.is_empty() {
            return None;
        }
        let names = std::mem::take(&mut core.doomed);
        Some((Arc::clone(&core.disk), names))
    }

    pub(crate) fn check_poisoned(&self) -> Result<(), StorageError> {
        self.lock().check_poisoned()
    }

    /// Hands out (once) what recovery found for `group`; a group with no records is empty.
    pub(crate) fn take_recovered(&self, group: GroupId) -> GroupRecovery {
        let mut core = self.lock();
        let log = core.groups.entry(group).or_default();
        GroupRecovery {
            hard_state: log.hard_state.clone(),
            compacted: log.compacted,
            entries: log.recovered.take().unwrap_or_default(),
        }
    }

    /// Buffers `entries` of `group` (replacing its suffix from `entries[0].index`).
    pub(crate) fn append_entries(
        &self,
        group: GroupId,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        let mut core = self.lock();
        core.check_poisoned()?;
        for entry in entries {
            core.append(group, BodyRef::Entry(entry), true)?;
        }
        Ok(())
    }

    /// Buffers a hard state; `durable: false` for a commit-only change, which is written with
    /// the next write but needs no sync of its own.
    pub(crate) fn append_hard_state(
        &self,
        group: GroupId,
        hard_state: &HardState,
        durable: bool,
    ) -> Result<(), StorageError> {
        let mut core = self.lock();
        core.check_poisoned()?;
        core.append(group, BodyRef::HardState(hard_state), durable)
    }

    /// Buffers "every entry of `group` so far is void".
    pub(crate) fn clear_log(&self, group: GroupId) -> Result<(), StorageError> {
        let mut core = self.lock();
        core.check_poisoned()?;
        core.append(group, BodyRef::ClearLog, true)
    }

    /// Buffers "`group` compacted through `index`": its entries up to there are void and the
    /// segments only they kept alive can go.
    pub fn compact(&self, group: GroupId, index: LogIndex) -> Result<(), StorageError> {
        let mut core = self.lock();
        core.check_poisoned()?;
        core.append(group, BodyRef::Compact(index), true)
    }

    /// Forgets (in memory only) entries of `group` at or below `index`, which the group's
    /// snapshot covers on every recovery anyway.
    pub(crate) fn forget_through(&self, group: GroupId, index: LogIndex) {
        if let Some(log) = self.lock().groups.get_mut(&group) {
            log.compact(index);
        }
    }

    /// Entries `lo..hi` of `group`, from the cache or read back from the segments.
    pub fn entries(
        &self,
        group: GroupId,
        lo: LogIndex,
        hi: LogIndex,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut core = self.lock();
        core.check_poisoned()?;
        (lo..hi).map(|index| core.entry(group, index)).collect()
    }

    /// Bytes of live entries of `group` (what a rewrite would copy).
    pub fn live_bytes(&self, group: GroupId) -> u64 {
        self.lock().groups.get(&group).map_or(0, |g| g.live_bytes)
    }
}

impl WalCore {
    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(why) => Err(StorageError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("the WAL always has a segment")
    }

    fn cache_cap_bytes(&self) -> usize {
        self.options.entry_cache_bytes / self.groups.len().max(1)
    }

    /// Frames one record into `pending`, updating the group's in-memory state.
    fn append(
        &mut self,
        group: GroupId,
        body: BodyRef<'_>,
        durable: bool,
    ) -> Result<(), StorageError> {
        let loc = Loc {
            seq: self.active().seq,
            offset: self.active().len_bytes + self.pending.len() as u64,
        };
        let before = self.pending.len();
        encode(
            group,
            &body,
            self.options.max_record_bytes,
            &mut self.pending,
        )?;
        let bytes = (self.pending.len() - before) as u64;
        self.sync_needed |= durable;
        let cap = self.cache_cap_bytes();
        match body {
            BodyRef::Entry(entry) => {
                self.groups
                    .entry(group)
                    .or_default()
                    .push(entry, loc, bytes, cap);
            }
            BodyRef::HardState(hs) => self.groups.entry(group).or_default().hard_state = hs.clone(),
            BodyRef::ClearLog => self.groups.entry(group).or_default().clear(),
            BodyRef::Compact(index) => self.groups.entry(group).or_default().compact(index),
            BodyRef::Removed => {
                self.groups.remove(&group);
            }
            BodyRef::Checkpoint { .. } => {}
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        if !self.pending.is_empty() {
            let offset = self.active().len_bytes;
            let pending = std::mem::take(&mut self.pending);
            self.write_active(offset, &pending)?;
            self.pending = pending;
            self.pending.clear();
        }
        if !self.sync_needed && !self.dir_dirty {
            return Ok(());
        }
        let segment = self
            .segments
            .last_mut()
            .expect("the WAL always has a segment");
        let file = segment.file.as_mut().expect("the newest segment is open");
        file.sync()
            .map_err(|e| StorageError::io(&segment.name, "sync", e))?;
        if self.dir_dirty {
            self.disk
                .sync_dir()
                .map_err(|e| StorageError::io(".", "sync_dir", e))?;
            self.dir_dirty = false;
        }
        self.sync_needed = false;
        self.collect_garbage()?;
        if self.active().len_bytes >= self.options.segment_max_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Writes records at `offset` of the newest segment, which then ends with them; when they
    /// reach past the zero-filled room, zeros follow them up to the next multiple of
    /// `zero_ahead_bytes` (written with them, made durable by the same sync).
    fn write_active(&mut self, offset: u64, records: &[u8]) -> Result<(), StorageError> {
        let zero_ahead = self.options.zero_ahead_bytes;
        let segment = self
            .segments
            .last_mut()
            .expect("the WAL always has a segment");
        debug_assert_eq!(offset, segment.len_bytes, "records are appended");
        let file = segment.file.as_mut().expect("the newest segment is open");
        file.write_at(offset, records)
            .map_err(|e| StorageError::io(&segment.name, "write", e))?;
        let end = offset + records.len() as u64;
        segment.len_bytes = end;
        if end > segment.file_bytes {
            segment.file_bytes = end;
            if let Some(chunks) = end.checked_div(zero_ahead) {
                // Not past the size at which the segment is closed (the room would be cut).
                let room_end =
                    ((chunks + 1) * zero_ahead).min(self.options.segment_max_bytes.max(end));
                let mut at = end;
                while at < room_end {
                    // From one static buffer: a fresh `vec![0; room]` per fill is fresh memory
                    // the kernel faults in page by page while it copies it (1 MiB: 256 faults).
                    let len = (room_end - at).min(ZEROS.len() as u64);
                    file.write_at(at, &ZEROS[..len as usize])
                        .map_err(|e| StorageError::io(&segment.name, "zero-fill", e))?;
                    at += len;
                    segment.file_bytes = at;
                }
            }
        }
        Ok(())
    }

    /// The oldest segment some group still needs for a live entry (None: no live entries).
    fn oldest_pinned_seq(&self) -> Option<u64> {
        #[cfg(any(test, madsim))]
        if self.planted_bugs.wal_recycles_live_segment {
            // Planted bug: only the heads are considered, as if hard states were all a
            // segment held; live entries in old segments are deleted with them.
            return None;
        }
        self.groups
            .values()
            .filter_map(GroupLog::first_live_seq)
            .min()
    }

    /// Closes the oldest segments that no group needs any more and hands them to `doomed`:
    /// they are removed later, off the commit path (`take_doomed`), and the directory is not
    /// synced for them (a directory sync waits for the file system's journal, hundreds of
    /// milliseconds under write load): the removals become durable with the next directory
    /// sync. A crash before that may bring a removed segment back; it is the log exactly as it
    /// was, valid, before this call, and recovery replays it as it would have then (every
    /// later head supersedes it), and deletes it again.
    fn collect_garbage(&mut self) -> Result<(), StorageError> {
        let limit = self
            .oldest_pinned_seq()
            .map_or(self.head_durable_seq, |pinned| {
                pinned.min(self.head_durable_seq)
            });
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].seq < limit {
            let segment = self.segments.remove(0);
            drop(segment.file);
            self.doomed.push(segment.name);
            removed += 1;
        }
        if removed > 0 {
            tracing::debug!(removed, limit, "deleted write-ahead log segments");
        }
        Ok(())
    }

    /// Starts a new segment with a head checkpoint of every group. Called only when nothing
    /// is buffered and everything written is durable, so the head is the durable state; the
    /// head and the directory entry are synced before it returns.
    fn roll(&mut self) -> Result<(), StorageError> {
        debug_assert!(self.pending.is_empty() && !self.sync_needed);
        // Only the newest segment may end in zeros (recovery reads zeros anywhere else as
        // damage): the closing one is cut to its records, durably, before the next exists.
        if let Some(closing) = self.segments.last_mut() {
            if closing.file_bytes > closing.len_bytes {
                let file = closing.file.as_mut().expect("the newest segment is open");
                file.set_len(closing.len_bytes)
                    .map_err(|e| StorageError::io(&closing.name, "truncate zero room", e))?;
                file.sync()
                    .map_err(|e| StorageError::io(&closing.name, "sync", e))?;
                closing.file_bytes = closing.len_bytes;
            }
        }
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let name = segment_name(seq);
        let mut file = self
            .disk
            .open(&name)
            .map_err(|e| StorageError::io(&name, "open", e))?;
        // A stale file of that name can only be a leftover of a crash: start it empty.
        file.set_len(0)
            .map_err(|e| StorageError::io(&name, "truncate", e))?;
        let previous = self.segments.last().map(|s| s.seq);
        self.segments.push(Segment {
            seq,
            name,
            len_bytes: 0,
            file_bytes: 0,
            file: Some(file),
        });
        self.dir_dirty = true;
        if previous.is_some() {
            self.write_head(seq)?;
        }
        Ok(())
    }

    /// Buffers a checkpoint of every group into the new segment `seq`; groups whose live
    /// entries pin a segment older than the one just closed, and are small, are rewritten.
    fn write_head(&mut self, seq: u64) -> Result<(), StorageError> {
        // Rewrite budget: groups pinning the oldest segments first, within
        // `rewrite_max_bytes` for the whole head.
        let mut pinning: Vec<(u64, GroupId)> = self
            .groups
            .iter()
            .filter_map(|(&g, log)| log.first_live_seq().map(|s| (s, g)))
            .filter(|&(s, _)| s + 1 < seq)
            .collect();
        pinning.sort_unstable();
        let mut budget = self.options.rewrite_max_bytes;
        let mut rewrites = BTreeSet::new();
        for (_, group) in pinning {
            let bytes = self.groups[&group].live_bytes;
            if bytes <= budget {
                budget -= bytes;
                rewrites.insert(group);
            }
        }
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        let mut rewritten = 0;
        for group in ids {
            let log = &self.groups[&group];
            let rewrite = rewrites.contains(&group);
            let range = match (log.slots.first(), log.slots.last()) {
                (Some(first), Some(last)) if rewrite => Some((first.index, last.index)),
                _ => None,
            };
            let entries = match range {
                Some((lo, hi)) => Some((lo..=hi).map(|i| self.entry(group, i)).collect::<Result<
                    Vec<Entry>,
                    _,
                >>(
                )?),
                None => None,
            };
            let log = &self.groups[&group];
            let hard_state = log.hard_state.clone();
            let compacted = log.compacted;
            let loc = Loc {
                seq,
                offset: self.active().len_bytes + self.pending.len() as u64,
            };
            let body = BodyRef::Checkpoint {
                hard_state: &hard_state,
                compacted,
                log: entries.as_deref(),
            };
            encode(
                group,
                &body,
                self.options.max_record_bytes,
                &mut self.pending,
            )?;
            if let Some(entries) = &entries {
                rewritten += 1;
                let log = self.groups.get_mut(&group).expect("listed above");
                for slot in &mut log.slots {
                    slot.loc = loc;
                }
                debug_assert_eq!(log.slots.len(), entries.len());
            }
        }
        // Made durable at once (one extra fsync per segment), so that nobody waits for a sync
        // of records they did not write, and the older segments can go at the next sync.
        let pending = std::mem::take(&mut self.pending);
        self.write_active(0, &pending)?;
        let segment = self.segments.last_mut().expect("just pushed");
        let file = segment.file.as_mut().expect("just opened");
        file.sync()
            .map_err(|e| StorageError::io(&segment.name, "sync", e))?;
        self.pending = pending;
        self.pending.clear();
        self.disk
            .sync_dir()
            .map_err(|e| StorageError::io(".", "sync_dir", e))?;
        self.dir_dirty = false;
        self.head_durable_seq = seq;
        tracing::debug!(seq, rewritten, "started a write-ahead log segment");
        Ok(())
    }

    /// Entry `index` of `group`: from the cache, or read from its segment and checked.
    fn entry(&mut self, group: GroupId, index: LogIndex) -> Result<Entry, StorageError> {
        let log = self.groups.get(&group).ok_or_else(|| {
            StorageError::InvalidAppend(format!("group {group} has no log in the WAL"))
        })?;
        if let Some(front) = log.cache.front() {
            if index >= front.index {
                if let Some(e) = log.cache.get((index - front.index) as usize) {
                    return Ok(e.clone());
                }
            }
        }
        // Slots are contiguous: the position is the distance from the first.
        let slot = log
            .slots
            .first()
            .and_then(|first| index.checked_sub(first.index))
            .and_then(|at| log.slots.get(usize::try_from(at).ok()?))
            .filter(|s| s.index == index)
            .copied()
            .ok_or_else(|| {
                StorageError::InvalidAppend(format!("group {group} holds no entry {index}"))
            })?;
        let (name, payload) = self.read_record(slot.loc)?;
        let record = decode(
            &name,
            slot.loc.offset,
            &payload,
            self.options.max_record_bytes,
        )?;
        let found = match record.body {
            Body::Entry(e) if e.index == index => Some(e),
            Body::Checkpoint { log: Some(log), .. } => log.into_iter().find(|e| e.index == index),
            _ => None,
        };
        match found {
            Some(e) if record.group == group && e.term == slot.term => Ok(e),
            _ => Err(StorageError::corrupt(
                &name,
                slot.loc.offset,
                format!("expected entry {index} of group {group}"),
            )),
        }
    }

    /// The payload of the record at `loc` (written bytes or still buffered ones).
    fn read_record(&mut self, loc: Loc) -> Result<(String, Vec<u8>), StorageError> {
        let active_seq = self.active().seq;
        let active_len = self.active().len_bytes;
        let max = self.options.max_record_bytes;
        let position = self
            .segments
            .iter()
            .position(|s| s.seq == loc.seq)
            .ok_or_else(|| StorageError::InvalidAppend(format!("no segment {}", loc.seq)))?;
        let segment = &mut self.segments[position];
        let name = segment.name.clone();
        if loc.seq == active_seq && loc.offset >= active_len {
            // One record parsed where it starts, however much the turn buffered after it.
            let at = (loc.offset - active_len) as usize;
            let payload = record::parse_at(&name, &self.pending, at, loc.offset, max)?;
            return Ok((name, payload.to_vec()));
        }
        if segment.file.is_none() {
            let file = self
                .disk
                .open(&name)
                .map_err(|e| StorageError::io(&name, "open", e))?;
            segment.file = Some(file);
        }
        let file = segment.file.as_ref().expect("just opened");
        let mut head = [0u8; record::HEADER_BYTES];
        read_exact(file.as_ref(), &name, loc.offset, &mut head)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > max {
            return Err(StorageError::corrupt(&name, loc.offset, "record too long"));
        }
        let mut framed = vec![0u8; record::HEADER_BYTES + len];
        read_exact(file.as_ref(), &name, loc.offset, &mut framed)?;
        let payload = record::parse_at(&name, &framed, 0, loc.offset, max)?;
        Ok((name, payload.to_vec()))
    }

    /// Reads one segment at open, replaying its records into the groups' state.
    fn replay_segment(
        &mut self,
        seq: u64,
        name: String,
        is_last: bool,
        recovered: &mut BTreeMap<GroupId, Vec<Entry>>,
    ) -> Result<(), StorageError> {
        let max = self.options.max_record_bytes;
        let bytes = read_all(self.disk.as_ref(), &name)?;
        let scanned = record::scan(&name, &bytes, is_last, max)?;
        let cap = self.cache_cap_bytes();
        for (offset, payload) in &scanned.records {
            let WalRecord { group, body } = decode(&name, *offset, payload, max)?;
            let loc = Loc {
                seq,
                offset: *offset,
            };
            let bytes = (record::HEADER_BYTES + payload.len()) as u64;
            let at = |why: String| StorageError::corrupt(&name, *offset, why);
            match body {
                Body::Entry(entry) => {
                    let log = self.groups.entry(group).or_default();
                    let list = recovered.entry(group).or_default();
                    replay_entry(list, entry.clone()).map_err(at)?;
                    if entry.index > log.compacted {
                        log.push(&entry, loc, bytes, cap);
                    }
                }
                Body::HardState(hs) => self.groups.entry(group).or_default().hard_state = hs,
                Body::ClearLog => {
                    self.groups.entry(group).or_default().clear();
                    recovered.entry(group).or_default().clear();
                }
                Body::Compact(index) => {
                    self.groups.entry(group).or_default().compact(index);
                    recovered
                        .entry(group)
                        .or_default()
                        .retain(|e| e.index > index);
                }
                Body::Checkpoint {
                    hard_state,
                    compacted,
                    log,
                } => {
                    let state = self.groups.entry(group).or_default();
                    state.hard_state = hard_state;
                    state.compact(compacted);
                    let list = recovered.entry(group).or_default();
                    list.retain(|e| e.index > compacted);
                    if let Some(entries) = log {
                        state.clear();
                        list.clear();
                        // The record's size, spread over the entries it holds.
                        let each = bytes / (entries.len() as u64).max(1);
                        for entry in entries {
                            replay_entry(list, entry.clone()).map_err(at)?;
                            state.push(&entry, loc, each, cap);
                        }
                    }
                }
                Body::Removed => {
                    self.groups.remove(&group);
                    recovered.remove(&group);
                }
            }
        }
        let mut len_bytes = bytes.len() as u64;
        let file_bytes = len_bytes;
        let mut file = None;
        if is_last {
            let mut handle = self
                .disk
                .open(&name)
                .map_err(|e| StorageError::io(&name, "open", e))?;
            if scanned.zero_tail {
                // Zero-filled room past the last record: appends go on there.
                len_bytes = scanned.valid_len;
            } else if scanned.valid_len < len_bytes {
                handle
                    .set_len(scanned.valid_len)
                    .map_err(|e| StorageError::io(&name, "truncate torn tail", e))?;
                handle
                    .sync()
                    .map_err(|e| StorageError::io(&name, "sync", e))?;
                len_bytes = scanned.valid_len;
            }
            file = Some(handle);
        }
        self.segments.push(Segment {
            seq,
            name,
            len_bytes,
            file_bytes: if scanned.zero_tail {
                file_bytes
            } else {
                len_bytes
            },
            file,
        });
        Ok(())
    }
}

/// Applies one recovered entry to a group's entry list (truncating on an index not past the
/// last one); a gap or index 0 is damage.
fn replay_entry(entries: &mut Vec<Entry>, entry: Entry) -> Result<(), String> {
    if entry.index == 0 {
        return Err("entry with index 0".into());
    }
    if let Some(first) = entries.first() {
        let last = first.index + entries.len() as u64 - 1;
        if entry.index > last + 1 {
            return Err(format!("entry {} after entry {last}: gap", entry.index));
        }
        if entry.index < first.index {
            entries.clear();
        } else {
            entries.truncate((entry.index - first.index) as usize);
        }
    }
    entries.push(entry);
    Ok(())
}

fn encode(
    group: GroupId,
    body: &BodyRef<'_>,
    max_record_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let record = WalRecordRef {
        group,
        body: match body {
            BodyRef::Entry(e) => BodyRef::Entry(e),
            BodyRef::HardState(h) => BodyRef::HardState(h),
            BodyRef::ClearLog => BodyRef::ClearLog,
            BodyRef::Compact(i) => BodyRef::Compact(*i),
            BodyRef::Checkpoint {
                hard_state,
                compacted,
                log,
            } => BodyRef::Checkpoint {
                hard_state,
                compacted: *compacted,
                log: *log,
            },
            BodyRef::Removed => BodyRef::Removed,
        },
    };
    let payload = bincode::serde::encode_to_vec(&record, codec())
        .map_err(|e| StorageError::InvalidAppend(format!("cannot encode record: {e}")))?;
    if payload.len() > max_record_bytes {
        return Err(StorageError::RecordTooLarge {
            len_bytes: payload.len(),
            max_bytes: max_record_bytes,
        });
    }
    record::encode(&payload, out);
    Ok(())
}

/// One record's payload, which the record framing already checked against
/// `max_record_bytes`; allocations bounded by its length (`bounded_decode`).
fn decode(
    name: &str,
    offset: u64,
    payload: &[u8],
    max_record_bytes: usize,
) -> Result<WalRecord, StorageError> {
    crate::bounded_decode::decode_exact_within(payload, "max_record_bytes", max_record_bytes)
        .map_err(|e| StorageError::corrupt(name, offset, format!("record: {e}")))
}

fn read_exact(
    file: &dyn DiskFile,
    name: &str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), StorageError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file
            .read_at(offset + filled as u64, &mut buf[filled..])
            .map_err(|e| StorageError::io(name, "read", e))?;
        if n == 0 {
            return Err(StorageError::corrupt(
                name,
                offset + filled as u64,
                "record ends past the end of the segment",
            ));
        }
        filled += n;
    }
    Ok(())
}

/// Checks the format marker, writing it on a directory that has no log yet. A directory of
/// format 1 (one log per group) is refused with what to do: it is never misread.
fn check_format(disk: &dyn Disk) -> Result<(), StorageError> {
    let names = disk.list().map_err(|e| StorageError::io(".", "list", e))?;
    if let Some(old) = names.iter().find(|n| is_format1_segment(n)) {
        return Err(StorageError::UnsupportedFormat(format!(
            "the data directory holds storage format 1 (one log per Raft group, e.g. {old}); \
             this version keeps one write-ahead log per node (format {FORMAT_VERSION}) and does \
             not read format 1. Either run the previous release on it, or move the directory \
             away and add this node back to the cluster as a new member (`quorumkv cluster \
             join`) so that it copies its replicas from the other nodes"
        )));
    }
    if names.iter().any(|n| n == FORMAT_FILE) {
        let bytes = read_all(disk, FORMAT_FILE)?;
        let scanned = record::scan(FORMAT_FILE, &bytes, false, FORMAT_MAX_BYTES)?;
        let [(_, payload)] = scanned.records.as_slice() else {
            return Err(StorageError::corrupt(
                FORMAT_FILE,
                0,
                "expected exactly one record",
            ));
        };
        let (marker, _): (FormatMarker, usize) =
            bincode::serde::decode_from_slice(payload, codec()).map_err(|e| {
                StorageError::corrupt(FORMAT_FILE, record::HEADER_BYTES as u64, e.to_string())
            })?;
        if marker.version != FORMAT_VERSION {
            return Err(StorageError::UnsupportedFormat(format!(
                "the data directory holds storage format {}, this version reads only format \
                 {FORMAT_VERSION}: run the release that wrote it",
                marker.version
            )));
        }
        return Ok(());
    }
    if let Some(segment) = names.iter().find(|n| parse_segment_name(n).is_some()) {
        return Err(StorageError::corrupt(
            segment,
            0,
            format!("write-ahead log segment without the format marker {FORMAT_FILE}"),
        ));
    }
    let payload = bincode::serde::encode_to_vec(
        FormatMarker {
            version: FORMAT_VERSION,
        },
        codec(),
    )
    .map_err(|e| StorageError::InvalidAppend(e.to_string()))?;
    let mut bytes = Vec::new();
    record::encode(&payload, &mut bytes);
    super::snapshot::replace_file(disk, FORMAT_TMP_FILE, FORMAT_FILE, &bytes)
}

/// Removes the segments `Wal::take_doomed` handed out; a failure is logged (the segment stays
/// an ordinary old segment, deleted again by the next recovery's collection).
pub fn remove_segments(disk: &dyn Disk, names: &[String]) {
    for name in names {
        match disk.remove(name) {
            Ok(()) => tracing::debug!(segment = %name, "deleted write-ahead log segment"),
            Err(e) => {
                tracing::warn!(segment = %name, error = %e, "cannot delete write-ahead log segment")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_format1_names_are_recognised() {
        assert_eq!(parse_segment_name(&segment_name(7)), Some(7));
        assert_eq!(parse_segment_name("wal-.log"), None);
        assert_eq!(parse_segment_name("wal-1x.log"), None);
        assert!(is_format1_segment("g3.log-00000000000000000001.seg"));
        assert!(is_format1_segment("log-00000000000000000001.seg"));
        assert!(!is_format1_segment(&segment_name(1)));
        assert!(!is_format1_segment("g3.snapshot"));
    }
}
