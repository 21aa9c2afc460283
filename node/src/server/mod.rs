//! A quorumkv node process: many Raft groups (multi-Raft) over one disk, one peer transport and
//! one event loop, behind two TCP ports.
//!
//! `Server::new` opens storage, recovers every hosted Raft group (the metadata group and the
//! shards placed here) and binds the peer and client ports; `Server::run` serves until the given shutdown future resolves. The same code
//! runs on real tokio and inside madsim: it reaches the outside world only through tokio APIs
//! (from madsim-tokio), the `Disk` it is handed and RNGs seeded from the config, and it keeps no
//! state in statics (all simulated nodes share one process).
//!
//! Tasks: the event loop (owns everything mutable), the two accept loops (one task per
//! connection) and one outbound task per peer. Only bounded channels connect them.
mod admin;
pub mod backup;
mod client_port;
mod event_loop;
mod group;
mod metered_disk;
#[cfg(test)]
mod migration_tests;
#[cfg(any(test, madsim))]
pub mod probe;
mod snapshot_stream;
mod telemetry;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use self::admin::{accept_admin, AdminState};
pub use self::client_port::ClientCall;
use self::client_port::{accept_clients, ClientPortConfig};
use self::event_loop::{
    bootstrap_groups, bootstrap_members, open_group, target_membership, EventLoop,
};
use self::metered_disk::MeteredDisk;
#[cfg(any(test, madsim))]
pub use self::probe::{ProtocolEvent, ProtocolObserver};
pub(crate) use self::snapshot_stream::receive_in_memory;
#[cfg(test)]
pub(crate) use self::snapshot_stream::ChunkRecord;
pub use self::telemetry::Health;
use self::telemetry::Telemetry;
use crate::config::{ConfigError, ServerConfig};
use crate::kv::KvConfig;
use crate::meta::{GroupId, MetaState};
use crate::metrics::Metrics;
use crate::raft::{self, Membership};
use crate::resp::{accept_redis_clients, RespContext};
use crate::storage::{
    hosted_groups, read_node_marker, write_node_marker, Disk, NodeMarker, StorageOptions, Wal,
};
use crate::transport::frame::FrameBudget;
use crate::transport::peer::{accept_peers, InboundConfig, KnownPeers};
use crate::transport::stream::{Acceptor, Connector};
use crate::transport::PeerTransport;

/// Client requests queued for the event loop; beyond this a request is answered `Busy`.
const CLIENT_QUEUE_REQUESTS: usize = 4096;
/// Peer messages queued for the event loop; beyond this peer connections wait (back-pressure).
const PEER_INBOX_MESSAGES: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("event loop task failed: {0}")]
    Task(String),
    #[error("tls: {0}")]
    Tls(String),
}

/// How each port accepts and how the node dials (peers, its own client port): plaintext, or
/// TLS from the node's certificate files (real builds only; see `transport::stream`).
#[derive(Clone, Debug, Default)]
struct PortSecurity {
    peer: Acceptor,
    client: Acceptor,
    connector: Connector,
    #[cfg(not(madsim))]
    files: Option<Arc<crate::tls::TlsFiles>>,
}

