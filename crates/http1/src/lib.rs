//! HTTP/1.1 framing for Sluice's hot paths: message heads, bodies delimited by `Content-Length`
//! or chunked coding, keep-alive, written out with one vectored write per message.
//!
//! Why not hyper here: a reverse proxy of small scoring requests spends more CPU in a general HTTP
//! stack (a task and a channel per upstream connection, header maps, boxed body streams) than in
//! forwarding itself. This crate keeps a message's head as the bytes that arrived plus offsets of
//! its parts, so forwarding a header is a copy of a slice, and a body is one `Bytes` split off the
//! read buffer. Parsing of the head itself is httparse's, which is also hyper's parser.
//!
//! What it refuses, as a proxy in front of other servers must (RFC 9112): a request with both
//! `Transfer-Encoding` and `Content-Length`, disagreeing `Content-Length` values, transfer codings
//! other than `chunked`, heads over [`MAX_HEAD_BYTES`], bodies over the caller's limit.
//!
//! [`server`] runs the keep-alive connection loop that the gateway and the scoring server share;
//! [`encoding`] decodes and compresses bodies in `gzip` and `deflate`.

mod date;
pub mod encoding;
mod limits;
pub mod poll;
pub mod server;
pub mod stream;
pub mod tls;

pub use date::push_date;
pub use limits::Limits;

use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest message head accepted (start line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers in one message head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (CRLF included) or trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes asked of the socket per read while a message is incomplete.
const READ_CHUNK: usize = 16 * 1024;

/// Every way reading a message fails.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the connection before the first byte of a message: a normal end.
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a message")]
    Incomplete,
    #[error("message head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed message head: {0}")]
    Malformed(String),
    #[error("body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("malformed chunked body")]
    BadChunk,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the peer was too slow: a head past its header-read timeout, or a body below its
    /// least rate (see [`Limits`]). A server answers 408.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut)
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no length given on a request; HEAD answers, 1xx, 204 and 304 responses).
    Empty,
    Length(u64),
    Chunked,
    /// A response without a length: the body runs until the server closes the connection.
    UntilClose,
}

/// A parsed message head: the bytes that arrived, with the offsets of its parts.
#[derive(Debug, Clone)]
pub struct Head {
    bytes: Bytes,
    /// Request: method and target. Response: the reason phrase, and an empty range.
    first: Range<usize>,
    second: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Response status; 0 on a request.
    pub status: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub framing: Framing,
    /// Whether the connection may carry another message after this one.
    pub keep_alive: bool,
    /// A request that waits for `100 Continue` before sending its body.
    pub expect_continue: bool,
}

impl Head {
    fn text(&self, range: &Range<usize>) -> &str {
        // httparse accepted these bytes as tokens or a request target: ASCII.
        std::str::from_utf8(&self.bytes[range.clone()]).unwrap_or_default()
    }

    /// The request method.
    pub fn method(&self) -> &str {
        self.text(&self.first)
    }

    /// The request target as sent (origin form `/path?query`, usually).
    pub fn target(&self) -> &str {
        self.text(&self.second)
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.raw_headers().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }

    /// Every header as bytes: the names are tokens (httparse checked them), so finding one by
    /// name needs no UTF-8 check of every name on the way, which [`Head::headers`] makes.
    fn raw_headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers.iter().map(|(n, v)| (&self.bytes[n.clone()], &self.bytes[v.clone()]))
    }

    /// Every header in arrival order, names as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (self.text(n), &self.bytes[v.clone()]))
    }

    /// Whether `name` describes only this hop: the standard hop-by-hop headers and any header the
    /// `Connection` header names. A proxy must not forward these.
    pub fn is_hop_by_hop(&self, name: &str) -> bool {
        const HOP: [&str; 9] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
            || self
                .headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .any(|(_, v)| tokens(v).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    }
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// Where `part`, a slice httparse returned, lies in `base`. A part that is not inside `base` (an
/// absent reason phrase is an empty static string, say) is the empty range at 0, never a range
/// computed from an unrelated address.
fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    if part.is_empty() || start > base.len() || part.len() > base.len() - start {
        return 0..0;
    }
    start..start + part.len()
}

