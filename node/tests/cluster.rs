//! End-to-end tests with real `quorumkv server` processes on 127.0.0.1.
//!
//! Each test starts its own cluster on free ports in its own temporary directory; a Drop guard
//! kills every process it started, also when the test panics.
//!
//! The cluster is sharded: a node's top-level status (role, indexes) is its metadata group's
//! (group 0); the keys live in the data groups (shard `s` = group `s + 1`), whose Raft state
//! is in `NodeStatus::groups`. The snapshot tests run with `SNAPSHOT_TEST_SHARDS` shards, so that
//! with 3 nodes and replication factor 3 every node hosts every data group and each group
//! receives enough writes to snapshot.
#![cfg(not(madsim))]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::free_ports;
use node::client::{Client, ClientOptions, NodeStatus};
use node::config::{ClusterConfig, MemberConfig, ServerConfig};
use node::meta::{group_of_shard, GroupId, GroupStatus};
use node::placement::shard_for_key;
use node::raft::{LogIndex, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

/// Shards of the clusters whose tests look at data groups' snapshots.
const SNAPSHOT_TEST_SHARDS: u32 = 2;

struct Cluster {
    dir: PathBuf,
    members: Vec<MemberConfig>,
    children: Vec<Option<Child>>,
    snapshot_interval_entries: u64,
    shards: u32,
}

impl Cluster {
    /// `shards`: the cluster's shard count (`[cluster] shards`), fixed at bootstrap.
    fn start(name: &str, nodes: u64, snapshot_interval_entries: u64, shards: u32) -> Cluster {
        let dir = std::env::temp_dir().join(format!("quorumkv-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let ports = free_ports(2 * nodes as usize);
        let members = (1..=nodes)
            .zip(ports.chunks(2))
            .map(|(id, pair)| MemberConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], pair[0])),
                client_addr: SocketAddr::from(([127, 0, 0, 1], pair[1])),
                zone: None,
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            members,
            children: Vec::new(),
            snapshot_interval_entries,
            shards,
        };
        for id in 1..=nodes {
            let child = cluster.spawn(id);
            cluster.children.push(Some(child));
        }
        cluster
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn spawn(&self, id: u64) -> Child {
        let config = ServerConfig {
            node_id: id,
            members: self.members.clone(),
            data_dir: self.dir.join(format!("node-{id}")),
            seed: id,
            snapshot_interval_entries: self.snapshot_interval_entries,
            cluster: ClusterConfig {
                shards: self.shards,
                ..ClusterConfig::default()
            },
            ..ServerConfig::default()
        };
        let path = self.dir.join(format!("node-{id}.toml"));
        std::fs::write(&path, toml::to_string(&config).expect("config to toml"))
            .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["server", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log)
            .spawn()
            .expect("spawn quorumkv server")
    }

    fn addr(&self, id: u64) -> SocketAddr {
        self.members[(id - 1) as usize].client_addr
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client_addr).collect()
    }

    /// kill -9
    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children[(id - 1) as usize].take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    fn restart(&mut self, id: u64) {
        assert!(
            self.children[(id - 1) as usize].is_none(),
            "node {id} still running"
        );
        let child = self.spawn(id);
        self.children[(id - 1) as usize] = Some(child);
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("cluster files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn options() -> ClientOptions {
    static NEXT_SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    ClientOptions {
        operation_timeout: Duration::from_secs(15),
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        rng_seed: Some(NEXT_SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        ..ClientOptions::default()
    }
}

fn client(endpoints: Vec<SocketAddr>) -> Client {
    Client::new(endpoints, options()).expect("client")
}

/// Waits until some node reports itself leader; returns its status.
async fn wait_for_leader(cluster: &Cluster, among: &[u64]) -> NodeStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut probe = client(cluster.endpoints());
    loop {
        for &id in among {
            if let Ok(status) = probe.node_status(cluster.addr(id)).await {
                if status.role == Role::Leader {
                    return status;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader among {among:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn writes_and_reads_through_every_node() {
    let cluster = Cluster::start("rw", 3, 10_000, ClusterConfig::default().shards);
    wait_for_leader(&cluster, &[1, 2, 3]).await;
    for id in 1..=3 {
        let mut c = client(vec![cluster.addr(id)]);
        let key = format!("key-{id}");
        c.put(key.as_bytes(), format!("value-{id}").as_bytes())
            .await
            .expect("put through node");
    }
    for reader in 1..=3 {
        let mut c = client(vec![cluster.addr(reader)]);
        for id in 1..=3 {
            let got = c
                .get(format!("key-{id}").as_bytes())
                .await
                .expect("get through node");
            assert_eq!(
                got.map(|v| v.value),
                Some(format!("value-{id}").into_bytes()),
                "read via node {reader}"
            );
        }
    }
    // Conditional writes and scans through a follower.
    let mut c = client(cluster.endpoints());
    let version = c.put(b"cas", b"a").await.unwrap();
    let outcome = c
        .cas(b"cas", node::kv::Expected::Version(version), b"b")
        .await
        .unwrap();
    assert!(matches!(outcome, node::client::CasOutcome::Written { .. }));
    let outcome = c
        .cas(b"cas", node::kv::Expected::Value(b"a".to_vec()), b"c")
        .await
        .unwrap();
    assert!(
        matches!(outcome, node::client::CasOutcome::ConditionFailed { current: Some(ref v) } if v.value == b"b")
    );
    let (items, more) = c
        .scan(node::kv::KeyRange::Prefix(b"key-".to_vec()), 2)
        .await
        .unwrap();
    assert_eq!(
        items.iter().map(|i| i.key.clone()).collect::<Vec<_>>(),
        vec![b"key-1".to_vec(), b"key-2".to_vec()]
    );
    assert!(more);
}

/// The status of `group` in a node's report (None: the node does not host it).
fn group_status(status: &NodeStatus, group: GroupId) -> Option<&GroupStatus> {
    status.groups.iter().find(|g| g.group == group)
}

/// The data groups of a cluster started with `SNAPSHOT_TEST_SHARDS` shards.
fn data_groups() -> Vec<GroupId> {
    (0..SNAPSHOT_TEST_SHARDS).map(group_of_shard).collect()
}

/// Waits until a node among `among` leads data group `group`; returns the node and its view of
/// the group (its commit index is the group's).
async fn wait_for_group_leader(cluster: &Cluster, among: &[u64], group: GroupId) -> GroupStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut probe = client(cluster.endpoints());
    loop {
        for &id in among {
            if let Ok(status) = probe.node_status(cluster.addr(id)).await {
                if let Some(g) = group_status(&status, group) {
                    if g.role == Role::Leader && g.leader == Some(id) {
                        return g.clone();
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader of group {group} among {among:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until node `id` has applied, in every data group, at least what that group's leader
/// among `leaders_among` has committed; returns the node's status.
async fn wait_caught_up(cluster: &Cluster, id: u64, leaders_among: &[u64]) -> NodeStatus {
    let mut targets = Vec::new();
    for group in data_groups() {
        let leader = wait_for_group_leader(cluster, leaders_among, group).await;
        targets.push((group, leader.commit_index));
    }
    let mut probe = client(cluster.endpoints());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(status) = probe.node_status(cluster.addr(id)).await {
            let caught_up = targets.iter().all(|&(group, target)| {
                group_status(&status, group).is_some_and(|g| g.applied_index >= target)
            });
            if caught_up {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not apply its data groups up to {targets:?} (group, commit index)"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// Keys held by a node's data groups (the metadata group holds none).
fn data_keys(status: &NodeStatus) -> u64 {
    data_groups()
        .into_iter()
        .filter_map(|g| group_status(status, g))
        .map(|g| g.keys)
        .sum()
}

/// Puts `prefix0000`, `prefix0001`, ... until every data shard received at least `per_shard`
/// of them; returns the keys written.
async fn write_every_shard(
    c: &mut Client,
    prefix: &str,
    value: &[u8],
    per_shard: usize,
) -> Vec<String> {
    let mut per = vec![0usize; SNAPSHOT_TEST_SHARDS as usize];
    let mut keys = Vec::new();
    while per.iter().any(|&n| n < per_shard) {
        assert!(
            keys.len() < 100 * per_shard,
            "keys do not spread over the shards: {per:?}"
        );
        let key = format!("{prefix}{:04}", keys.len());
        c.put(key.as_bytes(), value)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        per[shard_for_key(key.as_bytes(), SNAPSHOT_TEST_SHARDS) as usize] += 1;
        keys.push(key);
    }
    keys
}

#[tokio::test]
async fn leader_crash_loses_no_acknowledged_write_and_restart_catches_up_by_snapshot() {
    let mut cluster = Cluster::start("crash", 3, 20, SNAPSHOT_TEST_SHARDS);
    wait_for_leader(&cluster, &[1, 2, 3]).await;
    let mut c = client(cluster.endpoints());
    let acked = write_every_shard(&mut c, "k", b"before", 25).await;
    // Every write was acknowledged, so committed, and nothing else is proposed in a quiet
    // cluster: no node's log of a data group goes past that group leader's commit index.
    let mut old_last_index: Vec<(GroupId, LogIndex)> = Vec::new();
    for group in data_groups() {
        let leader = wait_for_group_leader(&cluster, &[1, 2, 3], group).await;
        old_last_index.push((group, leader.commit_index));
    }
    // kill -9 the leader of the first data group (it holds acknowledged writes).
    let victim = wait_for_group_leader(&cluster, &[1, 2, 3], data_groups()[0])
        .await
        .leader
        .expect("a leader names itself");
    cluster.kill(victim);
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != victim).collect();
    let mut c = client(survivors.iter().map(|&id| cluster.addr(id)).collect());
    // A new leader serves (the client's operation timeout bounds how long that may take).
    c.put(b"after-crash", b"1")
        .await
        .expect("a new leader serves writes");
    for key in &acked {
        let got = c.get(key.as_bytes()).await.expect("read after crash");
        assert_eq!(
            got.map(|v| v.value),
            Some(b"before".to_vec()),
            "acknowledged write {key} lost after node {victim} was killed"
        );
    }
    // Enough writes in every data group for the survivors to snapshot and compact past the
    // dead node's log (3 x snapshot_interval_entries each).
    let while_down = write_every_shard(&mut c, "m", b"while-down", 60).await;

    cluster.restart(victim);
    let restarted = wait_caught_up(&cluster, victim, &survivors).await;
    for (group, old) in old_last_index {
        let g = group_status(&restarted, group).expect("the restarted node hosts the group");
        assert!(
            g.snapshot_index > old,
            "group {group}: expected catch-up by snapshot: snapshot index {} <= old last index {old}",
            g.snapshot_index
        );
    }
    assert_eq!(
        data_keys(&restarted),
        (acked.len() + 1 + while_down.len()) as u64,
        "restarted node {victim}'s data groups"
    );
}

async fn expect_closed(addr: SocketAddr, bytes: &[u8], close_write: bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
    if close_write {
        stream.shutdown().await.expect("shutdown write half");
    }
    let mut buf = vec![0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = timeout(
            deadline.saturating_duration_since(Instant::now()),
            stream.read(&mut buf),
        )
        .await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // e.g. a Pong; keep reading until the node closes
            Err(_) => panic!("{addr} left a bad connection open"),
        }
    }
}

#[tokio::test]
async fn bad_frames_close_only_their_connection() {
    let cluster = Cluster::start("garbage", 3, 10_000, ClusterConfig::default().shards);
    wait_for_leader(&cluster, &[1, 2, 3]).await;
    let magic = node::transport::frame::FRAME_MAGIC;
    let version = node::transport::frame::PROTOCOL_VERSION.to_be_bytes();
    let mut truncated = magic.to_vec();
    truncated.extend_from_slice(&version);
    truncated.extend_from_slice(&100u32.to_be_bytes());
    truncated.extend_from_slice(&[1, 2, 3, 4, 5]);
    let mut oversized = magic.to_vec();
    oversized.extend_from_slice(&version);
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());

    // A healthy client keeps its connection open across all of this.
    let mut c = client(cluster.endpoints());
    c.put(b"steady", b"0").await.unwrap();
    for member in cluster.members.clone() {
        for port in [member.client_addr, member.peer_addr] {
            expect_closed(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
            expect_closed(port, &truncated, true).await;
            expect_closed(port, &oversized, false).await;
        }
        c.put(b"steady", member.id.to_string().as_bytes())
            .await
            .expect("cluster keeps serving");
    }
    let got = c.get(b"steady").await.unwrap().unwrap();
    assert_eq!(got.value, b"3");
    for id in 1..=3 {
        let log = cluster.log(id);
        for needle in [
            "bad frame magic",
            "in the middle of a frame",
            "exceeds max_frame_bytes",
        ] {
            assert!(log.contains(needle), "node {id} log lacks {needle:?}");
        }
    }
}

#[tokio::test]
async fn restarted_leader_sends_its_snapshot_from_disk_to_a_lagging_node() {
    let mut cluster = Cluster::start("restart-all", 3, 20, SNAPSHOT_TEST_SHARDS);
    wait_for_leader(&cluster, &[1, 2, 3]).await;
    let mut c = client(cluster.endpoints());
    c.put(b"first", b"1").await.unwrap();
    cluster.kill(1);
    let mut c = client(vec![cluster.addr(2), cluster.addr(3)]);
    let written = write_every_shard(&mut c, "k", b"v", 60).await;
    // Nodes 2 and 3 restart from disk: each data group's log now starts after a snapshot.
    cluster.kill(2);
    cluster.kill(3);
    cluster.restart(2);
    cluster.restart(3);
    wait_for_leader(&cluster, &[2, 3]).await;
    c.put(b"last", b"1").await.expect("put after full restart");
    cluster.restart(1);
    let caught_up = wait_caught_up(&cluster, 1, &[2, 3]).await;
    assert_eq!(
        data_keys(&caught_up),
        written.len() as u64 + 2,
        "node 1's data groups after catching up from nodes 2 and 3"
    );
    for group in data_groups() {
        let g = group_status(&caught_up, group).expect("node 1 hosts the group");
        assert!(
            g.snapshot_index > 0,
            "node 1 should have installed group {group}'s snapshot"
        );
    }
}
