//! `quorumkv local`: a whole cluster on loopback, as child `quorumkv server` processes.

use crate::output::out;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Args;
use node::config::{
    MemberConfig, ServerConfig, LOCAL_CLIENT_PORT_BASE, LOCAL_PEER_PORT_BASE, LOCAL_REDIS_PORT_BASE,
};

use crate::cli::{EXIT_OK, EXIT_SERVER, EXIT_USAGE};

#[derive(Args, Debug)]
pub struct LocalArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Directory for data, configs and logs (created if needed).
    #[arg(long, default_value = "quorumkv-local")]
    dir: PathBuf,
    /// Client ports are BASE+1..BASE+N, peer ports BASE+101..BASE+100+N, Redis ports
    /// BASE+201..BASE+200+N.
    #[arg(long, default_value_t = LOCAL_CLIENT_PORT_BASE)]
    base_port: u16,
    #[arg(long)]
    snapshot_interval_entries: Option<u64>,
    /// Shards the keys are spread over (fixed when the cluster is created).
    #[arg(long)]
    shards: Option<u32>,
    /// Replicas per shard.
    #[arg(long)]
    replication_factor: Option<usize>,
    /// A node silent this long is marked dead and its replicas are re-created elsewhere.
    #[arg(long)]
    dead_node_timeout_ms: Option<u64>,
    /// TLS on every port: generates a throwaway CA and certificates in DIR/tls (a new CA at
    /// every start) and gives each node its own.
    #[arg(long)]
    tls: bool,
    /// Require authentication (users and roles): the first admin is `admin`, its password
    /// QUORUMKV_ADMIN_PASSWORD or else generated once into DIR/admin-password (kept across
    /// restarts, since the cluster keeps its users).
    #[arg(long)]
    auth: bool,
    /// Runtime worker threads of each node (connections and peer links; each node's event
    /// loop has a thread of its own besides). Default: the machine's cores divided among the
    /// nodes, at least one: the nodes share this machine, and more threads than cores only
    /// switch between each other (3 nodes on 2 cores: one worker each, 17 % more writes/s
    /// than two, docs/BENCHMARKS.md).
    #[arg(long, env = "QUORUMKV_WORKER_THREADS", value_parser = crate::cli::worker_threads_parser())]
    worker_threads: Option<usize>,
}

impl LocalArgs {
    fn node_worker_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / usize::from(self.nodes.max(1))).max(1)
        })
    }
}

/// The admin password of `local --auth`: from the environment (not written anywhere), or the
/// one in DIR/admin-password, or a new random one written there (owner-only permissions).
/// Returns the file the nodes read, if any.
fn admin_password_file(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    if std::env::var(node::config::ADMIN_PASSWORD_ENV).is_ok_and(|p| !p.is_empty()) {
        return Ok(None);
    }
    let path = dir.join("admin-password");
    if path.exists() {
        return Ok(Some(path));
    }
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    writeln!(file, "{password}")?;
    Ok(Some(path))
}

/// Node certificates made beyond `--nodes`, for nodes added with `cluster join`.
const SPARE_NODE_CERTS: u16 = 4;
/// How long the throwaway certificates are valid, in days.
const LOCAL_CERT_DAYS: i64 = 30;

/// Writes DIR/tls/ca.crt, node-ID.crt/.key for ids 1..=last_id and client.crt/.key.
fn make_certs(dir: &Path, last_id: u16) -> std::io::Result<PathBuf> {
    use node::tls::certs::{LocalCa, Validity};
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir)?;
    let validity = Validity::around_now(1, LOCAL_CERT_DAYS);
    let ca = LocalCa::generate("quorumkv local CA", validity)?;
    ca.write_cert(&tls_dir)?;
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    for id in 1..=last_id {
        let id = u64::from(id);
        ca.issue_node(id, &hosts, validity)?
            .write(&tls_dir, &format!("node-{id}"))?;
    }
    ca.issue_client("quorumkv local client", validity)?
        .write(&tls_dir, "client")?;
    Ok(tls_dir)
}

struct Children(Vec<(u64, Child)>);

