//! `POST /score`: the simple API. `{"data": ...}` for a single-input model or
//! `{"inputs": {"name": ...}}` otherwise, nested arrays without shapes or datatypes (both come from
//! the model); the answer is `{"outputs": {"name": nested arrays}}`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sluice_core::{Tensor, TensorSpec};
use sluice_runtime::ModelHandle;

use crate::error::ApiError;
use crate::json::{NestedData, ShapeTracker, decode_data};
use crate::reply::Reply;
use crate::{AppState, instrumented};

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

async fn score_on(model: &ModelHandle, body: &Bytes) -> Result<Reply, ApiError> {
    // Admitted before the body is decoded, as OIP infer requests are.
    let admission = model.admit().await?;
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
    let outcome = model.infer_admitted(admission, inputs, picked).await?;
    crate::front::traced_run(model, &outcome);
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
    Ok(Reply::encoded_json(body))
}

/// `POST /models/{name}[/versions/{version}]/score`, or `POST /score` (`name` `None`) for the
/// only model served.
pub(crate) async fn score(
    state: &AppState,
    name: Option<&str>,
    version: Option<&str>,
    body: Result<Bytes, ApiError>,
) -> Result<Reply, ApiError> {
    let model = match name {
        Some(name) => state.repository.get(name, version)?,
        None => state.repository.only().ok_or_else(|| {
            ApiError::bad_request(format!(
                "this server serves several models ({}); use /models/NAME/score",
                state.repository.names().join(", ")
            ))
        })?,
    };
    instrumented(model, async { score_on(model, &body?).await }).await
}
