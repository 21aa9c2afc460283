//! Sans-IO Raft core.
mod types;
pub use types::*;
