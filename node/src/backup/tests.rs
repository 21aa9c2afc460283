//! The backup file format and manifest: round trip, and every kind of damage refused with
//! the file and offset named.

use std::path::{Path, PathBuf};

use super::format::{ShardFileWriter, BLOCK_PAYLOAD_BYTES_TARGET, FORMAT_VERSION};
use super::*;
use crate::client::protocol::BackupItem;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qkv-backup-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn items(count: usize, value_bytes: usize) -> Vec<BackupItem> {
    (0..count)
        .map(|i| BackupItem {
            key: format!("key-{i:06}").into_bytes(),
            version: i as u64 + 10,
            value: vec![(i % 251) as u8; value_bytes],
        })
        .collect()
}

/// A two-shard backup directory (shard 0 spans several blocks, shard 1 is empty).
fn write_backup(dir: &Path) -> Vec<BackupItem> {
    let written = items(600, 1000);
    let mut shard_files = Vec::new();
    for (shard, items) in [(0u32, written.as_slice()), (1, &[][..])] {
        let name = shard_file_name(shard);
        let mut w = ShardFileWriter::create(&dir.join(&name), shard, 77 + u64::from(shard))
            .expect("create");
        for item in items {
            w.push(item).expect("push");
        }
        let summary = w.finish().expect("finish");
        shard_files.push(ManifestShard::new(&summary, name, 1, 2));
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        written_by: "test".into(),
        members: vec![ManifestMember {
            id: 1,
            client_addr: "127.0.0.1:1".into(),
        }],
        map_epoch: 3,
        shards: 2,
        started_unix_ms: 1,
        finished_unix_ms: 2,
        shard_files,
    };
    write_manifest(dir, &manifest).expect("manifest");
    written
}

fn verify_error(dir: &Path) -> String {
    verify_dir(dir)
        .expect_err("damage must be found")
        .to_string()
}

#[test]
fn round_trip_keeps_every_record_in_order() {
    let dir = temp_dir("round-trip");
    let written = write_backup(&dir);
    let file_bytes = std::fs::metadata(dir.join(shard_file_name(0)))
        .expect("stat")
        .len();
    assert!(
        file_bytes > 2 * BLOCK_PAYLOAD_BYTES_TARGET as u64,
        "several blocks"
    );
    let manifest = verify_dir(&dir).expect("verify");
    assert_eq!(manifest.shard_files[0].keys, 600);
    assert_eq!(manifest.shard_files[1].keys, 0);
    assert_eq!(manifest.shard_files[0].applied_index, 77);
    let mut read = Vec::new();
    read_checked(&dir, &manifest.shard_files[0], |item| {
        read.push(item);
        Ok(())
    })
    .expect("read");
    assert_eq!(read, written);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn any_flipped_byte_is_found() {
    let dir = temp_dir("flip");
    write_backup(&dir);
    let path = dir.join(shard_file_name(0));
    let pristine = std::fs::read(&path).expect("read");
    // The header, a block header, a record deep in a block, the trailer.
    for offset in [3, 20, 28 + 5, 300_000, pristine.len() - 3] {
        let mut damaged = pristine.clone();
        damaged[offset] ^= 0x40;
        std::fs::write(&path, &damaged).expect("write");
        let error = verify_error(&dir);
        assert!(error.contains("shard-0000.qkvb"), "{offset}: {error}");
    }
    // Deep in a block: the block's checksum, with the block's offset.
    let mut damaged = pristine.clone();
    damaged[300_000] ^= 1;
    std::fs::write(&path, &damaged).expect("write");
    let error = verify_error(&dir);
    assert!(error.contains("block checksum mismatch"), "{error}");
    assert!(error.contains("at byte 262"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncation_missing_manifest_and_wrong_versions_are_refused() {
    let dir = temp_dir("truncated");
    write_backup(&dir);
    let path = dir.join(shard_file_name(0));
    let pristine = std::fs::read(&path).expect("read");
    for len in [10, 1000, pristine.len() - 1] {
        std::fs::write(&path, &pristine[..len]).expect("truncate");
        let error = verify_error(&dir);
        assert!(error.contains("truncated"), "{len}: {error}");
    }
    let mut longer = pristine.clone();
    longer.push(0);
    std::fs::write(&path, &longer).expect("extend");
    assert!(verify_error(&dir).contains("after the trailer"));

    // A file of another format version (its header checksum made valid again).
    let mut other = pristine.clone();
    other[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&other[..24]);
    other[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &other).expect("write");
    let error = verify_error(&dir);
    assert!(error.contains("format version 2"), "{error}");
    std::fs::write(&path, &pristine).expect("restore");
    verify_dir(&dir).expect("pristine again");

    // A manifest of another format, then none at all.
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).expect("manifest");
    std::fs::write(
        &manifest_path,
        text.replace("\"format\": 1", "\"format\": 9"),
    )
    .expect("w");
    assert!(verify_error(&dir).contains("manifest format Some(9)"));
    std::fs::remove_file(&manifest_path).expect("remove");
    assert!(verify_error(&dir).contains("not a complete backup directory"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_disagrees_with_the_manifest_is_refused() {
    let dir = temp_dir("swap");
    write_backup(&dir);
    // Shard 1's file put in shard 0's place: intact by itself, wrong for the manifest.
    std::fs::copy(dir.join(shard_file_name(1)), dir.join(shard_file_name(0))).expect("copy");
    let error = verify_error(&dir);
    assert!(error.contains("the manifest says"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
