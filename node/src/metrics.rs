//! A node's Prometheus metrics (`prometheus-client`), served on the admin port's `/metrics`.
//!
//! One `Metrics` per node, never a static (simulated nodes share one process). Metrics only
//! observe: nothing in the node reads them back to decide anything. Durations are measured with
//! `tokio::time::Instant` (simulated time under madsim), never the wall clock. Names follow the
//! Prometheus conventions: counters end in `_total`, durations are `_seconds`, sizes `_bytes`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::client::protocol::{BackupRequest, BackupResponse, ClientRequest, ClientResponse};
use crate::kv::Operation;

/// Histogram buckets for request latency: 100 µs doubling to ~3.3 s.
const REQUEST_BUCKETS: (f64, f64, u16) = (0.000_1, 2.0, 16);
/// Histogram buckets for fsync latency: 50 µs doubling to ~1.6 s.
const FSYNC_BUCKETS: (f64, f64, u16) = (0.000_05, 2.0, 16);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<OpLabels, Histogram>,
    pub pending_requests: Gauge,
    pub proposals_dropped: Counter,
    pub raft_term: Family<GroupLabels, Gauge>,
    pub raft_commit_index: Family<GroupLabels, Gauge>,
    pub raft_applied_index: Family<GroupLabels, Gauge>,
    pub raft_is_leader: Family<GroupLabels, Gauge>,
    pub leader_changes: Family<GroupLabels, Counter>,
    pub groups_hosted: Gauge,
    pub fsync_duration: Histogram,
    /// A shard's durable engine checkpoint (the event loop waits for it).
    pub checkpoint_duration: Histogram,
    /// One pass of the event loop over every group's Raft output: WAL write and sync, sends,
    /// applies, answers and at most one checkpoint (what a request waits for at worst).
    pub turn_duration: Histogram,
    pub disk_written: Counter,
    pub snapshots_sent: Counter,
    pub snapshots_received: Counter,
    pub peer_sent: Family<PeerLabels, Counter>,
    pub peer_connected: Family<PeerLabels, Gauge>,
    pub peer_messages_dropped: Counter,
    pub keys: Gauge,
    pub stored: Gauge,
    pub ready: Gauge,
    /// Client connections held (`limits.max_client_connections` bounds it).
    pub client_connections: Gauge,
    /// Client connections closed to make room for a new one (the longest idle).
    pub client_connections_evicted: Counter,
    /// Client connections refused because every held one was busy.
    pub client_connections_refused: Counter,
    /// Client connections closed because a reply could not be written within
    /// `transport.client_write_timeout_ms` (a client that does not read its replies).
    pub client_write_timeouts: Counter,
    /// Bytes of incomplete client frames held now and at most (read from the client port's
    /// `FrameBudget` when the metrics are encoded; `limits.max_client_inflight_frame_bytes`
    /// bounds both).
    pub client_inflight_frame_bytes: Gauge,
    pub client_inflight_frame_bytes_peak: Gauge,
    client_budget: std::sync::OnceLock<crate::transport::frame::FrameBudget>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn request_histogram() -> Histogram {
    let (start, factor, count) = REQUEST_BUCKETS;
    Histogram::new(exponential_buckets(start, factor, count))
}

