//! `quorumkv`: the server, a local 3-node cluster launcher, the client CLI and a benchmark.
//!
//! Argument parsing and wiring only; the node, the client and the wire format live in the `node`
//! library. Exit codes (stable, for scripts):
//!   0 success
//!   1 a definite "no": key not found (get), compare-and-swap/put-if-absent condition failed
//!   2 usage error, bad config, invalid argument, key or value over the limit
//!   3 cluster unreachable (no node answered)
//!   4 no quorum (nodes answered but no leader could serve in time)
//!   5 outcome unknown (a write may or may not have been applied)
//!   6 server failure (storage error, port in use, ...)
//!   7 timed out waiting for a cluster change that is still under way (`cluster leave`)
//!   8 authentication failed or permission denied (auth enabled; nothing was changed)
#![forbid(unsafe_code)]

#[cfg(not(madsim))]
#[path = "quorumkv/backup.rs"]
mod backup;
#[cfg(not(madsim))]
#[path = "quorumkv/bench.rs"]
mod bench;
#[cfg(not(madsim))]
#[path = "quorumkv/cli.rs"]
mod cli;
#[cfg(not(madsim))]
#[path = "quorumkv/cluster.rs"]
mod cluster;
#[cfg(not(madsim))]
#[path = "quorumkv/health.rs"]
mod health;
#[cfg(not(madsim))]
#[path = "quorumkv/local.rs"]
mod local;
#[cfg(not(madsim))]
#[path = "quorumkv/output.rs"]
mod output;
#[cfg(not(madsim))]
#[path = "quorumkv/user.rs"]
mod user;

/// mimalloc rather than the system allocator: a node allocates per message and per entry, and
/// glibc's malloc was ~13 % of a node's CPU under 64 writers (docs/BENCHMARKS.md).
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// The binary is not part of simulation builds (the simulator drives `node::server` directly).
#[cfg(madsim)]
fn main() {}
