//! Many Raft groups on one disk: every group's own files (its snapshot) live in the node's one
//! directory under the prefix `g<group>.`; its log records and hard state live in the node's
//! shared write-ahead log (`Wal`), tagged with the group.
//!
//! Invariants:
//! - a `GroupDisk` only ever sees and touches names with its own prefix; `g1.` never matches
//!   `g10.` because the prefix ends with the dot;
//! - only canonical prefixes (`g0.`, `g17.`, never `g017.`) name a group: anything else on the
//!   disk (the node marker, files of older layouts) is not a group and is left alone;
//! - a group is destroyed crash-safely: a synced tombstone `g<group>.destroyed` is made durable
//!   before the group's removal is written to the WAL (synced) and any of its files is removed,
//!   and it is removed only after all of that is durable. After a crash at any point the group
//!   is therefore either whole (no tombstone, nothing removed) or marked for destruction, which
//!   `hosted_groups` finishes before listing groups.
//!
//! The node marker (`node.marker`) records which node owns the disk and whether it was ever
//! created (bootstrapped or joined), so that a restarted node never bootstraps groups again.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::meta::GroupId;
use crate::raft::{LogIndex, NodeId};

use super::disk::{Disk, DiskFile};
use super::record;
use super::snapshot::read_all;
use super::wal::Wal;
use super::StorageError;

/// Suffix (after the group prefix) of the file that marks a group as being destroyed.
const TOMBSTONE: &str = "destroyed";
pub const NODE_MARKER_FILE: &str = "node.marker";
const NODE_MARKER_TMP_FILE: &str = "node.marker.tmp";
/// The marker is a few bytes; anything larger is damage.
const NODE_MARKER_MAX_BYTES: usize = 4096;

fn group_prefix(group: GroupId) -> String {
    format!("g{group}.")
}

/// The group a disk file name belongs to, if it has a canonical `g<digits>.` prefix.
fn group_of_name(name: &str) -> Option<GroupId> {
    let (head, _) = name.strip_prefix('g')?.split_once('.')?;
    let canonical = !head.is_empty()
        && head.bytes().all(|b| b.is_ascii_digit())
        && (head == "0" || !head.starts_with('0'));
    if !canonical {
        return None;
    }
    head.parse().ok()
}

/// A view of one group's files inside a shared Disk: every name gets the prefix "g{group}.".
#[derive(Clone)]
pub struct GroupDisk {
    disk: Arc<dyn Disk>,
    group: GroupId,
    prefix: String,
}

impl std::fmt::Debug for GroupDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupDisk")
            .field("group", &self.group)
            .finish()
    }
}

impl GroupDisk {
    pub fn new(disk: Arc<dyn Disk>, group: GroupId) -> GroupDisk {
        GroupDisk {
            disk,
            group,
            prefix: group_prefix(group),
        }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    fn full(&self, name: &str) -> io::Result<String> {
        if name.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty file name",
            ));
        }
        Ok(format!("{}{name}", self.prefix))
    }
}

impl Disk for GroupDisk {
    fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>> {
        self.disk.open(&self.full(name)?)
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        self.disk.exists(&self.full(name)?)
    }

    /// Only this group's names, prefix stripped (still sorted: they share the prefix).
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .disk
            .list()?
            .into_iter()
            .filter_map(|name| name.strip_prefix(&self.prefix).map(str::to_string))
            .filter(|name| !name.is_empty())
            .collect())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.disk.remove(&self.full(name)?)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.disk.rename(&self.full(from)?, &self.full(to)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.disk.sync_dir()
    }
}

/// Groups with records in the WAL or files on the disk, in id order. A group whose destruction
/// was interrupted by a crash is finished off here and not returned.
pub fn hosted_groups(disk: &dyn Disk, wal: &Wal) -> Result<BTreeSet<GroupId>, StorageError> {
    let names = disk.list().map_err(|e| StorageError::io(".", "list", e))?;
    let mut groups: BTreeSet<GroupId> = names.iter().filter_map(|n| group_of_name(n)).collect();
    groups.extend(wal.groups());
    let doomed: Vec<GroupId> = groups
        .iter()
        .copied()
        .filter(|&g| names.contains(&tombstone_name(g)))
        .collect();
    for group in doomed {
        tracing::warn!(group, "finishing the interrupted destruction of a group");
        destroy_group(disk, wal, group)?;
        groups.remove(&group);
    }
    Ok(groups)
}

fn tombstone_name(group: GroupId) -> String {
    format!("{}{TOMBSTONE}", group_prefix(group))
}

/// Crash-safely deletes `group`: `begin_destroy_group`, then `finish_destroy_group`.
///
/// The caller must have dropped the group's `NodeStorage` (its open handles) first. Running it
/// again after a failure or crash is safe: it finishes what is left.
pub fn destroy_group(disk: &dyn Disk, wal: &Wal, group: GroupId) -> Result<(), StorageError> {
    begin_destroy_group(disk, wal, group)?;
    finish_destroy_group(disk, group)
}

