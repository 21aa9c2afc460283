//! Command-line parsing and the client commands.

use crate::output::out;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use node::addr::{resolve_all, HostPort};
use node::auth::{Credentials, Secret};
use node::client::{CasOutcome, Client, ClientError, ClientOptions, NodeStatus};
use node::config::{MemberConfig, ServerConfig, DEFAULT_CLIENT_PORT, LOCAL_CLIENT_PORT_BASE};
use node::config_layers::{apply_env, parse_member_spec, resolve_names, set};
use node::kv::{Expected, KeyRange, Versioned};
use node::server::Server;
use node::tls::ClientTls;
use node::transport::stream::Connector;
use serde_json::json;

pub const EXIT_OK: u8 = 0;
pub const EXIT_NO: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_NO_QUORUM: u8 = 4;
pub const EXIT_UNKNOWN: u8 = 5;
pub const EXIT_SERVER: u8 = 6;
pub const EXIT_TIMEOUT: u8 = 7;
pub const EXIT_DENIED: u8 = 8;

#[derive(Parser, Debug)]
#[command(
    name = "quorumkv",
    version,
    about = "A linearizable, replicated key-value store"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node (no arguments: a single-node cluster on 127.0.0.1, data in ./quorumkv-data).
    Server(ServerArgs),
    /// Start a cluster of N nodes on loopback as child processes; Ctrl-C stops them all.
    Local(crate::local::LocalArgs),
    /// Print the value of a key (exit 1 when absent).
    Get {
        key: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Set a key (the value from the argument, or from `--value-file`: a path, or `-` for
    /// standard input, e.g. for values larger than a command line allows).
    Put {
        key: String,
        #[arg(required_unless_present = "value_file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input), byte for byte.
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        value_file: Option<PathBuf>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a key.
    Del {
        key: String,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Compare-and-swap: write NEW_VALUE only if the key matches the expectation (exit 1 if not).
    Cas {
        key: String,
        new_value: String,
        /// Expected current value.
        #[arg(long, group = "expectation")]
        expect: Option<String>,
        /// Expected current version.
        #[arg(long, group = "expectation")]
        expect_version: Option<u64>,
        /// The key must not exist (put-if-absent).
        #[arg(long, group = "expectation")]
        expect_absent: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// List keys in order: by prefix, or in [start, end).
    Scan {
        #[arg(long, conflicts_with_all = ["start", "end"])]
        prefix: Option<String>,
        #[arg(long)]
        start: Option<String>,
        #[arg(long)]
        end: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print the values of several keys (exit 1 when any is absent).
    Mget {
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Show every node of the cluster: id, address, process id, role, term, indexes.
    Status {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Closed-loop benchmark: ops/s and latency percentiles.
    Bench(crate::bench::BenchArgs),
    /// Online backup of every shard into a directory (`backup --out DIR`), or check one
    /// (`backup verify DIR`).
    Backup(crate::backup::BackupArgs),
    /// Write a backup's keys into a running cluster (verified first; refuses a cluster that
    /// holds data unless --force).
    Restore(crate::backup::RestoreArgs),
    /// Node-local health check over the admin port (for container healthchecks): exit 0 when
    /// the node answers 200, 1 when it answers otherwise, 3 when it cannot be reached.
    Health(crate::health::HealthArgs),
    /// Members and shards: status, adding a node, removing one.
    Cluster {
        #[command(subcommand)]
        command: crate::cluster::ClusterCommand,
    },
    /// Users and roles (admin only; clusters with auth enabled): add, list, remove, set-role,
    /// passwd.
    User {
        #[command(subcommand)]
        command: crate::user::UserCommand,
    },
}

#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Comma-separated client addresses (HOST:PORT, names allowed) of any nodes (default:
    /// `server`'s and `local`'s).
    #[arg(long, env = "QUORUMKV_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<HostPort>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Give up on an operation after this long (at least 1).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Who the client is, for clusters with auth enabled. Values from the environment are never
/// shown by --help.
#[derive(Args, Debug, Clone, Default)]
pub struct AuthArgs {
    /// User name (with --password or --password-file).
    #[arg(long, env = "QUORUMKV_USER", hide_env_values = true)]
    pub user: Option<String>,
    /// The user's password or token (prefer QUORUMKV_PASSWORD or --password-file: a command
    /// line is visible to other local users).
    #[arg(long, env = "QUORUMKV_PASSWORD", hide_env_values = true, value_parser = parse_secret,
        conflicts_with = "password_file")]
    pub password: Option<Secret>,
    /// File whose first line is the password or token.
    #[arg(long, env = "QUORUMKV_PASSWORD_FILE", hide_env_values = true)]
    pub password_file: Option<PathBuf>,
}

fn parse_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret::new(text))
}

/// The first line of a secret file.
pub fn read_secret_file(path: &std::path::Path) -> Result<Secret, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::InvalidArgument(format!("cannot read {}: {e}", path.display()))
    })?;
    Ok(Secret::new(text.lines().next().unwrap_or_default()))
}

