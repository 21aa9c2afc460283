//! One Raft group hosted by a node: its Raft core, its state machine (the metadata or one
//! shard's keys), its own storage inside the node's disk, and the client requests waiting on it.
//!
//! `Group::handle_ready` keeps the single-group contract of the Raft core (persist -> send ->
//! apply -> answer -> advance); the node's event loop calls it for every group each turn and
//! acts on what it reports (messages to send, metadata applied, the group told it was removed).
//! Invariants:
//! - no message leaves before the state it depends on is durable, except a leader's `Append`s
//!   of new entries when the Ready changes neither term nor vote (Raft dissertation §10.2.1):
//!   the core counts the leader's own copy only after `advance`;
//! - a write is answered only with the result of the entry at the (index, term) it was proposed
//!   at; a replaced entry or lost leadership answers `Unknown` (the client retries with the same
//!   (client id, seq), applied at most once);
//! - a read is answered only after a ReadIndex round confirmed leadership and the state machine
//!   applied up to the read index.

use std::collections::BTreeMap;

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::backup::Backups;
use super::ServerError;
use crate::client::protocol::{ClientResponse, RefusedReason};
use crate::config::ServerConfig;
use std::sync::Arc;

use crate::kv::{decode_command, Command, Engine, KvConfig, KvError, StateMachine};
use crate::meta::{self, GroupId, GroupStatus, MetaCommand, MetaState, META_GROUP};
use crate::raft::{
    Entry, EntryPayload, HardState, LogIndex, MembershipChange, Message, MessageBody, NodeId, Raft,
    Ready, Role, Snapshot, Term,
};
use crate::storage::{Disk, NodeStorage};
use crate::transport::PeerMessage;

/// Members' client addresses (for redirects), as the node's metadata knows them.
pub(super) struct ClientAddrs {
    pub(super) me: NodeId,
    pub(super) by_node: BTreeMap<NodeId, std::net::SocketAddr>,
    /// Simulation only: BUGGIFY may drop the leader hint of a redirect.
    #[cfg(madsim)]
    pub(super) sim: crate::sim_hooks::SimHooks,
}

/// What a group's state machine is. (One per hosted group, replaced only when a snapshot is
/// installed: the size difference of the variants costs nothing.)
#[allow(clippy::large_enum_variant)]
pub(super) enum GroupMachine {
    Meta(MetaState),
    Kv(StateMachine),
}

impl GroupMachine {
    fn applied_index(&self) -> LogIndex {
        match self {
            GroupMachine::Meta(m) => m.applied_index(),
            GroupMachine::Kv(m) => m.applied_index(),
        }
    }

    fn skip(&mut self, index: LogIndex) -> Result<(), KvError> {
        match self {
            GroupMachine::Meta(m) => {
                m.skip(index);
                Ok(())
            }
            GroupMachine::Kv(m) => m.skip(index),
        }
    }

    pub(super) fn keys(&self) -> u64 {
        match self {
            GroupMachine::Meta(_) => 0,
            GroupMachine::Kv(m) => m.len() as u64,
        }
    }

    pub(super) fn stored_bytes(&self) -> u64 {
        match self {
            GroupMachine::Meta(_) => 0,
            GroupMachine::Kv(m) => m.stored_bytes(),
        }
    }
}

/// The engine file of a shard's replica, inside its group's files (`g<group>.kv.redb`).
pub(super) const ENGINE_FILE: &str = "kv.redb";
/// A shard's applies accumulate in one engine transaction until it holds this many bytes of
/// command payloads or `ENGINE_BATCH_MAX_ENTRIES` entries (or a checkpoint or a backup view
/// needs it committed).
const ENGINE_BATCH_MAX_BYTES: u64 = 64 * 1024;
const ENGINE_BATCH_MAX_ENTRIES: u64 = 256;
/// A snapshot (checkpoint) that took at least this long is logged as a warning.
const SLOW_SNAPSHOT_MS: u64 = 250;
/// What a shard's Raft snapshot carries instead of its data: "the engine file holds the state
/// at this index" (the data stays in the engine; a peer gets it streamed, see
/// `snapshot_stream.rs`). A snapshot whose data is not a token is the legacy in-memory image.
const TOKEN_MAGIC: &[u8; 8] = b"QKVENG2\0";

pub(super) fn checkpoint_token(index: LogIndex) -> Vec<u8> {
    let mut token = TOKEN_MAGIC.to_vec();
    token.extend_from_slice(&index.to_le_bytes());
    token
}

