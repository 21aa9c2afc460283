//! etcd v3 through the `etcd-client` crate (gRPC): one client per task over every member's
//! endpoint. Reads are linearizable (etcd's default: a ReadIndex round through the leader) or
//! serializable (answered by the member asked, possibly stale): the mode says which. Scans
//! are one range request from the start key (`from_key`) with a limit.

use etcd_client::{Client, GetOptions};

use super::{Adapter, AdapterError, Connector};

const STORE: &str = "etcd";

#[derive(Clone, Debug)]
pub struct EtcdConnector {
    /// `http://host:port` of every member.
    pub endpoints: Vec<String>,
    pub serializable_reads: bool,
}

pub struct EtcdAdapter {
    client: Client,
    serializable_reads: bool,
}

fn error(e: etcd_client::Error) -> AdapterError {
    AdapterError::new(STORE, e)
}

impl Connector for EtcdConnector {
    type Adapter = EtcdAdapter;

    async fn connect(&self, _client_index: usize) -> Result<EtcdAdapter, AdapterError> {
        let client = Client::connect(&self.endpoints, None)
            .await
            .map_err(error)?;
        Ok(EtcdAdapter {
            client,
            serializable_reads: self.serializable_reads,
        })
    }

    fn store(&self) -> &'static str {
        STORE
    }

    fn mode(&self) -> String {
        if self.serializable_reads {
            "serializable".to_string()
        } else {
            "linearizable".to_string()
        }
    }
}

impl EtcdAdapter {
    fn read_options(&self) -> GetOptions {
        if self.serializable_reads {
            GetOptions::new().with_serializable()
        } else {
            GetOptions::new()
        }
    }
}

impl Adapter for EtcdAdapter {
    async fn read(&mut self, key: &str) -> Result<bool, AdapterError> {
        let options = self.read_options();
        let response = self.client.get(key, Some(options)).await.map_err(error)?;
        Ok(!response.kvs().is_empty())
    }

    async fn update(&mut self, key: &str, value: &[u8]) -> Result<(), AdapterError> {
        self.client
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(error)
    }

    async fn insert(&mut self, key: &str, value: &[u8]) -> Result<(), AdapterError> {
        self.update(key, value).await
    }

    async fn scan(&mut self, start: &str, count: u32) -> Result<u32, AdapterError> {
        let options = self
            .read_options()
            .with_from_key()
            .with_limit(i64::from(count));
        let response = self.client.get(start, Some(options)).await.map_err(error)?;
        Ok(response.kvs().len() as u32)
    }
}