impl AuthArgs {
    /// None without --user; a user without a secret is a usage error.
    pub fn credentials(&self) -> Result<Option<Credentials>, ClientError> {
        let Some(user) = &self.user else {
            if self.password.is_some() || self.password_file.is_some() {
                return Err(ClientError::InvalidArgument(
                    "--password/--password-file need --user (or QUORUMKV_USER)".into(),
                ));
            }
            return Ok(None);
        };
        let secret = match (&self.password, &self.password_file) {
            (Some(secret), _) => secret.clone(),
            (None, Some(path)) => read_secret_file(path)?,
            (None, None) => {
                return Err(ClientError::InvalidArgument(format!(
                    "--user {user} needs --password, --password-file, QUORUMKV_PASSWORD or QUORUMKV_PASSWORD_FILE"
                )))
            }
        };
        Ok(Some(Credentials {
            user: user.clone(),
            secret,
        }))
    }
}

/// How a client reaches nodes that serve TLS.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM): connect with TLS and trust nodes it signed.
    #[arg(long = "ca", id = "client_ca", env = "QUORUMKV_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present, for nodes that require one (with --key).
    #[arg(
        long = "cert",
        id = "client_cert",
        env = "QUORUMKV_CERT",
        requires = "client_ca"
    )]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(
        long = "key",
        id = "client_key",
        env = "QUORUMKV_KEY",
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,
    /// Check every node's certificate against this name (default: the address dialled, or any
    /// member's name `node-<id>.quorumkv`).
    #[arg(
        long = "tls-server-name",
        id = "client_tls_server_name",
        env = "QUORUMKV_TLS_SERVER_NAME",
        requires = "client_ca"
    )]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// Plaintext without --ca; else TLS with the files read now.
    pub fn connector(&self) -> Result<Connector, ClientError> {
        let Some(ca) = &self.ca else {
            if self.cert.is_some() || self.key.is_some() {
                return Err(ClientError::InvalidArgument(
                    "--cert and --key need --ca".into(),
                ));
            }
            return Ok(Connector::plaintext());
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => {
                return Err(ClientError::InvalidArgument(
                    "--cert and --key go together".into(),
                ))
            }
        };
        let tls = ClientTls::from_files(ca, identity, self.tls_server_name.clone())
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        Ok(Connector::tls(Arc::new(tls)))
    }
}

impl ConnArgs {
    /// The endpoints with their names looked up (a name that does not resolve is an error).
    pub async fn resolved_endpoints(&self) -> Result<Vec<SocketAddr>, ClientError> {
        if self.endpoints.is_empty() {
            return Ok(self.default_endpoints());
        }
        let wait = Duration::from_millis(self.timeout_ms);
        resolve_all(&self.endpoints, wait)
            .await
            .map_err(|e| ClientError::InvalidArgument(format!("--endpoints: {e}")))
    }

