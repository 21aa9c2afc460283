//! The one task that owns a node's Raft core, state machine and storage.
//!
//! Each turn waits for something (a tick, a peer message, a client request), drains everything
//! else already queued, starts at most one ReadIndex round for all reads gathered in the turn,
//! then handles every `Ready` in the order its contract demands: persist (one sync for the
//! whole batch: group commit) -> send -> apply -> answer clients -> advance. Invariants:
//! - no message leaves before the state it depends on is durable (the storage syncs first),
//!   with one deliberate exception (Raft dissertation §10.2.1): a leader sends `Append`s of
//!   its new entries *before* syncing them itself, so its own fsync overlaps the followers'.
//!   This is safe because the term and vote those messages carry were made durable when the
//!   election started (checked: `durable_hard_state`), and the core counts the leader's own copy
//!   towards commit only once `advance` says it is durable;
//! - a write is answered only with the result of applying the entry at the (index, term) it was
//!   proposed at; if another entry lands at that index, or leadership is lost, the answer is
//!   `Unknown` and the client retries with the same (client id, seq);
//! - a read is answered only after a ReadIndex round confirmed leadership and the state machine
//!   applied up to the read index.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use super::client_port::ClientCall;
use super::ServerError;
use crate::client::protocol::{ClientRequest, ClientResponse, NodeStatus, RefusedReason};
use crate::config::ServerConfig;
use crate::kv::{decode_command, encode_command, Command, KvConfig, OpResult, StateMachine};
use crate::meta::META_GROUP;
use crate::raft::{
    Entry, EntryPayload, LogIndex, Message, MessageBody, Raft, Ready, Role, Snapshot, Term,
};
use crate::storage::NodeStorage;
use crate::transport::{PeerMessage, PeerTransport};

/// Inputs drained per channel per turn, so one busy source cannot starve the others.
const MAX_DRAIN_PER_TURN: usize = 4096;

struct PendingWrite {
    term: Term,
    reply: oneshot::Sender<ClientResponse>,
}

struct PendingRead {
    command: Command,
    reply: oneshot::Sender<ClientResponse>,
}

