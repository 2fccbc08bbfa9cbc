//! The scoring server: Open Inference Protocol v2 REST and `/score` over the models of a
//! [`Repository`], plus `/metrics`. Decoding, validation and encoding happen here; running the
//! models is the runtime's job.
#![forbid(unsafe_code)]

mod error;
mod front;
pub mod json;
pub mod openapi;
mod reply;
mod repository;
pub mod request;
mod route;
mod score;
mod v2;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
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
    /// Where sampled inputs and predictions go (`collect_model_data`), if anywhere.
    pub collector: Option<Arc<sluice_collect::Collector>>,
    /// The service this replica serves, when the control plane started it (named on its spans).
    pub service: Option<Arc<str>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 64 * 1024 * 1024,
            limits: sluice_http1::Limits::default(),
            collector: None,
            service: None,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub repository: Repository,
    pub config: ServerConfig,
    /// False while draining at shutdown, so load balancers stop sending traffic.
    pub ready: AtomicBool,
    /// `GET /swagger.json`, made on first request: the models do not change while serving.
    openapi: OnceLock<Vec<u8>>,
}

impl AppState {
    pub fn new(repository: Repository, config: ServerConfig) -> Arc<Self> {
        Arc::new(AppState { repository, config, ready: AtomicBool::new(true), openapi: OnceLock::new() })
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
        Route::Swagger => Ok(swagger(state)),
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

/// [`answer`] for a request that came without a socket (the gRPC front, `sluice-grpc`): the same
/// routes, statuses and bodies, with the HTTP front's model data collection and request span
/// (under the `traceparent` the request carries) and its `x-request-id` (the caller's, or a new
/// one) on the answer. The body is taken as it is (no content coding).
pub async fn call(state: &AppState, request: http::Request<Bytes>) -> http::Response<Bytes> {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let header = |name: &str| parts.headers.get(name).map(http::HeaderValue::as_bytes);
    let header_length = header(HEADER_LENGTH);
    let body = Ok(body);
    let collected = front::kept_for_collection(state, method, target, &body);
    let work = answer(state, method, target, header_length, body);
    let (reply, traced) = match front::request_span(state, target, header(sluice_telemetry::trace::TRACEPARENT)) {
        None => (work.await, None),
        Some(span) => {
            let (reply, run) = front::noting_run(work).await;
            (reply, Some((span, run)))
        }
    };
    let id = sluice_telemetry::request_id::Id::of(header(sluice_telemetry::request_id::HEADER));
    front::collect(state, &id, header_length, collected, &reply);
    if let Some((span, run)) = traced {
        front::end_span(span, run, method, reply.status);
    }
    let mut response = http::Response::new(Bytes::from(reply.body));
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(reply.content_type));
    for (name, value) in reply.headers {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    if let Ok(value) = http::HeaderValue::from_bytes(id.as_bytes()) {
        headers.insert(sluice_telemetry::request_id::HEADER, value);
    }
    response
}

/// `GET /swagger.json`: the OpenAPI document (see [`openapi`]).
fn swagger(state: &AppState) -> Reply {
    let body = state.openapi.get_or_init(|| {
        serde_json::to_vec(&openapi::document(&state.repository)).expect("a JSON value serializes; this is a bug")
    });
    Reply::encoded_json(body.clone())
}

/// Model data collection's counters (`collect_model_data`), so an operator sees records dropped
/// because the writer fell behind (the request is never slowed for it) and files removed to stay
/// within the disk budget. A replica serves one service, so the series carry no labels.
fn collection_metrics(enc: &mut TextEncoder, stats: &sluice_collect::Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    let none: &[(&str, &str)] = &[];
    for (name, help, value) in [
        ("sluice_collected_records_total", "Sampled requests written by model data collection.", &stats.recorded),
        (
            "sluice_collect_dropped_records_total",
            "Sampled requests model data collection dropped because its writer was behind or could not write.",
            &stats.dropped,
        ),
        (
            "sluice_collect_evicted_files_total",
            "Collected files removed, oldest first, to stay within the disk budget.",
            &stats.evicted_files,
        ),
    ] {
        enc.counters(name, help, [(none, value.load(Relaxed))]);
    }
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
    if let Some(collector) = &state.config.collector {
        collection_metrics(&mut enc, collector.stats());
    }
    Reply {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        headers: Vec::new(),
        body: enc.finish().into_bytes(),
    }
}
