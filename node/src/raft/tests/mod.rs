//! Tests of the Raft core: unit tests per rule (`rules`), the in-memory cluster harness with
//! its safety checker (`cluster`) and the property tests that drive it (`property`).
mod cluster;
mod property;
mod rules;
