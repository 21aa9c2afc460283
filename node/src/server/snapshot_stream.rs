//! Streamed shard snapshots: how a leader gives a learner or a lagging follower its shard
//! without stopping the node, and how the receiver takes it in without trusting it early.
//!
//! Why it exists: a shard's Raft snapshot is only a token ("the engine holds the state at
//! index i", see `group::checkpoint_token`); the data stays in the engine. When the core
//! wants to send one, the event loop starts an `Outgoing` transfer instead: a redb read
//! transaction (a consistent view at the engine's applied index `a`, taken with the term and
//! membership the core knows at `a`) read in chunks of at most `snapshot_chunk_bytes`, one
//! chunk in flight per transfer (flow control: the next leaves when the previous is acked; a
//! chunk unacked for `snapshot_chunk_timeout_ticks` is resent, up to
//! `SNAPSHOT_CHUNK_RETRIES` times, then the transfer is dropped and Raft asks again later).
//!
//! The receiver writes each chunk into a fresh engine file (`kv.redb.incoming`) with a
//! non-durable commit, and a durable one whenever `RECEIVE_SYNC_EVERY_BYTES` more arrived: the
//! file is then synced a piece at a time, not 128 MiB at the end (that one sync kept the disk
//! busy for a second or more, and on a disk shared with other nodes their WAL syncs queued
//! behind it). A partial file is never used: it is replaced by the next transfer. Invariants:
//! - nothing of a transfer replaces the current state until ALL of it is validated: each
//!   chunk's crc32, the sequence, every record (value layout, version <= the snapshot index,
//!   session encoding), the crc32 of the whole stream, and the file's applied index equal to
//!   the snapshot's index. A bad chunk drops the transfer and its file; the current engine,
//!   log and snapshot are untouched;
//! - the validated file is made durable, then renamed over the engine file and the directory
//!   synced (the received engine stays open and becomes the group's), and only then does the
//!   Raft core see the snapshot (whose token it persists). An engine ahead of its log is safe
//!   (it holds committed state only; applies skip what it covers); a token ahead of its engine
//!   never exists;
//! - no step holds more than one chunk in memory or works longer than one chunk.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::group::Group;
use super::group::{checkpoint_token, open_engine, GroupMachine, ENGINE_FILE};
use super::ServerError;
use crate::config::ServerConfig;
use crate::kv::engine::{self, decode_session, decode_versioned, Totals};
use crate::kv::{Engine, KvConfig, KvError, ReadView, StateMachine};
use crate::meta::{GroupId, MetaState, META_GROUP};
use crate::raft::{LogIndex, Message, MessageBody, NodeId, Snapshot, SnapshotMeta, Term};
use crate::transport::{PeerMessage, SnapshotChunk};

