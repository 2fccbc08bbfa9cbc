//! Every way a data-plane request can fail, and the one place that maps each to a status code.

use http::StatusCode;
use sluice_http1::encoding::DecodeError;
use sluice_runtime::{ErrorKind, InferError};

/// A request that got no result. Messages name the problem and never echo credentials.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// No route has this path.
    #[error("{0}")]
    NotFound(String),
    #[error("method {method} is not allowed here; use {allowed}")]
    MethodNotAllowed { method: String, allowed: &'static str },
    #[error("unknown model '{name}' (serving: {serving})")]
    UnknownModel { name: String, serving: String },
    #[error("model '{name}' has no version '{version}' (serving versions: {serving})")]
    UnknownVersion { name: String, version: String, serving: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A body in a coding that is not supported (415), larger than the limit once decoded (413),
    /// or not valid in its coding (400).
    #[error(transparent)]
    Encoding(#[from] DecodeError),
    /// The caller sent its body too slowly (see `sluice_http1::Limits`).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    /// The status for each error; exhaustive on purpose, so a new variant must choose one.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::UnknownModel { .. } | ApiError::UnknownVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } | ApiError::Encoding(DecodeError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Encoding(DecodeError::Unsupported(_)) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Encoding(DecodeError::Corrupt { .. }) => StatusCode::BAD_REQUEST,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded(_) | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric class of the error, when it is counted against a model.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::BadRequest(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::Encoding(_)
            | ApiError::RequestTimeout(_)
            | ApiError::UnknownModel { .. }
            | ApiError::UnknownVersion { .. } => ErrorKind::BadRequest,
            ApiError::Overloaded(_) | ApiError::NotReady(_) => ErrorKind::Overloaded,
            ApiError::Timeout(_) => ErrorKind::Timeout,
            ApiError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Headers the status asks for: which method a 405's route takes, which codings a 415 would
    /// have taken (RFC 9110 §15.5.16), and when to retry after a 503 (overload clears in well
    /// under a second at the default limits).
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            ApiError::MethodNotAllowed { allowed: "GET", .. } => &[("allow", "GET, HEAD")],
            ApiError::MethodNotAllowed { .. } => &[("allow", "POST")],
            ApiError::Overloaded(_) | ApiError::NotReady(_) => &[("retry-after", "1")],
            ApiError::Encoding(DecodeError::Unsupported(_)) => {
                &[("accept-encoding", sluice_http1::encoding::SUPPORTED)]
            }
            _ => &[],
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        let msg = e.to_string();
        match e {
            InferError::Overloaded { .. } => ApiError::Overloaded(msg),
            InferError::ShuttingDown { .. } => ApiError::NotReady(msg),
            InferError::Timeout { .. } => ApiError::Timeout(msg),
            InferError::Backend(sluice_core::BackendError::InvalidInput(_)) => ApiError::BadRequest(msg),
            InferError::Backend(_) | InferError::Panicked(_) => ApiError::Internal(msg),
        }
    }
}
