//! An in-memory, deterministic cluster of Raft cores with a safety checker.
//!
//! The harness plays the runtime by the `Ready` contract: it persists a Ready's snapshot,
//! entries and hard state into a per-node `Durable` image before queueing its messages, and a
//! crash keeps only that image (whatever the core had not yet handed out in a Ready is lost).
//! The network is a bag of messages that tests deliver, drop or duplicate in any order;
//! partitions cut links at delivery time. After every step `check` verifies Raft's safety
//! properties over all nodes; violations are returned as errors naming the property.

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::{
    Config, Entry, EntryPayload, HardState, LogIndex, Membership, Message, MessageBody, NodeId,
    Raft, ReadState, Restored, Role, Snapshot, Term,
};

/// What a node's disk holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Durable {
    pub(crate) hard_state: HardState,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) entries: Vec<Entry>,
}

/// The replicated application: a hash chain over applied entries, so that two nodes agree on
/// the hash at an index iff they applied the same entries up to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct App {
    pub(crate) index: LogIndex,
    pub(crate) hash: u64,
}

impl App {
    fn apply(&mut self, e: &Entry) {
        let mut h = self.hash ^ e.term.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bytes: &[u8] = match &e.payload {
            EntryPayload::Command(c) => c,
            EntryPayload::Noop => b"noop",
            EntryPayload::Membership(_) => b"membership",
        };
        for b in bytes.iter().chain(e.index.to_le_bytes().iter()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3);
        }
        self.hash = h;
        self.index = e.index;
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.index.to_le_bytes().to_vec();
        v.extend_from_slice(&self.hash.to_le_bytes());
        v
    }

    fn decode(data: &[u8]) -> App {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        App {
            index: word(0),
            hash: word(1),
        }
    }
}

pub(crate) struct Node {
    pub(crate) raft: Option<Raft>,
    pub(crate) durable: Durable,
    pub(crate) app: App,
    initial_membership: Membership,
    restarts: u64,
}

pub(crate) struct Cluster {
    pub(crate) nodes: BTreeMap<NodeId, Node>,
    pub(crate) network: Vec<Message>,
    /// Cut links (both directions are stored).
    cut: BTreeSet<(NodeId, NodeId)>,
    make_config: Box<dyn Fn(NodeId, u64) -> Config>,
    pub(crate) checker: Checker,
    /// Print every Ready handled (debugging a failing case).
    pub(crate) trace: bool,
}

impl Cluster {
    /// `voters` start as the bootstrap membership; `spares` run with an empty membership and
    /// can be added later.
    pub(crate) fn new(
        voters: &[NodeId],
        spares: &[NodeId],
        make_config: impl Fn(NodeId, u64) -> Config + 'static,
    ) -> Cluster {
        let mut initial = Membership::default();
        initial.voters.extend(voters.iter().copied());
        let mut nodes = BTreeMap::new();
        for &id in voters.iter().chain(spares) {
            let m = if voters.contains(&id) {
                initial.clone()
            } else {
                Membership::default()
            };
            nodes.insert(
                id,
                Node {
                    raft: None,
                    durable: Durable::default(),
                    app: App::default(),
                    initial_membership: m,
                    restarts: 0,
                },
            );
        }
        let mut c = Cluster {
            nodes,
            network: Vec::new(),
            cut: BTreeSet::new(),
            make_config: Box::new(make_config),
            checker: Checker::default(),
            trace: std::env::var("RAFT_TRACE").is_ok(),
        };
        let ids: Vec<_> = c.nodes.keys().copied().collect();
        for id in ids {
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let seed = id.wrapping_mul(1_000_003) ^ node.restarts;
        let config = (self.make_config)(id, seed);
        let restored = Restored {
            hard_state: node.durable.hard_state.clone(),
            snapshot: node.durable.snapshot.as_ref().map(|s| s.meta.clone()),
            entries: node.durable.entries.clone(),
            initial_membership: node.initial_membership.clone(),
        };
        let mut raft = Raft::new(config, restored).expect("restore from durable state");
        node.app = App::default();
        if let Some(s) = &node.durable.snapshot {
            node.app = App::decode(&s.data);
            raft.snapshot_saved(s.clone());
        }
        node.raft = Some(raft);
    }

    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub(crate) fn raft(&self, id: NodeId) -> Option<&Raft> {
        self.nodes.get(&id).and_then(|n| n.raft.as_ref())
    }

    pub(crate) fn raft_mut(&mut self, id: NodeId) -> Option<&mut Raft> {
        self.nodes.get_mut(&id).and_then(|n| n.raft.as_mut())
    }

    pub(crate) fn crash(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.raft = None;
        }
    }