    pub fn default_endpoints(&self) -> Vec<SocketAddr> {
        let mut defaults = vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_CLIENT_PORT))];
        defaults.extend(
            (1..=3).map(|i| SocketAddr::from(([127, 0, 0, 1], LOCAL_CLIENT_PORT_BASE + i))),
        );
        defaults
    }

    /// A client on the resolved endpoints.
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::new(self.resolved_endpoints().await?, self.options()?)
    }

    /// The client's options; reads the TLS files if any are given.
    pub fn options(&self) -> Result<ClientOptions, ClientError> {
        Ok(ClientOptions {
            operation_timeout: Duration::from_millis(self.timeout_ms),
            request_timeout: Duration::from_millis(self.timeout_ms.min(3000)),
            connect_timeout: Duration::from_millis(500),
            connector: self.tls.connector()?,
            credentials: self.auth.credentials()?,
            ..ClientOptions::default()
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    #[arg(long)]
    id: Option<u64>,
    /// A cluster member as ID=PEER_ADDR,CLIENT_ADDR (repeat for each member, this node included).
    #[arg(long = "member", value_name = "ID=PEER,CLIENT")]
    members: Vec<String>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: ServerTuning,
}

/// Server flags shared by `server` and `cluster join`.
#[derive(Args, Debug)]
pub struct ServerTuning {
    /// TOML config file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub snapshot_interval_entries: Option<u64>,
    /// Shards of a new cluster (fixed at bootstrap; a joining node takes the cluster's).
    #[arg(long)]
    pub shards: Option<u32>,
    /// Replicas per shard of a new cluster (fixed at bootstrap).
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// A member silent this long is marked dead and its replicas are re-created elsewhere.
    #[arg(long)]
    pub dead_node_timeout_ms: Option<u64>,
    /// Address to bind the peer port (e.g. 0.0.0.0:7380 in a container); default: this node's
    /// peer address in the member list (the address others use, which may differ behind NAT).
    #[arg(long)]
    pub listen_peer_addr: Option<SocketAddr>,
    /// Address to bind the client port; default: this node's client address in the member list.
    #[arg(long)]
    pub listen_client_addr: Option<SocketAddr>,
    /// HTTP admin port (/metrics, /health/live, /health/ready), e.g. 0.0.0.0:9379; default: none.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// Serve the Redis protocol (RESP2/RESP3) on this address (default: no Redis port).
    #[arg(long)]
    pub redis_addr: Option<SocketAddr>,
    /// This node's certificate chain (PEM; must name `node-<id>.quorumkv`): TLS on every port
    /// (with --tls-key and --tls-ca).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that sign every member's certificate.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Clients of the client, Redis and admin ports must present a certificate from --tls-ca.
    #[arg(long)]
    pub tls_client_cert_required: bool,
    /// Require authentication: every request needs a user whose role allows it
    /// (docs/SECURITY.md). A new cluster needs its first admin's password
    /// (QUORUMKV_ADMIN_PASSWORD or --admin-password-file).
    #[arg(long)]
    pub auth: bool,
    /// The admin user this node creates in a new cluster and acts as (default: admin).
    #[arg(long)]
    pub admin_user: Option<String>,
    /// File whose first line is that admin's password (QUORUMKV_ADMIN_PASSWORD wins).
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,
    /// Threads of the node's async runtime, which run its connections and peer links (the
    /// event loop has the main thread to itself); default: one per CPU core.
    #[arg(long, env = "QUORUMKV_WORKER_THREADS", value_parser = worker_threads_parser())]
    pub worker_threads: Option<usize>,
    #[arg(long, env = "QUORUMKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// tracing filter, e.g. "info" or "node=debug".
    #[arg(long, env = "QUORUMKV_LOG", default_value = "info")]
    pub log_level: String,
}

/// `QUORUMKV_*` variables that belong to the CLI, not to a config field.
const CLI_VARIABLES: [&str; 15] = [
    "QUORUMKV_ADMIN_PASSWORD",
    "QUORUMKV_WORKER_THREADS",
    "QUORUMKV_USER",
    "QUORUMKV_PASSWORD",
    "QUORUMKV_PASSWORD_FILE",
    "QUORUMKV_NEW_PASSWORD",
    "QUORUMKV_TOKEN",
    "QUORUMKV_ENDPOINTS",
    "QUORUMKV_LOG",
    "QUORUMKV_LOG_FORMAT",
    "QUORUMKV_HEALTH_ADDR",
    "QUORUMKV_CA",
    "QUORUMKV_CERT",
    "QUORUMKV_KEY",
    "QUORUMKV_TLS_SERVER_NAME",
];
/// How long a starting server waits for the members' host names to resolve (the containers
/// of a cluster's other members may not exist yet).
const RESOLVE_WAIT_S: u64 = 60;

fn integer(n: impl TryInto<i64>, flag: &str) -> Result<toml::Value, String> {
    n.try_into()
        .map(toml::Value::Integer)
        .map_err(|_| format!("--{flag} is too large"))
}

impl ServerTuning {
    /// The configuration, layered: flag > environment (`QUORUMKV_*`) > config file > default.
    /// `more_flags` adds the caller's own flags to the table; host names are looked up last.
    pub async fn layered_config(
        &self,
        more_flags: impl FnOnce(&mut toml::Table) -> Result<(), String>,
    ) -> Result<ServerConfig, String> {
        let mut table = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                // Fields are checked once the layers are merged (`ServerConfig::from_table`):
                // the file's member addresses may be host names, looked up only then.
                text.parse::<toml::Table>()
                    .map_err(|e| format!("{} ({})", e.message(), path.display()))?
            }
            None => toml::Table::new(),
        };
        apply_env(&mut table, std::env::vars(), &CLI_VARIABLES).map_err(|e| e.to_string())?;
        self.apply_flags(&mut table)?;
        more_flags(&mut table)?;
        let names = resolve_names(&mut table, Duration::from_secs(RESOLVE_WAIT_S))
            .await
            .map_err(|e| e.to_string())?;
        let mut config = ServerConfig::from_table(table).map_err(|e| match &self.config {
            Some(path) => format!("{e} (after applying {} and QUORUMKV_*)", path.display()),
            None => e.to_string(),
        })?;
        config.peer_names = names;
        let admin_password = std::env::var(node::config::ADMIN_PASSWORD_ENV).ok();
        config.auth.load_admin_password(admin_password)?;
        Ok(config)
    }

    fn apply_flags(&self, table: &mut toml::Table) -> Result<(), String> {
        let text = |s: String| toml::Value::String(s);
        if let Some(seed) = self.seed {
            set(table, "seed", integer(seed, "seed")?);
        }
        if let Some(shards) = self.shards {
            set(table, "cluster.shards", integer(shards, "shards")?);
        }
        if let Some(rf) = self.replication_factor {
            set(
                table,
                "cluster.replication_factor",
                integer(rf, "replication-factor")?,
            );
        }
        if let Some(ms) = self.dead_node_timeout_ms {
            set(
                table,
                "cluster.dead_node_timeout_ms",
                integer(ms, "dead-node-timeout-ms")?,
            );
        }
        if let Some(n) = self.snapshot_interval_entries {
            set(
                table,
                "snapshot_interval_entries",
                integer(n, "snapshot-interval-entries")?,
            );
        }
        if let Some(addr) = self.listen_peer_addr {
            set(table, "listen_peer_addr", text(addr.to_string()));
        }
        if let Some(addr) = self.listen_client_addr {
            set(table, "listen_client_addr", text(addr.to_string()));
        }
        if let Some(addr) = self.admin_addr {
            set(table, "admin_addr", text(addr.to_string()));
        }
        if let Some(addr) = self.redis_addr {
            set(table, "redis_addr", text(addr.to_string()));
        }
        let path = |p: &PathBuf| text(p.display().to_string());
        for (field, value) in [
            ("tls.cert_file", &self.tls_cert),
            ("tls.key_file", &self.tls_key),
            ("tls.ca_file", &self.tls_ca),
        ] {
            if let Some(file) = value {
                set(table, field, path(file));
            }
        }
        if self.tls_client_cert_required {
            set(
                table,
                "tls.client_cert_required",
                toml::Value::Boolean(true),
            );
        }
        if self.auth {
            set(table, "auth.enabled", toml::Value::Boolean(true));
        }
        if let Some(user) = &self.admin_user {
            set(table, "auth.admin_user", text(user.clone()));
        }
        if let Some(file) = &self.admin_password_file {
            set(table, "auth.admin_password_file", path(file));
        }
        Ok(())
    }
}

