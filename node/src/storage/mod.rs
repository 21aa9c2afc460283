//! Persistence: the `Disk` trait (the only door to durable bytes), its implementations, and
//! the node's stores built on it.
//!
//! - `disk`: the contract every disk implementation honours (what is durable when);
//! - `FileDisk`: real files in one directory, fsync'd (production);
//! - `CrashDisk` (test and simulation builds only): in memory, keeps durable and pending bytes
//!   apart and drops or tears the pending part on a simulated crash, deterministically;
//! - `Wal`: the node's one write-ahead log, shared by every Raft group: one write and one sync
//!   per event-loop turn for all of them, segments deleted once no group needs them;
//! - `NodeStorage`: the Raft log (in the WAL), hard state (in the WAL) and snapshot (a file of
//!   its own) of one Raft replica. File formats and recovery rules: docs/STORAGE.md;
//! - `GroupDisk`: one group's own files (prefix `g<group>.`: its snapshot) inside the node's
//!   shared disk; plus crash-safe group destruction and the node marker.
mod disk;
mod file_disk;
mod group_disk;
mod node_storage;
mod record;
mod redb_backend;
mod snapshot;
mod wal;

#[cfg(any(test, madsim))]
mod crash_disk;

#[cfg(test)]
mod tests;

#[cfg(any(test, madsim))]
pub use crash_disk::{CrashDisk, CrashMode};
pub use disk::{Disk, DiskFile};
pub use file_disk::FileDisk;
pub use group_disk::{
    begin_destroy_group, destroy_group, finish_destroy_group, hosted_groups, read_node_marker,
    write_node_marker, GroupDisk, NodeMarker, NODE_MARKER_FILE,
};
pub use node_storage::{NodeStorage, Recovered, StorageOptions};
pub use redb_backend::DiskBackend;
pub use snapshot::SNAPSHOT_FILE;
pub use wal::{remove_segments, Wal, FORMAT_FILE, FORMAT_VERSION};

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {file}: {source}")]
    Io {
        file: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Damaged durable data: the node must not start on it (repair or re-seed the replica).
    #[error("corrupt {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// The data directory was written in a format this version does not read; says what to do.
    #[error("unsupported data directory: {0}")]
    UnsupportedFormat(String),
    #[error("invalid storage options: {0}")]
    InvalidOptions(&'static str),
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("record of {len_bytes} bytes exceeds max_record_bytes {max_bytes}")]
    RecordTooLarge { len_bytes: usize, max_bytes: usize },
    /// An earlier write or sync failed: what reached the disk is unknown (a failed fsync may
    /// have dropped dirty pages), so the store refuses further work until it is reopened.
    #[error("storage failed earlier and must be reopened: {0}")]
    Poisoned(String),
}

impl StorageError {
    pub(crate) fn io(file: &str, op: &'static str, source: io::Error) -> StorageError {
        StorageError::Io {
            file: file.to_string(),
            op,
            source,
        }
    }

    pub(crate) fn corrupt(file: &str, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            file: file.to_string(),
            offset,
            reason: reason.into(),
        }
    }
}