    pub(crate) fn restart(&mut self, id: NodeId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.raft.is_none() {
            n.restarts += 1;
            self.start(id);
        }
    }

    pub(crate) fn is_up(&self, id: NodeId) -> bool {
        self.raft(id).is_some()
    }

    /// Cuts every link between `group` and the other nodes.
    pub(crate) fn partition(&mut self, group: &[NodeId]) {
        self.cut.clear();
        for a in self.ids() {
            for b in self.ids() {
                if group.contains(&a) != group.contains(&b) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    pub(crate) fn heal(&mut self) {
        self.cut.clear();
    }

    /// The live leader with the highest term, if any.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (r.term(), *id, r.role())))
            .filter(|(_, _, role)| *role == Role::Leader)
            .map(|(term, id, _)| (term, id))
            .max()
            .map(|(_, id)| id)
    }

    pub(crate) fn tick(&mut self, id: NodeId) {
        if let Some(r) = self.raft_mut(id) {
            r.tick();
        }
    }

    pub(crate) fn tick_all(&mut self) {
        for id in self.ids() {
            self.tick(id);
        }
    }

    /// Delivers the in-flight message at `slot` (modulo the number in flight).
    pub(crate) fn deliver(&mut self, slot: usize) {
        if self.network.is_empty() {
            return;
        }
        let m = self.network.remove(slot % self.network.len());
        if self.cut.contains(&(m.from, m.to)) {
            return;
        }
        let kind = message_kind(&m.body);
        if let Some(r) = self.raft_mut(m.to) {
            r.step(m);
            *self.checker.delivered.entry(kind).or_insert(0) += 1;
        }
    }

    pub(crate) fn drop_message(&mut self, slot: usize) {
        if !self.network.is_empty() {
            let n = self.network.len();
            self.network.remove(slot % n);
        }
    }

    pub(crate) fn duplicate(&mut self, slot: usize) {
        if !self.network.is_empty() {
            let m = self.network[slot % self.network.len()].clone();
            self.network.push(m);
        }
    }

    /// Plays the runtime for one Ready of `id`: persist, send, apply, advance.
    pub(crate) fn process_ready(&mut self, id: NodeId) -> Result<(), String> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        if !raft.has_ready() {
            return Ok(());
        }
        let rd = raft.ready();
        if self.trace {
            eprintln!(
                "  ready {id} (term {} role {:?} commit {}): snap {:?} entries {:?} hs {:?} committed {:?} msgs {:?}",
                raft.term(),
                raft.role(),
                raft.commit_index(),
                rd.snapshot.as_ref().map(|s| &s.meta),
                rd.entries.iter().map(|e| (e.index, e.term, &e.payload)).collect::<Vec<_>>(),
                rd.hard_state,
                rd.committed.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
                rd.messages.iter().map(|m| (m.to, m.term, message_kind(&m.body))).collect::<Vec<_>>(),
            );
        }
        if let Some(s) = &rd.snapshot {
            node.durable.snapshot = Some(s.clone());
            node.durable.entries.clear();
            node.app = App::decode(&s.data);
            self.checker.observe_app(id, node.app)?;
        }
        if let Some(first) = rd.entries.first() {
            node.durable.entries.retain(|e| e.index < first.index);
            node.durable.entries.extend(rd.entries.iter().cloned());
        }
        if let Some(hs) = &rd.hard_state {
            node.durable.hard_state = hs.clone();
        }
        self.network.extend(rd.messages.iter().cloned());
        for e in &rd.committed {
            if e.index != node.app.index + 1 {
                return Err(format!(
                    "node {id}: committed entry {} emitted after applied {}",
                    e.index, node.app.index
                ));
            }
            node.app.apply(e);
            self.checker.observe_app(id, node.app)?;
            self.checker.observe_committed(e, raft.term())?;
        }
        for r in &rd.reads {
            self.checker.observe_read(id, r)?;
        }
        raft.advance(rd);
        Ok(())
    }

    pub(crate) fn process_all_ready(&mut self) -> Result<(), String> {
        for id in self.ids() {
            for _ in 0..4 {
                self.process_ready(id)?;
            }
        }
        Ok(())
    }

    /// Takes a snapshot of `id`'s application at its applied index.
    pub(crate) fn snapshot(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(raft) = node.raft.as_mut() else {
            return;
        };
        let current = raft.snapshot_meta().map_or(0, |m| m.index);
        if node.app.index <= current {
            return;
        }
        let Some(meta) = raft.snapshot_meta_at(node.app.index) else {
            return;
        };
        let snapshot = Snapshot {
            meta,
            data: node.app.encode(),
        };
        node.durable.snapshot = Some(snapshot.clone());
        node.durable
            .entries
            .retain(|e| e.index > snapshot.meta.index);
        raft.snapshot_saved(snapshot);
    }

    pub(crate) fn read_index(&mut self, id: NodeId, ctx: u64) {
        let floor = self.checker.committed_floor(self);
        if self.raft_mut(id).is_some_and(|r| r.read_index(ctx).is_ok()) {
            self.checker.read_floor.insert(ctx, floor);
        }
    }

    /// Checks every safety property over the current state.
    pub(crate) fn check(&mut self) -> Result<(), String> {
        let live: Vec<(NodeId, &Raft)> = self
            .nodes
            .iter()
            .filter_map(|(id, n)| n.raft.as_ref().map(|r| (*id, r)))
            .collect();
        let step = self.checker.step;
        // At most one leader per term. A leader counts once its term is durable: one that
        // won while its disk stalled and crashed before persisting anything never acted.
        for (id, r) in &live {
            let durable_term = self.nodes.get(id).map_or(0, |n| n.durable.hard_state.term);
            if r.role() == Role::Leader && durable_term == r.term() {
                let (first, _) = *self.checker.leaders.entry(r.term()).or_insert((*id, step));
                if first != *id {
                    return Err(format!(
                        "two leaders in term {}: {first} and {id}\n{}",
                        r.term(),
                        self.describe()
                    ));
                }
            }
        }
        // Log matching.
        for (i, (a, ra)) in live.iter().enumerate() {
            for (b, rb) in live.iter().skip(i + 1) {
                check_log_matching(ra, rb).map_err(|e| format!("log matching {a}/{b}: {e}"))?;
            }
        }
        // Committed entries: every node's committed prefix agrees with the record.
        for (id, r) in &live {
            for e in r
                .log_entries()
                .iter()
                .take_while(|e| e.index <= r.commit_index())
            {
                self.checker
                    .observe_committed(e, r.term())
                    .map_err(|err| format!("node {id}: {err}"))?;
            }
        }
        // Leader completeness: a leader has every entry committed in an earlier term.
        for (id, r) in &live {
            if r.role() != Role::Leader {
                continue;
            }
            // The log starts after its compaction point: the snapshot's index, or on a leader
            // keeping entries for a member catching up, below it.
            let first = r
                .log_entries()
                .first()
                .map_or(r.last_index() + 1, |e| e.index);
            for (index, (entry, commit_term)) in &self.checker.committed {
                if *commit_term >= r.term() || *index < first {
                    continue;
                }
                let have = r.log_entries().get((*index - first) as usize);
                if have != Some(entry) {
                    return Err(format!(
                        "leader completeness: leader {id} of term {} lacks entry {index} committed by term {commit_term}",
                        r.term()
                    ));
                }
            }
        }
        self.checker.step += 1;
        Ok(())
    }

    /// Heals the network, restarts every node and runs until a leader has committed and
    /// every member has applied everything; Err if that does not happen in time.
    pub(crate) fn converge(&mut self, max_rounds: usize) -> Result<(), String> {
        self.heal();
        for id in self.ids() {
            self.restart(id);
        }
        for round in 0..max_rounds {
            self.tick_all();
            for _ in 0..8 {
                self.process_all_ready()?;
                while !self.network.is_empty() {
                    self.deliver(0);
                }
            }
            self.process_all_ready()?;
            self.check()?;
            if round > 0 && self.converged() {
                return Ok(());
            }
        }
        Err(format!(
            "no convergence within {max_rounds} rounds:\n{}",
            self.describe()
        ))
    }

    pub(crate) fn describe(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            match &n.raft {
                None => out.push_str(&format!("node {id}: down\n")),
                Some(r) => out.push_str(&format!(
                    "node {id}: term {} vote {:?} role {:?} leader {:?} last {} (term {:?}) commit {} applied {} snap {:?} voters {:?} learners {:?}\n",
                    r.term(),
                    r.hard_state().vote,
                    r.role(),
                    r.leader(),
                    r.last_index(),
                    r.log_entries().last().map(|e| e.term),
                    r.commit_index(),
                    n.app.index,
                    r.snapshot_meta().map(|m| m.index),
                    r.membership().voters,
                    r.membership().learners,
                )),
            }
        }
        out
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some(lr) = self.raft(l) else { return false };
        let last_term = lr.log_entries().last().map(|e| e.term);
        let last_term = last_term
            .or(lr.snapshot_meta().map(|m| m.term))
            .unwrap_or(0);
        if last_term != lr.term() || lr.commit_index() != lr.last_index() {
            return false;
        }
        let m = lr.membership();
        m.voters.iter().chain(m.learners.iter()).all(|id| {
            self.nodes
                .get(id)
                .is_some_and(|n| n.app.index == lr.commit_index())
        })
    }
}

