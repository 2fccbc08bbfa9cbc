//! The admin HTTP API. Everything under `/v1` needs the admin credential, except `/v1/health` and
//! `/v1/gateway/config`, which gateways read with their own, read-only credential; the token
//! verification keys are public at `/.well-known/jwks.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::model::{CreateEndpoint, CreateService, RegenerateKey, TokenRequest, UpdateService, VersionChange};
use crate::{ControlError, ControlPlane};

impl ControlError {
    /// Exhaustive on purpose: a new variant must choose its status.
    fn status(&self) -> StatusCode {
        match self {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::Target(_) => StatusCode::BAD_GATEWAY,
            ControlError::Registry { source, .. } if source.is_internal() => StatusCode::INTERNAL_SERVER_ERROR,
            ControlError::Registry { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        if self.status() == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "admin request failed");
        }
        (self.status(), Json(serde_json::json!({ "error": self.to_string() }))).into_response()
    }
}

/// JSON bodies whose rejections use our error schema.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ControlError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ControlError::Invalid(format!("cannot read the request body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ControlError::Invalid(format!("invalid request body: {e}")))
    }
}

type Result<T> = std::result::Result<T, ControlError>;

/// The admin API router.
pub fn router(cp: Arc<ControlPlane>) -> Router {
    let admin = Router::new()
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{name}", get(show_service).patch(update_service).delete(delete_service))
        .route("/v1/services/{name}/logs", get(service_logs))
        .route("/v1/services/{name}/data", get(service_data))
        .route("/v1/endpoints", get(list_endpoints).post(create_endpoint))
        .route("/v1/endpoints/{name}", get(show_endpoint).delete(delete_endpoint))
        .route("/v1/endpoints/{name}/versions", post(add_version))
        .route("/v1/endpoints/{name}/versions/{version}", axum::routing::patch(update_version).delete(delete_version))
        .route("/v1/models", get(list_models))
        .route(
            "/v1/models/{name}",
            get(show_model).post(register_model).layer(axum::extract::DefaultBodyLimit::max(crate::MAX_MODEL_BYTES)),
        )
        .route("/v1/models/{name}/versions/{version}", axum::routing::delete(delete_model))
        .route("/v1/keys/{name}", get(keys))
        .route("/v1/keys/{name}/regenerate", post(regenerate_key))
        .route("/v1/tokens/{name}", post(token))
        .layer(middleware::from_fn_with_state(cp.clone(), require_admin));
    Router::new()
        .route("/v1/health", get(|| async { StatusCode::OK }))
        .route(
            "/metrics",
            get(|State(cp): State<Arc<ControlPlane>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], cp.render_metrics())
            }),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/gateway/config", get(gateway_config))
        .route("/v1/artifacts/sha256/{sha256}", get(artifact))
        .route("/v1/gateway/report", post(gateway_report))
        .merge(admin)
        .with_state(cp)
}

async fn require_admin(State(cp): State<Arc<ControlPlane>>, request: Request, next: Next) -> Response {
    let presented =
        request.headers().get(header::AUTHORIZATION).and_then(|v| sluice_auth::bearer_credential(v.as_bytes()));
    match presented {
        Some(token) if cp.is_admin(token) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({ "error": "the admin API needs 'Authorization: Bearer <admin token>' (the token is in the data directory's control/admin-token)" })),
        )
            .into_response(),
    }
}

async fn jwks(State(cp): State<Arc<ControlPlane>>) -> impl IntoResponse {
    Json(cp.jwks())
}

#[derive(Deserialize)]
struct ConfigQuery {
    after: Option<u64>,
    #[serde(default)]
    wait_ms: u64,
}

/// Whether the request carries the gateway credential (or the admin one); the 401 to send if not.
fn check_gateway_credential(cp: &ControlPlane, headers: &axum::http::HeaderMap, what: &str) -> Option<Response> {
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| sluice_auth::bearer_credential(v.as_bytes()));
    if presented.is_some_and(|t| cp.may_read_gateway_config(t)) {
        return None;
    }
    let message = format!("{what} needs the gateway credential (control/gateway-token in the data directory)");
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(serde_json::json!({ "error": message })),
        )
            .into_response(),
    )
}

/// A gateway's traffic counters, for `endpoint show`.
async fn gateway_report(
    State(cp): State<Arc<ControlPlane>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response> {
    if let Some(refused) = check_gateway_credential(&cp, &headers, "a traffic report") {
        return Ok(refused);
    }
    let report = serde_json::from_slice(&body).map_err(|e| ControlError::Invalid(format!("invalid report: {e}")))?;
    cp.record_gateway_report(report);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A model artifact by content hash, streamed: what replicas on a remote target load. Read with
/// the gateway credential, which replicas are given.
async fn artifact(
    State(cp): State<Arc<ControlPlane>>,
    headers: axum::http::HeaderMap,
    Path(sha256): Path<String>,
) -> Result<Response> {
    if let Some(refused) = check_gateway_credential(&cp, &headers, "an artifact") {
        return Ok(refused);
    }
    let path = cp.artifact_path(&sha256)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ControlError::Internal(format!("opening artifact {sha256}: {e}")))?;
    let length = file.metadata().await.map_err(|e| ControlError::Internal(e.to_string()))?.len();
    // 256 KiB reads: few syscalls for large models, bounded memory per download.
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream".to_owned()), (header::CONTENT_LENGTH, length.to_string())],
        axum::body::Body::from_stream(chunks),
    )
        .into_response())
}

