//! The gateway's HTTP/1.1 server: for each request on a caller's connection, decide where it
//! goes, read its body, forward it and write the answer.
//!
//! Built on `sluice-http1` rather than hyper and axum because the gateway's whole job is this
//! loop: keeping each request's work in one task, with the head forwarded as slices of the bytes
//! that arrived, cut the CPU the gateway spends per proxied request (see benches/RESULTS.md).

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use sluice_http1::server::{Connection, Handler};
use sluice_http1::{Error as WireError, Framing, Head};
use sluice_telemetry::ACCESS_TARGET;
use sluice_telemetry::request_id::{HEADER as REQUEST_ID, Id};
use sluice_telemetry::trace::{self, Kind, Span, TRACEPARENT};

use crate::Gateway;
use crate::error::GatewayError;
use crate::proxy::{Outcome, RouteLabels};
use sluice_routing::VERSION_HEADER;

/// Serves the gateway on `listener` until `shutdown` resolves; requests in flight are answered
/// first, and idle connections are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = gateway.settings.limits.clone();
    // This thread's upstream pool is swept by a task on this thread.
    let sweeper = {
        let gw = gateway.clone();
        tokio::spawn(async move {
            crate::upstream::sweep(gw.settings.upstream_idle_timeout, |addr| gw.replicas.contains(addr)).await;
        })
    };
    let listener = match gateway.settings.tls.clone() {
        Some(tls) => sluice_http1::stream::Listener::Tls(listener, tls),
        None => listener.into(),
    };
    let served = sluice_http1::server::serve(listener, Arc::new(Front(gateway)), limits, shutdown).await;
    sweeper.abort();
    served
}

/// The gateway as an HTTP handler.
struct Front(Arc<Gateway>);

impl Handler for Front {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        exchange(&self.0, c, request, keep_alive).await
    }

    fn idle_poll(&self) -> std::time::Duration {
        self.0.settings.busy_poll
    }

    fn refused_head(&self, error: &WireError) {
        let reason = match error {
            WireError::HeadTooLarge => "headers_too_large",
            e if e.is_timeout() => "request_timeout",
            _ => "bad_request",
        };
        self.0.metrics.refused(reason);
    }
}

/// Handles one request, then writes its access log line; returns whether the connection stays
/// open.
async fn exchange(gw: &Arc<Gateway>, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
    let started = Instant::now();
    let id = Id::of(request.header(REQUEST_ID));
    // Checked per request, so a filter change (or a subscriber that drops the target) costs
    // nothing more than this when the line is not wanted.
    let log = gw.settings.access_log && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO);
    let mut access = Access { status: CALLER_GONE, bytes_in: 0, bytes_out: 0, route: None, log };
    // `None` unless tracing is on: one branch.
    let mut span = trace::server_span("gateway request", request.header(TRACEPARENT));
    let keep = answer(gw, c, request, keep_alive, &id, &mut access, started, span.as_mut()).await;
    if log {
        access.write(c, request, &id, started);
    }
    if let Some(mut span) = span {
        span.set("http.request.method", request.method());
        span.set("http.response.status_code", access.status);
        if access.status >= 500 {
            span.fail();
        }
        span.end();
    }
    keep
}

/// Status logged for a request whose caller went away before it was answered (nginx's 499).
const CALLER_GONE: u16 = 499;

/// What the access log says of one request, filled in as it is handled.
struct Access {
    status: u16,
    bytes_in: usize,
    bytes_out: usize,
    /// Where it went; only taken when the line is written.
    route: Option<RouteLabels>,
    log: bool,
}

impl Access {
    /// The request's line, at INFO under [`ACCESS_TARGET`]. Never a credential: no header value
    /// but the request id is logged, and the query string is left out.
    fn write(&self, c: &Connection, request: &Head, id: &Id<'_>, started: Instant) {
        let path = request.target().split('?').next().unwrap_or_default();
        let route = self.route.as_ref();
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = id.as_str(),
            method = request.method(),
            path,
            endpoint = route.and_then(RouteLabels::endpoint),
            version = route.and_then(RouteLabels::version),
            role = route.map(RouteLabels::role),
            service = route.map(RouteLabels::service),
            status = self.status,
            duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            bytes_in = self.bytes_in as u64,
            bytes_out = self.bytes_out as u64,
            caller = c.peer_addr().map(tracing::field::display),
            "request"
        );
    }
}

/// The body length a skipped body declared (a chunked one is not counted).
fn declared(request: &Head) -> usize {
    match request.framing {
        Framing::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
        _ => 0,
    }
}

