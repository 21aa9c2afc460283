//! End-to-end tests with real `quorumkv server` processes on 127.0.0.1.
//!
//! Each test starts its own cluster on free ports in its own temporary directory; a Drop guard
//! kills every process it started, also when the test panics.
#![cfg(not(madsim))]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use node::client::{Client, ClientOptions, NodeStatus};
use node::config::{MemberConfig, ServerConfig};
use node::raft::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

struct Cluster {
    dir: PathBuf,
    members: Vec<MemberConfig>,
    children: Vec<Option<Child>>,
    snapshot_interval_entries: u64,
}

fn free_port() -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl Cluster {
    fn start(name: &str, nodes: u64, snapshot_interval_entries: u64) -> Cluster {
        let dir = std::env::temp_dir().join(format!("quorumkv-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let members = (1..=nodes)
            .map(|id| MemberConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                zone: None,
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            members,
            children: Vec::new(),
            snapshot_interval_entries,
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
    let cluster = Cluster::start("rw", 3, 10_000);
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

#[tokio::test]
async fn leader_crash_loses_no_acknowledged_write_and_restart_catches_up_by_snapshot() {
    let mut cluster = Cluster::start("crash", 3, 20);
    let leader = wait_for_leader(&cluster, &[1, 2, 3]).await;
    let mut c = client(cluster.endpoints());
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("k{i:03}");
        c.put(key.as_bytes(), b"before")
            .await
            .expect("put before crash");
        acked.push(key);
    }
    let mut probe = client(cluster.endpoints());
    let old_last_index = probe
        .node_status(leader.client_addr)
        .await
        .expect("leader status")
        .last_index;

    cluster.kill(leader.node_id);
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != leader.node_id).collect();
    let mut c = client(survivors.iter().map(|&id| cluster.addr(id)).collect());
    // The new leader serves (the client's operation timeout bounds how long that may take).
    c.put(b"after-crash", b"1")
        .await
        .expect("a new leader serves writes");
    for key in &acked {
        let got = c.get(key.as_bytes()).await.expect("read after crash");
        assert_eq!(
            got.map(|v| v.value),
            Some(b"before".to_vec()),
            "acknowledged write {key} lost"
        );
    }
    // Enough writes for the survivors to snapshot and compact past the dead node's log.
    for i in 0..100 {
        c.put(format!("m{i:03}").as_bytes(), b"while-down")
            .await
            .expect("put while down");
    }

    cluster.restart(leader.node_id);
    let deadline = Instant::now() + Duration::from_secs(20);
    let target = wait_for_leader(&cluster, &survivors).await.commit_index;
    let restarted = loop {
        if let Ok(status) = probe.node_status(cluster.addr(leader.node_id)).await {
            if status.applied_index >= target {
                break status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "restarted node did not catch up to {target}"
        );
        sleep(Duration::from_millis(100)).await;
    };
    assert!(
        restarted.snapshot_index > old_last_index,
        "expected catch-up by snapshot: snapshot index {} <= old last index {old_last_index}",
        restarted.snapshot_index
    );
    assert_eq!(
        restarted.keys,
        50 + 1 + 100,
        "restarted node's state machine"
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
    let cluster = Cluster::start("garbage", 3, 10_000);
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

/// Waits until node `id` has applied at least `index`; returns its status.
async fn wait_applied(cluster: &Cluster, id: u64, index: u64) -> NodeStatus {
    let mut probe = client(cluster.endpoints());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(status) = probe.node_status(cluster.addr(id)).await {
            if status.applied_index >= index {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {id} did not apply up to {index}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn restarted_leader_sends_its_snapshot_from_disk_to_a_lagging_node() {
    let mut cluster = Cluster::start("restart-all", 3, 20);
    wait_for_leader(&cluster, &[1, 2, 3]).await;
    let mut c = client(cluster.endpoints());
    c.put(b"first", b"1").await.unwrap();
    cluster.kill(1);
    let mut c = client(vec![cluster.addr(2), cluster.addr(3)]);
    for i in 0..60 {
        c.put(format!("k{i:03}").as_bytes(), b"v")
            .await
            .expect("put while node 1 is down");
    }
    // Nodes 2 and 3 restart from disk: their log now starts after a snapshot.
    cluster.kill(2);
    cluster.kill(3);
    cluster.restart(2);
    cluster.restart(3);
    let leader = wait_for_leader(&cluster, &[2, 3]).await;
    c.put(b"last", b"1").await.expect("put after full restart");
    cluster.restart(1);
    let target = wait_for_leader(&cluster, &[2, 3]).await.commit_index;
    let caught_up = wait_applied(&cluster, 1, target).await;
    assert_eq!(
        caught_up.keys, 62,
        "node 1's state after catching up from node {}",
        leader.node_id
    );
    assert!(
        caught_up.snapshot_index > 0,
        "node 1 should have installed a snapshot"
    );
}
