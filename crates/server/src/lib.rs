//! The scoring server: Open Inference Protocol v2 REST and `/score` over the models of a
//! [`Repository`], plus `/metrics`. Decoding, validation and encoding happen here; running the
//! models is the runtime's job.
#![forbid(unsafe_code)]

mod error;
mod front;
pub mod json;
mod repository;
pub mod request;
mod score;
mod v2;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use sluice_runtime::{ErrorKind, ModelHandle};
use sluice_telemetry::TextEncoder;

pub use error::ApiError;
pub use front::serve;
pub use repository::Repository;
pub use v2::HEADER_LENGTH;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { max_body_bytes: 64 * 1024 * 1024 }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub repository: Repository,
    pub config: ServerConfig,
    /// False while draining at shutdown, so load balancers stop sending traffic.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(repository: Repository, config: ServerConfig) -> Arc<Self> {
        Arc::new(AppState { repository, config, ready: AtomicBool::new(true) })
    }
}

/// A request body, or why it could not be read.
pub(crate) type Body = Result<Bytes, BytesRejection>;

pub(crate) fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", rejection.body_text()))
        }
    })
}

/// Runs a model request and records its count, errors and duration against the model.
pub(crate) async fn instrumented(
    model: &ModelHandle,
    request: impl Future<Output = Result<Response, ApiError>>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = request.await;
    let metrics = model.metrics();
    metrics.requests.inc();
    if let Err(e) = &result {
        metrics.error(e.kind()).inc();
    }
    metrics.request.observe(started.elapsed());
    result
}

/// The full HTTP surface of a scoring server.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::server_ready))
        .route("/v2/models/{name}", get(v2::metadata))
        .route("/v2/models/{name}/ready", get(v2::ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route("/v2/models/{name}/versions/{version}", get(v2::metadata_versioned))
        .route("/v2/models/{name}/versions/{version}/ready", get(v2::ready_versioned))
        .route("/v2/models/{name}/versions/{version}/infer", post(v2::infer_versioned))
        .route("/score", post(score::score))
        .route("/models/{name}/score", post(score::score_named))
        .route("/models/{name}/versions/{version}/score", post(score::score_versioned))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(serde_json::json!({ "error": "no such route" }))).into_response()
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let models: Vec<_> = state.repository.all().collect();
    let labels: Vec<[(&str, &str); 2]> =
        models.iter().map(|m| [("model", m.name()), ("version", m.version())]).collect();
    let mut enc = TextEncoder::default();
    enc.counters(
        "sluice_requests_total",
        "Inference requests received, per model version.",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], m.metrics().requests.get())),
    );
    let error_labels: Vec<[(&str, &str); 3]> =
        labels.iter().flat_map(|l| ErrorKind::ALL.map(|k| [l[0], l[1], ("error_type", k.as_str())])).collect();
    enc.counters(
        "sluice_request_errors_total",
        "Inference requests that failed, per model version and error type.",
        models
            .iter()
            .flat_map(|m| ErrorKind::ALL.map(|k| m.metrics().error(k).get()))
            .zip(&error_labels)
            .map(|(v, l)| (&l[..], v)),
    );
    enc.counters(
        "sluice_abandoned_requests_total",
        "Requests dropped from the queue because the client had gone or timed out.",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], m.metrics().abandoned.get())),
    );
    enc.histograms(
        "sluice_request_duration_seconds",
        "Time from a request's arrival at the model to its response, in seconds.",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], &m.metrics().request)),
    );
    enc.histograms(
        "sluice_queue_duration_seconds",
        "Time an admitted request waited for a model instance, in seconds.",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], &m.metrics().queue)),
    );
    enc.histograms(
        "sluice_inference_duration_seconds",
        "Time the model instance spent on one run (one batch), in seconds.",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], &m.metrics().inference)),
    );
    enc.histograms(
        "sluice_batch_size",
        "Rows per model run (several requests when dynamic batching joins them).",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], &m.metrics().batch_size)),
    );
    enc.gauges(
        "sluice_model_instances",
        "Loaded instances per model version.",
        models.iter().zip(&labels).map(|(m, l)| (&l[..], m.config().instance_count as f64)),
    );
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], enc.finish()).into_response()
}