/// Long poll: answers at once when the configuration differs from `after`, else waits up to
/// `wait_ms` for a change and answers 304.
async fn gateway_config(
    State(cp): State<Arc<ControlPlane>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<ConfigQuery>,
) -> Response {
    if let Some(refused) = check_gateway_credential(&cp, &headers, "the gateway configuration") {
        return refused;
    }
    let wait = Duration::from_millis(q.wait_ms.min(60_000));
    match cp.gateway_config(q.after, wait).await {
        Some(config) => Json(config.as_ref().clone()).into_response(),
        None => StatusCode::NOT_MODIFIED.into_response(),
    }
}

async fn list_services(State(cp): State<Arc<ControlPlane>>) -> Result<impl IntoResponse> {
    Ok(Json(cp.list_services()?))
}

async fn create_service(State(cp): State<Arc<ControlPlane>>, Body(req): Body<CreateService>) -> Result<Response> {
    Ok((StatusCode::CREATED, Json(cp.create_service(req)?)).into_response())
}

async fn show_service(State(cp): State<Arc<ControlPlane>>, Path(name): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(cp.service_status(&name)?))
}

async fn update_service(
    State(cp): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    Body(req): Body<UpdateService>,
) -> Result<impl IntoResponse> {
    Ok(Json(cp.update_service(&name, req)?))
}

async fn delete_service(State(cp): State<Arc<ControlPlane>>, Path(name): Path<String>) -> Result<StatusCode> {
    cp.delete_service(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogQuery {
    replica: Option<usize>,
    offset: Option<u64>,
}

async fn service_logs(
    State(cp): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<impl IntoResponse> {
    Ok(Json(cp.service_logs(&name, q.replica, q.offset).await?))
}

async fn service_data(State(cp): State<Arc<ControlPlane>>, Path(name): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(cp.service_data(&name)?))
}

async fn list_endpoints(State(cp): State<Arc<ControlPlane>>) -> Result<impl IntoResponse> {
    Ok(Json(cp.list_endpoints()?))
}

async fn create_endpoint(State(cp): State<Arc<ControlPlane>>, Body(req): Body<CreateEndpoint>) -> Result<Response> {
    Ok((StatusCode::CREATED, Json(cp.create_endpoint(req)?)).into_response())
}

async fn show_endpoint(State(cp): State<Arc<ControlPlane>>, Path(name): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(cp.endpoint_status(&name)?))
}

async fn delete_endpoint(State(cp): State<Arc<ControlPlane>>, Path(name): Path<String>) -> Result<StatusCode> {
    cp.delete_endpoint(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_version(
    State(cp): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    Body(change): Body<VersionChange>,
) -> Result<impl IntoResponse> {
    Ok(Json(cp.change_version(&name, change, true)?))
}

async fn update_version(
    State(cp): State<Arc<ControlPlane>>,
    Path((name, version)): Path<(String, String)>,
    Body(mut change): Body<VersionChange>,
) -> Result<impl IntoResponse> {
    change.name = version;
    Ok(Json(cp.change_version(&name, change, false)?))
}

async fn delete_version(
    State(cp): State<Arc<ControlPlane>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    Ok(Json(cp.delete_version(&name, &version)?))
}

async fn list_models(State(cp): State<Arc<ControlPlane>>) -> Result<impl IntoResponse> {
    Ok(Json(cp.list_models()?))
}

/// `NAME` (the latest version) or `NAME:VERSION`.
async fn show_model(State(cp): State<Arc<ControlPlane>>, Path(reference): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(cp.show_model(&reference)?))
}

#[derive(Deserialize)]
struct RegisterQuery {
    /// [`RegisterModel`](crate::RegisterModel) as JSON.
    options: Option<String>,
}

/// The body is the model file; its metadata is the `options` query parameter.
async fn register_model(
    State(cp): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    Query(q): Query<RegisterQuery>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let options = match q.options.as_deref() {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| ControlError::Invalid(format!("invalid 'options' query parameter: {e}")))?,
        None => crate::RegisterModel::default(),
    };
    if body.is_empty() {
        return Err(ControlError::Invalid("the request body must be the model file; it is empty".into()));
    }
    let cp2 = cp.clone();
    // Validating and storing a model reads and writes the whole file: off the async threads.
    let mv = tokio::task::spawn_blocking(move || cp2.register_model(&name, &body, options))
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(mv)).into_response())
}

async fn delete_model(
    State(cp): State<Arc<ControlPlane>>,
    Path((name, version)): Path<(String, u32)>,
) -> Result<impl IntoResponse> {
    Ok(Json(cp.delete_model(&name, version)?))
}

async fn keys(State(cp): State<Arc<ControlPlane>>, Path(name): Path<String>) -> Result<impl IntoResponse> {
    Ok(Json(cp.keys(&name)?))
}

async fn regenerate_key(
    State(cp): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    Body(req): Body<RegenerateKey>,
) -> Result<StatusCode> {
    cp.regenerate_key(&name, req)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn token(
    State(cp): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse> {
    // The body is optional: `{}` or nothing asks for the default lifetime.
    let request: TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ControlError::Invalid(format!("invalid request body: {e}")))?
    };
    Ok(Json(cp.issue_token(&name, request)?))
}