/// Resends of one chunk before the transfer is abandoned.
pub(super) const SNAPSHOT_CHUNK_RETRIES: u32 = 5;
/// The receiver's file for a transfer in progress (in the group's files).
pub(super) const INCOMING_FILE: &str = "kv.redb.incoming";
/// A receiver makes the incoming engine file durable after each this many bytes of records.
pub(super) const RECEIVE_SYNC_EVERY_BYTES: u64 = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChunkRecord {
    /// A key and its stored value (version u64 LE ++ value).
    Data {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Session {
        client: u64,
        session: Vec<u8>,
    },
    /// Last record of the stream: the applied index of the view.
    Applied(LogIndex),
}

struct Outgoing {
    view: ReadView,
    meta: SnapshotMeta,
    term: Term,
    transfer: u64,
    seq: u64,
    /// Last data key sent (None: none yet).
    cursor: Option<Vec<u8>>,
    data_done: bool,
    sessions: Vec<(u64, Vec<u8>)>,
    next_session: usize,
    hasher: crc32fast::Hasher,
    in_flight: SnapshotChunk,
    sent_tick: u64,
    resends: u32,
}

struct Incoming {
    from: NodeId,
    transfer: u64,
    next_seq: u64,
    meta: SnapshotMeta,
    hasher: crc32fast::Hasher,
    engine: Engine,
    applied: Option<LogIndex>,
    /// Totals of the data records taken so far.
    totals: Totals,
    /// Bytes of records written since the incoming file was last made durable.
    unsynced_bytes: u64,
}

/// The node's snapshot transfers, both directions.
#[derive(Default)]
pub(super) struct Streams {
    outgoing: BTreeMap<(GroupId, NodeId), Outgoing>,
    incoming: BTreeMap<GroupId, Incoming>,
    next_transfer: u64,
}

impl Streams {
    /// Starts streaming `group`'s state to `to` (the core asked for an InstallSnapshot),
    /// unless a transfer to it is already running. Returns the first chunk.
    pub(super) fn start(
        &mut self,
        me: NodeId,
        group: &Group,
        to: NodeId,
        config: &ServerConfig,
        ticks: u64,
    ) -> Result<Option<PeerMessage>, ServerError> {
        if self.outgoing.contains_key(&(group.id, to)) {
            return Ok(None);
        }
        let Some(machine) = group.kv() else {
            return Ok(None);
        };
        let failed =
            |e: KvError| ServerError::Storage(format!("group {}: snapshot read: {e}", group.id));
        let view = machine.engine().read_view().map_err(failed)?;
        let applied = view.applied_index().map_err(failed)?;
        let Some(meta) = group.raft.snapshot_meta_at(applied) else {
            debug!(
                group = group.id,
                applied, "no snapshot metadata at the engine's applied index"
            );
            return Ok(None);
        };
        self.start_with(me, group, to, view, meta, config, ticks)
            .map(Some)
    }

    /// Starts a transfer of `view`, whose applied index `meta` describes.
    #[allow(clippy::too_many_arguments)]
    fn start_with(
        &mut self,
        me: NodeId,
        group: &Group,
        to: NodeId,
        view: ReadView,
        meta: SnapshotMeta,
        config: &ServerConfig,
        ticks: u64,
    ) -> Result<PeerMessage, ServerError> {
        let failed =
            |e: KvError| ServerError::Storage(format!("group {}: snapshot read: {e}", group.id));
        let sessions = if drops_sessions(config) {
            Vec::new()
        } else {
            view.sessions().map_err(failed)?
        };
        self.next_transfer += 1;
        let mut out = Outgoing {
            view,
            meta,
            term: group.raft.term(),
            transfer: self.next_transfer,
            seq: 0,
            cursor: None,
            data_done: false,
            sessions,
            next_session: 0,
            hasher: crc32fast::Hasher::new(),
            in_flight: empty_chunk(group.id, me, to),
            sent_tick: ticks,
            resends: 0,
        };
        info!(
            group = group.id,
            to,
            index = out.meta.index,
            transfer = out.transfer,
            "streaming snapshot"
        );
        next_chunk(&mut out, me, config).map_err(failed)?;
        let first = PeerMessage::SnapshotChunk(out.in_flight.clone());
        self.outgoing.insert((group.id, to), out);
        Ok(first)
    }

    /// The receiver acknowledged (or refused) a chunk: the next chunk, if any.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_ack(
        &mut self,
        me: NodeId,
        group: GroupId,
        from: NodeId,
        transfer: u64,
        seq: u64,
        accepted: bool,
        config: &ServerConfig,
        ticks: u64,
    ) -> Option<PeerMessage> {
        let key = (group, from);
        let out = self.outgoing.get_mut(&key)?;
        if out.transfer != transfer || out.seq != seq {
            return None; // a stale or duplicate ack
        }
        if !accepted {
            warn!(
                group,
                to = from,
                transfer,
                seq,
                "the receiver refused a snapshot chunk: transfer dropped"
            );
            self.outgoing.remove(&key);
            return None;
        }
        if out.in_flight.total_crc.is_some() {
            info!(
                group,
                to = from,
                transfer,
                chunks = seq + 1,
                "snapshot stream finished"
            );
            self.outgoing.remove(&key);
            return None;
        }
        out.seq += 1;
        out.sent_tick = ticks;
        out.resends = 0;
        if let Err(e) = next_chunk(out, me, config) {
            warn!(group, to = from, error = %e, "reading the snapshot view failed: transfer dropped");
            self.outgoing.remove(&key);
            return None;
        }
        Some(PeerMessage::SnapshotChunk(out.in_flight.clone()))
    }

    /// Resends chunks unacknowledged for too long; drops transfers that exhausted their retries
    /// or whose group is gone.
    pub(super) fn on_tick(
        &mut self,
        ticks: u64,
        config: &ServerConfig,
        hosted: impl Fn(GroupId) -> bool,
    ) -> Vec<PeerMessage> {
        let timeout = u64::from(config.snapshot_chunk_timeout_ticks);
        let mut resend = Vec::new();
        self.outgoing.retain(|&(group, to), out| {
            if !hosted(group) {
                return false;
            }
            if ticks < out.sent_tick + timeout {
                return true;
            }
            if out.resends >= SNAPSHOT_CHUNK_RETRIES {
                warn!(
                    group,
                    to,
                    transfer = out.transfer,
                    "snapshot stream timed out: dropped"
                );
                return false;
            }
            out.resends += 1;
            out.sent_tick = ticks;
            resend.push(PeerMessage::SnapshotChunk(out.in_flight.clone()));
            true
        });
        self.incoming.retain(|&group, _| hosted(group));
        resend
    }

    /// Forgets transfers of a group this node no longer hosts.
    pub(super) fn forget_group(&mut self, group: GroupId) {
        self.outgoing.retain(|&(g, _), _| g != group);
        self.incoming.remove(&group);
    }

    /// A chunk arrived for `group`. Returns the ack to send and, once the whole stream is
    /// validated and swapped in, the InstallSnapshot to step into the group's core.
    pub(super) fn on_chunk(
        &mut self,
        group: &mut Group,
        chunk: SnapshotChunk,
        config: &ServerConfig,
        kv_config: &KvConfig,
    ) -> Result<(PeerMessage, Option<Message>), ServerError> {
        let ack = |accepted: bool| PeerMessage::SnapshotAck {
            group: chunk.group,
            from: chunk.to,
            to: chunk.from,
            transfer: chunk.transfer,
            seq: chunk.seq,
            accepted,
        };
        if group.kv().is_none() {
            return Ok((ack(false), None));
        }
        if let Some(inc) = self.incoming.get(&group.id) {
            let same = inc.from == chunk.from && inc.transfer == chunk.transfer;
            if same && chunk.seq < inc.next_seq {
                return Ok((ack(true), None)); // a resend of a chunk already taken
            }
            if !same && chunk.seq != 0 {
                // A straggler of a transfer this one replaced (a deposed leader's, or one its
                // sender restarted): refused, and the transfer in progress goes on. Dropping
                // it here made two senders of one shard (the old and the new leader) cancel
                // each other's streams over and over.
                debug!(
                    group = group.id,
                    from = chunk.from,
                    transfer = chunk.transfer,
                    seq = chunk.seq,
                    current_from = inc.from,
                    current_transfer = inc.transfer,
                    "snapshot chunk of a replaced transfer refused"
                );
                return Ok((ack(false), None));
            }
        }
        match self.take_chunk(group, &chunk, config, kv_config) {
            Ok(step) => Ok((ack(true), step)),
            Err(TakeError::Fatal(e)) => {
                self.incoming.remove(&group.id);
                Err(e)
            }
            Err(TakeError::Refused(reason)) => {
                warn!(group = group.id, from = chunk.from, transfer = chunk.transfer, seq = chunk.seq, reason = %reason, "snapshot chunk refused: transfer dropped");
                self.incoming.remove(&group.id);
                let _ = group.disk.remove(INCOMING_FILE);
                Ok((ack(false), None))
            }
        }
    }

    fn take_chunk(
        &mut self,
        group: &mut Group,
        chunk: &SnapshotChunk,
        config: &ServerConfig,
        kv_config: &KvConfig,
    ) -> Result<Option<Message>, TakeError> {
        if crc32fast::hash(&chunk.payload) != chunk.crc {
            return Err("chunk checksum mismatch".into());
        }
        if chunk.seq == 0 {
            self.incoming.remove(&group.id);
            if group
                .disk
                .exists(INCOMING_FILE)
                .map_err(|e| e.to_string())?
            {
                group
                    .disk
                    .remove(INCOMING_FILE)
                    .map_err(|e| e.to_string())?;
            }
            let engine =
                open_engine(&group.disk, INCOMING_FILE, config).map_err(|e| e.to_string())?;
            self.incoming.insert(
                group.id,
                Incoming {
                    from: chunk.from,
                    transfer: chunk.transfer,
                    next_seq: 0,
                    meta: chunk.meta.clone(),
                    hasher: crc32fast::Hasher::new(),
                    engine,
                    applied: None,
                    totals: Totals::default(),
                    unsynced_bytes: 0,
                },
            );
        }
        let inc = self
            .incoming
            .get_mut(&group.id)
            .ok_or("no transfer in progress (its first chunk was lost)")?;
        if inc.from != chunk.from || inc.transfer != chunk.transfer || inc.next_seq != chunk.seq {
            return Err(TakeError::Refused(format!(
                "out of sequence (expected chunk {} of transfer {} from {})",
                inc.next_seq, inc.transfer, inc.from
            )));
        }
        if inc.meta != chunk.meta {
            return Err("snapshot metadata changed within a transfer".into());
        }
        let limit = config.limits.max_peer_frame_bytes;
        let records: Vec<ChunkRecord> = decode_records(&chunk.payload, limit)?;
        write_records(inc, records).map_err(|e| e.to_string())?;
        inc.hasher.update(&chunk.payload);
        inc.next_seq += 1;
        let Some(total) = chunk.total_crc else {
            return Ok(None);
        };
        let inc = self.incoming.remove(&group.id).expect("present above");
        finish(group, inc, total, chunk, config, kv_config)
    }
}

