//! The front-door limits of the server loop against real loopback connections: a silent or
//! trickling caller is closed, a slow body gets 408, an idle keep-alive connection is closed, and
//! connections beyond the cap wait while the open ones keep working.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_http1::server::{Connection, Handler};
use sluice_http1::{Head, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers every request with the length of its body, or 408 when the body was too slow.
struct Echo;

impl Handler for Echo {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        let (status, body, keep) = match c.read_body(request, 1 << 20).await {
            Ok(body) => (200, body.len().to_string(), keep_alive),
            Err(e) if e.is_timeout() => (408, e.to_string(), false),
            Err(e) => (400, e.to_string(), false),
        };
        sluice_http1::push_status_line(&mut c.head, status);
        sluice_http1::push_content_length(&mut c.head, body.len());
        if !keep {
            sluice_http1::push_header(&mut c.head, "connection", b"close");
        }
        c.head.extend_from_slice(b"\r\n");
        c.send(body.as_bytes()).await && keep
    }
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(400),
        body_read_timeout: Duration::from_millis(300),
        min_body_rate: 1000,
        idle_timeout: Duration::from_millis(600),
        max_connections: 1000,
    }
}

async fn start(limits: Limits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sluice_http1::server::serve(listener, Arc::new(Echo), limits, std::future::pending()));
    addr
}

/// Reads until the answer to one request is complete (its body is short) or the peer closes.
async fn answer(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await.expect("no answer in 10 s") {
            Ok(0) | Err(_) => return text,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether the server closed `stream` (reads end) within 10 s, reading past any answer.
async fn closed(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn silent_and_trickling_callers_are_closed_while_others_are_served() {
    let addr = start(limits()).await;
    // Half say nothing; half send a head one byte at a time and never finish it.
    let mut silent = Vec::new();
    let mut trickling = Vec::new();
    for i in 0..500 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 { silent.push(stream) } else { trickling.push(stream) }
    }
    // Four bytes, 100 ms apart, then nothing more: the head is never finished.
    let head = b"POST /v2/models/m/infer HTTP/1.1\r\n";
    let trickler = tokio::spawn(async move {
        for byte in head.iter().take(4) {
            for s in &mut trickling {
                let _ = s.write_all(&[*byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        trickling
    });
    // Normal callers are served meanwhile, each on a new connection.
    for _ in 0..20 {
        let mut normal = TcpStream::connect(addr).await.expect("connect");
        normal.write_all(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nok").await.expect("write");
        let text = answer(&mut normal).await;
        assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n2"), "{text}");
    }
    let mut trickling = trickler.await.expect("join");
    for s in silent.iter_mut() {
        assert!(closed(s).await, "a silent connection was kept open");
    }
    for s in trickling.iter_mut() {
        let text = answer(s).await;
        assert!(text.starts_with("HTTP/1.1 408"), "a trickled head gets 408: {text:?}");
        assert!(closed(s).await, "a trickling connection was kept open");
    }
}

#[tokio::test]
async fn a_body_below_the_least_rate_gets_408_and_a_fast_one_is_read() {
    let addr = start(limits()).await;
    let slow = TcpStream::connect(addr).await.expect("connect");
    // Read while writing, so the answer is read before the server's close resets the writes.
    let (mut slow_in, mut slow_out) = slow.into_split();
    slow_out.write_all(b"POST / HTTP/1.1\r\ncontent-length: 100000\r\n\r\n").await.expect("write");
    // 10 bytes every 100 ms is 100 bytes/s, a tenth of the least rate.
    tokio::spawn(async move {
        for _ in 0..30 {
            if slow_out.write_all(&[b'x'; 10]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut fast = TcpStream::connect(addr).await.expect("connect");
    fast.write_all(b"POST / HTTP/1.1\r\ncontent-length: 5000\r\n\r\n").await.expect("write");
    fast.write_all(&[b'y'; 5000]).await.expect("write");
    assert!(answer(&mut fast).await.ends_with("5000"));
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), slow_in.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408") && text.contains("bytes/s"), "{text}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let addr = start(limits()).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(GET).await.expect("write");
    assert!(answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    // Within the idle timeout the connection carries another request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(GET).await.expect("write");
    assert!(answer(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert!(closed(&mut stream).await, "an idle connection was kept open");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_while_open_ones_keep_working() {
    let addr = start(Limits { max_connections: 2, idle_timeout: Duration::from_secs(30), ..limits() }).await;
    let mut first = TcpStream::connect(addr).await.expect("connect");
    let mut second = TcpStream::connect(addr).await.expect("connect");
    for s in [&mut first, &mut second] {
        s.write_all(GET).await.expect("write");
        assert!(answer(s).await.starts_with("HTTP/1.1 200"));
    }
    // The third waits in the backlog: connected by the kernel, not yet served.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    third.write_all(GET).await.expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
    assert!(early.is_err(), "a connection beyond the cap was served");
    // The open ones keep working.
    first.write_all(GET).await.expect("write");
    assert!(answer(&mut first).await.starts_with("HTTP/1.1 200"));
    // One closes: the waiting one is accepted and served.
    drop(second);
    assert!(answer(&mut third).await.starts_with("HTTP/1.1 200"));
}
