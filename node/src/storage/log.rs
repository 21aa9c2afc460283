//! The segmented, append-only Raft log file set.
//!
//! The log is a sequence of segment files `log-<seq, 20 digits>.seg`, each a series of framed
//! records (see `record`): log entries, hard states and "clear" markers. Files are only ever
//! appended to; a conflicting suffix is replaced by appending entries with lower indexes (the
//! reader truncates when it meets an index not past its last one), so no synced byte is ever
//! overwritten. Only the newest segment is written; it is rolled once it holds
//! `segment_max_bytes`, and the new segment starts with the current hard state so that
//! whole old segments can be deleted by compaction.
//!
//! Invariant: every segment but the last was fully synced before the next was created, so only
//! the last one may have a torn tail.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::raft::{Entry, HardState, LogIndex};

use super::disk::{Disk, DiskFile};
use super::record;
use super::snapshot::read_all;
use super::StorageError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    Entry(Entry),
    HardState(HardState),
    /// Every entry before this record is void (a snapshot replaced a conflicting log).
    ClearLog,
}

/// A decoded record and where it was read from (for error messages).
pub struct Located {
    pub file: String,
    pub offset: u64,
    pub record: LogRecord,
}

struct Segment {
    seq: u64,
    name: String,
    len_bytes: u64,
    /// Highest entry index written to this segment (0: none).
    max_entry_index: LogIndex,
}

pub struct SegmentLog {
    disk: Arc<dyn Disk>,
    max_record_bytes: usize,
    segments: Vec<Segment>,
    /// Handle on the last segment.
    active: Option<Box<dyn DiskFile>>,
    dir_dirty: bool,
}

const PREFIX: &str = "log-";
const SUFFIX: &str = ".seg";

fn segment_name(seq: u64) -> String {
    format!("{PREFIX}{seq:020}{SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

fn codec() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Decoding is bounded twice: by the record length, and by this allocation limit.
fn decode_codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ 1 << 30 }>()
}

pub fn encode_record(
    record: &LogRecord,
    max_record_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), StorageError> {
    let payload = bincode::serde::encode_to_vec(record, codec())
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

impl SegmentLog {
    /// Opens every segment in order, cuts a torn tail off the last one (durably) and returns
    /// all valid records.
    pub fn open(
        disk: Arc<dyn Disk>,
        max_record_bytes: usize,
    ) -> Result<(SegmentLog, Vec<Located>), StorageError> {
        let names = disk.list().map_err(|e| StorageError::io(".", "list", e))?;
        let mut seqs: Vec<(u64, String)> = names
            .into_iter()
            .filter_map(|n| parse_segment_name(&n).map(|seq| (seq, n)))
            .collect();
        seqs.sort();
        let mut log = SegmentLog {
            disk,
            max_record_bytes,
            segments: Vec::new(),
            active: None,
            dir_dirty: false,
        };
        let mut located = Vec::new();
        let count = seqs.len();
        for (i, (seq, name)) in seqs.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let bytes = read_all(log.disk.as_ref(), &name)?;
            let scanned = record::scan(&name, &bytes, is_last, max_record_bytes)?;
            let mut max_entry_index = 0;
            for (offset, payload) in scanned.records {
                let (rec, used): (LogRecord, usize) =
                    bincode::serde::decode_from_slice(payload, decode_codec())
                        .map_err(|e| StorageError::corrupt(&name, offset, e.to_string()))?;
                if used != payload.len() {
                    return Err(StorageError::corrupt(
                        &name,
                        offset,
                        "trailing bytes in record",
                    ));
                }
                if let LogRecord::Entry(e) = &rec {
                    max_entry_index = max_entry_index.max(e.index);
                }
                located.push(Located {
                    file: name.clone(),
                    offset,
                    record: rec,
                });
            }
            let mut len_bytes = bytes.len() as u64;
            if is_last {
                let mut file = log.open_file(&name)?;
                if scanned.valid_len < len_bytes {
                    file.set_len(scanned.valid_len)
                        .map_err(|e| StorageError::io(&name, "truncate torn tail", e))?;
                    file.sync()
                        .map_err(|e| StorageError::io(&name, "sync", e))?;
                    len_bytes = scanned.valid_len;
                }
                log.active = Some(file);
            }
            log.segments.push(Segment {
                seq,
                name,
                len_bytes,
                max_entry_index,
            });
        }
        Ok((log, located))
    }

    fn open_file(&self, name: &str) -> Result<Box<dyn DiskFile>, StorageError> {
        self.disk
            .open(name)
            .map_err(|e| StorageError::io(name, "open", e))
    }

    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// True when the next write should go to a new segment.
    pub fn needs_roll(&self, segment_max_bytes: u64) -> bool {
        self.segments
            .last()
            .is_none_or(|s| s.len_bytes >= segment_max_bytes)
    }

    /// Starts a new segment (made durable, with its directory entry, by the next `sync`).
    pub fn roll(&mut self) -> Result<(), StorageError> {
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let name = segment_name(seq);
        let mut file = self.open_file(&name)?;
        // A stale file of that name can only be a leftover of a crash: start it empty.
        file.set_len(0)
            .map_err(|e| StorageError::io(&name, "truncate", e))?;
        self.active = Some(file);
        self.segments.push(Segment {
            seq,
            name,
            len_bytes: 0,
            max_entry_index: 0,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Appends already framed records to the last segment.
    pub fn write(&mut self, framed: &[u8], max_entry_index: LogIndex) -> Result<(), StorageError> {
        let (Some(segment), Some(file)) = (self.segments.last_mut(), self.active.as_mut()) else {
            return Err(StorageError::InvalidAppend(
                "write before the first roll".into(),
            ));
        };
        file.write_at(segment.len_bytes, framed)
            .map_err(|e| StorageError::io(&segment.name, "write", e))?;
        segment.len_bytes += framed.len() as u64;
        segment.max_entry_index = segment.max_entry_index.max(max_entry_index);
        Ok(())
    }

    /// The file written to, for a caller that syncs several logs at once (`sync_stores`);
    /// it must call `sync_dir_if_needed` after syncing it.
    pub fn active_file(&mut self) -> Option<&mut dyn DiskFile> {
        match self.active.as_mut() {
            Some(file) => Some(file.as_mut()),
            None => None,
        }
    }

    /// Makes a new segment's directory entry durable (the part of `sync` besides the file).
    pub fn sync_dir_if_needed(&mut self) -> Result<(), StorageError> {
        if self.dir_dirty {
            self.disk
                .sync_dir()
                .map_err(|e| StorageError::io(".", "sync_dir", e))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Makes every write (and a new segment's directory entry) durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let (Some(segment), Some(file)) = (self.segments.last(), self.active.as_mut()) {
            file.sync()
                .map_err(|e| StorageError::io(&segment.name, "sync", e))?;
        }
        if self.dir_dirty {
            self.disk
                .sync_dir()
                .map_err(|e| StorageError::io(".", "sync_dir", e))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Deletes the oldest segments whose entries are all at or below `index` (never the last
    /// segment). Returns how many were deleted.
    pub fn compact(&mut self, index: LogIndex) -> Result<usize, StorageError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].max_entry_index <= index {
            let segment = self.segments.remove(0);
            self.disk
                .remove(&segment.name)
                .map_err(|e| StorageError::io(&segment.name, "remove", e))?;
            removed += 1;
        }
        if removed > 0 {
            self.disk
                .sync_dir()
                .map_err(|e| StorageError::io(".", "sync_dir", e))?;
        }
        Ok(removed)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}
