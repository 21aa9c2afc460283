//! One function per decoder that reads untrusted bytes, for the cargo-fuzz targets in `fuzz/`
//! and for `tests/fuzz_regressions.rs`, which replays every seed and every past crash input
//! through the same functions in the normal `cargo test`.
//!
//! The property each one checks is the same: any input gives a value or a clear error; never a
//! panic, never an allocation the input's size does not justify (the fuzzer runs with a
//! memory limit). What a function feeds the decoder is documented on it; where a checksum
//! would stop nearly every input early, the function frames the input with a valid checksum
//! so the decoder behind it is what gets explored.
//!
//! Not part of the supported API (hidden from the docs).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use crate::client::protocol::{ClientFrame, ServerFrame};
use crate::config::ServerConfig;
use crate::kv::{KvConfig, StateMachine};
use crate::meta::MetaState;
use crate::resp::frame::{parse_request, FrameLimits, RequestParser};
use crate::storage::{Disk, DiskFile, NodeStorage, StorageOptions, Wal};
use crate::transport::frame::{decode_payload, parse_header, FRAME_HEADER_BYTES};
use crate::transport::peer::PeerFrame;

/// Largest frame the fuzzed frame decoders accept (the defaults are larger; the fuzzer's
/// inputs are small anyway).
const FUZZ_MAX_FRAME_BYTES: usize = 1 << 20;

/// A peer-port frame: header checks on the first 10 bytes, then the payload (the rest, or the
/// whole input) decoded as a `PeerFrame`.
pub fn peer_frame(data: &[u8]) {
    frame_header(data);
    let _ = decode_payload::<PeerFrame>(data);
    if let Some(payload) = data.get(FRAME_HEADER_BYTES..) {
        let _ = decode_payload::<PeerFrame>(payload);
    }
}

/// A client-port frame both ways (`ClientFrame` requests, `ServerFrame` answers, which the
/// client library reads from whichever node it reached) and a KV or metadata command as read
/// back from a log entry.
pub fn client_frame(data: &[u8]) {
    frame_header(data);
    let _ = decode_payload::<ClientFrame>(data);
    let _ = decode_payload::<ServerFrame>(data);
    let _ = crate::kv::decode_command(data);
    let _ = crate::meta::decode_command(data);
}

fn frame_header(data: &[u8]) {
    if let Some(header) = data.get(..FRAME_HEADER_BYTES) {
        let mut fixed = [0u8; FRAME_HEADER_BYTES];
        fixed.copy_from_slice(header);
        let _ = parse_header(&fixed, FUZZ_MAX_FRAME_BYTES);
    }
}

/// The Redis (RESP) request parser, fed the input as a stream: requests are taken off the
/// front until it wants more bytes or fails. The first byte sets a read size: the same
/// stream fed that many bytes at a time to a resumable `RequestParser` (as a connection
/// does) must give the same requests and the same error.
pub fn resp(data: &[u8]) {
    let limits = FrameLimits {
        max_request_bytes: 64 * 1024,
        max_args: 1024,
    };
    let step = usize::from(data.first().copied().unwrap_or(1).max(1));
    let mut at_once = Vec::new();
    let mut rest = data;
    let end = loop {
        match parse_request(rest, &limits) {
            Ok(Some((args, consumed))) => {
                assert!(
                    consumed > 0 && consumed <= rest.len(),
                    "parser consumed {consumed} of {} bytes",
                    rest.len()
                );
                at_once.push(args);
                rest = &rest[consumed..];
            }
            other => break other.map(|_| ()),
        }
    };
    let mut parser = RequestParser::default();
    let mut in_pieces = Vec::new();
    let (mut start, mut len) = (0, 0);
    let pieces_end = loop {
        match parser.parse(&data[start..start + len], &limits) {
            Ok(Some((args, consumed))) => {
                in_pieces.push(args);
                start += consumed;
                len -= consumed;
            }
            Ok(None) if start + len < data.len() => len = (len + step).min(data.len() - start),
            other => break other.map(|_| ()),
        }
    };
    assert_eq!(
        in_pieces, at_once,
        "requests differ when read {step} bytes at a time"
    );
    assert_eq!(
        pieces_end, end,
        "the end differs when read {step} bytes at a time"
    );
}

