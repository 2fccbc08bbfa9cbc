//! Every way the gateway refuses or fails a request, and the one place that maps each to a status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Where a failure came from decides its status (design.md, "Status codes"). Messages never
/// contain a credential.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(String),
    /// No replica can take the request right now.
    #[error("{0}")]
    Unavailable(String),
    /// The replica accepted the request but did not answer in time.
    #[error("{0}")]
    UpstreamTimeout(String),
    /// The replica could not be reached or broke the connection.
    #[error("{0}")]
    Upstream(String),
}

impl GatewayError {
    /// Exhaustive on purpose: a new variant must choose its status.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Upstream(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `reason` label of requests refused before they reach a replica.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NotFound(_) => "not_found",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::Forbidden(_) => "forbidden",
            GatewayError::PayloadTooLarge { .. } => "too_large",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unavailable(_) => "unavailable",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::Upstream(_) => "upstream_error",
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
