//! The scoring server's HTTP/1.1 front on `sluice-http1`: each request is routed once
//! ([`crate::route`]) and answered by [`crate::answer`], whose [`Reply`] is written to the
//! connection as it is, with one vectored write.
//!
//! Why not hyper's server: at high concurrency the HTTP layer took about a third of the CPU on a
//! 2-core machine, CPU that batching needs for the model (issue 4). One task per connection that
//! parses the head in place and writes each answer with one vectored write costs less.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_http1::Head;
use sluice_http1::server::{Connection, Handler};
use sluice_telemetry::request_id::{HEADER as REQUEST_ID, Id};

use crate::error::ApiError;
use crate::reply::Reply;
use crate::{AppState, HEADER_LENGTH};

/// Serves `state` on `listener`, and on `unix` too when given (a gateway on the same host reaches
/// the replica there for less than over loopback TCP), until `shutdown` resolves; then stops
/// accepting, reports not ready, and returns once in-flight requests have finished.
pub async fn serve(
    listener: tokio::net::TcpListener,
    unix: Option<tokio::net::UnixListener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let front = Arc::new(Front { state: state.clone() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let limits = state.config.limits.clone();
    let on_unix = async {
        match unix {
            Some(l) => sluice_http1::server::serve(l, front.clone(), limits.clone(), stopped(stop_rx.clone())).await,
            None => Ok(()),
        }
    };
    let on_tcp = sluice_http1::server::serve(listener, front.clone(), limits.clone(), stopped(stop_rx.clone()));
    let signal = async move {
        shutdown.await;
        state.ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
    };
    let (tcp, unix, ()) = tokio::join!(on_tcp, on_unix, signal);
    tcp.and(unix)
}

struct Front {
    state: Arc<AppState>,
}

impl Handler for Front {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        let limit = self.state.config.max_body_bytes;
        let to_head = request.method() == "HEAD";
        let body = c.read_body(request, limit).await.map_err(|e| match e {
            sluice_http1::Error::BodyTooLarge { limit } => ApiError::PayloadTooLarge { limit },
            e if e.is_timeout() => ApiError::RequestTimeout(e.to_string()),
            e => ApiError::bad_request(format!("cannot read the request body: {e}")),
        });
        // A body that could not be read leaves the connection at an unknown point: close it.
        let keep_alive = keep_alive && body.is_ok();
        let header_length = request.header(HEADER_LENGTH);
        let work = crate::answer(&self.state, request.method(), request.target(), header_length, body);
        // A caller that hangs up drops the request, and the model's queue skips it.
        let Some(reply) = c.unless_gone(work).await else { return false };
        let id = Id::of(request.header(REQUEST_ID));
        respond(c, &reply, id.as_bytes(), to_head, keep_alive).await && keep_alive
    }
}

/// Writes `reply` with the request's id (the caller's, as a gateway sends it, or a new one);
/// `false` when the connection failed. A HEAD answer declares the length a GET would have had,
/// without the body.
async fn respond(c: &mut Connection, reply: &Reply, request_id: &[u8], to_head: bool, keep_alive: bool) -> bool {
    let out = &mut c.head;
    sluice_http1::push_status_line(out, reply.status);
    sluice_http1::push_date(out);
    sluice_http1::push_header(out, "content-type", reply.content_type.as_bytes());
    for (name, value) in &reply.headers {
        sluice_http1::push_header(out, name, value.as_bytes());
    }
    sluice_http1::push_header(out, REQUEST_ID, request_id);
    sluice_http1::push_content_length(out, reply.body.len());
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    c.send(if to_head { &[] } else { &reply.body }).await
}
