//! The metadata group's state machine: the members, the placement config fixed at bootstrap and
//! the shard map derived from them.
//!
//! Every node applies the same metadata log, so everything here is deterministic: members live in
//! a `BTreeMap`, the shard map is recomputed by `placement::place` (which ignores input order),
//! and nothing reads a clock. Commands are idempotent (a retried admin request is harmless) and
//! are refused, with a reason, when they would leave fewer Active members than the replicas a
//! shard needs.
//!
//! Invariants (checked by `restore` and proptested below):
//! - uninitialized: no members, epoch 0, empty shard map, default placement;
//! - initialized: the placement is valid and within the `MAX_*` bounds, member ids are non-zero
//!   and match their keys, at least one member is Active, no two non-Removed members share an
//!   address, and `shard_map` is exactly `place` over the Active members with an effective
//!   replication factor of `min(replication_factor, #active)` (so a 1- or 2-node cluster works);
//! - `epoch` grows by one on every applied change and never otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::types::{
    shard_of_group, ClusterView, GroupId, GroupStatus, Member, MemberState, MetaCommand,
    MetaResult, META_GROUP,
};
use crate::auth::{validate_user_name, Role, SecretHash, SecretKind, User, MAX_USERS};
use crate::placement::{place, NodeInfo, PlacementConfig, PlacementError, ShardId, ShardMap};
use crate::raft::{LogIndex, NodeId};

/// Largest encoded `MetaCommand` accepted by `decode_command`, in bytes.
pub const MAX_META_COMMAND_BYTES: usize = 64 * 1024;
/// Largest snapshot accepted by `restore`, in bytes.
pub const MAX_META_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;
/// Bounds on the placement config a Bootstrap may fix: every applied change recomputes the
/// shard map (a ring of `vnodes_per_node * members` points), so these bound its cost.
pub const MAX_SHARDS: u32 = 4096;
pub const MAX_REPLICATION_FACTOR: usize = 15;
pub const MAX_VNODES_PER_NODE: u32 = 1024;
/// Most non-Removed members a cluster may have.
pub const MAX_MEMBERS: usize = 1024;

/// Version of the snapshot layout (2: with users); `restore` also reads format 1 and refuses
/// any other.
const SNAPSHOT_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("meta command of {len_bytes} bytes exceeds MAX_META_COMMAND_BYTES {max_bytes}")]
    CommandTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("undecodable meta command: {0}")]
    DecodeCommand(String),
    #[error("meta snapshot of {len_bytes} bytes exceeds MAX_META_SNAPSHOT_BYTES {max_bytes}")]
    SnapshotTooLarge { len_bytes: usize, max_bytes: usize },
    #[error("meta snapshot rejected: {0}")]
    Restore(String),
    #[error("invalid bootstrap: {0}")]
    Bootstrap(String),
}

/// The replica set a group should have.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Target {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    initialized: bool,
    epoch: u64,
    applied_index: LogIndex,
    placement: PlacementConfig,
    members: BTreeMap<NodeId, Member>,
    shard_map: ShardMap,
    /// Users by name (empty: nobody can log in to a node with auth enabled until the first
    /// admin is bootstrapped). User changes do not change `epoch` (it versions the map).
    users: BTreeMap<String, User>,
}

/// The layout of snapshot format 1 (before users): still restored.
#[derive(Deserialize)]
struct MetaStateV1 {
    initialized: bool,
    epoch: u64,
    applied_index: LogIndex,
    placement: PlacementConfig,
    members: BTreeMap<NodeId, Member>,
    shard_map: ShardMap,
}

/// What a command does to the state, decided before anything is changed.
enum Decision {
    Unchanged,
    Rejected(String),
    /// Insert or replace one member.
    Set(Member),
    Init {
        placement: PlacementConfig,
        members: BTreeMap<NodeId, Member>,
    },
    /// Insert or replace one user.
    SetUser(User),
    DropUser(String),
}

impl MetaState {
    pub fn uninitialized() -> MetaState {
        MetaState {
            initialized: false,
            epoch: 0,
            applied_index: 0,
            placement: PlacementConfig::default(),
            members: BTreeMap::new(),
            shard_map: ShardMap {
                replicas: Vec::new(),
            },
            users: BTreeMap::new(),
        }
    }

    /// The state right after a Bootstrap command (bootstrap nodes start from this before the log
    /// says so). Its applied index is 0; applying the log's Bootstrap later changes nothing.
    pub fn bootstrapped(
        placement: PlacementConfig,
        members: Vec<Member>,
    ) -> Result<MetaState, MetaError> {
        let members = validate_bootstrap(&placement, &members).map_err(MetaError::Bootstrap)?;
        let mut state = MetaState::uninitialized();
        state.initialize(placement, members);
        Ok(state)
    }