/// The decision to delete `group`, made durable: a synced tombstone file "g{group}.destroyed"
/// (dir synced), then the group's removal in the WAL (synced: its records become garbage).
/// From here on a restart finishes the deletion (`hosted_groups`) and never opens the group.
pub fn begin_destroy_group(disk: &dyn Disk, wal: &Wal, group: GroupId) -> Result<(), StorageError> {
    let tombstone = tombstone_name(group);
    let io = |op: &'static str| move |e: io::Error| StorageError::io(&tombstone_name(group), op, e);
    let mut file = disk.open(&tombstone).map_err(io("open"))?;
    file.sync().map_err(io("sync"))?;
    drop(file);
    disk.sync_dir().map_err(io("sync_dir"))?;
    wal.remove_group(group)
}

/// The rest of a deletion `begin_destroy_group` started: the group's files (its engine file
/// may hold gigabytes: unlinking it takes the file system a while, so the server runs this off
/// its event loop), a directory sync, then the tombstone and another directory sync. Until it
/// has finished, nothing of `group` may be created on this disk again.
pub fn finish_destroy_group(disk: &dyn Disk, group: GroupId) -> Result<(), StorageError> {
    let tombstone = tombstone_name(group);
    let io = |op: &'static str| move |e: io::Error| StorageError::io(&tombstone_name(group), op, e);
    let prefix = group_prefix(group);
    let doomed: Vec<String> = disk
        .list()
        .map_err(io("list"))?
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && *n != tombstone)
        .collect();
    for name in &doomed {
        remove_if_present(disk, name).map_err(|e| StorageError::io(name, "remove", e))?;
    }
    // The removals must be durable before the tombstone goes: a file system need not persist
    // directory changes in order.
    disk.sync_dir().map_err(io("sync_dir"))?;
    remove_if_present(disk, &tombstone).map_err(io("remove"))?;
    disk.sync_dir().map_err(io("sync_dir"))?;
    tracing::info!(group, files = doomed.len(), "group destroyed");
    Ok(())
}

fn remove_if_present(disk: &dyn Disk, name: &str) -> io::Result<()> {
    match disk.remove(name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Node-level marker (file "node.marker", one checksummed record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMarker {
    pub node_id: NodeId,
    /// true once this node was created (bootstrap or join): it never bootstraps groups again
    pub initialized: bool,
    /// For each group whose replica this node deleted: the index of the membership that removed
    /// it. A later replica of the group must not vote before it knows a newer membership
    /// (`Raft::set_vote_floor`).
    pub tombstones: std::collections::BTreeMap<GroupId, LogIndex>,
}

fn marker_codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<NODE_MARKER_MAX_BYTES>()
}

/// The marker, or None on a disk that never had one. Damage is an error naming the file.
pub fn read_node_marker(disk: &dyn Disk) -> Result<Option<NodeMarker>, StorageError> {
    let name = NODE_MARKER_FILE;
    if !disk
        .exists(name)
        .map_err(|e| StorageError::io(name, "stat", e))?
    {
        return Ok(None);
    }
    let bytes = read_all(disk, name)?;
    let scanned = record::scan(name, &bytes, false, NODE_MARKER_MAX_BYTES)?;
    let payload = match scanned.records.as_slice() {
        [(_, payload)] => *payload,
        records => {
            let reason = format!("{} records, expected exactly one", records.len());
            return Err(StorageError::corrupt(name, 0, reason));
        }
    };
    let (marker, used): (NodeMarker, usize) =
        bincode::serde::decode_from_slice(payload, marker_codec())
            .map_err(|e| StorageError::corrupt(name, record::HEADER_BYTES as u64, e.to_string()))?;
    if used != payload.len() {
        let offset = (record::HEADER_BYTES + used) as u64;
        return Err(StorageError::corrupt(name, offset, "trailing bytes"));
    }
    Ok(Some(marker))
}

/// Replaces the marker atomically: temp file, sync, rename, sync_dir.
pub fn write_node_marker(disk: &dyn Disk, marker: &NodeMarker) -> Result<(), StorageError> {
    let tmp = NODE_MARKER_TMP_FILE;
    let payload = bincode::serde::encode_to_vec(marker, marker_codec())
        .map_err(|e| StorageError::io(tmp, "encode", io::Error::other(e.to_string())))?;
    let mut bytes = Vec::with_capacity(record::HEADER_BYTES + payload.len());
    record::encode(&payload, &mut bytes);
    super::snapshot::replace_file(disk, tmp, NODE_MARKER_FILE, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_prefixes_name_groups() {
        assert_eq!(group_of_name("g0.snapshot"), Some(0));
        assert_eq!(group_of_name("g17.log-1.seg"), Some(17));
        assert_eq!(group_of_name("g017.snapshot"), None);
        assert_eq!(group_of_name("g.snapshot"), None);
        assert_eq!(group_of_name("g1x.snapshot"), None);
        assert_eq!(group_of_name("g99999999999.snapshot"), None, "beyond u32");
        assert_eq!(group_of_name("node.marker"), None);
        assert_eq!(group_of_name("snapshot"), None);
        assert_eq!(group_of_name("g5"), None);
    }
}
