//! The narrow view of a key-value store that workloads need, so one generator runs unchanged
//! against the real client library (simulated or on loopback) and against in-memory fakes.
//!
//! Invariant every implementation keeps: `StoreError::Failed` means the operation definitely had
//! no effect; anything that might have taken effect is `StoreError::Unknown`. The recorder turns
//! the first into a `fail` completion and the second into an `info` (indeterminate) completion;
//! confusing them makes the checker accept wrong histories or reject right ones.

use std::collections::BTreeSet;
use std::future::Future;

/// Register values and set elements are integers: workloads write unique values so that every
/// read names the write it observed.
pub type Value = i64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The operation definitely did not take effect (refused before it could be applied).
    #[error("failed: {0}")]
    Failed(String),
    /// The operation may or may not have taken effect (timeout, connection lost mid-request).
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// The operations the workloads issue. Every method is one client request; implementations
/// may retry internally only when a retry cannot apply the operation twice.
pub trait KvStore: Send + Sync {
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;
    fn put(&self, key: &str, value: Value) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Replaces the value with `new` only when the current value is `expected`; Ok(false) when it
    /// was not (nothing written).
    fn cas(
        &self,
        key: &str,
        expected: Value,
        new: Value,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Adds `element` to the grow-only set `set`.
    fn set_add(
        &self,
        set: &str,
        element: Value,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Reads the whole set.
    fn set_read(
        &self,
        set: &str,
    ) -> impl Future<Output = Result<BTreeSet<Value>, StoreError>> + Send;
}
