//! Storage tests: round trips, group commit, compaction, seeded crash-recovery and damaged
//! files. All run on `CrashDisk` except the `FileDisk` smoke test.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::raft::{Entry, EntryPayload, HardState, LogIndex, Snapshot, SnapshotMeta, Term};

fn entry(index: LogIndex, term: Term, len: usize) -> Entry {
    let payload = (0..len).map(|i| (index as usize * 31 + i) as u8).collect();
    Entry {
        index,
        term,
        payload: EntryPayload::Command(payload),
    }
}

fn entries(from: LogIndex, to: LogIndex, term: Term) -> Vec<Entry> {
    (from..=to).map(|i| entry(i, term, 40)).collect()
}

fn snap(index: LogIndex, term: Term) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            membership: Default::default(),
        },
        data: format!("state at {index}").into_bytes(),
    }
}

fn hs(term: Term, vote: Option<u64>, commit: LogIndex) -> HardState {
    HardState { term, vote, commit }
}

/// Segments with 4 KiB of zero-filled room after their records.
fn room_4k() -> StorageOptions {
    StorageOptions {
        zero_ahead_bytes: 4096,
        ..StorageOptions::default()
    }
}

/// Where a segment's records end (the zero-filled room after them is not part of them).
fn records_end(segment: &[u8]) -> usize {
    segment
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

fn small_segments() -> StorageOptions {
    StorageOptions {
        segment_max_bytes: 600,
        zero_ahead_bytes: 128,
        ..StorageOptions::default()
    }
}

/// Segments that end with their last record (no zero-filled room): the tail tests cut and
/// damage the records' end at known offsets.
fn no_zero_room() -> StorageOptions {
    StorageOptions {
        zero_ahead_bytes: 0,
        ..StorageOptions::default()
    }
}

fn open(
    disk: &CrashDisk,
    options: StorageOptions,
) -> Result<(NodeStorage, Recovered), StorageError> {
    NodeStorage::open_with(Arc::new(disk.clone()), options)
}

#[test]
fn fresh_disk_recovers_empty() {
    let disk = CrashDisk::new(1);
    let (storage, recovered) = open(&disk, StorageOptions::default()).unwrap();
    assert_eq!(recovered, Recovered::default());
    assert_eq!(storage.last_index(), 0);
}

#[test]
fn persist_then_reopen_returns_everything() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(Some(&hs(1, Some(2), 0)), &entries(1, 5, 1), None)
        .unwrap();
    s.persist(Some(&hs(1, Some(2), 3)), &entries(6, 7, 1), None)
        .unwrap();
    disk.crash(CrashMode::Drop);
    let (s, r) = open(&disk, StorageOptions::default()).unwrap();
    assert_eq!(r.hard_state, hs(1, Some(2), 3));
    assert_eq!(r.entries, entries(1, 7, 1));
    assert_eq!(r.snapshot, None);
    assert_eq!(s.last_index(), 7);
    assert_eq!(s.term(7), Some(1));
}

#[test]
fn conflicting_suffix_is_replaced() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(None, &entries(1, 10, 1), None).unwrap();
    s.persist(Some(&hs(2, None, 0)), &entries(6, 8, 2), None)
        .unwrap();
    assert_eq!(s.last_index(), 8);
    disk.crash(CrashMode::Torn);
    let (_, r) = open(&disk, StorageOptions::default()).unwrap();
    let mut want = entries(1, 5, 1);
    want.extend(entries(6, 8, 2));
    assert_eq!(r.entries, want);
}

#[test]
fn appends_that_leave_a_gap_or_touch_the_snapshot_are_refused() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(None, &entries(1, 3, 1), None).unwrap();
    let gap = s.persist(None, &entries(5, 6, 1), None);
    assert!(
        matches!(gap, Err(StorageError::InvalidAppend(_))),
        "{gap:?}"
    );
    let mut unordered = entries(4, 5, 1);
    unordered.swap(0, 1);
    assert!(matches!(
        s.persist(None, &unordered, None),
        Err(StorageError::InvalidAppend(_))
    ));
    s.save_snapshot(&snap(2, 1)).unwrap();
    let below = s.persist(None, &entries(2, 3, 2), None);
    assert!(
        matches!(below, Err(StorageError::InvalidAppend(_))),
        "{below:?}"
    );
    // Refused appends wrote nothing and did not poison the store.
    s.persist(None, &entries(4, 4, 1), None).unwrap();
}

#[test]
fn group_commit_is_one_sync_per_persist() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(Some(&hs(1, None, 0)), &entries(1, 1, 1), None)
        .unwrap();
    let (syncs, dir_syncs) = (disk.sync_count(), disk.dir_sync_count());
    s.persist(Some(&hs(1, Some(1), 1)), &entries(2, 129, 1), None)
        .unwrap();
    assert_eq!(disk.sync_count() - syncs, 1);
    assert_eq!(disk.dir_sync_count() - dir_syncs, 0);
    // Nothing new: no write, no sync.
    s.persist(Some(&hs(1, Some(1), 1)), &[], None).unwrap();
    assert_eq!(disk.sync_count() - syncs, 1);
}

#[test]
fn commit_only_change_is_written_without_sync_and_may_roll_back() {
    let disk = CrashDisk::new(2);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(Some(&hs(2, Some(1), 0)), &entries(1, 5, 2), None)
        .unwrap();
    let syncs = disk.sync_count();
    s.persist(Some(&hs(2, Some(1), 5)), &[], None).unwrap();
    assert_eq!(
        disk.sync_count(),
        syncs,
        "a commit-only change must not sync"
    );
    // A vote change still syncs.
    s.persist(Some(&hs(3, Some(2), 5)), &[], None).unwrap();
    assert_eq!(disk.sync_count(), syncs + 1);
    // A commit-only change lost in a crash recovers the last synced commit, with term, vote and
    // entries intact.
    s.persist(Some(&hs(3, Some(2), 4)), &[], None).unwrap();
    disk.crash(CrashMode::Drop);
    let (_, recovered) = open(&disk, StorageOptions::default()).unwrap();
    assert_eq!(recovered.hard_state, hs(3, Some(2), 5));
    assert_eq!(recovered.entries, entries(1, 5, 2));
}

#[test]
fn snapshots_compact_segments_and_survive_reopen() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, small_segments_kept()).unwrap();
    for i in 1..=40 {
        s.persist(Some(&hs(1, Some(1), i - 1)), &entries(i, i, 1), None)
            .unwrap();
    }
    let before = s.segment_count();
    assert!(before > 4, "{before} segments");
    s.save_snapshot(&snap(30, 1)).unwrap();
    assert!(s.segment_count() < before);
    assert_eq!(s.latest_snapshot().unwrap(), Some(snap(30, 1)));
    disk.crash(CrashMode::Drop);
    let (s, r) = open(&disk, small_segments()).unwrap();
    assert_eq!(r.snapshot, Some(snap(30, 1)));
    assert_eq!(r.entries, entries(31, 40, 1));
    assert_eq!(r.hard_state, hs(1, Some(1), 39));
    assert_eq!(s.term(30), Some(1));
    assert_eq!(s.term(29), None);
}

