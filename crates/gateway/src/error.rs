//! Every way the gateway refuses or fails a request, and the one place that maps each to a status.

use http::StatusCode;

use crate::upstream::UpstreamError;

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
    /// The caller sent its body too slowly (see `sluice_http1::Limits`).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No replica can take the request right now.
    #[error("{0}")]
    Unavailable(String),
    /// The replica accepted the request but did not answer in time.
    #[error("service '{service}' did not answer within {timeout_ms} ms")]
    UpstreamTimeout { service: String, timeout_ms: u64 },
    /// A replica's `/swagger.json` answer is not an OpenAPI document the gateway can serve.
    #[error("service '{service}' sent no usable OpenAPI document: {reason}")]
    UpstreamDocument { service: String, reason: String },
    /// The replica answered in a content coding the caller did not accept, and the gateway could
    /// not decode it for the caller.
    #[error("{0}")]
    UpstreamEncoding(String),
    /// No replica could be reached, or the one that answered broke its response off.
    #[error("no replica of service '{service}' answered: {source}")]
    Upstream {
        service: String,
        #[source]
        source: UpstreamError,
    },
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
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamDocument { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::Upstream { .. } | GatewayError::UpstreamEncoding(_) => StatusCode::BAD_GATEWAY,
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
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::HeadersTooLarge(_) => "headers_too_large",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::Unavailable(_) => "unavailable",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::UpstreamDocument { .. } => "upstream_error",
            GatewayError::Upstream { .. } | GatewayError::UpstreamEncoding(_) => "upstream_error",
        }
    }
}

impl GatewayError {
    /// The JSON body of this error's response: `{"error": "..."}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "error": self.to_string() })).unwrap_or_default()
    }

    /// Headers the status asks for: how to authenticate after a 401, which methods a 405's
    /// route takes (only the gateway's own GET routes answer 405), when to retry after a 503.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status() {
            StatusCode::UNAUTHORIZED => &[("www-authenticate", "Bearer")],
            StatusCode::METHOD_NOT_ALLOWED => &[("allow", "GET, HEAD")],
            StatusCode::SERVICE_UNAVAILABLE => &[("retry-after", "1")],
            _ => &[],
        }
    }
}
