//! `quorumkv backup`, `quorumkv backup verify` and `quorumkv restore`.
//!
//! Backup: every shard's view is opened at its leader (a consistent point per shard that
//! holds every write acknowledged before the command began), paged into
//! `DIR/shard-NNNN.qkvb`, and checked against the view's key count and bytes; the manifest
//! is written last, atomically. Restore verifies the whole directory first, refuses a cluster
//! that holds data (unless `--force`), then writes every key with batched `PutMany`s from
//! concurrent clients. The file format is `node::backup`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use node::backup::format::ShardFileWriter;
use node::backup::{
    read_checked, read_manifest, shard_file_name, sync_dir, verify_dir, write_manifest, Manifest,
    ManifestMember, ManifestShard, MANIFEST_FILE, MANIFEST_FORMAT,
};
use node::client::backup::BackupCursor;
use node::client::{Client, ClientError};
use node::kv::{KeyRange, OpResult, Operation};
use node::placement::shard_for_key;
use node::server::backup::BACKUP_CHUNK_BYTES_MAX;
use serde_json::json;
use tokio::sync::{mpsc, Mutex};

use crate::cli::{report, ConnArgs, EXIT_NO, EXIT_OK, EXIT_SERVER, EXIT_USAGE};

/// Times one shard's backup is started again after its view was lost.
const SHARD_ATTEMPTS_MAX: u32 = 5;
/// Key plus value bytes of one restore batch (`PutMany`); halved while the cluster's
/// limits refuse it.
const RESTORE_BATCH_BYTES: usize = 128 * 1024;
/// Tries of one restore batch whose outcome was unknown (rewriting a value is harmless).
const RESTORE_BATCH_TRIES_MAX: u32 = 5;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// Directory to write the backup into (created; must hold no backup yet). With
    /// `--every-s`: the directory of timestamped backups.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Take a backup every this many seconds, in `OUT/backup-<UTC time>/`, until stopped.
    #[arg(long)]
    every_s: Option<u64>,
    /// With `--every-s`: how many complete backups to keep (older ones are deleted).
    #[arg(long, default_value_t = 7)]
    keep: usize,
    /// Shards copied at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Bytes asked for per chunk (the server caps it).
    #[arg(long, default_value_t = BACKUP_CHUNK_BYTES_MAX)]
    chunk_bytes: u64,
    #[command(flatten)]
    conn: ConnArgs,
}

