//! Moving bytes between nodes and between clients and nodes.
//!
//! - `frame`: the versioned, length-prefixed, size-limited wire format of both ports;
//! - `peer`: group-tagged Raft messages (`PeerMessage`) between nodes: one outbound TCP
//!   connection per peer node shared by all Raft groups (reconnect with exponential backoff,
//!   bounded queue, batching that coalesces every group's messages to a peer into one frame,
//!   pings and a silence timeout, because a partition does not break an open connection),
//!   peers added and removed at run time, and the inbound accept side;
//! - `stream`: the seam between protocols and bytes: `Acceptor`/`Connector` hand every port a
//!   `Stream`, plain TCP or (real builds only) TLS over it (docs/SECURITY.md);
//! - `faults` (test and simulation builds only): drop, delay, duplicate, reorder and partition
//!   peer messages on request, since madsim itself only loses packets at connection setup.
//!
//! Invariant: the transport never blocks the event loop. Sending is a `try_send` into a bounded
//! queue; a full queue drops the message (Raft tolerates loss and retransmits).
#[cfg(any(test, madsim))]
mod faults;
pub mod frame;
pub mod peer;
pub mod stream;

#[cfg(any(test, madsim))]
pub use faults::{FaultPlan, TransportFaults};
pub use frame::FrameError;
pub use peer::{PeerFrame, PeerMessage, PeerTransport, SnapshotChunk};
