//! The wire format shared by the peer port and the client port.
//!
//! A frame is `magic (4 bytes) | protocol version (u16 BE) | payload length (u32 BE) | payload`,
//! where the payload is one bincode-2 (serde API) value. Invariants:
//! - a length prefix above the connection's `max_frame_bytes` is refused before any payload byte
//!   is read or any buffer is allocated for it;
//! - decoding is bounded twice: by the frame length and by bincode's own claimed-size limit
//!   (`DECODE_LIMIT_BYTES`), so a hostile length field inside the payload cannot make us allocate;
//! - a frame must decode to exactly its payload: trailing bytes are an error, not ignored;
//! - the payload buffer grows as bytes arrive (`READ_CHUNK_BYTES` at a time), never to the
//!   declared length up front, so a peer that announces 4 MiB and sends 10 bytes costs 10
//!   bytes; a server also charges what it holds to a port-wide `FrameBudget` and gives a frame
//!   in progress `payload_timeout` to arrive (`ReadLimits`).
//!
//! Any error on a connection closes that connection only; callers log it with the peer address.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

/// First bytes of every frame: "QKV" + a format byte.
pub const FRAME_MAGIC: [u8; 4] = *b"QKV\x01";
/// Bumped on any incompatible change of a payload type (2: peer frames carry group-tagged
/// `PeerMessage`s; client requests name their shard).
pub const PROTOCOL_VERSION: u16 = 2;
pub const FRAME_HEADER_BYTES: usize = 10;
/// Absolute ceiling on any configured `max_frame_bytes` (bincode's decode limit is a constant).
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;
/// A payload buffer grows by at most this much per read (and is charged to the budget so).
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

type WireConfig = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT_BYTES>,
>;

fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame magic {found:02x?} (not a quorumkv peer or client?)")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported protocol version {found} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u16 },
    #[error("frame of {len_bytes} bytes exceeds max_frame_bytes = {max_frame_bytes}")]
    TooLarge {
        len_bytes: u64,
        max_frame_bytes: usize,
    },
    #[error(
        "connection closed in the middle of a frame ({read_bytes} of {expected_bytes} bytes read)"
    )]
    Truncated {
        read_bytes: usize,
        expected_bytes: usize,
    },
    #[error("undecodable frame payload: {0}")]
    Decode(String),
    #[error("frame payload has {trailing_bytes} trailing bytes after the value")]
    TrailingBytes { trailing_bytes: usize },
    #[error("cannot encode frame: {0}")]
    Encode(String),
    #[error(
        "the port's budget of {budget_bytes} bytes for incomplete frames is used up by other connections"
    )]
    BudgetExhausted { budget_bytes: usize },
    #[error("a frame of {expected_bytes} bytes did not arrive within {timeout_ms} ms ({read_bytes} bytes read)")]
    SlowFrame {
        read_bytes: usize,
        expected_bytes: usize,
        timeout_ms: u64,
    },
}

/// Bytes of incomplete frames held at once over all the connections of one port: a frame's
/// buffer is charged as it grows and released once the frame is decoded or dropped. A
/// connection that would go over it fails (`BudgetExhausted`) instead of waiting.
#[derive(Clone, Debug)]
pub struct FrameBudget {
    permits: Arc<Semaphore>,
    budget_bytes: usize,
    /// The most bytes ever charged at once (what the budget bounds; metrics report it).
    peak_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl FrameBudget {
    pub fn new(budget_bytes: usize) -> FrameBudget {
        let budget_bytes = budget_bytes.min(Semaphore::MAX_PERMITS);
        FrameBudget {
            permits: Arc::new(Semaphore::new(budget_bytes)),
            budget_bytes,
            peak_bytes: Arc::default(),
        }
    }

    /// Bytes charged to incomplete frames right now.
    pub fn charged_bytes(&self) -> usize {
        self.budget_bytes - self.permits.available_permits()
    }

    /// The most bytes charged at once since the budget was made.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes not charged to any frame right now.
    pub fn available_bytes(&self) -> usize {
        self.permits.available_permits()
    }
}

/// What one charge holds; given back when dropped.
struct BudgetCharge<'a> {
    budget: Option<&'a FrameBudget>,
    bytes: usize,
}