#[derive(Subcommand, Debug)]
enum BackupCommand {
    /// Check a backup directory completely (manifest, every file's checksums, records,
    /// counts): exit 0 when intact, 1 naming the file and byte offset of the damage.
    Verify { dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup directory (as written by `quorumkv backup --out`).
    #[arg(long)]
    from: PathBuf,
    /// Restore even if the target cluster already holds keys (they are overwritten or kept).
    #[arg(long)]
    force: bool,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[command(flatten)]
    conn: ConnArgs,
}

pub async fn run_backup(args: BackupArgs) -> u8 {
    if let Some(BackupCommand::Verify { dir }) = &args.command {
        return verify(dir, args.conn.json);
    }
    let Some(out) = args.out.clone() else {
        eprintln!("error: backup needs --out DIR (or: backup verify DIR)");
        return EXIT_USAGE;
    };
    if args.parallel == 0 {
        eprintln!("error: --parallel must be at least 1");
        return EXIT_USAGE;
    }
    match args.every_s {
        None => match backup_once(&args, &out).await {
            Ok(()) => EXIT_OK,
            Err(code) => code,
        },
        Some(0) => {
            eprintln!("error: --every-s must be at least 1");
            EXIT_USAGE
        }
        Some(every_s) => scheduled(&args, &out, every_s).await,
    }
}

fn verify(dir: &Path, json: bool) -> u8 {
    match verify_dir(dir) {
        Ok(manifest) => {
            let keys: u64 = manifest.shard_files.iter().map(|s| s.keys).sum();
            let bytes: u64 = manifest.shard_files.iter().map(|s| s.data_bytes).sum();
            if json {
                println!(
                    "{}",
                    json!({"ok": true, "shards": manifest.shards, "keys": keys, "data_bytes": bytes})
                );
            } else {
                println!(
                    "{}: intact: {} shards, {keys} keys, {bytes} bytes",
                    dir.display(),
                    manifest.shards
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: backup damaged or incomplete: {e}");
            EXIT_NO
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rate(bytes: u64, keys: u64, elapsed: Duration) -> (f64, f64) {
    let s = elapsed.as_secs_f64().max(1e-9);
    (bytes as f64 / 1e6 / s, keys as f64 / s)
}

async fn backup_once(args: &BackupArgs, out: &Path) -> Result<(), u8> {
    let began = Instant::now();
    let started_unix_ms = unix_ms();
    if out.join(MANIFEST_FILE).exists() {
        eprintln!("error: {} already holds a backup", out.display());
        return Err(EXIT_USAGE);
    }
    std::fs::create_dir_all(out).map_err(|e| {
        eprintln!("error: cannot create {}: {e}", out.display());
        EXIT_SERVER
    })?;
    let mut client = args.conn.client().await.map_err(report)?;
    let view = client.cluster_info().await.map_err(report)?;
    let shards = view.placement.shards;
    let queue = Arc::new(std::sync::Mutex::new((0..shards).rev().collect::<Vec<_>>()));
    let mut tasks: tokio::task::JoinSet<Result<Vec<ManifestShard>, String>> =
        tokio::task::JoinSet::new();
    for _ in 0..args.parallel.min(shards as usize).max(1) {
        let queue = queue.clone();
        let endpoints = args.conn.resolved_endpoints().await.map_err(report)?;
        let options = args.conn.options().map_err(report)?;
        let mut client = Client::new(endpoints, options).map_err(report)?;
        let (out, chunk_bytes) = (out.to_path_buf(), args.chunk_bytes);
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some(shard) = queue.lock().expect("queue lock").pop() else {
                    return Ok(done);
                };
                done.push(backup_shard(&mut client, &out, shard, chunk_bytes).await?);
            }
        });
    }
    let mut shard_files = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(done)) => shard_files.extend(done),
            Ok(Err(message)) => {
                eprintln!("error: {message}");
                return Err(EXIT_NO);
            }
            Err(e) => {
                eprintln!("error: backup task failed: {e}");
                return Err(EXIT_SERVER);
            }
        }
    }
    shard_files.sort_by_key(|s: &ManifestShard| s.shard);
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        written_by: format!("quorumkv {}", env!("CARGO_PKG_VERSION")),
        members: view
            .members
            .iter()
            .map(|m| ManifestMember {
                id: m.id,
                client_addr: m.client_addr.to_string(),
            })
            .collect(),
        map_epoch: view.epoch,
        shards,
        started_unix_ms,
        finished_unix_ms: unix_ms(),
        shard_files,
    };
    sync_dir(out)
        .and_then(|()| write_manifest(out, &manifest))
        .map_err(|e| {
            eprintln!("error: {e}");
            EXIT_SERVER
        })?;
    let keys: u64 = manifest.shard_files.iter().map(|s| s.keys).sum();
    let bytes: u64 = manifest.shard_files.iter().map(|s| s.data_bytes).sum();
    let elapsed = began.elapsed();
    let (mb_s, keys_s) = rate(bytes, keys, elapsed);
    if args.conn.json {
        println!(
            "{}",
            json!({"dir": out.display().to_string(), "shards": shards, "keys": keys,
                   "data_bytes": bytes, "seconds": elapsed.as_secs_f64(),
                   "mb_per_s": mb_s, "keys_per_s": keys_s})
        );
    } else {
        println!(
            "backup {}: {shards} shards, {keys} keys, {bytes} bytes in {:.2} s ({mb_s:.1} MB/s, {keys_s:.0} keys/s)",
            out.display(),
            elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// One shard into its file, started again (a new view) when the view is lost.
async fn backup_shard(
    client: &mut Client,
    out: &Path,
    shard: u32,
    chunk_bytes: u64,
) -> Result<ManifestShard, String> {
    let mut last_error = String::new();
    for attempt in 1..=SHARD_ATTEMPTS_MAX {
        let started = unix_ms();
        let mut cursor = client
            .backup_open(shard)
            .await
            .map_err(|e| format!("shard {shard}: cannot open a backup view: {e}"))?;
        match copy_view(client, &mut cursor, out, chunk_bytes).await {
            Ok(summary) => {
                let _ = client.backup_close(&cursor).await;
                return Ok(ManifestShard::new(
                    &summary,
                    shard_file_name(shard),
                    started,
                    unix_ms(),
                ));
            }
            Err(e) => {
                let _ = client.backup_close(&cursor).await;
                tracing::warn!(shard, attempt, error = %e, "shard backup failed; starting it again");
                last_error = e;
            }
        }
    }
    Err(format!(
        "shard {shard}: gave up after {SHARD_ATTEMPTS_MAX} attempts: {last_error}"
    ))
}

async fn copy_view(
    client: &mut Client,
    cursor: &mut BackupCursor,
    out: &Path,
    chunk_bytes: u64,
) -> Result<node::backup::format::ShardFileSummary, String> {
    let path = out.join(shard_file_name(cursor.shard));
    let io = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut writer =
        ShardFileWriter::create(&path, cursor.shard, cursor.applied_index).map_err(io)?;
    loop {
        let items = client
            .backup_next(cursor, chunk_bytes)
            .await
            .map_err(|e| e.to_string())?;
        if items.is_empty() {
            break;
        }
        for item in &items {
            writer.push(item).map_err(io)?;
        }
    }
    let summary = writer.finish().map_err(io)?;
    if (summary.keys, summary.data_bytes) != (cursor.keys, cursor.stored_bytes) {
        return Err(format!(
            "shard {}: the view announced {} keys of {} bytes, {} keys of {} bytes arrived",
            cursor.shard, cursor.keys, cursor.stored_bytes, summary.keys, summary.data_bytes
        ));
    }
    Ok(summary)
}

/// `--every-s`: a backup per interval in a timestamped directory; keeps the newest `keep`
/// complete ones. A failed run is reported and the schedule goes on.
async fn scheduled(args: &BackupArgs, out: &Path, every_s: u64) -> u8 {
    let mut ticker = tokio::time::interval(Duration::from_secs(every_s));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let dir = out.join(format!("backup-{}", utc_stamp(unix_ms() / 1000)));
        if backup_once(args, &dir).await.is_err() {
            eprintln!(
                "scheduled backup into {} failed; next in {every_s} s",
                dir.display()
            );
        }
        if let Err(e) = prune(out, args.keep.max(1)) {
            eprintln!("error: pruning {}: {e}", out.display());
        }
    }
}

/// Deletes all but the newest `keep` complete backups, and incomplete ones older than the
/// newest complete one (a run that failed).
fn prune(out: &Path, keep: usize) -> std::io::Result<()> {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("backup-"))
        })
        .collect();
    runs.sort();
    let complete: Vec<&PathBuf> = runs.iter().filter(|p| read_manifest(p).is_ok()).collect();
    let Some(newest) = complete.last().copied() else {
        return Ok(());
    };
    let kept: Vec<&PathBuf> = complete.iter().rev().take(keep).copied().collect();
    for run in &runs {
        if !kept.contains(&run) && run < newest {
            tracing::info!(dir = %run.display(), "pruning an old backup");
            std::fs::remove_dir_all(run)?;
        }
    }
    Ok(())
}

