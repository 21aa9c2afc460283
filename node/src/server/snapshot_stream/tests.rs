//! Streaming between two groups on their own `CrashDisk`s, driven by hand: chunked transfer,
//! lost and resent chunks, a restarted transfer, a corrupt chunk refused without touching
//! the receiver's durable state, a crash right after the swap, and the planted bugs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::bugs::PlantedBugs;
use crate::kv::{encode_command, Command, Operation};
use crate::raft::Membership;
use crate::server::event_loop::open_group;
use crate::storage::{CrashDisk, CrashMode, Disk, StorageOptions, Wal};

const GROUP: GroupId = 3;
const KEYS: u64 = 120;

fn config(node_id: NodeId, bugs: PlantedBugs) -> ServerConfig {
    let mut config = ServerConfig {
        node_id,
        snapshot_chunk_bytes: 700,
        engine_cache_bytes_per_group: 256 * 1024,
        snapshot_chunk_timeout_ticks: 3,
        ..ServerConfig::default()
    };
    config.planted_bugs = bugs;
    config
}

fn membership() -> Membership {
    Membership {
        voters: BTreeSet::from([1, 2]),
        learners: BTreeSet::new(),
    }
}

fn group_on(disk: &CrashDisk, config: &ServerConfig) -> Group {
    group_on_disk(Arc::new(disk.clone()), config)
}

fn group_on_disk(disk: Arc<dyn Disk>, config: &ServerConfig) -> Group {
    let wal = Wal::open(disk.clone(), StorageOptions::default()).expect("open the WAL");
    open_group(
        GROUP,
        &disk,
        &wal,
        config,
        &KvConfig::default(),
        membership(),
        0,
    )
    .expect("open group")
}

/// A sender whose engine holds `KEYS` keys (and one session per client), checkpointed.
fn filled_sender(config: &ServerConfig) -> Group {
    let mut group = group_on(&CrashDisk::new(1), config);
    let GroupMachine::Kv(machine) = &mut group.machine else {
        panic!("a shard group");
    };
    for i in 1..=KEYS {
        let command = Command {
            client_id: i % 3 + 1,
            seq: i / 3 + 1,
            op: Operation::Put {
                key: format!("key-{i:04}").into_bytes(),
                value: vec![i as u8; 40],
            },
        };
        assert!(!encode_command(&command).unwrap().is_empty());
        machine.apply(i, &command).unwrap();
    }
    machine.commit(true).unwrap();
    group
}

fn meta(index: LogIndex) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 1,
        membership: membership(),
    }
}

fn contents(group: &Group) -> Vec<(Vec<u8>, crate::kv::Versioned)> {
    group.kv().unwrap().contents().unwrap()
}