/// What the headers say about framing and the connection, checked as RFC 9112 asks of a proxy.
struct Semantics {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

fn semantics(headers: &[httparse::Header<'_>]) -> Result<Semantics, Error> {
    let mut s = Semantics { length: None, chunked: false, close: false, keep_alive: false, expect_continue: false };
    let mut transfer_encoding = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            for value in tokens(h.value) {
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| Error::Malformed("Content-Length is not a number".into()))?;
                if s.length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("Content-Length values disagree".into()));
                }
                s.length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in tokens(h.value) {
                if !coding.eq_ignore_ascii_case(b"chunked") || s.chunked {
                    return Err(Error::Malformed(format!(
                        "unsupported Transfer-Encoding '{}': only a single 'chunked' is accepted",
                        String::from_utf8_lossy(h.value)
                    )));
                }
                s.chunked = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                s.close |= t.eq_ignore_ascii_case(b"close");
                s.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            s.expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if transfer_encoding && s.length.is_some() {
        return Err(Error::Malformed("both Transfer-Encoding and Content-Length are set".into()));
    }
    if transfer_encoding && !s.chunked {
        return Err(Error::Malformed("empty Transfer-Encoding".into()));
    }
    Ok(s)
}

fn keep_alive(minor_version: u8, s: &Semantics) -> bool {
    if minor_version >= 1 { !s.close } else { s.keep_alive && !s.close }
}

fn head_error(e: httparse::Error) -> Error {
    match e {
        httparse::Error::TooManyHeaders => Error::HeadTooLarge,
        other => Error::Malformed(other.to_string()),
    }
}

/// Parses a request head at the start of `buf` and splits it off. `None` while incomplete.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut raw);
    let len = match request.parse(buf).map_err(head_error)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => return Err(Error::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let s = semantics(request.headers)?;
    let minor_version = request.version.unwrap_or(1);
    let base: &[u8] = buf;
    let first = offset(base, request.method.unwrap_or_default().as_bytes());
    let second = offset(base, request.path.unwrap_or_default().as_bytes());
    let headers = request.headers.iter().map(|h| (offset(base, h.name.as_bytes()), offset(base, h.value))).collect();
    let framing = match (s.chunked, s.length) {
        (true, _) => Framing::Chunked,
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    let head = Head {
        first,
        second,
        headers,
        status: 0,
        minor_version,
        framing,
        keep_alive: keep_alive(minor_version, &s),
        expect_continue: s.expect_continue && framing != Framing::Empty && minor_version >= 1,
        bytes: buf.split_to(len).freeze(),
    };
    Ok(Some(head))
}

/// Parses a response head at the start of `buf` and splits it off. `None` while incomplete.
/// `to_head` says whether the request was HEAD, whose answer has no body whatever it declares.
pub fn parse_response(buf: &mut BytesMut, to_head: bool) -> Result<Option<Head>, Error> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut raw);
    let len = match response.parse(buf).map_err(head_error)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= MAX_HEAD_BYTES => return Err(Error::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let s = semantics(response.headers)?;
    let status = response.code.unwrap_or(0);
    let minor_version = response.version.unwrap_or(1);
    let base: &[u8] = buf;
    let first = offset(base, response.reason.unwrap_or_default().as_bytes());
    let headers = response.headers.iter().map(|h| (offset(base, h.name.as_bytes()), offset(base, h.value))).collect();
    let framing = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if s.chunked {
        Framing::Chunked
    } else if let Some(n) = s.length {
        if n == 0 { Framing::Empty } else { Framing::Length(n) }
    } else {
        Framing::UntilClose
    };
    let head = Head {
        first,
        second: 0..0,
        headers,
        status,
        minor_version,
        framing,
        keep_alive: keep_alive(minor_version, &s) && framing != Framing::UntilClose,
        expect_continue: false,
        bytes: buf.split_to(len).freeze(),
    };
    Ok(Some(head))
}

/// Reads into `buf` until `parse` finds a whole head. [`Error::Closed`] when the peer closed
/// before sending anything.
pub async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    parse: impl Fn(&mut BytesMut) -> Result<Option<Head>, Error>,
) -> Result<Head, Error> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse(buf)?
        {
            return Ok(head);
        }
        fill(io, buf).await.map_err(|e| match e {
            Error::Incomplete if buf.is_empty() => Error::Closed,
            e => e,
        })?;
    }
}

/// One read of more bytes into `buf`; [`Error::Incomplete`] at end of stream.
async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<(), Error> {
    buf.reserve(READ_CHUNK);
    match io.read_buf(buf).await? {
        0 => Err(Error::Incomplete),
        _ => Ok(()),
    }
}

