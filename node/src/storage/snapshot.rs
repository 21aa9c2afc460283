//! The snapshot file: the latest Raft snapshot (metadata + state machine image), replaced
//! atomically.
//!
//! Layout: `magic: [u8; 8]` = `QKVSNAP1`, `len: u64` LE, `crc: u32` LE (crc32 of the body),
//! then `len` bytes of body = bincode(`Snapshot`). A new snapshot is written to
//! `snapshot.tmp`, synced, renamed over `snapshot`, then the directory is synced: after a
//! crash either the old or the new snapshot is there, whole. A leftover `snapshot.tmp` is
//! removed on open.

use crate::raft::Snapshot;

use super::disk::Disk;
use super::StorageError;

pub const SNAPSHOT_FILE: &str = "snapshot";
pub const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
const MAGIC: &[u8; 8] = b"QKVSNAP1";
const HEADER_BYTES: usize = 20;
/// Decoding bound for the snapshot body (the state machine image dominates it).
const MAX_SNAPSHOT_BODY_BYTES: usize = 1 << 31;

fn codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_SNAPSHOT_BODY_BYTES>()
}

pub fn write(disk: &dyn Disk, snapshot: &Snapshot) -> Result<(), StorageError> {
    let body = bincode::serde::encode_to_vec(snapshot, codec()).map_err(|e| {
        StorageError::io(
            SNAPSHOT_TMP_FILE,
            "encode",
            std::io::Error::other(e.to_string()),
        )
    })?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);

    replace_file(disk, SNAPSHOT_TMP_FILE, SNAPSHOT_FILE, &bytes)
}

/// Replaces `name` with `bytes` atomically: written to `tmp`, synced, renamed over `name`,
/// directory synced. After a crash `name` holds the old bytes or the new ones.
pub(crate) fn replace_file(
    disk: &dyn Disk,
    tmp: &str,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let mut file = disk
        .open(tmp)
        .map_err(|e| StorageError::io(tmp, "open", e))?;
    file.set_len(0)
        .map_err(|e| StorageError::io(tmp, "truncate", e))?;
    file.write_at(0, bytes)
        .map_err(|e| StorageError::io(tmp, "write", e))?;
    file.sync().map_err(|e| StorageError::io(tmp, "sync", e))?;
    drop(file);
    disk.rename(tmp, name)
        .map_err(|e| StorageError::io(tmp, "rename", e))?;
    disk.sync_dir()
        .map_err(|e| StorageError::io(name, "sync_dir", e))
}

/// Reads the snapshot, if any. Damage is an error naming the file and offset.
pub fn read(disk: &dyn Disk) -> Result<Option<Snapshot>, StorageError> {
    let name = SNAPSHOT_FILE;
    if !disk
        .exists(name)
        .map_err(|e| StorageError::io(name, "stat", e))?
    {
        return Ok(None);
    }
    let bytes = read_all(disk, name)?;
    if bytes.len() < HEADER_BYTES {
        return Err(StorageError::corrupt(
            name,
            0,
            "shorter than the snapshot header",
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(StorageError::corrupt(name, 0, "bad magic"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    let body = &bytes[HEADER_BYTES..];
    if body.len() as u64 != len {
        let reason = format!("header says {len} body bytes, file holds {}", body.len());
        return Err(StorageError::corrupt(name, 8, reason));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[16..20]);
    if crc32fast::hash(body) != u32::from_le_bytes(crc) {
        return Err(StorageError::corrupt(
            name,
            HEADER_BYTES as u64,
            "body checksum mismatch",
        ));
    }
    let snapshot: Snapshot = crate::bounded_decode::decode_exact_within(
        body,
        "MAX_SNAPSHOT_BODY_BYTES",
        MAX_SNAPSHOT_BODY_BYTES,
    )
    .map_err(|e| StorageError::corrupt(name, HEADER_BYTES as u64, format!("body: {e}")))?;
    Ok(Some(snapshot))
}

/// Reads a whole file into memory.
pub fn read_all(disk: &dyn Disk, name: &str) -> Result<Vec<u8>, StorageError> {
    let file = disk
        .open(name)
        .map_err(|e| StorageError::io(name, "open", e))?;
    let len = file.len().map_err(|e| StorageError::io(name, "stat", e))?;
    let len = usize::try_from(len).map_err(|_| StorageError::corrupt(name, 0, "file too large"))?;
    let mut bytes = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file
            .read_at(filled as u64, &mut bytes[filled..])
            .map_err(|e| StorageError::io(name, "read", e))?;
        if n == 0 {
            return Err(StorageError::corrupt(
                name,
                filled as u64,
                "file shrank while reading",
            ));
        }
        filled += n;
    }
    Ok(bytes)
}