/// The config loader: the input up to the first NUL is a TOML file; each line after it is a
/// `QUORUMKV_*=value` variable. Layered and validated as `quorumkv server` does (host names are
/// not looked up: that needs the network).
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (file, env) = text.split_once('\0').unwrap_or((&text, ""));
    let Ok(mut table) = file.parse::<toml::Table>() else {
        return;
    };
    let vars = env.lines().filter_map(|line| {
        line.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
    });
    if crate::config_layers::apply_env(&mut table, vars, &[]).is_err() {
        return;
    }
    if let Ok(config) = ServerConfig::from_table(table) {
        let _ = config.validate();
    }
}

/// The write-ahead log as recovered from disk. First byte 0: the rest is a segment file as
/// is. Otherwise the rest is cut into payloads (each preceded by a 1-byte length) and each is
/// framed as a record with valid checksums, so that the record decoder sees arbitrary
/// `WalRecord`s. Then every group found is opened as a replica would be.
pub fn wal(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let segment = if mode == 0 {
        rest.to_vec()
    } else {
        framed_records(rest)
    };
    let disk = Arc::new(MemDisk::default());
    // A fresh WAL writes the format marker and its first segment; the fuzzer's replaces it.
    let Ok(fresh) = Wal::open(disk.clone(), StorageOptions::default()) else {
        return;
    };
    drop(fresh);
    let Some(name) = disk.names().into_iter().find(|n| n.starts_with("wal-")) else {
        return;
    };
    disk.put(&name, segment);
    let Ok(wal) = Wal::open(disk.clone(), StorageOptions::default()) else {
        return;
    };
    for group in wal.groups() {
        if let Ok((storage, _)) = NodeStorage::open(&wal, disk.clone(), group) {
            let _ = storage.entries(storage.snapshot_index() + 1, storage.last_index() + 1);
        }
    }
}

/// Records with valid checksums around payloads cut from `data` (1-byte length each); the
/// framing is the one `storage/record.rs` documents.
fn framed_records(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = usize::from(len).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        head[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&crc32fast::hash(&head).to_le_bytes());
        out.extend_from_slice(payload);
        data = tail;
    }
    out
}

/// Snapshot data as read from disk and as received from a leader. First byte 0: the rest is
/// the snapshot file as is; 1: the rest is the file's body (bincode `Snapshot`), given a valid
/// header and checksum; otherwise the rest is a state machine image, restored as a KV shard's
/// and as the metadata group's.
pub fn snapshot(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 | 1 => {
            let file = if mode == 0 {
                rest.to_vec()
            } else {
                let mut file = b"QKVSNAP1".to_vec();
                file.extend_from_slice(&(rest.len() as u64).to_le_bytes());
                file.extend_from_slice(&crc32fast::hash(rest).to_le_bytes());
                file.extend_from_slice(rest);
                file
            };
            let disk = Arc::new(MemDisk::default());
            disk.put("snapshot", file);
            if let Ok((storage, recovered)) =
                NodeStorage::open_with(disk.clone(), StorageOptions::default())
            {
                let _ = storage.hard_state();
                let _ = recovered;
                if let Ok(Some(snapshot)) = storage.latest_snapshot() {
                    state_machines(&snapshot.data);
                }
            }
        }
        _ => state_machines(rest),
    }
}

fn state_machines(image: &[u8]) {
    let _ = StateMachine::restore(KvConfig::default(), image);
    let _ = MetaState::restore(image);
}

/// The state images a node decodes: the whole input as a legacy KV shard image (upgraded
/// into an in-memory engine), as the metadata group's state (as in a metadata snapshot from
/// disk or from a peer's InstallSnapshot), and as one stored client session and one stored
/// value (the engine's per-key records, which a received snapshot chunk also carries).
pub fn state_image(data: &[u8]) {
    state_machines(data);
    let _ = crate::kv::engine::decode_session(data);
    let _ = crate::kv::engine::decode_versioned(data);
}