impl BudgetCharge<'_> {
    fn grow(&mut self, bytes: usize) -> Result<(), FrameError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let exhausted = || FrameError::BudgetExhausted {
            budget_bytes: budget.budget_bytes,
        };
        let n = u32::try_from(bytes).map_err(|_| exhausted())?;
        budget
            .permits
            .try_acquire_many(n)
            .map_err(|_| exhausted())?
            .forget();
        self.bytes += bytes;
        budget
            .peak_bytes
            .fetch_max(budget.charged_bytes(), std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for BudgetCharge<'_> {
    fn drop(&mut self) {
        if let Some(budget) = self.budget {
            budget.permits.add_permits(self.bytes);
        }
    }
}

/// How a server reads a frame from an untrusted connection.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits<'a> {
    pub max_frame_bytes: usize,
    /// Charged for the payload buffer while it fills (None: not charged).
    pub budget: Option<&'a FrameBudget>,
    /// Once a header has arrived, the whole payload must arrive within this (None: no limit).
    pub payload_timeout: Option<Duration>,
}

/// Encodes `value` as one complete frame (header included).
pub fn encode_frame<T: Serialize>(
    value: &T,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(FRAME_HEADER_BYTES + 64);
    encode_frame_into(value, max_frame_bytes, &mut buf)?;
    Ok(buf)
}

/// As `encode_frame`, into `buf` (cleared first), so that a connection reuses one buffer.
pub fn encode_frame_into<T: Serialize>(
    value: &T,
    max_frame_bytes: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buf.clear();
    buf.extend_from_slice(&FRAME_MAGIC);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    bincode::serde::encode_into_std_write(value, buf, wire_config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    let len_bytes = buf.len() - FRAME_HEADER_BYTES;
    if len_bytes > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len_bytes: len_bytes as u64,
            max_frame_bytes,
        });
    }
    let len = u32::try_from(len_bytes).map_err(|_| FrameError::TooLarge {
        len_bytes: len_bytes as u64,
        max_frame_bytes,
    })?;
    buf[6..10].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Decodes one frame payload (header already stripped).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    // Bounded by the payload's size, not only by DECODE_LIMIT_BYTES (crate::bounded_decode).
    let (value, used) = crate::bounded_decode::decode_bounded::<T>(payload)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes {
            trailing_bytes: payload.len() - used,
        });
    }
    Ok(value)
}

/// Writes one frame and flushes it (madsim sends nothing before `flush`).
pub async fn write_frame<W, T>(
    writer: &mut W,
    value: &T,
    max_frame_bytes: usize,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let buf = encode_frame(value, max_frame_bytes)?;
    writer.write_all(&buf).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame. `Ok(None)` is a clean end of stream at a frame boundary.
pub async fn read_frame<R, T>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let limits = ReadLimits {
        max_frame_bytes,
        budget: None,
        payload_timeout: None,
    };
    read_frame_limited(reader, &limits).await
}

/// Reads one frame under `limits`. `Ok(None)` is a clean end of stream at a frame boundary.
pub async fn read_frame_limited<R, T>(
    reader: &mut R,
    limits: &ReadLimits<'_>,
) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let max_frame_bytes = limits.max_frame_bytes;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let got = read_fully(reader, &mut header).await?;
    if got == 0 {
        return Ok(None);
    }
    if got < FRAME_HEADER_BYTES {
        return Err(FrameError::Truncated {
            read_bytes: got,
            expected_bytes: FRAME_HEADER_BYTES,
        });
    }
    let len_bytes = parse_header(&header, max_frame_bytes)?;
    let mut charge = BudgetCharge {
        budget: limits.budget,
        bytes: 0,
    };
    let mut payload = Vec::new();
    let read = read_payload(reader, len_bytes, &mut payload, &mut charge);
    let finished = match limits.payload_timeout {
        None => Some(read.await),
        Some(limit) => crate::deadline::timeout(limit, read).await.ok(),
    };
    match finished {
        Some(result) => result?,
        None => {
            return Err(FrameError::SlowFrame {
                read_bytes: FRAME_HEADER_BYTES + payload.len(),
                expected_bytes: FRAME_HEADER_BYTES + len_bytes,
                timeout_ms: limits
                    .payload_timeout
                    .map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            })
        }
    }
    decode_payload(&payload).map(Some)
}

