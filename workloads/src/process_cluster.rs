//! A cluster of real `quorumkv server` processes on 127.0.0.1, the process-level faults the
//! real-cluster campaign injects into it (kill -9 and restart, SIGSTOP and SIGCONT), and its
//! membership changes through the real CLI (`quorumkv cluster join` / `cluster leave`).
//!
//! Either the cluster is spawned here (free loopback ports, data and logs in one directory) or
//! it is attached to a running `quorumkv local` (pids from the nodes' status; a killed node is
//! restarted from the `node-<id>.toml` that `local` wrote into its directory). A node added by
//! `join_node` runs as a `quorumkv cluster join` process and is restarted the same way.
//!
//! Invariants: a node is in exactly one of the states running, paused or down; a node that left
//! (`leave_node`) is no longer listed, and its id is never used again; whatever this value
//! started or stopped is undone when it is dropped (also on panic or Ctrl-C): every paused node
//! gets SIGCONT, every child process it spawned is killed and reaped. Signals go through the
//! `kill` command (no libc binding); only pids this cluster knows are signalled.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::collections::BTreeSet;

use node::client::{Client, ClientOptions, ClusterStatus, NodeStatus};
use node::config::MemberConfig;
use node::meta::MemberState;
use node::raft::Role;

/// How long a status probe of one node may take.
pub const STATUS_PROBE_TIMEOUT_MS: u64 = 400;
/// How long a killed process may take to disappear after SIGKILL.
pub const KILL_REAP_TIMEOUT_MS: u64 = 5_000;
/// How long a node may take to stop by itself once `quorumkv cluster leave` reported it removed.
pub const LEFT_NODE_EXIT_TIMEOUT_MS: u64 = 10_000;
/// How long one request of the membership client (map, cluster status) may take.
const MEMBERSHIP_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// How often membership waits poll the cluster or a process.
const MEMBERSHIP_POLL_INTERVAL_MS: u64 = 200;

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
    /// A join or leave did not complete as it should (the detail says which step and why).
    #[error("membership: {0}")]
    Membership(String),
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
    /// Added by `join_node`: (re)started with `quorumkv cluster join`.
    joined: bool,
}

#[derive(Debug)]
pub struct ProcessCluster {
    nodes: Vec<NodeProcess>,
    quorumkv_exe: PathBuf,
    dir: PathBuf,
    /// Spawned clusters restart nodes with flags; attached ones from `local`'s config files.
    spawned: Option<SpawnSpec>,
    /// The members a spawned cluster bootstrapped with (what its nodes restart with).
    bootstrap_members: Vec<MemberConfig>,
    /// Nodes that left (`leave_node`), in order.
    left: Vec<u64>,
}

