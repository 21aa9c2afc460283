//! The disk trait: the only door through which node code reaches persistent storage.
//!
//! A production node uses `FileDisk` (real files in one directory, `fsync` on `sync`); the
//! simulator supplies a disk that keeps durable and pending bytes apart, so that a simulated
//! crash can drop (or tear) everything written since the last `sync`.
//!
//! Contract, which every implementation and every caller relies on:
//! - a write is durable only after `DiskFile::sync` on that file returns Ok;
//! - creating, renaming or removing a file is durable only after `Disk::sync_dir`;
//! - `rename` atomically replaces the target (all-or-nothing after a crash);
//! - after a crash, an unsynced file may hold any prefix of its unsynced writes, and the last of
//!   them may be torn (partially written).

use std::io;

/// A flat directory of named files.
pub trait Disk: Send + Sync + 'static {
    /// Opens `name`, creating an empty file when it does not exist.
    fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>>;
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// File names in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
}

pub trait DiskFile: Send {
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`, extending the file when needed.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len_bytes: u64) -> io::Result<()>;
    /// Makes every write to this file so far durable.
    fn sync(&mut self) -> io::Result<()>;
}
