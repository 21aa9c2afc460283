//! A cluster of real `quorumkv server` processes on 127.0.0.1, and the process-level faults
//! the real-cluster campaign injects into it: kill -9 and restart, SIGSTOP and SIGCONT.
//!
//! Either the cluster is spawned here (free loopback ports, data and logs in one directory) or
//! it is attached to a running `quorumkv local` (pids from the nodes' status; a killed node is
//! restarted from the `node-<id>.toml` that `local` wrote into its directory).
//!
//! Invariants: a node is in exactly one of the states running, paused or down; whatever this
//! value started or stopped is undone when it is dropped (also on panic or Ctrl-C): every
//! paused node gets SIGCONT, every child process it spawned is killed and reaped. Signals go
//! through the `kill` command (no libc binding); only pids this cluster knows are signalled.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use node::client::{Client, ClientOptions, NodeStatus};
use node::config::MemberConfig;
use node::raft::Role;

/// How long a status probe of one node may take.
pub const STATUS_PROBE_TIMEOUT_MS: u64 = 400;
/// How long a killed process may take to disappear after SIGKILL.
pub const KILL_REAP_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node {0} is not a member of the cluster")]
    UnknownNode(u64),
    #[error("node {id} exited on its own ({status}); its log: {log}")]
    Exited {
        id: u64,
        status: String,
        log: String,
    },
    #[error("no leader within {bound_ms} ms: {detail}")]
    NoLeader { bound_ms: u64, detail: String },
    #[error("cannot attach: {0}")]
    Attach(String),
    #[error("`kill -{signal} {pid}` failed: {detail}")]
    Signal {
        signal: &'static str,
        pid: u32,
        detail: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// What to spawn: `nodes` servers of the `quorumkv` executable, everything under `dir`.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    pub nodes: u16,
    pub quorumkv_exe: PathBuf,
    pub dir: PathBuf,
    /// Small values make nodes snapshot (and restarted nodes catch up by snapshot) often.
    pub snapshot_interval_entries: u64,
    /// Seeds the nodes' RNGs (`--seed`, combined with the node id by the server).
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Running,
    Paused,
    Down,
}

#[derive(Debug)]
struct NodeProcess {
    member: MemberConfig,
    /// Set when this cluster spawned the current process.
    child: Option<Child>,
    /// The current process (spawned here or found by attaching); `None` when down.
    pid: Option<u32>,
    state: NodeState,
}

#[derive(Debug)]
pub struct ProcessCluster {
    nodes: Vec<NodeProcess>,
    quorumkv_exe: PathBuf,
    dir: PathBuf,
    /// Spawned clusters restart nodes with flags; attached ones from `local`'s config files.
    spawned: Option<SpawnSpec>,
}

/// A port the OS just handed out on 127.0.0.1 (free unless someone else grabs it meanwhile).
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding an ephemeral port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("reading an ephemeral port"))?
        .port())
}