/// The index a checkpoint token names; None when `data` is no token.
pub(super) fn parse_token(data: &[u8]) -> Option<LogIndex> {
    if data.len() != 16 || &data[..8] != TOKEN_MAGIC {
        return None;
    }
    let mut index = [0u8; 8];
    index.copy_from_slice(&data[8..]);
    Some(LogIndex::from_le_bytes(index))
}

/// Opens a shard's engine file in its group's files.
pub(super) fn open_engine(
    group_disk: &Arc<dyn Disk>,
    name: &str,
    config: &ServerConfig,
) -> Result<Engine, KvError> {
    let mut engine = Engine::open(group_disk, name, config.engine_cache_bytes_per_group)?;
    engine.set_quick_repair(config.engine_quick_repair);
    Ok(engine)
}

/// A state machine for `group`: the metadata restored from a snapshot's data, or a shard's
/// engine opened from `group_disk` and checked against the snapshot (a legacy in-memory
/// snapshot is upgraded into an empty engine).
pub(super) fn new_machine(
    group: GroupId,
    kv_config: &KvConfig,
    config: &ServerConfig,
    snapshot: Option<&Snapshot>,
    group_disk: &Arc<dyn Disk>,
) -> Result<GroupMachine, ServerError> {
    // The snapshot's data is the last field of the snapshot file (`storage::snapshot`), so
    // its length says where in the file a bad image starts.
    let context = |e: &dyn std::fmt::Display| {
        ServerError::Storage(format!(
            "group {group}: snapshot file g{group}.{} at index {} (its state image is the \
             file's last {} bytes): {e}",
            crate::storage::SNAPSHOT_FILE,
            snapshot.map_or(0, |s| s.meta.index),
            snapshot.map_or(0, |s| s.data.len()),
        ))
    };
    if group == META_GROUP {
        return Ok(GroupMachine::Meta(match snapshot {
            Some(s) => MetaState::restore(&s.data).map_err(|e| context(&e))?,
            None => MetaState::uninitialized(),
        }));
    }
    let engine = open_engine(group_disk, ENGINE_FILE, config).map_err(|e| context(&e))?;
    let applied = engine.committed_applied_index().map_err(|e| context(&e))?;
    #[allow(unused_mut)]
    let mut machine = match snapshot.map(|s| (s, parse_token(&s.data))) {
        None => StateMachine::open(kv_config.clone(), engine).map_err(|e| context(&e))?,
        Some((s, Some(index))) => {
            if index != s.meta.index || applied < index {
                return Err(context(&format!(
                    "the engine file {ENGINE_FILE} holds applied index {applied}, behind the \
                     checkpoint at {index} the log was compacted to: the replica is damaged, \
                     re-seed it (remove its files and let it rejoin)"
                )));
            }
            StateMachine::open(kv_config.clone(), engine).map_err(|e| context(&e))?
        }
        // A legacy snapshot (format 1, the whole shard in one image, written by an older
        // build): upgraded into the empty engine once; the next checkpoint replaces it.
        Some((s, None)) if applied == 0 => {
            info!(
                group,
                index = s.meta.index,
                "upgrading a legacy in-memory snapshot into the engine"
            );
            StateMachine::upgrade(kv_config.clone(), engine, &s.data).map_err(|e| context(&e))?
        }
        Some((s, None)) if applied >= s.meta.index => {
            StateMachine::open(kv_config.clone(), engine).map_err(|e| context(&e))?
        }
        Some((s, None)) => {
            return Err(context(&format!(
                "a legacy snapshot (format 1, index {}) lies next to an engine file that holds \
                 only applied index {applied}: this build cannot tell which to trust. Stop the \
                 node, remove g{group}.{ENGINE_FILE} from its data directory and start it again \
                 to upgrade from the snapshot",
                s.meta.index
            )));
        }
    };
    #[cfg(any(test, madsim))]
    machine.set_planted_bugs(config.planted_bugs);
    Ok(GroupMachine::Kv(machine))
}

/// Who waits for a proposed entry: a client (KV write or admin command) or nobody (a command
/// the node proposed itself, e.g. marking a silent member dead).
pub(super) struct PendingWrite {
    pub(super) term: Term,
    pub(super) reply: Option<oneshot::Sender<ClientResponse>>,
}

pub(super) struct PendingRead {
    pub(super) request: ReadRequest,
    pub(super) reply: oneshot::Sender<ClientResponse>,
}

/// What waits for a ReadIndex round: a read, or the opening of a backup view.
pub(super) enum ReadRequest {
    Op(Command),
    BackupOpen { nonce: u64 },
}