/// `count` distinct ports the OS just handed out on 127.0.0.1 (free unless someone else grabs
/// one meanwhile). Every listener stays bound until all are picked: the OS readily hands a
/// port out again as soon as its listener closes.
fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let mut listeners = Vec::new();
    for _ in 0..count {
        listeners
            .push(TcpListener::bind("127.0.0.1:0").map_err(io_err("binding an ephemeral port"))?);
    }
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(io_err("reading an ephemeral port"))
        })
        .collect()
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
        let ports = free_ports(2 * usize::from(spec.nodes))?;
        let members: Vec<MemberConfig> = (1..=u64::from(spec.nodes))
            .zip(ports.chunks(2))
            .map(|(id, pair)| MemberConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], pair[0])),
                client_addr: SocketAddr::from(([127, 0, 0, 1], pair[1])),
                zone: None,
            })
            .collect();
        let mut cluster = ProcessCluster {
            nodes: members
                .iter()
                .map(|member| NodeProcess {
                    member: member.clone(),
                    child: None,
                    pid: None,
                    state: NodeState::Down,
                    joined: false,
                })
                .collect(),
            quorumkv_exe: spec.quorumkv_exe.clone(),
            dir: spec.dir.clone(),
            spawned: Some(spec),
            bootstrap_members: members,
            left: Vec::new(),
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
        ProcessCluster::attach_with(endpoints, local_dir, quorumkv_exe, true).await
    }

    /// Attaches to a cluster whose processes this program cannot control (containers, other
    /// hosts): only a campaign without a nemesis may run on it, faults come from outside.
    /// `out_dir` only receives this program's files.
    pub async fn attach_external(
        endpoints: Vec<SocketAddr>,
        out_dir: &Path,
        quorumkv_exe: PathBuf,
    ) -> Result<ProcessCluster, ClusterError> {
        ProcessCluster::attach_with(endpoints, out_dir, quorumkv_exe, false).await
    }

    async fn attach_with(
        endpoints: Vec<SocketAddr>,
        local_dir: &Path,
        quorumkv_exe: PathBuf,
        local: bool,
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
            if local && !config.is_file() {
                return Err(ClusterError::Attach(format!(
                    "{} is missing (is {} the `quorumkv local --dir`?)",
                    config.display(),
                    local_dir.display()
                )));
            }
            nodes.push(NodeProcess {
                member,
                child: None,
                pid: local.then_some(status.pid),
                state: NodeState::Running,
                joined: false,
            });
        }
        Ok(ProcessCluster {
            nodes,
            quorumkv_exe,
            dir: local_dir.to_path_buf(),
            spawned: None,
            bootstrap_members: Vec::new(),
            left: Vec::new(),
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
        if self.node(id)?.joined {
            self.join_command(&mut command, id)?;
        } else {
            command.arg("server");
            match &self.spawned {
                Some(spec) => {
                    command
                        .arg("--id")
                        .arg(id.to_string())
                        .arg("--data-dir")
                        .arg(spec.dir.join(format!("node-{id}")));
                    tuning_args(&mut command, spec);
                    for m in &self.bootstrap_members {
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
                "starting {} (node {id})",
                self.quorumkv_exe.display()
            )))?;
        let node = self.node_mut(id)?;
        node.pid = Some(child.id());
        node.child = Some(child);
        node.state = NodeState::Running;
        Ok(())
    }

    /// `quorumkv cluster join` arguments that (re)start joined node `id` on its ports and data
    /// directory, asking the other listed nodes for admission.
    fn join_command(&self, command: &mut Command, id: u64) -> Result<(), ClusterError> {
        let member = &self.node(id)?.member;
        let via: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.member.id != id)
            .map(|n| n.member.client_addr.to_string())
            .collect();
        command
            .args(["cluster", "join", "--via"])
            .arg(via.join(","))
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--peer-addr")
            .arg(member.peer_addr.to_string())
            .arg("--client-addr")
            .arg(member.client_addr.to_string())
            .arg("--data-dir")
            .arg(self.dir.join(format!("node-{id}")));
        if let Some(spec) = &self.spawned {
            tuning_args(command, spec);
        }
        Ok(())
    }

    /// Nodes that left (`leave_node`), in order.
    pub fn left(&self) -> &[u64] {
        &self.left
    }

    fn membership_client(&self) -> Result<Client, ClusterError> {
        let timeout = Duration::from_millis(MEMBERSHIP_REQUEST_TIMEOUT_MS);
        let options = ClientOptions {
            request_timeout: timeout,
            operation_timeout: timeout,
            connect_timeout: Duration::from_millis(STATUS_PROBE_TIMEOUT_MS),
            ..ClientOptions::default()
        };
        let endpoints = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Running)
            .map(|n| n.member.client_addr)
            .collect();
        Client::new(endpoints, options).map_err(|e| ClusterError::Membership(e.to_string()))
    }

    /// Adds a node with `quorumkv cluster join` (the real CLI) on two free ports; its id is one
    /// above every id the cluster's map ever held (ids are never reused). Returns the id once
    /// the process runs; `wait_converged` tells when it holds its replicas.
    pub async fn join_node(&mut self) -> Result<u64, ClusterError> {
        let view = self
            .membership_client()?
            .cluster_info()
            .await
            .map_err(|e| ClusterError::Membership(format!("cannot read the cluster map: {e}")))?;
        let highest = view
            .members
            .iter()
            .map(|m| m.id)
            .chain(self.node_ids())
            .chain(self.left.iter().copied())
            .max()
            .unwrap_or(0);
        let id = highest + 1;
        let ports = free_ports(2)?;
        self.nodes.push(NodeProcess {
            member: MemberConfig {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], ports[0])),
                client_addr: SocketAddr::from(([127, 0, 0, 1], ports[1])),
                zone: None,
            },
            child: None,
            pid: None,
            state: NodeState::Down,
            joined: true,
        });
        if let Err(e) = self.restart(id) {
            self.nodes.retain(|n| n.member.id != id);
            return Err(e);
        }
        Ok(id)
    }

    /// Waits until the cluster has settled on its map (`convergence_problem` finds nothing) and
    /// that map lists `active` (if given) as an Active member; fails after `bound` or when a
    /// node exits.
    pub async fn wait_converged(
        &mut self,
        bound: Duration,
        active: Option<u64>,
    ) -> Result<ClusterStatus, ClusterError> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut client = self.membership_client()?;
        loop {
            self.check_alive()?;
            let problem = match client.cluster_status().await {
                Ok(status) => {
                    let state = active.map(|id| (id, status.member(id).map(|m| m.member.state)));
                    match (state, convergence_problem(&status)) {
                        (Some((id, state)), _) if state != Some(MemberState::Active) => {
                            format!("node {id} is {state:?} in map epoch {}", status.epoch)
                        }
                        (_, None) => return Ok(status),
                        (_, Some(problem)) => problem,
                    }
                }
                Err(e) => format!("no cluster status: {e}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Membership(format!(
                    "not converged within {} ms: {problem}",
                    bound.as_millis()
                )));
            }
            tokio::time::sleep(Duration::from_millis(MEMBERSHIP_POLL_INTERVAL_MS)).await;
        }
    }

    /// One look at the cluster: what `convergence_problem` finds, or "settled" (for reports).
    pub async fn convergence_report(&self) -> String {
        let status = match self.membership_client() {
            Ok(mut client) => client.cluster_status().await,
            Err(e) => return e.to_string(),
        };
        match status {
            Ok(status) => convergence_problem(&status)
                .unwrap_or_else(|| format!("settled at map epoch {}", status.epoch)),
            Err(e) => format!("no cluster status: {e}"),
        }
    }

    /// Removes node `id` with `quorumkv cluster leave` (the real CLI, asking the other nodes):
    /// the command must exit 0 within `bound`, then the node's process must stop by itself
    /// within `LEFT_NODE_EXIT_TIMEOUT_MS`. The node is then no longer listed.
    pub async fn leave_node(
        &mut self,
        id: u64,
        bound: Duration,
    ) -> Result<LeaveOutcome, ClusterError> {
        let started = tokio::time::Instant::now();
        let via: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.member.id != id && n.state == NodeState::Running)
            .map(|n| n.member.client_addr.to_string())
            .collect();
        if via.is_empty() {
            return Err(ClusterError::Membership(format!(
                "no running node but {id} to ask for its leave: {:?}",
                self.nodes
                    .iter()
                    .map(|n| (n.member.id, n.state))
                    .collect::<Vec<_>>()
            )));
        }
        self.node(id)?;
        let log_path = self.dir.join(format!("leave-{id}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(io_err(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_err(format!("duplicating {}", log_path.display())))?;
        let mut command = Command::new(&self.quorumkv_exe);
        command
            .args(["cluster", "leave", "--node-id"])
            .arg(id.to_string())
            .arg("--via")
            .arg(via.join(","))
            .arg("--timeout-s")
            .arg(bound.as_secs().max(1).to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = command.spawn().map_err(io_err(format!(
            "starting `quorumkv cluster leave --node-id {id}`"
        )))?;
        // The CLI stops waiting after `bound` by itself; the guard kills it if it does not.
        let mut cli = ChildGuard(Some(child));
        let cli_deadline = started + bound + Duration::from_millis(LEFT_NODE_EXIT_TIMEOUT_MS);
        let cli_status = wait_exit(&mut cli, cli_deadline).await?;
        let cli_output = std::fs::read_to_string(&log_path).unwrap_or_default();
        let Some(cli_status) = cli_status else {
            return Err(ClusterError::Membership(format!(
                "`quorumkv cluster leave --node-id {id}` still runs after {} ms: {cli_output}",
                started.elapsed().as_millis()
            )));
        };
        if !cli_status.success() {
            return Err(ClusterError::Membership(format!(
                "`quorumkv cluster leave --node-id {id} --via {}` exited with {cli_status}: {}",
                via.join(","),
                cli_output.trim()
            )));
        }
        let cli_ms = started.elapsed().as_millis() as u64;
        let node_deadline =
            tokio::time::Instant::now() + Duration::from_millis(LEFT_NODE_EXIT_TIMEOUT_MS);
        let node_exit = self.wait_node_exit(id, node_deadline).await?;
        let Some(node_exit) = node_exit else {
            return Err(ClusterError::Membership(format!(
                "node {id} still runs {LEFT_NODE_EXIT_TIMEOUT_MS} ms after `cluster leave` reported it removed (log: {})",
                self.log_path(id).display()
            )));
        };
        self.nodes.retain(|n| n.member.id != id);
        self.left.push(id);
        Ok(LeaveOutcome {
            id,
            cli_ms,
            cli_output,
            node_exit,
            total_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Waits until node `id`'s process exits by itself; None if it still runs at `deadline`.
    async fn wait_node_exit(
        &mut self,
        id: u64,
        deadline: tokio::time::Instant,
    ) -> Result<Option<String>, ClusterError> {
        loop {
            let node = self.node_mut(id)?;
            match (node.child.as_mut(), node.pid) {
                (Some(child), _) => {
                    if let Some(status) = child
                        .try_wait()
                        .map_err(io_err(format!("waiting for node {id}")))?
                    {
                        node.child = None;
                        node.pid = None;
                        node.state = NodeState::Down;
                        return Ok(Some(status.to_string()));
                    }
                }
                (None, Some(pid)) => {
                    if zombie_or_gone(pid) {
                        node.pid = None;
                        node.state = NodeState::Down;
                        return Ok(Some("exited (not our child)".into()));
                    }
                }
                (None, None) => return Ok(Some("was not running".into())),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(MEMBERSHIP_POLL_INTERVAL_MS)).await;
        }
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
        if zombie_or_gone(pid) {
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

/// True when `pid` is gone or a zombie (exited, not yet reaped), per /proc.
fn zombie_or_gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Server flags a spawned cluster gives every node it starts.
fn tuning_args(command: &mut Command, spec: &SpawnSpec) {
    command
        .arg("--seed")
        .arg(spec.seed.to_string())
        .arg("--snapshot-interval-entries")
        .arg(spec.snapshot_interval_entries.to_string());
}

/// What `leave_node` saw.
#[derive(Clone, Debug)]
pub struct LeaveOutcome {
    pub id: u64,
    /// Until `quorumkv cluster leave` exited 0.
    pub cli_ms: u64,
    /// Its stdout and stderr (the progress lines).
    pub cli_output: String,
    /// How the node's own process ended.
    pub node_exit: String,
    /// Until the node's process was gone.
    pub total_ms: u64,
}

/// Problems `convergence_problem` names at most (the rest are counted).
const CONVERGENCE_PROBLEMS_SHOWN_MAX: usize = 8;

/// Why `status` is not a settled cluster, or None when it is: every shard has a leader, no
/// learner, and exactly its target replicas as voters; every member is Active or Removed; and
/// every Active member answers and hosts exactly its target number of replicas (a removed
/// replica is deleted, a new one created). Names every unsettled shard with its leader, term,
/// hosts and lag, for diagnosis.
pub fn convergence_problem(status: &ClusterStatus) -> Option<String> {
    let mut problems = Vec::new();
    for g in &status.groups {
        let Some(shard) = g.shard else { continue };
        let voters: BTreeSet<u64> = g.voters.iter().copied().collect();
        let target: BTreeSet<u64> = g.target.iter().copied().collect();
        if g.leader.is_none() || voters != target || !g.learners.is_empty() {
            problems.push(format!(
                "shard {shard}: leader {:?} term {} voters {:?} learners {:?} target {:?} hosts {:?} lag {:?}",
                g.leader, g.term, g.voters, g.learners, g.target, g.hosts, g.lag_entries
            ));
        }
    }
    for m in &status.members {
        let id = m.member.id;
        match m.member.state {
            MemberState::Removed => {}
            MemberState::Active => {
                if m.replicas != Some(m.target_replicas) {
                    problems.push(format!(
                        "node {id} hosts {:?} replicas, target {} ({})",
                        m.replicas,
                        m.target_replicas,
                        m.error.as_deref().unwrap_or("answering")
                    ));
                }
            }
            state => problems.push(format!("node {id} is {state:?}")),
        }
    }
    if problems.is_empty() {
        return None;
    }
    let more = problems
        .len()
        .saturating_sub(CONVERGENCE_PROBLEMS_SHOWN_MAX);
    problems.truncate(CONVERGENCE_PROBLEMS_SHOWN_MAX);
    if more > 0 {
        problems.push(format!("{more} more"));
    }
    Some(format!(
        "map epoch {}: {}",
        status.epoch,
        problems.join("; ")
    ))
}

/// Kills and reaps a helper process (a CLI command) unless it was waited for.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until the guarded process exits (then returns its status and disarms the guard) or
/// `deadline` passes (None).
async fn wait_exit(
    guard: &mut ChildGuard,
    deadline: tokio::time::Instant,
) -> Result<Option<std::process::ExitStatus>, ClusterError> {
    loop {
        let Some(child) = guard.0.as_mut() else {
            return Ok(None);
        };
        if let Some(status) = child
            .try_wait()
            .map_err(io_err("waiting for a CLI command"))?
        {
            guard.0 = None;
            return Ok(Some(status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(MEMBERSHIP_POLL_INTERVAL_MS)).await;
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