/// A streamed shard snapshot as the receiver takes it in (`server::snapshot_stream`): byte 0
/// is the snapshot's index; byte 1's low bit says whether the whole-stream checksum is the
/// right one (else 0); the rest is cut into chunk payloads, each preceded by a 2-byte (LE)
/// length. Each payload is decoded, its records validated and written into an in-memory
/// engine, then the end-of-stream checks run.
pub fn snapshot_chunk(data: &[u8]) {
    let [index, flags, rest @ ..] = data else {
        return;
    };
    let mut payloads = Vec::new();
    let mut rest = rest;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        payloads.push(payload);
        rest = tail;
    }
    let total_crc = if flags & 1 == 1 {
        let mut hasher = crc32fast::Hasher::new();
        payloads.iter().for_each(|p| hasher.update(p));
        hasher.finalize()
    } else {
        0
    };
    let _ = crate::server::receive_in_memory(
        u64::from(*index),
        &payloads,
        total_crc,
        FUZZ_MAX_FRAME_BYTES,
    );
}

/// The backup reader (`quorumkv backup verify`, `restore`). First byte 0: the rest is a
/// shard file (`backup::format`), read record by record; otherwise the rest is a
/// `manifest.json`.
pub fn backup(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = std::path::Path::new("fuzz-input");
    if mode == 0 {
        let _ = crate::backup::format::read_shard_from(path, rest, |_| Ok(()));
    } else {
        let _ = crate::backup::parse_manifest(path, rest);
    }
}

/// A directory of files in memory: the fuzz targets' disk.
#[derive(Default)]
struct MemDisk {
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemDisk {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn put(&self, name: &str, bytes: Vec<u8>) {
        self.lock().insert(name.to_string(), bytes);
    }
}

struct MemFile {
    files: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    name: String,
}

impl MemFile {
    fn with<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        f(files.entry(self.name.clone()).or_default())
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, name.to_string())
}

