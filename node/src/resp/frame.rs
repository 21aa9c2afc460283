//! The wire format: a request is an array of bulk strings (or an inline line, as typed into
//! telnet); a reply is a `Reply`, encoded as RESP2 or RESP3 by the `redis-protocol` crate.
//!
//! Invariants: `parse_request` never buffers more than `max_request_bytes` of one request: a
//! header that announces more (argument count, bulk length) is refused as soon as it is read,
//! before its payload arrives, with Redis's own protocol error text; a refused request is
//! answered and the connection closed (the stream cannot be resynchronized).

use redis_protocol::resp2::types::{OwnedFrame as Resp2Frame, Resp2Frame as _};
use redis_protocol::resp3::types::{FrameMap, OwnedFrame as Resp3Frame, Resp3Frame as _};

/// Longest inline request line (Redis's PROTO_INLINE_MAX_SIZE).
pub const MAX_INLINE_BYTES: usize = 64 * 1024;
/// Longest `*<count>` or `$<len>` header line, digits and sign included.
const MAX_HEADER_LINE_BYTES: usize = 32;

#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    pub max_request_bytes: usize,
    pub max_args: usize,
}

/// A request the stream cannot recover from; the text is the Redis error sent before closing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

/// A complete request's arguments and the bytes it took.
pub type Parsed = (Vec<Vec<u8>>, usize);

fn protocol_error(what: &str) -> ProtocolError {
    ProtocolError(format!("ERR Protocol error: {what}"))
}

/// Parses one request from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the arguments and the bytes consumed. An empty inline line yields no arguments.
/// One-shot: a caller reading a stream keeps a `RequestParser` instead.
pub fn parse_request(buf: &[u8], limits: &FrameLimits) -> Result<Option<Parsed>, ProtocolError> {
    RequestParser::default().parse(buf, limits)
}

/// A request parser that resumes where it stopped: while a request arrives in pieces, each
/// call examines only the headers and bytes it has not examined yet, so a request that
/// arrives one byte at a time costs time linear in its length (re-parsing from the start on
/// every read made it quadratic). The request's bytes are decoded once, when complete.
///
/// Invariant: between two calls the caller only appends to the buffer, or removes bytes
/// before the request's start (progress is kept relative to that start); a parsed request
/// or an error resets the progress.
#[derive(Clone, Debug, Default)]
pub struct RequestParser {
    /// Multibulk: the argument count, once its header line was read.
    count: Option<usize>,
    /// Multibulk: arguments whose header was checked and whose payload was skipped.
    args_checked: usize,
    /// Multibulk: where the next argument's header starts. Inline: bytes searched for the
    /// newline so far.
    pos: usize,
    /// Bytes looked at by header and newline searches since the parser was made (what
    /// resuming bounds; tests check it).
    examined_bytes: u64,
}

impl RequestParser {
    /// `parse_request` for the request at the front of `buf`, resuming from the last call.
    pub fn parse(
        &mut self,
        buf: &[u8],
        limits: &FrameLimits,
    ) -> Result<Option<Parsed>, ProtocolError> {
        let result = match buf.first() {
            None => Ok(None),
            Some(b'*') => self.parse_multibulk(buf, limits),
            Some(_) => self.parse_inline(buf),
        };
        if !matches!(result, Ok(None)) {
            *self = RequestParser {
                examined_bytes: self.examined_bytes,
                ..RequestParser::default()
            };
        }
        result
    }

    /// Bytes examined by header and newline searches so far.
    pub fn examined_bytes(&self) -> u64 {
        self.examined_bytes
    }

