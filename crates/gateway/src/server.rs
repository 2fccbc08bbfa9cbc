//! The gateway's HTTP/1.1 server: one task per caller connection that reads a request, decides
//! where it goes, reads its body, forwards it and writes the answer, then waits for the next one.
//!
//! Built on `sluice-http1` rather than hyper and axum because the gateway's whole job is this
//! loop: keeping each request's work in one task, with the head forwarded as slices of the bytes
//! that arrived, cut the CPU the gateway spends per proxied request (see benches/RESULTS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::HeaderValue;
use sluice_http1::{Error as WireError, Framing, Head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::Gateway;
use crate::error::GatewayError;
use crate::proxy::{Outcome, Outgoing, VERSION_HEADER};

/// Bytes of pipelined requests buffered while the current one is forwarded; past that the
/// caller's socket is not read until the answer is written.
const MAX_READ_AHEAD: usize = 1 << 20;

/// Serves the gateway on `listener` until `shutdown` resolves; requests in flight are answered
/// first, and idle connections are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns `None` once all have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let pacer = tokio::spawn(pace_timers());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, gateway.clone(), stop_rx.clone(), alive_tx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    pacer.abort();
    Ok(())
}

/// Keeps a timer due within a second on this runtime, for as long as it is polled.
///
/// Every proxied request arms a timer (the upstream timeout). Tokio wakes its event loop through
/// an eventfd whenever a new timer is due before the loop's next planned wake-up, and a loop with
/// no timers has none planned: so on a lightly loaded gateway each request paid one extra write
/// and one extra `epoll_wait`. A timer that is always due sooner than any request's timeout makes
/// those wake-ups unnecessary, at the cost of one wake-up per second.
async fn pace_timers() {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> bool {
    buf.reserve(8 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

/// Resolves when the caller closes its side (or its socket fails) while a request is forwarded;
/// pipelined bytes that arrive meanwhile are kept for later.
async fn caller_gone(stream: &mut TcpStream, buf: &mut BytesMut) {
    while buf.len() < MAX_READ_AHEAD {
        if !read_more(stream, buf).await {
            return;
        }
    }
    std::future::pending().await
}

async fn connection(
    mut stream: TcpStream,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(1024);
    loop {
        // Between requests, a shutdown closes the connection.
        if buf.is_empty() {
            tokio::select! {
                biased;
                more = read_more(&mut stream, &mut buf) => if !more { return },
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
        let request = match sluice_http1::read_head(&mut stream, &mut buf, sluice_http1::parse_request).await {
            Ok(request) => request,
            Err(WireError::Closed | WireError::Incomplete | WireError::Io(_)) => return,
            Err(e) => {
                let e = match e {
                    WireError::HeadTooLarge => GatewayError::HeadersTooLarge(e.to_string()),
                    e => GatewayError::BadRequest(e.to_string()),
                };
                gateway.metrics.refused(e.reason());
                let _ = respond(&mut stream, &mut out, &Reply::error(&e, None), false, false).await;
                return;
            }
        };
        let keep_alive = request.keep_alive && !*stop.borrow();
        let kept = exchange(&gateway, &mut stream, &mut buf, &mut out, &request, keep_alive).await;
        if !kept {
            // Let the caller read the answer before the close: shut down our side first.
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Handles one request; returns whether the connection stays open.
async fn exchange(
    gw: &Arc<Gateway>,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    request: &Head,
    keep_alive: bool,
) -> bool {
    let started = Instant::now();
    let to_head = request.method() == "HEAD";
    let path = request.target().split('?').next().unwrap_or_default();
    if let Some(reply) = gw.local(request.method(), path) {
        let keep_alive = keep_alive && skip_body(stream, buf, request, gw.settings.max_body_bytes).await;
        return respond(stream, out, &reply, to_head, keep_alive).await && keep_alive;
    }
    let refuse = |e: GatewayError| {
        gw.metrics.refused(e.reason());
        Reply::error(&e, None)
    };
    let decision = match gw.decide(request) {
        Ok(d) => d,
        Err(e) => {
            let keep_alive = keep_alive && skip_body(stream, buf, request, gw.settings.max_body_bytes).await;
            return respond(stream, out, &refuse(e), to_head, keep_alive).await && keep_alive;
        }
    };
    let limit = gw.settings.max_body_bytes;
    if matches!(request.framing, Framing::Length(n) if n > limit as u64) {
        let e = GatewayError::PayloadTooLarge { limit };
        let _ = respond(stream, out, &refuse(e), to_head, false).await;
        return false;
    }
    if request.expect_continue && buf.is_empty() && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
        return false;
    }
    let body = match sluice_http1::read_body(stream, buf, request.framing, limit).await {
        Ok(body) => body,
        Err(WireError::BodyTooLarge { limit }) => {
            let _ = respond(stream, out, &refuse(GatewayError::PayloadTooLarge { limit }), to_head, false).await;
            return false;
        }
        Err(e @ (WireError::BadChunk | WireError::Malformed(_))) => {
            let e = GatewayError::BadRequest(format!("could not read the request body: {e}"));
            let _ = respond(stream, out, &refuse(e), to_head, false).await;
            return false;
        }
        Err(_) => return false,
    };
    let outgoing = Outgoing::new(request, &decision, body);
    // A caller that hangs up cancels the forward, which closes the replica connection, so the
    // replica can drop the request before it costs compute.
    let outcome = tokio::select! {
        biased;
        outcome = gw.dispatch(decision, outgoing, started) => outcome,
        () = caller_gone(stream, buf) => return false,
    };
    let reply = match outcome {
        Outcome::Answer(answer, version) => Reply::Forwarded { answer, version },
        Outcome::Failed(e, version) => Reply::error(&e, version),
    };
    respond(stream, out, &reply, to_head, keep_alive).await && keep_alive
}

/// Reads and drops the body of a request that is answered without it, so the connection can
/// carry the next request. `false` when the connection must close instead: the caller waits for
/// `100 Continue` (and will not send the body), or the body is too large or malformed.
async fn skip_body(stream: &mut TcpStream, buf: &mut BytesMut, request: &Head, limit: usize) -> bool {
    match request.framing {
        Framing::Empty => true,
        _ if request.expect_continue && buf.is_empty() => false,
        framing => sluice_http1::read_body(stream, buf, framing, limit).await.is_ok(),
    }
}

/// An answer to the caller.
enum Reply {
    /// A replica's answer, with the version that gave it.
    Forwarded { answer: crate::upstream::Answer, version: HeaderValue },
    /// The gateway's own.
    Own {
        status: u16,
        content_type: &'static str,
        extra: &'static [(&'static str, &'static str)],
        version: Option<HeaderValue>,
        body: bytes::Bytes,
    },
}

impl Reply {
    fn error(e: &GatewayError, version: Option<HeaderValue>) -> Reply {
        Reply::Own {
            status: e.status().as_u16(),
            content_type: "application/json",
            extra: e.extra_headers(),
            version,
            body: e.body().into(),
        }
    }
}

/// Response headers a replica sets that the gateway replaces.
const NOT_RETURNED: [&str; 2] = ["content-length", VERSION_HEADER];

/// Writes `reply`; `false` when the caller's connection failed.
async fn respond(stream: &mut TcpStream, out: &mut Vec<u8>, reply: &Reply, to_head: bool, keep_alive: bool) -> bool {
    out.clear();
    let body: &[u8] = match reply {
        Reply::Forwarded { answer, version } => {
            let head = &answer.head;
            sluice_http1::push_status_line(out, head.status);
            for (name, value) in head.headers() {
                if !NOT_RETURNED.iter().any(|n| n.eq_ignore_ascii_case(name)) && !head.is_hop_by_hop(name) {
                    sluice_http1::push_header(out, name, value);
                }
            }
            sluice_http1::push_header(out, VERSION_HEADER, version.as_bytes());
            match head.header("content-length") {
                // A HEAD answer declares the length a GET would have had.
                Some(declared) if to_head => sluice_http1::push_header(out, "content-length", declared),
                _ => sluice_http1::push_content_length(out, answer.body.len()),
            }
            &answer.body
        }
        Reply::Own { status, content_type, extra, version, body } => {
            sluice_http1::push_status_line(out, *status);
            sluice_http1::push_header(out, "date", crate::date::now().as_bytes());
            sluice_http1::push_header(out, "content-type", content_type.as_bytes());
            for (name, value) in *extra {
                sluice_http1::push_header(out, name, value.as_bytes());
            }
            if let Some(version) = version {
                sluice_http1::push_header(out, VERSION_HEADER, version.as_bytes());
            }
            sluice_http1::push_content_length(out, body.len());
            body
        }
    };
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    let body = if to_head { &[][..] } else { body };
    sluice_http1::write_message(stream, out, body).await.is_ok()
}

// === impl Gateway ===

impl Gateway {
    /// The gateway's own routes: health and metrics.
    fn local(&self, method: &str, path: &str) -> Option<Reply> {
        let own = |status: u16, content_type, body: bytes::Bytes| {
            Some(Reply::Own { status, content_type, extra: &[], version: None, body })
        };
        let known = matches!(path, "/v2/health/live" | "/v2/health/ready" | "/metrics");
        if !known {
            return None;
        }
        if method != "GET" && method != "HEAD" {
            let e = GatewayError::MethodNotAllowed(format!("{path} answers GET only, not {method}"));
            return Some(Reply::Own {
                status: e.status().as_u16(),
                content_type: "application/json",
                extra: &[("allow", "GET, HEAD")],
                version: None,
                body: e.body().into(),
            });
        }
        match path {
            "/v2/health/live" => own(200, "text/plain", bytes::Bytes::new()),
            "/v2/health/ready" => own(if self.is_configured() { 200 } else { 503 }, "text/plain", bytes::Bytes::new()),
            _ => own(200, "text/plain; version=0.0.4", self.metrics.render().into()),
        }
    }
}