/// A Ready written to storage but not yet synced (see `Group::stage_ready`).
pub(super) struct StagedReady {
    ready: Ready,
    commit_before: LogIndex,
}

/// What handling the Readys of one turn reports to the node.
#[derive(Default)]
pub(super) struct ReadyOutcome {
    /// Metadata commands applied (metadata group only), in log order.
    pub(super) meta_applied: bool,
    /// A committed membership entry removed this node from the group.
    pub(super) removed_me: bool,
    /// The group's role changed (leadership gained or lost).
    pub(super) role_changed: bool,
}

pub(super) struct Group {
    pub(super) id: GroupId,
    pub(super) raft: Raft,
    pub(super) machine: GroupMachine,
    pub(super) storage: NodeStorage,
    pub(super) last_snapshot_index: LogIndex,
    /// Command payload bytes applied since the last snapshot (checkpoint).
    log_bytes_since_snapshot: u64,
    /// Command payload bytes and entries applied into the engine's open batch (see
    /// `ENGINE_BATCH_MAX_BYTES`).
    batch_bytes: u64,
    batch_entries: u64,
    /// The group's files (a shard's engine file lives there).
    pub(super) disk: Arc<dyn Disk>,
    /// The hard state last made durable (term and vote gate the leader's early sends).
    durable_hard_state: HardState,
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    reads_to_confirm: Vec<PendingRead>,
    reads_by_ctx: BTreeMap<u64, Vec<PendingRead>>,
    reads_by_index: BTreeMap<LogIndex, Vec<PendingRead>>,
    next_read_ctx: u64,
    /// Term in which this node, as metadata leader, last proposed `Bootstrap`.
    pub(super) bootstrap_proposed_term: Term,
    /// Open backup views of this shard (leader only; see backup.rs).
    pub(super) backups: Backups,
    /// Simulation: the term in which BUGGIFY decided to hold back this leader's Appends, and
    /// for how many more turns.
    #[cfg(madsim)]
    held_appends: Option<(Term, u64)>,
}

impl Group {
    pub(super) fn new(
        id: GroupId,
        raft: Raft,
        machine: GroupMachine,
        storage: NodeStorage,
        disk: Arc<dyn Disk>,
    ) -> Group {
        let last_snapshot_index = machine.applied_index();
        let durable_hard_state = raft.hard_state();
        Group {
            id,
            raft,
            machine,
            storage,
            last_snapshot_index,
            log_bytes_since_snapshot: 0,
            batch_bytes: 0,
            batch_entries: 0,
            disk,
            durable_hard_state,
            pending_writes: BTreeMap::new(),
            reads_to_confirm: Vec::new(),
            reads_by_ctx: BTreeMap::new(),
            reads_by_index: BTreeMap::new(),
            next_read_ctx: 1,
            bootstrap_proposed_term: 0,
            backups: Backups::default(),
            #[cfg(madsim)]
            held_appends: None,
        }
    }

    pub(super) fn machine_applied_index(&self) -> LogIndex {
        self.machine.applied_index()
    }

    /// A received snapshot's engine, durable at `index`, replaced the group's: that is a
    /// checkpoint at `index` (the core persists its token when it steps the InstallSnapshot;
    /// status and the checkpoint triggers count from here already).
    pub(super) fn engine_swapped_in(&mut self, index: LogIndex) {
        self.last_snapshot_index = self.last_snapshot_index.max(index);
        self.log_bytes_since_snapshot = 0;
        self.batch_bytes = 0;
        self.batch_entries = 0;
    }

    pub(super) fn is_leader(&self) -> bool {
        self.raft.role() == Role::Leader
    }

    pub(super) fn meta(&self) -> Option<&MetaState> {
        match &self.machine {
            GroupMachine::Meta(m) => Some(m),
            GroupMachine::Kv(_) => None,
        }
    }

    pub(super) fn kv(&self) -> Option<&StateMachine> {
        match &self.machine {
            GroupMachine::Kv(m) => Some(m),
            GroupMachine::Meta(_) => None,
        }
    }

    pub(super) fn pending_count(&self) -> usize {
        self.pending_writes.len()
            + self.reads_to_confirm.len()
            + self.reads_by_ctx.values().map(Vec::len).sum::<usize>()
            + self.reads_by_index.values().map(Vec::len).sum::<usize>()
    }