/// `YYYYmmddTHHMMSSZ` of a Unix time (civil-from-days, proleptic Gregorian).
fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

type Batch = Vec<(Vec<u8>, Vec<u8>)>;

pub async fn run_restore(args: RestoreArgs) -> u8 {
    let began = Instant::now();
    let manifest = match verify_dir(&args.from) {
        Ok(manifest) => manifest,
        Err(e) => {
            eprintln!("error: refusing to restore: backup damaged or incomplete: {e}");
            return EXIT_NO;
        }
    };
    let verified_s = began.elapsed().as_secs_f64();
    let mut client = match args.conn.client().await {
        Ok(client) => client,
        Err(e) => return report(e),
    };
    let target = match client.cluster_info().await {
        Ok(view) => view,
        Err(e) => return report(e),
    };
    let everything = KeyRange::Between {
        start: Vec::new(),
        end: None,
    };
    match client.scan(everything, 1).await {
        Ok((items, _)) if !items.is_empty() && !args.force => {
            eprintln!(
                "error: the target cluster is not empty (it holds {:?} at least); \
                 restore into a fresh cluster, or pass --force",
                String::from_utf8_lossy(&items[0].key)
            );
            return EXIT_NO;
        }
        Ok(_) => {}
        Err(e) => return report(e),
    }
    let shards = target.placement.shards;
    let parallel = args.parallel.max(1);
    let (tx, rx) = mpsc::channel::<Batch>(2 * parallel);
    let rx = Arc::new(Mutex::new(rx));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let endpoints = match args.conn.resolved_endpoints().await {
            Ok(endpoints) => endpoints,
            Err(e) => return report(e),
        };
        let options = match args.conn.options() {
            Ok(options) => options,
            Err(e) => return report(e),
        };
        let mut client = match Client::new(endpoints, options) {
            Ok(client) => client,
            Err(e) => return report(e),
        };
        let rx = rx.clone();
        writers.spawn(async move {
            loop {
                let Some(batch) = rx.lock().await.recv().await else {
                    return Ok::<(), ClientError>(());
                };
                write_batch(&mut client, batch).await?;
            }
        });
    }
    let dir = args.from.clone();
    let reader = tokio::task::spawn_blocking(move || read_batches(&dir, &manifest, shards, tx));
    let mut failed = None;
    while let Some(joined) = writers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
                writers.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failed.get_or_insert(ClientError::Failed {
                    reason: format!("writer task: {e}"),
                });
            }
        }
    }
    if let Some(e) = failed {
        eprintln!("error: restore stopped; the cluster holds part of the backup");
        return report(e);
    }
    let (keys, bytes) = match reader.await {
        Ok(Ok(totals)) => totals,
        Ok(Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_NO;
        }
        Err(e) => {
            eprintln!("error: reader task: {e}");
            return EXIT_SERVER;
        }
    };
    let elapsed = began.elapsed();
    let (mb_s, keys_s) = rate(bytes, keys, elapsed);
    if args.conn.json {
        println!(
            "{}",
            json!({"keys": keys, "data_bytes": bytes, "seconds": elapsed.as_secs_f64(),
                   "verify_seconds": verified_s, "mb_per_s": mb_s, "keys_per_s": keys_s})
        );
    } else {
        println!(
            "restored {keys} keys, {bytes} bytes in {:.2} s (verify {verified_s:.2} s; {mb_s:.1} MB/s, {keys_s:.0} keys/s)",
            elapsed.as_secs_f64()
        );
    }
    EXIT_OK
}