impl PortSecurity {
    fn from_config(config: &ServerConfig) -> Result<PortSecurity, ServerError> {
        #[cfg(not(madsim))]
        if let Some(files) = crate::tls::TlsFiles::from_config(&config.tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?
        {
            use crate::tls::PortKind;
            return Ok(PortSecurity {
                peer: Acceptor::tls(files.clone(), PortKind::Peer),
                client: Acceptor::tls(files.clone(), PortKind::Client),
                connector: Connector::node(files.clone()),
                files: Some(files),
            });
        }
        // `validate` refuses TLS settings in simulation builds.
        let _ = config;
        Ok(PortSecurity::default())
    }
}

/// The groups a node opens at start: those on its disk, plus every group of its bootstrap
/// share (empty for a node that joined) that left no trace on disk and was never deleted
/// here. A replica that had written nothing yet when its node crashed has no files, while the
/// node marker, written at first start, already says the node was created: without this the
/// node forgot that it is a bootstrap voter of those groups, came back with no membership and
/// waited for a leader that, with enough voters in the same state, never came (sim `votes`
/// seeds 87, 1118, 5186: the metadata group stayed leaderless). Nothing of such a replica was
/// durable, so nothing it said (no vote, no acknowledgement) can be contradicted by opening it
/// afresh, exactly as at first start. A deleted replica is tombstoned in the marker before its
/// files go, and stays deleted.
pub(crate) fn groups_to_open(
    on_disk: BTreeSet<GroupId>,
    bootstrap_share: &BTreeSet<GroupId>,
    marker: &NodeMarker,
) -> BTreeSet<GroupId> {
    let mut groups = on_disk;
    groups.extend(
        bootstrap_share
            .iter()
            .filter(|g| !marker.tombstones.contains_key(g)),
    );
    groups
}

/// A node ready to serve: storage recovered, ports bound.
pub struct Server {
    config: ServerConfig,
    event_loop: EventLoop,
    peer_listener: TcpListener,
    client_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    health: tokio::sync::watch::Receiver<Health>,
    /// The Redis port, when `redis_addr` asks for one.
    redis_listener: Option<TcpListener>,
    /// The peer transport's current peers (who gets a member slot on the peer port).
    known_peers: KnownPeers,
    security: PortSecurity,
}

impl Server {
    /// Opens `disk`, recovers every hosted group (or bootstraps them at first start) and binds
    /// both ports.
    pub async fn new(mut config: ServerConfig, disk: Arc<dyn Disk>) -> Result<Server, ServerError> {
        config.validate()?;
        let kv_config = kv_config(&config)?;
        let security = PortSecurity::from_config(&config)?;
        let metrics = Metrics::new(config.node_id);
        let disk: Arc<dyn Disk> = Arc::new(MeteredDisk {
            inner: disk,
            metrics: metrics.clone(),
        });
        #[cfg(any(test, madsim))]
        let disk: Arc<dyn Disk> = if config.planted_bugs.ack_before_fsync {
            Arc::new(planted::NoSyncDisk(disk))
        } else {
            disk
        };
        let storage_error = |e: &dyn std::fmt::Display| ServerError::Storage(e.to_string());
        let marker = read_node_marker(&*disk).map_err(|e| storage_error(&e))?;
        if let Some(marker) = &marker {
            if marker.node_id != config.node_id {
                return Err(ServerError::Storage(format!(
                    "the data directory belongs to node {}, not node {}",
                    marker.node_id, config.node_id
                )));
            }
        }
        let bootstrap = config.join.is_empty();
        let provisional = if bootstrap {
            MetaState::bootstrapped(config.cluster.placement(), bootstrap_members(&config))
                .map_err(|e| {
                    ServerError::Config(ConfigError {
                        field: "cluster".into(),
                        problem: e.to_string(),
                    })
                })?
        } else {
            MetaState::uninitialized()
        };
        let wal =
            Wal::open(disk.clone(), storage_options(&config)).map_err(|e| storage_error(&e))?;
        #[cfg(any(test, madsim))]
        wal.set_planted_bugs(config.planted_bugs);
        let on_disk = hosted_groups(&*disk, &wal).map_err(|e| storage_error(&e))?;
        let first_start = marker.as_ref().is_none_or(|m| !m.initialized);
        let mut marker = marker.unwrap_or(NodeMarker {
            node_id: config.node_id,
            initialized: false,
            tombstones: BTreeMap::new(),
        });
        let bootstrap_share = if bootstrap {
            bootstrap_groups(&provisional, config.node_id)
        } else {
            BTreeSet::new()
        };
        let group_ids = groups_to_open(on_disk, &bootstrap_share, &marker);
        let mut groups = BTreeMap::new();
        for group in group_ids {
            let initial = if bootstrap {
                target_membership(&provisional, group)
            } else {
                Membership::default()
            };
            let floor = marker.tombstones.get(&group).copied().unwrap_or(0);
            let opened = open_group(group, &disk, &wal, &config, &kv_config, initial, floor)?;
            groups.insert(group, opened);
        }
        if first_start {
            marker.initialized = true;
            write_node_marker(&*disk, &marker).map_err(|e| storage_error(&e))?;
        }

        let peer_listen = config
            .peer_listen_addr()
            .ok_or_else(|| ServerError::Raft("no peer address".into()))?;
        let client_listen = config
            .client_listen_addr()
            .ok_or_else(|| ServerError::Raft("no client address".into()))?;
        let peer_listener =
            TcpListener::bind(peer_listen)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "peer",
                    addr: peer_listen,
                    source,
                })?;
        let client_listener =
            TcpListener::bind(client_listen)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "client",
                    addr: client_listen,
                    source,
                })?;
        let peer_addr = peer_listener.local_addr().unwrap_or(peer_listen);
        let client_addr = client_listener.local_addr().unwrap_or(client_listen);
        let admin_listener = match config.admin_addr {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind {
                            what: "admin",
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        // The bound address (a port 0 in tests becomes the real one) is what status reports.
        let admin_addr = admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .or(config.admin_addr);
        config.admin_addr = admin_addr;
        let redis_listener = match config.redis_addr {
            Some(addr) => {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind {
                            what: "redis",
                            addr,
                            source,
                        })?;
                // Report the bound port (the config may ask for port 0).
                config.redis_addr = Some(listener.local_addr().unwrap_or(addr));
                Some(listener)
            }
            None => None,
        };

        let peers: BTreeMap<_, _> = config.members.iter().map(|m| (m.id, m.peer_addr)).collect();
        // Members that joined later are added from the map by the event loop.
        #[allow(unused_mut)]
        let mut transport = PeerTransport::start_named(
            config.node_id,
            &peers,
            &config.peer_names,
            Some(metrics.clone()),
            security.connector.clone(),
            &config.transport,
            config.limits.max_peer_frame_bytes,
        );
        let known_peers = transport.known_peers();
        #[cfg(any(test, madsim))]
        if let Some(faults) = &config.faults {
            transport.set_faults(faults.clone(), node_seed(&config) ^ 0x5eed_fa17);
        }
        info!(
            node_id = config.node_id,
            %peer_addr,
            %client_addr,
            redis_addr = ?config.redis_addr,
            groups = groups.len(),
            joining = !bootstrap,
            "node recovered"
        );
        let mut event_loop = EventLoop::new(
            config.clone(),
            kv_config,
            (disk, wal),
            marker,
            groups,
            transport,
            provisional,
        );
        let (health_tx, health) = tokio::sync::watch::channel(Health::default());
        event_loop.set_telemetry(Telemetry::new(metrics.clone(), health_tx));
        event_loop.set_admin_connector(security.connector.clone());
        if config.auth.enabled {
            if !config.tls.is_enabled() {
                warn!("auth is enabled without TLS: passwords and tokens cross the network in clear text (turn TLS on, docs/SECURITY.md)");
            }
            if let Some(secret) = config.auth.admin_password.clone() {
                let secret_hash = crate::auth::gate::hash_off_loop(secret)
                    .await
                    .map_err(|e| ServerError::Task(format!("hashing the admin password: {e}")))?;
                event_loop.set_bootstrap_admin(crate::auth::User {
                    name: config.auth.admin_user.clone(),
                    role: crate::auth::Role::Admin,
                    kind: crate::auth::SecretKind::Password,
                    secret_hash,
                });
            }
        }
        Ok(Server {
            config,
            event_loop,
            peer_listener,
            client_listener,
            admin_listener,
            peer_addr,
            client_addr,
            admin_addr,
            metrics,
            health,
            redis_listener,
            known_peers,
            security,
        })
    }

    /// The node's certificate files when TLS is on (the binary reloads them on SIGHUP).
    #[cfg(not(madsim))]
    pub fn tls_files(&self) -> Option<Arc<crate::tls::TlsFiles>> {
        self.security.files.clone()
    }

    /// Opens (creating it if needed) the data directory with real files.
    #[cfg(not(madsim))]
    pub async fn open(config: ServerConfig) -> Result<Server, ServerError> {
        let disk = crate::storage::FileDisk::open(&config.data_dir).map_err(|e| {
            ServerError::Storage(format!("data_dir {}: {e}", config.data_dir.display()))
        })?;
        Server::new(config, Arc::new(disk)).await
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The bound admin (HTTP) address, if `admin_addr` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The bound Redis port (None: not configured).
    pub fn redis_addr(&self) -> Option<SocketAddr> {
        self.config.redis_addr
    }

    /// Serves until `shutdown` resolves; then stops accepting, fails in-flight requests and
    /// returns (every Ready was synced before it was acted on, so nothing is left to sync).
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Server {
            config,
            event_loop,
            peer_listener,
            client_listener,
            admin_listener,
            metrics,
            health,
            client_addr,
            redis_listener,
            known_peers,
            security,
            ..
        } = self;
        let (peer_tx, peer_rx) = mpsc::channel(PEER_INBOX_MESSAGES);
        let (client_tx, client_rx) = mpsc::channel(CLIENT_QUEUE_REQUESTS);
        let inbound = InboundConfig {
            me: config.node_id,
            transport: config.transport.clone(),
            max_frame_bytes: config.limits.max_peer_frame_bytes,
            max_connections: config.limits.max_peer_connections,
            max_handshakes: config.limits.max_peer_handshakes,
            members: known_peers,
            budget: FrameBudget::new(config.limits.max_peer_inflight_frame_bytes),
            acceptor: security.peer.clone(),
        };
        let users = event_loop.users();
        let gate = config
            .auth
            .enabled
            .then(|| Arc::new(crate::auth::gate::AuthGate::new(users.clone())));
        let client_port = ClientPortConfig {
            users: users.clone(),
            auth: gate.clone(),
            metrics: metrics.clone(),
            max_frame_bytes: config.limits.max_client_frame_bytes,
            max_connections: config.limits.max_client_connections,
            idle_timeout: Duration::from_millis(config.transport.client_idle_timeout_ms),
            frame_read_timeout: Duration::from_millis(config.transport.frame_read_timeout_ms),
            budget: FrameBudget::new(config.limits.max_client_inflight_frame_bytes),
            write_timeout: Duration::from_millis(config.transport.client_write_timeout_ms),
            acceptor: security.client.clone(),
            handshake_timeout_ms: config.transport.handshake_timeout_ms,
            #[cfg(madsim)]
            sim: config.sim.clone(),
        };
        metrics.watch_client_budget(&client_port.budget);
        let mut accept_tasks: Vec<JoinHandle<()>> = vec![
            tokio::spawn(accept_peers(peer_listener, inbound, peer_tx).in_current_span()),
            tokio::spawn(accept_clients(client_listener, client_port, client_tx).in_current_span()),
        ];
        if let Some(listener) = admin_listener {
            let state = AdminState {
                metrics,
                health,
                acceptor: security.client.clone(),
            };
            accept_tasks.push(tokio::spawn(
                accept_admin(listener, state).in_current_span(),
            ));
        }
        if let (Some(listener), Some(redis_addr)) = (redis_listener, config.redis_addr) {
            let others = config
                .members
                .iter()
                .filter(|m| m.id != config.node_id)
                .map(|m| m.client_addr);
            let endpoints = std::iter::once(client_addr).chain(others).collect();
            let mut context =
                RespContext::new(config.node_id, endpoints, redis_addr, config.limits.clone());
            context.acceptor = security.client.clone();
            context.connector = security.connector.clone();
            context.handshake_timeout_ms = config.transport.handshake_timeout_ms;
            context.auth = gate.clone();
            let serve = accept_redis_clients(listener, Arc::new(context));
            accept_tasks.push(tokio::spawn(serve.in_current_span()));
        }
        let result = event_loop.run(peer_rx, client_rx, shutdown).await;
        for task in accept_tasks {
            task.abort();
        }
        info!(
            node_id = config.node_id,
            ok = result.is_ok(),
            "node stopped"
        );
        result
    }

    /// Starts the node in its own task; the simulator and tests use this.
    pub async fn start_with(
        config: ServerConfig,
        disk: Arc<dyn Disk>,
    ) -> Result<ServerHandle, ServerError> {
        let server = Server::new(config, disk).await?;
        let (peer_addr, client_addr) = (server.peer_addr, server.client_addr);
        let admin_addr = server.admin_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .in_current_span(),
        );
        Ok(ServerHandle {
            peer_addr,
            client_addr,
            admin_addr,
            stop: Some(stop),
            task,
        })
    }
}

