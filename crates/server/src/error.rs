//! Every way a data-plane request can fail, and the one place that maps each to a status code.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_runtime::{ErrorKind, InferError};

/// A request that got no result. Messages name the problem and never echo credentials.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown model '{name}' (serving: {serving})")]
    UnknownModel { name: String, serving: String },
    #[error("model '{name}' has no version '{version}' (serving versions: {serving})")]
    UnknownVersion { name: String, version: String, serving: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
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
            ApiError::UnknownModel { .. } | ApiError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded(_) | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The metric class of the error, when it is counted against a model.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::BadRequest(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UnknownModel { .. }
            | ApiError::UnknownVersion { .. } => ErrorKind::BadRequest,
            ApiError::Overloaded(_) | ApiError::NotReady(_) => ErrorKind::Overloaded,
            ApiError::Timeout(_) => ErrorKind::Timeout,
            ApiError::Internal(_) => ErrorKind::Internal,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Overload clears in well under a second at the default limits.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
