//! A `Disk` that reports what goes through it: bytes written and the time of every sync
//! (the fsync on the commit path). Measured with `tokio::time::Instant`, not the wall clock.

use std::io;
use std::sync::Arc;

use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::storage::{Disk, DiskFile};

pub(super) struct MeteredDisk {
    pub(super) inner: Arc<dyn Disk>,
    pub(super) metrics: Arc<Metrics>,
}

struct MeteredFile {
    inner: Box<dyn DiskFile>,
    metrics: Arc<Metrics>,
}

impl Disk for MeteredDisk {
    fn open(&self, name: &str) -> io::Result<Box<dyn DiskFile>> {
        Ok(Box::new(MeteredFile {
            inner: self.inner.open(name)?,
            metrics: self.metrics.clone(),
        }))
    }
    fn exists(&self, name: &str) -> io::Result<bool> {
        self.inner.exists(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

impl DiskFile for MeteredFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)?;
        self.metrics.disk_written.inc_by(data.len() as u64);
        Ok(())
    }
    fn set_len(&mut self, len_bytes: u64) -> io::Result<()> {
        self.inner.set_len(len_bytes)
    }
    fn sync(&mut self) -> io::Result<()> {
        let started = Instant::now();
        let result = self.inner.sync();
        self.metrics
            .fsync_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }
}