/// Whether a Raft message from a peer may reach `group`'s core. The core persists an
/// InstallSnapshot it accepts, so a malformed one must be stopped here (once persisted, the
/// node would fail on every restart): a metadata snapshot must decode; a shard's snapshot
/// never travels as one message (its data is streamed and the message made locally).
pub(super) fn admit(group: GroupId, message: &Message) -> Result<(), String> {
    let MessageBody::InstallSnapshot { snapshot } = &message.body else {
        return Ok(());
    };
    if group != META_GROUP {
        return Err("a shard snapshot sent as one message (shards stream theirs)".into());
    }
    MetaState::restore(&snapshot.data)
        .map(|_| ())
        .map_err(|e| format!("undecodable metadata snapshot: {e}"))
}

fn drops_sessions(config: &ServerConfig) -> bool {
    #[cfg(any(test, madsim))]
    return config.planted_bugs.snapshot_drops_sessions;
    #[cfg(not(any(test, madsim)))]
    {
        let _ = config;
        false
    }
}

fn skips_key(config: &ServerConfig) -> bool {
    #[cfg(any(test, madsim))]
    return config.planted_bugs.snapshot_chunk_skips_key;
    #[cfg(not(any(test, madsim)))]
    {
        let _ = config;
        false
    }
}

fn empty_chunk(group: GroupId, from: NodeId, to: NodeId) -> SnapshotChunk {
    SnapshotChunk {
        group,
        from,
        to,
        term: 0,
        transfer: 0,
        seq: 0,
        meta: SnapshotMeta::default(),
        payload: Vec::new(),
        crc: 0,
        total_crc: None,
    }
}

