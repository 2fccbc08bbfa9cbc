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

/// Serves `router` on `listener` within `limits` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    sluice_http1::server::serve(listener, Arc::new(Admin(router)), limits, shutdown).await
}

struct Admin(Router);

impl Handler for Admin {
    async fn handle(&self, c: &mut Connection, request: &Head, keep_alive: bool) -> bool {
        let response = match c.read_body(request, MAX_ADMIN_BODY).await {
            Ok(body) => {
                let what = format!("{} {}", request.method(), request.target().split('?').next().unwrap_or_default());
                let mut builder = http::Request::builder().method(request.method()).uri(request.target());
                for (name, value) in request.headers() {
                    builder = builder.header(name, value);
                }
                match builder.body(axum::body::Body::from(body)) {
                    Ok(request) => match self.0.clone().oneshot(request).await {
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

/// Writes an axum response whole; `false` when the connection failed. Admin answers are small
/// JSON (a replica log at most), so the body is collected first.
async fn write(c: &mut Connection, response: axum::response::Response, keep_alive: bool) -> bool {
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return false;
    };
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
    sluice_http1::push_content_length(out, body.len());
    if !keep_alive {
        sluice_http1::push_header(out, "connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    c.send(&body).await
}