#[test]
fn installing_a_conflicting_snapshot_clears_the_log() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(None, &entries(1, 20, 1), None).unwrap();
    // The leader's snapshot ends at 10 with term 2: our entries 1..=20 of term 1 conflict.
    s.persist(
        Some(&hs(2, None, 10)),
        &entries(11, 12, 2),
        Some(&snap(10, 2)),
    )
    .unwrap();
    assert_eq!(s.last_index(), 12);
    for _ in 0..2 {
        disk.crash(CrashMode::Drop);
        let (_, r) = open(&disk, StorageOptions::default()).unwrap();
        assert_eq!(r.snapshot, Some(snap(10, 2)));
        assert_eq!(r.entries, entries(11, 12, 2));
    }
}

#[test]
fn snapshot_matching_the_log_keeps_the_suffix() {
    let disk = CrashDisk::new(1);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(None, &entries(1, 20, 3), None).unwrap();
    s.persist(None, &[], Some(&snap(10, 3))).unwrap();
    disk.crash(CrashMode::Drop);
    let (_, r) = open(&disk, StorageOptions::default()).unwrap();
    assert_eq!(r.entries, entries(11, 20, 3));
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_kept() {
    let disk = CrashDisk::new(7);
    let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
    s.persist(Some(&hs(1, None, 0)), &entries(1, 3, 1), None)
        .unwrap();
    disk.fail_after(1); // the write lands, its sync fails
    let failed = s.persist(Some(&hs(1, None, 3)), &entries(4, 6, 1), None);
    assert!(matches!(failed, Err(StorageError::Io { .. })), "{failed:?}");
    let poisoned = s.persist(None, &entries(7, 7, 1), None);
    assert!(
        matches!(poisoned, Err(StorageError::Poisoned(_))),
        "{poisoned:?}"
    );
    disk.crash(CrashMode::Drop);
    let (_, r) = open(&disk, StorageOptions::default()).unwrap();
    assert_eq!(r.entries, entries(1, 3, 1));
    assert_eq!(r.hard_state, hs(1, None, 0));
}

#[test]
fn file_disk_round_trip() {
    let dir = std::env::temp_dir().join(format!("quorumkv-storage-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let disk = Arc::new(FileDisk::open(&dir).unwrap());
        let (mut s, r) = NodeStorage::open_with(disk, small_segments()).unwrap();
        assert_eq!(r, Recovered::default());
        s.persist(Some(&hs(4, Some(1), 2)), &entries(1, 30, 4), None)
            .unwrap();
        s.save_snapshot(&snap(12, 4)).unwrap();
    }
    let disk = Arc::new(FileDisk::open(&dir).unwrap());
    assert!(disk.exists("snapshot").unwrap());
    assert!(disk.open("../escape").is_err());
    let (_, r) = NodeStorage::open_with(disk, small_segments()).unwrap();
    assert_eq!(r.hard_state, hs(4, Some(1), 2));
    assert_eq!(r.snapshot, Some(snap(12, 4)));
    assert_eq!(r.entries, entries(13, 30, 4));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Seeded crash-recovery: random persists, a crash at a random I/O call, reopen, compare.

/// What a node's storage should hold: the reference the recovered state is checked against.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    /// Live entries, contiguous after the snapshot.
    log: Vec<Entry>,
}

impl Model {
    fn floor(&self) -> LogIndex {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    fn last(&self) -> LogIndex {
        self.log.last().map_or(self.floor(), |e| e.index)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        match &self.snapshot {
            Some(s) if s.meta.index == index => Some(s.meta.term),
            _ => self.log.iter().find(|e| e.index == index).map(|e| e.term),
        }
    }

    fn install(&mut self, snapshot: &Snapshot) {
        if self.term_at(snapshot.meta.index) == Some(snapshot.meta.term) {
            self.log.retain(|e| e.index > snapshot.meta.index);
        } else {
            self.log.clear();
        }
        self.snapshot = Some(snapshot.clone());
    }

    fn append(&mut self, entries: &[Entry]) {
        if let Some(first) = entries.first() {
            self.log.retain(|e| e.index < first.index);
            self.log.extend_from_slice(entries);
        }
    }
}

struct Call {
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
}

fn random_call(rng: &mut StdRng, m: &Model) -> Call {
    let term = m.hard_state.term.max(m.log.last().map_or(0, |e| e.term));
    let mut call = Call {
        hard_state: None,
        entries: Vec::new(),
        snapshot: None,
    };
    let floor = m.floor();
    let mut last = m.last();
    let mut next_term = term.max(1);
    match rng.random_range(0..10) {
        // The application snapshots a prefix of its log.
        0 if last > floor => {
            let index = rng.random_range(floor + 1..=last);
            let term_at = m.term_at(index).unwrap();
            call.snapshot = Some(snap(index, term_at));
        }
        // A leader's snapshot, conflicting with (or beyond) our log.
        1 => {
            next_term += 1;
            let index = rng.random_range(floor + 1..=last + 5);
            call.snapshot = Some(snap(index, next_term));
            last = index;
        }
        // A new leader overwrites a suffix.
        2 if last > floor => {
            next_term += 1;
            last = rng.random_range(floor..last);
        }
        _ => {}
    }
    let count = rng.random_range(0..12u64);
    call.entries = (last + 1..=last + count)
        .map(|i| entry(i, next_term, rng.random_range(0..120)))
        .collect();
    if rng.random_bool(0.6) {
        let commit = rng.random_range(0..=last + count);
        call.hard_state = Some(hs(next_term, rng.random_bool(0.5).then_some(1), commit));
    }
    call
}

/// The states a crash during `call` (applied to `before`) may legitimately leave behind:
/// the old snapshot or the new one, and the old log plus any prefix of the new entries; the
/// new hard state only once all the entries are there (it is written after them).
fn allowed_outcomes(before: &Model, call: &Call) -> Vec<Model> {
    let mut outcomes = Vec::new();
    let mut bases = vec![before.clone()];
    if let Some(s) = call
        .snapshot
        .as_ref()
        .filter(|s| s.meta.index > before.floor())
    {
        let mut installed = before.clone();
        installed.install(s);
        bases.push(installed);
    }
    for base in bases {
        for j in 0..=call.entries.len() {
            let mut m = base.clone();
            m.append(&call.entries[..j]);
            outcomes.push(m.clone());
            if j == call.entries.len() {
                if let Some(h) = &call.hard_state {
                    m.hard_state = h.clone();
                    outcomes.push(m);
                }
            }
        }
    }
    outcomes
}

/// Whether `persist(call)` only advances the commit index, which it writes without a sync.
fn is_commit_only(before: &Model, call: &Call) -> bool {
    call.snapshot.is_none()
        && call.entries.is_empty()
        && call.hard_state.as_ref().is_some_and(|h| {
            *h != before.hard_state
                && h.term == before.hard_state.term
                && h.vote == before.hard_state.vote
        })
}

fn recovered_model(r: Recovered) -> Model {
    Model {
        hard_state: r.hard_state,
        snapshot: r.snapshot,
        log: r.entries,
    }
}

fn crash_run(seed: u64, mode: CrashMode) {
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = CrashDisk::new(seed);
    let options = small_segments();
    let (mut s, _) = open(&disk, options.clone()).unwrap();
    let mut model = Model {
        hard_state: HardState::default(),
        snapshot: None,
        log: Vec::new(),
    };
    let calls = rng.random_range(1..40);
    let crash_call = rng.random_range(0..calls);
    // Commit indexes a crash may leave: the one made durable by the last sync, and those of
    // later calls that only advanced the commit index (written, not synced: see `persist`).
    let mut crash_commits = vec![model.hard_state.commit];
    for n in 0..calls {
        let call = random_call(&mut rng, &model);
        let commit_only = is_commit_only(&model, &call);
        if n == crash_call {
            disk.fail_after(rng.random_range(0..8));
        }
        let result = s.persist(
            call.hard_state.as_ref(),
            &call.entries,
            call.snapshot.as_ref(),
        );
        if n < crash_call {
            result.unwrap_or_else(|e| panic!("seed {seed}: call {n} failed: {e}"));
            let mut after = allowed_outcomes(&model, &call).pop().unwrap();
            if let Some(h) = call.hard_state.clone() {
                after.hard_state = h;
            }
            model = after;
            if !commit_only {
                crash_commits.clear();
            }
            crash_commits.push(model.hard_state.commit);
            continue;
        }
        disk.crash(mode);
        let (reopened, r) = open(&disk, options.clone())
            .unwrap_or_else(|e| panic!("seed {seed} {mode:?}: reopen failed: {e}"));
        let got = recovered_model(r);
        let outcomes = allowed_outcomes(&model, &call);
        let allowed = |o: &Model| {
            *o == got
                || (o.log == got.log
                    && o.snapshot == got.snapshot
                    && o.hard_state.term == got.hard_state.term
                    && o.hard_state.vote == got.hard_state.vote
                    && crash_commits.contains(&got.hard_state.commit))
        };
        assert!(
            outcomes.iter().any(allowed),
            "seed {seed} {mode:?} (persist {}): recovered {got:#?}\nnot among allowed outcomes",
            if result.is_ok() {
                "succeeded"
            } else {
                "failed"
            }
        );
        if result.is_ok() && !commit_only {
            assert_eq!(
                &got,
                outcomes.last().unwrap(),
                "seed {seed}: synced data lost"
            );
        }
        // The recovered store keeps working and a second recovery agrees.
        let mut reopened = reopened;
        let next = got.last() + 1;
        reopened
            .persist(None, &entries(next, next + 2, 99), None)
            .unwrap();
        disk.crash(mode);
        let (_, again) = open(&disk, options.clone()).unwrap();
        let mut want = got.clone();
        want.append(&entries(next, next + 2, 99));
        assert_eq!(
            recovered_model(again),
            want,
            "seed {seed}: second recovery differs"
        );
        return;
    }
}

#[test]
fn crash_recovery_drop_mode_many_seeds() {
    for seed in 0..400 {
        crash_run(seed, CrashMode::Drop);
    }
}

#[test]
fn crash_recovery_torn_mode_many_seeds() {
    for seed in 1000..1400 {
        crash_run(seed, CrashMode::Torn);
    }
}

// ---------------------------------------------------------------------------------------
// Damaged files: a clear error naming file and offset, or a cut torn tail; never a panic.

fn disk_with_log(options: StorageOptions) -> (CrashDisk, Vec<Entry>) {
    let disk = CrashDisk::new(3);
    let (mut s, _) = open(&disk, options).unwrap();
    let all = entries(1, 30, 1);
    for chunk in all.chunks(3) {
        s.persist(Some(&hs(1, None, chunk[0].index)), chunk, None)
            .unwrap();
    }
    (disk, all)
}

fn segments(disk: &CrashDisk) -> Vec<String> {
    disk.list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .collect()
}

/// Small segments and no rewrites: old segments stay (the damage tests need several).
fn small_segments_kept() -> StorageOptions {
    StorageOptions {
        rewrite_max_bytes: 0,
        ..small_segments()
    }
}

#[test]
fn flipped_byte_in_an_old_segment_names_file_and_offset() {
    let (disk, _) = disk_with_log(small_segments_kept());
    let names = segments(&disk);
    assert!(names.len() >= 3);
    let mut bytes = disk.contents(&names[1]).unwrap();
    bytes[30] ^= 0x40;
    disk.replace_contents(&names[1], bytes).unwrap();
    match open(&disk, small_segments_kept()) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, names[1]);
            assert!(offset <= 30, "offset {offset} is past the flipped byte");
        }
        other => panic!("expected corruption error, got {other:?}"),
    }
}

