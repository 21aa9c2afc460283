//! `CrashDisk`: an in-memory `Disk` for tests and the simulator that models exactly what the
//! `Disk` contract promises and nothing more.
//!
//! Each file keeps its durable image (as of its last `sync`) apart from the writes since; the
//! directory keeps its durable name table (as of the last `sync_dir`) apart from the current
//! one. `crash` throws away what was not made durable: every pending write (`CrashMode::Drop`),
//! or a random prefix of them is kept and the last kept one is torn (`CrashMode::Torn`), with
//! all randomness drawn from the seed given to `new`, so a crash replays exactly. After a crash,
//! handles opened before it fail: the process that held them is gone.

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

#[derive(Clone, Debug)]
enum PendingOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
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
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<PendingOp>,
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
        for inode in st.inodes.values_mut() {
            let mut image = inode.durable.clone();
            if mode == CrashMode::Torn && !inode.pending.is_empty() {
                let kept = st.rng.random_range(0..=inode.pending.len());
                for op in &inode.pending[..kept] {
                    apply(&mut image, op);
                }
                if let Some(PendingOp::Write { offset, data }) = inode.pending.get(kept) {
                    let torn_len = st.rng.random_range(0..data.len().max(1));
                    let mut torn = data[..torn_len.min(data.len())].to_vec();
                    if st.rng.random_bool(0.5) {
                        torn.resize(data.len(), 0);
                    }
                    apply(
                        &mut image,
                        &PendingOp::Write {
                            offset: *offset,
                            data: torn,
                        },
                    );
                }
            }
            inode.durable = image.clone();
            inode.current = image;
            inode.pending.clear();
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
        inode.durable = bytes.clone();
        inode.current = bytes;
        inode.pending.clear();
        Ok(())
    }
}

fn apply(image: &mut Vec<u8>, op: &PendingOp) {
    match op {
        PendingOp::Write { offset, data } => {
            let start = *offset as usize;
            let end = start + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[start..end].copy_from_slice(data);
        }
        PendingOp::SetLen(len) => image.resize(*len as usize, 0),
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

    fn push(&mut self, op: PendingOp) -> io::Result<()> {
        self.with_inode(true, |inode| {
            apply(&mut inode.current, &op);
            inode.pending.push(op);
        })
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
        self.push(PendingOp::Write {
            offset,
            data: data.to_vec(),
        })
    }

    fn set_len(&mut self, len_bytes: u64) -> io::Result<()> {
        self.push(PendingOp::SetLen(len_bytes))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.with_inode(true, |inode| {
            // Replaying the pending writes costs their size, not the file's.
            for op in inode.pending.drain(..) {
                apply(&mut inode.durable, &op);
            }
            debug_assert_eq!(inode.durable, inode.current);
        })?;
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
