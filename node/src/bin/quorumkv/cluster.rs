//! `quorumkv cluster`: the members and shards of a running cluster, adding a node, removing one.
//!
//! `join` runs a server in the foreground that asks running nodes for admission; its defaults
//! fit a `quorumkv local` cluster (next node id, that id's local ports, a data directory next to
//! the other nodes'). `leave` asks the metadata leader to move every replica off a node and
//! waits until the node is `Removed` (it then stops by itself). The planning and the printing are
//! pure functions, tested below.

use crate::output::out;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use node::addr::{resolve_all, HostPort};
use node::client::{Client, ClientError, ClusterStatus, GroupSummary};
use node::config::{MemberConfig, LOCAL_CLIENT_PORT_BASE, LOCAL_PEER_PORT_BASE};
use node::meta::{ClusterView, MemberState, MetaCommand, MetaResult};
use node::raft::NodeId;
use tokio::time::Instant;

use crate::cli::{
    init_logging, report, serve, ConnArgs, ServerTuning, EXIT_NO, EXIT_NO_QUORUM, EXIT_OK,
    EXIT_TIMEOUT, EXIT_USAGE,
};

/// How long `join` waits for a `--via` name to resolve.
const RESOLVE_WAIT_S: u64 = 30;
/// How often `leave` polls the cluster's status.
const LEAVE_POLL_INTERVAL_MS: u64 = 1000;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Nodes (address, zone, state, reachable, replicas) and shards (targets, leader, term,
    /// voters, learners, lag), merged from every member's view.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Run a new node in the foreground that joins a running cluster (defaults fit `local`).
    Join(Box<JoinArgs>),
    /// Move every replica off a node, wait until it is removed (it then stops by itself).
    Leave(LeaveArgs),
}

impl ClusterCommand {
    /// The runtime's worker threads `join` asks for (the other commands are clients).
    pub fn worker_threads(&self) -> Option<usize> {
        match self {
            ClusterCommand::Join(args) => args.tuning.worker_threads,
            _ => None,
        }
    }
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Client address (HOST:PORT, names allowed) of a running node to ask for admission
    /// (repeat or comma-separate; default: the `local` cluster's nodes 1-3).
    #[arg(long, value_delimiter = ',')]
    via: Vec<HostPort>,
    /// Default: one above the highest member id (ids are never reused). An existing member's
    /// id restarts that member with its addresses.
    #[arg(long)]
    node_id: Option<NodeId>,
    /// Default: 127.0.0.1:(LOCAL_PEER_PORT_BASE + id), as `local` numbers its nodes.
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// Default: 127.0.0.1:(LOCAL_CLIENT_PORT_BASE + id).
    #[arg(long)]
    client_addr: Option<SocketAddr>,
    /// Default: LOCAL_DIR/node-ID, next to the `local` cluster's nodes.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The `quorumkv local` directory (only used for the default data dir).
    #[arg(long, default_value = "quorumkv-local")]
    local_dir: PathBuf,
    /// Failure domain; replicas of one shard avoid sharing a zone.
    #[arg(long)]
    zone: Option<String>,
    #[command(flatten)]
    tuning: ServerTuning,
}

#[derive(Args, Debug)]
pub struct LeaveArgs {
    #[arg(long)]
    node_id: NodeId,
    /// Client address of any running node (repeat or comma-separate; default: `server`'s and
    /// `local`'s addresses).
    #[arg(long, value_delimiter = ',')]
    via: Vec<SocketAddr>,
    /// Stop waiting after this long (the leave goes on in the cluster).
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    #[command(flatten)]
    tls: crate::cli::TlsArgs,
    #[command(flatten)]
    auth: crate::cli::AuthArgs,
}

pub async fn run(command: ClusterCommand) -> u8 {
    match command {
        ClusterCommand::Status { conn } => status(&conn).await,
        ClusterCommand::Join(args) => join(*args).await,
        ClusterCommand::Leave(args) => leave(args).await,
    }
}

fn conn_via(via: &[SocketAddr]) -> ConnArgs {
    ConnArgs {
        endpoints: via.iter().copied().map(HostPort::from).collect(),
        json: false,
        timeout_ms: 5000,
        tls: crate::cli::TlsArgs::default(),
        auth: crate::cli::AuthArgs::default(),
    }
}