/// Handles one request; returns whether the connection stays open.
#[allow(clippy::too_many_arguments)]
async fn answer(
    gw: &Arc<Gateway>,
    c: &mut Connection,
    request: &Head,
    keep_alive: bool,
    id: &Id<'_>,
    access: &mut Access,
    started: Instant,
    mut span: Option<&mut Span>,
) -> bool {
    let to_head = request.method() == "HEAD";
    let path = request.target().split('?').next().unwrap_or_default();
    let limit = gw.settings.max_body_bytes;
    let id = id.as_bytes();
    if let Some(reply) = gw.local(request.method(), path) {
        let keep_alive = keep_alive && c.skip_body(request, limit).await;
        access.bytes_in = declared(request);
        return respond(c, &reply, id, to_head, keep_alive, access).await && keep_alive;
    }
    if let Some((kind, name)) = crate::swagger::route(path) {
        let keep_alive = keep_alive && c.skip_body(request, limit).await;
        access.bytes_in = declared(request);
        let reply = match gw.swagger(request.method(), kind, name, id).await {
            Ok(body) => Reply::Own { status: 200, content_type: "application/json", extra: &[], version: None, body },
            Err(e) => {
                gw.metrics.refused(e.reason());
                Reply::error(&e, None)
            }
        };
        return respond(c, &reply, id, to_head, keep_alive, access).await && keep_alive;
    }
    let refuse = |e: GatewayError| {
        gw.metrics.refused(e.reason());
        Reply::error(&e, None)
    };
    let decided = span.as_ref().map(|_| trace::now_ns());
    let decision = gw.decide(request);
    if let (Some(span), Some(start)) = (span.as_deref_mut(), decided) {
        // Auth and the version choice, as one child span.
        let mut decide = span.child("gateway auth and version choice", Kind::Internal).started_at(start);
        match &decision {
            Ok(d) => d.labels().annotate(span),
            Err(e) => {
                decide.set("error.type", e.reason());
                decide.fail();
            }
        }
        decide.end();
    }
    let decision = match decision {
        Ok(d) => d,
        Err(e) => {
            let keep_alive = keep_alive && c.skip_body(request, limit).await;
            access.bytes_in = declared(request);
            return respond(c, &refuse(e), id, to_head, keep_alive, access).await && keep_alive;
        }
    };
    if access.log {
        access.route = Some(decision.labels());
    }
    let body = match c.read_body(request, limit).await {
        Ok(body) => body,
        Err(e) => {
            let e = match e {
                WireError::BodyTooLarge { limit } => GatewayError::PayloadTooLarge { limit },
                WireError::BadChunk | WireError::Malformed(_) => {
                    GatewayError::BadRequest(format!("could not read the request body: {e}"))
                }
                e if e.is_timeout() => GatewayError::RequestTimeout(e.to_string()),
                _ => return false,
            };
            let _ = respond(c, &refuse(e), id, to_head, false, access).await;
            return false;
        }
    };
    access.bytes_in = body.len();
    // A caller that hangs up cancels the forward, which closes the replica connection, so the
    // replica can drop the request before it costs compute.
    let Some(outcome) = c.unless_gone(gw.dispatch(decision, request, id, body, started, span.as_deref())).await else {
        return false;
    };
    let reply = match outcome {
        Outcome::Answer(answer, version) => Reply::Forwarded { answer, version },
        Outcome::Failed(e, version) => Reply::error(&e, version),
    };
    respond(c, &reply, id, to_head, keep_alive, access).await && keep_alive
}

/// An answer to the caller.
pub(crate) enum Reply {
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
    pub(crate) fn error(e: &GatewayError, version: Option<HeaderValue>) -> Reply {
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
pub(crate) const NOT_RETURNED: [&str; 3] = ["content-length", VERSION_HEADER, REQUEST_ID];

/// Writes `reply` with the request's id, noting its status and size in `access`; `false` when
/// the caller's connection failed.
async fn respond(
    c: &mut Connection,
    reply: &Reply,
    request_id: &[u8],
    to_head: bool,
    keep_alive: bool,
    access: &mut Access,
) -> bool {
    let out = &mut c.head;
    out.clear();
    let body: bytes::Bytes = match reply {
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
                // Neither may carry a length.
                _ if head.status == 204 || head.status == 304 => {}
                // A HEAD answer declares the length a GET would have had.
                Some(declared) if to_head => sluice_http1::push_header(out, "content-length", declared),
                _ => sluice_http1::push_content_length(out, answer.body.len()),
            }
            answer.body.clone()
        }
        Reply::Own { status, content_type, extra, version, body } => {
            sluice_http1::push_status_line(out, *status);
            sluice_http1::push_date(out);
            sluice_http1::push_header(out, "content-type", content_type.as_bytes());
            for (name, value) in *extra {
                sluice_http1::push_header(out, name, value.as_bytes());
            }
            if let Some(version) = version {
                sluice_http1::push_header(out, VERSION_HEADER, version.as_bytes());
            }
            sluice_http1::push_content_length(out, body.len());
            body.clone()
        }
    };
    sluice_http1::push_header(out, REQUEST_ID, request_id);
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    let body = if to_head { bytes::Bytes::new() } else { body };
    access.status = match reply {
        Reply::Forwarded { answer, .. } => answer.head.status,
        Reply::Own { status, .. } => *status,
    };
    let sent = c.send(&body).await;
    access.bytes_out = if sent { body.len() } else { 0 };
    sent
}

// === impl Gateway ===

impl Gateway {
    /// The gateway's own routes: health (with the JSON bodies OIP clients read), server
    /// metadata and metrics. (Each service's and endpoint's `swagger.json`: `swagger.rs`.)
    pub(crate) fn local(&self, method: &str, path: &str) -> Option<Reply> {
        let known = matches!(path, "/v2" | "/v2/health/live" | "/v2/health/ready" | "/metrics");
        if !known {
            return None;
        }
        if method != "GET" && method != "HEAD" {
            let e = GatewayError::MethodNotAllowed(format!("{path} answers GET only, not {method}"));
            return Some(Reply::error(&e, None));
        }
        let json = |status: u16, value: serde_json::Value| {
            let body = serde_json::to_vec(&value).unwrap_or_default().into();
            Some(Reply::Own { status, content_type: "application/json", extra: &[], version: None, body })
        };
        match path {
            "/v2" => json(
                200,
                serde_json::json!({
                    "name": "sluice-gateway",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }),
            ),
            "/v2/health/live" => json(200, serde_json::json!({ "live": true })),
            "/v2/health/ready" => {
                let ready = self.is_configured();
                json(if ready { 200 } else { 503 }, serde_json::json!({ "ready": ready }))
            }
            _ => Some(Reply::Own {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                extra: &[],
                version: None,
                body: self.metrics.render().into(),
            }),
        }
    }
}
