//! One Redis connection: requests parsed from a read buffer, replies gathered in a write buffer.
//!
//! Pipelining: replies to requests that arrived together are written together; output is
//! flushed only when no complete request is left in the read buffer, so a client that sends 16
//! commands at once gets 16 replies in one write, in order. Invariant: the read buffer never
//! holds more than one request's `max_request_bytes` beyond what was already parsed (the frame
//! parser refuses longer requests as soon as their headers say so), and a request arriving in
//! pieces is parsed incrementally (`RequestParser`): each read costs what it brought.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::transport::stream::Stream;

use super::frame::{FrameLimits, ProtocolError, Reply, RequestParser};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Connection {
    stream: Stream,
    limits: FrameLimits,
    input: Vec<u8>,
    /// Bytes of `input` already parsed.
    parsed: usize,
    /// Progress on the request at `input[parsed..]`: each read resumes it, never restarts it.
    parser: RequestParser,
    output: Vec<u8>,
}

impl Connection {
    pub fn new(stream: Stream, limits: FrameLimits) -> Connection {
        Connection {
            stream,
            limits,
            input: Vec::with_capacity(READ_CHUNK_BYTES),
            parsed: 0,
            parser: RequestParser::default(),
            output: Vec::new(),
        }
    }

    /// The next request's arguments (never empty); `None` when the client closed the
    /// connection. Flushes queued replies before waiting for more input.
    pub async fn next_request(&mut self) -> Result<Option<Vec<Vec<u8>>>, ConnectionError> {
        loop {
            let parsed = self
                .parser
                .parse(&self.input[self.parsed..], &self.limits)?;
            if let Some((args, used)) = parsed {
                self.parsed += used;
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(args));
            }
            self.compact();
            self.flush().await?;
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let read = self.stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(None);
            }
            self.input.extend_from_slice(&chunk[..read]);
        }
    }

    pub fn queue(&mut self, reply: Reply, resp3: bool) {
        reply.encode(resp3, &mut self.output);
    }

    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await?;
            self.output.clear();
        }
        Ok(())
    }

    fn compact(&mut self) {
        if self.parsed > 0 {
            self.input.drain(..self.parsed);
            self.parsed = 0;
        }
    }
}
