//! The backup file of one shard (`shard-NNNN.qkvb`): a logical format, independent of the
//! engine's file format and of the Raft snapshot.
//!
//! Layout (integers little-endian):
//! - header: magic `QKVBACK\0` (8 bytes), format version u32, shard u32, applied index u64,
//!   crc32 of the previous 24 bytes u32;
//! - blocks: tag `b'B'`, record count u32, payload length u32, crc32 of the payload u32, then
//!   the payload: records of key length u32, key, version u64, value length u32, value;
//! - trailer: tag `b'E'`, record count u64, key plus value bytes u64, crc32 of the previous
//!   17 bytes u32; nothing may follow it.
//!
//! Invariants: every byte of the file is covered by a crc32 (header, each block, trailer);
//! a reader checks each block before decoding it and never allocates more than
//! `BLOCK_PAYLOAD_BYTES_MAX` for one; damage is reported with the file and its byte offset.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::client::protocol::BackupItem;
use crate::placement::ShardId;
use crate::raft::LogIndex;

pub const MAGIC: &[u8; 8] = b"QKVBACK\0";
/// Bump on any incompatible change of the layout above.
pub const FORMAT_VERSION: u32 = 1;
/// A block is written once its payload reaches this many bytes.
pub const BLOCK_PAYLOAD_BYTES_TARGET: usize = 256 * 1024;
/// Largest block payload a reader accepts (one record may exceed the target alone).
pub const BLOCK_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 4;
const BLOCK_TAG: u8 = b'B';
const TRAILER_TAG: u8 = b'E';

/// Damage or misuse found in a backup file.
#[derive(Debug, thiserror::Error)]
#[error("{}: at byte {offset}: {problem}", path.display())]
pub struct FormatError {
    pub path: PathBuf,
    pub offset: u64,
    pub problem: String,
}

/// What a finished (or fully read) shard file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardFileSummary {
    pub shard: ShardId,
    pub applied_index: LogIndex,
    pub keys: u64,
    /// Key plus value bytes of every record.
    pub data_bytes: u64,
    pub file_bytes: u64,
    /// crc32 of the whole file.
    pub file_crc32: u32,
}

/// Writes a shard file: header at `create`, records in blocks, trailer and fsync at `finish`.
pub struct ShardFileWriter {
    path: PathBuf,
    out: BufWriter<File>,
    file_crc: crc32fast::Hasher,
    file_bytes: u64,
    shard: ShardId,
    applied_index: LogIndex,
    block: Vec<u8>,
    block_records: u32,
    keys: u64,
    data_bytes: u64,
}

