//! The scoring server's HTTP/1.1 front on `sluice-http1`: v2 infer requests, the hot path, go
//! straight to the model; every other route goes through the axum [`crate::router`], which
//! keeps their extractors, 404s and 405s in one place.
//!
//! Why not hyper's server: at high concurrency the HTTP layer took about a third of the CPU on a
//! 2-core machine, CPU that batching needs for the model (issue 4). One task per connection that
//! parses the head in place and writes each answer with one vectored write costs less.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::response::{IntoResponse, Response};
use http::header;
use sluice_http1::Head;
use sluice_http1::server::{Connection, Handler};
use tower::ServiceExt;

use crate::error::ApiError;
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
    let front = Arc::new(Front { router: crate::router(state.clone()), state: state.clone() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let on_unix = async {
        match unix {
            Some(l) => sluice_http1::server::serve(l, front.clone(), stopped(stop_rx.clone())).await,
            None => Ok(()),
        }
    };
    let on_tcp = sluice_http1::server::serve(listener, front.clone(), stopped(stop_rx.clone()));
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
    router: Router,
}

/// `(name, version)` of `POST /v2/models/{name}[/versions/{version}]/infer`, when the names need
/// no percent-decoding (those go through the router, which decodes them).
fn infer_route(request: &Head) -> Option<(&str, Option<&str>)> {
    if request.method() != "POST" {
        return None;
    }
    let path = request.target().split('?').next()?;
    let rest = path.strip_prefix("/v2/models/")?.strip_suffix("/infer")?;
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    match rest.split_once("/versions/") {
        Some((name, version)) if plain(name) && plain(version) => Some((name, Some(version))),
        None if plain(rest) => Some((rest, None)),
        _ => None,
    }
}

impl Handler for Front {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        let limit = self.state.config.max_body_bytes;
        let to_head = request.method() == "HEAD";
        let body = c.read_body(request, limit).await.map_err(|e| match e {
            sluice_http1::Error::BodyTooLarge { limit } => ApiError::PayloadTooLarge { limit },
            e => ApiError::bad_request(format!("cannot read the request body: {e}")),
        });
        // A body that could not be read leaves the connection at an unknown point: close it.
        let keep_alive = keep_alive && body.is_ok();
        let answer = match infer_route(request) {
            Some((name, version)) => {
                let header_length = request.header(HEADER_LENGTH);
                let infer = crate::v2::infer_model(&self.state, name, version, header_length, body);
                // A caller that hangs up drops the request, and the model's queue skips it.
                match c.unless_gone(infer).await {
                    Some(result) => result.unwrap_or_else(IntoResponse::into_response),
                    None => return false,
                }
            }
            None => match body {
                Ok(body) => match c.unless_gone(self.route(request, body)).await {
                    Some(response) => response,
                    None => return false,
                },
                Err(e) => e.into_response(),
            },
        };
        respond(c, answer, to_head, keep_alive).await && keep_alive
    }
}

impl Front {
    /// Any other route, through the axum router.
    async fn route(&self, request: &Head, body: bytes::Bytes) -> Response {
        let mut builder = http::Request::builder().method(request.method()).uri(request.target());
        for (name, value) in request.headers() {
            builder = builder.header(name, value);
        }
        match builder.body(axum::body::Body::from(body)) {
            Ok(request) => match self.router.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
            Err(e) => ApiError::bad_request(format!("unusable request: {e}")).into_response(),
        }
    }
}

/// Writes an axum response with its body; `false` when the connection failed.
async fn respond(c: &mut Connection, response: Response, to_head: bool, keep_alive: bool) -> bool {
    let (parts, body) = response.into_parts();
    // Every handler here answers with a complete body; reading it is a move, not a wait.
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return false;
    };
    let out = &mut c.head;
    sluice_http1::push_status_line(out, parts.status.as_u16());
    sluice_http1::push_date(out);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING && name != header::CONNECTION {
            sluice_http1::push_header(out, name.as_str(), value.as_bytes());
        }
    }
    match parts.headers.get(header::CONTENT_LENGTH) {
        // A HEAD answer declares the length a GET would have had.
        Some(declared) if to_head => sluice_http1::push_header(out, "content-length", declared.as_bytes()),
        _ => sluice_http1::push_content_length(out, body.len()),
    }
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    c.send(if to_head { &[] } else { &body }).await
}
