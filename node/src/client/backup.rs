//! The client side of online backups (`ClientRequest::Backup`): open a shard's view at its
//! leader, page through it on that same node, close it.
//!
//! A view lives on one node only: any failure after the open (the view is gone, the node
//! does not answer) is an error, and the caller starts the shard again with a new open.

use std::net::SocketAddr;

use rand::Rng;
use tokio::time::Instant;

use super::connection::AttemptError;
use super::protocol::{BackupItem, BackupRequest, BackupResponse};
use super::{Attempts, Client, ClientError, ClientRequest, ClientResponse, RefusedReason};
use crate::placement::ShardId;
use crate::raft::LogIndex;

/// An open backup view of one shard and how far the client has read it.
#[derive(Clone, Debug)]
pub struct BackupCursor {
    pub shard: ShardId,
    /// The node holding the view (the shard's leader when it was opened).
    pub node: SocketAddr,
    nonce: u64,
    pub applied_index: LogIndex,
    /// Keys and key plus value bytes in the view.
    pub keys: u64,
    pub stored_bytes: u64,
    after: Option<Vec<u8>>,
}

impl Client {
    /// Opens a view of `shard` at its leader: it holds every write acknowledged before this
    /// call, at one applied index. Retries (redirects, busy nodes) until the operation timeout.
    pub async fn backup_open(&mut self, shard: ShardId) -> Result<BackupCursor, ClientError> {
        let deadline = Instant::now() + self.options.operation_timeout;
        self.ensure_map(deadline).await?;
        let mut nonce = self.rng.random_range(1..u64::MAX);
        let mut attempts = Attempts::new(deadline, self.options.retry_backoff_min);
        while attempts.running() {
            let Some(target) = self
                .pick_reachable_target(shard, &attempts.tried, deadline)
                .await
            else {
                self.pause(&mut attempts).await;
                let _ = self.refresh_map(None, 0, attempts.deadline).await;
                continue;
            };
            attempts.tried.insert(target);
            let request = ClientRequest::Backup(BackupRequest::Open { shard, nonce });
            match self.connections.exchange(target, request, deadline).await {
                Ok(ClientResponse::Backup(BackupResponse::Opened {
                    applied_index,
                    keys,
                    stored_bytes,
                })) => {
                    self.route(shard).leader = Some(target);
                    return Ok(BackupCursor {
                        shard,
                        node: target,
                        nonce,
                        applied_index,
                        keys,
                        stored_bytes,
                        after: None,
                    });
                }
                Ok(ClientResponse::Redirect {
                    leader_id,
                    leader_addr,
                }) => {
                    attempts.heard(format!("{target} is not shard {shard}'s leader"));
                    let leader = self.resolve(leader_id, leader_addr);
                    self.route(shard).leader = leader.filter(|a| !attempts.tried.contains(a));
                }
                Ok(ClientResponse::Backup(BackupResponse::Gone)) => {
                    attempts.heard(format!("{target} holds no replica of shard {shard}"));
                    self.forget_leader(shard, target);
                }
                Ok(ClientResponse::Backup(BackupResponse::TooMany { open })) => {
                    attempts.heard(format!("{target} has {open} backup views open already"));
                    self.backoff(&mut attempts).await;
                }
                Ok(ClientResponse::Refused(RefusedReason::BadShard { shards, .. })) => {
                    return Err(ClientError::Failed {
                        reason: format!("shard {shard} does not exist ({shards} shards)"),
                    })
                }
                Ok(other) => {
                    // (Busy: a lost answer's open holds this nonce there; it expires.)
                    nonce = self.rng.random_range(1..u64::MAX);
                    attempts.heard(format!("{target} answered {other:?} to a backup open"));
                    self.forget_leader(shard, target);
                    self.backoff(&mut attempts).await;
                }
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::NotSent(e)) => {
                    attempts.last_problem = e;
                    self.forget_leader(shard, target);
                }
                Err(AttemptError::AfterSend(e)) => {
                    // A view may have been opened under this nonce: it expires unused.
                    nonce = self.rng.random_range(1..u64::MAX);
                    attempts.last_problem = e;
                    self.forget_leader(shard, target);
                }
            }
        }
        let tried = self.known_addrs();
        Err(attempts.into_error(&tried))
    }

    /// The next items of the view (about `max_bytes` of keys and values); empty at its end.
    /// Asking again after an error repeats the same chunk (the position is the client's).
    pub async fn backup_next(
        &mut self,
        cursor: &mut BackupCursor,
        max_bytes: u64,
    ) -> Result<Vec<BackupItem>, ClientError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let request = ClientRequest::Backup(BackupRequest::Next {
            shard: cursor.shard,
            nonce: cursor.nonce,
            after: cursor.after.clone(),
            max_bytes,
        });
        match self.exchange_pinned(cursor, request, deadline).await? {
            BackupResponse::Items(items) => {
                if let Some(last) = items.last() {
                    cursor.after = Some(last.key.clone());
                }
                Ok(items)
            }
            other => Err(view_lost(cursor, &format!("{other:?}"))),
        }
    }

    /// Closes the view (its node drops it; an expired view is fine too).
    pub async fn backup_close(&mut self, cursor: &BackupCursor) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.options.request_timeout;
        let request = ClientRequest::Backup(BackupRequest::Close {
            shard: cursor.shard,
            nonce: cursor.nonce,
        });
        match self.exchange_pinned(cursor, request, deadline).await? {
            BackupResponse::Closed | BackupResponse::Gone => Ok(()),
            other => Err(view_lost(cursor, &format!("{other:?}"))),
        }
    }

    async fn exchange_pinned(
        &mut self,
        cursor: &BackupCursor,
        request: ClientRequest,
        deadline: Instant,
    ) -> Result<BackupResponse, ClientError> {
        match self
            .connections
            .exchange(cursor.node, request, deadline)
            .await
        {
            Ok(ClientResponse::Backup(response)) => Ok(response),
            Ok(other) => Err(view_lost(cursor, &format!("{other:?}"))),
            Err(AttemptError::Fatal(e)) => Err(e),
            Err(AttemptError::NotSent(e) | AttemptError::AfterSend(e)) => {
                Err(view_lost(cursor, &e))
            }
        }
    }
}

fn view_lost(cursor: &BackupCursor, what: &str) -> ClientError {
    ClientError::Failed {
        reason: format!(
            "backup view of shard {} on {} lost ({what}): start the shard again",
            cursor.shard, cursor.node
        ),
    }
}
