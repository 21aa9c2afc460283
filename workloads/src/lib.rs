//! quorumkv workloads: operation generators that run through a `KvStore` (the real client
//! library or an in-memory fake) and record every operation into a history for the checker.
//!
//! The same workload code runs inside the simulator and against real processes; it never reads
//! a clock (the caller supplies time stamps) and draws randomness only from seeded rngs.
#![forbid(unsafe_code)]

pub mod client;
pub mod fake;
pub mod generator;
pub mod op;
// Real processes on loopback: meaningless inside the simulator.
#[cfg(not(madsim))]
pub mod process_cluster;
#[cfg(not(madsim))]
pub mod process_nemesis;
#[cfg(not(madsim))]
pub mod real_campaign;
pub mod recorder;
pub mod remote;
pub mod store;
// The YCSB benchmark driver and its store adapters (real servers).
#[cfg(not(madsim))]
pub mod ycsb;

pub use client::{ClientStats, WorkloadClient};
pub use generator::{Generator, WorkloadSpec};
pub use op::{Op, OpResult};
pub use recorder::{Clock, Completion, Recorder};
pub use store::{KvStore, StoreError, Value};