/// Upper bound of `--worker-threads`.
pub const MAX_WORKER_THREADS: usize = 1024;

/// `--worker-threads`: 1..=MAX_WORKER_THREADS.
pub fn worker_threads_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=MAX_WORKER_THREADS as u64)
}

impl Cli {
    /// The runtime's worker threads a node command asks for (None: tokio's default, one per
    /// core).
    fn worker_threads(&self) -> Option<usize> {
        match &self.command {
            Command::Server(args) => args.tuning.worker_threads,
            Command::Cluster { command } => command.worker_threads(),
            _ => None,
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.worker_threads() {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SERVER);
        }
    };
    let code = runtime.block_on(run(cli));
    ExitCode::from(code)
}

async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Server(args) => run_server(args).await,
        Command::Local(args) => crate::local::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Backup(args) => crate::backup::run_backup(args).await,
        Command::Restore(args) => crate::backup::run_restore(args).await,
        Command::Get { key, conn } => {
            client_command(&conn, |c| Box::pin(get(c, key, conn.json))).await
        }
        Command::Put {
            key,
            value,
            value_file,
            conn,
        } => {
            let value = match read_value(value, value_file.as_deref()) {
                Ok(value) => value,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_USAGE;
                }
            };
            client_command(&conn, |c| Box::pin(put(c, key, value, conn.json))).await
        }
        Command::Del { key, conn } => {
            client_command(&conn, |c| Box::pin(del(c, key, conn.json))).await
        }
        Command::Cas {
            key,
            new_value,
            expect,
            expect_version,
            expect_absent,
            conn,
        } => {
            let expected = match (expect, expect_version, expect_absent) {
                (Some(value), None, false) => Expected::Value(value.into_bytes()),
                (None, Some(version), false) => Expected::Version(version),
                (None, None, true) => Expected::Absent,
                _ => {
                    eprintln!(
                        "error: give exactly one of --expect, --expect-version, --expect-absent"
                    );
                    return EXIT_USAGE;
                }
            };
            client_command(&conn, |c| {
                Box::pin(cas(c, key, expected, new_value, conn.json))
            })
            .await
        }
        Command::Scan {
            prefix,
            start,
            end,
            limit,
            conn,
        } => {
            let range = match prefix {
                Some(prefix) => KeyRange::Prefix(prefix.into_bytes()),
                None => KeyRange::Between {
                    start: start.unwrap_or_default().into_bytes(),
                    end: end.map(String::into_bytes),
                },
            };
            client_command(&conn, |c| Box::pin(scan(c, range, limit, conn.json))).await
        }
        Command::Mget { keys, conn } => {
            client_command(&conn, |c| Box::pin(mget(c, keys, conn.json))).await
        }
        Command::Status { conn } => status(&conn).await,
        Command::Health(args) => crate::health::run(args).await,
        Command::Cluster { command } => crate::cluster::run(command).await,
        Command::User { command } => crate::user::run(command).await,
    }
}