#[test]
fn damage_in_the_middle_of_the_last_segment_is_not_mistaken_for_a_torn_tail() {
    for options in [no_zero_room(), StorageOptions::default()] {
        let (disk, _) = disk_with_log(options.clone());
        let names = segments(&disk);
        assert_eq!(names.len(), 1);
        let mut bytes = disk.contents(&names[0]).unwrap();
        let middle = records_end(&bytes) / 2;
        bytes[middle] ^= 0x01;
        disk.replace_contents(&names[0], bytes).unwrap();
        let err = open(&disk, options).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{text}");
        assert!(
            text.contains(&names[0]) && text.contains("valid record follows"),
            "{text}"
        );
    }
}

#[test]
fn truncated_or_zero_filled_tail_is_cut_and_never_served() {
    for zero_fill in [false, true] {
        let (disk, all) = disk_with_log(no_zero_room());
        let name = segments(&disk).remove(0);
        let mut bytes = disk.contents(&name).unwrap();
        let full_len = bytes.len();
        // Cuts the last record (a hard state) and part of the entry before it.
        bytes.truncate(full_len - 40);
        if zero_fill {
            bytes.resize(full_len, 0);
        }
        disk.replace_contents(&name, bytes).unwrap();
        let (mut s, r) = open(&disk, no_zero_room()).unwrap();
        assert!(all.starts_with(&r.entries) && r.entries.len() < all.len());
        if !zero_fill {
            assert!(
                disk.contents(&name).unwrap().len() < full_len - 40,
                "tail not cut"
            );
        }
        // New appends go after the cut, and the next recovery sees them.
        let next = r.entries.len() as u64 + 1;
        s.persist(None, &entries(next, next, 5), None).unwrap();
        disk.crash(CrashMode::Drop);
        let (_, again) = open(&disk, no_zero_room()).unwrap();
        assert_eq!(again.entries.last(), Some(&entry(next, 5, 40)));
    }
}

