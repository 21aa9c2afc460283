//! quorumkv's simulator: the unchanged node runtime inside madsim, driven by workloads while the
//! nemesis injects faults, every history judged by the checker; campaigns over many seeds,
//! replay of one seed, and shrinking of a failing scenario.
//!
//! - `scenario`: the serializable description of a run (a run is a function of it).
//! - `nemesis`: every injectable fault, named in one place, and the fault/heal schedule.
//! - `report`: verdicts (checker + liveness) and failure artifacts.
//! - `swarm`: swarm testing: each seed draws its own configuration (the default campaign).
//! - `shrink`: reduce a failing scenario to a smaller one that still fails.
//! - `campaign`: seeds over worker processes, progress, summary.
//! - `convergence`: the end-of-run check that replication was restored after the final heal.
//! - `cluster`, `disk`, `fleet` (simulation builds only): the madsim harness, the simulated
//!   disk, and the servers' lives (joins, leaves, kills for good, the replication check).
//! - `safety` (simulation builds only): Raft safety checks on the nodes' protocol probes, and
//!   the cues of targeted faults.
#![forbid(unsafe_code)]

pub mod campaign;
#[cfg(madsim)]
pub mod cluster;
pub mod convergence;
#[cfg(madsim)]
pub mod disk;
#[cfg(madsim)]
pub mod fleet;
pub mod nemesis;
pub mod report;
#[cfg(madsim)]
pub mod safety;
pub mod scenario;
pub mod shrink;
pub mod swarm;

pub use nemesis::{Fault, FaultKind, NemesisSpec, ScheduledFault, Target};
pub use report::{judge, RunReport, RunVerdict};
pub use scenario::{ClientPolicy, RaftTiming, Scenario};