pub type CommandFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u8, ClientError>> + 'a>>;

/// `client_command` for the other command modules.
pub async fn client_command_pub<F>(conn: &ConnArgs, command: F) -> u8
where
    F: for<'a> FnOnce(&'a mut Client) -> CommandFuture<'a>,
{
    client_command(conn, command).await
}

async fn client_command<F>(conn: &ConnArgs, command: F) -> u8
where
    F: for<'a> FnOnce(&'a mut Client) -> CommandFuture<'a>,
{
    let mut client = match conn.client().await {
        Ok(client) => client,
        Err(e) => return report(e),
    };
    match command(&mut client).await {
        Ok(code) => code,
        Err(e) => report(e),
    }
}

/// Prints a client error as one line and maps it to its exit code.
pub fn report(error: ClientError) -> u8 {
    eprintln!("error: {error}");
    exit_code(&error)
}

pub fn exit_code(error: &ClientError) -> u8 {
    match error {
        ClientError::Unknown { .. } => EXIT_UNKNOWN,
        ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
        ClientError::NoQuorum { .. } => EXIT_NO_QUORUM,
        ClientError::TooLarge(_) | ClientError::InvalidArgument(_) | ClientError::Tls(_) => {
            EXIT_USAGE
        }
        ClientError::Failed { .. } => EXIT_NO_QUORUM,
        ClientError::Denied(_) => EXIT_DENIED,
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn versioned_json(v: &Option<Versioned>) -> serde_json::Value {
    match v {
        Some(v) => json!({"value": text(&v.value), "version": v.version}),
        None => serde_json::Value::Null,
    }
}

async fn get(client: &mut Client, key: String, as_json: bool) -> Result<u8, ClientError> {
    let found = client.get(key.as_bytes()).await?;
    if as_json {
        out!(
            "{}",
            json!({"key": key, "found": found.is_some(), "value": found.as_ref().map(|v| text(&v.value)), "version": found.as_ref().map(|v| v.version)})
        );
    } else if let Some(v) = &found {
        out!("{}", text(&v.value));
    } else {
        eprintln!("(not found)");
    }
    Ok(if found.is_some() { EXIT_OK } else { EXIT_NO })
}

async fn mget(client: &mut Client, keys: Vec<String>, as_json: bool) -> Result<u8, ClientError> {
    let raw: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    let found = client.get_many(&raw).await?;
    if as_json {
        let items: Vec<_> = keys
            .iter()
            .zip(&found)
            .map(|(key, v)| json!({"key": key, "found": v.is_some(), "value": v.as_ref().map(|v| text(&v.value)), "version": v.as_ref().map(|v| v.version)}))
            .collect();
        out!("{}", json!({ "items": items }));
    } else {
        for (key, value) in keys.iter().zip(&found) {
            match value {
                Some(v) => out!("{key}\t{}", text(&v.value)),
                None => eprintln!("{key}: (not found)"),
            }
        }
    }
    Ok(if found.iter().all(Option::is_some) {
        EXIT_OK
    } else {
        EXIT_NO
    })
}

/// The value of `put`: the argument, or the bytes of `--value-file` (`-`: standard input).
fn read_value(value: Option<String>, file: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    match (value, file) {
        (Some(value), None) => Ok(value.into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
                .map_err(|e| format!("cannot read the value from standard input: {e}"))?;
            Ok(bytes)
        }
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("cannot read --value-file {}: {e}", path.display())),
        _ => Err("give the value either as an argument or with --value-file".into()),
    }
}

async fn put(
    client: &mut Client,
    key: String,
    value: Vec<u8>,
    as_json: bool,
) -> Result<u8, ClientError> {
    let version = client.put(key.as_bytes(), &value).await?;
    if as_json {
        out!("{}", json!({"key": key, "version": version}));
    } else {
        out!("OK (version {version})");
    }
    Ok(EXIT_OK)
}

async fn del(client: &mut Client, key: String, as_json: bool) -> Result<u8, ClientError> {
    let previous = client.delete(key.as_bytes()).await?;
    if as_json {
        out!(
            "{}",
            json!({"key": key, "deleted": previous.is_some(), "previous": versioned_json(&previous)})
        );
    } else if previous.is_some() {
        out!("OK (deleted)");
    } else {
        out!("OK (was absent)");
    }
    Ok(EXIT_OK)
}

async fn cas(
    client: &mut Client,
    key: String,
    expected: Expected,
    new_value: String,
    as_json: bool,
) -> Result<u8, ClientError> {
    let outcome = if expected == Expected::Absent {
        client
            .put_if_absent(key.as_bytes(), new_value.as_bytes())
            .await?
    } else {
        client
            .cas(key.as_bytes(), expected, new_value.as_bytes())
            .await?
    };
    match outcome {
        CasOutcome::Written { version } => {
            if as_json {
                out!(
                    "{}",
                    json!({"key": key, "written": true, "version": version})
                );
            } else {
                out!("OK (version {version})");
            }
            Ok(EXIT_OK)
        }
        CasOutcome::ConditionFailed { current } => {
            if as_json {
                out!(
                    "{}",
                    json!({"key": key, "written": false, "current": versioned_json(&current)})
                );
            } else {
                match &current {
                    Some(v) => out!(
                        "condition failed: current value {:?} (version {})",
                        text(&v.value),
                        v.version
                    ),
                    None => out!("condition failed: key is absent"),
                }
            }
            Ok(EXIT_NO)
        }
    }
}

async fn scan(
    client: &mut Client,
    range: KeyRange,
    limit: u32,
    as_json: bool,
) -> Result<u8, ClientError> {
    let (items, more) = client.scan(range, limit).await?;
    if as_json {
        let items: Vec<_> = items
            .iter()
            .map(|i| json!({"key": text(&i.key), "value": text(&i.value), "version": i.version}))
            .collect();
        out!("{}", json!({"items": items, "more": more}));
    } else {
        for item in &items {
            out!("{}\t{}", text(&item.key), text(&item.value));
        }
        if more {
            eprintln!("(more keys: raise --limit)");
        }
    }
    Ok(EXIT_OK)
}

/// Asks the first reachable endpoint for the member list, then every member for its status.
async fn status(conn: &ConnArgs) -> u8 {
    let mut client = match conn.client().await {
        Ok(client) => client,
        Err(e) => return report(e),
    };
    let first = match client.status_any().await {
        Ok(status) => status,
        Err(e) => return report(e),
    };
    let mut rows: Vec<(MemberConfig, Result<NodeStatus, ClientError>)> = Vec::new();
    for member in first.members.clone() {
        let result = if member.id == first.node_id {
            Ok(first.clone())
        } else {
            client.node_status(member.client_addr).await
        };
        rows.push((member, result));
    }
    let has_leader = rows
        .iter()
        .any(|(_, r)| matches!(r, Ok(s) if s.role == node::raft::Role::Leader));
    if conn.json {
        let nodes: Vec<_> = rows
            .iter()
            .map(|(m, r)| match r {
                Ok(s) => json!({
                    "node_id": s.node_id, "address": s.client_addr.to_string(), "peer_address": s.peer_addr.to_string(),
                    "pid": s.pid, "role": format!("{:?}", s.role).to_lowercase(), "term": s.term, "leader_id": s.leader_id,
                    "commit_index": s.commit_index, "applied_index": s.applied_index, "last_index": s.last_index,
                    "snapshot_index": s.snapshot_index, "voters": s.voters, "keys": s.keys, "reachable": true,
                    "metrics_url": s.admin_addr.map(|a| format!("http://{a}/metrics")),
                    "redis_addr": s.redis_addr.map(|a| a.to_string()),
                }),
                Err(e) => json!({"node_id": m.id, "address": m.client_addr.to_string(), "reachable": false, "error": e.to_string()}),
            })
            .collect();
        out!("{}", json!({"nodes": nodes, "has_leader": has_leader}));
    } else {
        out!(
            "{:<4} {:<21} {:<8} {:<13} {:<6} {:<7} {:<9} {:<9} {:<8}",
            "ID",
            "ADDRESS",
            "PID",
            "ROLE",
            "TERM",
            "LEADER",
            "COMMIT",
            "APPLIED",
            "KEYS"
        );
        for (m, r) in &rows {
            match r {
                Ok(s) => out!(
                    "{:<4} {:<21} {:<8} {:<13} {:<6} {:<7} {:<9} {:<9} {:<8}",
                    s.node_id,
                    s.client_addr.to_string(),
                    s.pid,
                    format!("{:?}", s.role).to_lowercase(),
                    s.term,
                    s.leader_id
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.commit_index,
                    s.applied_index,
                    s.keys
                ),
                Err(_) => out!("{:<4} {:<21} unreachable", m.id, m.client_addr.to_string()),
            }
        }
        if !has_leader {
            eprintln!("warning: no leader (no quorum?)");
        }
    }
    if has_leader {
        EXIT_OK
    } else {
        EXIT_NO_QUORUM
    }
}

/// The server's configuration: its own flags on top of the layered config.
async fn server_config(args: &ServerArgs) -> Result<ServerConfig, String> {
    let config = args
        .tuning
        .layered_config(|table| {
            if let Some(id) = args.id {
                set(table, "node_id", integer(id, "id")?);
            }
            if !args.members.is_empty() {
                let members = args
                    .members
                    .iter()
                    .map(|m| parse_member_spec(m).map(toml::Value::Table))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("bad config: `member`: {e}"))?;
                set(table, "members", toml::Value::Array(members));
            }
            if let Some(dir) = &args.data_dir {
                set(
                    table,
                    "data_dir",
                    toml::Value::String(dir.display().to_string()),
                );
            }
            Ok(())
        })
        .await?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

pub fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
    };
}

