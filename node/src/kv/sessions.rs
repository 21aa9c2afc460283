//! Exactly-once client sessions: the last applied seq of each client and its response.
//!
//! Invariants: `by_activity` holds exactly one `(last_active_index, client_id)` pair per
//! session, so eviction (idle for more than `session_idle_entries` log entries, or the least
//! recently active when more than `max_sessions` are open) depends only on log indexes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::types::OpResult;
use crate::raft::LogIndex;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub last_seq: u64,
    pub last_response: OpResult,
    /// Log index of the last command of this session.
    pub last_active_index: LogIndex,
}

#[derive(Clone, Debug, Default)]
pub struct Sessions {
    by_client: BTreeMap<u64, Session>,
    by_activity: BTreeSet<(LogIndex, u64)>,
    /// Clients whose session changed (recorded or dropped) since `take_dirty`: what the
    /// engine must write in the current batch.
    dirty: BTreeSet<u64>,
}

impl PartialEq for Sessions {
    fn eq(&self, other: &Self) -> bool {
        self.by_client == other.by_client
    }
}

impl Eq for Sessions {}

impl Sessions {
    pub fn from_map(by_client: BTreeMap<u64, Session>) -> Sessions {
        let by_activity = by_client
            .iter()
            .map(|(client, s)| (s.last_active_index, *client))
            .collect();
        Sessions {
            by_client,
            by_activity,
            dirty: BTreeSet::new(),
        }
    }

    #[cfg(test)]
    pub fn as_map(&self) -> &BTreeMap<u64, Session> {
        &self.by_client
    }

    pub fn get(&self, client_id: u64) -> Option<&Session> {
        self.by_client.get(&client_id)
    }

    /// The clients changed since the last call, each with its session (None: dropped).
    pub fn take_dirty(&mut self) -> Vec<(u64, Option<&Session>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .map(|c| (c, self.by_client.get(&c)))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Records `response` as the answer to `(client_id, seq)`, applied at `index`.
    pub fn record(&mut self, client_id: u64, seq: u64, response: OpResult, index: LogIndex) {
        let session = Session {
            last_seq: seq,
            last_response: response,
            last_active_index: index,
        };
        if let Some(old) = self.by_client.insert(client_id, session) {
            self.by_activity.remove(&(old.last_active_index, client_id));
        }
        self.by_activity.insert((index, client_id));
        self.dirty.insert(client_id);
        debug_assert_eq!(self.by_client.len(), self.by_activity.len());
    }

    /// Drops sessions idle for more than `idle_entries` as of `index`, then the least recently
    /// active ones until at most `max_sessions` remain.
    pub fn expire(&mut self, index: LogIndex, idle_entries: u64, max_sessions: usize) {
        while let Some(&(active, client)) = self.by_activity.first() {
            let idle = active.saturating_add(idle_entries) < index;
            if !idle && self.by_client.len() <= max_sessions {
                break;
            }
            self.by_activity.pop_first();
            self.by_client.remove(&client);
            self.dirty.insert(client);
        }
        assert_eq!(self.by_client.len(), self.by_activity.len());
    }
}
