//! `POST /score`: the simple API. `{"data": ...}` for a single-input model or
//! `{"inputs": {"name": ...}}` otherwise, nested arrays without shapes or datatypes (both come from
//! the model); the answer is `{"outputs": {"name": nested arrays}}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::{Tensor, TensorSpec};
use sluice_runtime::ModelHandle;

use crate::error::ApiError;
use crate::json::{NestedData, ShapeTracker, decode_data};
use crate::{AppState, Body, instrumented, read_body};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    inputs: Option<BTreeMap<String, &'a RawValue>>,
    /// Output names to return; all when absent.
    #[serde(default)]
    outputs: Option<Vec<String>>,
}

#[derive(Serialize)]
struct ScoreResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    outputs: BTreeMap<&'a str, NestedData<'a>>,
}

fn tensor(spec: &TensorSpec, raw: &RawValue) -> Result<Tensor, ApiError> {
    let bad = |what: String| ApiError::bad_request(format!("input '{}': {what}", spec.name));
    let mut tracker = ShapeTracker::default();
    let data = decode_data(raw, spec.datatype, Some(&mut tracker)).map_err(|e| bad(format!("invalid data: {e}")))?;
    let mut shape = tracker.shape();
    // One example without its batch dimension (`{"data": [0.1, 0.2, ...]}`) is a batch of one.
    if shape.len() + 1 == spec.shape.len() && spec.shape.first() == Some(&-1) {
        shape.insert(0, 1);
    }
    Tensor::new(spec.name.clone(), shape, data).map_err(|e| bad(e.to_string()))
}

async fn score_on(model: &ModelHandle, body: &Bytes) -> Result<Response, ApiError> {
    let request: ScoreRequest<'_> =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed request JSON: {e}")))?;
    let signature = model.signature();
    let inputs = match (request.data, request.inputs) {
        (Some(data), None) => match signature.inputs.as_slice() {
            [only] => vec![tensor(only, data)?],
            specs => {
                return Err(ApiError::bad_request(format!(
                    "model '{}' has {} inputs ({}); send {{\"inputs\": {{name: data, ...}}}} instead of {{\"data\": ...}}",
                    model.name(),
                    specs.len(),
                    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        },
        (None, Some(named)) => named
            .into_iter()
            .map(|(name, raw)| {
                let idx = signature.input_index(&name).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "unknown input '{name}' (the model's inputs are: {})",
                        signature.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                tensor(&signature.inputs[idx], raw)
            })
            .collect::<Result<_, _>>()?,
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give either \"data\" or \"inputs\", not both")),
        (None, None) => return Err(ApiError::bad_request("missing \"data\" (or \"inputs\" for a multi-input model)")),
    };
    let inputs = signature.order_inputs(inputs).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let names = request.outputs.unwrap_or_default();
    let picked =
        signature.select_outputs(names.iter().map(String::as_str)).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let outcome = model.infer(inputs, picked).await?;
    let response = ScoreResponse {
        model_name: model.name(),
        model_version: model.version(),
        outputs: outcome
            .outputs
            .iter()
            .map(|t| (t.name.as_str(), NestedData { data: &t.data, shape: &t.shape }))
            .collect(),
    };
    let body = serde_json::to_vec(&response).map_err(|e| ApiError::Internal(format!("encoding the response: {e}")))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

async fn score_model(state: &AppState, model: &ModelHandle, body: Body) -> Result<Response, ApiError> {
    instrumented(model, async {
        let body = read_body(body, state.config.max_body_bytes)?;
        score_on(model, &body).await
    })
    .await
}

/// `POST /score`: scores against the only model served.
pub async fn score(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let model = state.repository.only().ok_or_else(|| {
        ApiError::bad_request(format!(
            "this server serves several models ({}); use /models/NAME/score",
            state.repository.names().join(", ")
        ))
    })?;
    score_model(&state, model, body).await
}

/// `POST /models/{name}/score`
pub async fn score_named(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let model = state.repository.get(&name, None)?;
    score_model(&state, model, body).await
}

/// `POST /models/{name}/versions/{version}/score`
pub async fn score_versioned(
    State(state): State<Arc<AppState>>,
    Path((name, version)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let model = state.repository.get(&name, Some(&version))?;
    score_model(&state, model, body).await
}
