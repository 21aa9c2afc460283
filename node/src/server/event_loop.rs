//! The one task that owns everything mutable on a node: every hosted Raft group, the peer
//! transport, and the control-plane bookkeeping (who was heard from when, joins and leaves).
//!
//! Each turn waits for something (a tick, a peer message, a client request, an internal
//! notice), drains everything else already queued, then lets every group start its read round
//! and handle its Readys (see `group.rs` for the per-group contract). Ticks drive all groups at
//! once; every `cluster.reconcile_interval_ms` each group this node leads takes at most one
//! membership step towards its target (`meta::next_step`), and the metadata leader marks
//! members dead or alive. Invariants:
//! - a message for a group this node does not host creates the group only if it is the
//!   metadata group (how a joining node learns the map) or the map targets this node for it;
//! - a replica is deleted only when a committed membership entry removed this node, or when the
//!   group's leader said so with a membership newer than this replica's and the map no longer
//!   targets this node for it;
//! - the node stops by itself once the map says it was removed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use super::client_port::ClientCall;
use super::group::{
    new_machine, propose_meta, ClientAddrs, Group, PendingRead, ReadRequest, ReadyOutcome,
};
use super::snapshot_stream::{self, Streams};
use super::{raft_config, ServerError};
use crate::client::protocol::{
    BackupRequest, BackupResponse, ClientRequest, ClientResponse, NodeStatus, RefusedReason,
};
use crate::config::ServerConfig;
use crate::kv::{encode_command, Command, KvConfig, OpResult};
use crate::meta::{
    group_of_shard, next_step, shard_of_group, ClusterView, GroupId, LeaderView, Member,
    MemberState, MetaCommand, MetaResult, MetaState, Step, META_GROUP,
};
use crate::placement::{shard_for_key, ShardId};
use crate::raft::{
    LogIndex, Membership, MembershipChange, Message, MessageBody, NodeId, Raft, Restored, Role,
};
use crate::storage::{
    begin_destroy_group, finish_destroy_group, write_node_marker, Disk, GroupDisk, NodeMarker,
    NodeStorage, Wal,
};
use crate::transport::{PeerMessage, PeerTransport};

/// Inputs drained per channel per turn, so one busy source cannot starve the others.
const MAX_DRAIN_PER_TURN: usize = 4096;
/// Notices from the node's own background tasks (join, leave) queued for the event loop.
const INTERNAL_QUEUE: usize = 64;
/// Wait between attempts of a background admin request (join, final removal).
const ADMIN_RETRY_MS: u64 = 1_000;

/// What the node's background tasks tell the event loop.
#[derive(Debug)]
pub(super) enum Internal {
    /// Members learned from another node (a joining node needs their peer addresses before
    /// it has applied the map itself).
    Peers(Vec<Member>),
    /// The cluster refused this node's join.
    JoinRejected(String),
    /// The background admin request finished (successfully or not).
    AdminDone,
    /// The cluster applied this node's removal (it may never apply it itself: the metadata
    /// group can drop it as a learner first).
    Removed,
    /// The files of a deleted replica are gone (`error`: why not; the tombstone stays and the
    /// next start finishes the deletion).
    Destroyed {
        group: GroupId,
        error: Option<String>,
    },
}

pub(super) struct EventLoop {
    config: ServerConfig,
    kv_config: KvConfig,
    disk: Arc<dyn Disk>,
    /// The node's one write-ahead log: every group's log records and hard states.
    wal: Wal,
    /// The node marker as on disk (its tombstones are rewritten before a replica is deleted).
    marker: NodeMarker,
    groups: BTreeMap<GroupId, Group>,
    transport: PeerTransport,
    /// The map to use until the metadata group has applied `Bootstrap`: derived from the
    /// config on bootstrap members, uninitialized on a joining node.
    provisional_meta: MetaState,
    addrs: ClientAddrs,
    pid: u32,
    ticks: u64,
    /// No shard checkpoint starts before this instant: after one that held the event loop
    /// for d, the next waits at least d (requests then wait for at most one at a time).
    checkpoint_not_before: Option<Instant>,
    /// Peer messages and client requests handled so far.
    inputs: u64,
    /// Tick at which each node was last heard from (any message of any group).
    last_heard: BTreeMap<NodeId, u64>,
    /// Members whose match index is below the log's end, with that index and how many reconcile
    /// intervals it has not moved.
    stuck_members: BTreeMap<(GroupId, NodeId), (LogIndex, u32)>,
    /// Member states as `watch_liveness` last saw them (to notice members becoming Active).
    member_states: BTreeMap<NodeId, MemberState>,
    /// Tick at which this node last became metadata leader (dead-node detection waits a full
    /// timeout after it, so a new leader does not mark everyone dead).
    meta_leader_since: Option<u64>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: Option<mpsc::Receiver<Internal>>,
    admin_in_flight: bool,
    /// Deleted replicas whose files are still being removed off the event loop (`destroy`):
    /// none of them is created here again until its removal has finished.
    destroying: BTreeSet<GroupId>,
    stop_reason: Option<String>,
    /// Metrics and readiness for the admin port (sampled on ticks; decides nothing).
    telemetry: Option<super::telemetry::Telemetry>,
    /// Shard snapshot transfers in both directions (see snapshot_stream.rs).
    streams: Streams,
    /// The user table as applied, for the client and Redis ports' auth checks.
    users_tx: tokio::sync::watch::Sender<crate::auth::gate::UserTable>,
    /// The first admin (hashed at start) the metadata leader proposes while no user exists.
    bootstrap_admin: Option<crate::auth::User>,
    admin_bootstrap_proposed_term: Option<crate::raft::Term>,
    /// How this node's own admin requests (join, its removal) reach the client ports: TLS with
    /// the node's certificate when the ports speak TLS.
    admin_connector: crate::transport::stream::Connector,
}

impl EventLoop {
    pub(super) fn new(
        config: ServerConfig,
        kv_config: KvConfig,
        (disk, wal): (Arc<dyn Disk>, Wal),
        marker: NodeMarker,
        groups: BTreeMap<GroupId, Group>,
        transport: PeerTransport,
        provisional_meta: MetaState,
    ) -> EventLoop {
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
        let me = config.node_id;
        #[cfg(madsim)]
        let sim = config.sim.clone();
        let mut event_loop = EventLoop {
            config,
            kv_config,
            disk,
            wal,
            marker,
            groups,
            transport,
            provisional_meta,
            addrs: ClientAddrs {
                me,
                by_node: BTreeMap::new(),
                #[cfg(madsim)]
                sim,
            },
            pid: std::process::id(),
            ticks: 0,
            checkpoint_not_before: None,
            inputs: 0,
            last_heard: BTreeMap::new(),
            member_states: BTreeMap::new(),
            stuck_members: BTreeMap::new(),
            meta_leader_since: None,
            internal_tx,
            internal_rx: Some(internal_rx),
            admin_in_flight: false,
            destroying: BTreeSet::new(),
            stop_reason: None,
            telemetry: None,
            streams: Streams::default(),
            users_tx: tokio::sync::watch::channel(crate::auth::gate::UserTable::default()).0,
            bootstrap_admin: None,
            admin_connector: crate::transport::stream::Connector::default(),
            admin_bootstrap_proposed_term: None,
        };
        event_loop.on_meta_changed();
        event_loop
    }