impl ShardFileWriter {
    pub fn create(
        path: &Path,
        shard: ShardId,
        applied_index: LogIndex,
    ) -> std::io::Result<ShardFileWriter> {
        let file = File::create(path)?;
        let mut writer = ShardFileWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            file_crc: crc32fast::Hasher::new(),
            file_bytes: 0,
            shard,
            applied_index,
            block: Vec::with_capacity(BLOCK_PAYLOAD_BYTES_TARGET + 4096),
            block_records: 0,
            keys: 0,
            data_bytes: 0,
        };
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&shard.to_le_bytes());
        header.extend_from_slice(&applied_index.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        writer.emit(&header)?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn push(&mut self, item: &BackupItem) -> std::io::Result<()> {
        let too_long = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{what} longer than 4 GiB"),
            )
        };
        let key_len = u32::try_from(item.key.len()).map_err(|_| too_long("key"))?;
        let value_len = u32::try_from(item.value.len()).map_err(|_| too_long("value"))?;
        self.block.extend_from_slice(&key_len.to_le_bytes());
        self.block.extend_from_slice(&item.key);
        self.block.extend_from_slice(&item.version.to_le_bytes());
        self.block.extend_from_slice(&value_len.to_le_bytes());
        self.block.extend_from_slice(&item.value);
        self.block_records += 1;
        self.keys += 1;
        self.data_bytes += (item.key.len() + item.value.len()) as u64;
        if self.block.len() >= BLOCK_PAYLOAD_BYTES_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        if self.block_records == 0 {
            return Ok(());
        }
        let len = u32::try_from(self.block.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "block over 4 GiB")
        })?;
        let mut head = Vec::with_capacity(13);
        head.push(BLOCK_TAG);
        head.extend_from_slice(&self.block_records.to_le_bytes());
        head.extend_from_slice(&len.to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(&self.block).to_le_bytes());
        self.emit(&head)?;
        let block = std::mem::take(&mut self.block);
        self.emit(&block)?;
        self.block = block;
        self.block.clear();
        self.block_records = 0;
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.file_crc.update(bytes);
        self.file_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes the last block and the trailer, and makes the file durable.
    pub fn finish(mut self) -> std::io::Result<ShardFileSummary> {
        self.flush_block()?;
        let mut trailer = Vec::with_capacity(21);
        trailer.push(TRAILER_TAG);
        trailer.extend_from_slice(&self.keys.to_le_bytes());
        trailer.extend_from_slice(&self.data_bytes.to_le_bytes());
        let crc = crc32fast::hash(&trailer);
        trailer.extend_from_slice(&crc.to_le_bytes());
        self.emit(&trailer)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(ShardFileSummary {
            shard: self.shard,
            applied_index: self.applied_index,
            keys: self.keys,
            data_bytes: self.data_bytes,
            file_bytes: self.file_bytes,
            file_crc32: self.file_crc.finalize(),
        })
    }
}

/// Reads a whole shard file, checking every crc, and hands each record to `visit` (block by
/// block, each block only after its crc matched). The file's summary on success.
pub fn read_shard_file(
    path: &Path,
    visit: impl FnMut(BackupItem) -> std::io::Result<()>,
) -> Result<ShardFileSummary, FormatError> {
    let file = File::open(path).map_err(|e| FormatError {
        path: path.to_path_buf(),
        offset: 0,
        problem: format!("cannot open: {e}"),
    })?;
    read_shard_from(path, BufReader::with_capacity(1 << 20, file), visit)
}

/// `read_shard_file` over any byte source (`path` names it in errors): what the fuzz target
/// `backup` feeds.
pub fn read_shard_from(
    path: &Path,
    input: impl Read,
    mut visit: impl FnMut(BackupItem) -> std::io::Result<()>,
) -> Result<ShardFileSummary, FormatError> {
    let mut reader = Reader {
        path,
        input,
        offset: 0,
        crc: crc32fast::Hasher::new(),
    };
    let header = reader.exact(HEADER_BYTES, "header")?;
    if &header[..8] != MAGIC {
        return Err(reader.damage(0, "not a quorumkv backup file (bad magic)".into()));
    }
    let version = u32_at(&header, 8);
    let stored_crc = u32_at(&header, 24);
    if crc32fast::hash(&header[..24]) != stored_crc {
        return Err(reader.damage(0, "header checksum mismatch".into()));
    }
    if version != FORMAT_VERSION {
        return Err(reader.damage(
            8,
            format!("format version {version}, this build reads only version {FORMAT_VERSION}"),
        ));
    }
    let shard = u32_at(&header, 12);
    let applied_index = u64_at(&header, 16);
    let (mut keys, mut data_bytes) = (0u64, 0u64);
    loop {
        let at = reader.offset;
        let tag = reader.exact(1, "block or trailer")?[0];
        match tag {
            BLOCK_TAG => {
                let head = reader.exact(12, "block header")?;
                let records = u32_at(&head, 0);
                let len = u32_at(&head, 4) as usize;
                let crc = u32_at(&head, 8);
                if len > BLOCK_PAYLOAD_BYTES_MAX {
                    return Err(reader.damage(at, format!("block of {len} bytes is too long")));
                }
                let payload = reader.exact(len, "block payload")?;
                if crc32fast::hash(&payload) != crc {
                    return Err(reader.damage(at, "block checksum mismatch".into()));
                }
                let items = decode_records(&payload, records)
                    .map_err(|problem| reader.damage(at, problem))?;
                for item in items {
                    keys += 1;
                    data_bytes += (item.key.len() + item.value.len()) as u64;
                    visit(item).map_err(|e| reader.damage(at, format!("{e}")))?;
                }
            }
            TRAILER_TAG => {
                let rest = reader.exact(20, "trailer")?;
                let mut fields = vec![TRAILER_TAG];
                fields.extend_from_slice(&rest[..16]);
                if crc32fast::hash(&fields) != u32_at(&rest, 16) {
                    return Err(reader.damage(at, "trailer checksum mismatch".into()));
                }
                let (want_keys, want_bytes) = (u64_at(&rest, 0), u64_at(&rest, 8));
                if (want_keys, want_bytes) != (keys, data_bytes) {
                    return Err(reader.damage(
                        at,
                        format!(
                            "trailer says {want_keys} keys of {want_bytes} bytes, \
                             the blocks hold {keys} keys of {data_bytes} bytes"
                        ),
                    ));
                }
                let end = reader.offset;
                let mut extra = [0u8; 1];
                match reader.input.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(reader.damage(end, "data after the trailer".into())),
                    Err(e) => return Err(reader.damage(end, format!("read error: {e}"))),
                }
                return Ok(ShardFileSummary {
                    shard,
                    applied_index,
                    keys,
                    data_bytes,
                    file_bytes: end,
                    file_crc32: reader.crc.finalize(),
                });
            }
            other => {
                return Err(reader.damage(at, format!("unknown tag {other:#04x}")));
            }
        }
    }
}