fn message_kind(body: &MessageBody) -> &'static str {
    match body {
        MessageBody::PreVote { .. } => "PreVote",
        MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
        MessageBody::Vote { transfer: true, .. } => "Vote(transfer)",
        MessageBody::Vote { .. } => "Vote",
        MessageBody::VoteResponse { .. } => "VoteResponse",
        MessageBody::Append { .. } => "Append",
        MessageBody::AppendResponse { success: false, .. } => "AppendResponse(reject)",
        MessageBody::AppendResponse { .. } => "AppendResponse",
        MessageBody::Heartbeat { .. } => "Heartbeat",
        MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
        MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
        MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
        MessageBody::TimeoutNow => "TimeoutNow",
    }
}

fn check_log_matching(a: &Raft, b: &Raft) -> Result<(), String> {
    let (ea, eb) = (a.log_entries(), b.log_entries());
    let (Some(fa), Some(fb)) = (ea.first(), eb.first()) else {
        return Ok(());
    };
    let lo = fa.index.max(fb.index);
    let hi = a.last_index().min(b.last_index());
    let at = |es: &[Entry], first: LogIndex, i: LogIndex| es.get((i - first) as usize).cloned();
    let mut matched = false;
    let mut i = hi;
    while i >= lo && i > 0 {
        let (x, y) = (at(ea, fa.index, i), at(eb, fb.index, i));
        if matched {
            if x != y {
                return Err(format!(
                    "entries differ at {i} below a matching entry: {x:?} vs {y:?}"
                ));
            }
        } else if x.as_ref().map(|e| e.term) == y.as_ref().map(|e| e.term) {
            if x != y {
                return Err(format!("same index {i} and term but different payload"));
            }
            matched = true;
        }
        i -= 1;
    }
    Ok(())
}

