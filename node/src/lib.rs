//! quorumkv node: everything one quorumkv process is made of.
//!
//! - `raft`: the sans-IO consensus core (no sockets, clock, threads or globals).
//! - `meta`: cluster metadata (members, shard targets) and the replica-move planner.
//! - `placement`: key -> shard -> replica set by consistent hashing (pure).
//! - `kv`: the replicated key-value state machine with exactly-once client sessions.
//! - `storage`: the `Disk` trait (the only door to persistence) and the stores built on it.
//! - `transport`, `server`, `client`: the I/O shell, written against tokio APIs taken from
//!   `madsim-tokio`, so the same code runs on real tokio/TCP/files or inside the simulator.
//! - `resp`: the Redis protocol port (RESP2/RESP3), which routes through `client`.
//! - `config`: what a node is told (TOML or flags), with every limit named and validated.
//!
//! The runtime boundary (what makes `RUSTFLAGS="--cfg madsim"` builds simulate this crate):
//! node code reaches the outside world only through (1) `tokio` APIs, which Cargo.toml takes
//! from `madsim-tokio` (real tokio normally, simulated net/time/tasks under `cfg(madsim)`);
//! (2) rand 0.9 or RNGs seeded from the config (node id + seed); (3) the `storage::Disk` trait
//! (`FileDisk` in production, the simulator's own disk in simulation). It reads no wall clock
//! (only `tokio::time`), starts no OS threads, keeps no node state in statics (simulated nodes
//! share one process), and lets no `HashMap` order decide behaviour. Fault hooks and planted
//! bugs compile only under `cfg(any(test, madsim))`. The one exception, `tls`, reads
//! certificate files and the wall clock (certificate validity) and is therefore not part of
//! simulation builds: simulated nodes run the same port code over plaintext streams
//! (`transport::stream`).
#![forbid(unsafe_code)]

/// `buggify!(hooks, "site")`: true when the simulator wants this code path to misbehave now
/// (FoundationDB's BUGGIFY). Always `false` outside `cfg(madsim)`: production and plain test
/// builds never take a buggified branch, and the hooks expression is not even compiled there.
#[macro_export]
macro_rules! buggify {
    ($hooks:expr, $site:literal) => {{
        #[cfg(madsim)]
        let fire = $hooks.buggify.fire($site);
        #[cfg(not(madsim))]
        let fire = false;
        fire
    }};
}

pub mod addr;
pub mod auth;
pub mod backup;
pub mod bounded_decode;
#[cfg(any(test, madsim))]
pub mod bugs;
pub mod client;
pub mod config;
pub mod config_layers;
pub mod deadline;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod kv;
pub mod meta;
pub mod metrics;
pub mod moving_deadline;
pub mod placement;
pub mod raft;
pub mod resp;
pub mod server;
#[cfg(any(test, madsim))]
pub mod sim_hooks;
pub mod storage;
#[cfg(not(madsim))]
pub mod tls;
pub mod transport;