    fn parse_multibulk(
        &mut self,
        buf: &[u8],
        limits: &FrameLimits,
    ) -> Result<Option<Parsed>, ProtocolError> {
        if !self.check_headers(buf, limits)? {
            return Ok(None);
        }
        let decoded =
            redis_protocol::resp2::decode::decode(buf).map_err(|e| protocol_error(e.details()))?;
        let Some((frame, consumed)) = decoded else {
            return Ok(None);
        };
        let items = match frame {
            Resp2Frame::Array(items) => items,
            // `*-1`: a null array carries no command.
            Resp2Frame::Null => Vec::new(),
            _ => return Err(protocol_error("expected an array of bulk strings")),
        };
        let args = items
            .into_iter()
            .map(|item| match item {
                Resp2Frame::BulkString(bytes) | Resp2Frame::SimpleString(bytes) => Ok(bytes),
                _ => Err(protocol_error("expected '$'")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((args, consumed)))
    }

    /// Checks the headers present so far against the limits, from where the last call
    /// stopped; false when the request is incomplete.
    fn check_headers(&mut self, buf: &[u8], limits: &FrameLimits) -> Result<bool, ProtocolError> {
        let count = match self.count {
            Some(count) => count,
            None => {
                let Some((count, pos)) = self.header_number(buf, 1, "invalid multibulk length")?
                else {
                    return Ok(false);
                };
                if count > limits.max_args as i64 {
                    return Err(protocol_error("invalid multibulk length"));
                }
                // A negative count (`*-1`) is a null array: no arguments.
                let count = usize::try_from(count).unwrap_or(0);
                self.count = Some(count);
                self.pos = pos;
                count
            }
        };
        while self.args_checked < count {
            let pos = self.pos;
            match buf.get(pos) {
                None => return Ok(false),
                Some(b'$') => {}
                Some(&other) => {
                    let got = char::from(other).escape_default().to_string();
                    return Err(protocol_error(&format!("expected '$', got '{got}'")));
                }
            }
            let Some((len, next)) = self.header_number(buf, pos + 1, "invalid bulk length")? else {
                return Ok(false);
            };
            if len < 0 || len as u64 > limits.max_request_bytes as u64 {
                return Err(protocol_error("invalid bulk length"));
            }
            self.pos = next + len as usize + 2;
            if self.pos > limits.max_request_bytes {
                return Err(protocol_error(&format!(
                    "request exceeds max_redis_request_bytes {}",
                    limits.max_request_bytes
                )));
            }
            self.args_checked += 1;
        }
        Ok(self.pos <= buf.len())
    }

    /// The number on the header line starting at `start` and the position after its CRLF.
    /// Looks at no more than `MAX_HEADER_LINE_BYTES` + 2 bytes.
    fn header_number(
        &mut self,
        buf: &[u8],
        start: usize,
        invalid: &str,
    ) -> Result<Option<(i64, usize)>, ProtocolError> {
        let rest = buf.get(start..).unwrap_or_default();
        let window = &rest[..rest.len().min(MAX_HEADER_LINE_BYTES + 2)];
        self.examined_bytes += window.len() as u64;
        let Some(end) = window.iter().position(|&b| b == b'\r') else {
            if rest.len() > MAX_HEADER_LINE_BYTES {
                return Err(protocol_error(invalid));
            }
            return Ok(None);
        };
        if rest.len() < end + 2 {
            return Ok(None);
        }
        let number = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|text| text.parse::<i64>().ok());
        match (number, rest[end + 1]) {
            (Some(n), b'\n') => Ok(Some((n, start + end + 2))),
            _ => Err(protocol_error(invalid)),
        }
    }

    fn parse_inline(&mut self, buf: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
        let from = self.pos.min(buf.len());
        self.examined_bytes += (buf.len() - from) as u64;
        let Some(newline) = buf[from..].iter().position(|&b| b == b'\n') else {
            if buf.len() > MAX_INLINE_BYTES {
                return Err(protocol_error("too big inline request"));
            }
            self.pos = buf.len();
            return Ok(None);
        };
        let newline = from + newline;
        if newline > MAX_INLINE_BYTES {
            // Refused whether the line arrived in one read or many.
            return Err(protocol_error("too big inline request"));
        }
        let line = buf[..newline]
            .strip_suffix(b"\r")
            .unwrap_or(&buf[..newline]);
        let args = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|word| !word.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        Ok(Some((args, newline + 1)))
    }
}

/// A reply, independent of the protocol version the connection speaks.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// RESP2 `$-1`, RESP3 `_`.
    Null,
    Array(Vec<Reply>),
    /// RESP3 map; a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    pub fn bulk_or_null(bytes: Option<Vec<u8>>) -> Reply {
        bytes.map_or(Reply::Null, Reply::Bulk)
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoded reply to `out`, in RESP3 when `resp3`, else RESP2.
    pub fn encode(self, resp3: bool, out: &mut Vec<u8>) {
        let start = out.len();
        let written = if resp3 {
            let frame = self.into_resp3();
            out.resize(start + frame.encode_len(false), 0);
            redis_protocol::resp3::encode::complete::encode(&mut out[start..], &frame, false)
        } else {
            let frame = self.into_resp2();
            out.resize(start + frame.encode_len(false), 0);
            redis_protocol::resp2::encode::encode(&mut out[start..], &frame, false)
        };
        // The buffer was sized by the encoder's own length: encoding into it cannot fail.
        let written = written.expect("a reply encodes into a buffer of its encode_len");
        out.truncate(start + written);
    }