/// Fills `payload` with `len_bytes` bytes, one chunk at a time, charging each before it is
/// allocated.
async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    len_bytes: usize,
    payload: &mut Vec<u8>,
    charge: &mut BudgetCharge<'_>,
) -> Result<(), FrameError> {
    while payload.len() < len_bytes {
        let start = payload.len();
        let chunk = READ_CHUNK_BYTES.min(len_bytes - start);
        charge.grow(chunk)?;
        payload.resize(start + chunk, 0);
        let got = read_fully(reader, &mut payload[start..]).await?;
        if got < chunk {
            return Err(FrameError::Truncated {
                read_bytes: FRAME_HEADER_BYTES + start + got,
                expected_bytes: FRAME_HEADER_BYTES + len_bytes,
            });
        }
    }
    Ok(())
}

/// Checks magic, version and length; returns the payload length.
pub fn parse_header(
    header: &[u8; FRAME_HEADER_BYTES],
    max_frame_bytes: usize,
) -> Result<usize, FrameError> {
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion { found: version });
    }
    let len = u32::from_be_bytes([header[6], header[7], header[8], header[9]]);
    let max = max_frame_bytes.min(DECODE_LIMIT_BYTES);
    if len as usize > max {
        return Err(FrameError::TooLarge {
            len_bytes: u64::from(len),
            max_frame_bytes: max,
        });
    }
    Ok(len as usize)
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
async fn read_fully<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        id: u64,
        data: Vec<u8>,
    }

    fn sample() -> Sample {
        Sample {
            id: 7,
            data: vec![1, 2, 3],
        }
    }

    async fn read_from(bytes: &[u8], max: usize) -> Result<Option<Sample>, FrameError> {
        let mut reader = bytes;
        read_frame::<_, Sample>(&mut reader, max).await
    }

    #[tokio::test]
    async fn round_trip_of_several_frames() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &sample(), 1024).await.unwrap();
        write_frame(
            &mut buf,
            &Sample {
                id: 8,
                data: vec![],
            },
            1024,
        )
        .await
        .unwrap();
        let mut reader = &buf[..];
        assert_eq!(
            read_frame::<_, Sample>(&mut reader, 1024).await.unwrap(),
            Some(sample())
        );
        assert_eq!(
            read_frame::<_, Sample>(&mut reader, 1024)
                .await
                .unwrap()
                .unwrap()
                .id,
            8
        );
        assert!(read_frame::<_, Sample>(&mut reader, 1024)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn garbage_is_rejected_by_magic() {
        let err = read_from(b"GET / HTTP/1.1\r\n\r\n", 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::BadMagic { .. }), "{err}");
    }

    #[tokio::test]
    async fn other_version_is_rejected() {
        let mut frame = encode_frame(&sample(), 1024).unwrap();
        frame[5] = 99;
        let err = read_from(&frame, 1024).await.unwrap_err();
        assert!(
            matches!(err, FrameError::UnsupportedVersion { found: 99 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_refused_before_reading() {
        let mut frame = encode_frame(&sample(), 1024).unwrap();
        frame[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = read_from(&frame, 1024).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len_bytes, .. } if len_bytes == u64::from(u32::MAX)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn truncated_frames_are_errors_at_every_cut() {
        let frame = encode_frame(&sample(), 1024).unwrap();
        for cut in 1..frame.len() {
            let err = read_from(&frame[..cut], 1024).await.unwrap_err();
            assert!(
                matches!(err, FrameError::Truncated { .. }),
                "cut {cut}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn hostile_inner_length_does_not_allocate() {
        // A valid header around a payload that claims a 2^62-byte vector.
        let mut payload = vec![7u8];
        payload.push(0xFF); // varint marker for u64
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let mut frame = FRAME_MAGIC.to_vec();
        frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        let err = read_from(&frame, 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[tokio::test]
    async fn trailing_bytes_are_an_error() {
        let mut frame = encode_frame(&sample(), 1024).unwrap();
        frame.push(0);
        let len = (frame.len() - FRAME_HEADER_BYTES) as u32;
        frame[6..10].copy_from_slice(&len.to_be_bytes());
        let err = read_from(&frame, 1024).await.unwrap_err();
        assert!(
            matches!(err, FrameError::TrailingBytes { trailing_bytes: 1 }),
            "{err}"
        );
    }

    #[test]
    fn encoding_over_the_limit_is_refused() {
        let big = Sample {
            id: 1,
            data: vec![0; 2048],
        };
        assert!(matches!(
            encode_frame(&big, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    /// Issue 16: 200 connections each holding an incomplete 4 MiB frame grew a node by 800 MB.
    /// The buffer now follows the bytes that arrived, and the budget refuses what is over it.
    #[tokio::test]
    async fn an_incomplete_big_frame_holds_only_what_arrived_and_is_charged() {
        let budget = FrameBudget::new(1 << 20);
        let limits = ReadLimits {
            max_frame_bytes: 4 << 20,
            budget: Some(&budget),
            payload_timeout: Some(Duration::from_millis(200)),
        };
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut header = FRAME_MAGIC.to_vec();
        header.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        header.extend_from_slice(&(4u32 << 20).to_be_bytes());
        client.write_all(&header).await.unwrap();
        client.write_all(&[0u8; 10]).await.unwrap();
        let mut server = server;
        let read = read_frame_limited::<_, Sample>(&mut server, &limits);
        tokio::pin!(read);
        // While the frame is in progress, one chunk is charged, not 4 MiB.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut read)
                .await
                .is_err(),
            "a frame missing bytes completed"
        );
        assert_eq!(budget.available_bytes(), (1 << 20) - READ_CHUNK_BYTES);
        let err = read.await.unwrap_err();
        assert!(matches!(err, FrameError::SlowFrame { .. }), "{err}");
        assert_eq!(
            budget.available_bytes(),
            1 << 20,
            "the charge is given back"
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_budget_is_refused_and_the_budget_restored() {
        let budget = FrameBudget::new(READ_CHUNK_BYTES * 2);
        let limits = ReadLimits {
            max_frame_bytes: 4 << 20,
            budget: Some(&budget),
            payload_timeout: None,
        };
        let big = Sample {
            id: 1,
            data: vec![5; READ_CHUNK_BYTES * 3],
        };
        let frame = encode_frame(&big, 4 << 20).unwrap();
        let mut reader = &frame[..];
        let err = read_frame_limited::<_, Sample>(&mut reader, &limits)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::BudgetExhausted { .. }), "{err}");
        assert_eq!(budget.available_bytes(), READ_CHUNK_BYTES * 2);
        // A frame within the budget still decodes, at every size around a chunk.
        for len in [
            0,
            1,
            READ_CHUNK_BYTES - 20,
            READ_CHUNK_BYTES,
            READ_CHUNK_BYTES + 1,
        ] {
            let small = Sample {
                id: 2,
                data: vec![6; len],
            };
            let frame = encode_frame(&small, 4 << 20).unwrap();
            let mut reader = &frame[..];
            let got = read_frame_limited::<_, Sample>(&mut reader, &limits)
                .await
                .unwrap();
            assert_eq!(got, Some(small));
        }
        assert_eq!(budget.available_bytes(), READ_CHUNK_BYTES * 2);
    }
}