    pub fn is_initialized(&self) -> bool {
        self.initialized
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    /// The default config until initialized.
    pub fn placement(&self) -> &PlacementConfig {
        &self.placement
    }

    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    pub fn users(&self) -> &BTreeMap<String, User> {
        &self.users
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Target replicas of every shard over the Active members (no shards when uninitialized).
    pub fn shard_map(&self) -> &ShardMap {
        &self.shard_map
    }

    /// Empty if the shard is unknown.
    pub fn shard_replicas(&self, shard: ShardId) -> &[NodeId] {
        self.shard_map
            .replicas
            .get(shard as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// The target of one group. META_GROUP: voters = the `min(rf, #active)` Active members with
    /// the lowest ids; learners = every other non-Removed member (Leaving and Dead included, so
    /// they keep learning the map). Shard group g (= shard g-1): voters = its shard_map replicas,
    /// no learners. Empty when uninitialized or g is out of range.
    pub fn target(&self, group: GroupId) -> Target {
        if !self.initialized {
            return Target::default();
        }
        if group == META_GROUP {
            let voters: BTreeSet<NodeId> = self
                .active_ids()
                .take(self.effective_replication_factor())
                .collect();
            let learners = self
                .members
                .values()
                .filter(|m| m.state != MemberState::Removed && !voters.contains(&m.id))
                .map(|m| m.id)
                .collect();
            return Target { voters, learners };
        }
        match shard_of_group(group) {
            Some(shard) => Target {
                voters: self.shard_replicas(shard).iter().copied().collect(),
                learners: BTreeSet::new(),
            },
            None => Target::default(),
        }
    }

    /// Applies the command at log index `index`; panics unless `index > applied_index` (the
    /// caller applies each entry once, in order). Applying a command twice leaves the state as
    /// applying it once.
    pub fn apply(&mut self, index: LogIndex, command: &MetaCommand) -> MetaResult {
        self.skip(index);
        match self.decide(command) {
            Decision::Unchanged => MetaResult::Applied { epoch: self.epoch },
            Decision::Rejected(reason) => MetaResult::Rejected { reason },
            Decision::Set(member) => {
                self.members.insert(member.id, member);
                self.shard_map = compute_shard_map(&self.placement, &self.members)
                    .expect("decide keeps at least one Active member and a valid placement");
                self.epoch += 1;
                MetaResult::Applied { epoch: self.epoch }
            }
            Decision::Init { placement, members } => {
                self.initialize(placement, members);
                MetaResult::Applied { epoch: self.epoch }
            }
            Decision::SetUser(user) => {
                self.users.insert(user.name.clone(), user);
                MetaResult::Applied { epoch: self.epoch }
            }
            Decision::DropUser(name) => {
                self.users.remove(&name);
                MetaResult::Applied { epoch: self.epoch }
            }
        }
    }

    /// Marks a log index applied without a command (no-ops, membership entries, undecodable
    /// entries); panics unless `index > applied_index`.
    pub fn skip(&mut self, index: LogIndex) {
        assert!(
            index > self.applied_index,
            "meta log index {index} applied after {}",
            self.applied_index
        );
        self.applied_index = index;
    }

    pub fn snapshot(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec((SNAPSHOT_FORMAT, self), bincode::config::standard())
            .expect("encoding plain maps and integers into memory cannot fail")
    }

    /// Rebuilds a state from `snapshot()` output. Bounded (`MAX_META_SNAPSHOT_BYTES`), never
    /// panics on garbage, and refuses a state that breaks the module's invariants.
    pub fn restore(bytes: &[u8]) -> Result<MetaState, MetaError> {
        if bytes.len() > MAX_META_SNAPSHOT_BYTES {
            return Err(MetaError::SnapshotTooLarge {
                len_bytes: bytes.len(),
                max_bytes: MAX_META_SNAPSHOT_BYTES,
            });
        }
        // The format first (a u32 cannot make the decoder allocate), then the body it names,
        // decoded exactly and within the bound.
        let (format, header): (u32, usize) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| MetaError::Restore(format!("metadata state image: format: {e}")))?;
        let body = &bytes[header..];
        let bounded = |e: crate::bounded_decode::BoundedDecodeError| {
            MetaError::Restore(format!("metadata state image: {e}"))
        };
        let state = match format {
            SNAPSHOT_FORMAT => crate::bounded_decode::decode_exact_within::<MetaState>(
                body,
                "MAX_META_SNAPSHOT_BYTES",
                MAX_META_SNAPSHOT_BYTES,
            )
            .map_err(bounded)?,
            1 => MetaState::from(
                crate::bounded_decode::decode_exact_within::<MetaStateV1>(
                    body,
                    "MAX_META_SNAPSHOT_BYTES",
                    MAX_META_SNAPSHOT_BYTES,
                )
                .map_err(bounded)?,
            ),
            _ => {
                return Err(MetaError::Restore(format!(
                    "unknown format {format} (expected 1 or {SNAPSHOT_FORMAT})"
                )))
            }
        };
        state.check().map_err(MetaError::Restore)?;
        Ok(state)
    }

    pub fn to_view(
        &self,
        node_id: NodeId,
        meta_leader: Option<NodeId>,
        groups: Vec<GroupStatus>,
    ) -> ClusterView {
        ClusterView {
            node_id,
            initialized: self.initialized,
            epoch: self.epoch,
            placement: self.placement.clone(),
            members: self.members.values().cloned().collect(),
            shard_map: self.shard_map.clone(),
            meta_leader,
            groups,
        }
    }

    fn initialize(&mut self, placement: PlacementConfig, members: BTreeMap<NodeId, Member>) {
        self.shard_map = compute_shard_map(&placement, &members)
            .expect("a validated bootstrap has a valid placement and Active members");
        self.placement = placement;
        self.members = members;
        self.initialized = true;
        self.epoch = 1;
    }

    fn active_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.id)
    }

    fn active_count(&self) -> usize {
        self.active_ids().count()
    }

    fn effective_replication_factor(&self) -> usize {
        self.placement.replication_factor.min(self.active_count())
    }

    fn decide(&self, command: &MetaCommand) -> Decision {
        if let MetaCommand::Bootstrap { placement, members } = command {
            if self.initialized {
                return Decision::Unchanged;
            }
            return match validate_bootstrap(placement, members) {
                Ok(members) => Decision::Init {
                    placement: placement.clone(),
                    members,
                },
                Err(reason) => Decision::Rejected(format!("invalid bootstrap: {reason}")),
            };
        }
        if !self.initialized {
            return Decision::Rejected("the cluster is not bootstrapped yet".to_string());
        }
        match command {
            MetaCommand::Bootstrap { .. } => unreachable!("handled above"),
            MetaCommand::Join(member) => self.decide_join(member),
            MetaCommand::Leave(id) => self.decide_leave(*id),
            MetaCommand::MarkDead(id) => self.decide_mark_dead(*id),
            MetaCommand::MarkAlive(id) => self.decide_mark_alive(*id),
            MetaCommand::Remove(id) => self.decide_remove(*id),
            MetaCommand::BootstrapAdmin(user) => self.decide_bootstrap_admin(user),
            MetaCommand::AddUser(user) => self.decide_add_user(user),
            MetaCommand::RemoveUser(name) => self.decide_remove_user(name),
            MetaCommand::SetUserRole { name, role } => self.decide_set_role(name, *role),
            MetaCommand::SetUserSecret {
                name,
                kind,
                secret_hash,
            } => self.decide_set_secret(name, *kind, secret_hash),
        }
    }

    fn decide_bootstrap_admin(&self, user: &User) -> Decision {
        if !self.users.is_empty() {
            return Decision::Unchanged;
        }
        if user.role != Role::Admin {
            return Decision::Rejected("the first user must be an admin".into());
        }
        match validate_user(user) {
            Ok(()) => Decision::SetUser(user.clone()),
            Err(reason) => Decision::Rejected(reason),
        }
    }

    fn decide_add_user(&self, user: &User) -> Decision {
        if let Err(reason) = validate_user(user) {
            return Decision::Rejected(reason);
        }
        match self.users.get(&user.name) {
            Some(existing) if existing == user => Decision::Unchanged,
            Some(_) => Decision::Rejected(format!("user {:?} already exists", user.name)),
            None if self.users.len() >= MAX_USERS => {
                Decision::Rejected(format!("a cluster has at most {MAX_USERS} users"))
            }
            None => Decision::SetUser(user.clone()),
        }
    }

    fn decide_remove_user(&self, name: &str) -> Decision {
        match self.users.get(name) {
            None => Decision::Unchanged,
            Some(user) if user.role == Role::Admin && self.admin_count() == 1 => {
                Decision::Rejected(format!("{name:?} is the last admin: add another first"))
            }
            Some(_) => Decision::DropUser(name.to_string()),
        }
    }

    fn decide_set_role(&self, name: &str, role: Role) -> Decision {
        match self.users.get(name) {
            None => Decision::Rejected(format!("no user {name:?}")),
            Some(user) if user.role == role => Decision::Unchanged,
            Some(user) if user.role == Role::Admin && self.admin_count() == 1 => {
                Decision::Rejected(format!("{name:?} is the last admin: add another first"))
            }
            Some(user) => Decision::SetUser(User {
                role,
                ..user.clone()
            }),
        }
    }

    fn decide_set_secret(&self, name: &str, kind: SecretKind, hash: &SecretHash) -> Decision {
        let Some(user) = self.users.get(name) else {
            return Decision::Rejected(format!("no user {name:?}"));
        };
        let changed = User {
            kind,
            secret_hash: hash.clone(),
            ..user.clone()
        };
        if let Err(reason) = validate_user(&changed) {
            return Decision::Rejected(reason);
        }
        if &changed == user {
            return Decision::Unchanged;
        }
        Decision::SetUser(changed)
    }

    fn admin_count(&self) -> usize {
        self.users
            .values()
            .filter(|u| u.role == Role::Admin)
            .count()
    }

    fn decide_join(&self, new: &Member) -> Decision {
        let id = new.id;
        if id == 0 {
            return Decision::Rejected("node id 0 is reserved".to_string());
        }
        if new.state != MemberState::Active {
            return Decision::Rejected(format!(
                "join of node {id} must ask for state Active (got {:?})",
                new.state
            ));
        }
        if let Some(existing) = self.members.get(&id) {
            if existing.state == MemberState::Removed {
                return Decision::Rejected(format!("id {id} was removed; join with a new id"));
            }
            if existing.peer_addr != new.peer_addr || existing.client_addr != new.client_addr {
                return Decision::Rejected(format!(
                    "node {id} is already a member with peer {} and client {} (join asked for {} and {})",
                    existing.peer_addr, existing.client_addr, new.peer_addr, new.client_addr
                ));
            }
            if existing.state == MemberState::Dead {
                return Decision::Set(Member {
                    state: MemberState::Active,
                    ..existing.clone()
                });
            }
            return Decision::Unchanged;
        }
        let live: Vec<&Member> = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Removed)
            .collect();
        if live.len() >= MAX_MEMBERS {
            return Decision::Rejected(format!(
                "the cluster already has MAX_MEMBERS {MAX_MEMBERS} members"
            ));
        }
        if let Err(reason) = check_addresses(new, live.iter().copied()) {
            return Decision::Rejected(format!("join of node {id}: {reason}"));
        }
        Decision::Set(new.clone())
    }