/// A running node started by `Server::start_with`.
pub struct ServerHandle {
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// Graceful stop: fails in-flight requests and waits for the event loop to end.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }

    /// Whether the node stopped by itself (e.g. a storage error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

fn node_seed(config: &ServerConfig) -> u64 {
    config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ config.node_id.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

/// The write-ahead log's options from the config (the rest keep their defaults). The entry
/// cache stays: a segment roll reads the live entries of the groups that pin old segments
/// (to rewrite them into the new head), and without the cache each is read back from its
/// segment (a simulated swarm seed with small segments ran 100x slower).
fn storage_options(config: &ServerConfig) -> StorageOptions {
    StorageOptions {
        segment_max_bytes: config.wal_segment_max_bytes,
        ..StorageOptions::default()
    }
}

fn kv_config(config: &ServerConfig) -> Result<KvConfig, ServerError> {
    let kv = KvConfig {
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        max_scan_limit: u32::try_from(config.limits.max_scan_items).unwrap_or(u32::MAX),
        ..KvConfig::default()
    };
    kv.validate().map_err(|e| ConfigError {
        field: "limits.max_value_bytes".into(),
        problem: e.to_string(),
    })?;
    Ok(kv)
}

/// How much log a group's leader keeps below a checkpoint for a member catching up (one being
/// streamed a snapshot will ask for the entries after it), per mille of the snapshot interval
/// (`snapshot_interval_entries` / `snapshot_interval_log_bytes`): 4x. Compacting through the
/// checkpoint made a node joining under 64 writers need a whole new snapshot (~20 s at 2 GiB)
/// for most shards: their leaders checkpointed while the first was streaming, or between its
/// last chunk and the receiver asking for the entries after it (issue 11).
const LOG_KEPT_FOR_CATCH_UP_MAX_PERMILLE: u64 = 4000;

/// The Raft settings of one group; each group draws its election timeouts from its own seed so
/// that a node's groups do not time out in lockstep.
fn raft_config(config: &ServerConfig, group: GroupId) -> Result<raft::Config, ServerError> {
    let seed = node_seed(config) ^ u64::from(group).wrapping_mul(0x94D0_49BB_1331_11EB);
    let mut raft_config = raft::Config::new(config.node_id, seed);
    raft_config.election_timeout_ticks_min = config.election_timeout_ticks_min;
    raft_config.election_timeout_ticks_max = config.election_timeout_ticks_max;
    raft_config.heartbeat_interval_ticks = config.heartbeat_interval_ticks;
    raft_config.pre_vote = true;
    raft_config.check_quorum = true;
    let kept = |interval: u64| interval.saturating_mul(LOG_KEPT_FOR_CATCH_UP_MAX_PERMILLE) / 1000;
    raft_config.retained_log_entries_max = kept(config.snapshot_interval_entries);
    raft_config.retained_log_bytes_max = kept(config.snapshot_interval_log_bytes);
    #[cfg(any(test, madsim))]
    {
        raft_config.bugs = config.planted_bugs;
        if let Some(entries) = config.max_append_entries {
            raft_config.max_append_entries = entries;
        }
    }
    raft_config
        .validate()
        .map_err(|e| ServerError::Raft(format!("{e:?}")))?;
    Ok(raft_config)
}

#[cfg(any(test, madsim))]
mod planted {
    //! `ack_before_fsync`: a disk whose syncs do nothing, so the node acknowledges writes that
    //! are not durable (a crash of the simulator's disk then loses acknowledged data).
    use std::io;
    use std::sync::Arc;

    use crate::storage::{Disk, DiskFile};

    pub(super) struct NoSyncDisk(pub(super) Arc<dyn Disk>);
    struct NoSyncFile(Box<dyn DiskFile>);

    impl Disk for NoSyncDisk {
        fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>> {
            Ok(Box::new(NoSyncFile(self.0.open(name)?)))
        }
        fn exists(&self, name: &str) -> io::Result<bool> {
            self.0.exists(name)
        }
        fn list(&self) -> io::Result<Vec<String>> {
            self.0.list()
        }
        fn remove(&self, name: &str) -> io::Result<()> {
            self.0.remove(name)
        }
        fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            self.0.rename(from, to)
        }
        fn sync_dir(&self) -> io::Result<()> {
            self.0.sync_dir()
        }
    }

    impl DiskFile for NoSyncFile {
        fn len(&self) -> io::Result<u64> {
            self.0.len()
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read_at(offset, buf)
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0.write_at(offset, data)
        }
        fn set_len(&mut self, len_bytes: u64) -> io::Result<()> {
            self.0.set_len(len_bytes)
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::MemberConfig;
    use crate::meta::META_GROUP;
    use crate::raft::LogIndex;
    use crate::storage::{CrashDisk, CrashMode};

    fn marker(tombstones: &[(GroupId, LogIndex)]) -> NodeMarker {
        NodeMarker {
            node_id: 1,
            initialized: true,
            tombstones: tombstones.iter().copied().collect(),
        }
    }

    #[test]
    fn groups_to_open_restores_a_bootstrap_share_that_left_no_trace() {
        let share = BTreeSet::from([0, 2, 3]);
        // Nothing on disk (a crash before any replica wrote): the whole share again.
        assert_eq!(groups_to_open(BTreeSet::new(), &share, &marker(&[])), share);
        // Groups on disk stay, whether in the share or added later.
        assert_eq!(
            groups_to_open(BTreeSet::from([0, 7]), &share, &marker(&[])),
            BTreeSet::from([0, 2, 3, 7])
        );
        // A replica deleted here (tombstoned) is not brought back.
        assert_eq!(
            groups_to_open(BTreeSet::new(), &share, &marker(&[(2, 40)])),
            BTreeSet::from([0, 3])
        );
        // A node that joined has no share: only its disk counts.
        assert_eq!(
            groups_to_open(BTreeSet::from([4]), &BTreeSet::new(), &marker(&[])),
            BTreeSet::from([4])
        );
    }

    fn bootstrap_config() -> ServerConfig {
        let addr = |ip: [u8; 4], port| SocketAddr::from((ip, port));
        let members = (1..=3u8)
            .map(|id| MemberConfig {
                id: u64::from(id),
                // Only node 1 is started: port 0 picks free ports (on two loopback addresses).
                peer_addr: addr([127, 0, 0, id], if id == 1 { 0 } else { 7380 }),
                client_addr: addr([127, 0, 1, id], if id == 1 { 0 } else { 7379 }),
                zone: None,
            })
            .collect();
        ServerConfig {
            node_id: 1,
            members,
            seed: 1,
            ..ServerConfig::default()
        }
    }

    /// Issue 11: a group's leader keeps the log a member catching up still needs, up to 4x
    /// the snapshot interval (the core alone keeps none).
    #[test]
    fn groups_keep_log_for_members_catching_up_within_four_snapshot_intervals() {
        let config = ServerConfig {
            snapshot_interval_entries: 100,
            snapshot_interval_log_bytes: 1000,
            ..ServerConfig::default()
        };
        let raft = raft_config(&config, 3).expect("valid");
        let kept = (raft.retained_log_entries_max, raft.retained_log_bytes_max);
        assert_eq!(kept, (400, 4000));
    }

    /// Sim `votes` seed 87: a bootstrap node that crashes before any of its replicas wrote
    /// anything must come back as a voter of its bootstrap groups, not as an empty replica.
    #[tokio::test]
    async fn bootstrap_node_crashed_before_its_first_write_reopens_its_groups() {
        let disk = CrashDisk::new(87);
        let first = Server::new(bootstrap_config(), Arc::new(disk.clone()))
            .await
            .expect("first start");
        let before = first.event_loop.memberships();
        drop(first);
        assert!(before[&META_GROUP].voters.contains(&1), "{before:?}");
        disk.crash(CrashMode::Drop);
        let again = Server::new(bootstrap_config(), Arc::new(disk.clone()))
            .await
            .expect("restart");
        let after = again.event_loop.memberships();
        assert_eq!(
            after, before,
            "the same replicas with the bootstrap memberships"
        );
    }

    /// Issue 16: a forged InstallSnapshot with garbage data was persisted before it was
    /// checked: the node failed at once and on every restart. It is now dropped unread.
    #[tokio::test]
    async fn a_garbage_snapshot_from_a_peer_is_dropped_before_it_is_persisted() {
        use crate::raft::{Message, MessageBody, Snapshot, SnapshotMeta};
        use crate::transport::PeerMessage;
        let disk = CrashDisk::new(16);
        let mut server = Server::new(bootstrap_config(), Arc::new(disk.clone()))
            .await
            .expect("first start");
        let shard = *server
            .event_loop
            .memberships()
            .keys()
            .find(|g| **g != META_GROUP)
            .expect("a shard replica");
        for group in [META_GROUP, shard] {
            let voters = server.event_loop.memberships()[&group].clone();
            let forged = PeerMessage::Raft {
                group,
                message: Message {
                    from: 2,
                    to: 1,
                    term: 7,
                    body: MessageBody::InstallSnapshot {
                        snapshot: Snapshot {
                            meta: SnapshotMeta {
                                index: 50,
                                term: 7,
                                membership: voters,
                            },
                            data: b"not a snapshot at all".to_vec(),
                        },
                    },
                },
            };
            server
                .event_loop
                .on_peer(forged)
                .expect("the node keeps running");
            server
                .event_loop
                .handle_readys()
                .await
                .expect("the node keeps running");
        }
        drop(server);
        Server::new(bootstrap_config(), Arc::new(disk.clone()))
            .await
            .expect("the node restarts");
    }

    /// Issue 16: the event loop kept a `last_heard` entry per sender id, so forged ids grew
    /// it without bound. Only members are tracked now.
    #[tokio::test]
    async fn forged_sender_ids_are_not_tracked() {
        use crate::raft::{Message, MessageBody};
        use crate::transport::PeerMessage;
        let disk = CrashDisk::new(16);
        let mut server = Server::new(bootstrap_config(), Arc::new(disk.clone()))
            .await
            .expect("start");
        let heartbeat = |from| PeerMessage::Raft {
            group: META_GROUP,
            message: Message {
                from,
                to: 1,
                term: 0,
                body: MessageBody::Heartbeat {
                    commit: 0,
                    read_seq: 0,
                },
            },
        };
        for from in 1_000..11_000 {
            server
                .event_loop
                .on_peer(heartbeat(from))
                .expect("the node keeps running");
        }
        server.event_loop.on_peer(heartbeat(2)).expect("a member");
        let tracked = server.event_loop.heard_from();
        assert!(tracked.contains(&2), "a member is tracked: {tracked:?}");
        assert!(
            tracked.iter().all(|id| *id < 1_000),
            "forged ids are not tracked: {} entries",
            tracked.len()
        );
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    /// Issue 16: 1,025 idle client connections kept a node out of service (new connections
    /// were closed without a word, also those of the other nodes' Redis ports). At the limit
    /// a new connection now takes the place of the longest idle one.
    #[tokio::test]
    async fn idle_client_connections_do_not_keep_a_client_out() {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = ServerConfig {
            node_id: 1,
            members: vec![MemberConfig {
                id: 1,
                peer_addr: loopback(free_port()),
                client_addr: loopback(free_port()),
                zone: None,
            }],
            seed: 3,
            ..ServerConfig::default()
        };
        config.cluster.shards = 2;
        config.cluster.replication_factor = 1;
        config.limits.max_client_connections = 4;
        let node = Server::start_with(config, Arc::new(CrashDisk::new(3)))
            .await
            .expect("start");
        let mut idle = Vec::new();
        for _ in 0..12 {
            idle.push(
                tokio::net::TcpStream::connect(node.client_addr)
                    .await
                    .unwrap(),
            );
        }
        let options = crate::client::ClientOptions {
            operation_timeout: Duration::from_secs(20),
            rng_seed: Some(1),
            ..Default::default()
        };
        let mut client = crate::client::Client::new(vec![node.client_addr], options).unwrap();
        client
            .put(b"k", b"v")
            .await
            .expect("served despite idle connections");
        assert_eq!(
            client.get(b"k").await.unwrap().map(|v| v.value),
            Some(b"v".to_vec())
        );
        drop(idle);
        node.shutdown().await.unwrap();
    }
}
