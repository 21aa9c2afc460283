//! Persistence.
mod disk;
pub use disk::{Disk, DiskFile};
