//! Online backup views of a shard (`ClientRequest::Backup`), held by the shard's group.
//!
//! Why it exists: `quorumkv backup` must copy every shard at one consistent point without
//! stopping writes. An `Open` goes through the same ReadIndex round as a read, and the view is
//! opened when the group has applied through the read index: it then holds every write
//! acknowledged before the open began. The view is a redb read transaction (`ReadView`):
//! writes continue beside it; the client pages through it with `Next` in bounded chunks.
//!
//! Invariants:
//! - at most `MAX_OPEN_BACKUPS` views (open or waiting for their read round) per node;
//! - a view unused for `BACKUP_IDLE_TIMEOUT_MS` is dropped (a vanished client holds no
//!   read transaction for ever); so is every view of a group that loses leadership or
//!   installs a snapshot: the client is told `Gone` and starts that shard again;
//! - one `Next` reads at most `BACKUP_CHUNK_BYTES_MAX` (plus one item): the event loop is
//!   never blocked longer than one chunk.

use std::collections::{BTreeMap, BTreeSet};

use crate::client::protocol::{BackupItem, BackupResponse};
use crate::kv::{KvError, ReadView, StateMachine};

/// Largest chunk one `Next` reads, in key plus value bytes (one more item may exceed it; with
/// the default limits a chunk stays well below `max_client_frame_bytes`).
pub const BACKUP_CHUNK_BYTES_MAX: u64 = 1024 * 1024;
/// A view unused this long is dropped.
pub const BACKUP_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Views open (or being opened) at once on one node.
pub const MAX_OPEN_BACKUPS: usize = 8;

struct OpenView {
    view: ReadView,
    idle_ticks: u64,
}

/// One group's backup views, by the client's nonce.
#[derive(Default)]
pub(super) struct Backups {
    open: BTreeMap<u64, OpenView>,
    /// Nonces whose `Open` waits for its read round.
    opening: BTreeSet<u64>,
}

impl Backups {
    /// Views open or being opened.
    pub(super) fn count(&self) -> usize {
        self.open.len() + self.opening.len()
    }

    pub(super) fn in_use(&self, nonce: u64) -> bool {
        self.open.contains_key(&nonce) || self.opening.contains(&nonce)
    }

    pub(super) fn reserve(&mut self, nonce: u64) {
        self.opening.insert(nonce);
    }

    pub(super) fn cancel(&mut self, nonce: u64) {
        self.opening.remove(&nonce);
    }

    /// Opens the view of `nonce` on the machine's committed state (the group has applied
    /// through the read index and committed its batch).
    pub(super) fn open(
        &mut self,
        nonce: u64,
        machine: &StateMachine,
    ) -> Result<BackupResponse, KvError> {
        self.opening.remove(&nonce);
        let view = machine.engine().read_view()?;
        let response = BackupResponse::Opened {
            applied_index: view.applied_index()?,
            keys: view.key_count()?,
            stored_bytes: view.totals()?.stored_bytes,
        };
        self.open.insert(
            nonce,
            OpenView {
                view,
                idle_ticks: 0,
            },
        );
        Ok(response)
    }

    /// The next chunk of `nonce`'s view after `after`.
    pub(super) fn next(
        &mut self,
        nonce: u64,
        after: Option<&[u8]>,
        max_bytes: u64,
    ) -> Result<BackupResponse, KvError> {
        let Some(open) = self.open.get_mut(&nonce) else {
            return Ok(BackupResponse::Gone);
        };
        open.idle_ticks = 0;
        let max_bytes = max_bytes.clamp(1, BACKUP_CHUNK_BYTES_MAX) as usize;
        let items = open
            .view
            .data_after(after, max_bytes)?
            .into_iter()
            .map(|(key, stored)| {
                let versioned = crate::kv::engine::decode_versioned(&stored)?;
                Ok(BackupItem {
                    key,
                    version: versioned.version,
                    value: versioned.value,
                })
            })
            .collect::<Result<Vec<_>, KvError>>()?;
        Ok(BackupResponse::Items(items))
    }

    pub(super) fn close(&mut self, nonce: u64) -> BackupResponse {
        match self.open.remove(&nonce) {
            Some(_) => BackupResponse::Closed,
            None => BackupResponse::Gone,
        }
    }

    /// One tick passed: drops views idle for more than `idle_ticks_max`.
    pub(super) fn on_tick(&mut self, idle_ticks_max: u64) {
        self.open.retain(|nonce, open| {
            open.idle_ticks += 1;
            let keep = open.idle_ticks <= idle_ticks_max;
            if !keep {
                tracing::info!(nonce, "backup view idle too long: dropped");
            }
            keep
        });
    }

    /// Drops every view (leadership lost, snapshot installed, group going away).
    pub(super) fn clear(&mut self) {
        self.open.clear();
        self.opening.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, KvConfig, Operation};

    fn machine_with(keys: u32) -> StateMachine {
        let mut m = StateMachine::new(KvConfig::default()).expect("in-memory machine");
        let open = Command {
            client_id: 7,
            seq: 1,
            op: Operation::OpenSession,
        };
        m.apply(1, &open).expect("open session");
        for i in 0..keys {
            let put = Command {
                client_id: 7,
                seq: u64::from(i) + 2,
                op: Operation::Put {
                    key: format!("k{i:04}").into_bytes(),
                    value: vec![b'v'; 100],
                },
            };
            m.apply(u64::from(i) + 2, &put).expect("put");
        }
        m.commit(false).expect("commit");
        m
    }

    #[test]
    fn a_view_pages_through_a_fixed_point_while_writes_continue() {
        let mut m = machine_with(50);
        let mut backups = Backups::default();
        backups.reserve(1);
        assert_eq!(backups.count(), 1);
        let opened = backups.open(1, &m).expect("open");
        assert_eq!(
            opened,
            BackupResponse::Opened {
                applied_index: 51,
                keys: 50,
                stored_bytes: 50 * (5 + 100),
            }
        );
        // A write after the open is not in the view.
        let late = Command {
            client_id: 7,
            seq: 52,
            op: Operation::Put {
                key: b"k0000-late".to_vec(),
                value: b"x".to_vec(),
            },
        };
        m.apply(52, &late).expect("late put");
        m.commit(false).expect("commit");
        let mut after: Option<Vec<u8>> = None;
        let mut seen = Vec::new();
        loop {
            let BackupResponse::Items(items) =
                backups.next(1, after.as_deref(), 1000).expect("next")
            else {
                panic!("view gone");
            };
            if items.is_empty() {
                break;
            }
            assert!(items.len() <= 10, "a chunk is bounded by its bytes");
            after = items.last().map(|i| i.key.clone());
            seen.extend(items);
        }
        assert_eq!(seen.len(), 50);
        assert!(seen.iter().all(|i| i.key != b"k0000-late"));
        assert_eq!(seen[0].version, 2);
        assert_eq!(backups.close(1), BackupResponse::Closed);
        assert_eq!(backups.close(1), BackupResponse::Gone);
    }

    #[test]
    fn an_idle_view_expires() {
        let m = machine_with(1);
        let mut backups = Backups::default();
        backups.open(3, &m).expect("open");
        backups.on_tick(2);
        backups.on_tick(2);
        assert!(backups.in_use(3));
        backups.on_tick(2);
        assert!(!backups.in_use(3));
        assert_eq!(
            backups.next(3, None, 10).expect("next"),
            BackupResponse::Gone
        );
    }
}
