//! What the end-to-end tests share: free loopback ports, running the `quorumkv` binary, and two
//! ways to start real server processes on 127.0.0.1 that a Drop guard stops, also when the test
//! panics (a panicking test keeps its directory and says where).
//!
//! - [`EnvCluster`]: one `quorumkv server` process per node, configured only through
//!   `QUORUMKV_*` variables (the way a container is), each with an admin port.
//! - [`LocalCluster`]: one `quorumkv local` process, the README's front door.
// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use node::client::{Client, ClientOptions};

/// Longest wait for a node to report ready on its admin port.
pub const READY_BOUND: Duration = Duration::from_secs(60);

/// `count` distinct free ports: every listener stays bound until all are picked, so the OS
/// cannot hand out one port twice (it readily reuses a port as soon as its listener closes).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<StdListener> = (0..count)
        .map(|_| StdListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A base port `b` such that `b + offset` is free for every offset (`quorumkv local` places its
/// ports at fixed offsets from `--base-port`). The ports are only probed, not held (the caller's
/// server binds them later), so every call of a process starts at its own candidate (tests of
/// one binary run in parallel), and candidates are spread by process id so that test binaries
/// running at the same time start their search apart.
pub fn free_base_port(offsets: &[u16]) -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 40_000;
    const STRIDE: u32 = 1_000;
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let start = (std::process::id().wrapping_mul(7) + call) % (SPAN / STRIDE);
    for attempt in 0..SPAN / STRIDE {
        let base = (FIRST + ((start + attempt) % (SPAN / STRIDE)) * STRIDE + 10) as u16;
        let held: Result<Vec<StdListener>, _> = offsets
            .iter()
            .map(|o| StdListener::bind(("127.0.0.1", base + o)))
            .collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no free base port for offsets {offsets:?}");
}

/// Runs the CLI with `args` (ignoring a `QUORUMKV_ENDPOINTS` of the environment).
pub fn quorumkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(args)
        .env_remove("QUORUMKV_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("run quorumkv")
}

/// Exit code, stdout and stderr of a CLI run, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh directory for a test's files.
fn fresh_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

fn keep_or_remove(dir: &Path) {
    if std::thread::panicking() {
        eprintln!("cluster files kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Stops a child with SIGTERM, then SIGKILL if it has not exited within `grace`.
fn terminate(child: &mut Child, grace: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills (SIGKILL) and reaps a child when dropped, also when the test panics.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct EnvNode {
    child: Option<Child>,
    client_port: u16,
    admin_port: u16,
}

/// One `quorumkv server` per node, configured through the environment; node ids are 1-based.
pub struct EnvCluster {
    dir: PathBuf,
    members_env: String,
    shards: u32,
    nodes: Vec<EnvNode>,
}

impl EnvCluster {
    /// Starts `count` nodes named `localhost` in the member list (so host names are
    /// resolved), with `shards` shards; does not wait for them (see [`EnvCluster::wait_ready`]).
    pub fn start(name: &str, count: usize, shards: u32) -> EnvCluster {
        let dir = fresh_dir("quorumkv-test", name);
        let ports = free_ports(3 * count);
        let members_env = (0..count)
            .map(|i| {
                format!(
                    "{}=localhost:{},localhost:{}",
                    i + 1,
                    ports[3 * i],
                    ports[3 * i + 1]
                )
            })
            .collect::<Vec<_>>()
            .join(";");
        let nodes = (0..count)
            .map(|i| EnvNode {
                child: None,
                client_port: ports[3 * i + 1],
                admin_port: ports[3 * i + 2],
            })
            .collect();
        let mut cluster = EnvCluster {
            dir,
            members_env,
            shards,
            nodes,
        };
        for id in 1..=count {
            cluster.spawn(id);
        }
        cluster
    }

    /// [`EnvCluster::start`], then waits until every node reports ready.
    pub fn start_ready(name: &str, count: usize, shards: u32) -> EnvCluster {
        let cluster = EnvCluster::start(name, count, shards);
        for id in 1..=count {
            cluster.wait_ready(id);
        }
        cluster
    }

    /// Starts node `id` (again), its output appended to its log file.
    pub fn spawn(&mut self, id: usize) {
        let node = &self.nodes[id - 1];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .arg("server")
            .env("QUORUMKV_NODE_ID", id.to_string())
            .env("QUORUMKV_MEMBERS", &self.members_env)
            .env("QUORUMKV_DATA_DIR", self.dir.join(format!("node-{id}")))
            .env(
                "QUORUMKV_ADMIN_ADDR",
                format!("127.0.0.1:{}", node.admin_port),
            )
            .env("QUORUMKV_CLUSTER_SHARDS", self.shards.to_string())
            .env("QUORUMKV_SEED", id.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log)
            .spawn()
            .expect("spawn quorumkv server");
        self.nodes[id - 1].child = Some(child);
    }

    /// The running process of node `id`, which the caller now stops and reaps.
    pub fn take_child(&mut self, id: usize) -> Option<Child> {
        self.nodes[id - 1].child.take()
    }

    /// The cluster's directory (data and logs of every node).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// kill -9 of node `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.nodes[id - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Client endpoints as the CLI takes them (`localhost:P,...`).
    pub fn endpoints(&self) -> String {
        (1..=self.nodes.len())
            .map(|id| self.endpoint(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`'s client endpoint (`localhost:P`).
    pub fn endpoint(&self, id: usize) -> String {
        format!("localhost:{}", self.nodes[id - 1].client_port)
    }

    /// Client addresses for the client library.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .map(|n| SocketAddr::from(([127, 0, 0, 1], n.client_port)))
            .collect()
    }

    /// Node `id`'s admin address (`/metrics`, `/health/*`).
    pub fn admin(&self, id: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[id - 1].admin_port)
    }

    /// A client of every node, with a 15 s operation timeout and its own seed.
    pub fn client(&self) -> Client {
        static SEED: AtomicU64 = AtomicU64::new(1);
        let options = ClientOptions {
            operation_timeout: Duration::from_secs(15),
            rng_seed: Some(SEED.fetch_add(1, Ordering::Relaxed)),
            ..ClientOptions::default()
        };
        Client::new(self.addrs(), options).expect("client")
    }

    /// Waits (at most [`READY_BOUND`]) until `quorumkv health` on node `id` exits 0.
    pub fn wait_ready(&self, id: usize) {
        let started = Instant::now();
        loop {
            let out = quorumkv(&["health", "--addr", &self.admin(id)]);
            if out.status.code() == Some(0) {
                return;
            }
            assert!(
                started.elapsed() < READY_BOUND,
                "node {id} not ready within {READY_BOUND:?}: {}",
                output_text(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_path(&self, id: usize) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// What node `id` has logged so far.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for EnvCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        keep_or_remove(&self.dir);
    }
}

/// `quorumkv local --nodes N` in a fresh directory: client ports `base + i`, peer ports
/// `base + 100 + i`, Redis ports `base + 200 + i`. Stopped by SIGTERM (then SIGKILL) on drop.
pub struct LocalCluster {
    child: Child,
    base_port: u16,
    dir: PathBuf,
}

impl LocalCluster {
    /// Starts `quorumkv local --nodes nodes` plus `extra_args` (e.g. `--tls`); does not wait.
    pub fn start(name: &str, nodes: u16, extra_args: &[&str]) -> LocalCluster {
        let offsets: Vec<u16> = (1..=nodes).flat_map(|i| [i, 100 + i, 200 + i]).collect();
        let base_port = free_base_port(&offsets);
        let dir = fresh_dir("quorumkv-local", name);
        let child = Command::new(env!("CARGO_BIN_EXE_quorumkv"))
            .args(["local", "--nodes", &nodes.to_string(), "--base-port"])
            .arg(base_port.to_string())
            .arg("--dir")
            .arg(&dir)
            .args(extra_args)
            .env_remove("QUORUMKV_ADMIN_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start quorumkv local");
        LocalCluster {
            child,
            base_port,
            dir,
        }
    }

    /// Node `node`'s client endpoint (`127.0.0.1:P`).
    pub fn endpoint(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.base_port + node)
    }

    /// Node `node`'s Redis port.
    pub fn redis_port(&self, node: u16) -> u16 {
        self.base_port + 200 + node
    }

    /// The cluster's directory (data, logs, generated certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What node `node` has logged so far.
    pub fn log(&self, node: u16) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{node}.log"))).unwrap_or_default()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
        keep_or_remove(&self.dir);
    }
}
