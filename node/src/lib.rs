//! quorumkv node: everything one quorumkv process is made of.
//!
//! - `raft`: the sans-IO consensus core (no sockets, clock, threads or globals).
//! - `kv`: the replicated key-value state machine with exactly-once client sessions.
//! - `storage`: the `Disk` trait (the only door to persistence) and the stores built on it.
//! - `transport`, `server`, `client`: the I/O shell, written against tokio APIs taken from
//!   `madsim-tokio`, so the same code runs on real tokio/TCP/files or inside the simulator.
#![forbid(unsafe_code)]

#[cfg(any(test, madsim))]
pub mod bugs;
pub mod placement;
pub mod raft;
pub mod kv;
pub mod storage;
pub mod transport;
pub mod server;
pub mod client;
pub mod config;