fn chunk_of(message: PeerMessage) -> SnapshotChunk {
    match message {
        PeerMessage::SnapshotChunk(c) => c,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

fn ack_parts(message: &PeerMessage) -> (u64, u64, bool) {
    match message {
        PeerMessage::SnapshotAck {
            transfer,
            seq,
            accepted,
            ..
        } => (*transfer, *seq, *accepted),
        other => panic!("expected an ack, got {other:?}"),
    }
}

struct Pair {
    sender: Group,
    receiver: Group,
    receiver_disk: CrashDisk,
    out: Streams,
    inc: Streams,
    send_config: ServerConfig,
    recv_config: ServerConfig,
}

impl Pair {
    fn new(bugs: PlantedBugs) -> Pair {
        let send_config = config(1, bugs);
        let recv_config = config(2, PlantedBugs::default());
        let receiver_disk = CrashDisk::new(2);
        Pair {
            sender: filled_sender(&send_config),
            receiver: group_on(&receiver_disk, &recv_config),
            receiver_disk,
            out: Streams::default(),
            inc: Streams::default(),
            send_config,
            recv_config,
        }
    }

    fn start(&mut self) -> SnapshotChunk {
        let view = self.sender.kv().unwrap().engine().read_view().unwrap();
        let first = self
            .out
            .start_with(1, &self.sender, 2, view, meta(KEYS), &self.send_config, 0)
            .unwrap();
        chunk_of(first)
    }

    /// Delivers `chunk`, then its ack; returns the next chunk or the final InstallSnapshot.
    fn deliver(&mut self, chunk: SnapshotChunk) -> (Option<SnapshotChunk>, Option<Message>, bool) {
        let (ack, step) = self
            .inc
            .on_chunk(
                &mut self.receiver,
                chunk,
                &self.recv_config,
                &KvConfig::default(),
            )
            .unwrap();
        let (transfer, seq, accepted) = ack_parts(&ack);
        let next = self
            .out
            .on_ack(1, GROUP, 2, transfer, seq, accepted, &self.send_config, 0);
        (next.map(chunk_of), step, accepted)
    }

    /// Runs a transfer to its end; returns the chunks it took and the InstallSnapshot.
    fn run(&mut self, mut chunk: SnapshotChunk) -> (u64, Message) {
        let mut chunks = 1;
        loop {
            let (next, step, accepted) = self.deliver(chunk);
            assert!(accepted, "chunk refused");
            if let Some(step) = step {
                assert!(next.is_none());
                return (chunks, step);
            }
            chunk = next.expect("a next chunk");
            chunks += 1;
        }
    }
}

#[test]
fn a_shard_streams_in_chunks_and_is_swapped_in_whole() {
    let mut pair = Pair::new(PlantedBugs::default());
    let first = pair.start();
    assert!(first.payload.len() <= 2 * 700, "a chunk is bounded");
    let (chunks, step) = pair.run(first);
    assert!(chunks > 5, "{chunks} chunks for {KEYS} keys of 40 bytes");
    assert_eq!(contents(&pair.receiver), contents(&pair.sender));
    assert_eq!(pair.receiver.machine_applied_index(), KEYS);
    assert_eq!(
        pair.receiver.kv().unwrap().session_count(),
        pair.sender.kv().unwrap().session_count()
    );
    match step.body {
        MessageBody::InstallSnapshot { snapshot } => {
            assert_eq!(snapshot.meta, meta(KEYS));
            assert_eq!(super::super::group::parse_token(&snapshot.data), Some(KEYS));
        }
        other => panic!("expected InstallSnapshot, got {other:?}"),
    }
    // The swap was durable: a crash right after it keeps the received engine.
    assert!(!pair.receiver_disk.exists(INCOMING_FILE).unwrap());
    drop(pair.receiver);
    pair.receiver_disk.crash(CrashMode::Drop);
    let reopened = group_on(&pair.receiver_disk, &pair.recv_config);
    assert_eq!(reopened.machine_applied_index(), KEYS);
    assert_eq!(contents(&reopened), contents(&pair.sender));
}

#[test]
fn a_lost_chunk_is_resent_and_a_restarted_transfer_starts_over() {
    let mut pair = Pair::new(PlantedBugs::default());
    let first = pair.start();
    let (second, _, _) = pair.deliver(first);
    let second = second.unwrap();
    // The second chunk is lost: after the timeout the sender resends it.
    let timeout = u64::from(pair.send_config.snapshot_chunk_timeout_ticks);
    let resent = pair.out.on_tick(timeout + 1, &pair.send_config, |_| true);
    assert_eq!(resent.len(), 1);
    let resent = chunk_of(resent.into_iter().next().unwrap());
    assert_eq!(resent, second);
    // Delivered twice (the original arrives late as well): the duplicate is only re-acked.
    let (third, _, _) = pair.deliver(resent);
    let (_, step, accepted) = pair
        .inc
        .on_chunk(
            &mut pair.receiver,
            second,
            &pair.recv_config,
            &KvConfig::default(),
        )
        .map(|(ack, step)| (None::<SnapshotChunk>, step, ack_parts(&ack).2))
        .unwrap();
    assert!(accepted && step.is_none());
    // The sender gives up (e.g. it restarted); a new transfer begins at chunk 0 and the
    // receiver drops the half-written file of the old one.
    drop(third);
    pair.out.forget_group(GROUP);
    let first = pair.start();
    assert_eq!(first.seq, 0);
    let (_, _) = pair.run(first);
    assert_eq!(contents(&pair.receiver), contents(&pair.sender));
}

#[test]
fn a_straggler_of_a_replaced_transfer_does_not_cancel_the_current_one() {
    let mut pair = Pair::new(PlantedBugs::default());
    // A first transfer (say, of a leader since deposed) gets two chunks in...
    let old_first = pair.start();
    let (old_second, _, _) = pair.deliver(old_first);
    let old_second = old_second.unwrap();
    // ...then the new leader starts over at chunk 0, which replaces it.
    pair.out.forget_group(GROUP);
    let view = pair.sender.kv().unwrap().engine().read_view().unwrap();
    let first = chunk_of(
        pair.out
            .start_with(3, &pair.sender, 2, view, meta(KEYS), &pair.send_config, 0)
            .unwrap(),
    );
    assert_ne!(
        (first.from, first.transfer),
        (old_second.from, old_second.transfer)
    );
    let new_transfer = first.transfer;
    let (ack, step) = pair
        .inc
        .on_chunk(
            &mut pair.receiver,
            first,
            &pair.recv_config,
            &KvConfig::default(),
        )
        .unwrap();
    assert!(ack_parts(&ack).2 && step.is_none());
    // The old transfer's next chunk arrives late: refused, and nothing else.
    let (ack, step) = pair
        .inc
        .on_chunk(
            &mut pair.receiver,
            old_second,
            &pair.recv_config,
            &KvConfig::default(),
        )
        .unwrap();
    assert!(!ack_parts(&ack).2 && step.is_none());
    // The new transfer goes on to the end.
    let mut next = pair
        .out
        .on_ack(3, GROUP, 2, new_transfer, 0, true, &pair.send_config, 0)
        .map(chunk_of);
    let mut installed = None;
    while let Some(chunk) = next.take() {
        let (ack, step) = pair
            .inc
            .on_chunk(
                &mut pair.receiver,
                chunk,
                &pair.recv_config,
                &KvConfig::default(),
            )
            .unwrap();
        let (transfer, seq, accepted) = ack_parts(&ack);
        assert!(accepted, "chunk {seq} of the current transfer refused");
        installed = installed.or(step);
        next = pair
            .out
            .on_ack(3, GROUP, 2, transfer, seq, accepted, &pair.send_config, 0)
            .map(chunk_of);
    }
    assert!(installed.is_some(), "the current transfer completed");
    assert_eq!(contents(&pair.receiver), contents(&pair.sender));
}

#[test]
fn a_corrupt_chunk_is_refused_and_touches_no_durable_state() {
    let mut pair = Pair::new(PlantedBugs::default());
    let before = contents(&pair.receiver);
    let first = pair.start();
    let (second, _, _) = pair.deliver(first);
    let mut bad = second.unwrap();
    let last = bad.payload.len() - 1;
    bad.payload[last] ^= 0xff;
    let (next, step, accepted) = pair.deliver(bad);
    assert!(!accepted && next.is_none() && step.is_none());
    // Refused: the incoming file is gone, the engine unchanged, even after a crash.
    assert!(!pair.receiver_disk.exists(INCOMING_FILE).unwrap());
    assert_eq!(pair.receiver.machine_applied_index(), 0);
    assert_eq!(contents(&pair.receiver), before);
    let placeholder = group_on(&CrashDisk::new(9), &pair.recv_config);
    drop(std::mem::replace(&mut pair.receiver, placeholder));
    pair.receiver_disk.crash(CrashMode::Torn);
    pair.receiver = group_on(&pair.receiver_disk, &pair.recv_config);
    assert_eq!(pair.receiver.machine_applied_index(), 0);
    // A later, intact transfer goes through.
    let first = pair.start();
    pair.run(first);
    assert_eq!(contents(&pair.receiver), contents(&pair.sender));
}

#[test]
fn a_chunk_whose_records_lie_is_refused_even_with_a_valid_checksum() {
    let mut pair = Pair::new(PlantedBugs::default());
    let mut first = pair.start();
    // A record past the snapshot index, re-checksummed: caught by the record checks.
    let records = vec![ChunkRecord::Data {
        key: b"k".to_vec(),
        value: [(KEYS + 1).to_le_bytes().to_vec(), b"v".to_vec()].concat(),
    }];
    first.payload = bincode::serde::encode_to_vec(&records, bincode::config::standard()).unwrap();
    first.crc = crc32fast::hash(&first.payload);
    let (_, step, accepted) = pair.deliver(first);
    assert!(!accepted && step.is_none());
    assert_eq!(pair.receiver.machine_applied_index(), 0);
}

#[test]
fn planted_bug_snapshot_chunk_skips_key_loses_keys() {
    let mut pair = Pair::new(PlantedBugs {
        snapshot_chunk_skips_key: true,
        ..Default::default()
    });
    let first = pair.start();
    pair.run(first);
    assert!(contents(&pair.receiver).len() < contents(&pair.sender).len());
}

#[test]
fn malformed_install_snapshots_are_refused_before_the_core_persists_them() {
    let garbage = Snapshot {
        meta: meta(5),
        data: vec![0xde, 0xad],
    };
    let message = |_group, snapshot: &Snapshot| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::InstallSnapshot {
            snapshot: snapshot.clone(),
        },
    };
    assert!(admit(
        crate::meta::META_GROUP,
        &message(crate::meta::META_GROUP, &garbage)
    )
    .is_err());
    // A shard's snapshot never arrives as one message (only as a stream).
    let token = Snapshot {
        meta: meta(5),
        data: checkpoint_token(5),
    };
    assert!(admit(GROUP, &message(GROUP, &token)).is_err());
    let valid_meta = Snapshot {
        meta: meta(5),
        data: crate::meta::MetaState::uninitialized().snapshot(),
    };
    assert!(admit(
        crate::meta::META_GROUP,
        &message(crate::meta::META_GROUP, &valid_meta)
    )
    .is_ok());
}

/// A disk on which renaming a received engine into place fails while `fail` is set;
/// everything else goes to `inner`.
struct RenamesFail {
    inner: CrashDisk,
    fail: Arc<AtomicBool>,
}

impl Disk for RenamesFail {
    fn open(&self, name: &str) -> std::io::Result<Box<dyn crate::storage::DiskFile>> {
        self.inner.open(name)
    }
    fn exists(&self, name: &str) -> std::io::Result<bool> {
        self.inner.exists(name)
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        let swap = from.ends_with(INCOMING_FILE) && to.ends_with(ENGINE_FILE);
        if swap && self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected rename failure"));
        }
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
}

/// Applies entry `index`, a put of key `own-<index>`, to `group`'s engine and commits it durably.
fn put_own_key(group: &mut Group, index: LogIndex) {
    let GroupMachine::Kv(machine) = &mut group.machine else {
        panic!("a shard group");
    };
    let command = Command {
        client_id: 9,
        seq: index,
        op: Operation::Put {
            key: format!("own-{index}").into_bytes(),
            value: vec![7; 8],
        },
    };
    machine.apply(index, &command).unwrap();
    machine.commit(true).unwrap();
}

/// A received snapshot whose rename into place fails is refused, and the group keeps the
/// engine it had, data and applied index (it used to be left with an empty in-memory
/// placeholder: every later read and apply went to an empty shard). A later transfer goes
/// through.
#[test]
fn a_failed_swap_keeps_the_engine_the_group_had() {
    let mut pair = Pair::new(PlantedBugs::default());
    let fail = Arc::new(AtomicBool::new(false));
    let disk: Arc<dyn Disk> = Arc::new(RenamesFail {
        inner: CrashDisk::new(5),
        fail: Arc::clone(&fail),
    });
    pair.receiver = group_on_disk(disk, &pair.recv_config);
    // The receiver already holds a few keys of its own, applied and committed.
    for i in 1..=5 {
        put_own_key(&mut pair.receiver, i);
    }
    let before = contents(&pair.receiver);
    assert_eq!(before.len(), 5);

    fail.store(true, Ordering::SeqCst);
    let mut chunk = pair.start();
    let mut taken = 0;
    loop {
        let last = chunk.total_crc.is_some();
        let (next, step, accepted) = pair.deliver(chunk);
        if !accepted {
            assert!(next.is_none() && step.is_none());
            assert!(
                last,
                "refused at its last chunk (the rename), after {taken} taken"
            );
            break;
        }
        assert!(
            step.is_none(),
            "the transfer cannot complete without its rename"
        );
        taken += 1;
        chunk = next.expect("a next chunk");
    }
    assert!(taken > 5, "{taken} chunks taken before the last");
    assert_eq!(pair.receiver.machine_applied_index(), 5);
    assert_eq!(contents(&pair.receiver), before);
    // The engine still takes applies and checkpoints.
    put_own_key(&mut pair.receiver, 6);
    assert_eq!(contents(&pair.receiver).len(), 6);

    fail.store(false, Ordering::SeqCst);
    let first = pair.start();
    pair.run(first);
    assert_eq!(pair.receiver.machine_applied_index(), KEYS);
    assert_eq!(contents(&pair.receiver), contents(&pair.sender));
}