#[test]
fn zero_filled_room_is_kept_and_appended_into() {
    let options = room_4k();
    let (disk, all) = disk_with_log(options.clone());
    let name = segments(&disk).remove(0);
    let room = disk.contents(&name).unwrap();
    assert_eq!(room.len() % 4096, 0, "the file ends on the room's boundary");
    assert!(room.len() > records_end(&room), "zeros follow the records");
    // A restart reads the room as the end of the log: nothing cut, nothing lost.
    let (mut s, r) = open(&disk, options.clone()).unwrap();
    assert_eq!(r.entries, all);
    assert_eq!(disk.contents(&name).unwrap().len(), room.len(), "room cut");
    // Appends overwrite the room (the file does not grow), and survive a crash once synced.
    s.persist(None, &entries(31, 31, 5), None).unwrap();
    assert_eq!(disk.contents(&name).unwrap().len(), room.len());
    disk.crash(CrashMode::Torn);
    let (_, again) = open(&disk, options).unwrap();
    assert_eq!(again.entries.last(), Some(&entry(31, 5, 40)));
    assert_eq!(again.entries.len(), 31);
}

#[test]
fn bytes_in_the_zero_room_are_a_torn_tail_and_cut() {
    let options = room_4k();
    let (disk, all) = disk_with_log(options.clone());
    let name = segments(&disk).remove(0);
    let mut bytes = disk.contents(&name).unwrap();
    let records_end = records_end(&bytes);
    // Half a record header written into the room: a torn write of the next turn.
    bytes[records_end + 3] = 0x5a;
    disk.replace_contents(&name, bytes).unwrap();
    let (mut s, r) = open(&disk, options.clone()).unwrap();
    assert_eq!(r.entries, all);
    assert!(
        disk.contents(&name).unwrap().len() <= records_end + 3,
        "torn bytes kept"
    );
    s.persist(None, &entries(31, 31, 5), None).unwrap();
    let (_, again) = open(&disk, options).unwrap();
    assert_eq!(again.entries.len(), 31);
}

#[test]
fn only_the_newest_segment_keeps_zero_room() {
    let options = small_segments_kept();
    let (disk, _) = disk_with_log(options.clone());
    let mut names = segments(&disk);
    names.sort();
    assert!(names.len() >= 3);
    let newest = names.pop().unwrap();
    assert_eq!(disk.contents(&newest).unwrap().len() % 128, 0);
    for name in &names {
        // A closed segment ends with its last record: its records cover the whole file.
        let bytes = disk.contents(name).unwrap();
        let scanned = crate::storage::record::scan(name, &bytes, false, 1 << 20).unwrap();
        assert_eq!(
            scanned.valid_len,
            bytes.len() as u64,
            "{name} has a zero tail"
        );
    }
    // And zeros past a closed segment's end are damage, not room.
    let mut bytes = disk.contents(&names[0]).unwrap();
    bytes.resize(bytes.len() + 64, 0);
    disk.replace_contents(&names[0], bytes).unwrap();
    match open(&disk, options) {
        Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, names[0]),
        other => panic!("expected corruption of {}, got {other:?}", names[0]),
    }
}

#[test]
fn damaged_snapshot_is_a_clear_error() {
    let (disk, _) = disk_with_log(StorageOptions::default());
    {
        let (mut s, _) = open(&disk, StorageOptions::default()).unwrap();
        s.save_snapshot(&snap(10, 1)).unwrap();
    }
    let mut bytes = disk.contents("snapshot").unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    disk.replace_contents("snapshot", bytes).unwrap();
    match open(&disk, StorageOptions::default()) {
        Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, "snapshot"),
        other => panic!("expected corruption error, got {other:?}"),
    }
}