async fn run_server(args: ServerArgs) -> u8 {
    init_logging(args.tuning.log_format, &args.tuning.log_level);
    let config = match server_config(&args).await {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    serve(config).await
}

/// Runs a validated configuration until SIGINT/SIGTERM (logging already set up).
pub async fn serve(config: ServerConfig) -> u8 {
    let span = tracing::info_span!("node", node_id = config.node_id);
    let data_dir = config.data_dir.clone();
    let server = match tracing::Instrument::instrument(Server::open(config), span.clone()).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return if matches!(e, node::server::ServerError::Config(_)) {
                EXIT_USAGE
            } else {
                EXIT_SERVER
            };
        }
    };
    if let Some(files) = server.tls_files() {
        tokio::spawn(reload_on_sighup(files));
    }
    let _entered = span.enter();
    tracing::info!(client_addr = %server.client_addr(), redis_addr = ?server.redis_addr(), peer_addr = %server.peer_addr(), data_dir = %data_dir.display(), pid = std::process::id(), worker_threads = tokio::runtime::Handle::current().metrics().num_workers(), "quorumkv server ready");
    drop(_entered);
    let result = tracing::Instrument::instrument(server.run(shutdown_signal()), span).await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SERVER
        }
    }
}

/// Reads the TLS files again at every SIGHUP (they are also read again when they change).
async fn reload_on_sighup(files: Arc<node::tls::TlsFiles>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: TLS files are reloaded when they change only");
        return;
    };
    while hangup.recv().await.is_some() {
        match files.reload() {
            Ok(()) => tracing::info!("SIGHUP: TLS files reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP: TLS files not reloaded; the previous certificates stay in use")
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(s) => { s.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn worker_threads_size_the_runtime_of_node_commands_only() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let threads = |args: &[&str]| parse(args).map(|cli| cli.worker_threads());
        assert_eq!(threads(&["quorumkv", "server"]).ok(), Some(None));
        assert_eq!(
            threads(&["quorumkv", "server", "--worker-threads", "3"]).ok(),
            Some(Some(3))
        );
        assert_eq!(
            threads(&["quorumkv", "cluster", "join", "--worker-threads", "1"]).ok(),
            Some(Some(1))
        );
        assert_eq!(threads(&["quorumkv", "get", "k"]).ok(), Some(None));
        for bad in ["0", "1025", "-1", "many"] {
            assert!(
                parse(&["quorumkv", "server", "--worker-threads", bad]).is_err(),
                "--worker-threads {bad} must be refused"
            );
        }
    }

    #[test]
    fn member_specs_parse() {
        let m = parse_member_spec("2=127.0.0.1:7502,qkv2:7402").unwrap();
        assert_eq!(m["id"].as_integer(), Some(2));
        assert_eq!(m["client_addr"].as_str(), Some("qkv2:7402"));
        assert!(parse_member_spec("2=127.0.0.1:7502").is_err());
        assert!(parse_member_spec("2=127.0.0.1:7502,no port").is_err());
    }
}
