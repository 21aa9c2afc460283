//! Record framing for append-only files: a checksummed header, then the payload.
//!
//! Layout (little endian): `len: u32` (payload bytes), `payload_crc: u32` (crc32 of the
//! payload), `header_crc: u32` (crc32 of the 8 bytes before it), then `len` payload bytes.
//! The separate header checksum lets recovery tell a damaged length from a short tail.
//!
//! Recovery rule (`scan`): records are read front to back. A record that is incomplete or fails
//! a checksum ends the file. In a file still being appended to (`tail_may_be_torn`) it is the
//! torn tail of an unsynced write, cut off and never served, unless a valid record starts
//! somewhere after it: then it is damage in the middle, reported with file and offset. In any
//! other file every bad record is damage. Zero bytes from a bad record to the end of such a file
//! are not damage but room the writer zero-filled ahead of its appends (`Scanned::zero_tail`);
//! a zero header is never a valid record (its header checksum is not zero).

use super::StorageError;

pub const HEADER_BYTES: usize = 12;

pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("caller bounds payloads by max_record_bytes");
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&crc32fast::hash(&head).to_le_bytes());
    out.extend_from_slice(payload);
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Parses the record at `offset`; `Err` says why it is not a valid record.
fn parse(bytes: &[u8], offset: usize, max_record_bytes: usize) -> Result<&[u8], &'static str> {
    let rest = &bytes[offset..];
    if rest.len() < HEADER_BYTES {
        return Err("incomplete record header");
    }
    if crc32fast::hash(&rest[..8]) != u32_at(rest, 8) {
        return Err("record header checksum mismatch");
    }
    let len = u32_at(rest, 0) as usize;
    if len > max_record_bytes {
        return Err("record length exceeds max_record_bytes");
    }
    let payload = rest
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or("incomplete record payload")?;
    if crc32fast::hash(payload) != u32_at(rest, 4) {
        return Err("record payload checksum mismatch");
    }
    Ok(payload)
}

/// The record at `at` of `bytes` (a turn's buffer of records, or one framed record read from a
/// file); its damage is reported as `Corrupt` at `file_offset`, where the record sits in `file`.
pub fn parse_at<'a>(
    file: &str,
    bytes: &'a [u8],
    at: usize,
    file_offset: u64,
    max_record_bytes: usize,
) -> Result<&'a [u8], StorageError> {
    if at > bytes.len() {
        return Err(StorageError::corrupt(
            file,
            file_offset,
            "record past the end",
        ));
    }
    parse(bytes, at, max_record_bytes)
        .map_err(|reason| StorageError::corrupt(file, file_offset, reason))
}

pub struct Scanned<'a> {
    /// `(offset, payload)` of every valid record, in file order.
    pub records: Vec<(u64, &'a [u8])>,
    /// Where the valid records end; `< bytes.len()` when a torn tail or a zero tail was found.
    pub valid_len: u64,
    /// The bytes from `valid_len` to the end are all zero (room zero-filled ahead, or nothing
    /// of the last write reached the disk): nothing to cut.
    pub zero_tail: bool,
}

pub fn scan<'a>(
    file: &str,
    bytes: &'a [u8],
    tail_may_be_torn: bool,
    max_record_bytes: usize,
) -> Result<Scanned<'a>, StorageError> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        match parse(bytes, offset, max_record_bytes) {
            Ok(payload) => {
                records.push((offset as u64, payload));
                offset += HEADER_BYTES + payload.len();
            }
            Err(reason) => {
                if tail_may_be_torn && first_nonzero(&bytes[offset..]).is_none() {
                    return Ok(Scanned {
                        records,
                        valid_len: offset as u64,
                        zero_tail: true,
                    });
                }
                if !tail_may_be_torn {
                    return Err(StorageError::corrupt(file, offset as u64, reason));
                }
                let later = next_valid(bytes, offset + 1, max_record_bytes);
                if let Some(at) = later {
                    return Err(StorageError::corrupt(
                        file,
                        offset as u64,
                        format!("{reason}, yet a valid record follows at offset {at}"),
                    ));
                }
                tracing::warn!(file, offset, reason, "cutting torn tail");
                return Ok(Scanned {
                    records,
                    valid_len: offset as u64,
                    zero_tail: false,
                });
            }
        }
    }
    Ok(Scanned {
        records,
        valid_len: offset as u64,
        zero_tail: false,
    })
}

/// The first offset at or after `from` where a valid record starts. A header of zero bytes is
/// never valid, so offsets whose header lies in a run of zeros (room zero-filled ahead, which
/// follows most torn tails) are skipped without a checksum each: the same answer as trying
/// every offset, in a pass over the zeros instead of a crc32 per byte.
fn next_valid(bytes: &[u8], from: usize, max_record_bytes: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_BYTES <= bytes.len() {
        if first_nonzero(&bytes[at..at + HEADER_BYTES]).is_none() {
            // The header windows that start before the next nonzero byte's own window are zero.
            let nonzero = at + first_nonzero(&bytes[at..])?;
            at = nonzero + 1 - HEADER_BYTES;
            continue;
        }
        if parse(bytes, at, max_record_bytes).is_ok() {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Index of the first nonzero byte of `bytes`, comparing 16 bytes at a time.
fn first_nonzero(bytes: &[u8]) -> Option<usize> {
    const WORD: usize = 16;
    let words = bytes.chunks_exact(WORD);
    let tail_start = bytes.len() - words.remainder().len();
    let word = words
        .map(|w| u128::from_ne_bytes(w.try_into().expect("chunks_exact gives WORD bytes")))
        .position(|w| w != 0)
        .map_or(tail_start, |i| i * WORD);
    bytes[word..].iter().position(|&b| b != 0).map(|i| word + i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn next_valid_naive(bytes: &[u8], from: usize, max: usize) -> Option<usize> {
        (from..bytes.len()).find(|&at| parse(bytes, at, max).is_ok())
    }

    /// Records, garbage and zero runs in any order: the zero-skipping search and the
    /// zero-tail test answer as the per-offset search does.
    fn pieces() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|p| {
                let mut out = Vec::new();
                encode(&p, &mut out);
                out
            }),
            proptest::collection::vec(any::<u8>(), 0..20),
            (0usize..100).prop_map(|n| vec![0u8; n]),
            (0usize..30, any::<u8>()).prop_map(|(n, b)| {
                let mut v = vec![0u8; n];
                v.push(b);
                v
            }),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|ps| ps.concat())
    }

    proptest! {
        #[test]
        fn next_valid_is_the_first_valid_offset(bytes in pieces(), from in 0usize..64) {
            let from = from.min(bytes.len());
            prop_assert_eq!(next_valid(&bytes, from, 64), next_valid_naive(&bytes, from, 64));
            let naive_first = bytes.iter().position(|&b| b != 0);
            prop_assert_eq!(first_nonzero(&bytes), naive_first);
        }
    }

    #[test]
    fn a_zero_header_is_never_a_record() {
        assert!(parse(&[0u8; HEADER_BYTES + 8], 0, 64).is_err());
    }
}