    /// Proposes an encoded command; the reply (if any) is sent once it is applied.
    /// Returns false (and does not consume a reply) when this node is not the leader.
    pub(super) fn propose(
        &mut self,
        payload: Vec<u8>,
        reply: Option<oneshot::Sender<ClientResponse>>,
    ) -> Result<(), Option<oneshot::Sender<ClientResponse>>> {
        match self.raft.propose(payload) {
            Ok((index, term)) => {
                let replaced = self
                    .pending_writes
                    .insert(index, PendingWrite { term, reply });
                if let Some(PendingWrite {
                    reply: Some(old), ..
                }) = replaced
                {
                    let _ = old.send(ClientResponse::Unknown {
                        reason: "log entry replaced".into(),
                    });
                }
                Ok(())
            }
            Err(_) => Err(reply),
        }
    }

    pub(super) fn queue_read(&mut self, read: PendingRead) {
        self.reads_to_confirm.push(read);
    }

    /// The answer for requests this node cannot serve: who leads this group, if known.
    pub(super) fn redirect(&self, addrs: &ClientAddrs) -> ClientResponse {
        // BUGGIFY: a redirect that names no leader (the client must search for it).
        let leader_id = self
            .raft
            .leader()
            .filter(|&id| id != addrs.me && !crate::buggify!(addrs.sim, "drop-leader-hint"));
        ClientResponse::Redirect {
            leader_id,
            leader_addr: leader_id.and_then(|id| addrs.by_node.get(&id).copied()),
        }
    }

    pub(super) fn read_now(&self, command: &Command) -> ClientResponse {
        let Some(machine) = self.kv() else {
            return ClientResponse::Refused(RefusedReason::NotReady);
        };
        match machine.read(&command.op) {
            Ok(result) => ClientResponse::Done(result),
            Err(e) => {
                warn!(group = self.id, error = %e, "read failed");
                ClientResponse::Refused(RefusedReason::Busy)
            }
        }
    }