    fn into_resp2(self) -> Resp2Frame {
        match self {
            Reply::Simple(text) => Resp2Frame::SimpleString(text.into_bytes()),
            Reply::Error(text) => Resp2Frame::Error(one_line(text)),
            Reply::Integer(n) => Resp2Frame::Integer(n),
            Reply::Bulk(bytes) => Resp2Frame::BulkString(bytes),
            Reply::Null => Resp2Frame::Null,
            Reply::Array(items) => {
                Resp2Frame::Array(items.into_iter().map(Reply::into_resp2).collect())
            }
            Reply::Map(pairs) => Resp2Frame::Array(
                pairs
                    .into_iter()
                    .flat_map(|(k, v)| [k.into_resp2(), v.into_resp2()])
                    .collect(),
            ),
        }
    }

    fn into_resp3(self) -> Resp3Frame {
        match self {
            Reply::Simple(text) => Resp3Frame::SimpleString {
                data: text.into_bytes(),
                attributes: None,
            },
            Reply::Error(text) => Resp3Frame::SimpleError {
                data: one_line(text),
                attributes: None,
            },
            Reply::Integer(n) => Resp3Frame::Number {
                data: n,
                attributes: None,
            },
            Reply::Bulk(bytes) => Resp3Frame::BlobString {
                data: bytes,
                attributes: None,
            },
            Reply::Null => Resp3Frame::Null,
            Reply::Array(items) => Resp3Frame::Array {
                data: items.into_iter().map(Reply::into_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => {
                let mut data = FrameMap::default();
                for (k, v) in pairs {
                    data.insert(k.into_resp3(), v.into_resp3());
                }
                Resp3Frame::Map {
                    data,
                    attributes: None,
                }
            }
        }
    }
}

/// A simple error must be one line.
fn one_line(text: String) -> String {
    if text.contains(['\r', '\n']) {
        text.replace(['\r', '\n'], " ")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_request_bytes: 1024,
        max_args: 8,
    };

    fn parse(bytes: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
        parse_request(bytes, &LIMITS)
    }

    #[test]
    fn multibulk_requests_parse_whole_or_wait() {
        let request = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        let (args, used) = parse(request).unwrap().unwrap();
        assert_eq!(args, vec![b"GET".to_vec(), b"a".to_vec()]);
        assert_eq!(used, request.len());
        for cut in 0..request.len() {
            assert_eq!(parse(&request[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn inline_requests_split_on_spaces() {
        let (args, used) = parse(b"SET  a b\r\nGET").unwrap().unwrap();
        assert_eq!(args, vec![b"SET".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(used, 10);
        assert_eq!(parse(b"\r\n").unwrap(), Some((vec![], 2)));
    }

    #[test]
    fn oversized_headers_are_refused_before_their_payload() {
        let err = |bytes: &[u8]| parse(bytes).unwrap_err().0;
        assert_eq!(
            err(b"*9\r\n"),
            "ERR Protocol error: invalid multibulk length"
        );
        assert_eq!(
            err(b"*1\r\n$999999999\r\n"),
            "ERR Protocol error: invalid bulk length"
        );
        assert_eq!(
            err(b"*1\r\n$-5\r\n"),
            "ERR Protocol error: invalid bulk length"
        );
        assert_eq!(err(b"*1\r\nx"), "ERR Protocol error: expected '$', got 'x'");
        assert_eq!(
            err(b"*abc\r\n"),
            "ERR Protocol error: invalid multibulk length"
        );
        let two_halves = b"*2\r\n$600\r\n";
        let mut request = two_halves.to_vec();
        request.extend(vec![b'x'; 600]);
        request.extend(b"\r\n$600\r\n");
        assert!(err(&request).contains("max_redis_request_bytes"));
        assert_eq!(
            err(&vec![b'a'; MAX_INLINE_BYTES + 1]),
            "ERR Protocol error: too big inline request"
        );
    }

    /// Feeds `request` to one resumable parser `step` bytes at a time, as a socket would.
    fn parse_in_pieces(
        request: &[u8],
        step: usize,
        limits: &FrameLimits,
    ) -> (Result<Option<Parsed>, ProtocolError>, u64) {
        let mut parser = RequestParser::default();
        let mut end = 0;
        loop {
            end = (end + step).min(request.len());
            let result = parser.parse(&request[..end], limits);
            if !matches!(result, Ok(None)) || end == request.len() {
                return (result, parser.examined_bytes());
            }
        }
    }

    #[test]
    fn a_request_arriving_byte_by_byte_is_examined_in_linear_time() {
        // 1,000 arguments and a 64 KiB inline line, one byte per read: the parser looks at
        // each byte a bounded number of times (before: every header again on every read).
        let limits = FrameLimits {
            max_request_bytes: 1 << 20,
            max_args: 1000,
        };
        let mut request = b"*1000\r\n".to_vec();
        for i in 0..1000 {
            let arg = format!("{i}");
            request.extend(format!("${}\r\n{arg}\r\n", arg.len()).bytes());
        }
        let (whole, _) = parse_in_pieces(&request, request.len(), &limits);
        let (pieces, examined) = parse_in_pieces(&request, 1, &limits);
        assert_eq!(pieces, whole);
        assert_eq!(whole.unwrap().unwrap().0.len(), 1000);
        assert!(
            examined <= 40 * request.len() as u64,
            "{examined} bytes examined for a {}-byte request",
            request.len()
        );

        let mut line = vec![b'a'; MAX_INLINE_BYTES - 2];
        line.extend(b"\r\n");
        let (result, examined) = parse_in_pieces(&line, 1, &limits);
        assert_eq!(result.unwrap().unwrap().1, line.len());
        assert!(examined <= line.len() as u64, "{examined} bytes examined");
    }

    #[test]
    fn parsing_in_pieces_gives_what_parsing_at_once_gives() {
        let requests: [&[u8]; 6] = [
            b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n",
            b"PING\r\n",
            b"*-1\r\n",
            b"*1\r\n$-5\r\n",
            b"*2\r\n$1\r\na\r\nx",
            b"*1\r\n$3\r\nabcXY",
        ];
        for request in requests {
            let whole = parse(request);
            for step in 1..request.len() {
                assert_eq!(
                    parse_in_pieces(request, step, &LIMITS).0,
                    whole,
                    "{request:?}"
                );
            }
        }
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        let encode = |reply: Reply, resp3: bool| {
            let mut out = Vec::new();
            reply.encode(resp3, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(encode(Reply::Null, false), "$-1\r\n");
        assert_eq!(encode(Reply::Null, true), "_\r\n");
        assert_eq!(encode(Reply::Integer(-3), false), ":-3\r\n");
        assert_eq!(encode(Reply::error("ERR x\ny"), false), "-ERR x y\r\n");
        let map = Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]);
        assert_eq!(encode(map.clone(), false), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(encode(map, true), "%1\r\n$1\r\na\r\n:1\r\n");
    }
}
