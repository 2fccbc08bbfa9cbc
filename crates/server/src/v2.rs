//! Open Inference Protocol v2 (KServe v2 / Triton) REST: health, metadata, readiness and infer,
//! with JSON tensors and the binary tensor data extension.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::Serialize;
use sluice_core::{Tensor, TensorData, TensorSpec};
use sluice_runtime::ModelHandle;

use crate::error::ApiError;
use crate::json::FlatData;
use crate::reply::Reply;
use crate::request::read_request;
use crate::{AppState, instrumented};

/// Header that splits a binary-extension body into its JSON part and its binary part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// An infer request after decoding, before validation against the model.
struct InferRequest<'a> {
    id: Option<Cow<'a, str>>,
    inputs: Vec<Tensor>,
    /// Requested outputs by name with their own `binary_data` choice; empty means all outputs.
    outputs: Vec<(String, Option<bool>)>,
    binary_by_default: bool,
}

/// Decodes the body of an infer request as `POST /v2/models/{name}/infer` does before the request
/// meets a model: the JSON part and, when `header_length` (the value of the
/// `Inference-Header-Content-Length` header) is given, the binary tensor data that follows it.
/// Returns the input tensors in request order, each checked against its own shape, or the 400 the
/// server would answer. Nothing is checked against a model's signature. The fuzz targets drive the
/// decoder through this.
pub fn decode_infer_inputs(header_length: Option<&[u8]>, body: &Bytes) -> Result<Vec<Tensor>, ApiError> {
    decode(header_length, body).map(|request| request.inputs)
}