/// Reads every shard file (verified just before; read_checked checks again) into batches of
/// keys of one target shard. Returns the keys and bytes sent.
fn read_batches(
    dir: &Path,
    manifest: &Manifest,
    shards: u32,
    tx: mpsc::Sender<Batch>,
) -> Result<(u64, u64), String> {
    let mut pending: Vec<(Batch, usize)> = (0..shards).map(|_| (Vec::new(), 0)).collect();
    let (mut keys, mut bytes) = (0u64, 0u64);
    let closed = || std::io::Error::other("the writers stopped");
    for entry in &manifest.shard_files {
        read_checked(dir, entry, |item| {
            keys += 1;
            bytes += (item.key.len() + item.value.len()) as u64;
            let slot = &mut pending[shard_for_key(&item.key, shards) as usize];
            slot.1 += item.key.len() + item.value.len();
            slot.0.push((item.key, item.value));
            if slot.1 >= RESTORE_BATCH_BYTES {
                let batch = std::mem::take(&mut slot.0);
                slot.1 = 0;
                tx.blocking_send(batch).map_err(|_| closed())?;
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    }
    for (batch, _) in pending {
        if !batch.is_empty() {
            tx.blocking_send(batch)
                .map_err(|_| "the writers stopped".to_string())?;
        }
    }
    Ok((keys, bytes))
}

/// Writes one batch (all keys of one shard) with `PutMany`, halving it while the cluster's
/// limits refuse it, retrying an unknown outcome (a restore rewrites the same values).
async fn write_batch(client: &mut Client, batch: Batch) -> Result<(), ClientError> {
    let mut stack = vec![batch];
    while let Some(pairs) = stack.pop() {
        let mut tries = 0;
        loop {
            tries += 1;
            let op = Operation::PutMany {
                pairs: pairs.clone(),
                only_if_all_absent: false,
            };
            match client.execute(op).await {
                Ok(OpResult::Written { .. }) => break,
                Ok(other) => {
                    return Err(ClientError::Failed {
                        reason: format!("restore batch answered {other:?}"),
                    })
                }
                Err(ClientError::TooLarge(_)) if pairs.len() > 1 => {
                    let mut first = pairs;
                    let second = first.split_off(first.len() / 2);
                    stack.push(second);
                    stack.push(first);
                    break;
                }
                Err(ClientError::Unknown { .. } | ClientError::NoQuorum { .. })
                    if tries < RESTORE_BATCH_TRIES_MAX => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_complete_backups_and_a_run_in_progress() {
        let out = std::env::temp_dir().join(format!("qkv-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            written_by: "test".into(),
            members: Vec::new(),
            map_epoch: 1,
            shards: 0,
            started_unix_ms: 0,
            finished_unix_ms: 0,
            shard_files: Vec::new(),
        };
        for (name, complete) in [
            ("backup-1", false),
            ("backup-2", true),
            ("backup-3", true),
            ("backup-4", true),
            ("backup-5", false),
        ] {
            let dir = out.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            if complete {
                write_manifest(&dir, &manifest).expect("manifest");
            }
        }
        std::fs::create_dir_all(out.join("other")).expect("mkdir");
        prune(&out, 2).expect("prune");
        let mut left: Vec<String> = std::fs::read_dir(&out)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["backup-3", "backup-4", "backup-5", "other"]);
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_796_618_024), "20261207T043344Z");
    }
}