    fn decide_leave(&self, id: NodeId) -> Decision {
        let member = match self.live_member(id, "leave") {
            Ok(m) => m,
            Err(reason) => return Decision::Rejected(reason),
        };
        match member.state {
            MemberState::Leaving => Decision::Unchanged,
            MemberState::Dead => Decision::Set(with_state(member, MemberState::Leaving)),
            MemberState::Active => {
                let active_now = self.active_count();
                let left = active_now - 1;
                let rf = self.placement.replication_factor;
                if left < rf.min(active_now) {
                    return Decision::Rejected(format!(
                        "node {id} cannot leave: cluster would have {left} active nodes, fewer than replication_factor {rf}"
                    ));
                }
                Decision::Set(with_state(member, MemberState::Leaving))
            }
            MemberState::Removed => unreachable!("live_member refuses Removed"),
        }
    }

    fn decide_mark_dead(&self, id: NodeId) -> Decision {
        let member = match self.live_member(id, "mark dead") {
            Ok(m) => m,
            Err(reason) => return Decision::Rejected(reason),
        };
        match member.state {
            MemberState::Dead => Decision::Unchanged,
            MemberState::Leaving => Decision::Rejected(format!(
                "node {id} is leaving; its replicas are already being moved"
            )),
            MemberState::Active => {
                let others = self.active_count() - 1;
                let rf = self.placement.replication_factor;
                if others < rf {
                    return Decision::Rejected(format!(
                        "cannot mark node {id} dead: {others} other active nodes, fewer than replication_factor {rf}, could not take its replicas"
                    ));
                }
                Decision::Set(with_state(member, MemberState::Dead))
            }
            MemberState::Removed => unreachable!("live_member refuses Removed"),
        }
    }

    fn decide_mark_alive(&self, id: NodeId) -> Decision {
        let member = match self.live_member(id, "mark alive") {
            Ok(m) => m,
            Err(reason) => return Decision::Rejected(reason),
        };
        match member.state {
            MemberState::Active => Decision::Unchanged,
            MemberState::Dead => Decision::Set(with_state(member, MemberState::Active)),
            MemberState::Leaving => Decision::Rejected(format!(
                "node {id} is leaving; it cannot become active again"
            )),
            MemberState::Removed => unreachable!("live_member refuses Removed"),
        }
    }

    fn decide_remove(&self, id: NodeId) -> Decision {
        let Some(member) = self.members.get(&id) else {
            return Decision::Rejected(format!("cannot remove node {id}: not a member"));
        };
        match member.state {
            MemberState::Removed => Decision::Unchanged,
            MemberState::Leaving | MemberState::Dead => {
                Decision::Set(with_state(member, MemberState::Removed))
            }
            MemberState::Active => {
                Decision::Rejected(format!("cannot remove active node {id}: leave first"))
            }
        }
    }

    /// The member `id` unless it is unknown or Removed (`action` names the refused command).
    fn live_member(&self, id: NodeId, action: &str) -> Result<&Member, String> {
        match self.members.get(&id) {
            None => Err(format!("cannot {action} node {id}: not a member")),
            Some(m) if m.state == MemberState::Removed => {
                Err(format!("cannot {action} node {id}: it was removed"))
            }
            Some(m) => Ok(m),
        }
    }