/// Reads the next chunk of `out`'s view into `out.in_flight`.
fn next_chunk(out: &mut Outgoing, me: NodeId, config: &ServerConfig) -> Result<(), KvError> {
    let max_bytes = config.snapshot_chunk_bytes;
    let mut records = Vec::new();
    let mut bytes = 0;
    if !out.data_done {
        let items = out.view.data_after(out.cursor.as_deref(), max_bytes)?;
        if let Some((last, _)) = items.last() {
            out.cursor = Some(last.clone());
            if skips_key(config) {
                // Planted bug: resume after the key that should come next.
                if let Some((next, _)) = out.view.data_after(Some(last), 1)?.first() {
                    out.cursor = Some(next.clone());
                }
            }
        } else {
            out.data_done = true;
        }
        for (key, value) in items {
            bytes += key.len() + value.len();
            records.push(ChunkRecord::Data { key, value });
        }
    }
    let mut last = false;
    if out.data_done {
        while bytes < max_bytes && out.next_session < out.sessions.len() {
            let (client, session) = out.sessions[out.next_session].clone();
            bytes += session.len() + 8;
            records.push(ChunkRecord::Session { client, session });
            out.next_session += 1;
        }
        if out.next_session == out.sessions.len() {
            records.push(ChunkRecord::Applied(out.meta.index));
            last = true;
        }
    }
    let payload = bincode::serde::encode_to_vec(&records, bincode::config::standard())
        .map_err(|e| KvError::Encode(e.to_string()))?;
    out.hasher.update(&payload);
    let to = out.in_flight.to;
    out.in_flight = SnapshotChunk {
        group: out.in_flight.group,
        from: me,
        to,
        term: out.term,
        transfer: out.transfer,
        seq: out.seq,
        meta: out.meta.clone(),
        crc: crc32fast::hash(&payload),
        payload,
        total_crc: last.then(|| out.hasher.clone().finalize()),
    };
    Ok(())
}