/// Reads the body `framing` describes, at most `limit` bytes of it, leaving whatever follows in
/// `buf` (the next pipelined message).
pub async fn read_body<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
    limit: usize,
) -> Result<Bytes, Error> {
    match framing {
        Framing::Empty => Ok(Bytes::new()),
        Framing::Length(n) => {
            let n = usize::try_from(n).ok().filter(|&n| n <= limit).ok_or(Error::BodyTooLarge { limit })?;
            if buf.len() >= n {
                return Ok(buf.split_to(n).freeze());
            }
            if n > OWN_BUFFER_BODY {
                return read_large_body(io, buf, n).await;
            }
            buf.reserve(n - buf.len());
            while buf.len() < n {
                if io.read_buf(buf).await? == 0 {
                    return Err(Error::Incomplete);
                }
            }
            Ok(buf.split_to(n).freeze())
        }
        Framing::Chunked => read_chunked(io, buf, limit).await,
        Framing::UntilClose => {
            loop {
                if buf.len() > limit {
                    return Err(Error::BodyTooLarge { limit });
                }
                buf.reserve(READ_CHUNK);
                if io.read_buf(buf).await? == 0 {
                    break;
                }
            }
            Ok(buf.split().freeze())
        }
    }
}

/// Bodies larger than this are read into a buffer of their own rather than the connection's:
/// the connection's buffer would otherwise keep the whole allocation alive (its tail shares it)
/// for as long as the connection lives, long after the body was answered and dropped.
const OWN_BUFFER_BODY: usize = 256 * 1024;

/// Reads a body of `n` bytes, of which `buf` holds the first ones (and nothing after), into a
/// buffer of exactly its size that is freed with the body.
async fn read_large_body<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut, n: usize) -> Result<Bytes, Error> {
    let mut body = BytesMut::with_capacity(n);
    body.extend_from_slice(&buf.split());
    while body.len() < n {
        // Never past the body: what follows belongs to the next request.
        let want = (n - body.len()) as u64;
        if (&mut *io).take(want).read_buf(&mut body).await? == 0 {
            return Err(Error::Incomplete);
        }
    }
    Ok(body.freeze())
}

/// The position of the first CRLF in `buf`, reading more until one arrives. A line longer than
/// [`MAX_CHUNK_LINE`] with its CRLF is refused however it arrives, in one read or in many.
async fn line_end<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut) -> Result<usize, Error> {
    let mut searched = 0;
    loop {
        if let Some(i) = buf[searched..].windows(2).position(|w| w == b"\r\n") {
            let end = searched + i;
            return if end + 2 > MAX_CHUNK_LINE { Err(Error::BadChunk) } else { Ok(end) };
        }
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(Error::BadChunk);
        }
        searched = buf.len().saturating_sub(1);
        fill(io, buf).await?;
    }
}

/// `1*HEXDIG [ BWS ";" extensions ]`: the extensions are ignored.
fn chunk_size(line: &[u8]) -> Result<usize, Error> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(Error::BadChunk);
    }
    let text = std::str::from_utf8(digits).map_err(|_| Error::BadChunk)?;
    usize::from_str_radix(text, 16).map_err(|_| Error::BadChunk)
}

async fn read_chunked<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut, limit: usize) -> Result<Bytes, Error> {
    let mut body = BytesMut::new();
    loop {
        let end = line_end(io, buf).await?;
        let size = chunk_size(&buf[..end])?;
        buf.advance(end + 2);
        if size == 0 {
            // Trailer fields, up to the empty line; dropped (a proxy may do so).
            let mut trailers = 0;
            loop {
                let end = line_end(io, buf).await?;
                buf.advance(end + 2);
                trailers += end + 2;
                if end == 0 {
                    return Ok(body.freeze());
                }
                if trailers > MAX_CHUNK_LINE {
                    return Err(Error::BadChunk);
                }
            }
        }
        if body.len() + size > limit {
            return Err(Error::BodyTooLarge { limit });
        }
        while buf.len() < size + 2 {
            buf.reserve(size + 2 - buf.len());
            if io.read_buf(buf).await? == 0 {
                return Err(Error::Incomplete);
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(Error::BadChunk);
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

/// Appends `HTTP/1.1 {status} {reason}\r\n`.
pub fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `{name}: {value}\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `content-length: {n}\r\n`.
pub fn push_content_length(out: &mut Vec<u8>, n: usize) {
    push_header(out, "content-length", itoa::Buffer::new().format(n).as_bytes());
}

/// Writes `head` then `body`, gathered into as few writes as the socket allows.
pub async fn write_message<W: AsyncWrite + Unpin>(io: &mut W, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    let total = head.len() + body.len();
    while written < total {
        let n = if written < head.len() {
            let parts = [std::io::IoSlice::new(&head[written..]), std::io::IoSlice::new(body)];
            io.write_vectored(&parts).await?
        } else {
            io.write(&body[written - head.len()..]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// `value` percent-encoded for a URL's path segment or query value: everything but RFC 3986's
/// unreserved characters (letters, digits, `-._~`) as `%XX`.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reason phrase of the statuses Sluice sends or commonly forwards; others get none, which
/// HTTP allows.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
