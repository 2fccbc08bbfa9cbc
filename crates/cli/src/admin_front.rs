//! The control plane's admin API served on `sluice-http1`, so it is held to the same front-door
//! limits as the gateway and the scoring server (header and body timeouts, idle keep-alive
//! timeout, connection cap). The API itself is an axum router (`sluice_control::router`); this
//! adapter turns each request head and body into an `http::Request` for it. Admin calls are few
//! and small, so the conversion costs nothing that matters; it lives here, in the binary that
//! composes the two, because the control plane does not depend on the HTTP/1.1 layer.

use std::sync::Arc;

use axum::Router;
use axum::http;
use sluice_http1::server::{Connection, Handler};
use sluice_http1::{Head, Limits};
use tower::ServiceExt;

/// Largest admin request body: a service's deployment and model configs are small JSON.
const MAX_ADMIN_BODY: usize = 16 * 1024 * 1024;

/// Serves `router` on `listener` within `limits` until `shutdown` resolves. `is_admin` tells the
/// admin credential: only a request presenting it may upload a body as large as a model.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    is_admin: impl Fn(&str) -> bool + Send + Sync + 'static,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admin = Admin { router, is_admin: Box::new(is_admin) };
    sluice_http1::server::serve(listener, Arc::new(admin), limits, shutdown).await
}

struct Admin {
    router: Router,
    is_admin: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl Admin {
    /// Most body bytes `request` may send: a model upload from the admin may be as large as a
    /// model; anything else, or anyone else, gets the small limit before the credential is
    /// checked by the router, so an unauthenticated caller cannot make this process hold a
    /// model-sized body.
    fn body_limit(&self, request: &Head) -> usize {
        let upload = request.method() == "POST" && request.target().starts_with("/v1/models/");
        let admin = || {
            request.header("authorization").and_then(sluice_auth::bearer_credential).is_some_and(|t| (self.is_admin)(t))
        };
        if upload && admin() { sluice_control::MAX_MODEL_BYTES } else { MAX_ADMIN_BODY }
    }
}

impl Handler for Admin {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        let response = match c.read_body(request, self.body_limit(request)).await {
            Ok(body) => {
                let what = format!("{} {}", request.method(), request.target().split('?').next().unwrap_or_default());
                let mut builder = http::Request::builder().method(request.method()).uri(request.target());
                for (name, value) in request.headers() {
                    builder = builder.header(name, value);
                }
                match builder.body(axum::body::Body::from(body)) {
                    Ok(request) => match self.router.clone().oneshot(request).await {
                        Ok(response) => with_json_error(response, &what),
                        Err(never) => match never {},
                    },
                    Err(e) => error(400, &format!("unusable request: {e}")),
                }
            }
            Err(sluice_http1::Error::BodyTooLarge { limit }) => {
                error(413, &format!("request body is larger than the limit of {limit} bytes"))
            }
            // A body that could not be read leaves the connection at an unknown point: answer
            // and close it.
            Err(e) => {
                let (status, message) = if e.is_timeout() {
                    (408, e.to_string())
                } else {
                    (400, format!("cannot read the request body: {e}"))
                };
                let _ = write(c, error(status, &message), false).await;
                return false;
            }
        };
        write(c, response, keep_alive).await && keep_alive
    }
}

/// The router's own refusals (404 for no route, 405 for a wrong method) come with an empty body:
/// every error here answers `{"error": ...}`, as the rest of Sluice does.
fn with_json_error(response: axum::response::Response, what: &str) -> axum::response::Response {
    let status = response.status();
    let empty = axum::body::HttpBody::size_hint(response.body()).exact() == Some(0);
    if !(status.is_client_error() || status.is_server_error()) || !empty {
        return response;
    }
    let reason = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
    let mut json = error(status.as_u16(), &format!("{reason}: {what}"));
    // Keep what the status asks for (`Allow` on a 405).
    for (name, value) in response.headers() {
        if name != http::header::CONTENT_LENGTH && name != http::header::CONTENT_TYPE {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

fn error(status: u16, message: &str) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(sluice_http1::server::error_body(message)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

/// Writes an axum response; `false` when the connection failed. Answers with a declared length
/// (a model artifact) are streamed; the rest are small JSON (a replica log at most), collected
/// first.
async fn write(c: &mut Connection, response: axum::response::Response, keep_alive: bool) -> bool {
    let (parts, body) = response.into_parts();
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Some(length) = declared {
        push_head(c, &parts, length, keep_alive);
        return stream(c, body, length).await;
    }
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return false;
    };
    push_head(c, &parts, body.len(), keep_alive);
    c.send(&body).await
}

/// Sends the head in `c.head` and then `body`, which must be exactly `length` bytes: `false`
/// (the connection closes) when it fails or ends early, so a caller never takes a cut-off
/// artifact for a whole one.
async fn stream(c: &mut Connection, body: axum::body::Body, length: usize) -> bool {
    use futures_util::StreamExt as _;
    if !c.send(&[]).await {
        return false;
    }
    let mut sent = 0usize;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else { return false };
        sent += chunk.len();
        if sent > length || !c.send_more(&chunk).await {
            return false;
        }
    }
    sent == length
}

fn push_head(c: &mut Connection, parts: &http::response::Parts, length: usize, keep_alive: bool) {
    let out = &mut c.head;
    sluice_http1::push_status_line(out, parts.status.as_u16());
    sluice_http1::push_date(out);
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_LENGTH
            && name != http::header::TRANSFER_ENCODING
            && name != http::header::CONNECTION
        {
            sluice_http1::push_header(out, name.as_str(), value.as_bytes());
        }
    }
    sluice_http1::push_content_length(out, length);
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}