    /// One ReadIndex round for every read gathered this turn (batching).
    pub(super) fn start_read_round(&mut self, addrs: &ClientAddrs) {
        if self.reads_to_confirm.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.reads_to_confirm);
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        match self.raft.read_index(ctx) {
            Ok(()) => {
                self.reads_by_ctx.insert(ctx, reads);
            }
            Err(_) => {
                for read in reads {
                    if let ReadRequest::BackupOpen { nonce } = read.request {
                        self.backups.cancel(nonce);
                    }
                    let _ = read.reply.send(self.redirect(addrs));
                }
            }
        }
    }

    /// First half of handling a Ready: takes it, sends a leader's early `Append`s and writes
    /// it to storage without syncing (the node syncs all groups' writes at once, then calls
    /// `finish_ready`). None when the core has nothing ready.
    pub(super) fn stage_ready(
        &mut self,
        config: &ServerConfig,
        addrs: &ClientAddrs,
        outbox: &mut Vec<PeerMessage>,
        outcome: &mut ReadyOutcome,
    ) -> Result<Option<StagedReady>, ServerError> {
        if !self.raft.has_ready() {
            return Ok(None);
        }
        let mut ready: Ready = self.raft.ready();
        #[cfg(madsim)]
        self.hold_new_leader_appends(&mut ready, &addrs.sim);
        let commit_before = self.durable_hard_state.commit;
        if let Some(soft) = &ready.soft_state {
            debug!(group = self.id, role = ?soft.role, leader = ?soft.leader, term = self.raft.term(), "role changed");
            outcome.role_changed = true;
            if soft.role != Role::Leader {
                self.fail_all_in_flight(addrs);
            }
        }
        self.send_leader_appends_early(&mut ready, outbox);
        self.storage
            .persist_deferred(
                ready.hard_state.as_ref(),
                &ready.entries,
                ready.snapshot.as_ref(),
            )
            .map_err(|e| ServerError::Storage(format!("group {}: {e}", self.id)))?;
        // A shard's committed entries are applied, and their clients answered, before the
        // turn's sync: the Raft core hands out only entries committed by a quorum AND durable
        // here already (`commit.min(persisted)`, persisted advancing only after a sync), so
        // nothing of this turn's unsynced writes is among them; the answers then leave while
        // the disk syncs. A Ready with a snapshot, and the metadata group (whose applies
        // change the map the other groups act on), apply after the sync, in `finish_ready`;
        // so does a shard when BUGGIFY says so (`apply` skips what is applied already).
        let early = self.id != META_GROUP
            && ready.snapshot.is_none()
            && !crate::buggify!(config.sim, "apply-after-sync");
        if early {
            for entry in &ready.committed {
                self.apply(entry, config.node_id, outcome)?;
            }
        }
        Ok(Some(StagedReady {
            ready,
            commit_before,
        }))
    }

    /// Second half, once the storage is synced: sends, applies, answers and advances.
    pub(super) fn finish_ready(
        &mut self,
        staged: StagedReady,
        config: &ServerConfig,
        kv_config: &KvConfig,
        outbox: &mut Vec<PeerMessage>,
        outcome: &mut ReadyOutcome,
    ) -> Result<(), ServerError> {
        let StagedReady {
            mut ready,
            commit_before,
        } = staged;
        debug_assert!(
            !self.storage.needs_sync(),
            "finishing a Ready before its sync"
        );
        if let Some(hard_state) = &ready.hard_state {
            self.durable_hard_state = hard_state.clone();
        }
        if let Some(snapshot) = &ready.snapshot {
            self.install_snapshot(snapshot, config, kv_config)?;
            outcome.meta_applied |= self.id == META_GROUP;
        }
        #[cfg(any(test, madsim))]
        self.observe_ready(config, &ready, commit_before);
        let _ = commit_before;
        outbox.extend(self.wrap(std::mem::take(&mut ready.messages)));
        for entry in &ready.committed {
            self.apply(entry, config.node_id, outcome)?;
        }
        // The applies stay in the engine's open batch (reads see it) over several turns: each
        // engine commit copies the B-tree pages it touched, so committing every turn costs
        // CPU and file space for nothing (the log, not the engine, makes them durable).
        // BUGGIFY: commit at the end of this turn anyway (batches of every size get crashed).
        let full = self.batch_bytes >= ENGINE_BATCH_MAX_BYTES
            || self.batch_entries >= ENGINE_BATCH_MAX_ENTRIES;
        if full || crate::buggify!(config.sim, "engine-commit-early") {
            self.commit_batch()?;
        }
        #[cfg(any(test, madsim))]
        if ready.snapshot.is_some() || !ready.committed.is_empty() {
            self.observe_digest(config);
        }
        for read in &ready.reads {
            if let Some(reads) = self.reads_by_ctx.remove(&read.ctx) {
                self.reads_by_index
                    .entry(read.index)
                    .or_default()
                    .extend(reads);
            }
        }
        self.serve_reads();
        self.raft.advance(ready);
        Ok(())
    }

    /// BUGGIFY: a new leader's Appends are lost (its heartbeats are not) for up to 30 turns,
    /// or until it commits an entry of its term: the window in which only the term-commit
    /// rule keeps a read from being served at the commit index the leader inherited. Decided
    /// once per term.
    #[cfg(madsim)]
    fn hold_new_leader_appends(&mut self, ready: &mut Ready, sim: &crate::sim_hooks::SimHooks) {
        if self.raft.role() != Role::Leader || self.raft.term_committed() {
            self.held_appends = None;
            return;
        }
        let term = self.raft.term();
        let hold = match &mut self.held_appends {
            Some((held_term, left)) if *held_term == term => {
                let hold = *left > 0;
                *left = left.saturating_sub(1);
                hold
            }
            _ => {
                let turns = if crate::buggify!(sim, "hold-new-leader-appends") {
                    sim.buggify.draw(1..=30)
                } else {
                    0
                };
                self.held_appends = Some((term, turns));
                turns > 0
            }
        };
        if hold {
            ready
                .messages
                .retain(|m| !matches!(m.body, MessageBody::Append { .. }));
        }
    }

    fn wrap(&self, messages: Vec<Message>) -> Vec<PeerMessage> {
        messages
            .into_iter()
            .map(|message| PeerMessage::Raft {
                group: self.id,
                message,
            })
            .collect()
    }

    /// Simulation/test only: reports a shard replica's data digest at its applied index, so
    /// that the harness can compare replicas (a snapshot stream that lost a key shows here).
    #[cfg(any(test, madsim))]
    fn observe_digest(&self, config: &ServerConfig) {
        use super::probe::ProtocolEvent;
        if let (Some(observer), GroupMachine::Kv(m)) = (&config.observer, &self.machine) {
            let event = ProtocolEvent::StateDigest {
                index: m.applied_index(),
                digest: m.digest(),
            };
            observer.observe(config.node_id, self.id, event);
        }
    }

    /// Simulation/test only: reports this Ready's leadership, granted votes and committed
    /// entries (persisted by now; applied right after) to the harness's observer.
    #[cfg(any(test, madsim))]
    fn observe_ready(&self, config: &ServerConfig, ready: &Ready, commit_before: LogIndex) {
        use super::probe::ProtocolEvent;
        let Some(observer) = &config.observer else {
            return;
        };
        let (me, group) = (config.node_id, self.id);
        if ready
            .soft_state
            .as_ref()
            .is_some_and(|s| s.role == Role::Leader)
        {
            let term = self.raft.term();
            observer.observe(me, group, ProtocolEvent::BecameLeader { term });
        }
        for m in &ready.messages {
            if let MessageBody::VoteResponse { granted: true } = m.body {
                let event = ProtocolEvent::VoteGranted {
                    term: m.term,
                    candidate: m.to,
                };
                observer.observe(me, group, event);
            }
        }
        let commit = ready.hard_state.as_ref().map_or(0, |hs| hs.commit);
        if self.raft.role() == Role::Leader && commit > commit_before {
            let entry = self.raft.log_entries().iter().find(|e| e.index == commit);
            if let Some(entry) = entry {
                let event = ProtocolEvent::LeaderCommitted {
                    term: self.raft.term(),
                    index: commit,
                    entry_term: entry.term,
                };
                observer.observe(me, group, event);
            }
        }
        for entry in &ready.committed {
            let event = ProtocolEvent::Applied {
                index: entry.index,
                term: entry.term,
            };
            observer.observe(me, group, event);
        }
    }

    /// Leader only: sends this Ready's `Append` messages before its entries are synced, when
    /// the Ready changes neither term nor vote (see the module invariants).
    fn send_leader_appends_early(&mut self, ready: &mut Ready, outbox: &mut Vec<PeerMessage>) {
        if self.raft.role() != Role::Leader || ready.snapshot.is_some() {
            return;
        }
        let unchanged = ready.hard_state.as_ref().is_none_or(|hs| {
            hs.term == self.durable_hard_state.term && hs.vote == self.durable_hard_state.vote
        });
        if !unchanged {
            return;
        }
        let (appends, rest): (Vec<Message>, Vec<Message>) = std::mem::take(&mut ready.messages)
            .into_iter()
            .partition(|m| matches!(m.body, MessageBody::Append { .. }));
        ready.messages = rest;
        outbox.extend(self.wrap(appends));
    }

    fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        config: &ServerConfig,
        kv_config: &KvConfig,
    ) -> Result<(), ServerError> {
        match &self.machine {
            GroupMachine::Meta(_) if snapshot.meta.index > self.machine.applied_index() => {
                self.machine = new_machine(self.id, kv_config, config, Some(snapshot), &self.disk)?;
            }
            GroupMachine::Meta(_) => return Ok(()),
            // A shard's engine was swapped in when its stream completed (before the core saw
            // the token): it must already hold the snapshot's index.
            GroupMachine::Kv(m) if m.applied_index() < snapshot.meta.index => {
                return Err(ServerError::Storage(format!(
                    "group {}: snapshot at {} installed without its data (engine at {})",
                    self.id,
                    snapshot.meta.index,
                    m.applied_index()
                )));
            }
            GroupMachine::Kv(_) => {}
        }
        self.last_snapshot_index = snapshot.meta.index;
        self.log_bytes_since_snapshot = 0;
        self.backups.clear();
        let covered: Vec<LogIndex> = self
            .pending_writes
            .range(..=snapshot.meta.index)
            .map(|(&i, _)| i)
            .collect();
        for index in covered {
            if let Some(PendingWrite {
                reply: Some(reply), ..
            }) = self.pending_writes.remove(&index)
            {
                let _ = reply.send(ClientResponse::Unknown {
                    reason: "replaced by a snapshot".into(),
                });
            }
        }
        info!(
            group = self.id,
            index = snapshot.meta.index,
            term = snapshot.meta.term,
            "installed snapshot"
        );
        Ok(())
    }

    fn apply(
        &mut self,
        entry: &Entry,
        me: NodeId,
        outcome: &mut ReadyOutcome,
    ) -> Result<(), ServerError> {
        if entry.index <= self.machine.applied_index() {
            return Ok(()); // already in the engine (or the restored snapshot)
        }
        let id = self.id;
        let failed = |e: KvError| ServerError::Storage(format!("group {id}: applying: {e}"));
        if let EntryPayload::Command(bytes) = &entry.payload {
            self.log_bytes_since_snapshot += bytes.len() as u64;
            self.batch_bytes += bytes.len() as u64;
        }
        self.batch_entries += 1;
        let response = match (&entry.payload, &mut self.machine) {
            (EntryPayload::Command(bytes), GroupMachine::Kv(machine)) => {
                match decode_command(bytes) {
                    Ok(command) => Some(ClientResponse::Done(
                        machine.apply(entry.index, &command).map_err(failed)?,
                    )),
                    Err(e) => {
                        error!(group = self.id, index = entry.index, error = %e, "undecodable command in the log: skipped");
                        machine.skip(entry.index).map_err(failed)?;
                        None
                    }
                }
            }
            (EntryPayload::Command(bytes), GroupMachine::Meta(machine)) => {
                match meta::decode_command(bytes) {
                    Ok(command) => {
                        let result = machine.apply(entry.index, &command);
                        info!(index = entry.index, ?command, ?result, "metadata applied");
                        outcome.meta_applied = true;
                        Some(ClientResponse::Admin(result))
                    }
                    Err(e) => {
                        error!(group = self.id, index = entry.index, error = %e, "undecodable metadata command in the log: skipped");
                        machine.skip(entry.index);
                        None
                    }
                }
            }
            (EntryPayload::Membership(change), machine) => {
                if *change == MembershipChange::Remove(me) {
                    outcome.removed_me = true;
                }
                machine.skip(entry.index).map_err(failed)?;
                None
            }
            (EntryPayload::Noop, machine) => {
                machine.skip(entry.index).map_err(failed)?;
                None
            }
        };
        if let Some(write) = self.pending_writes.remove(&entry.index) {
            let response = match response {
                Some(response) if write.term == entry.term => response,
                _ => ClientResponse::Unknown {
                    reason: "log entry replaced by a newer leader".into(),
                },
            };
            if let Some(reply) = write.reply {
                let _ = reply.send(response);
            }
        }
        Ok(())
    }

    fn serve_reads(&mut self) {
        let applied = self.machine.applied_index();
        let later = self.reads_by_index.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.reads_by_index, later);
        for read in ready.into_values().flatten() {
            let response = match read.request {
                ReadRequest::Op(command) => self.read_now(&command),
                ReadRequest::BackupOpen { nonce } => self.open_backup(nonce),
            };
            let _ = read.reply.send(response);
        }
    }

    fn open_backup(&mut self, nonce: u64) -> ClientResponse {
        // The view is of the committed state: the open batch holds applies it must include.
        if let Err(e) = self.commit_batch() {
            warn!(group = self.id, error = %e, "cannot commit the batch for a backup view");
            self.backups.cancel(nonce);
            return ClientResponse::Unknown {
                reason: format!("backup view: {e}"),
            };
        }
        let GroupMachine::Kv(machine) = &self.machine else {
            self.backups.cancel(nonce);
            return ClientResponse::Refused(RefusedReason::NotReady);
        };
        match self.backups.open(nonce, machine) {
            Ok(opened) => {
                info!(group = self.id, nonce, "backup view opened");
                ClientResponse::Backup(opened)
            }
            Err(e) => {
                warn!(group = self.id, error = %e, "cannot open a backup view");
                ClientResponse::Unknown {
                    reason: format!("backup view: {e}"),
                }
            }
        }
    }

    fn take_all_reads(&mut self) -> Vec<PendingRead> {
        let mut reads = std::mem::take(&mut self.reads_to_confirm);
        reads.extend(
            std::mem::take(&mut self.reads_by_ctx)
                .into_values()
                .flatten(),
        );
        reads.extend(
            std::mem::take(&mut self.reads_by_index)
                .into_values()
                .flatten(),
        );
        reads
    }

    /// Leadership lost (or the group is going away): proposals may or may not commit; reads
    /// were never served.
    pub(super) fn fail_all_in_flight(&mut self, addrs: &ClientAddrs) {
        for (_, write) in std::mem::take(&mut self.pending_writes) {
            if let Some(reply) = write.reply {
                let _ = reply.send(ClientResponse::Unknown {
                    reason: "leadership lost".into(),
                });
            }
        }
        for read in self.take_all_reads() {
            let _ = read.reply.send(self.redirect(addrs));
        }
        self.backups.clear();
    }

    /// Node shutting down: writes are in doubt, reads are refused. The open batch is
    /// committed (not durably) so that a restart after a clean stop replays less of the log.
    pub(super) fn shut_down(&mut self) {
        if let Err(e) = self.commit_batch() {
            warn!(group = self.id, error = %e, "cannot commit the engine batch at shutdown");
        }
        for (_, write) in std::mem::take(&mut self.pending_writes) {
            if let Some(reply) = write.reply {
                let _ = reply.send(ClientResponse::Unknown {
                    reason: "node shutting down".into(),
                });
            }
        }
        for read in self.take_all_reads() {
            let _ = read
                .reply
                .send(ClientResponse::Refused(RefusedReason::ShuttingDown));
        }
        self.backups.clear();
    }

    /// Commits the engine's open batch (not durably) with the applied index it covers.
    fn commit_batch(&mut self) -> Result<(), ServerError> {
        if let GroupMachine::Kv(machine) = &mut self.machine {
            machine
                .commit(false)
                .map_err(|e| ServerError::Storage(format!("group {}: {e}", self.id)))?;
        }
        self.batch_bytes = 0;
        self.batch_entries = 0;
        Ok(())
    }

    /// How far past its snapshot interval the group is, in thousandths of the interval
    /// (entries or log bytes, whichever is further); None while no snapshot is due.
    pub(super) fn snapshot_overdue_permille(&self, config: &ServerConfig) -> Option<u64> {
        let applied = self.machine.applied_index();
        if applied <= self.last_snapshot_index {
            return None;
        }
        let by_entries =
            (applied - self.last_snapshot_index) * 1000 / config.snapshot_interval_entries.max(1);
        let by_bytes =
            self.log_bytes_since_snapshot * 1000 / config.snapshot_interval_log_bytes.max(1);
        let overdue = by_entries.max(by_bytes);
        (overdue >= 1000).then_some(overdue)
    }

    /// Takes a snapshot if one is due: a shard's is a durable checkpoint of its engine, the
    /// metadata group's a serialized image.
    pub(super) fn maybe_snapshot(&mut self, config: &ServerConfig) -> Result<(), ServerError> {
        if self.snapshot_overdue_permille(config).is_none() {
            return Ok(());
        }
        let applied = self.machine.applied_index();
        // The core knows the term and membership in force at `applied` (it has not compacted
        // past it); it refuses a snapshot whose metadata disagrees with its log.
        let Some(meta) = self.raft.snapshot_meta_at(applied) else {
            debug!(
                group = self.id,
                index = applied,
                "no snapshot metadata at the applied index yet"
            );
            return Ok(());
        };
        let started = tokio::time::Instant::now();
        let data = match &mut self.machine {
            GroupMachine::Meta(m) => m.snapshot(),
            GroupMachine::Kv(m) => {
                // A durable checkpoint of the engine: no copy of the data. Only once it is
                // durable may the log be compacted through `applied`.
                m.commit(true).map_err(|e| {
                    ServerError::Storage(format!("group {}: checkpoint: {e}", self.id))
                })?;
                self.batch_bytes = 0;
                self.batch_entries = 0;
                checkpoint_token(applied)
            }
        };
        let engine_done = tokio::time::Instant::now();
        let snapshot = Snapshot { meta, data };
        self.storage
            .save_snapshot(&snapshot)
            .map_err(|e| ServerError::Storage(format!("group {}: {e}", self.id)))?;
        let saved = tokio::time::Instant::now();
        self.last_snapshot_index = applied;
        self.log_bytes_since_snapshot = 0;
        self.raft.snapshot_saved(snapshot);
        let engine_ms = (engine_done - started).as_millis() as u64;
        let save_ms = (saved - engine_done).as_millis() as u64;
        let compact_ms = saved.elapsed().as_millis() as u64;
        if engine_ms + save_ms + compact_ms >= SLOW_SNAPSHOT_MS {
            warn!(
                group = self.id,
                index = applied,
                engine_ms,
                save_ms,
                compact_ms,
                "slow snapshot"
            );
        } else {
            debug!(
                group = self.id,
                index = applied,
                engine_ms,
                save_ms,
                compact_ms,
                "snapshot saved"
            );
        }
        Ok(())
    }

    pub(super) fn status(&self) -> GroupStatus {
        let membership = self.raft.membership();
        GroupStatus {
            group: self.id,
            role: self.raft.role(),
            term: self.raft.term(),
            leader: self.raft.leader(),
            voters: membership.voters.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
            commit_index: self.raft.commit_index(),
            applied_index: self.machine.applied_index(),
            snapshot_index: self.last_snapshot_index,
            match_index: self.raft.match_index(),
            keys: self.machine.keys(),
        }
    }

    /// Whether `node` is in this group's membership (voter or learner).
    pub(super) fn has_member(&self, node: NodeId) -> bool {
        let m = self.raft.membership();
        m.voters.contains(&node) || m.learners.contains(&node)
    }
}

/// Proposes a metadata command as this node (no client waits for it).
pub(super) fn propose_meta(group: &mut Group, command: &MetaCommand) -> bool {
    group.propose(meta::encode_command(command), None).is_ok()
}
