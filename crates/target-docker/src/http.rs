//! One HTTP/1.1 request per connection, for the Engine API (over its Unix socket) and the
//! replicas' readiness probes (over TCP). The framing is `sluice-http1`'s, the same code the
//! gateway reads upstream answers with: `Content-Length`, chunked and close-delimited bodies.
//!
//! Why a connection per request: the target makes a few calls a second at most, and a fresh
//! connection means no pool, no stale keep-alive connection after the engine restarts, and a
//! `Connection: close` answer whose end is never in doubt.

use bytes::{Bytes, BytesMut};
use sluice_http1::stream::Stream;
use sluice_http1::{Error, parse_response, push_content_length, push_header, read_body, read_head, write_message};

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

/// A request's body and its media type.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

/// Sends `method target` to `addr` (`unix:PATH` or `host:port`) on a new connection and reads the
/// whole answer, refusing a body over `limit` bytes. No timeout of its own: callers bound it.
pub async fn request(
    addr: &str,
    method: &str,
    target: &str,
    body: Option<Body<'_>>,
    limit: usize,
) -> Result<Response, Error> {
    let mut io = Stream::connect(addr).await?;
    // A Unix socket has no host; the Engine ignores the value but HTTP/1.1 requires the header.
    let host = if addr.starts_with(sluice_http1::stream::UNIX_PREFIX) { "docker" } else { addr };
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(&mut head, "host", host.as_bytes());
    push_header(&mut head, "connection", b"close");
    let bytes = body.map_or(&[][..], |b| b.bytes);
    if let Some(b) = body {
        push_header(&mut head, "content-type", b.content_type.as_bytes());
    }
    // Always sent, also as 0: the Engine answers 411 to a POST without a length.
    push_content_length(&mut head, bytes.len());
    head.extend_from_slice(b"\r\n");
    write_message(&mut io, &head, bytes).await?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let to_head = method.eq_ignore_ascii_case("HEAD");
    let response = loop {
        let response = read_head(&mut io, &mut buf, |b| parse_response(b, to_head)).await?;
        // An interim answer (100 Continue) is followed by the real one.
        if !(100..200).contains(&response.status) {
            break response;
        }
    };
    let body = read_body(&mut io, &mut buf, response.framing, limit).await?;
    Ok(Response { status: response.status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A server on a fresh Unix socket that reads one request and answers `answer` as is, then
    /// closes. Returns the address and a handle yielding the request bytes it read.
    fn serve_once(answer: &'static [u8]) -> (String, tempfile::TempDir, tokio::task::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut req = Vec::new();
            let mut chunk = [0u8; 4096];
            // The head ends the request unless a body follows it.
            loop {
                let n = s.read(&mut chunk).await.expect("read");
                req.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer).await.expect("write");
            s.shutdown().await.expect("shutdown");
            req
        });
        (format!("unix:{}", path.display()), dir, task)
    }

    #[tokio::test]
    async fn reads_a_content_length_body_and_sends_the_request_it_was_given() {
        let (addr, _dir, server) = serve_once(b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n{\"Id\":\"ab\"}");
        let body = Body { content_type: "application/json", bytes: b"{\"Image\":\"x\"}" };
        let r = request(&addr, "POST", "/containers/create?name=a", Some(body), 1024).await.expect("answer");
        assert_eq!(r.status, 201);
        assert_eq!(&r.body[..], b"{\"Id\":\"ab\"}");
        let sent = String::from_utf8(server.await.expect("server")).expect("utf-8");
        assert!(sent.starts_with("POST /containers/create?name=a HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("content-type: application/json\r\n"), "{sent}");
        assert!(sent.contains("content-length: 13\r\n"), "{sent}");
        assert!(sent.contains("connection: close\r\n"), "{sent}");
        assert!(sent.ends_with("\r\n\r\n{\"Image\":\"x\"}"), "{sent}");
    }

    #[tokio::test]
    async fn decodes_a_chunked_body() {
        let (addr, _dir, _server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
        );
        let r = request(&addr, "GET", "/containers/x/logs", None, 1024).await.expect("answer");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"hello, world");
    }

    #[tokio::test]
    async fn reads_a_body_that_ends_with_the_connection() {
        let (addr, _dir, _server) = serve_once(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
        let r = request(&addr, "GET", "/_ping", None, 1024).await.expect("answer");
        assert_eq!(&r.body[..], b"until close");
    }

    #[tokio::test]
    async fn posts_an_empty_body_with_a_zero_length() {
        let (addr, _dir, server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let r = request(&addr, "POST", "/containers/x/start", None, 1024).await.expect("answer");
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let sent = String::from_utf8(server.await.expect("server")).expect("utf-8");
        assert!(sent.contains("content-length: 0\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn skips_an_interim_answer() {
        let (addr, _dir, _server) =
            serve_once(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        let r = request(&addr, "GET", "/_ping", None, 1024).await.expect("answer");
        assert_eq!((r.status, &r.body[..]), (200, &b"OK"[..]));
    }

    #[tokio::test]
    async fn refuses_a_body_over_the_limit_and_a_truncated_one() {
        let (addr, _dir, _server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        let e = request(&addr, "GET", "/", None, 4).await.expect_err("over the limit");
        assert!(matches!(e, Error::BodyTooLarge { limit: 4 }), "{e}");
        let (addr, _dir, _server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234");
        let e = request(&addr, "GET", "/", None, 1024).await.expect_err("cut short");
        assert!(matches!(e, Error::Incomplete), "{e}");
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_io_error() {
        let e = request("unix:/nonexistent/docker.sock", "GET", "/_ping", None, 1024).await.expect_err("no socket");
        assert!(matches!(e, Error::Io(_)), "{e}");
    }
}
