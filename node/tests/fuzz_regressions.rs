//! The fuzz targets' inputs, replayed in the normal `cargo test`: every seed of
//! `fuzz/seeds/<target>/` and every input that once made a target fail
//! (`node/tests/fuzz-regressions/<target>/`, one file each, named after what it found). A
//! decoder that panics on any of them fails this test; none may come back.
//!
//! `cargo test -p node --test fuzz_regressions -- --ignored write_fuzz_seeds` rewrites the
//! seeds from real encodings (run it after a format change), and
//! `cargo test -p node --lib -- --ignored write_private_fuzz_seeds` those of `state_image`,
//! `snapshot_chunk` and `backup`, whose encoders are private to the crate.
#![cfg(not(madsim))]

use std::path::{Path, PathBuf};

use node::client::protocol::{ClientFrame, ClientRequest, ClientResponse, ServerFrame};
use node::fuzz_targets;
use node::kv::{Command, KeyRange, OpResult, Operation};
use node::raft::{Entry, EntryPayload, HardState, Message, MessageBody};
use node::storage::{FileDisk, NodeStorage, StorageOptions};
use node::transport::frame::encode_frame;
use node::transport::peer::{PeerFrame, PeerMessage};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 9] = [
    ("peer_frame", fuzz_targets::peer_frame),
    ("client_frame", fuzz_targets::client_frame),
    ("wal", fuzz_targets::wal),
    ("snapshot", fuzz_targets::snapshot),
    ("state_image", fuzz_targets::state_image),
    ("snapshot_chunk", fuzz_targets::snapshot_chunk),
    ("backup", fuzz_targets::backup),
    ("resp", fuzz_targets::resp),
    ("config", fuzz_targets::config),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_and_past_crash_input_decodes_without_panic() {
    for (name, target) in TARGETS {
        let seeds = files(&repo().join("fuzz/seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for fuzz target {name}");
        let crashes = files(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fuzz-regressions")
                .join(name),
        );
        for file in seeds.iter().chain(&crashes) {
            let bytes = std::fs::read(file).expect("read a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(outcome.is_ok(), "{name} panicked on {}", file.display());
        }
    }
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = repo().join("fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create the seed folder");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn heartbeat(term: u64) -> PeerMessage {
    PeerMessage::Raft {
        group: 3,
        message: Message {
            from: 1,
            to: 2,
            term,
            body: MessageBody::Heartbeat {
                commit: 7,
                read_seq: 2,
            },
        },
    }
}

fn put(key: &str, value: &str) -> Command {
    Command {
        client_id: 9,
        seq: 1,
        op: Operation::Put {
            key: key.into(),
            value: value.into(),
        },
    }
}

fn entry(index: u64, command: &Command) -> Entry {
    Entry {
        index,
        term: 1,
        payload: EntryPayload::Command(node::kv::encode_command(command).expect("encode")),
    }
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand after a format change"]
fn write_fuzz_seeds() {
    let max = 1 << 20;
    let frame = |f: &PeerFrame| encode_frame(f, max).expect("encode");
    write(
        "peer_frame",
        "hello",
        &frame(&PeerFrame::Hello { from: 1, to: 2 }),
    );
    write("peer_frame", "ping", &frame(&PeerFrame::Ping));
    let append = PeerMessage::Raft {
        group: 0,
        message: Message {
            from: 1,
            to: 2,
            term: 4,
            body: MessageBody::Append {
                prev_index: 3,
                prev_term: 2,
                entries: vec![entry(4, &put("a", "1"))],
                commit: 3,
            },
        },
    };
    write(
        "peer_frame",
        "messages",
        &frame(&PeerFrame::Messages(vec![heartbeat(4), append])),
    );

    let request = |id, request| encode_frame(&ClientFrame { id, request }, max).expect("encode");
    let execute = |op| ClientRequest::Execute {
        shard: 1,
        command: Command {
            client_id: 5,
            seq: 2,
            op,
        },
    };
    write(
        "client_frame",
        "put",
        &request(
            1,
            execute(Operation::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            }),
        ),
    );
    write(
        "client_frame",
        "scan",
        &request(
            2,
            execute(Operation::Scan {
                range: KeyRange::Prefix(b"user".to_vec()),
                limit: 10,
            }),
        ),
    );
    write("client_frame", "status", &request(3, ClientRequest::Status));
    let answer = ServerFrame {
        id: 1,
        response: ClientResponse::Done(OpResult::Written { version: 3 }),
    };
    write(
        "client_frame",
        "answer",
        &encode_frame(&answer, max).expect("encode"),
    );
    write(
        "client_frame",
        "command",
        &node::kv::encode_command(&put("x", "y")).expect("encode"),
    );

    write(
        "resp",
        "set_get",
        b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
    );
    write("resp", "inline", b"PING\r\nECHO hello\r\n");
    write("resp", "null_array", b"*-1\r\n*1\r\n$-1\r\n");

    write(
        "config",
        "toml_and_env",
        b"node_id = 1\nseed = 7\n[limits]\nmax_value_bytes = 1024\n[[members]]\nid = 1\npeer_addr = \"127.0.0.1:7380\"\nclient_addr = \"127.0.0.1:7379\"\n\0QUORUMKV_TRANSPORT_CONNECT_TIMEOUT_MS=500\nQUORUMKV_MEMBERS=1=127.0.0.1:7380,127.0.0.1:7379\n",
    );
    write("config", "empty_file", b"");

    // The WAL and a snapshot as a node writes them.
    let dir = std::env::temp_dir().join(format!("quorumkv-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let disk = std::sync::Arc::new(FileDisk::open(&dir).expect("open a data dir"));
    let (mut storage, _) =
        NodeStorage::open_with(disk, StorageOptions::default()).expect("open storage");
    let hard_state = HardState {
        term: 1,
        vote: Some(1),
        commit: 2,
    };
    let entries = [entry(1, &put("a", "1")), entry(2, &put("b", "2"))];
    storage
        .persist(Some(&hard_state), &entries, None)
        .expect("persist");
    let snapshot = node::raft::Snapshot {
        meta: node::raft::SnapshotMeta {
            index: 2,
            term: 1,
            membership: Default::default(),
        },
        // A shard's snapshot is a checkpoint token since storage v2: its data stays in the
        // engine (the kv_image seed in fuzz/seeds/snapshot/ holds a legacy in-memory image).
        data: Vec::new(),
    };
    storage.save_snapshot(&snapshot).expect("save a snapshot");
    drop(storage);
    for file in files(&dir) {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let bytes = std::fs::read(&file).expect("read");
        if name.starts_with("wal-") {
            write("wal", "segment", &[&[0u8][..], &bytes].concat());
        } else if name == "snapshot" {
            write("snapshot", "file", &[&[0u8][..], &bytes].concat());
            write("snapshot", "body", &[&[1u8][..], &bytes[20..]].concat());
        }
    }
    write("wal", "framed", &[1, 3, 0, 1, 2]);
    let _ = std::fs::remove_dir_all(&dir);
}
