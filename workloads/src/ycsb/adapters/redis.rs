//! Redis, or any server that speaks RESP (the address is free, so the same adapter can point
//! at quorumkv's RESP port). Reads are GET, writes SET. Redis has no ordered scan of string
//! keys, so, as YCSB's Redis binding does, inserts also add the key to one sorted set
//! (`SCAN_INDEX_KEY`, all scores 0, ordered by key) that workload E's scans walk with
//! ZRANGEBYLEX before an MGET of the keys found.
//!
//! The mode (fsync policy) is asked of the server (`CONFIG GET appendonly` / `appendfsync`)
//! unless the caller names it; a server without CONFIG must be named.

use std::sync::OnceLock;

use redis::aio::MultiplexedConnection;

use super::{Adapter, AdapterError, Connector};

const STORE: &str = "redis";
/// The sorted set of every inserted key, for scans.
pub const SCAN_INDEX_KEY: &str = "ycsb:scan-index";

#[derive(Debug)]
pub struct RedisConnector {
    /// `redis://host:port/`.
    url: String,
    /// Named by the caller, or asked of the server on the first connect.
    mode: OnceLock<String>,
}

pub struct RedisAdapter {
    connection: MultiplexedConnection,
}

fn error(e: redis::RedisError) -> AdapterError {
    AdapterError::new(STORE, e)
}

impl RedisConnector {
    /// `mode`: the label to report; `None` asks the server for its persistence settings.
    pub fn new(address: &str, mode: Option<String>) -> RedisConnector {
        let known = OnceLock::new();
        if let Some(mode) = mode {
            let _ = known.set(mode);
        }
        RedisConnector {
            url: format!("redis://{address}/"),
            mode: known,
        }
    }
}

/// The server's persistence settings, e.g. `appendfsync always`.
async fn server_mode(connection: &mut MultiplexedConnection) -> Result<String, AdapterError> {
    let appendonly = config_get(connection, "appendonly").await?;
    let appendfsync = config_get(connection, "appendfsync").await?;
    Ok(if appendonly == "yes" {
        format!("appendfsync {appendfsync}")
    } else {
        "no aof".to_string()
    })
}

async fn open(url: &str) -> Result<MultiplexedConnection, AdapterError> {
    let client = redis::Client::open(url).map_err(error)?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(error)
}

async fn config_get(
    connection: &mut MultiplexedConnection,
    parameter: &str,
) -> Result<String, AdapterError> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(parameter)
        .query_async(connection)
        .await
        .map_err(|e| {
            AdapterError::new(
                STORE,
                format!("CONFIG GET {parameter} failed ({e}): name the mode with --mode"),
            )
        })?;
    pair.get(1)
        .cloned()
        .ok_or_else(|| AdapterError::new(STORE, format!("CONFIG GET {parameter}: no value")))
}

impl Connector for RedisConnector {
    type Adapter = RedisAdapter;

    async fn connect(&self, _client_index: usize) -> Result<RedisAdapter, AdapterError> {
        let mut connection = open(&self.url).await?;
        if self.mode.get().is_none() {
            let mode = server_mode(&mut connection).await?;
            let _ = self.mode.set(mode);
        }
        Ok(RedisAdapter { connection })
    }

    fn store(&self) -> &'static str {
        STORE
    }

    fn mode(&self) -> String {
        self.mode.get().cloned().unwrap_or_default()
    }
}

impl Adapter for RedisAdapter {
    async fn read(&mut self, key: &str) -> Result<bool, AdapterError> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.connection)
            .await
            .map_err(error)?;
        Ok(value.is_some())
    }

    async fn update(&mut self, key: &str, value: &[u8]) -> Result<(), AdapterError> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut self.connection)
            .await
            .map_err(error)
    }

    async fn insert(&mut self, key: &str, value: &[u8]) -> Result<(), AdapterError> {
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(key)
            .arg(value)
            .ignore()
            .cmd("ZADD")
            .arg(SCAN_INDEX_KEY)
            .arg(0)
            .arg(key)
            .ignore()
            .query_async::<()>(&mut self.connection)
            .await
            .map_err(error)
    }

    async fn scan(&mut self, start: &str, count: u32) -> Result<u32, AdapterError> {
        let keys: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(SCAN_INDEX_KEY)
            .arg(format!("[{start}"))
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut self.connection)
            .await
            .map_err(error)?;
        if keys.is_empty() {
            return Ok(0);
        }
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.connection)
            .await
            .map_err(error)?;
        Ok(values.iter().filter(|v| v.is_some()).count() as u32)
    }
}