    /// The invariants listed in the module comment.
    fn check(&self) -> Result<(), String> {
        if !self.initialized {
            let canonical = MetaState {
                applied_index: self.applied_index,
                ..MetaState::uninitialized()
            };
            if *self != canonical {
                return Err("uninitialized state carries members, epoch or a map".to_string());
            }
            return Ok(());
        }
        validate_placement(&self.placement)?;
        if self.epoch == 0 {
            return Err("initialized state has epoch 0".to_string());
        }
        // Counted before the quadratic address check, which it bounds.
        let live_count = self
            .members
            .values()
            .filter(|m| m.state != MemberState::Removed)
            .count();
        if live_count > MAX_MEMBERS {
            return Err(format!(
                "{live_count} members exceed MAX_MEMBERS {MAX_MEMBERS}"
            ));
        }
        let mut live: Vec<&Member> = Vec::with_capacity(live_count);
        for (key, member) in &self.members {
            if *key != member.id || member.id == 0 {
                return Err(format!("member {} stored under id {key}", member.id));
            }
            if member.state != MemberState::Removed {
                check_addresses(member, live.iter().copied())?;
                live.push(member);
            }
        }
        if self.active_count() == 0 {
            return Err("no active member".to_string());
        }
        let expected =
            compute_shard_map(&self.placement, &self.members).map_err(|e| e.to_string())?;
        if expected != self.shard_map {
            return Err("shard map differs from the placement of the active members".to_string());
        }
        self.check_users()
    }

    fn check_users(&self) -> Result<(), String> {
        if self.users.len() > MAX_USERS {
            return Err(format!("{} users exceed {MAX_USERS}", self.users.len()));
        }
        for (name, user) in &self.users {
            if *name != user.name {
                return Err(format!("user {:?} stored under {name:?}", user.name));
            }
            validate_user(user)?;
        }
        if !self.users.is_empty() && self.admin_count() == 0 {
            return Err("users but no admin".to_string());
        }
        Ok(())
    }
}

impl From<MetaStateV1> for MetaState {
    fn from(v1: MetaStateV1) -> MetaState {
        MetaState {
            initialized: v1.initialized,
            epoch: v1.epoch,
            applied_index: v1.applied_index,
            placement: v1.placement,
            members: v1.members,
            shard_map: v1.shard_map,
            users: BTreeMap::new(),
        }
    }
}

/// A user as a command carries it: a valid name and a salted argon2id hash.
fn validate_user(user: &User) -> Result<(), String> {
    validate_user_name(&user.name)?;
    SecretHash::parse(user.secret_hash.as_phc().to_string())?;
    Ok(())
}

fn with_state(member: &Member, state: MemberState) -> Member {
    Member {
        state,
        ..member.clone()
    }
}

fn validate_placement(placement: &PlacementConfig) -> Result<(), String> {
    placement.validate().map_err(|e| e.to_string())?;
    if placement.shards > MAX_SHARDS {
        return Err(format!(
            "shards {} exceeds MAX_SHARDS {MAX_SHARDS}",
            placement.shards
        ));
    }
    if placement.replication_factor > MAX_REPLICATION_FACTOR {
        return Err(format!(
            "replication_factor {} exceeds MAX_REPLICATION_FACTOR {MAX_REPLICATION_FACTOR}",
            placement.replication_factor
        ));
    }
    if placement.vnodes_per_node > MAX_VNODES_PER_NODE {
        return Err(format!(
            "vnodes_per_node {} exceeds MAX_VNODES_PER_NODE {MAX_VNODES_PER_NODE}",
            placement.vnodes_per_node
        ));
    }
    Ok(())
}

/// Refuses a member whose addresses are equal to each other or used by one of `others`.
fn check_addresses<'a>(
    member: &Member,
    others: impl Iterator<Item = &'a Member>,
) -> Result<(), String> {
    if member.peer_addr == member.client_addr {
        return Err(format!(
            "node {} uses {} as both peer and client address",
            member.id, member.peer_addr
        ));
    }
    for other in others {
        let used: [SocketAddr; 2] = [other.peer_addr, other.client_addr];
        for addr in [member.peer_addr, member.client_addr] {
            if used.contains(&addr) {
                return Err(format!("address {addr} is used by node {}", other.id));
            }
        }
    }
    Ok(())
}

fn validate_bootstrap(
    placement: &PlacementConfig,
    members: &[Member],
) -> Result<BTreeMap<NodeId, Member>, String> {
    validate_placement(placement)?;
    if members.is_empty() {
        return Err("no members".to_string());
    }
    if members.len() > MAX_MEMBERS {
        return Err(format!(
            "{} members exceed MAX_MEMBERS {MAX_MEMBERS}",
            members.len()
        ));
    }
    let mut out: BTreeMap<NodeId, Member> = BTreeMap::new();
    for member in members {
        if member.id == 0 {
            return Err("node id 0 is reserved".to_string());
        }
        if member.state != MemberState::Active {
            return Err(format!(
                "node {} has state {:?}, not Active",
                member.id, member.state
            ));
        }
        if out.contains_key(&member.id) {
            return Err(format!("node id {} is listed twice", member.id));
        }
        check_addresses(member, out.values())?;
        out.insert(member.id, member.clone());
    }
    Ok(out)
}

/// `place` over the Active members, with the replication factor capped at their number.
fn compute_shard_map(
    placement: &PlacementConfig,
    members: &BTreeMap<NodeId, Member>,
) -> Result<ShardMap, PlacementError> {
    let active: Vec<NodeInfo> = members
        .values()
        .filter(|m| m.state == MemberState::Active)
        .map(|m| NodeInfo {
            id: m.id,
            zone: m.zone.clone(),
        })
        .collect();
    let effective = PlacementConfig {
        replication_factor: placement.replication_factor.min(active.len()),
        ..placement.clone()
    };
    place(&effective, &active)
}

fn command_codec() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_META_COMMAND_BYTES>()
}

/// Encodes a command as a log payload. A command longer than `MAX_META_COMMAND_BYTES` (only a
/// Join with an absurd zone name, or a Bootstrap with thousands of members) will not decode;
/// proposers should check the length.
pub fn encode_command(command: &MetaCommand) -> Vec<u8> {
    bincode::serde::encode_to_vec(command, command_codec())
        .expect("encoding plain data into memory cannot fail")
}

