//! `Engine`: the on-disk, ordered store under the state machine (one redb file per group).
//!
//! Why it exists: the key space must outgrow memory and survive restarts without a full
//! snapshot. The semantic layer (`machine.rs`: sessions, versions, CAS, scans, limits) sees
//! only `KvStore` (get/put/delete/range); this module owns redb, its tables and transactions.
//!
//! Tables: `data` (key -> version u64 LE ++ value), `sessions` (client id -> bincode
//! `Session`), `meta` (`format`, `applied_index`, and the data's `Totals`: `stored_bytes`, key
//! plus value bytes of every key, so that metrics need no scan, and `digest`, an
//! order-independent checksum of every key, version and value, so that two replicas at one
//! applied index can be compared without reading their data).
//!
//! Invariants:
//! - every change of one batch (data, sessions, `applied_index`) is committed in ONE redb
//!   transaction: after a crash the file holds a prefix of whole batches, each with its own
//!   applied index, never data without the index that covers it or the reverse;
//! - batches are committed with `Durability::None`; `checkpoint` commits with `Immediate`,
//!   which also makes every earlier batch durable. What survives a crash is the last
//!   checkpoint or a later batch, never less;
//! - a file whose `format` is not `FORMAT` is refused, never read.

use std::ops::Bound;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};

use super::sessions::Session;
use super::types::{ScanItem, Versioned};
use super::KvError;
use crate::raft::LogIndex;
use crate::storage::{Disk, DiskBackend};

pub(crate) const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
pub(crate) const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_FORMAT: &str = "format";
pub(crate) const META_APPLIED: &str = "applied_index";
pub(crate) const META_STORED_BYTES: &str = "stored_bytes";
pub(crate) const META_DIGEST: &str = "digest";
/// On-disk format of the engine file; bump on any incompatible change of the tables.
pub const FORMAT: u64 = 2;
/// Decoding bound of one stored session (its last response may hold a scan).
const MAX_SESSION_BYTES: usize = 64 << 20;

pub(crate) fn storage_error(what: &str, e: impl std::fmt::Display) -> KvError {
    KvError::Storage(format!("{what}: {e}"))
}

pub(crate) fn encode_versioned(v: &Versioned) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + v.value.len());
    bytes.extend_from_slice(&v.version.to_le_bytes());
    bytes.extend_from_slice(&v.value);
    bytes
}

pub(crate) fn decode_versioned(bytes: &[u8]) -> Result<Versioned, KvError> {
    if bytes.len() < 8 {
        return Err(KvError::Storage(format!(
            "stored value of {} bytes is shorter than its version",
            bytes.len()
        )));
    }
    let mut version = [0u8; 8];
    version.copy_from_slice(&bytes[..8]);
    Ok(Versioned {
        version: u64::from_le_bytes(version),
        value: bytes[8..].to_vec(),
    })
}

pub(crate) fn encode_session(s: &Session) -> Vec<u8> {
    bincode::serde::encode_to_vec(s, bincode::config::standard())
        .expect("encoding a session into memory cannot fail")
}

pub(crate) fn decode_session(bytes: &[u8]) -> Result<Session, KvError> {
    crate::bounded_decode::decode_exact_within(bytes, "MAX_SESSION_BYTES", MAX_SESSION_BYTES)
        .map_err(|e| storage_error("stored session", e))
}

/// Running totals over the data table, updated by every change of a key and stored with each
/// batch (`meta`). Equal data gives equal totals, whatever the order of the changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Key plus value bytes of every key.
    pub stored_bytes: u64,
    /// Wrapping sum of `entry_digest` over every key.
    pub digest: u64,
}

impl Totals {
    /// Counts a stored entry (`stored`: version u64 LE ++ value).
    pub(crate) fn add(&mut self, key: &[u8], stored: &[u8]) {
        self.stored_bytes += (key.len() + stored.len().saturating_sub(8)) as u64;
        self.digest = self.digest.wrapping_add(entry_digest(key, stored));
    }