impl Disk for MemDisk {
    fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>> {
        self.lock().entry(name.to_string()).or_default();
        Ok(Box::new(MemFile {
            files: self.files.clone(),
            name: name.to_string(),
        }))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.lock().contains_key(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.names())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.lock()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut files = self.lock();
        let bytes = files.remove(from).ok_or_else(|| not_found(from))?;
        files.insert(to.to_string(), bytes);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}

impl DiskFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.with(|b| b.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|bytes| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let n = buf.len().min(bytes.len() - start);
            buf[..n].copy_from_slice(&bytes[start..start + n]);
            Ok(n)
        })
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| not_found(&self.name))?;
        self.with(|bytes| {
            if bytes.len() < start + data.len() {
                bytes.resize(start + data.len(), 0);
            }
            bytes[start..start + data.len()].copy_from_slice(data);
            Ok(())
        })
    }

    fn set_len(&mut self, len_bytes: u64) -> io::Result<()> {
        let len = usize::try_from(len_bytes).map_err(|_| not_found(&self.name))?;
        self.with(|bytes| bytes.resize(len, 0));
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_empty_and_tiny_inputs() {
        for data in [
            &b""[..],
            b"\0",
            b"\x01",
            b"\x02\x00",
            b"*1\r\n$4\r\nPING\r\n",
        ] {
            peer_frame(data);
            client_frame(data);
            resp(data);
            config(data);
            wal(data);
            snapshot(data);
            state_image(data);
            snapshot_chunk(data);
            backup(data);
        }
    }

    fn write_seed(target: &str, name: &str, bytes: &[u8]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds")
            .join(target);
        std::fs::create_dir_all(&dir).expect("create the seed folder");
        std::fs::write(dir.join(name), bytes).expect("write a seed");
    }

    fn chunk_payload(records: &[crate::server::ChunkRecord]) -> Vec<u8> {
        bincode::serde::encode_to_vec(records, bincode::config::standard()).expect("encode")
    }

    /// Seeds for the targets whose inputs need crate-private encoders (the others are written
    /// by `tests/fuzz_regressions.rs`). Run by hand after a format change.
    #[test]
    #[ignore = "writes fuzz/seeds; run by hand after a format change"]
    fn write_private_fuzz_seeds() {
        use crate::kv::{Command, Operation};
        use crate::meta::{Member, MemberState};
        use crate::placement::PlacementConfig;
        use crate::server::ChunkRecord;

        // State images: a metadata state of three members, a legacy KV image, a session.
        let member = |id: u64| Member {
            id,
            peer_addr: ([127, 0, 0, 1], 7000 + id as u16).into(),
            client_addr: ([127, 0, 0, 1], 8000 + id as u16).into(),
            zone: None,
            state: MemberState::Active,
        };
        let placement = PlacementConfig {
            shards: 4,
            replication_factor: 3,
            vnodes_per_node: 4,
            load_factor: 1.25,
        };
        let meta =
            MetaState::bootstrapped(placement, (1..=3).map(member).collect()).expect("bootstrap");
        write_seed("state_image", "meta", &meta.snapshot());
        let mut machine = StateMachine::new(KvConfig::default()).expect("machine");
        let put = |seq, key: &str| Command {
            client_id: 7,
            seq,
            op: Operation::Put {
                key: key.into(),
                value: b"value".to_vec(),
            },
        };
        machine.apply_ok(1, &put(1, "a"));
        machine.apply_ok(2, &put(2, "b"));
        write_seed("state_image", "kv_legacy", &machine.legacy_image());
        let session = crate::kv::sessions::Session {
            last_seq: 2,
            last_response: crate::kv::OpResult::Written { version: 2 },
            last_active_index: 2,
        };
        let session = crate::kv::engine::encode_session(&session);
        write_seed("state_image", "session", &session);

        // A two-chunk transfer of snapshot index 2 with the right whole-stream checksum.
        let first = chunk_payload(&[ChunkRecord::Data {
            key: b"a".to_vec(),
            value: [&2u64.to_le_bytes()[..], b"v"].concat(),
        }]);
        let second = chunk_payload(&[
            ChunkRecord::Session { client: 7, session },
            ChunkRecord::Applied(2),
        ]);
        let mut input = vec![2u8, 1];
        for payload in [&first, &second] {
            input.extend_from_slice(&(payload.len() as u16).to_le_bytes());
            input.extend_from_slice(payload);
        }
        write_seed("snapshot_chunk", "two_chunks", &input);

        // A backup shard file of two keys and its manifest.
        let dir = std::env::temp_dir().join(format!("quorumkv-seeds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join(crate::backup::shard_file_name(0));
        let mut writer =
            crate::backup::format::ShardFileWriter::create(&path, 0, 2).expect("create");
        for key in ["a", "b"] {
            writer
                .push(&crate::client::protocol::BackupItem {
                    key: key.into(),
                    version: 1,
                    value: b"v".to_vec(),
                })
                .expect("push");
        }
        let summary = writer.finish().expect("finish");
        let file = std::fs::read(&path).expect("read the shard file");
        write_seed("backup", "shard_file", &[&[0u8][..], &file].concat());
        let manifest = crate::backup::Manifest {
            format: crate::backup::MANIFEST_FORMAT,
            written_by: "seed".into(),
            members: vec![crate::backup::ManifestMember {
                id: 1,
                client_addr: "127.0.0.1:7379".into(),
            }],
            map_epoch: 1,
            shards: 1,
            started_unix_ms: 1,
            finished_unix_ms: 2,
            shard_files: vec![crate::backup::ManifestShard::new(
                &summary,
                crate::backup::shard_file_name(0),
                1,
                2,
            )],
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest json");
        write_seed("backup", "manifest", &[&[1u8][..], &json].concat());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_transfer_of_valid_chunks_is_taken_in_and_a_bad_checksum_refused() {
        let payload = chunk_payload(&[
            crate::server::ChunkRecord::Data {
                key: b"k".to_vec(),
                value: [&1u64.to_le_bytes()[..], b"v"].concat(),
            },
            crate::server::ChunkRecord::Applied(1),
        ]);
        let crc = crc32fast::hash(&payload);
        let limit = FUZZ_MAX_FRAME_BYTES;
        crate::server::receive_in_memory(1, &[&payload], crc, limit).expect("valid transfer");
        let err = crate::server::receive_in_memory(1, &[&payload], crc ^ 1, limit).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        let err = crate::server::receive_in_memory(0, &[&payload], crc, limit).unwrap_err();
        assert!(err.contains("past the snapshot index"), "{err}");
    }

    #[test]
    fn framed_wal_records_are_read_back() {
        // A record the WAL cannot decode is damage: the open fails with an error, no panic.
        wal(&[1, 3, 1, 2, 3]);
        let framed = framed_records(&[2, 9, 9]);
        assert_eq!(framed.len(), 12 + 2);
    }
}