fn decode<'a>(header_length: Option<&[u8]>, body: &'a Bytes) -> Result<InferRequest<'a>, ApiError> {
    let (json, mut binary) = match header_length {
        None => (&body[..], &[][..]),
        Some(v) => {
            let len: usize = std::str::from_utf8(v).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{HEADER_LENGTH} must be a byte count, got {:?}",
                    String::from_utf8_lossy(v)
                ))
            })?;
            if len > body.len() {
                return Err(ApiError::bad_request(format!(
                    "{HEADER_LENGTH} is {len} but the body has only {} bytes",
                    body.len()
                )));
            }
            body.split_at(len)
        }
    };
    let wire = read_request(json).map_err(|e| ApiError::bad_request(e.0))?;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for input in wire.inputs {
        let bad = |what: String| ApiError::bad_request(format!("input '{}': {what}", input.name));
        let data = match (input.binary_data_size, input.data) {
            (Some(_), Some(_)) => return Err(bad("has both binary_data_size and JSON data".into())),
            (None, None) => return Err(bad("has no data (give \"data\" or binary_data_size)".into())),
            (None, Some(data)) => data,
            (Some(size), None) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > binary.len() {
                    return Err(bad(format!(
                        "binary_data_size is {size} but only {} bytes of binary data remain",
                        binary.len()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                TensorData::from_le_bytes(input.datatype, mine).map_err(|e| bad(e.to_string()))?
            }
        };
        // Checked under an empty (non-allocating) name so the request's name can be moved in.
        let mut tensor = Tensor::new(String::new(), input.shape, data).map_err(|e| bad(e.to_string()))?;
        tensor.name = input.name;
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{} bytes of binary data are not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    let outputs = wire.outputs.unwrap_or_default().into_iter().map(|o| (o.name, o.binary_data)).collect();
    Ok(InferRequest { id: wire.id, inputs, outputs, binary_by_default: wire.binary_data_output.unwrap_or(false) })
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<WireOutput<'a>>,
}

#[derive(Serialize)]
struct WireOutput<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<FlatData<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

fn encode(model: &ModelHandle, id: Option<&str>, outputs: &[Tensor], binary: &[bool]) -> Result<Reply, ApiError> {
    let mut blob = Vec::new();
    let wire = WireResponse {
        model_name: model.name(),
        model_version: model.version(),
        id,
        outputs: outputs
            .iter()
            .zip(binary)
            .map(|(t, &as_binary)| {
                let (parameters, data) = if as_binary {
                    let before = blob.len();
                    t.data.write_le_bytes(&mut blob);
                    (Some(BinarySize { binary_data_size: blob.len() - before }), None)
                } else {
                    (None, Some(FlatData(&t.data)))
                };
                WireOutput { name: &t.name, datatype: t.dtype().as_str(), shape: &t.shape, parameters, data }
            })
            .collect(),
    };
    let estimate: usize = outputs.iter().map(|t| t.data.len() * 12).sum::<usize>() + 128;
    let mut body = Vec::with_capacity(estimate + blob.len());
    serde_json::to_writer(&mut body, &wire).map_err(|e| ApiError::Internal(format!("encoding the response: {e}")))?;
    if blob.is_empty() && !binary.contains(&true) {
        return Ok(Reply::encoded_json(body));
    }
    let json_len = body.len();
    body.extend_from_slice(&blob);
    Ok(Reply {
        status: 200,
        content_type: "application/octet-stream",
        headers: vec![(HEADER_LENGTH, json_len.to_string())],
        body,
    })
}

async fn infer_on(model: &ModelHandle, header_length: Option<&[u8]>, body: &Bytes) -> Result<Reply, ApiError> {
    // Admitted before the body is decoded: an overloaded model refuses for the price of a check.
    let admission = model.admit().await?;
    let request = decode(header_length, body)?;
    let signature = model.signature();
    let inputs = signature.order_inputs(request.inputs).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let picked = signature
        .select_outputs(request.outputs.iter().map(|(n, _)| n.as_str()))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let binary: Vec<bool> = picked
        .iter()
        .map(|&idx| {
            let name = &signature.outputs[idx].name;
            request.outputs.iter().find(|(n, _)| n == name).and_then(|(_, b)| *b).unwrap_or(request.binary_by_default)
        })
        .collect();
    let outcome = model.infer_admitted(admission, inputs, picked).await?;
    crate::front::traced_run(model, &outcome);
    encode(model, request.id.as_deref(), &outcome.outputs, &binary)
}

/// Runs an infer request for model `name` (at `version`, or its latest version). The body was
/// read by the caller; a failure to read it still counts as a failed request of the model.
pub(crate) async fn infer(
    state: &AppState,
    name: &str,
    version: Option<&str>,
    header_length: Option<&[u8]>,
    body: Result<Bytes, ApiError>,
) -> Result<Reply, ApiError> {
    let model = state.repository.get(name, version)?;
    instrumented(model, async { infer_on(model, header_length, &body?).await }).await
}

#[derive(Serialize)]
struct TensorMetadata<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [i64],
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata<'_>> {
    specs.iter().map(|s| TensorMetadata { name: &s.name, datatype: s.datatype.as_str(), shape: &s.shape }).collect()
}

/// `GET /v2/models/{name}[/versions/{version}]`
pub(crate) fn model_metadata(state: &AppState, name: &str, version: Option<&str>) -> Result<Reply, ApiError> {
    let model = state.repository.get(name, version)?;
    let signature = model.signature();
    Ok(Reply::json(
        200,
        &serde_json::json!({
            "name": model.name(),
            "versions": state.repository.versions(name),
            "platform": model.info().platform,
            "device": model.info().device.to_string(),
            "inputs": tensor_metadata(&signature.inputs),
            "outputs": tensor_metadata(&signature.outputs),
        }),
    ))
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`
pub(crate) fn model_ready(state: &AppState, name: &str, version: Option<&str>) -> Result<Reply, ApiError> {
    let model = state.repository.get(name, version)?;
    let ready = state.ready.load(Ordering::Acquire);
    let body = serde_json::json!({ "name": model.name(), "version": model.version(), "ready": ready });
    Ok(Reply::json(if ready { 200 } else { 503 }, &body))
}

/// `GET /v2/health/live`: the process answers.
pub(crate) fn live() -> Reply {
    Reply::json(200, &serde_json::json!({ "live": true }))
}

/// `GET /v2/health/ready`: every model is loaded and the server is not draining.
pub(crate) fn server_ready(state: &AppState) -> Reply {
    let ready = state.ready.load(Ordering::Acquire);
    Reply::json(if ready { 200 } else { 503 }, &serde_json::json!({ "ready": ready }))
}

/// `GET /v2`: server metadata.
pub(crate) fn server_metadata(state: &AppState) -> Reply {
    let models: HashMap<String, Vec<String>> =
        state.repository.names().into_iter().map(|n| (n.clone(), state.repository.versions(&n))).collect();
    Reply::json(
        200,
        &serde_json::json!({
            "name": "sluice",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
            "models": models,
        }),
    )
}
