//! quorumkv through its native client library: linearizable reads (ReadIndex), writes
//! acknowledged once committed and fsynced by a majority.

use std::net::SocketAddr;
use std::time::Duration;

use node::client::{Client, ClientOptions};
use node::kv::KeyRange;

use super::{Adapter, AdapterError, Connector};

const STORE: &str = "quorumkv";

#[derive(Clone, Debug)]
pub struct QuorumkvConnector {
    pub endpoints: Vec<SocketAddr>,
    /// Longest time one operation may take over all its retries.
    pub operation_timeout: Duration,
}

pub struct QuorumkvAdapter {
    client: Client,
}

impl Connector for QuorumkvConnector {
    type Adapter = QuorumkvAdapter;

    async fn connect(&self, _client_index: usize) -> Result<QuorumkvAdapter, AdapterError> {
        let options = ClientOptions {
            operation_timeout: self.operation_timeout,
            request_timeout: self.operation_timeout.min(Duration::from_secs(3)),
            ..ClientOptions::default()
        };
        let client = Client::new(self.endpoints.clone(), options)
            .map_err(|e| AdapterError::new(STORE, e))?;
        Ok(QuorumkvAdapter { client })
    }

    fn store(&self) -> &'static str {
        STORE
    }

    fn mode(&self) -> String {
        "linearizable".to_string()
    }
}

impl Adapter for QuorumkvAdapter {
    async fn read(&mut self, key: &str) -> Result<bool, AdapterError> {
        let found = self.client.get(key.as_bytes()).await;
        found
            .map(|v| v.is_some())
            .map_err(|e| AdapterError::new(STORE, e))
    }

    async fn update(&mut self, key: &str, value: &[u8]) -> Result<(), AdapterError> {
        let written = self.client.put(key.as_bytes(), value).await;
        written.map(|_| ()).map_err(|e| AdapterError::new(STORE, e))
    }

    async fn insert(&mut self, key: &str, value: &[u8]) -> Result<(), AdapterError> {
        self.update(key, value).await
    }

    async fn scan(&mut self, start: &str, count: u32) -> Result<u32, AdapterError> {
        let range = KeyRange::Between {
            start: start.as_bytes().to_vec(),
            end: None,
        };
        let scanned = self.client.scan(range, count).await;
        scanned
            .map(|(items, _more)| items.len() as u32)
            .map_err(|e| AdapterError::new(STORE, e))
    }
}