    pub(super) async fn run(
        mut self,
        mut peer_inbox: mpsc::Receiver<PeerMessage>,
        mut client_calls: mpsc::Receiver<ClientCall>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let mut ticker =
            crate::deadline::Ticker::new(Duration::from_millis(self.config.tick_interval_ms));
        let mut internal = self
            .internal_rx
            .take()
            .ok_or_else(|| ServerError::Task("event loop started twice".into()))?;
        if !self.config.join.is_empty() {
            self.spawn_join();
        }
        tokio::pin!(shutdown);
        info!(
            node_id = self.config.node_id,
            groups = self.groups.len(),
            "event loop started"
        );
        // Set once shutdown was asked for: the tick by which leaderships must be handed over.
        let mut handoff_until_tick: Option<u64> = None;
        while self.stop_reason.is_none() {
            #[cfg(any(test, madsim))]
            let inputs_before = self.inputs;
            tokio::select! {
                biased;
                _ = &mut shutdown, if handoff_until_tick.is_none() => {
                    let ticks = self.config.shutdown_handoff_timeout_ms / self.config.tick_interval_ms;
                    handoff_until_tick = Some(self.ticks + ticks.max(1));
                    info!(node_id = self.config.node_id, "shutdown asked: handing over leaderships");
                    self.hand_off_leaderships();
                }
                _ = ticker.tick() => {
                    for _ in 0..self.ticks_due() {
                        self.on_tick();
                        if handoff_until_tick.is_some() {
                            self.hand_off_leaderships();
                        }
                    }
                }
                Some(message) = peer_inbox.recv() => self.on_peer(message)?,
                Some(call) = client_calls.recv() => self.on_client(call),
                Some(notice) = internal.recv() => self.on_internal(notice),
                else => break,
            }
            // BUGGIFY: a turn of one input (no batching), or a turn whose peer messages are
            // handled in the reverse of their arrival order.
            let drain_max = if crate::buggify!(self.config.sim, "split-turn") {
                0
            } else {
                MAX_DRAIN_PER_TURN
            };
            if crate::buggify!(self.config.sim, "reorder-turn-inputs") {
                let mut messages = Vec::new();
                while messages.len() < drain_max {
                    match peer_inbox.try_recv() {
                        Ok(message) => messages.push(message),
                        Err(_) => break,
                    }
                }
                for message in messages.into_iter().rev() {
                    self.on_peer(message)?;
                }
            }
            for _ in 0..drain_max {
                match peer_inbox.try_recv() {
                    Ok(message) => self.on_peer(message)?,
                    Err(_) => break,
                }
            }
            for _ in 0..drain_max {
                match client_calls.try_recv() {
                    Ok(call) => self.on_client(call),
                    Err(_) => break,
                }
            }
            self.handle_readys().await?;
            if let Some(until) = handoff_until_tick {
                let left = self.leaderships_to_hand_off();
                if left.is_empty() || self.ticks >= until {
                    info!(
                        node_id = self.config.node_id,
                        still_leading = ?left.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
                        "leadership handoff done: stopping"
                    );
                    break;
                }
            }
            #[cfg(any(test, madsim))]
            {
                simulate_busy(
                    self.config.sim_busy_us_per_input,
                    self.inputs - inputs_before,
                )
                .await;
                // Slow reads of this turn (a slow disk): the node was blocked meanwhile.
                pay_disk_stall(&self.config).await;
            }
        }
        if let Some(reason) = &self.stop_reason {
            info!(node_id = self.config.node_id, reason = %reason, "node stopping by itself");
        }
        self.shut_down(&mut client_calls);
        match self.stop_reason {
            Some(reason) if reason.starts_with("join refused") => Err(ServerError::Task(reason)),
            _ => Ok(()),
        }
    }

    /// Simulation/test only: spends simulated time for the inputs of this turn (see
    /// `ServerConfig::sim_busy_us_per_input`).
    /// The map in force: the metadata group's once it has applied `Bootstrap`.
    fn meta(&self) -> &MetaState {
        match self.groups.get(&META_GROUP).and_then(Group::meta) {
            Some(meta) if meta.is_initialized() => meta,
            _ => &self.provisional_meta,
        }
    }

    /// The applied user table, as the ports see it.
    pub(super) fn users(&self) -> tokio::sync::watch::Receiver<crate::auth::gate::UserTable> {
        self.users_tx.subscribe()
    }

    pub(super) fn set_admin_connector(&mut self, connector: crate::transport::stream::Connector) {
        self.admin_connector = connector;
    }

    pub(super) fn set_bootstrap_admin(&mut self, admin: crate::auth::User) {
        self.bootstrap_admin = Some(admin);
    }

    pub(super) fn set_telemetry(&mut self, telemetry: super::telemetry::Telemetry) {
        self.telemetry = Some(telemetry);
    }