fn decode_records(payload: &[u8], records: u32) -> Result<Vec<BackupItem>, String> {
    let mut items = Vec::with_capacity(records.min(1 << 16) as usize);
    let mut at = 0usize;
    for _ in 0..records {
        let key_len = u32_at(take(payload, &mut at, 4)?, 0) as usize;
        let key = take(payload, &mut at, key_len)?.to_vec();
        let version = u64_at(take(payload, &mut at, 8)?, 0);
        let value_len = u32_at(take(payload, &mut at, 4)?, 0) as usize;
        let value = take(payload, &mut at, value_len)?.to_vec();
        items.push(BackupItem {
            key,
            version,
            value,
        });
    }
    if at != payload.len() {
        return Err(format!(
            "block holds {} bytes after its {records} records",
            payload.len() - at
        ));
    }
    Ok(items)
}

fn take<'a>(payload: &'a [u8], at: &mut usize, len: usize) -> Result<&'a [u8], String> {
    let end = at
        .checked_add(len)
        .filter(|&end| end <= payload.len())
        .ok_or_else(|| format!("a record at payload byte {at} runs past its block"))?;
    let bytes = &payload[*at..end];
    *at = end;
    Ok(bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

struct Reader<'a, R> {
    path: &'a Path,
    input: R,
    offset: u64,
    crc: crc32fast::Hasher,
}

impl<R: Read> Reader<'_, R> {
    /// The next `len` bytes. The buffer grows as bytes arrive: a length field that claims
    /// more than the file holds costs no more memory than the file.
    fn exact(&mut self, len: usize, what: &str) -> Result<Vec<u8>, FormatError> {
        let mut bytes = Vec::with_capacity(len.min(64 * 1024));
        match (&mut self.input).take(len as u64).read_to_end(&mut bytes) {
            Ok(n) if n == len => {}
            Ok(_) => {
                return Err(self.damage(
                    self.offset,
                    format!("file ends inside the {what} (truncated)"),
                ))
            }
            Err(e) => return Err(self.damage(self.offset, format!("read error: {e}"))),
        }
        self.crc.update(&bytes);
        self.offset += len as u64;
        Ok(bytes)
    }

    fn damage(&self, offset: u64, problem: String) -> FormatError {
        FormatError {
            path: self.path.to_path_buf(),
            offset,
            problem,
        }
    }
}