#[test]
fn random_damage_never_panics_nor_serves_wrong_data() {
    for seed in 0..300u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (disk, all) = disk_with_log(small_segments());
        let names = segments(&disk);
        let name = &names[rng.random_range(0..names.len())];
        let mut bytes = disk.contents(name).unwrap();
        if bytes.is_empty() {
            continue;
        }
        if rng.random_bool(0.5) {
            let at = rng.random_range(0..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
        } else {
            bytes.truncate(rng.random_range(0..bytes.len()));
        }
        disk.replace_contents(name, bytes).unwrap();
        match open(&disk, small_segments()) {
            Ok((_, r)) => assert!(all.starts_with(&r.entries), "seed {seed}: wrong entries"),
            Err(StorageError::Corrupt { file, .. }) => assert!(!file.is_empty()),
            Err(other) => panic!("seed {seed}: unexpected error {other}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Many groups on one disk: independent stores, crash-safe destruction, the node marker.

fn open_wal(disk: &CrashDisk) -> Result<Wal, StorageError> {
    Wal::open(Arc::new(disk.clone()), small_segments())
}

/// A fresh WAL (as a restarted node opens it) and `group`'s store in it.
fn group_store(
    disk: &CrashDisk,
    group: crate::meta::GroupId,
) -> Result<(NodeStorage, Recovered), StorageError> {
    let wal = open_wal(disk)?;
    group_store_in(&wal, disk, group)
}

fn group_store_in(
    wal: &Wal,
    disk: &CrashDisk,
    group: crate::meta::GroupId,
) -> Result<(NodeStorage, Recovered), StorageError> {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    NodeStorage::open(wal, Arc::new(GroupDisk::new(shared, group)), group)
}

fn hosted(
    disk: &CrashDisk,
) -> Result<std::collections::BTreeSet<crate::meta::GroupId>, StorageError> {
    hosted_groups(disk, &open_wal(disk)?)
}

/// Fills `group` with hard state, entries over several segments and (for odd groups) a
/// snapshot, all distinct per group; returns what a recovery must find.
fn populate_group(disk: &CrashDisk, group: crate::meta::GroupId) -> Recovered {
    let term = u64::from(group) + 1;
    let (mut s, r) = group_store(disk, group).unwrap();
    assert_eq!(r, Recovered::default(), "group {group} starts empty");
    let last = 10 + 3 * u64::from(group);
    s.persist(Some(&hs(term, Some(1), 2)), &entries(1, last, term), None)
        .unwrap();
    if group % 2 == 1 {
        s.save_snapshot(&snap(5, term)).unwrap();
    }
    drop(s);
    let (_, r) = group_store(disk, group).unwrap();
    assert_eq!(r.hard_state, hs(term, Some(1), 2));
    assert_eq!(r.entries.last(), Some(&entry(last, term, 40)));
    r
}

fn group_files(disk: &CrashDisk, group: crate::meta::GroupId) -> Vec<String> {
    let prefix = format!("g{group}.");
    disk.list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[test]
fn groups_on_one_disk_stay_independent_across_reopen() {
    let disk = CrashDisk::new(5);
    // 1 and 10 share a digit prefix: the dot keeps them apart.
    let groups = [0, 1, 10];
    let want: Vec<Recovered> = groups.iter().map(|&g| populate_group(&disk, g)).collect();
    // More writes to group 1 (a snapshot that compacts its segments) leave the others alone.
    {
        let (mut s, _) = group_store(&disk, 1).unwrap();
        s.persist(None, &entries(14, 40, 2), None).unwrap();
        s.save_snapshot(&snap(30, 2)).unwrap();
    }
    disk.crash(CrashMode::Drop);
    for (i, &g) in groups.iter().enumerate() {
        let (_, r) = group_store(&disk, g).unwrap();
        if g == 1 {
            assert_eq!(r.snapshot, Some(snap(30, 2)));
            assert_eq!(r.entries, entries(31, 40, 2));
        } else {
            assert_eq!(r, want[i], "group {g} changed");
        }
    }
    let view = GroupDisk::new(Arc::new(disk.clone()), 1);
    let listed = view.list().unwrap();
    assert!(listed.contains(&"snapshot".to_string()), "{listed:?}");
    assert!(listed.iter().all(|n| !n.starts_with('g')), "{listed:?}");
    assert!(
        group_files(&disk, 0).is_empty(),
        "a group without a snapshot has no files: its log is in the WAL"
    );
    assert_eq!(
        listed.len(),
        group_files(&disk, 1).len(),
        "list() shows exactly the group's files"
    );
    assert!(disk.exists("g1.snapshot").unwrap() && !disk.exists("snapshot").unwrap());
}

#[test]
fn hosted_groups_lists_groups_in_order_and_ignores_other_files() {
    let disk = CrashDisk::new(1);
    assert!(hosted(&disk).unwrap().is_empty());
    for g in [12, 0, 3] {
        populate_group(&disk, g);
    }
    for stray in ["node.marker", "snapshot", "g01.snapshot", "gx.log", "g7"] {
        disk.open(stray).unwrap();
    }
    let listed: Vec<_> = hosted(&disk).unwrap().into_iter().collect();
    assert_eq!(listed, vec![0, 3, 12]);
}

#[test]
fn destroy_group_removes_exactly_that_group() {
    let disk = CrashDisk::new(2);
    let kept = populate_group(&disk, 1);
    populate_group(&disk, 11);
    disk.open("node.marker").unwrap();
    destroy_group(&disk, &open_wal(&disk).unwrap(), 11).unwrap();
    disk.crash(CrashMode::Drop);
    assert!(group_files(&disk, 11).is_empty());
    assert_eq!(
        hosted(&disk).unwrap().into_iter().collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(group_store(&disk, 1).unwrap().1, kept);
    assert!(disk.exists("node.marker").unwrap(), "not a group file");
    // A destroyed group can be created again from scratch.
    populate_group(&disk, 11);
}

/// The server makes a deletion durable (`begin_destroy_group`) and removes the files later, off
/// its event loop: a crash in between leaves the files, and the next start finishes the job
/// without opening the group.
#[test]
fn a_begun_deletion_is_finished_by_the_next_start() {
    for mode in [CrashMode::Drop, CrashMode::Torn] {
        let disk = CrashDisk::new(5);
        populate_group(&disk, 1);
        let kept = populate_group(&disk, 2);
        let wal = open_wal(&disk).unwrap();
        begin_destroy_group(&disk, &wal, 1).unwrap();
        drop(wal);
        disk.crash(mode);
        assert!(
            !group_files(&disk, 1).is_empty(),
            "{mode:?}: files were not left"
        );
        assert_eq!(
            hosted(&disk).unwrap().into_iter().collect::<Vec<_>>(),
            vec![2]
        );
        assert!(
            group_files(&disk, 1).is_empty(),
            "{mode:?}: files left behind"
        );
        assert_eq!(group_store(&disk, 2).unwrap().1, kept);
        finish_destroy_group(&disk, 1).expect("finishing again finds nothing to do");
    }
}

/// Destroys group 1 with a crash after `ops` mutating disk calls, optionally crashes again
/// `recovery_ops` calls into the recovery that finishes the job, and checks that group 1 is
/// whole or gone and group 2 whole. Returns whether the destruction ran to completion.
fn destroy_with_crash(seed: u64, mode: CrashMode, ops: u64, recovery_ops: Option<u64>) -> bool {
    let disk = CrashDisk::new(seed);
    let doomed = populate_group(&disk, 1);
    let kept = populate_group(&disk, 2);
    let before = group_files(&disk, 1);
    let wal = open_wal(&disk).unwrap();
    disk.fail_after(ops);
    let finished = destroy_group(&disk, &wal, 1).is_ok();
    drop(wal);
    disk.crash(mode);
    if let Some(recovery_ops) = recovery_ops {
        disk.fail_after(recovery_ops);
        let _ = hosted(&disk);
        disk.crash(mode);
    }
    let ctx = format!("seed {seed} {mode:?} ops {ops} recovery {recovery_ops:?}");
    let hosted = hosted(&disk).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert!(hosted.contains(&2), "{ctx}: group 2 lost");
    assert_eq!(
        group_store(&disk, 2).unwrap().1,
        kept,
        "{ctx}: group 2 damaged"
    );
    if hosted.contains(&1) {
        assert!(!finished, "{ctx}: a completed destruction left the group");
        assert_eq!(group_files(&disk, 1), before, "{ctx}: half a group");
        let (_, r) = group_store(&disk, 1).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(r, doomed, "{ctx}: group 1 not whole");
    } else {
        assert!(group_files(&disk, 1).is_empty(), "{ctx}: files left behind");
    }
    finished
}

#[test]
fn destroying_a_group_with_a_crash_at_every_step_leaves_it_whole_or_gone() {
    for mode in [CrashMode::Drop, CrashMode::Torn] {
        for seed in 0..8u64 {
            let mut ops = 0;
            while !destroy_with_crash(seed * 1000 + ops, mode, ops, None) {
                for recovery_ops in 0..8 {
                    destroy_with_crash(seed * 1000 + ops, mode, ops, Some(recovery_ops));
                }
                ops += 1;
                assert!(ops < 100, "destruction never completes");
            }
            assert!(
                ops >= 5,
                "only {ops} steps: the crash points were not exercised"
            );
        }
    }
}

#[test]
fn node_marker_round_trip_survives_crashes() {
    let disk = CrashDisk::new(4);
    assert_eq!(read_node_marker(&disk).unwrap(), None);
    let fresh = NodeMarker {
        node_id: 7,
        initialized: false,
        tombstones: std::collections::BTreeMap::from([(3, 42)]),
    };
    write_node_marker(&disk, &fresh).unwrap();
    disk.crash(CrashMode::Drop);
    assert_eq!(read_node_marker(&disk).unwrap(), Some(fresh.clone()));
    let created = NodeMarker {
        initialized: true,
        ..fresh.clone()
    };
    // An interrupted update leaves the old marker or the new one, never damage.
    for ops in 0..10 {
        for mode in [CrashMode::Drop, CrashMode::Torn] {
            let disk = CrashDisk::new(ops);
            write_node_marker(&disk, &fresh).unwrap();
            disk.fail_after(ops);
            let done = write_node_marker(&disk, &created).is_ok();
            disk.crash(mode);
            let got = read_node_marker(&disk).unwrap();
            if done {
                assert_eq!(got, Some(created.clone()), "ops {ops} {mode:?}");
            } else {
                assert!(
                    got == Some(fresh.clone()) || got == Some(created.clone()),
                    "ops {ops} {mode:?}: {got:?}"
                );
            }
        }
    }
}

#[test]
fn damaged_node_marker_is_an_error_naming_the_file() {
    let disk = CrashDisk::new(4);
    let marker = NodeMarker {
        node_id: 3,
        initialized: true,
        tombstones: std::collections::BTreeMap::new(),
    };
    write_node_marker(&disk, &marker).unwrap();
    let good = disk.contents(NODE_MARKER_FILE).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x10;
    let mut doubled = good.clone();
    doubled.extend_from_slice(&good);
    for bad in [
        flipped,
        good[..good.len() - 1].to_vec(),
        Vec::new(),
        doubled,
    ] {
        disk.replace_contents(NODE_MARKER_FILE, bad.clone())
            .unwrap();
        match read_node_marker(&disk) {
            Err(e @ StorageError::Corrupt { .. }) => {
                assert!(e.to_string().contains(NODE_MARKER_FILE), "{e}")
            }
            other => panic!("{bad:?}: expected a corruption error, got {other:?}"),
        }
    }
    disk.replace_contents(NODE_MARKER_FILE, good).unwrap();
    assert_eq!(read_node_marker(&disk).unwrap(), Some(marker));
}

// ---------------------------------------------------------------------------------------
// The node-wide WAL: many groups, one sync per turn, recycling, format marker.

fn wal_options(rng: &mut StdRng) -> StorageOptions {
    StorageOptions {
        segment_max_bytes: rng.random_range(300..3000),
        rewrite_max_bytes: [0, 300, 4096][rng.random_range(0..3)],
        entry_cache_bytes: [0, 700, 1 << 20][rng.random_range(0..3)],
        zero_ahead_bytes: [0, 64, 1000, 4096][rng.random_range(0..4)],
        ..StorageOptions::default()
    }
}

fn open_groups(
    wal: &Wal,
    disk: &CrashDisk,
    groups: &[crate::meta::GroupId],
) -> std::collections::BTreeMap<crate::meta::GroupId, (NodeStorage, Recovered)> {
    groups
        .iter()
        .map(|&g| (g, group_store_in(wal, disk, g).unwrap()))
        .collect()
}

fn apply_call(model: &Model, call: &Call) -> Model {
    let mut after = allowed_outcomes(model, call).pop().unwrap();
    if let Some(h) = call.hard_state.clone() {
        after.hard_state = h;
    }
    after
}

/// Several groups share one WAL: each turn some of them persist (deferred), then ONE
/// `Wal::sync`; a crash hits a random I/O call of a random turn. Every group must recover what
/// the syncs made durable: exactly its model, or for a group written in the crashed turn, a
/// state a prefix of its records could leave.
fn wal_crash_run(seed: u64, mode: CrashMode) {
    use std::collections::BTreeMap;
    let mut rng = StdRng::seed_from_u64(seed);
    let disk = CrashDisk::new(seed);
    let options = wal_options(&mut rng);
    let groups: Vec<crate::meta::GroupId> =
        (0..rng.random_range(1..=5u32)).map(|g| g * 3).collect();
    let wal = Wal::open(Arc::new(disk.clone()), options.clone()).unwrap();
    let mut stores: BTreeMap<_, NodeStorage> = open_groups(&wal, &disk, &groups)
        .into_iter()
        .map(|(g, (s, _))| (g, s))
        .collect();
    let mut models: BTreeMap<_, Model> = groups.iter().map(|&g| (g, Model::default())).collect();
    // Per group, the commit indexes a crash may leave (see `crash_run`).
    let mut crash_commits: BTreeMap<_, Vec<LogIndex>> =
        groups.iter().map(|&g| (g, vec![0])).collect();
    let turns = rng.random_range(1..30);
    let crash_turn = rng.random_range(0..turns);
    for turn in 0..turns {
        if turn == crash_turn {
            disk.fail_after(rng.random_range(0..12));
        }
        let mut calls = BTreeMap::new();
        let mut failed = false;
        for &g in &groups {
            if !rng.random_bool(0.6) {
                continue;
            }
            let call = random_call(&mut rng, &models[&g]);
            let result = stores.get_mut(&g).unwrap().persist_deferred(
                call.hard_state.as_ref(),
                &call.entries,
                call.snapshot.as_ref(),
            );
            calls.insert(g, call);
            if result.is_err() {
                failed = true;
                break;
            }
        }
        let synced = !failed && wal.sync().is_ok();
        if turn < crash_turn {
            assert!(synced, "seed {seed}: turn {turn} failed");
            let fsynced = calls.iter().any(|(g, c)| !is_commit_only(&models[g], c));
            for (g, call) in &calls {
                models.insert(*g, apply_call(&models[g], call));
            }
            for (g, commits) in crash_commits.iter_mut() {
                if fsynced {
                    commits.clear();
                }
                commits.push(models[g].hard_state.commit);
            }
            continue;
        }
        drop(stores);
        drop(wal);
        disk.crash(mode);
        let ctx = format!("seed {seed} {mode:?} turn {turn} synced {synced}");
        let wal = Wal::open(Arc::new(disk.clone()), options.clone())
            .unwrap_or_else(|e| panic!("{ctx}: reopen failed: {e}"));
        let mut reopened = BTreeMap::new();
        let mut got_models = BTreeMap::new();
        for &g in &groups {
            let (s, r) = group_store_in(&wal, &disk, g)
                .unwrap_or_else(|e| panic!("{ctx}: group {g}: reopen failed: {e}"));
            let got = recovered_model(r);
            let model = &models[&g];
            let commits = &crash_commits[&g];
            let lenient = |o: &Model| {
                *o == got
                    || (o.log == got.log
                        && o.snapshot == got.snapshot
                        && o.hard_state.term == got.hard_state.term
                        && o.hard_state.vote == got.hard_state.vote
                        && commits.contains(&got.hard_state.commit))
            };
            match calls.get(&g) {
                Some(call) => {
                    let outcomes = allowed_outcomes(model, call);
                    assert!(
                        outcomes.iter().any(lenient),
                        "{ctx}: group {g} recovered {got:#?}\nnot among allowed outcomes"
                    );
                    if synced && !is_commit_only(model, call) {
                        assert_eq!(
                            &got,
                            outcomes.last().unwrap(),
                            "{ctx}: group {g}: synced data lost"
                        );
                    }
                }
                None => assert!(
                    lenient(model),
                    "{ctx}: group {g} untouched, yet recovered {got:#?}\nwant {model:#?}"
                ),
            }
            reopened.insert(g, s);
            got_models.insert(g, got);
        }
        // The recovered node keeps working, and a second recovery agrees.
        for (g, s) in reopened.iter_mut() {
            let next = got_models[g].last() + 1;
            s.persist_deferred(None, &entries(next, next + 2, 99), None)
                .unwrap();
            got_models
                .get_mut(g)
                .unwrap()
                .append(&entries(next, next + 2, 99));
        }
        wal.sync().unwrap();
        drop(reopened);
        drop(wal);
        disk.crash(mode);
        let wal = Wal::open(Arc::new(disk.clone()), options.clone()).unwrap();
        for (g, (_, r)) in open_groups(&wal, &disk, &groups) {
            assert_eq!(
                recovered_model(r),
                got_models[&g],
                "{ctx}: group {g}: second recovery differs"
            );
        }
        return;
    }
}

#[test]
fn wal_many_groups_crash_recovery_drop_mode_many_seeds() {
    for seed in 0..300 {
        wal_crash_run(seed, CrashMode::Drop);
    }
}

#[test]
fn wal_many_groups_crash_recovery_torn_mode_many_seeds() {
    for seed in 5000..5300 {
        wal_crash_run(seed, CrashMode::Torn);
    }
}

#[test]
fn one_sync_per_turn_for_all_groups() {
    let disk = CrashDisk::new(9);
    let wal = Wal::open(Arc::new(disk.clone()), StorageOptions::default()).unwrap();
    let groups: Vec<crate::meta::GroupId> = (0..16).collect();
    let mut stores = open_groups(&wal, &disk, &groups);
    wal.sync().unwrap();
    let (syncs, dir_syncs) = (disk.sync_count(), disk.dir_sync_count());
    for (g, (s, _)) in stores.iter_mut() {
        let term = u64::from(*g) + 1;
        s.persist_deferred(Some(&hs(term, Some(1), 0)), &entries(1, 5, term), None)
            .unwrap();
        assert!(s.needs_sync());
    }
    wal.sync().unwrap();
    assert_eq!(disk.sync_count() - syncs, 1, "one fsync for 16 groups");
    assert_eq!(disk.dir_sync_count() - dir_syncs, 0);
    assert!(!wal.needs_sync());
    assert_eq!(segments(&disk).len(), 1);
    let files: Vec<String> = disk.list().unwrap();
    assert!(
        files.iter().all(|n| !n.starts_with('g')),
        "no per-group log files: {files:?}"
    );
}

/// Random turns over several groups with tiny segments: after every turn each group's live
/// log reads back exactly (from the cache or from the segments, wherever recycling and
/// rewrites moved it), and a reopen recovers it; once every group compacted, old segments go.
#[test]
fn segment_recycling_never_drops_a_live_entry() {
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk = CrashDisk::new(seed);
        let options = wal_options(&mut rng);
        let groups: Vec<crate::meta::GroupId> = (0..rng.random_range(2..=6u32)).collect();
        let wal = Wal::open(Arc::new(disk.clone()), options.clone()).unwrap();
        let mut stores = open_groups(&wal, &disk, &groups);
        let mut models: std::collections::BTreeMap<_, Model> =
            groups.iter().map(|&g| (g, Model::default())).collect();
        for turn in 0..rng.random_range(10..60) {
            for &g in &groups {
                if rng.random_bool(0.5) {
                    let call = random_call(&mut rng, &models[&g]);
                    stores
                        .get_mut(&g)
                        .unwrap()
                        .0
                        .persist_deferred(
                            call.hard_state.as_ref(),
                            &call.entries,
                            call.snapshot.as_ref(),
                        )
                        .unwrap();
                    models.insert(g, apply_call(&models[&g], &call));
                }
            }
            wal.sync().unwrap();
            for (g, (s, _)) in &stores {
                let m = &models[g];
                let read = s
                    .entries(m.floor() + 1, m.last() + 1)
                    .unwrap_or_else(|e| panic!("seed {seed} turn {turn} group {g}: {e}"));
                assert_eq!(
                    read, m.log,
                    "seed {seed} turn {turn} group {g}: read back differs"
                );
            }
        }
        drop(stores);
        drop(wal);
        disk.crash(CrashMode::Drop);
        let wal = Wal::open(Arc::new(disk.clone()), options.clone()).unwrap();
        let mut stores = open_groups(&wal, &disk, &groups);
        for (g, (_, r)) in &stores {
            let got = recovered_model(r.clone());
            assert_eq!(
                got.log, models[g].log,
                "seed {seed} group {g}: log after reopen"
            );
            // A commit-only change of the last turns may be lost (written without a sync; the
            // crash tests check which commit indexes may come back).
            let (got_hs, want_hs) = (&got.hard_state, &models[g].hard_state);
            assert_eq!(
                (got_hs.term, got_hs.vote),
                (want_hs.term, want_hs.vote),
                "seed {seed} group {g}"
            );
        }
        // Every group compacts everything; then writes to one group roll a few segments.
        for (g, (s, _)) in stores.iter_mut() {
            let m = &models[g];
            let term = m.term_at(m.last()).unwrap_or(1);
            if m.last() > m.floor() {
                s.save_snapshot(&snap(m.last(), term)).unwrap();
            }
        }
        let (s, _) = stores.get_mut(&groups[0]).unwrap();
        let first = s.last_index() + 1;
        for next in first..first + 40 {
            s.persist(None, &entries(next, next, 1000), None).unwrap();
            s.save_snapshot(&snap(next, 1000)).unwrap();
        }
        assert!(
            wal.segment_count() <= 3,
            "seed {seed}: {} segments kept though every group compacted",
            wal.segment_count()
        );
    }
}

/// Group 1 writes 3 entries and idles; group 2 writes 200, snapshotting every 5, on tiny
/// segments: the idle group's live entries pin the oldest segment. Returns the WAL, open.
fn idle_and_busy_groups(
    disk: &CrashDisk,
    rewrite_max_bytes: u64,
    bugs: crate::bugs::PlantedBugs,
) -> Wal {
    let options = StorageOptions {
        segment_max_bytes: 500,
        rewrite_max_bytes,
        entry_cache_bytes: 0,
        ..StorageOptions::default()
    };
    let wal = Wal::open(Arc::new(disk.clone()), options).unwrap();
    wal.set_planted_bugs(bugs);
    let mut stores = open_groups(&wal, disk, &[1, 2]);
    stores
        .get_mut(&1)
        .unwrap()
        .0
        .persist(Some(&hs(1, Some(1), 1)), &entries(1, 3, 1), None)
        .unwrap();
    let busy = &mut stores.get_mut(&2).unwrap().0;
    for i in 1..=200 {
        busy.persist(Some(&hs(1, Some(1), i)), &entries(i, i, 1), None)
            .unwrap();
        if i % 5 == 0 {
            busy.save_snapshot(&snap(i, 1)).unwrap();
        }
    }
    wal
}

/// An idle group with a few live entries pins the oldest segment; rewriting them into the new
/// segment's head frees it (with rewrites off, segments pile up).
fn segments_with_an_idle_group(
    rewrite_max_bytes: u64,
    bugs: crate::bugs::PlantedBugs,
) -> (CrashDisk, usize) {
    let disk = CrashDisk::new(11);
    let wal = idle_and_busy_groups(&disk, rewrite_max_bytes, bugs);
    wal.remove_doomed();
    let kept = wal.segment_count();
    (disk, kept)
}

#[test]
fn an_idle_groups_live_entries_are_rewritten_so_old_segments_go() {
    let (disk, kept) = segments_with_an_idle_group(4096, Default::default());
    assert!(kept <= 4, "{kept} segments with rewrites on");
    let (_, (_, r)) = open_groups(&open_wal(&disk).unwrap(), &disk, &[1])
        .pop_first()
        .unwrap();
    assert_eq!(
        r.entries,
        entries(1, 3, 1),
        "the idle group's entries survive recycling"
    );
    assert_eq!(r.hard_state, hs(1, Some(1), 1));
    let (_, piled) = segments_with_an_idle_group(0, Default::default());
    assert!(
        piled > 10,
        "{piled} segments with rewrites off: the idle group pins them all"
    );
}

/// The planted bug deletes segments that still hold live entries: the idle group's log is
/// lost, which a restart detects (or serves wrong); the correct code keeps it (test above).
#[test]
fn planted_wal_recycles_live_segment_loses_entries() {
    let bugs = crate::bugs::PlantedBugs {
        wal_recycles_live_segment: true,
        ..Default::default()
    };
    let (disk, _) = segments_with_an_idle_group(0, bugs);
    let wal = open_wal(&disk).unwrap();
    let recovered = group_store_in(&wal, &disk, 1).map(|(_, r)| r.entries);
    assert_ne!(
        recovered.ok(),
        Some(entries(1, 3, 1)),
        "the bug had no effect"
    );
}

#[test]
fn format1_directory_is_refused_with_what_to_do() {
    for old in [
        "g3.log-00000000000000000001.seg",
        "log-00000000000000000001.seg",
    ] {
        let disk = CrashDisk::new(1);
        disk.open("node.marker").unwrap();
        disk.open(old).unwrap();
        match Wal::open(Arc::new(disk.clone()), StorageOptions::default()) {
            Err(StorageError::UnsupportedFormat(why)) => {
                assert!(why.contains("format 1") && why.contains(old), "{why}");
                assert!(
                    why.contains("cluster join") && why.contains("previous release"),
                    "{why}"
                );
            }
            other => panic!("{old}: expected a refusal, got {other:?}"),
        }
        assert!(
            !disk.exists(FORMAT_FILE).unwrap(),
            "nothing written to a refused directory"
        );
    }
}

#[test]
fn format_marker_is_written_first_and_checked() {
    let disk = CrashDisk::new(1);
    drop(open_wal(&disk).unwrap());
    disk.crash(CrashMode::Drop);
    assert!(
        disk.exists(FORMAT_FILE).unwrap(),
        "the marker is durable before any segment"
    );
    open_wal(&disk).unwrap();
    // A marker of another version is refused.
    let mut other = Vec::new();
    super::record::encode(
        &bincode::serde::encode_to_vec(7u32, bincode::config::standard()).unwrap(),
        &mut other,
    );
    disk.replace_contents(FORMAT_FILE, other).unwrap();
    match open_wal(&disk) {
        Err(StorageError::UnsupportedFormat(why)) => assert!(why.contains("format 7"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Segments without the marker are damage, not a fresh directory.
    disk.remove(FORMAT_FILE).unwrap();
    assert!(matches!(open_wal(&disk), Err(StorageError::Corrupt { .. })));
}

/// Segments the WAL no longer needs are handed out for removal rather than deleted inline; a
/// crash before they are removed leaves them on disk, and a recovery with them present finds
/// the same state as one without them.
#[test]
fn doomed_segments_left_on_disk_recover_the_same_state() {
    let disk = CrashDisk::new(12);
    let wal = idle_and_busy_groups(&disk, 4096, Default::default());
    let (_, doomed) = wal.take_doomed().expect("old segments were collected");
    drop(wal);
    let on_disk = disk.list().unwrap();
    assert!(
        doomed.iter().all(|d| on_disk.contains(d)),
        "collected segments are not removed inline"
    );
    let recover = |disk: &CrashDisk| {
        let wal = open_wal(disk).unwrap();
        let (_, idle) = group_store_in(&wal, disk, 1).unwrap();
        let (_, busy) = group_store_in(&wal, disk, 2).unwrap();
        (idle.entries, idle.hard_state, busy.entries, busy.hard_state)
    };
    let with_doomed = recover(&disk.clone());
    assert_eq!(with_doomed.0, entries(1, 3, 1));
    assert_eq!(with_doomed.1, hs(1, Some(1), 1));
    assert_eq!(with_doomed.3, hs(1, Some(1), 200));
    crate::storage::remove_segments(&disk, &doomed);
    assert_eq!(recover(&disk), with_doomed, "removing them changes nothing");
}