    /// Uncounts an entry that was counted by `add`.
    pub(crate) fn remove(&mut self, key: &[u8], stored: &[u8]) {
        let bytes = (key.len() + stored.len().saturating_sub(8)) as u64;
        debug_assert!(self.stored_bytes >= bytes, "stored_bytes underflow");
        self.stored_bytes = self.stored_bytes.saturating_sub(bytes);
        self.digest = self.digest.wrapping_sub(entry_digest(key, stored));
    }
}

/// One entry's share of the state digest: two crc32s (different seeds) over the key's length,
/// the key and the stored value.
fn entry_digest(key: &[u8], stored: &[u8]) -> u64 {
    let crc = |seed: u32| {
        let mut h = crc32fast::Hasher::new_with_initial(seed);
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(stored);
        u64::from(h.finalize())
    };
    (crc(0x5157_4b56) << 32) | crc(0x9e37_79b9)
}

/// Keys with their stored values (version u64 LE ++ value), as a snapshot chunk reads them.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// What the semantic layer needs from storage. Implemented by the open write batch (applies)
/// and by read views (reads, snapshots).
pub(crate) trait KvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, KvError>;
    /// Stores `value` under `key`, counting the change in `totals`.
    fn put(&mut self, key: &[u8], value: &Versioned, totals: &mut Totals) -> Result<(), KvError>;
    fn delete(&mut self, key: &[u8]) -> Result<Option<Versioned>, KvError>;
    /// Up to `limit` items in `(lower, upper)` (ascending), whose key starts with `prefix`;
    /// `more` is true when another item matched after the last one returned.
    fn range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        prefix: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<ScanItem>, bool), KvError>;
}

macro_rules! range_items {
    ($table:expr, $lower:expr, $upper:expr, $prefix:expr, $limit:expr) => {{
        let mut items = Vec::new();
        let mut more = false;
        for entry in $table
            .range::<&[u8]>(($lower, $upper))
            .map_err(|e| storage_error("scan", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("scan", e))?;
            let key = key.value();
            if $prefix.is_some_and(|p: &[u8]| !key.starts_with(p)) {
                break;
            }
            if items.len() == $limit {
                more = true;
                break;
            }
            let v = decode_versioned(value.value())?;
            items.push(ScanItem {
                key: key.to_vec(),
                value: v.value,
                version: v.version,
            });
        }
        (items, more)
    }};
}

/// The open write transaction of one batch.
pub(crate) struct WriteBatch<'a> {
    pub(crate) txn: &'a WriteTransaction,
}

impl KvStore for WriteBatch<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        let table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        let value = table.get(key).map_err(|e| storage_error("get", e))?;
        value.map(|v| decode_versioned(v.value())).transpose()
    }

    fn put(&mut self, key: &[u8], value: &Versioned, totals: &mut Totals) -> Result<(), KvError> {
        let mut table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        let stored = encode_versioned(value);
        let previous = table
            .insert(key, stored.as_slice())
            .map_err(|e| storage_error("put", e))?;
        if let Some(previous) = previous {
            totals.remove(key, previous.value());
        }
        totals.add(key, &stored);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        let mut table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        let old = table.remove(key).map_err(|e| storage_error("delete", e))?;
        old.map(|v| decode_versioned(v.value())).transpose()
    }

    fn range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        prefix: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<ScanItem>, bool), KvError> {
        let table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        Ok(range_items!(table, lower, upper, prefix, limit))
    }
}

/// A consistent read-only view of the engine as of its last committed batch.
pub struct ReadView {
    txn: ReadTransaction,
}

impl ReadView {
    pub fn applied_index(&self) -> Result<LogIndex, KvError> {
        self.meta(META_APPLIED)
    }

    /// The data's totals as stored with the last committed batch.
    pub fn totals(&self) -> Result<Totals, KvError> {
        Ok(Totals {
            stored_bytes: self.meta(META_STORED_BYTES)?,
            digest: self.meta(META_DIGEST)?,
        })
    }

