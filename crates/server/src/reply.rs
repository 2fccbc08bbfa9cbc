//! A complete answer as the connection writes it: status, content type, the few headers a route
//! adds, and the encoded body. Handlers build one directly, so an answer goes from the encoder to
//! the socket without a header map or a boxed body in between.

use serde::Serialize;

use crate::error::ApiError;

/// One answer of the scoring server.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers besides content type and length; empty (no allocation) for almost every answer.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON answer with `status`.
    pub fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply { status, content_type: JSON, headers: Vec::new(), body },
            Err(e) => Reply::from(ApiError::Internal(format!("encoding the response: {e}"))),
        }
    }

    /// A 200 JSON answer whose body is already encoded.
    pub fn encoded_json(body: Vec<u8>) -> Reply {
        Reply { status: 200, content_type: JSON, headers: Vec::new(), body }
    }
}

pub(crate) const JSON: &str = "application/json";

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        let status = e.status();
        let headers = e.extra_headers().iter().map(|&(n, v)| (n, v.to_owned())).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })).unwrap_or_default();
        Reply { status: status.as_u16(), content_type: JSON, headers, body }
    }
}
