//! End-to-end online backup and restore: real `quorumkv server` processes on 127.0.0.1 (a
//! Drop guard kills them), the `quorumkv backup`, `backup verify` and `restore` commands.
//!
//! Writes, backs up while writers keep writing, writes more, restores into a fresh cluster
//! with another shard count: every key acknowledged before the backup began is there with its
//! value, nothing written after the backup finished is. Damaged backups (a flipped byte, a
//! truncated file, no manifest) are refused by `backup verify` and `restore`, naming the file.
#![cfg(not(madsim))]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{output_text as text, quorumkv, EnvCluster};
use node::client::Client;
use node::kv::KeyRange;

const PRE_KEYS: usize = 400;

fn value_of(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(i % 300)).into_bytes()
}

async fn all_keys(client: &mut Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    let (items, more) = client
        .scan(
            KeyRange::Between {
                start: Vec::new(),
                end: None,
            },
            10_000,
        )
        .await
        .expect("scan");
    assert!(!more, "test data fits one scan");
    items.into_iter().map(|i| (i.key, i.value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_writing_then_restore_into_a_fresh_cluster() {
    let source = EnvCluster::start_ready("source", 3, 4);
    let mut writer = source.client();
    for i in 0..PRE_KEYS {
        writer
            .put(format!("pre-{i:04}").as_bytes(), &value_of(i))
            .await
            .expect("put before the backup");
    }
    // Writers keep writing while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = Vec::new();
    for w in 0..2 {
        let (stop, mut client) = (stop.clone(), source.client());
        background.push(tokio::spawn(async move {
            let mut written = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("during-{w}-{written:05}");
                client
                    .put(key.as_bytes(), b"during")
                    .await
                    .expect("put during");
                written += 1;
            }
            written
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dir = source.dir().join("backup-1");
    let out = {
        let (endpoints, dir) = (source.endpoints(), dir.clone());
        tokio::task::spawn_blocking(move || {
            quorumkv(&[
                "backup",
                "--out",
                dir.to_str().expect("utf-8 path"),
                "--endpoints",
                &endpoints,
                "--chunk-bytes",
                "20000",
            ])
        })
        .await
        .expect("backup process")
    };
    stop.store(true, Ordering::Relaxed);
    let mut during = 0;
    for task in background {
        during += task.await.expect("writer");
    }
    assert_eq!(out.status.code(), Some(0), "backup: {}", text(&out));
    assert!(during > 0, "writers ran during the backup");
    for i in 0..100 {
        writer
            .put(format!("post-{i:04}").as_bytes(), b"after")
            .await
            .expect("put after the backup");
    }

    let verified = quorumkv(&["backup", "verify", dir.to_str().expect("utf-8")]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "verify: {}",
        text(&verified)
    );

    // A fresh cluster with another shard count.
    let target = EnvCluster::start_ready("target", 3, 2);
    let out = quorumkv(&[
        "restore",
        "--from",
        dir.to_str().expect("utf-8"),
        "--endpoints",
        &target.endpoints(),
    ]);
    assert_eq!(out.status.code(), Some(0), "restore: {}", text(&out));
    let restored = all_keys(&mut target.client()).await;
    let map: std::collections::BTreeMap<_, _> = restored.iter().cloned().collect();
    for i in 0..PRE_KEYS {
        let key = format!("pre-{i:04}").into_bytes();
        assert_eq!(map.get(&key), Some(&value_of(i)), "key pre-{i:04}");
    }
    assert!(
        !map.keys().any(|k| k.starts_with(b"post-")),
        "nothing written after the backup"
    );
    assert!(map
        .keys()
        .all(|k| k.starts_with(b"pre-") || k.starts_with(b"during-")));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let backed_up: u64 = manifest["shard_files"]
        .as_array()
        .expect("shard files")
        .iter()
        .map(|s| s["keys"].as_u64().expect("keys"))
        .sum();
    assert_eq!(
        restored.len() as u64,
        backed_up,
        "every backed-up key restored"
    );

    // The target now holds data: a second restore is refused.
    let again = quorumkv(&[
        "restore",
        "--from",
        dir.to_str().expect("utf-8"),
        "--endpoints",
        &target.endpoints(),
    ]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    damaged_backups_are_refused(&dir, &target.endpoints());
}

fn damaged_backups_are_refused(good: &Path, endpoints: &str) {
    let damaged = good.with_file_name("backup-damaged");
    let copy = |from: &Path, to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    };
    let file = damaged.join("shard-0001.qkvb");
    let expect_refused = |what: &str, needle: &str| {
        let verify = quorumkv(&["backup", "verify", damaged.to_str().expect("utf-8")]);
        assert_eq!(verify.status.code(), Some(1), "{what}: {}", text(&verify));
        assert!(text(&verify).contains(needle), "{what}: {}", text(&verify));
        let restore = quorumkv(&[
            "restore",
            "--force",
            "--from",
            damaged.to_str().expect("utf-8"),
            "--endpoints",
            endpoints,
        ]);
        assert_eq!(restore.status.code(), Some(1), "{what}: {}", text(&restore));
        assert!(
            text(&restore).contains("refusing to restore"),
            "{}",
            text(&restore)
        );
        assert!(
            text(&restore).contains(needle),
            "{what}: {}",
            text(&restore)
        );
    };

    copy(good, &damaged);
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).expect("write");
    expect_refused("a flipped byte", "shard-0001.qkvb: at byte");

    copy(good, &damaged);
    let bytes = std::fs::read(&file).expect("read");
    std::fs::write(&file, &bytes[..bytes.len() - 7]).expect("truncate");
    expect_refused("a truncated file", "truncated");

    copy(good, &damaged);
    std::fs::remove_file(damaged.join("manifest.json")).expect("remove manifest");
    expect_refused("no manifest", "not a complete backup directory");
}