/// Decodes a log payload; refuses trailing bytes and anything over `MAX_META_COMMAND_BYTES`.
pub fn decode_command(bytes: &[u8]) -> Result<MetaCommand, MetaError> {
    if bytes.len() > MAX_META_COMMAND_BYTES {
        return Err(MetaError::CommandTooLarge {
            len_bytes: bytes.len(),
            max_bytes: MAX_META_COMMAND_BYTES,
        });
    }
    let (command, read) = bincode::serde::decode_from_slice(bytes, command_codec())
        .map_err(|e| MetaError::DecodeCommand(e.to_string()))?;
    if read != bytes.len() {
        return Err(MetaError::DecodeCommand(format!(
            "{} trailing bytes after command",
            bytes.len() - read
        )));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    fn member(id: NodeId) -> Member {
        Member {
            id,
            peer_addr: addr(7000 + id as u16),
            client_addr: addr(8000 + id as u16),
            zone: None,
            state: MemberState::Active,
        }
    }

    fn config(rf: usize) -> PlacementConfig {
        PlacementConfig {
            shards: 8,
            replication_factor: rf,
            vnodes_per_node: 16,
            load_factor: 1.25,
        }
    }

    fn cluster(nodes: NodeId, rf: usize) -> MetaState {
        MetaState::bootstrapped(config(rf), (1..=nodes).map(member).collect()).unwrap()
    }

    /// Applies at the next log index.
    fn run(state: &mut MetaState, command: MetaCommand) -> MetaResult {
        let index = state.applied_index() + 1;
        state.apply(index, &command)
    }

    fn rejected(result: &MetaResult, needle: &str) -> bool {
        matches!(result, MetaResult::Rejected { reason } if reason.contains(needle))
    }

    fn state_of(state: &MetaState, id: NodeId) -> MemberState {
        state.member(id).unwrap().state
    }

    #[test]
    fn bootstrap_initializes_once() {
        let mut state = MetaState::uninitialized();
        assert!(!state.is_initialized());
        assert!(state.target(META_GROUP).voters.is_empty());
        let bootstrap = MetaCommand::Bootstrap {
            placement: config(3),
            members: (1..=3).map(member).collect(),
        };
        assert_eq!(
            run(&mut state, bootstrap.clone()),
            MetaResult::Applied { epoch: 1 }
        );
        assert!(state.is_initialized());
        assert_eq!(state.shard_map().shard_count(), 8);
        let mut expected = cluster(3, 3);
        expected.skip(1);
        assert_eq!(
            state, expected,
            "bootstrapped() is the state after Bootstrap"
        );
        // A second, different bootstrap is ignored.
        let other = MetaCommand::Bootstrap {
            placement: config(1),
            members: vec![member(9)],
        };
        assert_eq!(run(&mut state, other), MetaResult::Applied { epoch: 1 });
        assert_eq!(state.placement(), &config(3));
        assert!(state.member(9).is_none());
    }

    #[test]
    fn bootstrap_rejects_invalid_input() {
        let mut dead = member(2);
        dead.state = MemberState::Dead;
        let mut same_addr = member(2);
        same_addr.client_addr = member(1).peer_addr;
        let cases: Vec<(PlacementConfig, Vec<Member>, &str)> = vec![
            (config(3), vec![], "no members"),
            (config(3), vec![member(1), member(1)], "listed twice"),
            (config(3), vec![member(1), same_addr], "used by node 1"),
            (config(3), vec![member(1), dead], "not Active"),
            (config(3), vec![member(0)], "reserved"),
            (
                PlacementConfig {
                    shards: 0,
                    ..config(3)
                },
                vec![member(1)],
                "shards",
            ),
            (
                PlacementConfig {
                    shards: MAX_SHARDS + 1,
                    ..config(3)
                },
                vec![member(1)],
                "MAX_SHARDS",
            ),
        ];
        for (placement, members, needle) in cases {
            let mut state = MetaState::uninitialized();
            let bootstrap = MetaCommand::Bootstrap {
                placement: placement.clone(),
                members: members.clone(),
            };
            let result = run(&mut state, bootstrap);
            assert!(rejected(&result, needle), "{result:?} lacks {needle:?}");
            assert!(!state.is_initialized());
            let err = MetaState::bootstrapped(placement, members).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn commands_before_bootstrap_are_rejected() {
        let mut state = MetaState::uninitialized();
        for command in [
            MetaCommand::Join(member(1)),
            MetaCommand::Leave(1),
            MetaCommand::MarkDead(1),
            MetaCommand::MarkAlive(1),
            MetaCommand::Remove(1),
        ] {
            assert!(rejected(&run(&mut state, command), "not bootstrapped"));
        }
        assert_eq!(state.epoch(), 0);
        assert_eq!(state.applied_index(), 5);
    }

    #[test]
    fn join_adds_an_active_member_and_grows_small_clusters() {
        let mut state = cluster(1, 3);
        assert_eq!(state.shard_replicas(0).len(), 1);
        assert_eq!(
            run(&mut state, MetaCommand::Join(member(2))),
            MetaResult::Applied { epoch: 2 }
        );
        assert_eq!(state_of(&state, 2), MemberState::Active);
        assert_eq!(state.shard_replicas(0).len(), 2);
        run(&mut state, MetaCommand::Join(member(3)));
        run(&mut state, MetaCommand::Join(member(4)));
        assert_eq!(state.epoch(), 4);
        for shard in 0..8 {
            assert_eq!(state.shard_replicas(shard).len(), 3);
        }
        assert!(state.shard_replicas(8).is_empty());
        assert_eq!(state.target(META_GROUP).voters, BTreeSet::from([1, 2, 3]));
        assert_eq!(state.target(META_GROUP).learners, BTreeSet::from([4]));
    }

    #[test]
    fn join_rejections() {
        let mut state = cluster(3, 3);
        assert!(rejected(
            &run(&mut state, MetaCommand::Join(member(0))),
            "reserved"
        ));
        let mut moved = member(2);
        moved.peer_addr = addr(9999);
        assert!(rejected(
            &run(&mut state, MetaCommand::Join(moved)),
            "already a member"
        ));
        let mut steals_peer = member(5);
        steals_peer.peer_addr = member(1).peer_addr;
        assert!(rejected(
            &run(&mut state, MetaCommand::Join(steals_peer)),
            "used by node 1"
        ));
        let mut steals_client = member(5);
        steals_client.client_addr = member(3).client_addr;
        assert!(rejected(
            &run(&mut state, MetaCommand::Join(steals_client)),
            "used by node 3"
        ));
        let mut not_active = member(5);
        not_active.state = MemberState::Leaving;
        assert!(rejected(
            &run(&mut state, MetaCommand::Join(not_active)),
            "must ask for state Active"
        ));
        assert_eq!(state.epoch(), 1, "no rejection changes the state");
        assert_eq!(state.members().len(), 3);
    }

    #[test]
    fn join_of_a_known_member_is_idempotent_and_revives_the_dead() {
        let mut state = cluster(4, 3);
        assert_eq!(
            run(&mut state, MetaCommand::Join(member(2))),
            MetaResult::Applied { epoch: 1 }
        );
        run(&mut state, MetaCommand::MarkDead(4));
        assert_eq!(state_of(&state, 4), MemberState::Dead);
        assert_eq!(
            run(&mut state, MetaCommand::Join(member(4))),
            MetaResult::Applied { epoch: 3 }
        );
        assert_eq!(state_of(&state, 4), MemberState::Active);
    }

    #[test]
    fn removed_ids_are_never_reused_but_their_addresses_are() {
        let mut state = cluster(4, 3);
        run(&mut state, MetaCommand::Leave(4));
        run(&mut state, MetaCommand::Remove(4));
        assert_eq!(state_of(&state, 4), MemberState::Removed);
        assert!(rejected(
            &run(&mut state, MetaCommand::Join(member(4))),
            "id 4 was removed; join with a new id"
        ));
        let reuse = Member { id: 5, ..member(4) };
        assert!(matches!(
            run(&mut state, MetaCommand::Join(reuse)),
            MetaResult::Applied { .. }
        ));
        assert_eq!(state_of(&state, 5), MemberState::Active);
    }

    #[test]
    fn leave_rules() {
        let mut three = cluster(3, 3);
        let result = run(&mut three, MetaCommand::Leave(2));
        assert!(
            rejected(
                &result,
                "cluster would have 2 active nodes, fewer than replication_factor 3"
            ),
            "{result:?}"
        );
        let mut one = cluster(1, 3);
        assert!(rejected(&run(&mut one, MetaCommand::Leave(1)), "0 active"));

        let mut state = cluster(4, 3);
        assert!(rejected(
            &run(&mut state, MetaCommand::Leave(7)),
            "not a member"
        ));
        assert_eq!(
            run(&mut state, MetaCommand::Leave(2)),
            MetaResult::Applied { epoch: 2 }
        );
        assert_eq!(state_of(&state, 2), MemberState::Leaving);
        assert!(!state.shard_map().load().contains_key(&2));
        assert!(state.target(META_GROUP).learners.contains(&2));
        assert_eq!(
            run(&mut state, MetaCommand::Leave(2)),
            MetaResult::Applied { epoch: 2 },
            "leaving twice is leaving once"
        );
        assert!(rejected(
            &run(&mut state, MetaCommand::Leave(1)),
            "would have 2"
        ));
        run(&mut state, MetaCommand::Remove(2));
        assert!(rejected(&run(&mut state, MetaCommand::Leave(2)), "removed"));

        let mut dead = cluster(4, 3);
        run(&mut dead, MetaCommand::MarkDead(4));
        assert_eq!(
            run(&mut dead, MetaCommand::Leave(4)),
            MetaResult::Applied { epoch: 3 }
        );
        assert_eq!(state_of(&dead, 4), MemberState::Leaving);
    }

    #[test]
    fn mark_dead_rules() {
        let mut three = cluster(3, 3);
        assert!(rejected(
            &run(&mut three, MetaCommand::MarkDead(3)),
            "2 other active nodes, fewer than replication_factor 3"
        ));
        let mut state = cluster(4, 3);
        assert!(rejected(
            &run(&mut state, MetaCommand::MarkDead(9)),
            "not a member"
        ));
        assert_eq!(
            run(&mut state, MetaCommand::MarkDead(4)),
            MetaResult::Applied { epoch: 2 }
        );
        assert_eq!(state_of(&state, 4), MemberState::Dead);
        assert!(!state.shard_map().load().contains_key(&4));
        assert!(state.target(META_GROUP).learners.contains(&4));
        assert_eq!(
            run(&mut state, MetaCommand::MarkDead(4)),
            MetaResult::Applied { epoch: 2 }
        );
        let mut leaving = cluster(5, 3);
        run(&mut leaving, MetaCommand::Leave(5));
        assert!(rejected(
            &run(&mut leaving, MetaCommand::MarkDead(5)),
            "leaving"
        ));
    }

    #[test]
    fn mark_alive_rules() {
        let mut state = cluster(5, 3);
        assert_eq!(
            run(&mut state, MetaCommand::MarkAlive(1)),
            MetaResult::Applied { epoch: 1 }
        );
        run(&mut state, MetaCommand::MarkDead(5));
        assert_eq!(
            run(&mut state, MetaCommand::MarkAlive(5)),
            MetaResult::Applied { epoch: 3 }
        );
        assert_eq!(state_of(&state, 5), MemberState::Active);
        run(&mut state, MetaCommand::Leave(4));
        assert!(rejected(
            &run(&mut state, MetaCommand::MarkAlive(4)),
            "leaving"
        ));
        run(&mut state, MetaCommand::Remove(4));
        assert!(rejected(
            &run(&mut state, MetaCommand::MarkAlive(4)),
            "removed"
        ));
        assert!(rejected(
            &run(&mut state, MetaCommand::MarkAlive(8)),
            "not a member"
        ));
    }

    #[test]
    fn remove_rules() {
        let mut state = cluster(5, 3);
        assert!(rejected(
            &run(&mut state, MetaCommand::Remove(1)),
            "leave first"
        ));
        assert!(rejected(
            &run(&mut state, MetaCommand::Remove(6)),
            "not a member"
        ));
        run(&mut state, MetaCommand::Leave(4));
        run(&mut state, MetaCommand::MarkDead(5));
        let epoch = state.epoch();
        assert_eq!(
            run(&mut state, MetaCommand::Remove(4)),
            MetaResult::Applied { epoch: epoch + 1 }
        );
        assert_eq!(
            run(&mut state, MetaCommand::Remove(5)),
            MetaResult::Applied { epoch: epoch + 2 }
        );
        assert_eq!(
            run(&mut state, MetaCommand::Remove(5)),
            MetaResult::Applied { epoch: epoch + 2 }
        );
        let target = state.target(META_GROUP);
        assert!(!target.voters.contains(&4) && !target.learners.contains(&4));
        assert!(!target.voters.contains(&5) && !target.learners.contains(&5));
    }

    #[test]
    fn shard_targets_follow_the_map() {
        let state = cluster(4, 3);
        for shard in 0..8 {
            let target = state.target(crate::meta::group_of_shard(shard));
            let expected: BTreeSet<NodeId> = state.shard_replicas(shard).iter().copied().collect();
            assert_eq!(target.voters, expected);
            assert!(target.learners.is_empty());
        }
        assert_eq!(
            state.target(crate::meta::group_of_shard(8)),
            Target::default()
        );
    }

    #[test]
    #[should_panic(expected = "applied after")]
    fn apply_refuses_an_old_index() {
        let mut state = cluster(3, 3);
        state.skip(5);
        state.apply(5, &MetaCommand::MarkAlive(1));
    }

    #[test]
    fn command_codec_round_trips_and_is_bounded() {
        let commands = [
            MetaCommand::Bootstrap {
                placement: config(3),
                members: (1..=3).map(member).collect(),
            },
            MetaCommand::Join(Member {
                zone: Some("eu-1".to_string()),
                ..member(4)
            }),
            MetaCommand::Leave(4),
            MetaCommand::MarkDead(4),
            MetaCommand::MarkAlive(4),
            MetaCommand::Remove(4),
        ];
        for command in commands {
            let bytes = encode_command(&command);
            assert_eq!(decode_command(&bytes).unwrap(), command);
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(matches!(
                decode_command(&trailing),
                Err(MetaError::DecodeCommand(_))
            ));
        }
        assert!(matches!(
            decode_command(&vec![0u8; MAX_META_COMMAND_BYTES + 1]),
            Err(MetaError::CommandTooLarge { .. })
        ));
        // A zone name long enough to exceed the bound encodes but does not decode.
        let huge = MetaCommand::Join(Member {
            zone: Some("z".repeat(MAX_META_COMMAND_BYTES)),
            ..member(4)
        });
        assert!(decode_command(&encode_command(&huge)).is_err());
    }

    fn user(name: &str, role: Role, secret: &str) -> User {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(name.len() as u64);
        User {
            name: name.into(),
            role,
            kind: SecretKind::Password,
            secret_hash: crate::auth::hash_secret(&crate::auth::Secret::new(secret), &mut rng)
                .unwrap(),
        }
    }

    #[test]
    fn the_first_admin_is_created_once_and_only_while_no_user_exists() {
        let mut state = MetaState::uninitialized();
        let admin = user("admin", Role::Admin, "first-password");
        assert!(rejected(
            &run(&mut state, MetaCommand::BootstrapAdmin(admin.clone())),
            "not bootstrapped"
        ));
        let mut state = cluster(3, 3);
        let epoch = state.epoch();
        assert!(rejected(
            &run(
                &mut state,
                MetaCommand::BootstrapAdmin(user("w", Role::Write, "pw-pw-pw"))
            ),
            "must be an admin"
        ));
        assert_eq!(
            run(&mut state, MetaCommand::BootstrapAdmin(admin.clone())),
            MetaResult::Applied { epoch }
        );
        assert_eq!(state.users().get("admin"), Some(&admin));
        // A second node's bootstrap (another salt, another password) changes nothing.
        let racing = user("root", Role::Admin, "other-password");
        run(&mut state, MetaCommand::BootstrapAdmin(racing));
        assert_eq!(state.users().len(), 1);
        assert_eq!(state.users().get("admin"), Some(&admin));
        assert_eq!(state.epoch(), epoch, "users do not change the map epoch");
    }

    #[test]
    fn user_commands_are_idempotent_and_keep_an_admin() {
        let mut state = cluster(3, 3);
        let admin = user("admin", Role::Admin, "admin-password");
        run(&mut state, MetaCommand::BootstrapAdmin(admin.clone()));
        let alice = user("alice", Role::Read, "alice-password");
        assert!(matches!(
            run(&mut state, MetaCommand::AddUser(alice.clone())),
            MetaResult::Applied { .. }
        ));
        // A retried add is harmless; another secret under the same name is refused.
        assert!(matches!(
            run(&mut state, MetaCommand::AddUser(alice.clone())),
            MetaResult::Applied { .. }
        ));
        assert!(rejected(
            &run(
                &mut state,
                MetaCommand::AddUser(user("alice", Role::Admin, "x-password"))
            ),
            "already exists"
        ));
        assert_eq!(state.users()["alice"].role, Role::Read);
        // Bad names and hashes never enter the state.
        let mut bad = alice.clone();
        bad.name = "no spaces".into();
        assert!(rejected(
            &run(&mut state, MetaCommand::AddUser(bad)),
            "only letters"
        ));
        let forged: User = serde_json::from_value(serde_json::json!({
            "name": "mallory", "role": "Admin", "kind": "Password", "secret_hash": "plaintext"
        }))
        .unwrap();
        assert!(rejected(
            &run(&mut state, MetaCommand::AddUser(forged)),
            "PHC"
        ));
        assert!(!state.users().contains_key("mallory"));
        // Role and secret changes.
        run(
            &mut state,
            MetaCommand::SetUserRole {
                name: "alice".into(),
                role: Role::Write,
            },
        );
        assert_eq!(state.users()["alice"].role, Role::Write);
        let new_hash = user("alice", Role::Write, "new-password").secret_hash;
        run(
            &mut state,
            MetaCommand::SetUserSecret {
                name: "alice".into(),
                kind: SecretKind::Token,
                secret_hash: new_hash.clone(),
            },
        );
        assert_eq!(state.users()["alice"].secret_hash, new_hash);
        assert_eq!(state.users()["alice"].kind, SecretKind::Token);
        assert!(rejected(
            &run(
                &mut state,
                MetaCommand::SetUserRole {
                    name: "bob".into(),
                    role: Role::Read
                }
            ),
            "no user"
        ));
        // The last admin stays.
        assert!(rejected(
            &run(&mut state, MetaCommand::RemoveUser("admin".into())),
            "last admin"
        ));
        assert!(rejected(
            &run(
                &mut state,
                MetaCommand::SetUserRole {
                    name: "admin".into(),
                    role: Role::Read
                }
            ),
            "last admin"
        ));
        // Removal, twice.
        run(&mut state, MetaCommand::RemoveUser("alice".into()));
        assert!(matches!(
            run(&mut state, MetaCommand::RemoveUser("alice".into())),
            MetaResult::Applied { .. }
        ));
        assert!(!state.users().contains_key("alice"));
        assert_eq!(state.users().len(), 1);
    }

    #[test]
    fn users_survive_snapshots_and_format_1_still_restores() {
        let mut state = cluster(3, 3);
        run(
            &mut state,
            MetaCommand::BootstrapAdmin(user("admin", Role::Admin, "admin-password")),
        );
        run(
            &mut state,
            MetaCommand::AddUser(user("bob", Role::Read, "bob-password")),
        );
        let restored = MetaState::restore(&state.snapshot()).unwrap();
        assert_eq!(restored, state);
        assert_eq!(restored.users().len(), 2);
        // A snapshot written before users existed (format 1, no users field).
        #[derive(Serialize)]
        struct V1<'a> {
            initialized: bool,
            epoch: u64,
            applied_index: LogIndex,
            placement: &'a PlacementConfig,
            members: &'a BTreeMap<NodeId, Member>,
            shard_map: &'a ShardMap,
        }
        let v1 = V1 {
            initialized: true,
            epoch: state.epoch(),
            applied_index: state.applied_index(),
            placement: state.placement(),
            members: state.members(),
            shard_map: state.shard_map(),
        };
        let bytes =
            bincode::serde::encode_to_vec((1u32, &v1), bincode::config::standard()).unwrap();
        let old = MetaState::restore(&bytes).unwrap();
        assert!(old.users().is_empty());
        assert_eq!(old.members(), state.members());
        // Users without an admin are an inconsistent state.
        let mut tampered = state.clone();
        tampered.users.remove("admin");
        assert!(MetaState::restore(&tampered.snapshot()).is_err());
    }

    #[test]
    fn user_commands_round_trip_through_the_log_codec_without_secrets() {
        let command = MetaCommand::AddUser(user("carol", Role::Write, "carol-password"));
        let bytes = encode_command(&command);
        assert_eq!(decode_command(&bytes).unwrap(), command);
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("carol-password"), "only the hash is logged");
        assert!(
            !format!("{command:?}").contains("argon2"),
            "Debug hides the hash"
        );
    }

    #[test]
    fn restore_round_trips_and_refuses_inconsistent_states() {
        let uninit = MetaState::uninitialized();
        assert_eq!(MetaState::restore(&uninit.snapshot()).unwrap(), uninit);
        let mut state = cluster(5, 3);
        run(&mut state, MetaCommand::Leave(5));
        assert_eq!(MetaState::restore(&state.snapshot()).unwrap(), state);

        let mut tampered = state.clone();
        tampered.shard_map.replicas[0][0] = 5;
        let err = MetaState::restore(&tampered.snapshot()).unwrap_err();
        assert!(err.to_string().contains("shard map differs"), "{err}");

        let mut trailing = state.snapshot();
        trailing.push(1);
        assert!(MetaState::restore(&trailing).is_err());
        let wrong_format =
            bincode::serde::encode_to_vec((7u32, &state), bincode::config::standard()).unwrap();
        assert!(MetaState::restore(&wrong_format)
            .unwrap_err()
            .to_string()
            .contains("unknown format 7"));
    }

    #[test]
    fn to_view_reports_the_state() {
        let state = cluster(3, 3);
        let view = state.to_view(2, Some(1), Vec::new());
        assert_eq!(view.node_id, 2);
        assert!(view.initialized);
        assert_eq!(view.epoch, 1);
        assert_eq!(view.members, (1..=3).map(member).collect::<Vec<_>>());
        assert_eq!(&view.shard_map, state.shard_map());
        assert_eq!(view.meta_leader, Some(1));
    }

    /// The invariants of the module comment plus the targets' shape.
    fn check_invariants(state: &MetaState) -> Result<(), TestCaseError> {
        prop_assert_eq!(state.check(), Ok(()));
        let rf = state.placement().replication_factor;
        let active: Vec<NodeId> = state.active_ids().collect();
        let effective = rf.min(active.len());
        for shard in 0..state.placement().shards {
            let target = state.target(crate::meta::group_of_shard(shard));
            prop_assert_eq!(target.voters.len(), effective, "distinct voters");
            prop_assert!(target.voters.iter().all(|id| active.contains(id)));
            prop_assert!(target.learners.is_empty());
        }
        let meta = state.target(META_GROUP);
        let lowest: BTreeSet<NodeId> = active.iter().copied().take(effective).collect();
        prop_assert_eq!(&meta.voters, &lowest);
        let others: BTreeSet<NodeId> = state
            .members()
            .values()
            .filter(|m| m.state != MemberState::Removed && !lowest.contains(&m.id))
            .map(|m| m.id)
            .collect();
        prop_assert_eq!(&meta.learners, &others);
        prop_assert_eq!(&MetaState::restore(&state.snapshot()).unwrap(), state);
        Ok(())
    }

    fn arb_command() -> impl Strategy<Value = MetaCommand> {
        let id = 0u64..8;
        prop_oneof![
            3 => (0u64..8, 0u16..12, 0u16..12, 0u8..4).prop_map(|(id, peer, client, zone)| {
                // Ports 8..12 mean "this id's own address"; 0..8 may collide with another's.
                let own = |p: u16| if p >= 8 { id as u16 } else { p };
                MetaCommand::Join(Member {
                    id,
                    peer_addr: addr(7000 + own(peer)),
                    client_addr: addr(8000 + own(client)),
                    zone: (zone > 0).then(|| format!("z{zone}")),
                    state: MemberState::Active,
                })
            }),
            2 => id.clone().prop_map(MetaCommand::Leave),
            2 => id.clone().prop_map(MetaCommand::MarkDead),
            2 => id.clone().prop_map(MetaCommand::MarkAlive),
            2 => id.prop_map(MetaCommand::Remove),
            1 => (1u64..4).prop_map(|n| MetaCommand::Bootstrap {
                placement: config(1),
                members: (1..=n).map(member).collect(),
            }),
        ]
    }

    proptest! {
        #[test]
        fn commands_keep_invariants_and_are_idempotent(
            nodes in 1u64..6,
            rf in 1usize..4,
            zones in 0u64..3,
            commands in prop::collection::vec(arb_command(), 1..40),
        ) {
            let members: Vec<Member> = (1..=nodes)
                .map(|id| Member { zone: (zones > 0).then(|| format!("z{}", id % zones)), ..member(id) })
                .collect();
            let mut state = MetaState::bootstrapped(config(rf), members).unwrap();
            check_invariants(&state)?;
            for command in &commands {
                let before = state.clone();
                let index = state.applied_index() + 1;
                let result = state.apply(index, command);
                check_invariants(&state)?;
                let changed = state.members() != before.members();
                match &result {
                    MetaResult::Applied { epoch } => {
                        prop_assert_eq!(*epoch, state.epoch());
                        prop_assert_eq!(state.epoch(), before.epoch() + u64::from(changed));
                    }
                    MetaResult::Rejected { .. } => {
                        prop_assert!(!changed);
                        prop_assert_eq!(state.epoch(), before.epoch());
                    }
                }
                // Applying it again changes nothing and gives the same kind of answer.
                let mut twice = state.clone();
                let again = twice.apply(index + 1, command);
                let mut once = state.clone();
                once.skip(index + 1);
                prop_assert_eq!(&twice, &once);
                prop_assert_eq!(
                    matches!(again, MetaResult::Applied { .. }),
                    matches!(result, MetaResult::Applied { .. })
                );
            }
        }

        #[test]
        fn restore_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = MetaState::restore(&bytes);
            let _ = decode_command(&bytes);
        }

        #[test]
        fn restore_of_a_corrupted_snapshot_is_refused_or_consistent(
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let mut state = cluster(5, 3);
            run(&mut state, MetaCommand::MarkDead(5));
            let mut bytes = state.snapshot();
            for (at, xor) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= xor;
            }
            if let Ok(restored) = MetaState::restore(&bytes) {
                check_invariants(&restored)?;
            }
        }
    }
}