impl Drop for Children {
    /// Never leave servers behind, even on an error path.
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub async fn run(args: LocalArgs) -> u8 {
    if args.nodes == 0 || args.nodes > 99 {
        eprintln!("error: bad config: `nodes`: must be 1..=99");
        return EXIT_USAGE;
    }
    let peer_base = if args.base_port == LOCAL_CLIENT_PORT_BASE {
        LOCAL_PEER_PORT_BASE
    } else {
        args.base_port.saturating_add(100)
    };
    let redis_base = if args.base_port == LOCAL_CLIENT_PORT_BASE {
        LOCAL_REDIS_PORT_BASE
    } else {
        args.base_port.saturating_add(200)
    };
    let redis_addr = |id: u64| SocketAddr::from(([127, 0, 0, 1], redis_base + id as u16));
    let members: Vec<MemberConfig> = (1..=args.nodes)
        .map(|i| MemberConfig {
            id: u64::from(i),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], peer_base + i)),
            client_addr: SocketAddr::from(([127, 0, 0, 1], args.base_port + i)),
            zone: None,
        })
        .collect();
    if let Err(e) = fs::create_dir_all(&args.dir) {
        eprintln!("error: cannot create {}: {e}", args.dir.display());
        return EXIT_SERVER;
    }
    let dir = fs::canonicalize(&args.dir).unwrap_or(args.dir.clone());
    let tls_dir = if args.tls {
        match make_certs(&dir, args.nodes.saturating_add(SPARE_NODE_CERTS)) {
            Ok(tls_dir) => Some(tls_dir),
            Err(e) => {
                eprintln!(
                    "error: cannot make TLS certificates in {}: {e}",
                    dir.display()
                );
                return EXIT_SERVER;
            }
        }
    } else {
        None
    };
    let password_file = if args.auth {
        match admin_password_file(&dir) {
            Ok(file) => file,
            Err(e) => {
                eprintln!(
                    "error: cannot write the admin password in {}: {e}",
                    dir.display()
                );
                return EXIT_SERVER;
            }
        }
    } else {
        None
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find the quorumkv executable: {e}");
            return EXIT_SERVER;
        }
    };
    let mut children = Children(Vec::new());
    for member in &members {
        let tls = tls_dir.as_deref();
        match spawn_node(
            &exe,
            &dir,
            member,
            &members,
            redis_addr(member.id),
            (tls, password_file.as_deref()),
            &args,
        ) {
            Ok(child) => children.0.push((member.id, child)),
            Err(e) => {
                eprintln!("error: cannot start node {}: {e}", member.id);
                return EXIT_SERVER;
            }
        }
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.client_addr.to_string()).collect();
    out!(
        "quorumkv local: {} nodes ({} runtime worker threads each), data and logs in {}",
        args.nodes,
        args.node_worker_threads(),
        dir.display()
    );
    for (member, (_, child)) in members.iter().zip(&children.0) {
        out!(
            "  node {}  client {}  redis {}  peer {}  pid {}  log {}",
            member.id,
            member.client_addr,
            redis_addr(member.id),
            member.peer_addr,
            child.id(),
            dir.join(format!("node-{}.log", member.id)).display()
        );
    }
    out!("endpoints: {}", endpoints.join(","));
    if let Some(tls_dir) = &tls_dir {
        let ca = tls_dir.join("ca.crt");
        out!(
            "TLS on every port (client, peer, redis, admin); peers use mutual TLS; certificates in {}",
            tls_dir.display()
        );
        out!("try: export QUORUMKV_CA={}", ca.display());
        out!("     quorumkv put hello world && quorumkv get hello && quorumkv cluster status");
        out!(
            "redis: redis-cli --tls --cacert {} -p {} SET a 1",
            ca.display(),
            redis_addr(1).port()
        );
    } else {
        out!("try: quorumkv put hello world && quorumkv get hello && quorumkv cluster status");
        out!(
            "redis: redis-cli -p {} SET a 1 (any node's redis port; every node answers every key)",
            redis_addr(1).port()
        );
    }
    if args.auth {
        out!("auth on: every request needs a user; the first admin is `admin`");
        match &password_file {
            Some(file) => {
                out!(
                    "try: export QUORUMKV_USER=admin QUORUMKV_PASSWORD_FILE={}",
                    file.display()
                );
                out!(
                    "     quorumkv user add alice --role write --new-password-file FILE   (or --token)"
                );
                out!(
                    "redis: AUTH admin $(cat {})   (then any command)",
                    file.display()
                );
            }
            None => {
                out!("try: export QUORUMKV_USER=admin QUORUMKV_PASSWORD=\"$QUORUMKV_ADMIN_PASSWORD\"");
                out!("redis: AUTH admin <the password>   (then any command)");
            }
        }
        if tls_dir.is_none() {
            out!("warning: auth without --tls sends passwords in clear text");
        }
    }
    out!("grow: quorumkv cluster join (another terminal); shrink: quorumkv cluster leave --node-id N");
    out!("Ctrl-C stops all nodes.");

    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let signal = crate::cli::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut signal => break,
            _ = ticker.tick() => {
                for (id, child) in &mut children.0 {
                    if let Ok(Some(status)) = child.try_wait() {
                        eprintln!("node {id} exited ({status}); see {}", dir.join(format!("node-{id}.log")).display());
                    }
                }
                children.0.retain_mut(|(_, child)| matches!(child.try_wait(), Ok(None)));
                if children.0.is_empty() {
                    eprintln!("all nodes exited");
                    return EXIT_SERVER;
                }
            }
        }
    }
    out!("stopping {} nodes...", children.0.len());
    stop_all(&mut children).await;
    EXIT_OK
}