/// A chunk's records; `limit` is the peer frame limit the chunk arrived under.
fn decode_records(payload: &[u8], limit: usize) -> Result<Vec<ChunkRecord>, String> {
    crate::bounded_decode::decode_exact_within(payload, "limits.max_peer_frame_bytes", limit)
        .map_err(|e| format!("snapshot chunk payload: {e}"))
}

/// Validates and writes one chunk's records into the incoming engine (one batch).
fn write_records(inc: &mut Incoming, records: Vec<ChunkRecord>) -> Result<(), KvError> {
    let index = inc.meta.index;
    let bad = |what: String| KvError::Snapshot(what);
    if inc.applied.is_some() {
        return Err(bad("records after the stream's end".into()));
    }
    let txn = inc.engine.batch()?;
    for record in records {
        match record {
            ChunkRecord::Data { key, value } => {
                let v = decode_versioned(&value)?;
                if v.version > index {
                    return Err(bad(format!(
                        "key {key:?} at version {} past the snapshot index {index}",
                        v.version
                    )));
                }
                engine::write_raw(txn, &key, &value)?;
                inc.totals.add(&key, &value);
                inc.unsynced_bytes += (key.len() + value.len()) as u64;
            }
            ChunkRecord::Session { client, session } => {
                decode_session(&session)?;
                engine::write_session(txn, client, Some(&session))?;
            }
            ChunkRecord::Applied(applied) => {
                if applied != index {
                    return Err(bad(format!(
                        "stream applied index {applied}, metadata says {index}"
                    )));
                }
                engine::write_applied(txn, applied)?;
                engine::write_totals(txn, inc.totals)?;
                inc.applied = Some(applied);
            }
        }
    }
    let durable = inc.unsynced_bytes >= RECEIVE_SYNC_EVERY_BYTES;
    if durable {
        inc.unsynced_bytes = 0;
    }
    inc.engine.commit_batch(durable)
}

/// The end-of-stream checks (whole-stream checksum, applied index present and stored), and
/// the received file made durable.
fn seal(inc: &mut Incoming, total: u32) -> Result<(), String> {
    if inc.hasher.clone().finalize() != total {
        return Err("whole-stream checksum mismatch".into());
    }
    let index = inc.meta.index;
    if inc.applied != Some(index) {
        return Err("the stream ended without its applied index".into());
    }
    inc.engine.commit_batch(true).map_err(|e| e.to_string())?;
    let stored = inc
        .engine
        .committed_applied_index()
        .map_err(|e| e.to_string())?;
    if stored != index {
        return Err(format!(
            "the received file holds applied index {stored}, not {index}"
        ));
    }
    Ok(())
}

