//! `CrashDisk`: an in-memory `Disk` for tests and the simulator that models exactly what the
//! `Disk` contract promises and nothing more.
//!
//! Each file keeps its current bytes and an undo log of the changes since its last `sync`
//! (undoing all of them in reverse gives the durable image); the directory keeps its durable
//! name table (as of the last `sync_dir`) apart from the current one. `crash` throws away what
//! was not made durable: every pending write (`CrashMode::Drop`), or a random prefix of them is kept and the last kept one is torn (`CrashMode::Torn`), with
//! all randomness drawn from the seed given to `new`, so a crash replays exactly. After a crash,
//! handles opened before it fail: the process that held them is gone.
//!
//! Why an undo log rather than a durable copy plus the pending writes: a write then costs one
//! copy of the bytes it overwrites (none for an append) instead of a copy of its data, a copy
//! into the current image and, at `sync`, another into the durable one; a `sync` only drops
//! the log. A crash undoes what it throws away, which draws the same random choices and gives
//! the same image as replaying the kept writes onto the durable one (a test checks that
//! against that replay model).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::disk::{Disk, DiskFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write, creation, rename and removal is lost.
    Drop,
    /// Per file, a random prefix of the unsynced writes survives and the last surviving write
    /// is torn (a random prefix of its bytes, the rest of its range sometimes zero-filled);
    /// a random prefix of the directory changes since the last `sync_dir` survives too (a
    /// real file system may persist them early; the contract only promises them after it).
    Torn,
}

/// How to take back one change made since the last `sync`.
#[derive(Debug)]
enum Undo {
    /// A write of `len_bytes` at `offset` into a file `old_len` bytes long; `old` holds the
    /// bytes it overwrote (those below `old_len`).
    Write {
        offset: usize,
        len_bytes: usize,
        old_len: usize,
        old: Vec<u8>,
    },
    /// A `set_len` of a file `old_len` bytes long; `cut` holds the bytes it cut off.
    SetLen { old_len: usize, cut: Vec<u8> },
}

#[derive(Clone, Debug)]
enum DirOp {
    Link { name: String, inode: u64 },
    Unlink { name: String },
    Rename { from: String, to: String },
}

impl DirOp {
    fn apply(&self, names: &mut BTreeMap<String, u64>) {
        match self {
            DirOp::Link { name, inode } => {
                names.insert(name.clone(), *inode);
            }
            DirOp::Unlink { name } => {
                names.remove(name);
            }
            DirOp::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Default)]
struct Inode {
    current: Vec<u8>,
    /// The changes since the last `sync`, oldest first.
    undo: Vec<Undo>,
}

impl Inode {
    fn write(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        let old_len = self.current.len();
        let old = self.current[offset.min(old_len)..end.min(old_len)].to_vec();
        if old_len < end {
            self.current.resize(end, 0);
        }
        self.current[offset..end].copy_from_slice(data);
        self.undo.push(Undo::Write {
            offset,
            len_bytes: data.len(),
            old_len,
            old,
        });
    }

    fn set_len(&mut self, len_bytes: usize) {
        let old_len = self.current.len();
        let cut = self.current.get(len_bytes..).unwrap_or_default().to_vec();
        self.current.resize(len_bytes, 0);
        self.undo.push(Undo::SetLen { old_len, cut });
    }

    /// Takes back the newest change (the image is then as right before it).
    fn undo_last(&mut self) {
        match self.undo.pop() {
            Some(Undo::Write {
                offset,
                old_len,
                old,
                ..
            }) => {
                self.current[offset..offset + old.len()].copy_from_slice(&old);
                self.current.truncate(old_len);
            }
            Some(Undo::SetLen { old_len, cut }) => {
                self.current.truncate(old_len);
                self.current.extend_from_slice(&cut);
            }
            None => {}
        }
    }

    /// A power loss in `mode`: the current image becomes what survives.
    fn crash(&mut self, mode: CrashMode, rng: &mut StdRng) {
        if mode == CrashMode::Drop || self.undo.is_empty() {
            while !self.undo.is_empty() {
                self.undo_last();
            }
            return;
        }
        // A prefix of `kept` changes survives; the next one, if a write, is torn.
        let kept = rng.random_range(0..=self.undo.len());
        while self.undo.len() > kept + 1 {
            self.undo_last();
        }
        if self.undo.len() > kept {
            if let Some(&Undo::Write { len_bytes, .. }) = self.undo.last() {
                let torn_len = rng.random_range(0..len_bytes.max(1)).min(len_bytes);
                let zero_fill = rng.random_bool(0.5);
                self.tear_last(torn_len, zero_fill);
            } else {
                self.undo_last();
            }
        }
        self.undo.clear();
    }

