//! One trait for every store the YCSB driver measures, and its implementations: quorumkv's
//! native client, Redis (any RESP server: the address is free) and etcd v3 (behind the `etcd`
//! feature: its client crate needs `protoc` to build).
//!
//! Every client task of a run owns one `Adapter` (one connection, one request in flight), made
//! by the run's `Connector`, so every store is driven the same way. `mode` names the settings
//! that decide what a figure means (etcd's read consistency, Redis's fsync policy) and goes
//! into every result line.

use std::future::Future;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod quorumkv;
pub mod redis;

/// A failed operation; `detail` carries the store's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{store}: {detail}")]
pub struct AdapterError {
    pub store: &'static str,
    pub detail: String,
}

impl AdapterError {
    pub fn new(store: &'static str, detail: impl ToString) -> AdapterError {
        AdapterError {
            store,
            detail: detail.to_string(),
        }
    }
}

/// One client connection to a store. Keys are YCSB key names; values are opaque bytes.
pub trait Adapter: Send + 'static {
    /// Whether the key was found.
    fn read(&mut self, key: &str) -> impl Future<Output = Result<bool, AdapterError>> + Send;
    fn update(
        &mut self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), AdapterError>> + Send;
    /// A new record (the load phase and workloads D and E).
    fn insert(
        &mut self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), AdapterError>> + Send;
    /// Up to `count` records from `start` on, in key order; returns how many were read.
    fn scan(
        &mut self,
        start: &str,
        count: u32,
    ) -> impl Future<Output = Result<u32, AdapterError>> + Send;
}

/// Opens the adapters of one run (one per client task) and names what they measure.
pub trait Connector: Send + Sync + 'static {
    type Adapter: Adapter;
    /// `client_index`: 0-based, to spread clients over endpoints where the store needs it.
    fn connect(
        &self,
        client_index: usize,
    ) -> impl Future<Output = Result<Self::Adapter, AdapterError>> + Send;
    /// The store's name in results (`quorumkv`, `etcd`, `redis`).
    fn store(&self) -> &'static str;
    /// The settings that decide what the figures mean (e.g. `linearizable`).
    fn mode(&self) -> String;
}
