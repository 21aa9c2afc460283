//! `DiskBackend`: redb's `StorageBackend` over one file of our `Disk`, so the state machine's
//! B-tree reaches durable bytes only through the `Disk` contract (and the simulator's
//! `CrashDisk` drops or tears whatever redb wrote since its last `sync_data`).
//!
//! redb calls the backend from the thread that runs a transaction; it starts no threads of
//! its own. The file handle sits behind a mutex because redb requires `Sync`.
//!
//! Header writes. redb rewrites its whole 320-byte header (magic, region geometry, god byte,
//! both commit slots) with one write, the unchanged bytes included: in phase one of a
//! two-phase commit the slot still in use is rewritten as it is. On a real device that is
//! harmless (bytes rewritten with their own value cannot change, however the write is torn).
//! The `Disk` contract is harsher: the last write before a crash may be torn with the rest of
//! its range zero-filled, and redb checks a slot's version byte before its checksum, so a
//! zeroed byte of the slot in use makes the file unopenable ("Expected file format version
//! <= 3, found 0"; 1 in 300 torn engine crashes when this backend still wrote one span from
//! the first to the last changed byte, which covers slot 0 when slot 1 and the region counts
//! change together). So a header write reaches the disk as one write per run of changed
//! bytes, never touching a byte that keeps its value, and the god byte (which slot is
//! primary) goes last in a write of its own: a torn header write can then damage only the
//! slot being written (its checksum shows it) or the counts redb recomputes on recovery.

use std::fmt;
use std::io;
use std::sync::Mutex;

use super::disk::DiskFile;

/// The start of a redb file that holds its header (magic, version, god byte, commit slots).
const HEADER_REGION_BYTES: u64 = 4096;
/// Offset of redb's god byte (after its 9-byte magic number; redb 4.6 file format 3; the
/// header layout is checked by a test against what redb writes).
const GOD_BYTE_OFFSET: usize = 9;

pub struct DiskBackend {
    name: String,
    file: Mutex<Box<dyn DiskFile>>,
}

impl DiskBackend {
    pub fn new(name: &str, file: Box<dyn DiskFile>) -> DiskBackend {
        DiskBackend {
            name: name.to_string(),
            file: Mutex::new(file),
        }
    }

    fn file(&self) -> io::Result<std::sync::MutexGuard<'_, Box<dyn DiskFile>>> {
        self.file
            .lock()
            .map_err(|_| io::Error::other(format!("{}: a writer panicked", self.name)))
    }
}

impl fmt::Debug for DiskBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskBackend")
            .field("name", &self.name)
            .finish()
    }
}

impl redb::StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file()?.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let file = self.file()?;
        let mut filled = 0;
        while filled < out.len() {
            let n = file.read_at(offset + filled as u64, &mut out[filled..])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: read past the end at offset {offset}", self.name),
                ));
            }
            filled += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file()?.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file()?.sync()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut file = self.file()?;
        if offset >= HEADER_REGION_BYTES {
            return file.write_at(offset, data);
        }
        let header_len = ((HEADER_REGION_BYTES - offset) as usize).min(data.len());
        let (header, rest) = data.split_at(header_len);
        let current = read_existing(&**file, offset, header.len())?;
        for run in changed_runs(header, &current, offset) {
            file.write_at(offset + run.start as u64, &header[run])?;
        }
        if let Some(g) = god_byte_index(offset, header.len()) {
            if current.get(g) != Some(&header[g]) {
                file.write_at(offset + g as u64, &header[g..=g])?;
            }
        }
        if !rest.is_empty() {
            file.write_at(offset + header_len as u64, rest)?;
        }
        Ok(())
    }
}

/// The bytes the file holds at `offset..offset + len` (shorter at the end of the file).
fn read_existing(file: &dyn DiskFile, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut current = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(offset + filled as u64, &mut current[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    current.truncate(filled);
    Ok(current)
}

/// Index of redb's god byte within a header write at `offset` of `len` bytes, if it covers it.
fn god_byte_index(offset: u64, len: usize) -> Option<usize> {
    (GOD_BYTE_OFFSET as u64)
        .checked_sub(offset)
        .map(|g| g as usize)
        .filter(|&g| g < len)
}

/// The maximal runs of `new` that differ from `current` (bytes past `current`'s end differ),
/// leaving out the god byte, which the caller writes last.
fn changed_runs(new: &[u8], current: &[u8], offset: u64) -> Vec<std::ops::Range<usize>> {
    let god = god_byte_index(offset, new.len());
    let differs = |i: usize| Some(i) != god && current.get(i) != Some(&new[i]);
    let mut runs = Vec::new();
    let mut i = 0;
    while i < new.len() {
        if !differs(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < new.len() && differs(i) {
            i += 1;
        }
        runs.push(start..i);
    }
    runs
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::{CrashDisk, Disk};

    #[test]
    fn the_god_byte_follows_redbs_magic_number() {
        let disk = CrashDisk::new(1);
        let shared: Arc<dyn Disk> = Arc::new(disk.clone());
        let file = shared.open("db").unwrap();
        let db = redb::Builder::new()
            .create_with_backend(DiskBackend::new("db", file))
            .unwrap();
        drop(db);
        let bytes = disk.contents("db").unwrap();
        assert_eq!(&bytes[..GOD_BYTE_OFFSET], b"redb\x1a\x0a\xa9\x0d\x0a");
    }

    #[test]
    fn only_changed_bytes_are_written_and_the_god_byte_is_left_out() {
        let current = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let mut new = current;
        new[2] = 0;
        new[3] = 0;
        new[GOD_BYTE_OFFSET] = 0;
        new[11] = 0;
        assert_eq!(changed_runs(&new, &current, 0), vec![2..4, 11..12]);
        // Bytes past the file's end always count as changed.
        assert_eq!(
            changed_runs(&new, &current[..6], 0),
            vec![2..4, 6..9, 10..12]
        );
        // A write starting past the god byte has none.
        assert_eq!(changed_runs(&new[10..], &current[10..], 10), vec![1..2]);
    }
}