impl Metrics {
    pub fn new(node_id: u64) -> Arc<Metrics> {
        let mut root = Registry::with_prefix_and_labels(
            "quorumkv",
            [("node".into(), node_id.to_string().into())].into_iter(),
        );
        let (start, factor, count) = FSYNC_BUCKETS;
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            pending_requests: Gauge::default(),
            proposals_dropped: Counter::default(),
            raft_term: Family::default(),
            raft_commit_index: Family::default(),
            raft_applied_index: Family::default(),
            raft_is_leader: Family::default(),
            leader_changes: Family::default(),
            groups_hosted: Gauge::default(),
            client_connections: Gauge::default(),
            client_connections_evicted: Counter::default(),
            client_connections_refused: Counter::default(),
            client_write_timeouts: Counter::default(),
            client_inflight_frame_bytes: Gauge::default(),
            client_inflight_frame_bytes_peak: Gauge::default(),
            client_budget: std::sync::OnceLock::new(),
            fsync_duration: Histogram::new(exponential_buckets(start, factor, count)),
            checkpoint_duration: Histogram::new(exponential_buckets(start, factor, count)),
            turn_duration: Histogram::new(exponential_buckets(start, factor, count)),
            disk_written: Counter::default(),
            snapshots_sent: Counter::default(),
            snapshots_received: Counter::default(),
            peer_sent: Family::default(),
            peer_connected: Family::default(),
            peer_messages_dropped: Counter::default(),
            keys: Gauge::default(),
            stored: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut root;
        let m = &metrics;
        r.register(
            "requests",
            "Client requests answered, by operation and result",
            m.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a client request's arrival to its answer",
            Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register(
            "pending_requests",
            "Client requests received and not answered yet",
            m.pending_requests.clone(),
        );
        r.register(
            "proposals_dropped",
            "Proposed writes whose outcome this node lost (leadership lost, entry replaced, shutdown)",
            m.proposals_dropped.clone(),
        );
        r.register(
            "raft_term",
            "Current Raft term, by group (0 = metadata)",
            m.raft_term.clone(),
        );
        r.register(
            "raft_commit_index",
            "Raft commit index, by group",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "Raft applied index, by group",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 if this node leads the group",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Changes of the leader this node knows, by group",
            m.leader_changes.clone(),
        );
        r.register(
            "raft_groups",
            "Raft groups hosted by this node",
            m.groups_hosted.clone(),
        );
        r.register_with_unit(
            "fsync_duration",
            "Time of one file sync in the data directory (fsync on the commit path)",
            Unit::Seconds,
            m.fsync_duration.clone(),
        );
        r.register_with_unit(
            "checkpoint_duration",
            "Time of one shard's durable engine checkpoint (the node's event loop waits for it)",
            Unit::Seconds,
            m.checkpoint_duration.clone(),
        );
        r.register_with_unit(
            "turn_duration",
            "Time of one event-loop pass over the groups' Raft output (WAL sync, applies, answers, checkpoint)",
            Unit::Seconds,
            m.turn_duration.clone(),
        );
        r.register_with_unit(
            "disk_written",
            "Bytes written to the data directory",
            Unit::Bytes,
            m.disk_written.clone(),
        );
        r.register(
            "snapshots_sent",
            "Raft snapshots sent to peers",
            m.snapshots_sent.clone(),
        );
        r.register(
            "snapshots_received",
            "Raft snapshots received from peers",
            m.snapshots_received.clone(),
        );
        r.register_with_unit(
            "peer_sent",
            "Bytes written to peer connections, by peer",
            Unit::Bytes,
            m.peer_sent.clone(),
        );
        r.register(
            "peer_connected",
            "1 while the outbound connection to the peer is up",
            m.peer_connected.clone(),
        );
        r.register(
            "peer_messages_dropped",
            "Peer messages dropped because a peer's queue was full or the peer unknown",
            m.peer_messages_dropped.clone(),
        );
        r.register("keys", "Keys held in this node's replicas", m.keys.clone());
        r.register_with_unit(
            "stored",
            "Key and value bytes held in this node's replicas",
            Unit::Bytes,
            m.stored.clone(),
        );
        r.register("ready", "1 when /health/ready answers 200", m.ready.clone());
        r.register(
            "client_connections",
            "Client connections held",
            m.client_connections.clone(),
        );
        r.register(
            "client_connections_evicted",
            "Idle client connections closed to make room for a new one",
            m.client_connections_evicted.clone(),
        );
        r.register(
            "client_connections_refused",
            "Client connections refused because every held one was busy",
            m.client_connections_refused.clone(),
        );
        r.register(
            "client_write_timeouts",
            "Client connections closed because they did not read their replies in time",
            m.client_write_timeouts.clone(),
        );
        r.register_with_unit(
            "client_inflight_frame",
            "Bytes of incomplete client frames held now",
            Unit::Bytes,
            m.client_inflight_frame_bytes.clone(),
        );
        r.register_with_unit(
            "client_inflight_frame_peak",
            "Most bytes of incomplete client frames held at once",
            Unit::Bytes,
            m.client_inflight_frame_bytes_peak.clone(),
        );
        Arc::new(Metrics {
            registry: root,
            ..metrics
        })
    }

    /// Reports the client port's frame budget (`client_inflight_frame_*`) from now on.
    pub fn watch_client_budget(&self, budget: &crate::transport::frame::FrameBudget) {
        let _ = self.client_budget.set(budget.clone());
    }

    /// The exposition text (OpenMetrics format, which Prometheus reads).
    pub fn encode(&self) -> String {
        if let Some(budget) = self.client_budget.get() {
            let gauge = |bytes: usize| i64::try_from(bytes).unwrap_or(i64::MAX);
            self.client_inflight_frame_bytes
                .set(gauge(budget.charged_bytes()));
            self.client_inflight_frame_bytes_peak
                .set(gauge(budget.peak_bytes()));
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Counts one answered client request and its latency.
    pub fn request_done(&self, op: &'static str, response: &ClientResponse, seconds: f64) {
        let result = result_name(response);
        self.requests
            .get_or_create(&RequestLabels { op, result })
            .inc();
        self.request_duration
            .get_or_create(&OpLabels { op })
            .observe(seconds);
        if result == "unknown" {
            self.proposals_dropped.inc();
        }
    }
}

/// The `op` label of a request.
pub fn op_name(request: &ClientRequest) -> &'static str {
    match request {
        ClientRequest::Execute { command, .. } => match &command.op {
            Operation::Get { .. } => "get",
            Operation::Scan { .. } => "scan",
            Operation::Put { .. } => "put",
            Operation::Delete { .. } => "delete",
            Operation::PutIfAbsent { .. } => "put_if_absent",
            Operation::CompareAndSwap { .. } => "cas",
            Operation::OpenSession => "open_session",
            Operation::Set { .. } => "set",
            Operation::Append { .. } => "append",
            Operation::Increment { .. } => "increment",
            Operation::PutMany { .. } => "put_many",
        },
        ClientRequest::Status => "status",
        ClientRequest::ClusterInfo => "cluster_info",
        ClientRequest::Admin(_) => "admin",
        ClientRequest::Backup(BackupRequest::Open { .. }) => "backup_open",
        ClientRequest::Backup(BackupRequest::Next { .. }) => "backup_next",
        ClientRequest::Backup(BackupRequest::Close { .. }) => "backup_close",
        ClientRequest::Authenticate(_) => "authenticate",
        ClientRequest::User(_) => "user",
    }
}

fn result_name(response: &ClientResponse) -> &'static str {
    match response {
        ClientResponse::Done(_)
        | ClientResponse::Status(_)
        | ClientResponse::Cluster(_)
        | ClientResponse::Admin(_)
        | ClientResponse::Authenticated { .. }
        | ClientResponse::Users(_) => "ok",
        ClientResponse::Backup(BackupResponse::Gone | BackupResponse::TooMany { .. }) => "refused",
        ClientResponse::Backup(_) => "ok",
        ClientResponse::Redirect { .. } | ClientResponse::WrongNode { .. } => "redirect",
        ClientResponse::Refused(_) => "refused",
        ClientResponse::Unknown { .. } => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition parses line by line as the text format and carries the node label.
    #[test]
    fn exposition_is_well_formed() {
        let m = Metrics::new(3);
        m.request_done(
            op_name(&ClientRequest::Status),
            &ClientResponse::Unknown { reason: "x".into() },
            0.002,
        );
        m.raft_term.get_or_create(&GroupLabels { group: 0 }).set(4);
        m.disk_written.inc_by(100);
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let samples = parse_samples(&text);
        let value = |name: &str| {
            samples
                .iter()
                .find(|(n, labels, _)| n == name && labels.contains("node=\"3\""))
                .map(|(_, _, v)| *v)
        };
        assert_eq!(value("quorumkv_requests_total"), Some(1.0));
        assert_eq!(value("quorumkv_proposals_dropped_total"), Some(1.0));
        assert_eq!(value("quorumkv_raft_term"), Some(4.0));
        assert_eq!(value("quorumkv_disk_written_bytes_total"), Some(100.0));
        assert_eq!(value("quorumkv_request_duration_seconds_count"), Some(1.0));
        assert!(text.contains("# TYPE quorumkv_fsync_duration_seconds histogram"));
        assert!(text.contains("# TYPE quorumkv_checkpoint_duration_seconds histogram"));
        assert!(text.contains("# TYPE quorumkv_turn_duration_seconds histogram"));
    }

    /// (name, labels, value) of every sample line; panics on a malformed one.
    pub(crate) fn parse_samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("sample has a value");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels close")),
                    None => (series, ""),
                };
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad metric name in {line:?}"
                );
                let value: f64 = value.parse().expect("numeric value");
                (name.to_string(), labels.to_string(), value)
            })
            .collect()
    }
}
