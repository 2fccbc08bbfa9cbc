//! The scoring server: Open Inference Protocol v2 REST and `/score` over the models of a
//! [`Repository`], plus `/metrics`. Decoding, validation and encoding happen here; running the
//! models is the runtime's job.
#![forbid(unsafe_code)]

mod error;
mod front;
pub mod json;
mod reply;
mod repository;
pub mod request;
mod route;
mod score;
mod v2;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use sluice_runtime::{ErrorKind, ModelHandle};
use sluice_telemetry::TextEncoder;

pub use error::ApiError;
pub use front::serve;
pub use reply::Reply;
pub use repository::Repository;
pub use route::{ModelAction, Route, route};
pub use v2::{HEADER_LENGTH, decode_infer_inputs};

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Timeouts and the connection cap every caller is held to.
    pub limits: sluice_http1::Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { max_body_bytes: 64 * 1024 * 1024, limits: sluice_http1::Limits::default() }
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

/// Runs a model request and records its count, errors and duration against the model.
pub(crate) async fn instrumented(
    model: &ModelHandle,
    request: impl Future<Output = Result<Reply, ApiError>>,
) -> Result<Reply, ApiError> {
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

/// Answers one request: `target` is the request's path and query, `header_length` its
/// `Inference-Header-Content-Length`, `body` the body as read (or why it could not be). This is
/// the whole HTTP surface of a scoring server short of the connection; tests drive it directly.
pub async fn answer(
    state: &AppState,
    method: &str,
    target: &str,
    header_length: Option<&[u8]>,
    body: Result<Bytes, ApiError>,
) -> Reply {
    let path = target.split('?').next().unwrap_or_default();
    let route = match route::route(method, path) {
        Ok(route) => route,
        Err(e) => return e.into(),
    };
    let result = match route {
        Route::ServerMetadata => Ok(v2::server_metadata(state)),
        Route::Live => Ok(v2::live()),
        Route::ServerReady => Ok(v2::server_ready(state)),
        Route::Metrics => Ok(metrics(state)),
        Route::ScoreOnly => score::score(state, None, None, body).await,
        Route::Model { name, version, action } => {
            let version = version.as_deref();
            match action {
                ModelAction::Metadata => v2::model_metadata(state, &name, version),
                ModelAction::Ready => v2::model_ready(state, &name, version),
                ModelAction::Infer => v2::infer(state, &name, version, header_length, body).await,
                ModelAction::Score => score::score(state, Some(&name), version, body).await,
            }
        }
    };
    result.unwrap_or_else(Reply::from)
}

/// `GET /metrics`: Prometheus text format.
fn metrics(state: &AppState) -> Reply {
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
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        headers: Vec::new(),
        body: enc.finish().into_bytes(),
    }
}
