//! bincode decoding whose allocations are bounded by the size of the input.
//!
//! bincode 2 allocates a string's or byte vector's declared length before reading its bytes,
//! up to the configured limit: with a 1 GiB limit, a 40-byte frame declaring a 600 MB string
//! made the node allocate 600 MB (found by the `client_frame` fuzz target). Every byte of a
//! string or byte vector must be present in the input, so for valid input the claimed total
//! never exceeds the input's length: decoding under a limit of the smallest size class at
//! least 16 times that long (classes a factor 16 apart, from 4 KiB) refuses nothing valid and
//! bounds what a hostile input can make us allocate to 256 times its size (4 KiB for tiny
//! inputs) instead of the whole decode limit. Used for frames only so far: WAL records failed
//! the storage crash tests under a limit of their own length (to be understood).
//! Collections of other types are preallocated by serde cautiously (at most 1 MiB).

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
    // Headroom: some encodings claim more than their own length (the WAL's records did, in
    // the storage tests; not yet understood), so the class is that of 16 times the input.
    match bytes.len().saturating_mul(16) {
        n if n <= 4 * KIB => decode_limited::<T, { 4 * KIB }>(bytes),
        n if n <= 64 * KIB => decode_limited::<T, { 64 * KIB }>(bytes),
        n if n <= KIB * KIB => decode_limited::<T, { KIB * KIB }>(bytes),
        n if n <= 16 * KIB * KIB => decode_limited::<T, { 16 * KIB * KIB }>(bytes),
        n if n <= 256 * KIB * KIB => decode_limited::<T, { 256 * KIB * KIB }>(bytes),
        _ => decode_limited::<T, { usize::MAX >> 1 }>(bytes),
    }
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
    fn valid_values_decode_at_every_size_class() {
        for len in [0, 10, 5000, 70_000, 2 << 20] {
            let value = ("x".repeat(len), vec![7u8; len / 2]);
            let bytes = bincode::serde::encode_to_vec(&value, bincode::config::standard()).unwrap();
            let (back, used) = decode_bounded::<(String, Vec<u8>)>(&bytes).unwrap();
            assert_eq!((back, used), (value, bytes.len()));
        }
    }
}