async fn status(conn: &ConnArgs) -> u8 {
    let mut client = match conn.client().await {
        Ok(client) => client,
        Err(e) => return report(e),
    };
    let status = match client.cluster_status().await {
        Ok(status) => status,
        Err(e) => return report(e),
    };
    if conn.json {
        match serde_json::to_string(&status) {
            Ok(text) => out!("{text}"),
            Err(e) => {
                eprintln!("error: cannot encode the status: {e}");
                return EXIT_USAGE;
            }
        }
    } else {
        crate::output::write(format_args!("{}", status_table(&status)));
    }
    let leaderless = status.leaderless_groups();
    if leaderless.is_empty() {
        EXIT_OK
    } else {
        eprintln!("warning: no leader for groups {leaderless:?} (group 0 is the metadata)");
        EXIT_NO_QUORUM
    }
}

fn ids(ids: &[NodeId]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// "2:0 3:12 4:?" for every voter and learner; "-" without a leader.
fn lag(group: &GroupSummary) -> String {
    if group.leader.is_none() {
        return "-".into();
    }
    group
        .voters
        .iter()
        .chain(&group.learners)
        .map(|r| match group.lag_entries.get(r) {
            Some(entries) => format!("{r}:{entries}"),
            None => format!("{r}:?"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn status_table(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let p = &status.placement;
    let _ = writeln!(
        out,
        "map epoch {}, {} shards, replication factor {}, metadata leader {}",
        status.epoch,
        p.shards,
        p.replication_factor,
        opt(status.meta_leader)
    );
    let _ = writeln!(
        out,
        "{:<5} {:<21} {:<8} {:<8} {:<10} {:<9} {:<7}",
        "NODE", "ADDRESS", "ZONE", "STATE", "REACHABLE", "REPLICAS", "TARGET"
    );
    for m in &status.members {
        let reachable = match m.reachable {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<5} {:<21} {:<8} {:<8} {:<10} {:<9} {:<7}",
            m.member.id,
            m.member.client_addr.to_string(),
            m.member.zone.as_deref().unwrap_or("-"),
            format!("{:?}", m.member.state).to_lowercase(),
            reachable,
            opt(m.replicas),
            m.target_replicas
        );
    }
    let _ = writeln!(
        out,
        "{:<6} {:<12} {:<7} {:<6} {:<12} {:<10} {:<8} LAG (replica:entries)",
        "SHARD", "TARGET", "LEADER", "TERM", "VOTERS", "LEARNERS", "KEYS"
    );
    for g in &status.groups {
        let _ = writeln!(
            out,
            "{:<6} {:<12} {:<7} {:<6} {:<12} {:<10} {:<8} {}",
            g.shard.map_or_else(|| "meta".into(), |s| s.to_string()),
            ids(&g.target),
            opt(g.leader),
            g.term,
            ids(&g.voters),
            ids(&g.learners),
            g.keys,
            lag(g)
        );
    }
    out
}

/// What `cluster join` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct JoinPlan {
    pub member: MemberConfig,
    pub data_dir: PathBuf,
    /// The id is already a member: this restarts it.
    pub restart: bool,
}

fn local_addr(base: u16, id: NodeId) -> Result<SocketAddr, String> {
    u16::try_from(id)
        .ok()
        .and_then(|id| base.checked_add(id))
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .ok_or_else(|| {
            format!("node id {id} has no local port: give --peer-addr and --client-addr")
        })
}

/// Picks the new node's id, addresses and data dir from the flags and the cluster's view.
pub fn plan_join(
    node_id: Option<NodeId>,
    peer_addr: Option<SocketAddr>,
    client_addr: Option<SocketAddr>,
    data_dir: Option<&Path>,
    local_dir: &Path,
    zone: Option<String>,
    view: Option<&ClusterView>,
) -> Result<JoinPlan, String> {
    let members = view.map_or(&[][..], |v| v.members.as_slice());
    let id = match (node_id, view) {
        (Some(id), _) => id,
        (None, Some(_)) => members.iter().map(|m| m.id).max().unwrap_or(0) + 1,
        (None, None) => {
            return Err("cannot pick a node id without the cluster's view: give --node-id".into())
        }
    };
    if id == 0 {
        return Err("node ids start at 1".into());
    }
    let existing = members.iter().find(|m| m.id == id);
    if let Some(m) = existing {
        if m.state == MemberState::Removed {
            return Err(format!(
                "node {id} was removed from the cluster and ids are never reused; omit --node-id"
            ));
        }
    }
    let peer_addr = match (peer_addr, existing) {
        (Some(addr), _) => addr,
        (None, Some(m)) => m.peer_addr,
        (None, None) => local_addr(LOCAL_PEER_PORT_BASE, id)?,
    };
    let client_addr = match (client_addr, existing) {
        (Some(addr), _) => addr,
        (None, Some(m)) => m.client_addr,
        (None, None) => local_addr(LOCAL_CLIENT_PORT_BASE, id)?,
    };
    let zone = zone.or_else(|| existing.and_then(|m| m.zone.clone()));
    for other in members
        .iter()
        .filter(|m| m.id != id && m.state != MemberState::Removed)
    {
        for addr in [peer_addr, client_addr] {
            if addr == other.peer_addr || addr == other.client_addr {
                return Err(format!(
                    "address {addr} is already used by node {}",
                    other.id
                ));
            }
        }
    }
    if peer_addr == client_addr {
        return Err(format!("peer and client address are both {peer_addr}"));
    }
    let data_dir = data_dir.map_or_else(|| local_dir.join(format!("node-{id}")), Path::to_path_buf);
    Ok(JoinPlan {
        member: MemberConfig {
            id,
            peer_addr,
            client_addr,
            zone,
        },
        data_dir,
        restart: existing.is_some(),
    })
}

fn default_via() -> Vec<SocketAddr> {
    (1..=3)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], LOCAL_CLIENT_PORT_BASE + i)))
        .collect()
}

