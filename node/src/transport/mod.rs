//! Moving bytes between nodes and between clients and nodes.
//!
//! - `frame`: the versioned, length-prefixed, size-limited wire format of both ports;
//! - `peer`: Raft messages between nodes: one outbound TCP connection per peer (reconnect with
//!   exponential backoff, bounded queue, batching, pings and a silence timeout, because a
//!   partition does not break an open connection), and the inbound accept side;
//! - `faults` (test and simulation builds only): drop, delay, duplicate, reorder and partition
//!   peer messages on request, since madsim itself only loses packets at connection setup.
//!
//! Invariant: the transport never blocks the event loop. Sending is a `try_send` into a bounded
//! queue; a full queue drops the message (Raft tolerates loss and retransmits).
#[cfg(any(test, madsim))]
mod faults;
pub mod frame;
pub mod peer;

#[cfg(any(test, madsim))]
pub use faults::{FaultPlan, TransportFaults};
pub use frame::FrameError;
pub use peer::{PeerFrame, PeerTransport};
