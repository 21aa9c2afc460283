//! `SimDisk`: the simulated node's disk. It is the node's `CrashDisk` (durable vs pending bytes;
//! a crash drops or tears what was not synced) plus injected I/O errors the nemesis switches on
//! and off at run time.
//!
//! Invariants: an injected error happens instead of the operation (a failed write writes
//! nothing, a failed sync makes nothing durable), so the disk never lies about success; error
//! decisions come from a seeded rng, so a run stays a function of its seed.
//!
//! Latency (a slow disk, the gray failure): the `Disk` trait is synchronous, so simulated time
//! cannot pass inside a call; a slow operation instead adds its latency to the node's
//! `DiskStall`, which the node's event loop sleeps off right after the sync that incurred it
//! (before the acknowledgements that wait for the sync leave) and at the end of its turn.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use node::sim_hooks::DiskStall;
use node::storage::{CrashDisk, CrashMode, Disk, DiskFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
struct ErrorState {
    error_percent: u32,
    rng: StdRng,
    injected: u64,
    /// Upper bounds of a slow disk's latency per sync and per read; 0: fast.
    sync_ms_max: u64,
    read_ms_max: u64,
    stall: DiskStall,
}

/// The run-time switch for one disk's injected errors (shared with the nemesis).
#[derive(Clone, Debug)]
pub struct DiskFaults {
    state: Arc<Mutex<ErrorState>>,
}

impl DiskFaults {
    pub fn new(seed: u64, stall: DiskStall) -> DiskFaults {
        DiskFaults {
            state: Arc::new(Mutex::new(ErrorState {
                error_percent: 0,
                rng: StdRng::seed_from_u64(seed),
                injected: 0,
                sync_ms_max: 0,
                read_ms_max: 0,
                stall,
            })),
        }
    }

    /// From now on each sync takes up to `sync_ms_max` and each read up to `read_ms_max`
    /// simulated milliseconds (0, 0: a fast disk again).
    pub fn set_slow(&self, sync_ms_max: u64, read_ms_max: u64) {
        let mut st = self.lock();
        st.sync_ms_max = sync_ms_max;
        st.read_ms_max = read_ms_max;
    }

    /// A slow disk's latency for one sync (or read), owed to the node's event loop.
    fn delay(&self, sync: bool) {
        let mut st = self.lock();
        let max_ms = if sync { st.sync_ms_max } else { st.read_ms_max };
        if max_ms > 0 {
            let us = st.rng.random_range(0..=max_ms * 1000);
            st.stall.add(std::time::Duration::from_micros(us));
        }
    }

    /// Percent (0..=100) of mutating calls that fail from now on.
    pub fn set_error_percent(&self, percent: u32) {
        assert!(percent <= 100, "error percent {percent} > 100");
        self.lock().error_percent = percent;
    }

    /// Errors injected so far.
    pub fn injected(&self) -> u64 {
        self.lock().injected
    }

    /// Fails the operation (`what` names it) if an error is due; the name is only built then.
    fn check(&self, what: impl FnOnce() -> String) -> io::Result<()> {
        let mut st = self.lock();
        if st.error_percent > 0 && st.rng.random_range(0..100) < st.error_percent {
            st.injected += 1;
            return Err(io::Error::other(format!(
                "{}: injected I/O error (simulation)",
                what()
            )));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, ErrorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's disk; clones share it. It outlives the node's process: a restarted node reopens it.
#[derive(Clone)]
pub struct SimDisk {
    inner: CrashDisk,
    faults: DiskFaults,
}

impl SimDisk {
    /// A disk whose slow operations are owed to `stall` (the node's `SimHooks::disk_stall`).
    pub fn new(seed: u64, stall: DiskStall) -> SimDisk {
        SimDisk {
            inner: CrashDisk::new(seed),
            faults: DiskFaults::new(seed ^ 0x0d15_c0de, stall),
        }
    }

    pub fn faults(&self) -> DiskFaults {
        self.faults.clone()
    }

    /// A power loss: unsynced data is dropped (or torn), open handles die.
    pub fn crash(&self, mode: CrashMode) {
        self.inner.crash(mode);
    }
}

impl Disk for SimDisk {
    fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>> {
        let inner = self.inner.open(name)?;
        Ok(Box::new(SimFile {
            inner,
            faults: self.faults.clone(),
            name: name.to_string(),
        }))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        self.inner.exists(name)
    }

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.faults.check(|| format!("remove {name}"))?;
        self.inner.remove(name)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.faults.check(|| format!("rename {from} -> {to}"))?;
        self.inner.rename(from, to)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.faults.check(|| "sync_dir".to_string())?;
        self.faults.delay(true);
        self.inner.sync_dir()
    }
}

struct SimFile {
    inner: Box<dyn DiskFile>,
    faults: DiskFaults,
    name: String,
}

impl DiskFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.faults.delay(false);
        self.inner.read_at(offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.faults
            .check(|| format!("write {} at {offset}", self.name))?;
        self.inner.write_at(offset, data)
    }

    fn set_len(&mut self, len_bytes: u64) -> io::Result<()> {
        self.faults
            .check(|| format!("set_len {} {len_bytes}", self.name))?;
        self.inner.set_len(len_bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.faults.check(|| format!("sync {}", self.name))?;
        self.faults.delay(true);
        self.inner.sync()
    }
}
