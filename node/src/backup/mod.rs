//! Backup directories: one logical file per shard (`format.rs`) and `manifest.json`, written
//! last, that names them with their checksums. `quorumkv backup`, `backup verify` and
//! `restore` (the binary) use this module; the server side is `server::backup`.
//!
//! Invariants: a directory without a manifest is not a backup (the manifest is written
//! atomically after every shard file is durable); `verify_dir` reads every byte of every file
//! and checks it against the file's own checksums and against the manifest.

pub mod format;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::format::{read_shard_file, FormatError, ShardFileSummary};
use crate::placement::ShardId;
use crate::raft::LogIndex;

pub const MANIFEST_FILE: &str = "manifest.json";
/// Bump on any incompatible change of the manifest.
pub const MANIFEST_FORMAT: u32 = 1;
/// Largest manifest read (a few hundred bytes per shard).
pub const MANIFEST_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The tool that wrote it (`quorumkv <version>`).
    pub written_by: String,
    /// The cluster's identity as far as quorumkv has one: its members (id and client
    /// address) when the backup began.
    pub members: Vec<ManifestMember>,
    /// The shard map's epoch when the backup began.
    pub map_epoch: u64,
    pub shards: u32,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub shard_files: Vec<ManifestShard>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMember {
    pub id: u64,
    pub client_addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestShard {
    pub shard: ShardId,
    pub file: String,
    /// The shard's applied index at the consistent point the file holds.
    pub applied_index: LogIndex,
    pub keys: u64,
    /// Key plus value bytes.
    pub data_bytes: u64,
    pub file_bytes: u64,
    pub file_crc32: u32,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
}

impl ManifestShard {
    pub fn new(summary: &ShardFileSummary, file: String, started: u64, finished: u64) -> Self {
        ManifestShard {
            shard: summary.shard,
            file,
            applied_index: summary.applied_index,
            keys: summary.keys,
            data_bytes: summary.data_bytes,
            file_bytes: summary.file_bytes,
            file_crc32: summary.file_crc32,
            started_unix_ms: started,
            finished_unix_ms: finished,
        }
    }
}

/// The file name of a shard's backup.
pub fn shard_file_name(shard: ShardId) -> String {
    format!("shard-{shard:04}.qkvb")
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {problem}", path.display())]
    Manifest { path: PathBuf, problem: String },
    #[error(transparent)]
    File(#[from] FormatError),
    #[error("{}: {problem}", path.display())]
    Mismatch { path: PathBuf, problem: String },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

/// Writes the manifest atomically: a temporary file, fsynced, renamed into place, directory
/// fsynced.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let io = |what: String| move |error| BackupError::Io { what, error };
    let temporary = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let path = dir.join(MANIFEST_FILE);
    let text = serde_json::to_vec_pretty(manifest).expect("a manifest always serializes");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)
            .map_err(io(format!("create {}", temporary.display())))?;
        file.write_all(&text)
            .map_err(io(format!("write {}", temporary.display())))?;
        file.sync_all()
            .map_err(io(format!("fsync {}", temporary.display())))?;
    }
    std::fs::rename(&temporary, &path).map_err(io(format!("rename to {}", path.display())))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|error| BackupError::Io {
            what: format!("fsync directory {}", dir.display()),
            error,
        })
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let problem = |problem: String| BackupError::Manifest {
        path: path.clone(),
        problem,
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| {
            problem(format!(
                "cannot read ({e}): not a complete backup directory"
            ))
        })?
        .len();
    if len > MANIFEST_BYTES_MAX {
        return Err(problem(format!("{len} bytes is too long")));
    }
    let text = std::fs::read(&path).map_err(|e| problem(format!("cannot read: {e}")))?;
    parse_manifest(&path, &text)
}

/// Checks and decodes a manifest's bytes (`path` names it in errors).
pub fn parse_manifest(path: &Path, text: &[u8]) -> Result<Manifest, BackupError> {
    let problem = |problem: String| BackupError::Manifest {
        path: path.to_path_buf(),
        problem,
    };
    if text.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(problem(format!("{} bytes is too long", text.len())));
    }
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| problem(format!("not valid JSON: {e}")))?;
    let format = value.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(MANIFEST_FORMAT)) {
        return Err(problem(format!(
            "manifest format {format:?}, this build reads only format {MANIFEST_FORMAT}"
        )));
    }
    let manifest: Manifest =
        serde_json::from_value(value).map_err(|e| problem(format!("malformed: {e}")))?;
    // Compared without building the expected list: `shards` comes from the file, and a
    // manifest claiming 4 billion shards made that list 16 GiB.
    let listed: Vec<ShardId> = manifest.shard_files.iter().map(|s| s.shard).collect();
    if !listed.iter().copied().eq(0..manifest.shards) {
        return Err(problem(format!(
            "lists shards {listed:?}, expected 0..{} in order",
            manifest.shards
        )));
    }
    Ok(manifest)
}

/// Checks one shard file completely against its manifest entry, handing each record to
/// `visit`.
pub fn read_checked(
    dir: &Path,
    entry: &ManifestShard,
    visit: impl FnMut(crate::client::protocol::BackupItem) -> std::io::Result<()>,
) -> Result<ShardFileSummary, BackupError> {
    if entry.file.contains('/') || entry.file.contains('\\') || entry.file.starts_with('.') {
        return Err(BackupError::Manifest {
            path: dir.join(MANIFEST_FILE),
            problem: format!("file name {:?} is not a plain name", entry.file),
        });
    }
    let path = dir.join(&entry.file);
    let summary = read_shard_file(&path, visit)?;
    let found = (
        summary.shard,
        summary.applied_index,
        summary.keys,
        summary.data_bytes,
        summary.file_bytes,
        summary.file_crc32,
    );
    let expected = (
        entry.shard,
        entry.applied_index,
        entry.keys,
        entry.data_bytes,
        entry.file_bytes,
        entry.file_crc32,
    );
    if found != expected {
        return Err(BackupError::Mismatch {
            path,
            problem: format!(
                "file holds (shard, applied index, keys, bytes, file bytes, crc32) = {found:?}, \
                 the manifest says {expected:?}"
            ),
        });
    }
    Ok(summary)
}

/// Checks the manifest and every shard file; the manifest on success.
pub fn verify_dir(dir: &Path) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(dir)?;
    for entry in &manifest.shard_files {
        read_checked(dir, entry, |_| Ok(()))?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests;