    /// Every reconcile interval: metrics and readiness for the admin port.
    fn sample_telemetry(&mut self) {
        if let Some(mut telemetry) = self.telemetry.take() {
            let lag_entries_max = self.config.cluster.catch_up_lag_entries;
            telemetry.sample(
                self.config.node_id,
                self.meta(),
                &self.groups,
                lag_entries_max,
            );
            self.telemetry = Some(telemetry);
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        let groups = &self.groups;
        let resend = self
            .streams
            .on_tick(self.ticks, &self.config, |g| groups.contains_key(&g));
        self.transport.send(resend);
        let backup_idle_ticks_max =
            super::backup::BACKUP_IDLE_TIMEOUT_MS / self.config.tick_interval_ms;
        for group in self.groups.values_mut() {
            group.raft.tick();
            group.backups.on_tick(backup_idle_ticks_max);
        }
        let every =
            (self.config.cluster.reconcile_interval_ms / self.config.tick_interval_ms).max(1);
        if self.ticks.is_multiple_of(every) {
            self.reconcile();
            self.sample_telemetry();
        }
    }

    fn on_internal(&mut self, notice: Internal) {
        match notice {
            Internal::Peers(members) => {
                let me = self.config.node_id;
                for m in members.iter().filter(|m| m.id != me) {
                    self.learn_member(m);
                }
            }
            Internal::JoinRejected(reason) => {
                warn!(reason = %reason, "the cluster refused to admit this node");
                self.stop_reason = Some(format!("join refused: {reason}"));
            }
            Internal::AdminDone => self.admin_in_flight = false,
            Internal::Removed => {
                self.stop_reason = Some("this node left the cluster".into());
            }
            Internal::Destroyed { group, error: None } => {
                self.destroying.remove(&group);
                info!(group, "replica deleted");
            }
            Internal::Destroyed {
                group,
                error: Some(e),
            } => {
                // Still in `destroying`: never recreated by this process; a restart finishes
                // the deletion from the tombstone before it opens anything.
                tracing::error!(group, error = %e, "removing a deleted replica's files failed");
            }
        }
    }

    /// Records that `from` was heard. Only members of the cluster (in the metadata, or in a
    /// membership of a group hosted here) are tracked: peers are not authenticated without
    /// TLS, and an entry per forged sender id would grow the map without bound (issue 16).
    /// What members ever joined bounds it.
    fn note_heard(&mut self, from: NodeId) {
        if let Some(heard) = self.last_heard.get_mut(&from) {
            *heard = self.ticks;
        } else if self.meta().member(from).is_some()
            || self.groups.values().any(|g| g.has_member(from))
        {
            self.last_heard.insert(from, self.ticks);
        }
    }

    /// Node ids whose last message is tracked (tests).
    #[cfg(test)]
    pub(super) fn heard_from(&self) -> Vec<NodeId> {
        self.last_heard.keys().copied().collect()
    }

    pub(super) fn on_peer(&mut self, message: PeerMessage) -> Result<(), ServerError> {
        self.inputs += 1;
        let from = message.from();
        self.note_heard(from);
        match message {
            PeerMessage::Raft { group, message } => {
                // Before anything else: a refused message must not even create a group.
                if let Err(reason) = snapshot_stream::admit(group, &message) {
                    warn!(group, from, reason = %reason, "peer message refused");
                    return Ok(());
                }
                if let (Some(t), MessageBody::InstallSnapshot { .. }) =
                    (&self.telemetry, &message.body)
                {
                    t.metrics.snapshots_received.inc();
                }
                if !self.groups.contains_key(&group) {
                    if !self.may_create(group) {
                        debug!(group, from, "message for a group not hosted here: dropped");
                        return Ok(());
                    }
                    self.create_group(group, Membership::default())?;
                }
                let Some(g) = self.groups.get_mut(&group) else {
                    return Ok(());
                };
                if g.is_leader() && !g.has_member(from) && !g.raft.membership_change_pending() {
                    // A replica the group removed while it was away: tell it to go.
                    let notice = PeerMessage::Removed {
                        group,
                        from: self.config.node_id,
                        to: from,
                        term: g.raft.term(),
                        membership_index: g.raft.membership_index(),
                    };
                    self.transport.send(vec![notice]);
                    return Ok(());
                }
                g.raft.step(message);
            }
            PeerMessage::SnapshotChunk(chunk) => {
                let Some(g) = self.groups.get_mut(&chunk.group) else {
                    debug!(
                        group = chunk.group,
                        from, "snapshot chunk for a group not hosted here: dropped"
                    );
                    return Ok(());
                };
                let (ack, step) = self
                    .streams
                    .on_chunk(g, chunk, &self.config, &self.kv_config)?;
                if let Some(message) = step {
                    g.raft.step(message);
                }
                self.transport.send(vec![ack]);
            }
            PeerMessage::SnapshotAck {
                group,
                transfer,
                seq,
                accepted,
                ..
            } => {
                let me = self.config.node_id;
                let next = self.streams.on_ack(
                    me,
                    group,
                    from,
                    transfer,
                    seq,
                    accepted,
                    &self.config,
                    self.ticks,
                );
                self.transport.send(next.into_iter().collect());
            }
            PeerMessage::Removed {
                group,
                term,
                membership_index,
                ..
            } => {
                // Only a notice from a leader at least as recent as anything this replica has
                // heard counts: a deposed leader's committed membership may predate this
                // replica's re-adding.
                let targeted = self.targeted(group);
                let stale = self.groups.get(&group).is_some_and(|g| {
                    g.raft.membership_index() < membership_index && g.raft.term() <= term
                });
                if group != META_GROUP && stale && !targeted {
                    info!(
                        group,
                        from,
                        term,
                        membership_index,
                        "the group's leader removed this replica: deleting it"
                    );
                    self.destroy(group, membership_index)?;
                }
            }
        }
        Ok(())
    }

    /// Each hosted group with the membership its replica knows (tests).
    #[cfg(test)]
    pub(super) fn memberships(&self) -> BTreeMap<GroupId, Membership> {
        self.groups
            .iter()
            .map(|(id, g)| (*id, g.raft.membership().clone()))
            .collect()
    }

    fn may_create(&self, group: GroupId) -> bool {
        if group == META_GROUP {
            return true;
        }
        if self.destroying.contains(&group) {
            return false;
        }
        let meta = self.meta();
        let me = self.config.node_id;
        let target = meta.target(group);
        meta.is_initialized() && (target.voters.contains(&me) || target.learners.contains(&me))
    }

    fn create_group(&mut self, group: GroupId, membership: Membership) -> Result<(), ServerError> {
        let floor = self.marker.tombstones.get(&group).copied().unwrap_or(0);
        let opened = open_group(
            group,
            &self.disk,
            &self.wal,
            &self.config,
            &self.kv_config,
            membership,
            floor,
        )?;
        info!(group, "hosting a new replica");
        self.groups.insert(group, opened);
        Ok(())
    }

    /// Deletes this node's replica of `group`, removed by the membership at `removed_at` (its
    /// requests are answered first). The tombstone is made durable before any file goes, so a
    /// later replica of the group on this node starts with the right vote floor.
    fn destroy(&mut self, group: GroupId, removed_at: LogIndex) -> Result<(), ServerError> {
        debug_assert_ne!(group, META_GROUP);
        if self.groups.contains_key(&group) {
            let floor = self.marker.tombstones.entry(group).or_insert(0);
            *floor = (*floor).max(removed_at);
            write_node_marker(&*self.disk, &self.marker).map_err(|e| {
                ServerError::Storage(format!("recording group {group}'s tombstone: {e}"))
            })?;
        }
        self.streams.forget_group(group);
        if let Some(mut g) = self.groups.remove(&group) {
            g.fail_all_in_flight(&self.addrs);
            drop(g);
            begin_destroy_group(&*self.disk, &self.wal, group)
                .map_err(|e| ServerError::Storage(format!("deleting group {group}: {e}")))?;
            self.remove_files_off_loop(group);
        }
        Ok(())
    }

    /// Removes the files of `group`, whose deletion `begin_destroy_group` made durable, on a
    /// blocking thread: unlinking an engine file of gigabytes took 200-300 ms, and a node that
    /// gave up four replicas at once stalled every group for a second. In simulation on a task
    /// (madsim has no blocking pool), after a BUGGIFY delay that keeps the group in
    /// `destroying` for a while.
    fn remove_files_off_loop(&mut self, group: GroupId) {
        self.destroying.insert(group);
        let disk = Arc::clone(&self.disk);
        let notices = self.internal_tx.clone();
        #[cfg(madsim)]
        let delay_ms = if crate::buggify!(self.config.sim, "slow-replica-removal") {
            self.config.sim.buggify.draw(1..=500)
        } else {
            0
        };
        tokio::spawn(
            async move {
                #[cfg(not(madsim))]
                let outcome = tokio::task::spawn_blocking(move || {
                    finish_destroy_group(&*disk, group).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the removal task failed: {e}")));
                #[cfg(madsim)]
                let outcome = {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    finish_destroy_group(&*disk, group).map_err(|e| e.to_string())
                };
                let _ = notices
                    .send(Internal::Destroyed {
                        group,
                        error: outcome.err(),
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    /// Handles every group's Readys: stage them all (records buffered in the WAL), sync the
    /// WAL once for all groups (one write, one fsync), then finish them (send, apply, answer);
    /// repeated while any group has more.
    /// Protocol ticks for one timer tick: one, unless the simulator bends this node's clock.
    #[cfg(any(test, madsim))]
    fn ticks_due(&self) -> u64 {
        self.config.sim.clock.ticks_due()
    }

    #[cfg(not(any(test, madsim)))]
    fn ticks_due(&self) -> u64 {
        1
    }

    pub(super) async fn handle_readys(&mut self) -> Result<(), ServerError> {
        let started = Instant::now();
        let EventLoop {
            config,
            kv_config,
            wal,
            groups,
            transport,
            addrs,
            streams,
            ticks,
            telemetry,
            checkpoint_not_before,
            ..
        } = self;
        let metrics = telemetry.as_ref().map(|t| Arc::clone(&t.metrics));
        // Messages are gathered over all groups and handed to the transport together, so each
        // peer's share of a turn leaves in as few frames as possible.
        let mut outgoing: Vec<PeerMessage> = Vec::new();
        let mut outcomes: BTreeMap<GroupId, ReadyOutcome> = BTreeMap::new();
        for group in groups.values_mut() {
            group.start_read_round(addrs);
        }
        loop {
            let mut staged = Vec::new();
            for (&id, group) in groups.iter_mut() {
                // Most groups have nothing in most turns; an outcome left at its default
                // changes nothing below, so only groups with a Ready get one.
                if !group.raft.has_ready() {
                    continue;
                }
                let outcome = outcomes.entry(id).or_default();
                if let Some(ready) = group.stage_ready(config, addrs, &mut outgoing, outcome)? {
                    staged.push((id, ready));
                }
            }
            if staged.is_empty() {
                break;
            }
            // Leaders' early Appends leave before the sync (see group.rs).
            divert_snapshots(&mut outgoing, groups, streams, config, *ticks)?;
            transport.send(std::mem::take(&mut outgoing));
            wal.sync()
                .map_err(|e| ServerError::Storage(format!("syncing the write-ahead log: {e}")))?;
            // A slow disk's sync, or (BUGGIFY) a slow apply: the acknowledgements and applies
            // that wait for this sync wait for it too.
            #[cfg(any(test, madsim))]
            {
                pay_disk_stall(config).await;
                if crate::buggify!(config.sim, "delay-apply") {
                    let ms = config.sim.buggify.draw(1..=50);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            for (id, ready) in staged {
                let (Some(group), Some(outcome)) = (groups.get_mut(&id), outcomes.get_mut(&id))
                else {
                    continue;
                };
                group.finish_ready(ready, config, kv_config, &mut outgoing, outcome)?;
            }
            divert_snapshots(&mut outgoing, groups, streams, config, *ticks)?;
            transport.send(std::mem::take(&mut outgoing));
        }
        // Snapshots: the metadata group's whenever due; of the shards, at most one per turn,
        // the most overdue (ties: the lowest id), and not sooner after the previous one than
        // that one took. Shards that receive equal load fall due together, and a checkpoint's
        // durable commit writes every engine page dirtied since the last one: taken together,
        // or back to back, they would stall the node for all of them.
        if let Some(meta) = groups.get_mut(&META_GROUP) {
            meta.maybe_snapshot(config)?;
        }
        let paced = checkpoint_not_before.is_some_and(|t| Instant::now() < t);
        let most_overdue = groups
            .iter()
            .filter(|_| !paced)
            .filter(|(&id, _)| id != META_GROUP)
            .filter_map(|(&id, g)| g.snapshot_overdue_permille(config).map(|o| (o, id)))
            .max_by_key(|&(overdue, id)| (overdue, std::cmp::Reverse(id)));
        if let Some((_, id)) = most_overdue {
            if let Some(group) = groups.get_mut(&id) {
                let checkpoint_started = Instant::now();
                group.maybe_snapshot(config)?;
                let took = checkpoint_started.elapsed();
                *checkpoint_not_before = Some(Instant::now() + took);
                if let Some(m) = &metrics {
                    m.checkpoint_duration.observe(took.as_secs_f64());
                }
            }
        }
        if let Some((disk, names)) = wal.take_doomed() {
            // Off the event loop: unlinking a large segment takes the file system a while.
            // In simulation inline (madsim has no blocking pool; its disk costs no time).
            #[cfg(not(madsim))]
            drop(tokio::task::spawn_blocking(move || {
                crate::storage::remove_segments(disk.as_ref(), &names)
            }));
            #[cfg(madsim)]
            crate::storage::remove_segments(disk.as_ref(), &names);
        }
        if let Some(m) = &metrics {
            m.turn_duration.observe(started.elapsed().as_secs_f64());
        }
        let mut meta_applied = false;
        let mut meta_role_changed = false;
        let mut removed = Vec::new();
        for (id, outcome) in outcomes {
            if outcome.removed_me && id != META_GROUP {
                removed.push(id);
            }
            meta_applied |= outcome.meta_applied;
            meta_role_changed |= outcome.role_changed && id == META_GROUP;
        }
        for id in removed {
            self.delete_if_abandoned(id)?;
        }
        if meta_role_changed {
            let leads = self.groups.get(&META_GROUP).is_some_and(Group::is_leader);
            self.meta_leader_since = leads.then_some(self.ticks);
        }
        if meta_applied {
            self.on_meta_changed();
        }
        Ok(())
    }

    /// Whether the map wants this node to hold a replica of `group`.
    fn targeted(&self, group: GroupId) -> bool {
        let me = self.config.node_id;
        let target = self.meta().target(group);
        target.voters.contains(&me) || target.learners.contains(&me)
    }

    /// Deletes this node's replica of a data group once it is certainly not wanted: its own
    /// log says a committed change removed this node, the membership in force (which includes
    /// appended entries) does not list it, and the map does not target it. A replica that is
    /// catching up replays old entries, among them the removal of an earlier incarnation of
    /// itself; the map (which targets it, or it would not have been re-added) and the later
    /// re-adding entry keep it alive. Deleting a replica that is still a member would make it
    /// forget entries it acknowledged, which Raft cannot tolerate.
    fn delete_if_abandoned(&mut self, group: GroupId) -> Result<(), ServerError> {
        let me = self.config.node_id;
        let Some(g) = self.groups.get(&group) else {
            return Ok(());
        };
        let removal_committed = g.raft.commit_index() >= g.raft.membership_index();
        if group == META_GROUP || g.has_member(me) || !removal_committed || self.targeted(group) {
            return Ok(());
        }
        let removed_at = g.raft.membership_index();
        info!(
            group,
            removed_at, "a committed membership change removed this replica"
        );
        self.destroy(group, removed_at)
    }

    /// The map changed: learn addresses, publish the users, and stop if this node was removed.
    fn on_meta_changed(&mut self) {
        let users = self.meta().users();
        if **self.users_tx.borrow() != *users {
            let table = std::sync::Arc::new(users.clone());
            self.users_tx.send_replace(table);
        }
        let me = self.config.node_id;
        let members: Vec<Member> = self.meta().members().values().cloned().collect();
        for m in members.iter().filter(|m| m.id != me) {
            self.learn_member(m);
        }
        if let Some(mine) = members.iter().find(|m| m.id == me) {
            self.addrs.by_node.insert(me, mine.client_addr);
            if mine.state == MemberState::Removed {
                self.stop_reason = Some("this node left the cluster".into());
            }
        }
    }

    /// Connects to another member (or forgets a removed one) and records its client address
    /// for redirects. A member's addresses never change (`Join` refuses new ones for an id).
    fn learn_member(&mut self, m: &Member) {
        if m.state == MemberState::Removed {
            self.transport.remove_peer(m.id);
            self.addrs.by_node.remove(&m.id);
        } else {
            self.transport.add_peer(m.id, m.peer_addr);
            self.addrs.by_node.insert(m.id, m.client_addr);
        }
    }

    /// Every reconcile interval: each led group takes one step towards its target; the
    /// metadata leader watches liveness; a leaving node that holds nothing asks to be removed.
    fn reconcile(&mut self) {
        let meta = self.meta().clone();
        if !meta.is_initialized() {
            self.propose_bootstrap();
            return;
        }
        if meta.users().is_empty() {
            self.propose_bootstrap_admin();
        }
        let me = self.config.node_id;
        let lag = self.config.cluster.catch_up_lag_entries;
        let recent_ticks = u64::from(self.config.election_timeout_ticks_max);
        let reconcile_ms = self.config.cluster.reconcile_interval_ms;
        let stall_ms = self.config.cluster.learner_stall_timeout_ms;
        for (&id, group) in self.groups.iter_mut() {
            if !group.is_leader() || group.raft.membership_change_pending() {
                continue;
            }
            let target = meta.target(id);
            let match_index = group.raft.match_index();
            // A member whose match index stays put below the log's end while it is heard from
            // is probed afresh: the index may be an old incarnation's (a delayed ack from
            // before its replica was deleted and re-created), and Raft ignores rejections below
            // it forever.
            let last_index = group.raft.last_index();
            for (&n, &matched) in &match_index {
                let heard = self.last_heard.get(&n).copied().unwrap_or(0);
                if matched >= last_index || self.ticks.saturating_sub(heard) > recent_ticks {
                    self.stuck_members.remove(&(id, n));
                    continue;
                }
                let stuck = self.stuck_members.entry((id, n)).or_insert((matched, 0));
                if stuck.0 != matched {
                    *stuck = (matched, 0);
                }
                stuck.1 += 1;
                if u64::from(stuck.1) * reconcile_ms >= stall_ms {
                    self.stuck_members.remove(&(id, n));
                    info!(
                        group = id,
                        node = n,
                        matched,
                        last_index,
                        "match index stuck: probing the replica afresh"
                    );
                    group.raft.reset_progress(n);
                }
            }
            let view = LeaderView {
                me,
                membership: group.raft.membership(),
                commit_index: group.raft.commit_index(),
                match_index: &match_index,
                catch_up_lag_entries: lag,
            };
            let Some(step) = next_step(&view, &target) else {
                continue;
            };
            if let Step::Promote(n) = step {
                // Only a learner heard from lately, that holds the entry adding it, becomes a
                // voter: a stale match index (a dead node, or a replica that was re-created)
                // must not turn into a voter that cannot vote.
                let heard = self.last_heard.get(&n).copied().unwrap_or(0);
                let recent = self.ticks.saturating_sub(heard) <= recent_ticks;
                let matched = match_index.get(&n).copied().unwrap_or(0);
                let has_add = matched >= group.raft.membership_index();
                if !recent || !has_add {
                    debug!(group = id, node = n, recent, has_add, "promotion deferred");
                    continue;
                }
            }
            info!(group = id, ?step, "membership step towards the target");
            let result = match step {
                Step::AddLearner(n) => group
                    .raft
                    .propose_membership(MembershipChange::AddLearner(n))
                    .map(|_| ()),
                Step::Promote(n) => group
                    .raft
                    .propose_membership(MembershipChange::Promote(n))
                    .map(|_| ()),
                Step::Remove(n) => group
                    .raft
                    .propose_membership(MembershipChange::Remove(n))
                    .map(|_| ()),
                Step::TransferLeadership(n) => group.raft.transfer_leadership(n),
            };
            if let Err(e) = result {
                debug!(group = id, ?step, error = %e, "membership step not taken");
            }
        }
        self.propose_bootstrap();
        self.watch_liveness(&meta);
        let hosted: Vec<GroupId> = self.groups.keys().copied().collect();
        for group in hosted {
            if let Err(e) = self.delete_if_abandoned(group) {
                warn!(group, error = %e, "cannot delete an abandoned replica");
            }
        }
        self.ask_if_removed(&meta);
        self.finish_leaving(&meta);
    }

    /// A replica the map no longer wants may have been removed while it was away, and a
    /// removed follower hears nothing more (and may not campaign), so it asks: a term-0 message
    /// (stale, ignored by every Raft core) to the group's target voters; their leader answers a
    /// non-member with `Removed`.
    fn ask_if_removed(&mut self, meta: &MetaState) {
        let me = self.config.node_id;
        let mut probes = Vec::new();
        for (&group, g) in &self.groups {
            if group == META_GROUP || self.targeted(group) || g.is_leader() {
                continue;
            }
            for to in meta.target(group).voters.into_iter().filter(|&n| n != me) {
                let message = Message {
                    from: me,
                    to,
                    term: 0,
                    body: MessageBody::VoteResponse { granted: false },
                };
                probes.push(PeerMessage::Raft { group, message });
            }
        }
        if !probes.is_empty() {
            self.transport.send(probes);
        }
    }

    /// Metadata leader of a new cluster: writes the config's map into the log, so that nodes
    /// joining later rebuild the same map from the log.
    fn propose_bootstrap(&mut self) {
        if !self.config.join.is_empty() {
            return;
        }
        let placement = self.config.cluster.placement();
        let members = bootstrap_members(&self.config);
        let Some(group) = self.groups.get_mut(&META_GROUP) else {
            return;
        };
        let initialized = group.meta().is_some_and(MetaState::is_initialized);
        let term = group.raft.term();
        if initialized || !group.is_leader() || group.bootstrap_proposed_term == term {
            return;
        }
        if propose_meta(group, &MetaCommand::Bootstrap { placement, members }) {
            group.bootstrap_proposed_term = term;
            info!(term, "proposed the cluster's bootstrap map");
        }
    }

    /// Metadata leader of a cluster without users, with an admin password configured: proposes
    /// the first admin (once per term; the state machine applies it only while no user exists).
    fn propose_bootstrap_admin(&mut self) {
        let Some(admin) = self.bootstrap_admin.clone() else {
            return;
        };
        let Some(group) = self.groups.get_mut(&META_GROUP) else {
            return;
        };
        // Not on the provisional map `meta()` falls back to: the state machine refuses a
        // BootstrapAdmin applied before the bootstrap map itself, and this is proposed once a term.
        let applied_initialized = group.meta().is_some_and(MetaState::is_initialized);
        let term = group.raft.term();
        if !applied_initialized
            || !group.is_leader()
            || self.admin_bootstrap_proposed_term == Some(term)
        {
            return;
        }
        if propose_meta(group, &MetaCommand::BootstrapAdmin(admin.clone())) {
            self.admin_bootstrap_proposed_term = Some(term);
            info!(term, user = %admin.name, "proposed the first admin user");
        }
    }

    /// Metadata leader: a member silent past `dead_node_timeout_ms` is marked dead (its
    /// replicas get re-created elsewhere); a dead member heard from again is marked alive.
    fn watch_liveness(&mut self, meta: &MetaState) {
        let Some(since) = self.meta_leader_since else {
            return;
        };
        let me = self.config.node_id;
        let dead_ticks = self.config.cluster.dead_node_timeout_ms / self.config.tick_interval_ms;
        let recent_ticks =
            2 * self.config.cluster.reconcile_interval_ms / self.config.tick_interval_ms;
        let mut command = None;
        for m in meta.members().values().filter(|m| m.id != me) {
            let was = self.member_states.insert(m.id, m.state);
            if m.state == MemberState::Active && was != Some(MemberState::Active) {
                // A member that just joined or came back gets a full timeout from now.
                self.last_heard.insert(m.id, self.ticks);
            }
            let last_heard = self.last_heard.get(&m.id).copied();
            let timing = LivenessTiming {
                now: self.ticks,
                leader_since: since,
                dead_ticks,
                recent_ticks,
            };
            if let Some(c) = liveness_change(m.id, m.state, last_heard, timing) {
                command = Some(c);
                break;
            }
        }
        let Some(command) = command else {
            return;
        };
        if let Some(group) = self.groups.get_mut(&META_GROUP) {
            if group.is_leader() && propose_meta(group, &command) {
                info!(?command, "liveness change proposed");
            }
        }
    }

    /// A leaving node that no longer holds any shard replica asks to be removed for good.
    fn finish_leaving(&mut self, meta: &MetaState) {
        let me = self.config.node_id;
        let leaving = meta
            .member(me)
            .is_some_and(|m| m.state == MemberState::Leaving);
        let holds_shards = self.groups.keys().any(|&g| g != META_GROUP);
        if !leaving || holds_shards || self.admin_in_flight {
            return;
        }
        let command = MetaCommand::Remove(me);
        if let Some(group) = self.groups.get_mut(&META_GROUP) {
            if group.is_leader() {
                if propose_meta(group, &command) {
                    info!("all replicas handed off: proposed this node's removal");
                }
                return;
            }
        }
        let endpoints: Vec<_> = meta
            .members()
            .values()
            .filter(|m| m.id != me && m.state != MemberState::Removed)
            .map(|m| m.client_addr)
            .collect();
        info!("all replicas handed off: asking the metadata leader to remove this node");
        self.spawn_admin(endpoints, command);
    }

    fn spawn_admin(&mut self, endpoints: Vec<std::net::SocketAddr>, command: MetaCommand) {
        if endpoints.is_empty() {
            return;
        }
        self.admin_in_flight = true;
        let options = admin_client_options(&self.config, &self.admin_connector);
        let notices = self.internal_tx.clone();
        tokio::spawn(
            async move {
                match crate::client::Client::new(endpoints, options) {
                    Ok(mut client) => match client.admin(command.clone()).await {
                        Ok(result) => {
                            info!(?command, ?result, "admin request answered");
                            if let (MetaCommand::Remove(_), MetaResult::Applied { .. }) =
                                (&command, &result)
                            {
                                let _ = notices.send(Internal::Removed).await;
                            }
                        }
                        Err(e) => warn!(?command, error = %e, "admin request failed"),
                    },
                    Err(e) => warn!(error = %e, "cannot create an admin client"),
                }
                tokio::time::sleep(Duration::from_millis(ADMIN_RETRY_MS)).await;
                let _ = notices.send(Internal::AdminDone).await;
            }
            .in_current_span(),
        );
    }

    /// A node with `join` set asks the cluster to admit it (retrying until it is answered)
    /// and learns the members' addresses so that it can answer the metadata leader.
    fn spawn_join(&mut self) {
        let Some(me) = self.config.me().cloned() else {
            return;
        };
        let member = Member {
            id: me.id,
            peer_addr: me.peer_addr,
            client_addr: me.client_addr,
            zone: me.zone.clone(),
            state: MemberState::Active,
        };
        let endpoints = self.config.join.clone();
        let options = admin_client_options(&self.config, &self.admin_connector);
        let notices = self.internal_tx.clone();
        tokio::spawn(
            async move {
                loop {
                    match join_once(&endpoints, &options, &member, &notices).await {
                        Ok(()) => return,
                        Err(JoinError::Rejected(reason)) => {
                            let _ = notices.send(Internal::JoinRejected(reason)).await;
                            return;
                        }
                        Err(JoinError::Retry(e)) => {
                            warn!(error = %e, "join attempt failed; retrying");
                            tokio::time::sleep(Duration::from_millis(ADMIN_RETRY_MS)).await;
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Fails everything in flight; the storage is synced after every Ready, so nothing is left.
    /// The groups this node leads that another voter could take over, each with the most
    /// caught-up such voter (lowest id among equals).
    fn leaderships_to_hand_off(&self) -> Vec<(GroupId, NodeId)> {
        let me = self.config.node_id;
        self.groups
            .iter()
            .filter(|(_, g)| g.is_leader())
            .filter_map(|(&id, g)| {
                let matched = g.raft.match_index();
                let successor = g
                    .raft
                    .membership()
                    .voters
                    .iter()
                    .filter(|&&v| v != me)
                    .max_by_key(|&&v| (matched.get(&v).copied(), std::cmp::Reverse(v)))?;
                Some((id, *successor))
            })
            .collect()
    }

    /// Graceful shutdown: asks each led group to transfer leadership (again, if a transfer
    /// timed out), so clients find new leaders before this node stops answering.
    fn hand_off_leaderships(&mut self) {
        for (group, successor) in self.leaderships_to_hand_off() {
            if let Some(g) = self.groups.get_mut(&group) {
                if let Err(e) = g.raft.transfer_leadership(successor) {
                    debug!(group, successor, error = ?e, "leadership transfer not started");
                }
            }
        }
    }

    fn shut_down(&mut self, client_calls: &mut mpsc::Receiver<ClientCall>) {
        info!(
            node_id = self.config.node_id,
            "shutting down: failing in-flight requests"
        );
        for group in self.groups.values_mut() {
            group.shut_down();
        }
        client_calls.close();
        while let Ok(call) = client_calls.try_recv() {
            let _ = call
                .reply
                .send(ClientResponse::Refused(RefusedReason::ShuttingDown));
        }
    }

    fn on_client(&mut self, call: ClientCall) {
        self.inputs += 1;
        let ClientCall { request, reply } = call;
        match request {
            ClientRequest::Status => {
                let _ = reply.send(ClientResponse::Status(self.status()));
            }
            ClientRequest::ClusterInfo => {
                let _ = reply.send(ClientResponse::Cluster(self.cluster_view()));
            }
            ClientRequest::Admin(command) => self.on_admin(command, reply),
            ClientRequest::Execute { shard, command } => self.on_execute(shard, command, reply),
            ClientRequest::Backup(request) => self.on_backup(request, reply),
            // The client port answers these itself (client_port::admit); never queued here.
            ClientRequest::Authenticate(_) | ClientRequest::User(_) => {
                let refused = MetaResult::Rejected {
                    reason: "handled by the client port".into(),
                };
                let _ = reply.send(ClientResponse::Admin(refused));
            }
        }
    }

    /// A backup request (see backup.rs): `Open` only at the shard's leader, through a read
    /// round; `Next` and `Close` on whichever node holds the view.
    fn on_backup(&mut self, request: BackupRequest, reply: oneshot::Sender<ClientResponse>) {
        let (BackupRequest::Open { shard, nonce }
        | BackupRequest::Next { shard, nonce, .. }
        | BackupRequest::Close { shard, nonce }) = &request;
        let (shard, nonce) = (*shard, *nonce);
        let meta = self.meta();
        if !meta.is_initialized() {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::NotReady));
            return;
        }
        let shards = meta.placement().shards;
        if shard >= shards {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::BadShard {
                shard,
                shards,
            }));
            return;
        }
        let open_total: usize = self.groups.values().map(|g| g.backups.count()).sum();
        let Some(group) = self.groups.get_mut(&group_of_shard(shard)) else {
            let _ = reply.send(ClientResponse::Backup(BackupResponse::Gone));
            return;
        };
        let response = match request {
            BackupRequest::Open { .. } if !group.is_leader() => group.redirect(&self.addrs),
            BackupRequest::Open { .. } if group.backups.in_use(nonce) => {
                ClientResponse::Refused(RefusedReason::Busy)
            }
            BackupRequest::Open { .. } if open_total >= super::backup::MAX_OPEN_BACKUPS => {
                ClientResponse::Backup(BackupResponse::TooMany { open: open_total })
            }
            BackupRequest::Open { .. } => {
                group.backups.reserve(nonce);
                group.queue_read(PendingRead {
                    request: ReadRequest::BackupOpen { nonce },
                    reply,
                });
                return;
            }
            BackupRequest::Next {
                after, max_bytes, ..
            } => match group.backups.next(nonce, after.as_deref(), max_bytes) {
                Ok(items) => ClientResponse::Backup(items),
                Err(e) => {
                    warn!(shard, error = %e, "backup read failed");
                    ClientResponse::Unknown {
                        reason: format!("backup read: {e}"),
                    }
                }
            },
            BackupRequest::Close { .. } => ClientResponse::Backup(group.backups.close(nonce)),
        };
        let _ = reply.send(response);
    }

    fn on_admin(&mut self, command: MetaCommand, reply: oneshot::Sender<ClientResponse>) {
        if matches!(
            command,
            MetaCommand::Bootstrap { .. } | MetaCommand::BootstrapAdmin(_)
        ) {
            let refused = MetaResult::Rejected {
                reason: "Bootstrap and BootstrapAdmin are proposed by the cluster itself".into(),
            };
            let _ = reply.send(ClientResponse::Admin(refused));
            return;
        }
        let Some(group) = self.groups.get_mut(&META_GROUP) else {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::NotReady));
            return;
        };
        if !group.is_leader() {
            let _ = reply.send(group.redirect(&self.addrs));
            return;
        }
        if !group.meta().is_some_and(MetaState::is_initialized) {
            // The leader has not applied the cluster's Bootstrap yet; the command would be
            // rejected for good. Retry soon.
            let _ = reply.send(ClientResponse::Refused(RefusedReason::NotReady));
            return;
        }
        let payload = crate::meta::encode_command(&command);
        if let Err(Some(reply)) = group.propose(payload, Some(reply)) {
            let _ = reply.send(group.redirect(&self.addrs));
        }
    }

    fn on_execute(
        &mut self,
        shard: ShardId,
        command: Command,
        reply: oneshot::Sender<ClientResponse>,
    ) {
        let meta = self.meta();
        if !meta.is_initialized() {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::NotReady));
            return;
        }
        let shards = meta.placement().shards;
        let other_shard = command
            .op
            .keys()
            .into_iter()
            .any(|key| shard_for_key(key, shards) != shard);
        if shard >= shards || other_shard {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::BadShard {
                shard,
                shards,
            }));
            return;
        }
        let group_id = group_of_shard(shard);
        if !self.groups.contains_key(&group_id) {
            let replicas = meta
                .shard_replicas(shard)
                .iter()
                .filter_map(|id| meta.member(*id).map(|m| m.client_addr))
                .collect();
            let epoch = meta.epoch();
            let _ = reply.send(ClientResponse::WrongNode {
                shard,
                epoch,
                replicas,
            });
            return;
        }
        let pending: usize = self.groups.values().map(Group::pending_count).sum();
        let max_pending = self.config.limits.max_pending_requests;
        let Some(group) = self.groups.get_mut(&group_id) else {
            return;
        };
        if let Some(Err(invalid)) = group.kv().map(|kv| kv.check_limits(&command.op)) {
            let _ = reply.send(ClientResponse::Done(OpResult::Invalid(invalid)));
            return;
        }
        if pending >= max_pending {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::Busy));
            return;
        }
        if command.op.is_read() {
            #[cfg(any(test, madsim))]
            if self.config.planted_bugs.follower_local_reads && !group.is_leader() {
                let _ = reply.send(group.read_now(&command));
                return;
            }
            if !group.is_leader() {
                let _ = reply.send(group.redirect(&self.addrs));
                return;
            }
            group.queue_read(PendingRead {
                request: ReadRequest::Op(command),
                reply,
            });
            return;
        }
        if !group.is_leader() {
            let _ = reply.send(group.redirect(&self.addrs));
            return;
        }
        let payload = match encode_command(&command) {
            Ok(payload) => payload,
            Err(e) => {
                warn!(error = %e, "cannot encode client command");
                let _ = reply.send(ClientResponse::Refused(RefusedReason::Busy));
                return;
            }
        };
        if let Err(Some(reply)) = group.propose(payload, Some(reply)) {
            let _ = reply.send(group.redirect(&self.addrs));
        }
    }

    fn cluster_view(&self) -> ClusterView {
        let meta_leader = self.groups.get(&META_GROUP).and_then(|g| g.raft.leader());
        let groups = self.groups.values().map(Group::status).collect();
        self.meta()
            .to_view(self.config.node_id, meta_leader, groups)
    }

    fn status(&self) -> NodeStatus {
        let me = self.config.me();
        let meta_group = self.groups.get(&META_GROUP);
        let raft = meta_group.map(|g| &g.raft);
        let leader_id = raft.and_then(Raft::leader);
        let membership = raft.map(|r| r.membership().clone()).unwrap_or_default();
        let members = self
            .meta()
            .members()
            .values()
            .filter(|m| m.state != MemberState::Removed)
            .map(|m| crate::config::MemberConfig {
                id: m.id,
                peer_addr: m.peer_addr,
                client_addr: m.client_addr,
                zone: m.zone.clone(),
            })
            .collect::<Vec<_>>();
        NodeStatus {
            node_id: self.config.node_id,
            client_addr: me
                .map(|m| m.client_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            peer_addr: me
                .map(|m| m.peer_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            pid: self.pid,
            role: raft.map_or(Role::Follower, Raft::role),
            term: raft.map_or(0, Raft::term),
            leader_id,
            leader_addr: leader_id.and_then(|id| self.addrs.by_node.get(&id).copied()),
            commit_index: raft.map_or(0, Raft::commit_index),
            applied_index: meta_group.map_or(0, |g| g.raft.applied_index()),
            last_index: raft.map_or(0, Raft::last_index),
            snapshot_index: meta_group.map_or(0, |g| g.last_snapshot_index),
            voters: membership.voters.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
            members: if members.is_empty() {
                self.config.members.clone()
            } else {
                members
            },
            keys: self.groups.values().map(|g| g.machine.keys()).sum(),
            groups: self.groups.values().map(Group::status).collect(),
            admin_addr: self.config.admin_addr.map(|admin| {
                // A wildcard listen address is reached at the node's client IP.
                match me {
                    Some(m) if admin.ip().is_unspecified() => {
                        (m.client_addr.ip(), admin.port()).into()
                    }
                    _ => admin,
                }
            }),
            redis_addr: self.config.redis_addr,
        }
    }
}

/// Simulation/test only: spends simulated time for the inputs handled in one turn (see
/// `ServerConfig::sim_busy_us_per_input`).
#[cfg(any(test, madsim))]
async fn simulate_busy(per_input_us: u64, handled: u64) {
    if per_input_us > 0 && handled > 0 {
        tokio::time::sleep(Duration::from_micros(per_input_us * handled)).await;
    }
}

/// Simulation/test only: sleeps off the simulated time this node's slow disk owes.
#[cfg(any(test, madsim))]
async fn pay_disk_stall(config: &ServerConfig) {
    let owed = config.sim.disk_stall.take();
    if !owed.is_zero() {
        tokio::time::sleep(owed).await;
    }
}

enum JoinError {
    Rejected(String),
    Retry(String),
}

async fn join_once(
    endpoints: &[std::net::SocketAddr],
    options: &crate::client::ClientOptions,
    member: &Member,
    notices: &mpsc::Sender<Internal>,
) -> Result<(), JoinError> {
    let mut client = crate::client::Client::new(endpoints.to_vec(), options.clone())
        .map_err(|e| JoinError::Retry(e.to_string()))?;
    let view = client
        .cluster_info()
        .await
        .map_err(|e| JoinError::Retry(e.to_string()))?;
    let _ = notices.send(Internal::Peers(view.members)).await;
    match client.admin(MetaCommand::Join(member.clone())).await {
        Ok(MetaResult::Applied { epoch }) => {
            info!(epoch, "admitted to the cluster");
            Ok(())
        }
        Ok(MetaResult::Rejected { reason }) => Err(JoinError::Rejected(reason)),
        Err(e) => Err(JoinError::Retry(e.to_string())),
    }
}

fn admin_client_options(
    config: &ServerConfig,
    connector: &crate::transport::stream::Connector,
) -> crate::client::ClientOptions {
    crate::client::ClientOptions {
        rng_seed: Some(super::node_seed(config) ^ 0xad41_4e00),
        credentials: config.auth.admin_credentials(),
        connector: connector.clone(),
        ..crate::client::ClientOptions::default()
    }
}

/// When the metadata leader's liveness watch runs, in ticks.
#[derive(Clone, Copy, Debug)]
pub(super) struct LivenessTiming {
    pub now: u64,
    /// When this node became the metadata leader.
    pub leader_since: u64,
    pub dead_ticks: u64,
    pub recent_ticks: u64,
}

/// The liveness change the metadata leader proposes for one member, if any. A new leader gives
/// every member a full timeout from its own start before calling it dead, but only a message
/// really heard recently brings a dead member back: the leader's start is not news from the
/// member (membership seed 345: a new metadata leader marked a node killed long before alive,
/// and the map wanted its replicas back).
pub(super) fn liveness_change(
    member: NodeId,
    state: MemberState,
    last_heard: Option<u64>,
    t: LivenessTiming,
) -> Option<MetaCommand> {
    let silent_ticks = t
        .now
        .saturating_sub(last_heard.unwrap_or(0).max(t.leader_since));
    let heard_recently = last_heard.is_some_and(|h| t.now.saturating_sub(h) <= t.recent_ticks);
    match state {
        MemberState::Active if silent_ticks > t.dead_ticks => Some(MetaCommand::MarkDead(member)),
        MemberState::Dead if heard_recently => Some(MetaCommand::MarkAlive(member)),
        _ => None,
    }
}

/// Replaces each shard InstallSnapshot the cores want sent by a snapshot stream (its first
/// chunk; nothing while a transfer to that peer runs): a shard's snapshot message carries only
/// a token, the data follows in chunks.
fn divert_snapshots(
    outgoing: &mut Vec<PeerMessage>,
    groups: &BTreeMap<GroupId, Group>,
    streams: &mut Streams,
    config: &ServerConfig,
    ticks: u64,
) -> Result<(), ServerError> {
    let is_shard_snapshot = |m: &PeerMessage| {
        matches!(m, PeerMessage::Raft { group, message }
            if *group != META_GROUP && matches!(message.body, MessageBody::InstallSnapshot { .. }))
    };
    if !outgoing.iter().any(is_shard_snapshot) {
        return Ok(());
    }
    let mut kept = Vec::with_capacity(outgoing.len());
    for m in std::mem::take(outgoing) {
        if !is_shard_snapshot(&m) {
            kept.push(m);
            continue;
        }
        let (group, to) = (m.group(), m.to());
        if let Some(g) = groups.get(&group) {
            if let Some(first) = streams.start(config.node_id, g, to, config, ticks)? {
                kept.push(first);
            }
        }
    }
    *outgoing = kept;
    Ok(())
}

/// The members a bootstrap node's config lists, as the map records them.
pub(super) fn bootstrap_members(config: &ServerConfig) -> Vec<Member> {
    config
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            peer_addr: m.peer_addr,
            client_addr: m.client_addr,
            zone: m.zone.clone(),
            state: MemberState::Active,
        })
        .collect()
}

/// Opens (or creates, empty) this node's replica of `group` inside the node's disk.
/// `initial_membership` is used only when the group's storage carries no membership yet.
pub(super) fn open_group(
    group: GroupId,
    disk: &Arc<dyn Disk>,
    wal: &Wal,
    config: &ServerConfig,
    kv_config: &KvConfig,
    initial_membership: Membership,
    vote_floor: LogIndex,
) -> Result<Group, ServerError> {
    let group_disk: Arc<dyn Disk> = Arc::new(GroupDisk::new(disk.clone(), group));
    let (storage, recovered) = NodeStorage::open(wal, group_disk.clone(), group)
        .map_err(|e| ServerError::Storage(format!("group {group}: {e}")))?;
    let machine = new_machine(
        group,
        kv_config,
        config,
        recovered.snapshot.as_ref(),
        &group_disk,
    )?;
    let restored = Restored {
        hard_state: recovered.hard_state.clone(),
        snapshot: recovered.snapshot.as_ref().map(|s| s.meta.clone()),
        entries: recovered.entries.clone(),
        initial_membership,
    };
    let mut raft = Raft::new(raft_config(config, group)?, restored)
        .map_err(|e| ServerError::Raft(format!("group {group}: {e:?}")))?;
    raft.set_vote_floor(vote_floor);
    // The core needs the snapshot's data to send it to followers behind its log start.
    if let Some(snapshot) = recovered.snapshot {
        raft.snapshot_saved(snapshot);
    }
    debug!(group, shard = ?shard_of_group(group), "group opened");
    Ok(Group::new(group, raft, machine, storage, group_disk))
}

/// The membership a bootstrap node gives a group it creates at first start.
pub(super) fn target_membership(meta: &MetaState, group: GroupId) -> Membership {
    let target = meta.target(group);
    Membership {
        voters: target.voters,
        learners: target.learners,
    }
}

/// Groups a bootstrap node hosts from its first start: the metadata group and every shard
/// the config's map places on it.
pub(super) fn bootstrap_groups(meta: &MetaState, me: NodeId) -> BTreeSet<GroupId> {
    let mut groups = BTreeSet::from([META_GROUP]);
    for shard in 0..meta.placement().shards {
        if meta.shard_replicas(shard).contains(&me) {
            groups.insert(group_of_shard(shard));
        }
    }
    groups
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    const T: LivenessTiming = LivenessTiming {
        now: 10_000,
        leader_since: 9_990,
        dead_ticks: 300,
        recent_ticks: 20,
    };

    #[test]
    fn a_new_leader_does_not_revive_a_member_heard_long_ago() {
        // Heard at tick 100, dead since; this node became leader 10 ticks ago.
        assert_eq!(liveness_change(4, MemberState::Dead, Some(100), T), None);
        assert_eq!(liveness_change(4, MemberState::Dead, None, T), None);
    }

    #[test]
    fn a_dead_member_heard_recently_is_marked_alive() {
        assert_eq!(
            liveness_change(4, MemberState::Dead, Some(9_995), T),
            Some(MetaCommand::MarkAlive(4))
        );
    }

    #[test]
    fn an_active_member_gets_a_full_timeout_from_the_leaders_start() {
        // Silent since tick 100, but the leader started at 9_990: not dead yet.
        assert_eq!(liveness_change(4, MemberState::Active, Some(100), T), None);
        let later = LivenessTiming {
            now: T.leader_since + T.dead_ticks + 1,
            ..T
        };
        assert_eq!(
            liveness_change(4, MemberState::Active, Some(100), later),
            Some(MetaCommand::MarkDead(4))
        );
    }
}
