//! `KvStore` over quorumkv's client library (`node::client::Client`): the adapter through which
//! the workloads drive a real cluster, simulated or on loopback.
//!
//! Encoding: register values are decimal i64 text; a set `S` is the keys `S/<element>` (read
//! with a prefix scan, page by page). Invariant: `ClientError::Unknown` and only it becomes
//! `StoreError::Unknown`; every other client error means "definitely not applied".

use std::collections::BTreeSet;
use std::net::SocketAddr;

use node::client::{CasOutcome, Client, ClientError, ClientOptions};
use node::kv::{Expected, KeyRange};
use tokio::sync::Mutex;

use crate::store::{KvStore, StoreError, Value};

/// A read of bytes that are not a value any workload writes decodes to this (a value no
/// operation wrote), so the checker rejects the history instead of the adapter hiding it.
pub const UNDECODABLE_VALUE: Value = Value::MIN;

/// Items per scan page when reading a set.
pub const SET_SCAN_PAGE_ITEMS: u32 = 1000;

/// One workload client's connection: one client session, one request at a time.
pub struct ClientStore {
    client: Mutex<Client>,
}

impl ClientStore {
    /// A store over a client that connects lazily to `endpoints` (client addresses).
    pub fn new(
        endpoints: Vec<SocketAddr>,
        options: ClientOptions,
    ) -> Result<ClientStore, StoreError> {
        let client =
            Client::new(endpoints, options).map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok(ClientStore {
            client: Mutex::new(client),
        })
    }

    pub fn from_client(client: Client) -> ClientStore {
        ClientStore {
            client: Mutex::new(client),
        }
    }
}

fn map_err(e: ClientError) -> StoreError {
    match e {
        ClientError::Unknown { .. } => StoreError::Unknown(e.to_string()),
        other => StoreError::Failed(other.to_string()),
    }
}

fn encode(value: Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn decode(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<Value>().ok())
    {
        Some(v) => v,
        None => {
            tracing::error!(bytes = ?bytes, "read a value no workload writes");
            UNDECODABLE_VALUE
        }
    }
}

fn set_key(set: &str, element: Value) -> Vec<u8> {
    format!("{{{set}}}/{element}").into_bytes()
}

impl KvStore for ClientStore {
    async fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let mut client = self.client.lock().await;
        let found = client.get(key.as_bytes()).await.map_err(map_err)?;
        Ok(found.map(|v| decode(&v.value)))
    }

    async fn put(&self, key: &str, value: Value) -> Result<(), StoreError> {
        let mut client = self.client.lock().await;
        client
            .put(key.as_bytes(), &encode(value))
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn cas(&self, key: &str, expected: Value, new: Value) -> Result<bool, StoreError> {
        let mut client = self.client.lock().await;
        let outcome = client
            .cas(
                key.as_bytes(),
                Expected::Value(encode(expected)),
                &encode(new),
            )
            .await
            .map_err(map_err)?;
        Ok(matches!(outcome, CasOutcome::Written { .. }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut client = self.client.lock().await;
        client.delete(key.as_bytes()).await.map_err(map_err)?;
        Ok(())
    }

    async fn set_add(&self, set: &str, element: Value) -> Result<(), StoreError> {
        let mut client = self.client.lock().await;
        client
            .put(&set_key(set, element), b"1")
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn set_read(&self, set: &str) -> Result<BTreeSet<Value>, StoreError> {
        // The set's name is a hash tag: all its elements live in one shard, so the prefix
        // scan reads one shard at one linearizable point (the others hold none of them).
        let prefix = format!("{{{set}}}/").into_bytes();
        let mut end = prefix.clone();
        // '/' + 1 = '0': the first key after every `set/...` key.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut client = self.client.lock().await;
        let mut elements = BTreeSet::new();
        let mut range = KeyRange::Prefix(prefix.clone());
        loop {
            let (items, more) = client
                .scan(range, SET_SCAN_PAGE_ITEMS)
                .await
                .map_err(map_err)?;
            for item in &items {
                let element = item
                    .key
                    .get(prefix.len()..)
                    .map(decode)
                    .unwrap_or(UNDECODABLE_VALUE);
                elements.insert(element);
            }
            match items.last() {
                Some(last) if more => {
                    let mut start = last.key.clone();
                    start.push(0);
                    range = KeyRange::Between {
                        start,
                        end: Some(end.clone()),
                    };
                }
                _ => return Ok(elements),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_is_flagged() {
        for v in [0, 1, -5, 3_000_000_017, Value::MAX] {
            assert_eq!(decode(&encode(v)), v);
        }
        assert_eq!(decode(b"not a number"), UNDECODABLE_VALUE);
        assert_eq!(set_key("s", 12), b"{s}/12".to_vec());
    }

    #[test]
    fn only_unknown_is_unknown() {
        assert!(matches!(
            map_err(ClientError::Unknown { reason: "t".into() }),
            StoreError::Unknown(_)
        ));
        assert!(matches!(
            map_err(ClientError::NoQuorum { reason: "t".into() }),
            StoreError::Failed(_)
        ));
        assert!(matches!(
            map_err(ClientError::Unreachable { reason: "t".into() }),
            StoreError::Failed(_)
        ));
    }
}