async fn join(args: JoinArgs) -> u8 {
    let via = if args.via.is_empty() {
        default_via()
    } else {
        match resolve_all(&args.via, Duration::from_secs(RESOLVE_WAIT_S)).await {
            Ok(via) => via,
            Err(e) => {
                eprintln!("error: --via: {e}");
                return EXIT_USAGE;
            }
        }
    };
    // The node's own settings first: with TLS, the admission client presents its certificate.
    let mut config = match args.tuning.layered_config(|_| Ok(())).await {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let mut conn = conn_via(&via);
    conn.tls = crate::cli::TlsArgs {
        ca: config.tls.ca_file.clone(),
        cert: config.tls.cert_file.clone(),
        key: config.tls.key_file.clone(),
        tls_server_name: None,
    };
    // With auth, the node asks for admission as the admin of its own auth settings.
    if let Some(secret) = &config.auth.admin_password {
        conn.auth = crate::cli::AuthArgs {
            user: Some(config.auth.admin_user.clone()),
            password: Some(secret.clone()),
            password_file: None,
        };
    }
    let view = match conn
        .options()
        .and_then(|options| Client::new(via.clone(), options))
    {
        Ok(mut client) => client.cluster_info().await,
        Err(e) => Err(e),
    };
    let view = match view {
        Ok(view) if view.initialized => Some(view),
        Ok(_) => {
            eprintln!("warning: the nodes at {via:?} have not learned the cluster map yet");
            None
        }
        Err(e) => {
            eprintln!("warning: cannot ask the cluster ({e})");
            None
        }
    };
    let plan = plan_join(
        args.node_id,
        args.peer_addr,
        args.client_addr,
        args.data_dir.as_deref(),
        &args.local_dir,
        args.zone.clone(),
        view.as_ref(),
    );
    let plan = match plan {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    config.node_id = plan.member.id;
    config.members = vec![plan.member.clone()];
    config.join = via.clone();
    config.data_dir = plan.data_dir.clone();
    if args.tuning.seed.is_none() {
        config.seed = plan.member.id;
    }
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return EXIT_USAGE;
    }
    let verb = if plan.restart {
        "restarting member"
    } else {
        "joining as"
    };
    out!(
        "quorumkv cluster join: {verb} node {}  client {}  peer {}  zone {}  data {}",
        plan.member.id,
        plan.member.client_addr,
        plan.member.peer_addr,
        plan.member.zone.as_deref().unwrap_or("-"),
        plan.data_dir.display()
    );
    let via_text: Vec<String> = via.iter().map(ToString::to_string).collect();
    out!(
        "asking {} for admission; watch with `quorumkv cluster status`, Ctrl-C stops this node",
        via_text.join(",")
    );
    init_logging(args.tuning.log_format, &args.tuning.log_level);
    serve(config).await
}

/// One line of `leave` progress: the member's state and the shards still on it.
pub fn leave_progress(status: &ClusterStatus, node: NodeId) -> String {
    let Some(member) = status.member(node) else {
        return format!("node {node} is not in the map (epoch {})", status.epoch);
    };
    let shards = status.shards_on(node);
    let reachable = match member.reachable {
        Some(false) => ", unreachable",
        _ => "",
    };
    format!(
        "node {node}: {}{reachable}, replicas still on it: {} {}",
        format!("{:?}", member.member.state).to_lowercase(),
        shards.len(),
        if shards.is_empty() {
            String::new()
        } else {
            format!("(shards {shards:?})")
        }
    )
    .trim_end()
    .to_string()
}

fn is_gone(status: &ClusterStatus, node: NodeId) -> bool {
    status
        .member(node)
        .is_none_or(|m| m.member.state == MemberState::Removed)
}

async fn leave(args: LeaveArgs) -> u8 {
    let node = args.node_id;
    let mut conn = conn_via(&args.via);
    conn.tls = args.tls.clone();
    conn.auth = args.auth.clone();
    let mut client = match conn.client().await {
        Ok(client) => client,
        Err(e) => return report(e),
    };
    match client.admin(MetaCommand::Leave(node)).await {
        Ok(MetaResult::Applied { epoch }) => {
            out!("node {node} is leaving (map epoch {epoch}); moving its replicas away");
        }
        Ok(MetaResult::Rejected { reason }) => {
            eprintln!("error: the cluster refused to let node {node} leave: {reason}");
            return EXIT_NO;
        }
        Err(e) => return report(e),
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let mut last_line = String::new();
    let mut last_error: Option<ClientError> = None;
    loop {
        match client.cluster_status().await {
            Ok(status) if is_gone(&status, node) => {
                out!(
                    "node {node} removed after {} s",
                    started.elapsed().as_secs()
                );
                return EXIT_OK;
            }
            Ok(status) => {
                last_error = None;
                let line = leave_progress(&status, node);
                if line != last_line {
                    out!("[{:>4} s] {line}", started.elapsed().as_secs());
                    last_line = line;
                }
            }
            Err(e) => {
                if last_error.as_ref() != Some(&e) {
                    eprintln!(
                        "[{:>4} s] status unavailable: {e}",
                        started.elapsed().as_secs()
                    );
                }
                last_error = Some(e);
            }
        }
        if Instant::now() >= deadline {
            let state = if last_line.is_empty() {
                "its state is unknown".to_string()
            } else {
                last_line
            };
            eprintln!(
                "error: node {node} has not left after {} s ({state}); the leave goes on in the cluster: see `quorumkv cluster status`",
                args.timeout_s
            );
            return EXIT_TIMEOUT;
        }
        tokio::time::sleep(Duration::from_millis(LEAVE_POLL_INTERVAL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::client::{merge_cluster_status, NodeReport};
    use node::meta::{group_of_shard, GroupStatus, Member};
    use node::placement::{PlacementConfig, ShardMap};
    use node::raft::Role;
    use std::collections::BTreeMap;

    fn local(base: u16, id: NodeId) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], base + id as u16))
    }

    fn member(id: NodeId, state: MemberState) -> Member {
        Member {
            id,
            peer_addr: local(LOCAL_PEER_PORT_BASE, id),
            client_addr: local(LOCAL_CLIENT_PORT_BASE, id),
            zone: Some(format!("z{id}")),
            state,
        }
    }

    fn view(members: Vec<Member>, replicas: Vec<Vec<NodeId>>) -> ClusterView {
        ClusterView {
            node_id: 1,
            initialized: true,
            epoch: 4,
            placement: PlacementConfig {
                shards: replicas.len() as u32,
                ..PlacementConfig::default()
            },
            members,
            shard_map: ShardMap { replicas },
            meta_leader: Some(1),
            groups: Vec::new(),
        }
    }

    #[test]
    fn join_defaults_take_the_next_id_its_local_ports_and_a_dir_next_to_the_others() {
        let members = vec![
            member(1, MemberState::Active),
            member(2, MemberState::Active),
            member(3, MemberState::Active),
            member(4, MemberState::Removed),
        ];
        let v = view(members, vec![vec![1, 2, 3]]);
        let plan = plan_join(None, None, None, None, Path::new("ql"), None, Some(&v)).unwrap();
        assert_eq!(
            plan.member.id, 5,
            "ids are never reused, removed ones included"
        );
        assert_eq!(plan.member.client_addr.port(), LOCAL_CLIENT_PORT_BASE + 5);
        assert_eq!(plan.member.peer_addr.port(), LOCAL_PEER_PORT_BASE + 5);
        assert_eq!(plan.data_dir, Path::new("ql/node-5"));
        assert!(!plan.restart);
        // An existing member's id restarts it with its own addresses and zone.
        let again = plan_join(Some(2), None, None, None, Path::new("ql"), None, Some(&v)).unwrap();
        assert!(again.restart);
        assert_eq!(
            again.member,
            MemberConfig {
                id: 2,
                peer_addr: local(LOCAL_PEER_PORT_BASE, 2),
                client_addr: local(LOCAL_CLIENT_PORT_BASE, 2),
                zone: Some("z2".into())
            }
        );
        let removed = plan_join(Some(4), None, None, None, Path::new("ql"), None, Some(&v));
        assert!(removed.unwrap_err().contains("never reused"));
        let clash = plan_join(
            None,
            Some(local(LOCAL_CLIENT_PORT_BASE, 1)),
            None,
            None,
            Path::new("ql"),
            None,
            Some(&v),
        );
        assert!(clash.unwrap_err().contains("used by node 1"));
        assert!(plan_join(None, None, None, None, Path::new("ql"), None, None).is_err());
        let explicit = plan_join(
            Some(9),
            None,
            None,
            Some(Path::new("/d")),
            Path::new("ql"),
            Some("b".into()),
            None,
        )
        .unwrap();
        assert_eq!(
            (explicit.data_dir.as_path(), explicit.member.zone.as_deref()),
            (Path::new("/d"), Some("b"))
        );
        assert!(plan_join(Some(70_000), None, None, None, Path::new("ql"), None, None).is_err());
    }

    fn status_with(state: MemberState, shard0_voters: Vec<NodeId>) -> ClusterStatus {
        let members = vec![
            member(1, MemberState::Active),
            member(2, MemberState::Active),
            member(3, state),
        ];
        let mut v = view(members, vec![vec![1, 2], vec![2, 1]]);
        v.groups = vec![GroupStatus {
            group: group_of_shard(0),
            role: Role::Leader,
            term: 3,
            leader: Some(1),
            voters: shard0_voters,
            learners: vec![],
            commit_index: 50,
            applied_index: 50,
            snapshot_index: 0,
            match_index: BTreeMap::from([(2, 45)]),
            keys: 7,
        }];
        merge_cluster_status(&[NodeReport {
            node_id: 1,
            view: Ok(v),
        }])
        .unwrap()
    }

    #[test]
    fn leave_progress_names_the_shards_still_on_the_node() {
        let moving = status_with(MemberState::Leaving, vec![1, 2, 3]);
        assert_eq!(
            leave_progress(&moving, 3),
            "node 3: leaving, unreachable, replicas still on it: 1 (shards [0])"
        );
        assert!(!is_gone(&moving, 3));
        let moved = status_with(MemberState::Leaving, vec![1, 2]);
        assert_eq!(
            leave_progress(&moved, 3),
            "node 3: leaving, unreachable, replicas still on it: 0"
        );
        assert!(is_gone(&status_with(MemberState::Removed, vec![1, 2]), 3));
        assert!(is_gone(&moved, 9), "a node missing from the map is gone");
    }

    #[test]
    fn the_status_table_shows_nodes_and_shards() {
        let table = status_table(&status_with(MemberState::Active, vec![1, 2, 3]));
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("map epoch 4, 2 shards, replication factor 3"),
            "{table}"
        );
        assert!(
            lines[2].contains("127.0.0.1:7401")
                && lines[2].contains("yes")
                && lines[2].contains("z1"),
            "{table}"
        );
        assert!(lines[4].contains("NO"), "{table}");
        let shard0 = lines
            .iter()
            .find(|l| l.starts_with("0 "))
            .expect("shard 0 row");
        assert!(shard0.contains("1:0 2:5 3:?"), "{shard0}");
        let meta = lines
            .iter()
            .find(|l| l.starts_with("meta"))
            .expect("meta row");
        assert!(meta.ends_with('-'), "no leader, no lag: {meta}");
    }
}