    /// Of the newest change, a write, keeps only the first `torn_len` bytes; the rest of its
    /// range is zero-filled or holds what it held before.
    fn tear_last(&mut self, torn_len: usize, zero_fill: bool) {
        let Some(Undo::Write {
            offset,
            len_bytes,
            old_len,
            old,
        }) = self.undo.pop()
        else {
            return;
        };
        if zero_fill {
            self.current[offset + torn_len..offset + len_bytes].fill(0);
            return;
        }
        if torn_len < old.len() {
            self.current[offset + torn_len..offset + old.len()].copy_from_slice(&old[torn_len..]);
        }
        self.current.truncate(old_len.max(offset + torn_len));
    }
}

struct State {
    rng: StdRng,
    /// Bumped by every crash; handles from an older generation fail.
    generation: u64,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    /// Directory changes since the last `sync_dir`, in order.
    pending_dir: Vec<DirOp>,
    syncs: u64,
    dir_syncs: u64,
    /// Mutating calls still allowed before every mutating call fails (None: no limit).
    ops_until_failure: Option<u64>,
}

impl State {
    /// Counts one mutating call; fails once the budget set by `fail_after` is spent.
    fn admit(&mut self, what: &str) -> io::Result<()> {
        match &mut self.ops_until_failure {
            Some(0) => Err(io::Error::other(format!("{what}: injected failure"))),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Cheap to clone: clones share the same simulated disk.
#[derive(Clone)]
pub struct CrashDisk {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves only test state behind; keep going.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn too_large(name: &str, bytes: u64) -> io::Error {
    io::Error::other(format!("{name}: {bytes} bytes is beyond a file in memory"))
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

impl CrashDisk {
    pub fn new(seed: u64) -> CrashDisk {
        CrashDisk {
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                generation: 0,
                next_inode: 1,
                inodes: BTreeMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                pending_dir: Vec::new(),
                syncs: 0,
                dir_syncs: 0,
                ops_until_failure: None,
            })),
        }
    }

    /// Simulates a power loss: afterwards only durable data (and, in `Torn` mode, part of the
    /// pending writes) remains, and all open handles fail.
    pub fn crash(&self, mode: CrashMode) {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        st.generation += 1;
        st.ops_until_failure = None;
        let mut names = st.durable_names.clone();
        if mode == CrashMode::Torn {
            let kept = st.rng.random_range(0..=st.pending_dir.len());
            for op in &st.pending_dir[..kept] {
                op.apply(&mut names);
            }
        }
        st.pending_dir.clear();
        st.durable_names = names.clone();
        st.names = names;
        let live: Vec<u64> = st.names.values().copied().collect();
        st.inodes.retain(|id, _| live.contains(id));
        let State { inodes, rng, .. } = st;
        for inode in inodes.values_mut() {
            inode.crash(mode, rng);
        }
    }

    /// After `ops` more mutating calls (open of a new file, write, set_len, sync, remove,
    /// rename, sync_dir), every mutating call fails, as if the process died there; `crash`
    /// lifts the limit.
    pub fn fail_after(&self, ops: u64) {
        lock(&self.state).ops_until_failure = Some(ops);
    }

    /// Number of `DiskFile::sync` calls so far (group commit tests count them).
    pub fn sync_count(&self) -> u64 {
        lock(&self.state).syncs
    }

    pub fn dir_sync_count(&self) -> u64 {
        lock(&self.state).dir_syncs
    }

    /// The current bytes of `name` (tests corrupt files through `replace_contents`).
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let st = lock(&self.state);
        st.names
            .get(name)
            .and_then(|id| st.inodes.get(id))
            .map(|i| i.current.clone())
    }

    /// Overwrites `name` durably with `bytes` (to plant corruption in tests).
    pub fn replace_contents(&self, name: &str, bytes: Vec<u8>) -> io::Result<()> {
        let mut st = lock(&self.state);
        let id = *st.names.get(name).ok_or_else(|| not_found(name))?;
        let inode = st.inodes.get_mut(&id).ok_or_else(|| not_found(name))?;
        inode.current = bytes;
        inode.undo.clear();
        Ok(())
    }
}

impl Disk for CrashDisk {
    fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>> {
        let mut st = lock(&self.state);
        let id = match st.names.get(name) {
            Some(id) => *id,
            None => {
                st.admit(name)?;
                let id = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(id, Inode::default());
                st.names.insert(name.to_string(), id);
                st.pending_dir.push(DirOp::Link {
                    name: name.to_string(),
                    inode: id,
                });
                id
            }
        };
        Ok(Box::new(CrashFile {
            state: Arc::clone(&self.state),
            inode: id,
            generation: st.generation,
            name: name.to_string(),
        }))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(lock(&self.state).names.contains_key(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.state).names.keys().cloned().collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.admit(name)?;
        st.names.remove(name).ok_or_else(|| not_found(name))?;
        st.pending_dir.push(DirOp::Unlink {
            name: name.to_string(),
        });
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.admit(from)?;
        let id = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_string(), id);
        st.pending_dir.push(DirOp::Rename {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.admit("sync_dir")?;
        st.durable_names = st.names.clone();
        st.pending_dir.clear();
        st.dir_syncs += 1;
        // Files no name refers to any more (removed, durably) cannot come back: free them.
        let State { inodes, names, .. } = &mut *st;
        inodes.retain(|id, _| names.values().any(|n| n == id));
        Ok(())
    }
}

struct CrashFile {
    state: Arc<Mutex<State>>,
    inode: u64,
    generation: u64,
    name: String,
}

impl CrashFile {
    fn with_inode<T>(&self, mutates: bool, f: impl FnOnce(&mut Inode) -> T) -> io::Result<T> {
        let mut st = lock(&self.state);
        if st.generation != self.generation {
            return Err(io::Error::other(format!(
                "{}: handle from before a crash",
                self.name
            )));
        }
        if mutates {
            st.admit(&self.name)?;
        }
        // A removed file stays readable and writable through open handles, as on POSIX.
        let inode = st.inodes.entry(self.inode).or_default();
        Ok(f(inode))
    }
}

impl DiskFile for CrashFile {
    fn len(&self) -> io::Result<u64> {
        self.with_inode(false, |inode| inode.current.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_inode(false, |inode| {
            let start = (offset as usize).min(inode.current.len());
            let n = buf.len().min(inode.current.len() - start);
            buf[..n].copy_from_slice(&inode.current[start..start + n]);
            n
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let offset = usize::try_from(offset).map_err(|_| too_large(&self.name, offset))?;
        self.with_inode(true, |inode| inode.write(offset, data))
    }

    fn set_len(&mut self, len_bytes: u64) -> io::Result<()> {
        let len_bytes = usize::try_from(len_bytes).map_err(|_| too_large(&self.name, len_bytes))?;
        self.with_inode(true, |inode| inode.set_len(len_bytes))
    }

    fn sync(&mut self) -> io::Result<()> {
        // The current image becomes the durable one: nothing is left to undo.
        self.with_inode(true, |inode| inode.undo.clear())?;
        lock(&self.state).syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(disk: &CrashDisk, name: &str) -> Vec<u8> {
        disk.contents(name).unwrap_or_default()
    }

    #[test]
    fn drop_keeps_exactly_what_was_synced() {
        let disk = CrashDisk::new(1);
        let mut f = disk.open("a").unwrap();
        f.write_at(0, b"hello").unwrap();
        f.sync().unwrap();
        disk.sync_dir().unwrap();
        f.write_at(5, b" world").unwrap();
        assert_eq!(read(&disk, "a"), b"hello world");
        disk.crash(CrashMode::Drop);
        assert_eq!(read(&disk, "a"), b"hello");
        assert!(
            f.write_at(0, b"x").is_err(),
            "a handle from before the crash must fail"
        );
    }

    #[test]
    fn directory_changes_need_sync_dir() {
        let disk = CrashDisk::new(1);
        let mut f = disk.open("new").unwrap();
        f.write_at(0, b"data").unwrap();
        f.sync().unwrap();
        disk.crash(CrashMode::Drop);
        assert!(!disk.exists("new").unwrap(), "created but never sync_dir'd");

        let mut f = disk.open("old").unwrap();
        f.write_at(0, b"v1").unwrap();
        f.sync().unwrap();
        disk.sync_dir().unwrap();
        let mut t = disk.open("tmp").unwrap();
        t.write_at(0, b"v2").unwrap();
        t.sync().unwrap();
        disk.rename("tmp", "old").unwrap();
        disk.crash(CrashMode::Drop);
        assert_eq!(read(&disk, "old"), b"v1");
        assert!(!disk.exists("tmp").unwrap());
    }

    #[test]
    fn torn_crash_keeps_a_prefix_and_is_deterministic_per_seed() {
        let run = |seed| {
            let disk = CrashDisk::new(seed);
            let mut f = disk.open("log").unwrap();
            f.write_at(0, b"synced|").unwrap();
            f.sync().unwrap();
            disk.sync_dir().unwrap();
            f.write_at(7, b"first|").unwrap();
            f.write_at(13, b"second").unwrap();
            disk.crash(CrashMode::Torn);
            read(&disk, "log")
        };
        let full = b"synced|first|second";
        for seed in 0..50 {
            let got = run(seed);
            assert_eq!(got, run(seed), "seed {seed} not deterministic");
            assert!(got.starts_with(b"synced|"), "seed {seed} lost synced bytes");
            let written = got.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
            assert!(
                full.starts_with(&got[..written]),
                "seed {seed}: {got:?} is no prefix"
            );
        }
    }

    /// The model the undo log must agree with: the durable image plus the writes since, a
    /// crash replaying a random prefix of them and tearing the next (the former implementation).
    #[derive(Default)]
    struct ReplayModel {
        durable: Vec<u8>,
        pending: Vec<(Option<u64>, Vec<u8>, u64)>,
    }

    fn replay(image: &mut Vec<u8>, op: &(Option<u64>, Vec<u8>, u64)) {
        match op {
            (Some(offset), data, _) => {
                let start = *offset as usize;
                let end = start + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[start..end].copy_from_slice(data);
            }
            (None, _, len) => image.resize(*len as usize, 0),
        }
    }

    impl ReplayModel {
        fn crash(&mut self, mode: CrashMode, rng: &mut StdRng) -> Vec<u8> {
            let mut image = self.durable.clone();
            if mode == CrashMode::Torn {
                // The directory's draw (no directory change is pending in the test).
                let _ = rng.random_range(0..=0usize);
            }
            if mode == CrashMode::Torn && !self.pending.is_empty() {
                let kept = rng.random_range(0..=self.pending.len());
                for op in &self.pending[..kept] {
                    replay(&mut image, op);
                }
                if let Some((Some(offset), data, _)) = self.pending.get(kept) {
                    let torn_len = rng.random_range(0..data.len().max(1));
                    let mut torn = data[..torn_len.min(data.len())].to_vec();
                    if rng.random_bool(0.5) {
                        torn.resize(data.len(), 0);
                    }
                    replay(&mut image, &(Some(*offset), torn, 0));
                }
            }
            self.pending.clear();
            self.durable = image.clone();
            image
        }
    }

    #[test]
    fn crashes_leave_what_replaying_the_kept_writes_leaves() {
        for seed in 0..300u64 {
            let mut ops = StdRng::seed_from_u64(seed);
            let disk = CrashDisk::new(seed);
            let mut model_rng = StdRng::seed_from_u64(seed);
            let mut model = ReplayModel::default();
            let mut f = disk.open("f").unwrap();
            disk.sync_dir().unwrap();
            for step in 0..60 {
                match ops.random_range(0..10) {
                    0..=5 => {
                        let offset = ops.random_range(0..64u64);
                        let len = ops.random_range(0..24usize);
                        let data: Vec<u8> = (0..len).map(|_| ops.random_range(1..=255u8)).collect();
                        f.write_at(offset, &data).unwrap();
                        model.pending.push((Some(offset), data, 0));
                    }
                    6 => {
                        let len = ops.random_range(0..80u64);
                        f.set_len(len).unwrap();
                        model.pending.push((None, Vec::new(), len));
                    }
                    7 => {
                        f.sync().unwrap();
                        for op in std::mem::take(&mut model.pending) {
                            replay(&mut model.durable, &op);
                        }
                    }
                    _ => {
                        let mode = if ops.random_bool(0.5) {
                            CrashMode::Torn
                        } else {
                            CrashMode::Drop
                        };
                        disk.crash(mode);
                        let expected = model.crash(mode, &mut model_rng);
                        assert_eq!(read(&disk, "f"), expected, "seed {seed} step {step}");
                        f = disk.open("f").unwrap();
                    }
                }
                let mut model_current = model.durable.clone();
                for op in &model.pending {
                    replay(&mut model_current, op);
                }
                assert_eq!(read(&disk, "f"), model_current, "seed {seed} step {step}");
            }
        }
    }

    #[test]
    fn fail_after_stops_mutations_until_the_crash() {
        let disk = CrashDisk::new(1);
        let mut f = disk.open("a").unwrap();
        disk.fail_after(1);
        f.write_at(0, b"x").unwrap();
        assert!(f.sync().is_err());
        assert!(f.read_at(0, &mut [0u8; 1]).is_ok(), "reads still work");
        disk.crash(CrashMode::Drop);
        let mut f = disk.open("b").unwrap();
        f.write_at(0, b"y").unwrap();
        f.sync().unwrap();
    }
}
