//! bincode decoding whose allocations are bounded by the size of the input.
//!
//! bincode 2 allocates a string's or byte vector's declared length before reading its bytes,
//! up to the configured limit: with a 1 GiB limit, a 40-byte frame declaring a 600 MB string
//! made the node allocate 600 MB (found by the `client_frame` fuzz target). What bincode
//! counts against its limit is memory, not input: each integer is charged its in-memory size
//! (8 bytes for a u64 that a varint encodes in 1), each string its declared length. For valid
//! input the charge is therefore at most 8 times its length (16 with u128s, which we do not
//! encode); decoding under a limit of the smallest size class at least 16 times that long
//! (classes a factor 16 apart, from 4 KiB) refuses nothing valid and bounds what a hostile
//! input can make us allocate to 256 times its size (4 KiB for tiny inputs) instead of the
//! whole decode limit. Collections of other types are preallocated by serde cautiously (at
//! most 1 MiB).
//!
//! Every decoder of bytes from disk or network goes through here: frames (`decode_bounded`),
//! and the WAL's records, snapshot files, state images, snapshot chunks, stored sessions and
//! log commands (`decode_exact_within`, which also checks the input against a named limit and
//! refuses trailing bytes).

use bincode::error::DecodeError;
use serde::de::DeserializeOwned;

fn decode_limited<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

/// `bincode::serde::decode_from_slice` with the standard configuration and a limit set by the
/// input's length (see the module doc); returns the value and the bytes it used.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    const KIB: usize = 1 << 10;
    // Headroom: bincode charges integers their in-memory size (see the module doc).
    match bytes.len().saturating_mul(16) {
        n if n <= 4 * KIB => decode_limited::<T, { 4 * KIB }>(bytes),
        n if n <= 64 * KIB => decode_limited::<T, { 64 * KIB }>(bytes),
        n if n <= KIB * KIB => decode_limited::<T, { KIB * KIB }>(bytes),
        n if n <= 16 * KIB * KIB => decode_limited::<T, { 16 * KIB * KIB }>(bytes),
        n if n <= 256 * KIB * KIB => decode_limited::<T, { 256 * KIB * KIB }>(bytes),
        _ => decode_limited::<T, { usize::MAX >> 1 }>(bytes),
    }
}

/// Why `decode_exact_within` refused its input.
#[derive(Debug, thiserror::Error)]
pub enum BoundedDecodeError {
    #[error("{len_bytes} bytes exceed {limit_name} = {max_bytes} bytes")]
    TooLarge {
        len_bytes: usize,
        limit_name: &'static str,
        max_bytes: usize,
    },
    #[error("undecodable: {0}")]
    Decode(#[from] DecodeError),
    #[error("{trailing_bytes} trailing bytes after the value")]
    Trailing { trailing_bytes: usize },
}

/// Decodes one value that must fill `bytes` exactly, refusing inputs longer than the limit
/// named `limit_name` (`max_bytes`) before reading them, with allocations bounded as
/// `decode_bounded` bounds them.
pub fn decode_exact_within<T: DeserializeOwned>(
    bytes: &[u8],
    limit_name: &'static str,
    max_bytes: usize,
) -> Result<T, BoundedDecodeError> {
    if bytes.len() > max_bytes {
        return Err(BoundedDecodeError::TooLarge {
            len_bytes: bytes.len(),
            limit_name,
            max_bytes,
        });
    }
    let (value, used) = decode_bounded::<T>(bytes)?;
    if used != bytes.len() {
        return Err(BoundedDecodeError::Trailing {
            trailing_bytes: bytes.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_length_beyond_the_input_is_refused_without_allocating_it() {
        // A string that claims 600 MB in a 12-byte input: the 4 KiB class refuses the claim.
        let mut bytes = vec![0xFC];
        bytes.extend_from_slice(&600_000_000u32.to_le_bytes());
        bytes.extend_from_slice(b"abcdefg");
        let err = decode_bounded::<String>(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::LimitExceeded), "{err}");
    }

    #[test]
    fn integers_charged_eight_bytes_each_still_decode() {
        // 100,000 small u64s: 100 KB of varints, 800 KB as bincode counts them.
        let value: Vec<u64> = (0..100_000u64).map(|i| i % 100).collect();
        let bytes = bincode::serde::encode_to_vec(&value, bincode::config::standard()).unwrap();
        let back: Vec<u64> = decode_exact_within(&bytes, "test_limit", bytes.len()).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn over_the_named_limit_or_trailing_bytes_is_a_clear_error() {
        let bytes = bincode::serde::encode_to_vec("abc", bincode::config::standard()).unwrap();
        let err = decode_exact_within::<String>(&bytes, "max_test_bytes", 2).unwrap_err();
        assert_eq!(err.to_string(), "4 bytes exceed max_test_bytes = 2 bytes");
        let mut longer = bytes.clone();
        longer.push(0);
        let err = decode_exact_within::<String>(&longer, "max_test_bytes", 10).unwrap_err();
        assert_eq!(err.to_string(), "1 trailing bytes after the value");
    }

    #[test]
    fn valid_values_decode_at_every_size_class() {
        for len in [0, 10, 5000, 70_000, 2 << 20] {
            let value = ("x".repeat(len), vec![7u8; len / 2]);
            let bytes = bincode::serde::encode_to_vec(&value, bincode::config::standard()).unwrap();
            let (back, used) = decode_bounded::<(String, Vec<u8>)>(&bytes).unwrap();
            assert_eq!((back, used), (value, bytes.len()));
        }
    }
}