/// A whole transfer of snapshot index `index` taken in as `take_chunk` takes each chunk
/// (payload decoded under `max_payload_bytes`, records validated and written) and checked
/// as `finish` checks it, into an in-memory engine instead of a group's file: the receiving
/// side's decoders without a running node, for the `snapshot_chunk` fuzz target.
pub(crate) fn receive_in_memory(
    index: LogIndex,
    payloads: &[&[u8]],
    total_crc: u32,
    max_payload_bytes: usize,
) -> Result<(), String> {
    let mut inc = Incoming {
        from: 0,
        transfer: 0,
        next_seq: 0,
        meta: SnapshotMeta {
            index,
            term: 1,
            membership: Default::default(),
        },
        hasher: crc32fast::Hasher::new(),
        engine: Engine::in_memory().map_err(|e| e.to_string())?,
        applied: None,
        totals: Totals::default(),
        unsynced_bytes: 0,
    };
    for payload in payloads {
        let records = decode_records(payload, max_payload_bytes)?;
        write_records(&mut inc, records).map_err(|e| e.to_string())?;
        inc.hasher.update(payload);
    }
    seal(&mut inc, total_crc)
}

/// The last chunk was taken: validate the whole, make it durable, swap it in.
fn finish(
    group: &mut Group,
    mut inc: Incoming,
    total: u32,
    chunk: &SnapshotChunk,
    config: &ServerConfig,
    kv_config: &KvConfig,
) -> Result<Option<Message>, TakeError> {
    seal(&mut inc, total)?;
    let index = inc.meta.index;
    let current = group.machine_applied_index();
    if index <= current {
        debug!(
            group = group.id,
            index, current, "received snapshot is not ahead of the engine: discarded"
        );
        drop(inc.engine);
        let _ = group.disk.remove(INCOMING_FILE);
    } else {
        swap_in(group, inc.engine, config, kv_config)?;
        group.engine_swapped_in(index);
        info!(
            group = group.id,
            index,
            from = chunk.from,
            "received snapshot swapped in"
        );
    }
    Ok(Some(Message {
        from: chunk.from,
        to: chunk.to,
        term: chunk.term,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: inc.meta,
                data: checkpoint_token(index),
            },
        },
    }))
}

/// Why a chunk was not taken.
#[derive(Debug)]
enum TakeError {
    /// The transfer is dropped and the group is as it was before it (the sender starts over).
    Refused(String),
    /// The group's engine file was replaced but could not be put in use: the node must stop
    /// (a restart opens whatever the directory durably names).
    Fatal(ServerError),
}

impl From<String> for TakeError {
    fn from(reason: String) -> TakeError {
        TakeError::Refused(reason)
    }
}

impl From<&str> for TakeError {
    fn from(reason: &str) -> TakeError {
        TakeError::Refused(reason.to_string())
    }
}

/// Replaces the group's engine by the validated incoming one (`received`, sealed: every
/// batch committed, the last durably): the file is renamed over the old one, the old engine
/// closed and the directory synced. The old engine stays in use until the rename succeeded,
/// so a failed rename changes nothing (the transfer is refused and starts over); a failure
/// after it is fatal, since the file the group's name points at is then the received one.
/// `received` stays open across the rename (its handle follows the file, and it holds exactly
/// what reopening the file would read).
fn swap_in(
    group: &mut Group,
    mut received: Engine,
    config: &ServerConfig,
    kv_config: &KvConfig,
) -> Result<(), TakeError> {
    let id = group.id;
    group.disk.rename(INCOMING_FILE, ENGINE_FILE).map_err(|e| {
        TakeError::Refused(format!(
            "renaming the received engine {INCOMING_FILE} over {ENGINE_FILE}: {e}"
        ))
    })?;
    received.renamed(ENGINE_FILE);
    let fatal = |what: &str, e: &dyn std::fmt::Display| {
        TakeError::Fatal(ServerError::Storage(format!(
            "group {id}: {what} (the received engine is already renamed to {ENGINE_FILE}): {e}"
        )))
    };
    #[allow(unused_mut)]
    let mut machine = StateMachine::open(kv_config.clone(), received)
        .map_err(|e| fatal("opening the received engine", &e))?;
    #[cfg(any(test, madsim))]
    machine.set_planted_bugs(config.planted_bugs);
    #[cfg(not(any(test, madsim)))]
    let _ = config;
    // The old engine closes here; its file is no longer named.
    drop(std::mem::replace(
        &mut group.machine,
        GroupMachine::Kv(machine),
    ));
    group
        .disk
        .sync_dir()
        .map_err(|e| fatal("syncing the directory after the rename", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests;