    fn meta(&self, name: &str) -> Result<u64, KvError> {
        let table = self
            .txn
            .open_table(META)
            .map_err(|e| storage_error("open meta", e))?;
        let value = table
            .get(name)
            .map_err(|e| storage_error(&format!("read {name}"), e))?;
        Ok(value.map_or(0, |v| v.value()))
    }

    /// Data items after `after` (exclusive; None: from the first key) until `max_bytes` of
    /// keys and values are gathered (at least one item). Empty at the end.
    pub fn data_after(&self, after: Option<&[u8]>, max_bytes: usize) -> Result<KeyValues, KvError> {
        let table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut items = Vec::new();
        let mut bytes = 0;
        for entry in table
            .range::<&[u8]>((lower, Bound::Unbounded))
            .map_err(|e| storage_error("snapshot read", e))?
        {
            let (key, value) = entry.map_err(|e| storage_error("snapshot read", e))?;
            bytes += key.value().len() + value.value().len();
            items.push((key.value().to_vec(), value.value().to_vec()));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(items)
    }

    /// Keys in the view.
    pub fn key_count(&self) -> Result<u64, KvError> {
        let table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        table.len().map_err(|e| storage_error("count keys", e))
    }

    /// Every stored session (bounded by `max_sessions`), encoded as stored.
    pub fn sessions(&self) -> Result<Vec<(u64, Vec<u8>)>, KvError> {
        let table = self
            .txn
            .open_table(SESSIONS)
            .map_err(|e| storage_error("open sessions", e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| storage_error("sessions", e))? {
            let (k, v) = entry.map_err(|e| storage_error("sessions", e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
}

impl KvStore for ReadView {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, KvError> {
        let table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        let value = table.get(key).map_err(|e| storage_error("get", e))?;
        value.map(|v| decode_versioned(v.value())).transpose()
    }

    fn put(
        &mut self,
        _key: &[u8],
        _value: &Versioned,
        _totals: &mut Totals,
    ) -> Result<(), KvError> {
        Err(KvError::Storage("put on a read view".into()))
    }

    fn delete(&mut self, _key: &[u8]) -> Result<Option<Versioned>, KvError> {
        Err(KvError::Storage("delete on a read view".into()))
    }

    fn range(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        prefix: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<ScanItem>, bool), KvError> {
        let table = self
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        Ok(range_items!(table, lower, upper, prefix, limit))
    }
}

/// One group's redb database.
pub struct Engine {
    /// The batch being applied (committed by `commit_batch`/`checkpoint`); declared before
    /// `db` so that an uncommitted batch is dropped (rolled back) before its database.
    pub(crate) batch: Option<WriteTransaction>,
    db: Database,
    name: String,
    /// Durable commits record redb's allocator state (`set_quick_repair`).
    quick_repair: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("name", &self.name).finish()
    }
}

impl Engine {
    /// Opens (or creates, empty) the engine file `name` of `disk`, with a page cache of
    /// `cache_bytes`. A file of another format is refused. Opening an existing file writes
    /// nothing durable (a restart of a group costs no sync).
    pub fn open(disk: &Arc<dyn Disk>, name: &str, cache_bytes: usize) -> Result<Engine, KvError> {
        let existed = disk
            .exists(name)
            .map_err(|e| storage_error(&format!("stat {name}"), e))?;
        if !existed {
            return Engine::create(disk, name, cache_bytes);
        }
        let db = Engine::open_db(disk, name, cache_bytes)?;
        Engine::init(db, name)
    }

    /// Creates the engine file `name`, initialized and durable, under a temporary name first
    /// (renamed into place, directory synced): a crash leaves no file or a whole one, never a
    /// name whose header is partly written (redb refuses such a file for good). The database
    /// stays open across the rename (the handle follows the file; both of its commit slots
    /// are durable before the rename, so a crash right after it finds a whole file, as if
    /// the database had been reopened).
    fn create(disk: &Arc<dyn Disk>, name: &str, cache_bytes: usize) -> Result<Engine, KvError> {
        let temporary = format!("{name}.new");
        let io = |what: &str| {
            let what = format!("{what} {temporary}");
            move |e: std::io::Error| storage_error(&what, e)
        };
        if disk.exists(&temporary).map_err(io("stat"))? {
            disk.remove(&temporary).map_err(io("remove"))?;
        }
        // `init` commits durably (both commit slots) before the rename.
        let mut engine = Engine::init(Engine::open_db(disk, &temporary, cache_bytes)?, &temporary)?;
        disk.rename(&temporary, name).map_err(io("rename"))?;
        disk.sync_dir().map_err(io("sync_dir after renaming"))?;
        engine.renamed(name);
        Ok(engine)
    }

    fn open_db(disk: &Arc<dyn Disk>, name: &str, cache_bytes: usize) -> Result<Database, KvError> {
        let file = disk
            .open(name)
            .map_err(|e| storage_error(&format!("open {name}"), e))?;
        redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create_with_backend(DiskBackend::new(name, file))
            .map_err(|e| storage_error(&format!("open {name}"), e))
    }

    /// An engine in memory (tests, and groups whose data is rebuilt from the log anyway).
    pub fn in_memory() -> Result<Engine, KvError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| storage_error("in-memory engine", e))?;
        Engine::init(db, "memory")
    }

    /// Checks the format of `db`, or writes it (and creates the tables) into a new file with
    /// two durable commits. A file that has its format is only read: nothing is committed.
    fn init(db: Database, name: &str) -> Result<Engine, KvError> {
        let engine = Engine {
            db,
            batch: None,
            name: name.to_string(),
            quick_repair: true,
        };
        let txn = engine.begin()?;
        let found = txn
            .open_table(META)
            .map_err(|e| storage_error("open meta", e))?
            .get(META_FORMAT)
            .map_err(|e| storage_error("read format", e))?
            .map(|v| v.value());
        match found {
            Some(FORMAT) => {
                // The tables were created with the format: nothing to write.
                txn.abort()
                    .map_err(|e| storage_error(&format!("{name}: abort"), e))?;
            }
            Some(found) => {
                return Err(KvError::Storage(format!(
                    "{name}: engine format {found}, this build reads only format {FORMAT}: \
                     re-seed this replica (remove its files and let it rejoin)"
                )));
            }
            None => {
                {
                    let mut meta = txn
                        .open_table(META)
                        .map_err(|e| storage_error("open meta", e))?;
                    meta.insert(META_FORMAT, FORMAT)
                        .map_err(|e| storage_error("write format", e))?;
                }
                txn.open_table(DATA)
                    .map_err(|e| storage_error("open data", e))?;
                txn.open_table(SESSIONS)
                    .map_err(|e| storage_error("open sessions", e))?;
                engine.finish(txn, Durability::Immediate)?;
                // A second durable commit writes the other commit slot: from here on both
                // slots' version bytes are on disk and never rewritten (the backend writes
                // only changed header bytes), so a torn header write cannot zero them.
                let txn = engine.begin()?;
                engine.finish(txn, Durability::Immediate)?;
            }
        }
        Ok(engine)
    }

    #[cfg(test)]
    pub(crate) fn db_for_tests(&self) -> &Database {
        &self.db
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether later durable commits record redb's allocator state (default on; see
    /// `ServerConfig::engine_quick_repair`). Off, a reopen after a crash walks the whole file.
    pub fn set_quick_repair(&mut self, on: bool) {
        self.quick_repair = on;
    }

    /// The engine's file was renamed to `name` while open (its messages name it so from now on).
    pub(crate) fn renamed(&mut self, name: &str) {
        self.name = name.to_string();
    }

    fn begin(&self) -> Result<WriteTransaction, KvError> {
        self.db
            .begin_write()
            .map_err(|e| storage_error(&format!("{}: begin write", self.name), e))
    }

    fn finish(&self, mut txn: WriteTransaction, durability: Durability) -> Result<(), KvError> {
        let durable = matches!(durability, Durability::Immediate);
        txn.set_durability(durability)
            .map_err(|e| storage_error("set durability", e))?;
        // A durable commit also records the allocator state (unless configured off), so
        // reopening after a crash does not walk the whole file (restart time independent of
        // the data size).
        txn.set_quick_repair(durable && self.quick_repair);
        txn.commit()
            .map_err(|e| storage_error(&format!("{}: commit", self.name), e))
    }

    /// The batch's write transaction, begun on first use.
    pub(crate) fn batch(&mut self) -> Result<&WriteTransaction, KvError> {
        if self.batch.is_none() {
            self.batch = Some(self.begin()?);
        }
        Ok(self.batch.as_ref().expect("just set"))
    }

    pub(crate) fn has_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Commits the open batch (if any): durable only with `durable`.
    pub(crate) fn commit_batch(&mut self, durable: bool) -> Result<(), KvError> {
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        match self.batch.take() {
            Some(txn) => self.finish(txn, durability),
            None if durable => {
                // An empty Immediate commit makes the earlier None commits durable.
                let txn = self.begin()?;
                self.finish(txn, durability)
            }
            None => Ok(()),
        }
    }

    /// A consistent view as of the last committed batch.
    pub fn read_view(&self) -> Result<ReadView, KvError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| storage_error(&format!("{}: begin read", self.name), e))?;
        Ok(ReadView { txn })
    }

    /// Applied index as committed (the open batch's changes are not visible).
    pub fn committed_applied_index(&self) -> Result<LogIndex, KvError> {
        self.read_view()?.applied_index()
    }

    pub fn committed_totals(&self) -> Result<Totals, KvError> {
        self.read_view()?.totals()
    }

    pub fn load_sessions(&self) -> Result<Vec<(u64, Session)>, KvError> {
        self.read_view()?
            .sessions()?
            .into_iter()
            .map(|(id, bytes)| Ok((id, decode_session(&bytes)?)))
            .collect()
    }

    /// Keys stored, the open batch included.
    pub fn key_count(&self) -> Result<u64, KvError> {
        if let Some(txn) = &self.batch {
            let table = txn
                .open_table(DATA)
                .map_err(|e| storage_error("open data", e))?;
            return table.len().map_err(|e| storage_error("count keys", e));
        }
        let view = self.read_view()?;
        let table = view
            .txn
            .open_table(DATA)
            .map_err(|e| storage_error("open data", e))?;
        table.len().map_err(|e| storage_error("count keys", e))
    }
}

/// Writes records into a fresh engine file (a snapshot being received), in batches.
pub(crate) fn write_applied(txn: &WriteTransaction, applied: LogIndex) -> Result<(), KvError> {
    let mut meta = txn
        .open_table(META)
        .map_err(|e| storage_error("open meta", e))?;
    meta.insert(META_APPLIED, applied)
        .map_err(|e| storage_error("write applied index", e))?;
    Ok(())
}

pub(crate) fn write_totals(txn: &WriteTransaction, totals: Totals) -> Result<(), KvError> {
    let mut meta = txn
        .open_table(META)
        .map_err(|e| storage_error("open meta", e))?;
    meta.insert(META_STORED_BYTES, totals.stored_bytes)
        .map_err(|e| storage_error("write stored_bytes", e))?;
    meta.insert(META_DIGEST, totals.digest)
        .map_err(|e| storage_error("write digest", e))?;
    Ok(())
}

pub(crate) fn write_session(
    txn: &WriteTransaction,
    client: u64,
    session: Option<&[u8]>,
) -> Result<(), KvError> {
    let mut table = txn
        .open_table(SESSIONS)
        .map_err(|e| storage_error("open sessions", e))?;
    match session {
        Some(bytes) => table.insert(client, bytes).map(|_| ()),
        None => table.remove(client).map(|_| ()),
    }
    .map_err(|e| storage_error("write session", e))
}

pub(crate) fn write_raw(txn: &WriteTransaction, key: &[u8], value: &[u8]) -> Result<(), KvError> {
    let mut table = txn
        .open_table(DATA)
        .map_err(|e| storage_error("open data", e))?;
    table
        .insert(key, value)
        .map_err(|e| storage_error("put", e))?;
    Ok(())
}