fn spawn_node(
    exe: &Path,
    dir: &Path,
    me: &MemberConfig,
    members: &[MemberConfig],
    redis_addr: SocketAddr,
    (tls_dir, password_file): (Option<&Path>, Option<&Path>),
    args: &LocalArgs,
) -> std::io::Result<Child> {
    let mut config = ServerConfig {
        node_id: me.id,
        members: members.to_vec(),
        redis_addr: Some(redis_addr),
        data_dir: dir.join(format!("node-{}", me.id)),
        seed: me.id,
        ..ServerConfig::default()
    };
    if let Some(n) = args.snapshot_interval_entries {
        config.snapshot_interval_entries = n;
    }
    if let Some(shards) = args.shards {
        config.cluster.shards = shards;
    }
    if let Some(rf) = args.replication_factor {
        config.cluster.replication_factor = rf;
    }
    if let Some(ms) = args.dead_node_timeout_ms {
        config.cluster.dead_node_timeout_ms = ms;
    }
    if let Some(tls_dir) = tls_dir {
        config.tls.cert_file = Some(tls_dir.join(format!("node-{}.crt", me.id)));
        config.tls.key_file = Some(tls_dir.join(format!("node-{}.key", me.id)));
        config.tls.ca_file = Some(tls_dir.join("ca.crt"));
    }
    if args.auth {
        config.auth.enabled = true;
        config.auth.admin_password_file = password_file.map(Path::to_path_buf);
    }
    let text = toml::to_string(&config).map_err(std::io::Error::other)?;
    let config_path = dir.join(format!("node-{}.toml", me.id));
    fs::write(&config_path, text)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node-{}.log", me.id)))?;
    Command::new(exe)
        .arg("server")
        .arg("--config")
        .arg(&config_path)
        .arg("--worker-threads")
        .arg(args.node_worker_threads().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// SIGTERM (graceful) to every child, then SIGKILL after 5 s.
async fn stop_all(children: &mut Children) {
    for (_, child) in &children.0 {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
    }
    for _ in 0..50 {
        if children
            .0
            .iter_mut()
            .all(|(_, c)| !matches!(c.try_wait(), Ok(None)))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Drop kills whatever is left.
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        local: LocalArgs,
    }

    fn local(args: &[&str]) -> LocalArgs {
        let argv = std::iter::once("local").chain(args.iter().copied());
        Wrapper::try_parse_from(argv).expect("valid flags").local
    }

    #[test]
    fn nodes_share_the_machines_cores_with_at_least_one_worker_each() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let one_node = local(&["--nodes", "1"]).node_worker_threads();
        assert_eq!(one_node, cores);
        let three = local(&["--nodes", "3"]).node_worker_threads();
        assert!(
            three >= 1 && three * 3 <= cores.max(3),
            "{three} workers for 3 nodes on {cores} cores"
        );
        assert_eq!(local(&["--nodes", "999"]).node_worker_threads(), 1);
        assert_eq!(
            local(&["--nodes", "3", "--worker-threads", "4"]).node_worker_threads(),
            4
        );
    }
}
