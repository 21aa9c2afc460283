//! The wire format shared by the peer port and the client port.
//!
//! A frame is `magic (4 bytes) | protocol version (u16 BE) | payload length (u32 BE) | payload`,
//! where the payload is one bincode-2 (serde API) value. Invariants:
//! - a length prefix above the connection's `max_frame_bytes` is refused before any payload byte
//!   is read or any buffer is allocated for it;
//! - decoding is bounded twice: by the frame length and by bincode's own claimed-size limit
//!   (`DECODE_LIMIT_BYTES`), so a hostile length field inside the payload cannot make us allocate;
//! - a frame must decode to exactly its payload: trailing bytes are an error, not ignored.
//!
//! Any error on a connection closes that connection only; callers log it with the peer address.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// First bytes of every frame: "QKV" + a format byte.
pub const FRAME_MAGIC: [u8; 4] = *b"QKV\x01";
/// Bumped on any incompatible change of a payload type (2: peer frames carry group-tagged
/// `PeerMessage`s; client requests name their shard).
pub const PROTOCOL_VERSION: u16 = 2;
pub const FRAME_HEADER_BYTES: usize = 10;
/// Absolute ceiling on any configured `max_frame_bytes` (bincode's decode limit is a constant).
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;

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
}

/// Encodes `value` as one complete frame (header included).
pub fn encode_frame<T: Serialize>(
    value: &T,
    max_frame_bytes: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut buf = Vec::with_capacity(FRAME_HEADER_BYTES + 64);
    buf.extend_from_slice(&FRAME_MAGIC);
    buf.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    buf.extend_from_slice(&[0u8; 4]);
    bincode::serde::encode_into_std_write(value, &mut buf, wire_config())
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
    Ok(buf)
}

/// Decodes one frame payload (header already stripped).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(payload, wire_config())
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
    let mut payload = vec![0u8; len_bytes];
    let got = read_fully(reader, &mut payload).await?;
    if got < len_bytes {
        return Err(FrameError::Truncated {
            read_bytes: FRAME_HEADER_BYTES + got,
            expected_bytes: FRAME_HEADER_BYTES + len_bytes,
        });
    }
    decode_payload(&payload).map(Some)
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
}
