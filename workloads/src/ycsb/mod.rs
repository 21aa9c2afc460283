//! A YCSB-style benchmark driver (binary `quorumkv-ycsb`) that drives quorumkv, etcd and Redis
//! the same way: the core workloads A-F (`workload`), YCSB's key choosers (`keys`), a load
//! phase and closed- or open-loop runs with latencies in HdrHistogram (`driver`), one adapter
//! per store behind one trait (`adapters`), and the Markdown + SVG report (`report`, `svg`).
//!
//! Real servers only: this module is not part of the simulation build. `make bench-peers`
//! starts the stores and runs the whole comparison; docs/BENCHMARKS.md shows its output.

pub mod adapters;
pub mod driver;
pub mod keys;
pub mod report;
pub mod svg;
pub mod workload;
pub mod writers;