fn signal(pid: u32, signal: &'static str) -> Result<(), ClusterError> {
    let output = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(io_err("running the `kill` command"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Signal {
            signal,
            pid,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

fn probe_client(endpoints: Vec<SocketAddr>) -> Result<Client, ClusterError> {
    let options = ClientOptions {
        request_timeout: Duration::from_millis(STATUS_PROBE_TIMEOUT_MS),
        operation_timeout: Duration::from_millis(STATUS_PROBE_TIMEOUT_MS),
        connect_timeout: Duration::from_millis(STATUS_PROBE_TIMEOUT_MS),
        ..ClientOptions::default()
    };
    Client::new(endpoints, options).map_err(|e| ClusterError::Attach(e.to_string()))
}

impl ProcessCluster {
    /// Starts `spec.nodes` servers on free loopback ports.
    pub fn spawn(spec: SpawnSpec) -> Result<ProcessCluster, ClusterError> {
        assert!(spec.nodes >= 1, "a cluster needs at least one node");
        std::fs::create_dir_all(&spec.dir)
            .map_err(io_err(format!("creating {}", spec.dir.display())))?;
        let mut members = Vec::new();
        for id in 1..=u64::from(spec.nodes) {
            members.push(MemberConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                zone: None,
            });
        }
        let mut cluster = ProcessCluster {
            nodes: members
                .into_iter()
                .map(|member| NodeProcess {
                    member,
                    child: None,
                    pid: None,
                    state: NodeState::Down,
                })
                .collect(),
            quorumkv_exe: spec.quorumkv_exe.clone(),
            dir: spec.dir.clone(),
            spawned: Some(spec),
        };
        for id in cluster.node_ids() {
            cluster.restart(id)?;
        }
        Ok(cluster)
    }

    /// Attaches to a running `quorumkv local` cluster: `endpoints` reach any of its nodes,
    /// `local_dir` is its `--dir` (holding `node-<id>.toml`), `quorumkv_exe` restarts nodes.
    pub async fn attach(
        endpoints: Vec<SocketAddr>,
        local_dir: &Path,
        quorumkv_exe: PathBuf,
    ) -> Result<ProcessCluster, ClusterError> {
        let mut probe = probe_client(endpoints)?;
        let first = probe
            .status_any()
            .await
            .map_err(|e| ClusterError::Attach(format!("no node answered: {e}")))?;
        let mut nodes = Vec::new();
        for member in first.members.clone() {
            let status = probe.node_status(member.client_addr).await.map_err(|e| {
                ClusterError::Attach(format!("node {} did not answer: {e}", member.id))
            })?;
            let config = local_dir.join(format!("node-{}.toml", member.id));
            if !config.is_file() {
                return Err(ClusterError::Attach(format!(
                    "{} is missing (is {} the `quorumkv local --dir`?)",
                    config.display(),
                    local_dir.display()
                )));
            }
            nodes.push(NodeProcess {
                member,
                child: None,
                pid: Some(status.pid),
                state: NodeState::Running,
            });
        }
        Ok(ProcessCluster {
            nodes,
            quorumkv_exe,
            dir: local_dir.to_path_buf(),
            spawned: None,
        })
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.member.id).collect()
    }

    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.member.client_addr).collect()
    }

    /// Nodes whose current process this value spawned (all of a spawned cluster; in an
    /// attached one, the nodes the nemesis restarted). They are stopped when it is dropped.
    pub fn spawned_here(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.member.id)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// The node's current process id (`None`: down).
    pub fn pid(&self, id: u64) -> Result<Option<u32>, ClusterError> {
        Ok(self.node(id)?.pid)
    }

    pub fn state(&self, id: u64) -> Result<NodeState, ClusterError> {
        Ok(self.node(id)?.state)
    }

    fn node(&self, id: u64) -> Result<&NodeProcess, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.member.id == id)
            .ok_or(ClusterError::UnknownNode(id))
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut NodeProcess, ClusterError> {
        self.nodes
            .iter_mut()
            .find(|n| n.member.id == id)
            .ok_or(ClusterError::UnknownNode(id))
    }

    /// kill -9 (a paused node too: SIGKILL needs no SIGCONT). No-op when already down.
    pub fn kill(&mut self, id: u64) -> Result<(), ClusterError> {
        let node = self.node_mut(id)?;
        let Some(pid) = node.pid else {
            return Ok(());
        };
        match node.child.as_mut() {
            Some(child) => {
                child
                    .kill()
                    .map_err(io_err(format!("kill -9 node {id} (pid {pid})")))?;
                child
                    .wait()
                    .map_err(io_err(format!("reaping node {id} (pid {pid})")))?;
            }
            None => {
                signal(pid, "KILL")?;
                wait_until_gone(pid)?;
            }
        }
        node.child = None;
        node.pid = None;
        node.state = NodeState::Down;
        Ok(())
    }

    /// Deletes a down node's data directory (spawned clusters only: an attached cluster's
    /// data is never deleted).
    pub fn wipe(&mut self, id: u64) -> Result<(), ClusterError> {
        let Some(spec) = &self.spawned else {
            return Err(ClusterError::Attach(
                "refusing to delete the data of an attached cluster".into(),
            ));
        };
        let data_dir = spec.dir.join(format!("node-{id}"));
        assert_eq!(
            self.node(id)?.state,
            NodeState::Down,
            "wiping node {id} while it runs"
        );
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ClusterError::Io {
                context: format!("deleting {}", data_dir.display()),
                source,
            }),
        }
    }

    /// Starts a down node again on its old ports and data directory. No-op when not down.
    pub fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        let mut command = Command::new(&self.quorumkv_exe);
        command.arg("server");
        match &self.spawned {
            Some(spec) => {
                command
                    .arg("--id")
                    .arg(id.to_string())
                    .arg("--data-dir")
                    .arg(spec.dir.join(format!("node-{id}")))
                    .arg("--seed")
                    .arg(spec.seed.to_string())
                    .arg("--snapshot-interval-entries")
                    .arg(spec.snapshot_interval_entries.to_string());
                for n in &self.nodes {
                    let m = &n.member;
                    command
                        .arg("--member")
                        .arg(format!("{}={},{}", m.id, m.peer_addr, m.client_addr));
                }
            }
            None => {
                command
                    .arg("--config")
                    .arg(self.dir.join(format!("node-{id}.toml")));
            }
        }
        let log_path = self.log_path(id);
        let node = self.node(id)?;
        if node.state != NodeState::Down {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log_path.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(io_err(format!(
                "starting {} server (node {id})",
                self.quorumkv_exe.display()
            )))?;
        let node = self.node_mut(id)?;
        node.pid = Some(child.id());
        node.child = Some(child);
        node.state = NodeState::Running;
        Ok(())
    }

    /// SIGSTOP: the process keeps its sockets but stops answering. No-op unless running.
    pub fn pause(&mut self, id: u64) -> Result<(), ClusterError> {
        let node = self.node_mut(id)?;
        if let (NodeState::Running, Some(pid)) = (node.state, node.pid) {
            signal(pid, "STOP")?;
            node.state = NodeState::Paused;
        }
        Ok(())
    }

    /// SIGCONT. No-op unless paused.
    pub fn resume(&mut self, id: u64) -> Result<(), ClusterError> {
        let node = self.node_mut(id)?;
        if let (NodeState::Paused, Some(pid)) = (node.state, node.pid) {
            signal(pid, "CONT")?;
            node.state = NodeState::Running;
        }
        Ok(())
    }

    /// Resumes every paused node and restarts every down one; returns what it did.
    pub fn heal_all(&mut self) -> Result<Vec<String>, ClusterError> {
        let mut actions = Vec::new();
        for id in self.node_ids() {
            match self.state(id)? {
                NodeState::Running => {}
                NodeState::Paused => {
                    self.resume(id)?;
                    actions.push(format!("resume n{id}"));
                }
                NodeState::Down => {
                    self.restart(id)?;
                    actions.push(format!("restart n{id}"));
                }
            }
        }
        Ok(actions)
    }

    /// Fails when a process this cluster spawned exited without being killed here (a crash,
    /// a port taken by someone else, a storage error).
    pub fn check_alive(&mut self) -> Result<(), ClusterError> {
        for n in &mut self.nodes {
            if let Some(child) = n.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let id = n.member.id;
                    n.child = None;
                    n.pid = None;
                    n.state = NodeState::Down;
                    return Err(ClusterError::Exited {
                        id,
                        status: status.to_string(),
                        log: self
                            .dir
                            .join(format!("node-{id}.log"))
                            .display()
                            .to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The status of every running node that answers within the probe timeout.
    pub async fn statuses(&self) -> Vec<NodeStatus> {
        let Ok(mut probe) = probe_client(self.endpoints()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.state == NodeState::Running) {
            if let Ok(status) = probe.node_status(n.member.client_addr).await {
                out.push(status);
            }
        }
        out
    }

    /// The running node that says it leads with the highest term, if any.
    pub async fn leader(&self) -> Option<u64> {
        self.statuses()
            .await
            .into_iter()
            .filter(|s| s.role == Role::Leader)
            .max_by_key(|s| s.term)
            .map(|s| s.node_id)
    }

    /// Waits until some running node leads; fails after `bound` or when a node exits.
    pub async fn wait_for_leader(&mut self, bound: Duration) -> Result<u64, ClusterError> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            self.check_alive()?;
            if let Some(id) = self.leader().await {
                return Ok(id);
            }
            if tokio::time::Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .statuses()
                    .await
                    .iter()
                    .map(|s| format!("n{} {:?} term {}", s.node_id, s.role, s.term))
                    .collect();
                return Err(ClusterError::NoLeader {
                    bound_ms: bound.as_millis() as u64,
                    detail: format!("answering: [{}]", seen.join(", ")),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Polls `kill -0` until the process is gone (or a zombie its parent has not reaped yet, which
/// holds no sockets: `kill -0` still succeeds then, so a zombie is detected through /proc).
fn wait_until_gone(pid: u32) -> Result<(), ClusterError> {
    let started = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie_or_gone = stat.is_empty()
            || stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if zombie_or_gone {
            return Ok(());
        }
        if started.elapsed() > Duration::from_millis(KILL_REAP_TIMEOUT_MS) {
            return Err(ClusterError::Signal {
                signal: "KILL",
                pid,
                detail: format!("still alive after {KILL_REAP_TIMEOUT_MS} ms"),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for ProcessCluster {
    /// Resume what is paused, kill and reap what was spawned here. Nodes of an attached
    /// cluster that this value did not restart are left running, as they were found.
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let (NodeState::Paused, Some(pid)) = (n.state, n.pid) {
                if let Err(e) = signal(pid, "CONT") {
                    eprintln!("warning: could not resume node {}: {e}", n.member.id);
                }
                n.state = NodeState::Running;
            }
            if let Some(child) = n.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
