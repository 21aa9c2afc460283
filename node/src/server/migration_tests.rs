//! Upgrading a data directory written by the previous storage layout (v2: the node's WAL plus,
//! per shard, a Raft snapshot holding the whole state machine as one bincode image): on start
//! the image is loaded into the shard's new engine file once and checkpointed; a directory the
//! upgrade cannot trust is refused with a message that says what to do.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::event_loop::open_group;
use super::group::{GroupMachine, ENGINE_FILE};
use crate::config::ServerConfig;
use crate::kv::{Command, Engine, KvConfig, Operation, StateMachine};
use crate::meta::GroupId;
use crate::raft::{Membership, Snapshot, SnapshotMeta};
use crate::storage::{CrashDisk, CrashMode, Disk, GroupDisk, NodeStorage, StorageOptions, Wal};

const GROUP: GroupId = 5;
const SNAPSHOT_INDEX: u64 = 40;

fn membership() -> Membership {
    Membership {
        voters: BTreeSet::from([1, 2, 3]),
        learners: BTreeSet::new(),
    }
}

/// The state machine an older build held in memory, with one key per applied entry.
fn old_machine() -> StateMachine {
    let mut machine = StateMachine::new(KvConfig::default()).expect("state machine");
    for i in 1..=SNAPSHOT_INDEX {
        let command = Command {
            client_id: 9,
            seq: i,
            op: Operation::Put {
                key: format!("key-{i:03}").into_bytes(),
                value: vec![i as u8; 30],
            },
        };
        machine.apply(i, &command).expect("apply");
    }
    machine
}

/// A v2 data directory: the WAL and the group's snapshot file holding the legacy image.
fn v2_directory(machine: &StateMachine) -> CrashDisk {
    let disk = CrashDisk::new(11);
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let wal = Wal::open(shared.clone(), StorageOptions::default()).expect("open the WAL");
    let group_disk: Arc<dyn Disk> = Arc::new(GroupDisk::new(shared, GROUP));
    let (mut storage, _) = NodeStorage::open(&wal, group_disk, GROUP).expect("group storage");
    let snapshot = Snapshot {
        meta: SnapshotMeta {
            index: SNAPSHOT_INDEX,
            term: 2,
            membership: membership(),
        },
        data: machine.legacy_image(),
    };
    storage.save_snapshot(&snapshot).expect("save the snapshot");
    disk
}

fn start(disk: &CrashDisk) -> Result<super::group::Group, super::ServerError> {
    let shared: Arc<dyn Disk> = Arc::new(disk.clone());
    let wal = Wal::open(shared.clone(), StorageOptions::default()).expect("open the WAL");
    let config = ServerConfig {
        node_id: 1,
        ..ServerConfig::default()
    };
    open_group(
        GROUP,
        &shared,
        &wal,
        &config,
        &KvConfig::default(),
        membership(),
        0,
    )
}

fn kv(group: &super::group::Group) -> &StateMachine {
    match &group.machine {
        GroupMachine::Kv(m) => m,
        GroupMachine::Meta(_) => panic!("a shard group"),
    }
}

#[test]
fn a_v2_snapshot_is_upgraded_into_the_engine_on_start_and_survives_a_crash() {
    let old = old_machine();
    let disk = v2_directory(&old);
    let engine_file = format!("g{GROUP}.{ENGINE_FILE}");
    assert!(
        disk.contents(&engine_file).is_none(),
        "v2 has no engine file"
    );
    {
        let group = start(&disk).expect("the upgrade");
        assert_eq!(*kv(&group), old);
        assert_eq!(kv(&group).stored_bytes(), old.stored_bytes());
    }
    // The upgrade was a durable checkpoint: a power loss right after it loses nothing, and the
    // next start opens the engine (the legacy snapshot is not loaded twice).
    disk.crash(CrashMode::Drop);
    assert!(disk.contents(&engine_file).is_some());
    let group = start(&disk).expect("the second start");
    assert_eq!(*kv(&group), old);
}

#[test]
fn a_v2_snapshot_next_to_a_partial_engine_file_is_refused_with_what_to_do() {
    let old = old_machine();
    let disk = v2_directory(&old);
    // An engine file behind the legacy snapshot (as if an upgrade was cut short and something
    // else had committed to the file): the upgrade must not guess.
    {
        let shared: Arc<dyn Disk> = Arc::new(GroupDisk::new(Arc::new(disk.clone()), GROUP));
        let engine = Engine::open(&shared, ENGINE_FILE, 1 << 20).expect("engine");
        let mut partial = StateMachine::open(KvConfig::default(), engine).expect("machine");
        partial.skip(3).expect("skip");
        partial.commit(true).expect("checkpoint");
    }
    let err = start(&disk).err().expect("refused").to_string();
    assert!(err.contains("legacy snapshot"), "{err}");
    assert!(
        err.contains(&format!("remove g{GROUP}.{ENGINE_FILE}")),
        "{err}"
    );
}
