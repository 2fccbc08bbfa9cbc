//! The gateway's gRPC front (OIP v2 over gRPC, `sluice-grpc`): each call, translated to its REST
//! request, takes the same path an HTTP/1.1 request does — the gateway's own routes, then
//! [`Gateway::decide`] (route, auth, version choice, shadow) and [`Gateway::dispatch`] (forward
//! with retries and ejection) — without a socket in between. So a gRPC caller authenticates with
//! metadata `authorization: Bearer KEY`, pins a version with `x-sluice-version` (or sticks with
//! `x-sluice-route-key`), and gets the version that answered in response metadata
//! `x-sluice-version`, exactly as over HTTP. The model name of a call is the endpoint's (or
//! service's) name, as in the HTTP paths `/v2/models/{endpoint}/...`.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sluice_routing::VERSION_HEADER;
use sluice_telemetry::ACCESS_TARGET;
use sluice_telemetry::request_id::{HEADER as REQUEST_ID, Id};
use sluice_telemetry::trace::{self, TRACEPARENT};

use crate::Gateway;
use crate::error::GatewayError;
use crate::proxy::Outcome;
use crate::server::{NOT_RETURNED, Reply};

/// Serves the gateway's gRPC front on `listener` until `shutdown` resolves. Run it on one of the
/// gateway's single-threaded runtimes (see [`crate::serve_grpc_on_threads`]): upstream pools are
/// per thread, and this sweeps its thread's pool as the HTTP front does.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = {
        let gw = gateway.clone();
        tokio::spawn(async move {
            crate::upstream::sweep(gw.settings.upstream_idle_timeout, |addr| gw.replicas.contains(addr)).await;
        })
    };
    let limits = &gateway.settings.limits;
    let options = sluice_grpc::Options {
        max_message_bytes: gateway.settings.max_body_bytes,
        max_connections: limits.max_connections,
        first_bytes_timeout: limits.header_read_timeout,
        // The HTTP front's certificate, reloads included, offering HTTP/2.
        tls: gateway.settings.tls.as_ref().map(sluice_http1::tls::Tls::h2_acceptor),
        ..Default::default()
    };
    let handler = move |request: http::Request<Bytes>| {
        let gw = gateway.clone();
        async move { gw.call(request).await }
    };
    let served = sluice_grpc::serve(listener, handler, options, shutdown).await;
    sweeper.abort();
    served.map_err(std::io::Error::other)
}

impl Gateway {
    /// Answers an OIP v2 REST request that came without a connection (the gRPC front), as the
    /// HTTP front would: its own routes, auth, version choice, shadow, forwarding, metrics and an
    /// access log line (`transport=grpc`).
    pub async fn call(self: &Arc<Self>, request: http::Request<Bytes>) -> http::Response<Bytes> {
        let started = Instant::now();
        let (parts, body) = request.into_parts();
        let head = match head_of(&parts, body.len()) {
            Ok(head) => head,
            Err(e) => return response(&Reply::error(&e, None), None),
        };
        let id = Id::of(head.header(REQUEST_ID));
        // `None` unless tracing is on; the caller's `traceparent` came as metadata.
        let mut span = trace::server_span("gateway grpc request", head.header(TRACEPARENT));
        let path = head.target().split('?').next().unwrap_or_default();
        let bytes_in = body.len();
        let (reply, labels) = if let Some(reply) = self.local(head.method(), path) {
            (reply, None)
        } else {
            match self.decide(&head) {
                Err(e) => {
                    self.metrics.refused(e.reason());
                    (Reply::error(&e, None), None)
                }
                Ok(_) if body.len() > self.settings.max_body_bytes => {
                    let e = GatewayError::PayloadTooLarge { limit: self.settings.max_body_bytes };
                    self.metrics.refused(e.reason());
                    (Reply::error(&e, None), None)
                }
                Ok(decision) => {
                    let labels = decision.labels();
                    if let Some(span) = span.as_mut() {
                        labels.annotate(span);
                    }
                    let reply = match self.dispatch(decision, &head, id.as_bytes(), body, started, span.as_ref()).await
                    {
                        Outcome::Answer(answer, version) => Reply::Forwarded { answer, version },
                        Outcome::Failed(e, version) => Reply::error(&e, version),
                    };
                    (reply, Some(labels))
                }
            }
        };
        let answer = response(&reply, Some(id.as_bytes()));
        if let Some(mut span) = span {
            span.set("http.request.method", head.method());
            span.set("http.response.status_code", answer.status().as_u16());
            span.set("rpc.system", "grpc");
            if answer.status().is_server_error() {
                span.fail();
            }
            span.end();
        }
        if self.settings.access_log && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            tracing::info!(
                target: ACCESS_TARGET,
                request_id = id.as_str(),
                transport = "grpc",
                method = head.method(),
                path,
                endpoint = labels.as_ref().and_then(|l| l.endpoint()),
                version = labels.as_ref().and_then(|l| l.version()),
                role = labels.as_ref().map(|l| l.role()),
                service = labels.as_ref().map(|l| l.service()),
                status = answer.status().as_u16(),
                duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                bytes_in = bytes_in as u64,
                bytes_out = answer.body().len() as u64,
                "request"
            );
        }
        answer
    }
}

/// The request head the HTTP front would have parsed for `parts` with a body of `length` bytes.
fn head_of(parts: &http::request::Parts, length: usize) -> Result<sluice_http1::Head, GatewayError> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut text = Vec::with_capacity(128 + target.len());
    text.extend_from_slice(parts.method.as_str().as_bytes());
    text.push(b' ');
    text.extend_from_slice(target.as_bytes());
    text.extend_from_slice(b" HTTP/1.1\r\n");
    sluice_http1::push_header(&mut text, "host", b"grpc");
    for (name, value) in &parts.headers {
        sluice_http1::push_header(&mut text, name.as_str(), value.as_bytes());
    }
    sluice_http1::push_content_length(&mut text, length);
    text.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&text[..]);
    match sluice_http1::parse_request(&mut buf) {
        Ok(Some(head)) => Ok(head),
        Ok(None) | Err(_) => Err(GatewayError::BadRequest("the call's metadata do not make a valid request".into())),
    }
}

/// `reply` as an `http::Response`, headers as the HTTP front writes them.
fn response(reply: &Reply, request_id: Option<&[u8]>) -> http::Response<Bytes> {
    let mut builder = http::Response::builder();
    let body = match reply {
        Reply::Forwarded { answer, version } => {
            builder = builder.status(answer.head.status);
            for (name, value) in answer.head.headers() {
                if !NOT_RETURNED.iter().any(|n| n.eq_ignore_ascii_case(name)) && !answer.head.is_hop_by_hop(name) {
                    builder = builder.header(name, value);
                }
            }
            builder = builder.header(VERSION_HEADER, version.clone());
            answer.body.clone()
        }
        Reply::Own { status, content_type, extra, version, body } => {
            builder = builder.status(*status).header(http::header::CONTENT_TYPE, *content_type);
            for (name, value) in *extra {
                builder = builder.header(*name, *value);
            }
            if let Some(version) = version {
                builder = builder.header(VERSION_HEADER, version.clone());
            }
            body.clone()
        }
    };
    if let Some(id) = request_id {
        builder = builder.header(REQUEST_ID, id);
    }
    builder.body(body).unwrap_or_else(|_| {
        let mut r = http::Response::new(Bytes::from_static(br#"{"error":"the answer's headers are not valid"}"#));
        *r.status_mut() = http::StatusCode::BAD_GATEWAY;
        r
    })
}