pub(super) struct EventLoop {
    pub(super) config: ServerConfig,
    pub(super) raft: Raft,
    pub(super) machine: StateMachine,
    pub(super) kv_config: KvConfig,
    pub(super) storage: NodeStorage,
    pub(super) transport: PeerTransport,
    pub(super) last_snapshot_index: LogIndex,
    pub(super) pid: u32,
    /// The hard state last made durable (term and vote gate the leader's early sends).
    durable_hard_state: crate::raft::HardState,
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    reads_to_confirm: Vec<PendingRead>,
    reads_by_ctx: BTreeMap<u64, Vec<PendingRead>>,
    reads_by_index: BTreeMap<LogIndex, Vec<PendingRead>>,
    next_read_ctx: u64,
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: ServerConfig,
        raft: Raft,
        machine: StateMachine,
        kv_config: KvConfig,
        storage: NodeStorage,
        transport: PeerTransport,
    ) -> EventLoop {
        let last_snapshot_index = machine.applied_index();
        let durable_hard_state = raft.hard_state();
        EventLoop {
            config,
            raft,
            machine,
            kv_config,
            storage,
            transport,
            last_snapshot_index,
            pid: std::process::id(),
            durable_hard_state,
            pending_writes: BTreeMap::new(),
            reads_to_confirm: Vec::new(),
            reads_by_ctx: BTreeMap::new(),
            reads_by_index: BTreeMap::new(),
            next_read_ctx: 1,
        }
    }

    pub(super) async fn run(
        mut self,
        mut peer_inbox: mpsc::Receiver<PeerMessage>,
        mut client_calls: mpsc::Receiver<ClientCall>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_interval_ms));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        info!(node_id = self.config.node_id, "event loop started");
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = ticker.tick() => self.raft.tick(),
                Some(message) = peer_inbox.recv() => self.on_peer(message),
                Some(call) = client_calls.recv() => self.on_client(call),
                else => break,
            }
            for _ in 0..MAX_DRAIN_PER_TURN {
                match peer_inbox.try_recv() {
                    Ok(message) => self.on_peer(message),
                    Err(_) => break,
                }
            }
            for _ in 0..MAX_DRAIN_PER_TURN {
                match client_calls.try_recv() {
                    Ok(call) => self.on_client(call),
                    Err(_) => break,
                }
            }
            self.start_read_round();
            self.handle_ready()?;
        }
        self.shut_down(&mut client_calls);
        Ok(())
    }

    /// Until groups are hosted, only the metadata group's Raft messages are served.
    fn on_peer(&mut self, message: PeerMessage) {
        match message {
            PeerMessage::Raft { group, message } if group == META_GROUP => self.raft.step(message),
            other => tracing::debug!(?other, "peer message for an unhosted group ignored"),
        }
    }

    fn send_raft(&mut self, messages: Vec<Message>) {
        let tagged = messages
            .into_iter()
            .map(|message| PeerMessage::Raft {
                group: META_GROUP,
                message,
            })
            .collect();
        self.transport.send(tagged);
    }

    /// Fails everything in flight; the storage is synced after every Ready, so nothing is left.
    fn shut_down(&mut self, client_calls: &mut mpsc::Receiver<ClientCall>) {
        info!(
            node_id = self.config.node_id,
            "shutting down: failing in-flight requests"
        );
        for (_, write) in std::mem::take(&mut self.pending_writes) {
            let _ = write.reply.send(ClientResponse::Unknown {
                reason: "node shutting down".into(),
            });
        }
        for read in self.take_all_reads() {
            let _ = read
                .reply
                .send(ClientResponse::Refused(RefusedReason::ShuttingDown));
        }
        client_calls.close();
        while let Ok(call) = client_calls.try_recv() {
            let _ = call
                .reply
                .send(ClientResponse::Refused(RefusedReason::ShuttingDown));
        }
    }

    fn pending_count(&self) -> usize {
        self.pending_writes.len()
            + self.reads_to_confirm.len()
            + self.reads_by_ctx.values().map(Vec::len).sum::<usize>()
            + self.reads_by_index.values().map(Vec::len).sum::<usize>()
    }

    fn on_client(&mut self, call: ClientCall) {
        let ClientCall { request, reply } = call;
        let command = match request {
            ClientRequest::Status => {
                let _ = reply.send(ClientResponse::Status(self.status()));
                return;
            }
            ClientRequest::Execute { command, .. } => command,
            ClientRequest::ClusterInfo | ClientRequest::Admin(_) => {
                let _ = reply.send(ClientResponse::Refused(RefusedReason::NotReady));
                return;
            }
        };
        if let Err(invalid) = self.machine.check_limits(&command.op) {
            let _ = reply.send(ClientResponse::Done(OpResult::Invalid(invalid)));
            return;
        }
        if self.pending_count() >= self.config.limits.max_pending_requests {
            let _ = reply.send(ClientResponse::Refused(RefusedReason::Busy));
            return;
        }
        if command.op.is_read() {
            #[cfg(any(test, madsim))]
            if self.config.planted_bugs.follower_local_reads && self.raft.role() != Role::Leader {
                let _ = reply.send(self.read_now(&command));
                return;
            }
            if self.raft.role() != Role::Leader {
                let _ = reply.send(self.redirect());
                return;
            }
            self.reads_to_confirm.push(PendingRead { command, reply });
            return;
        }
        if self.raft.role() != Role::Leader {
            let _ = reply.send(self.redirect());
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
        match self.raft.propose(payload) {
            Ok((index, term)) => {
                if let Some(old) = self
                    .pending_writes
                    .insert(index, PendingWrite { term, reply })
                {
                    let _ = old.reply.send(ClientResponse::Unknown {
                        reason: "log entry replaced".into(),
                    });
                }
            }
            Err(_) => {
                let _ = reply.send(self.redirect());
            }
        }
    }

    fn redirect(&self) -> ClientResponse {
        let leader_id = self.raft.leader().filter(|&id| id != self.config.node_id);
        let leader_addr = leader_id
            .and_then(|id| self.config.member(id))
            .map(|m| m.client_addr);
        ClientResponse::Redirect {
            leader_id,
            leader_addr,
        }
    }

    fn read_now(&self, command: &Command) -> ClientResponse {
        match self.machine.read(&command.op) {
            Ok(result) => ClientResponse::Done(result),
            Err(e) => {
                warn!(error = %e, "read failed");
                ClientResponse::Refused(RefusedReason::Busy)
            }
        }
    }

    /// One ReadIndex round for every read gathered this turn (batching).
    fn start_read_round(&mut self) {
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
                let redirect = self.redirect();
                for read in reads {
                    let _ = read.reply.send(redirect.clone());
                }
            }
        }
    }

    fn handle_ready(&mut self) -> Result<(), ServerError> {
        while self.raft.has_ready() {
            let mut ready: Ready = self.raft.ready();
            #[cfg(any(test, madsim))]
            let commit_before = self.durable_hard_state.commit;
            if let Some(soft) = &ready.soft_state {
                debug!(role = ?soft.role, leader = ?soft.leader, term = self.raft.term(), "role changed");
                if soft.role != Role::Leader {
                    self.fail_all_in_flight();
                }
            }
            self.send_leader_appends_early(&mut ready);
            self.storage
                .persist(
                    ready.hard_state.as_ref(),
                    &ready.entries,
                    ready.snapshot.as_ref(),
                )
                .map_err(|e| ServerError::Storage(e.to_string()))?;
            if let Some(hard_state) = &ready.hard_state {
                self.durable_hard_state = hard_state.clone();
            }
            if let Some(snapshot) = &ready.snapshot {
                self.install_snapshot(snapshot)?;
            }
            #[cfg(any(test, madsim))]
            self.observe_ready(&ready, commit_before);
            self.send_raft(std::mem::take(&mut ready.messages));
            for entry in &ready.committed {
                self.apply(entry);
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
            self.maybe_snapshot()?;
        }
        Ok(())
    }

    /// Simulation/test only: reports this Ready's leadership, granted votes and committed
    /// entries (persisted by now; applied right after) to the harness's observer.
    #[cfg(any(test, madsim))]
    fn observe_ready(&self, ready: &Ready, commit_before: LogIndex) {
        use super::probe::ProtocolEvent;
        let Some(observer) = &self.config.observer else {
            return;
        };
        let me = self.config.node_id;
        if ready
            .soft_state
            .as_ref()
            .is_some_and(|s| s.role == Role::Leader)
        {
            observer.observe(
                me,
                crate::meta::META_GROUP,
                ProtocolEvent::BecameLeader {
                    term: self.raft.term(),
                },
            );
        }
        for m in &ready.messages {
            if let MessageBody::VoteResponse { granted: true } = m.body {
                let event = ProtocolEvent::VoteGranted {
                    term: m.term,
                    candidate: m.to,
                };
                observer.observe(me, crate::meta::META_GROUP, event);
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
                observer.observe(me, crate::meta::META_GROUP, event);
            }
        }
        for entry in &ready.committed {
            let event = ProtocolEvent::Applied {
                index: entry.index,
                term: entry.term,
            };
            observer.observe(me, crate::meta::META_GROUP, event);
        }
    }

    /// Leader only: sends this Ready's `Append` messages before its entries are synced, when
    /// the Ready changes neither term nor vote (see the module invariants).
    fn send_leader_appends_early(&mut self, ready: &mut Ready) {
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
        self.send_raft(appends);
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), ServerError> {
        if snapshot.meta.index <= self.machine.applied_index() {
            return Ok(());
        }
        self.machine = restore_machine(&self.kv_config, &self.config, snapshot)?;
        self.last_snapshot_index = snapshot.meta.index;
        let covered: Vec<LogIndex> = self
            .pending_writes
            .range(..=snapshot.meta.index)
            .map(|(&i, _)| i)
            .collect();
        for index in covered {
            if let Some(write) = self.pending_writes.remove(&index) {
                let _ = write.reply.send(ClientResponse::Unknown {
                    reason: "replaced by a snapshot".into(),
                });
            }
        }
        info!(
            index = snapshot.meta.index,
            term = snapshot.meta.term,
            "installed snapshot"
        );
        Ok(())
    }

    fn apply(&mut self, entry: &Entry) {
        if entry.index <= self.machine.applied_index() {
            return; // already covered by the restored snapshot
        }
        let result = match &entry.payload {
            EntryPayload::Command(bytes) => match decode_command(bytes) {
                Ok(command) => Some(self.machine.apply(entry.index, &command)),
                Err(e) => {
                    error!(index = entry.index, error = %e, "undecodable command in the log: skipped");
                    self.machine.skip(entry.index);
                    None
                }
            },
            EntryPayload::Noop | EntryPayload::Membership(_) => {
                self.machine.skip(entry.index);
                None
            }
        };
        if let Some(write) = self.pending_writes.remove(&entry.index) {
            let response = match result {
                Some(result) if write.term == entry.term => ClientResponse::Done(result),
                _ => ClientResponse::Unknown {
                    reason: "log entry replaced by a newer leader".into(),
                },
            };
            let _ = write.reply.send(response);
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.machine.applied_index();
        let later = self.reads_by_index.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.reads_by_index, later);
        for read in ready.into_values().flatten() {
            let response = self.read_now(&read.command);
            let _ = read.reply.send(response);
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

    /// Leadership lost: proposals may or may not commit; reads were never served.
    fn fail_all_in_flight(&mut self) {
        for (_, write) in std::mem::take(&mut self.pending_writes) {
            let _ = write.reply.send(ClientResponse::Unknown {
                reason: "leadership lost".into(),
            });
        }
        let redirect = self.redirect();
        for read in self.take_all_reads() {
            let _ = read.reply.send(redirect.clone());
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), ServerError> {
        let applied = self.machine.applied_index();
        if applied < self.last_snapshot_index + self.config.snapshot_interval_entries {
            return Ok(());
        }
        // The core knows the term and membership in force at `applied` (it has not compacted
        // past it); it refuses a snapshot whose metadata disagrees with its log.
        let Some(meta) = self.raft.snapshot_meta_at(applied) else {
            debug!(
                index = applied,
                "no snapshot metadata at the applied index yet"
            );
            return Ok(());
        };
        let snapshot = Snapshot {
            meta,
            data: self.machine.snapshot(),
        };
        self.storage
            .save_snapshot(&snapshot)
            .map_err(|e| ServerError::Storage(e.to_string()))?;
        debug!(
            index = applied,
            bytes = snapshot.data.len(),
            "snapshot saved"
        );
        self.last_snapshot_index = applied;
        self.raft.snapshot_saved(snapshot);
        Ok(())
    }

    fn status(&self) -> NodeStatus {
        let me = self.config.me();
        let leader_id = self.raft.leader();
        let membership = self.raft.membership();
        NodeStatus {
            node_id: self.config.node_id,
            client_addr: me
                .map(|m| m.client_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            peer_addr: me
                .map(|m| m.peer_addr)
                .unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            pid: self.pid,
            role: self.raft.role(),
            term: self.raft.term(),
            leader_id,
            leader_addr: leader_id
                .and_then(|id| self.config.member(id))
                .map(|m| m.client_addr),
            commit_index: self.raft.commit_index(),
            applied_index: self.machine.applied_index(),
            last_index: self.raft.last_index(),
            snapshot_index: self.last_snapshot_index,
            voters: membership.voters.iter().copied().collect(),
            learners: membership.learners.iter().copied().collect(),
            members: self.config.members.clone(),
            keys: self.machine.len() as u64,
            groups: Vec::new(),
        }
    }
}

pub(super) fn restore_machine(
    kv_config: &KvConfig,
    config: &ServerConfig,
    snapshot: &Snapshot,
) -> Result<StateMachine, ServerError> {
    #[allow(unused_mut)]
    let mut machine = StateMachine::restore(kv_config.clone(), &snapshot.data).map_err(|e| {
        ServerError::Storage(format!("snapshot at index {}: {e}", snapshot.meta.index))
    })?;
    #[cfg(any(test, madsim))]
    machine.set_planted_bugs(config.planted_bugs);
    let _ = config;
    Ok(machine)
}