/// The record of everything observed so far, against which safety is judged.
#[derive(Default)]
pub(crate) struct Checker {
    /// Checks done so far: the logical time of every observation.
    pub(crate) step: u64,
    /// term -> the first node seen leading it, and when.
    pub(crate) leaders: BTreeMap<Term, (NodeId, u64)>,
    /// index -> (committed entry, an upper bound on the term in which it was committed).
    pub(crate) committed: BTreeMap<LogIndex, (Entry, u64)>,
    /// index -> application hash after applying it.
    pub(crate) app_hash: BTreeMap<LogIndex, u64>,
    /// ctx -> highest index known committed when the read was requested.
    pub(crate) read_floor: BTreeMap<u64, LogIndex>,
    pub(crate) reads_served: u64,
    /// Messages delivered to a live node, by kind (coverage of the schedules).
    pub(crate) delivered: BTreeMap<&'static str, u64>,
    pub(crate) entries_applied: u64,
}

impl Checker {
    /// `reporter_term`: the current term of the node whose log shows `e` committed, an upper
    /// bound on the term in which `e` was committed.
    fn observe_committed(&mut self, e: &Entry, reporter_term: Term) -> Result<(), String> {
        match self.committed.get(&e.index) {
            Some((known, _)) if known != e => Err(format!(
                "committed entry changed at index {}: {known:?} then {e:?}",
                e.index
            )),
            Some((_, term)) => {
                let term = (*term).min(reporter_term);
                self.committed.insert(e.index, (e.clone(), term));
                Ok(())
            }
            None => {
                self.committed.insert(e.index, (e.clone(), reporter_term));
                Ok(())
            }
        }
    }

    fn observe_app(&mut self, id: NodeId, app: App) -> Result<(), String> {
        if app.index == 0 {
            return Ok(());
        }
        self.entries_applied += 1;
        match self.app_hash.get(&app.index) {
            Some(h) if *h != app.hash => Err(format!(
                "state machine safety: node {id} applied different entries up to {}",
                app.index
            )),
            Some(_) => Ok(()),
            None => {
                self.app_hash.insert(app.index, app.hash);
                Ok(())
            }
        }
    }

    fn observe_read(&mut self, id: NodeId, r: &ReadState) -> Result<(), String> {
        self.reads_served += 1;
        let floor = self.read_floor.get(&r.ctx).copied().unwrap_or(0);
        if r.index < floor {
            return Err(format!(
                "ReadIndex linearity: node {id} read {} at index {} but {floor} was committed before the request",
                r.ctx, r.index
            ));
        }
        Ok(())
    }

    /// The highest index known committed anywhere right now.
    fn committed_floor(&self, cluster: &Cluster) -> LogIndex {
        let recorded = self.committed.keys().next_back().copied().unwrap_or(0);
        let live = cluster
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.commit_index());
        live.fold(recorded, LogIndex::max)
    }
}
