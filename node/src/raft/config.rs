//! Static configuration of one Raft core and the errors of constructing one.

use thiserror::Error;

use super::types::{LogIndex, NodeId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub id: NodeId,
    /// Election timeouts are drawn uniformly from `[min, max)` ticks by the seeded RNG. `min`
    /// is also the CheckQuorum period and the follower lease (no (pre)votes granted while a
    /// live leader was heard from within it).
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// Unacknowledged Append messages per follower in the pipelined (Replicate) state.
    pub max_inflight_appends: usize,
    /// Entries per Append message.
    pub max_append_entries: usize,
    /// Payload bytes per Append message (one larger entry is still sent alone).
    pub max_append_bytes: usize,
    /// Leader: a snapshot compacts the log only up to the first entry a member still needs
    /// from it (`Raft::log_needed_from`: a member catching up, or one being sent a snapshot,
    /// which will ask for the entries after it), keeping the entries at or below the
    /// snapshot's index from there on, as long as they number at most
    /// `retained_log_entries_max` and their payloads hold at most `retained_log_bytes_max`
    /// bytes; past either bound it compacts through the snapshot (the member then needs a
    /// newer snapshot). Followers always compact through their snapshots. 0 (the default in
    /// `Config::new`): never keep entries a snapshot covers.
    pub retained_log_entries_max: u64,
    pub retained_log_bytes_max: u64,
    pub rng_seed: u64,
    /// Deliberately planted bugs (test and simulation builds only); all off by default.
    #[cfg(any(test, madsim))]
    pub bugs: crate::bugs::PlantedBugs,
}

impl Config {
    pub fn new(id: NodeId, rng_seed: u64) -> Config {
        Config {
            id,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_inflight_appends: 64,
            max_append_entries: 1024,
            max_append_bytes: 1 << 20,
            retained_log_entries_max: 0,
            retained_log_bytes_max: 0,
            rng_seed,
            #[cfg(any(test, madsim))]
            bugs: crate::bugs::PlantedBugs::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: &str| Err(ConfigError::Invalid(reason.to_string()));
        if self.election_timeout_ticks_min == 0
            || self.election_timeout_ticks_min >= self.election_timeout_ticks_max
        {
            return invalid("need 0 < election_timeout_ticks_min < election_timeout_ticks_max");
        }
        if self.heartbeat_interval_ticks == 0
            || self.heartbeat_interval_ticks >= self.election_timeout_ticks_min
        {
            return invalid("need 0 < heartbeat_interval_ticks < election_timeout_ticks_min");
        }
        if self.max_inflight_appends == 0 {
            return invalid("max_inflight_appends must be at least 1");
        }
        if self.max_append_entries == 0 || self.max_append_bytes == 0 {
            return invalid("max_append_entries and max_append_bytes must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid raft config: {0}")]
    Invalid(String),
    #[error("restored raft log is malformed after snapshot index {snapshot_index}: {reason}")]
    RestoredLog {
        snapshot_index: LogIndex,
        reason: String,
    },
}
