//! gRPC messages to OIP v2 REST requests and REST answers back.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tonic::{Code, Status};

use crate::pb::model_infer_request::InferInputTensor;
use crate::pb::model_infer_response::InferOutputTensor;
use crate::pb::{InferTensorContents, ModelInferRequest, ModelInferResponse};

/// The binary tensor extension's header: the length of the JSON part of the body.
pub(crate) const HEADER_LENGTH: &str = "inference-header-content-length";

/// `/v2/models/{name}[/versions/{version}]{tail}`, names percent-encoded.
pub(crate) fn model_path(name: &str, version: &str, tail: &str) -> Result<String, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument("the model name is empty"));
    }
    let mut path = String::with_capacity(16 + name.len() + version.len() + tail.len());
    path.push_str("/v2/models/");
    push_segment(&mut path, name);
    if !version.is_empty() {
        path.push_str("/versions/");
        push_segment(&mut path, version);
    }
    path.push_str(tail);
    Ok(path)
}

/// Appends `segment`, every byte but the unreserved ones (RFC 3986) percent-encoded, so a name
/// cannot change the path's shape.
fn push_segment(out: &mut String, segment: &str) {
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The REST form of a ModelInfer call: its path, its body (the JSON part, then each input's
/// bytes) and the JSON part's length, for `Inference-Header-Content-Length`. Inputs sent as
/// `raw_input_contents` are passed through untouched (the server checks their size against the
/// shape and datatype, as for REST); typed contents are encoded little-endian, BYTES elements as
/// a 4-byte little-endian length and the bytes. Every output is asked for in binary, which becomes
/// `raw_output_contents`.
pub fn infer_request(request: &ModelInferRequest) -> Result<(String, Bytes, usize), Status> {
    let path = model_path(&request.model_name, &request.model_version, "/infer")?;
    let raw = &request.raw_input_contents;
    if !raw.is_empty() {
        if raw.len() != request.inputs.len() {
            return Err(Status::invalid_argument(format!(
                "raw_input_contents has {} entries for {} inputs; give one per input, in order",
                raw.len(),
                request.inputs.len()
            )));
        }
        if let Some(input) = request.inputs.iter().find(|i| i.contents.is_some()) {
            return Err(Status::invalid_argument(format!(
                "input '{}' has contents while the request has raw_input_contents; use one or the other for all inputs",
                input.name
            )));
        }
    }
    let mut blobs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.iter().enumerate() {
        if let Some(key) = input.parameters.keys().find(|k| k.starts_with("shared_memory")) {
            return Err(Status::invalid_argument(format!(
                "input '{}': parameter '{key}': shared memory is not supported; send the data in the request",
                input.name
            )));
        }
        let bytes = match raw.get(i) {
            Some(bytes) => bytes.clone(),
            None => {
                let mut out = Vec::new();
                encode_input(input, &mut out)?;
                Bytes::from(out)
            }
        };
        blobs.push(bytes);
    }
    if let Some(output) = request.outputs.iter().find(|o| o.parameters.contains_key("classification")) {
        return Err(Status::invalid_argument(format!(
            "output '{}': the classification extension is not supported",
            output.name
        )));
    }
    let mut json = serde_json::json!({
        "inputs": request.inputs.iter().zip(&blobs).map(|(input, bytes)| serde_json::json!({
            "name": input.name,
            "datatype": input.datatype,
            "shape": input.shape,
            "parameters": { "binary_data_size": bytes.len() },
        })).collect::<Vec<_>>(),
        "parameters": { "binary_data_output": true },
    });
    if !request.id.is_empty() {
        json["id"] = request.id.clone().into();
    }
    if !request.outputs.is_empty() {
        json["outputs"] = request
            .outputs
            .iter()
            .map(|o| serde_json::json!({ "name": o.name, "parameters": { "binary_data": true } }))
            .collect();
    }
    let json = serde_json::to_vec(&json).map_err(|e| Status::internal(format!("encoding the request: {e}")))?;
    let json_length = json.len();
    let mut body = BytesMut::with_capacity(json_length + blobs.iter().map(Bytes::len).sum::<usize>());
    body.extend_from_slice(&json);
    for blob in &blobs {
        body.extend_from_slice(blob);
    }
    Ok((path, body.freeze(), json_length))
}

/// Appends the little-endian bytes of `input`'s typed contents to `out`: from the one contents
/// field its datatype takes (INT8, INT16 and INT32 share `int_contents`, and the unsigned ones
/// `uint_contents`); a value out of its datatype's range, contents in another field, and FP16 or
/// BF16 (no typed field: they travel in `raw_input_contents`) are INVALID_ARGUMENT. No contents
/// at all is an empty tensor's data.
pub fn encode_input(input: &InferInputTensor, out: &mut Vec<u8>) -> Result<(), Status> {
    let Some(c) = &input.contents else { return Ok(()) };
    let bad = |what: String| Status::invalid_argument(format!("input '{}': {what}", input.name));
    let datatype = input.datatype.as_str();
    let field = match datatype {
        "BOOL" => "bool_contents",
        "INT8" | "INT16" | "INT32" => "int_contents",
        "INT64" => "int64_contents",
        "UINT8" | "UINT16" | "UINT32" => "uint_contents",
        "UINT64" => "uint64_contents",
        "FP32" => "fp32_contents",
        "FP64" => "fp64_contents",
        "BYTES" => "bytes_contents",
        "FP16" | "BF16" => {
            return Err(bad(format!("{datatype} has no typed contents field; send it in raw_input_contents")));
        }
        other => return Err(bad(format!("unknown datatype '{other}'"))),
    };
    if let Some(other) = filled(c).into_iter().find(|f| *f != field) {
        return Err(bad(format!("datatype {datatype} takes its data in {field}, not {other}")));
    }
    let range = |v: &dyn std::fmt::Display| bad(format!("{v} is out of the range of {datatype}"));
    match datatype {
        "BOOL" => out.extend(c.bool_contents.iter().map(|&b| u8::from(b))),
        "INT8" => {
            for &v in &c.int_contents {
                out.extend_from_slice(&i8::try_from(v).map_err(|_| range(&v))?.to_le_bytes());
            }
        }
        "INT16" => {
            for &v in &c.int_contents {
                out.extend_from_slice(&i16::try_from(v).map_err(|_| range(&v))?.to_le_bytes());
            }
        }
        "INT32" => c.int_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        "INT64" => c.int64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        "UINT8" => {
            for &v in &c.uint_contents {
                out.push(u8::try_from(v).map_err(|_| range(&v))?);
            }
        }
        "UINT16" => {
            for &v in &c.uint_contents {
                out.extend_from_slice(&u16::try_from(v).map_err(|_| range(&v))?.to_le_bytes());
            }
        }
        "UINT32" => c.uint_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        "UINT64" => c.uint64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        "FP32" => c.fp32_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        "FP64" => c.fp64_contents.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        _ => {
            for element in &c.bytes_contents {
                let len = u32::try_from(element.len()).map_err(|_| bad("a BYTES element is over 4 GiB".into()))?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(element);
            }
        }
    }
    Ok(())
}

/// The contents fields that hold data.
fn filled(c: &InferTensorContents) -> Vec<&'static str> {
    [
        ("bool_contents", c.bool_contents.is_empty()),
        ("int_contents", c.int_contents.is_empty()),
        ("int64_contents", c.int64_contents.is_empty()),
        ("uint_contents", c.uint_contents.is_empty()),
        ("uint64_contents", c.uint64_contents.is_empty()),
        ("fp32_contents", c.fp32_contents.is_empty()),
        ("fp64_contents", c.fp64_contents.is_empty()),
        ("bytes_contents", c.bytes_contents.is_empty()),
    ]
    .into_iter()
    .filter(|(_, empty)| !empty)
    .map(|(name, _)| name)
    .collect()
}

#[derive(Deserialize)]
struct RestResponse {
    #[serde(default)]
    model_name: String,
    #[serde(default)]
    model_version: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    outputs: Vec<RestOutput>,
}

#[derive(Deserialize)]
struct RestOutput {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    #[serde(default)]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// The ModelInferResponse for a REST infer answer: each output's bytes in `raw_output_contents`,
/// sliced from the binary part without a copy (or, for an output that came as JSON data, encoded
/// as the binary extension would have). A failed answer is its gRPC status.
pub fn infer_response(answer: &http::Response<Bytes>) -> Result<ModelInferResponse, Status> {
    if !answer.status().is_success() {
        return Err(status_of(answer));
    }
    let body = answer.body();
    let json_length = match answer.headers().get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => {
            v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).filter(|&n| n <= body.len()).ok_or_else(
                || Status::internal(format!("the answer's {HEADER_LENGTH} is not a length within its body")),
            )?
        }
    };
    let rest: RestResponse = serde_json::from_slice(&body[..json_length])
        .map_err(|e| Status::internal(format!("unreadable infer answer: {e}")))?;
    let mut offset = json_length;
    let mut outputs = Vec::with_capacity(rest.outputs.len());
    let mut raw = Vec::with_capacity(rest.outputs.len());
    for output in rest.outputs {
        let size = output.parameters.as_ref().and_then(|p| p.get("binary_data_size")).and_then(|v| v.as_u64());
        let bytes = match (size, &output.data) {
            (Some(size), _) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size > body.len() - offset {
                    return Err(Status::internal(format!(
                        "output '{}' claims {size} bytes but the answer has {} left",
                        output.name,
                        body.len() - offset
                    )));
                }
                let bytes = body.slice(offset..offset + size);
                offset += size;
                bytes
            }
            (None, Some(data)) => Bytes::from(json_data_bytes(&output.name, &output.datatype, data)?),
            (None, None) => Bytes::new(),
        };
        raw.push(bytes);
        outputs.push(InferOutputTensor {
            name: output.name,
            datatype: output.datatype,
            shape: output.shape,
            parameters: Default::default(),
            contents: None,
        });
    }
    Ok(ModelInferResponse {
        model_name: rest.model_name,
        model_version: rest.model_version,
        id: rest.id.unwrap_or_default(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    })
}

/// JSON tensor data (nested or flat) as the binary extension's bytes.
fn json_data_bytes(name: &str, datatype: &str, data: &serde_json::Value) -> Result<Vec<u8>, Status> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let bad = || Status::internal(format!("output '{name}': JSON data that is not {datatype}"));
    let mut out = Vec::with_capacity(flat.len() * 4);
    for v in flat {
        match datatype {
            "BOOL" => out.push(u8::from(v.as_bool().ok_or_else(bad)?)),
            "INT8" => {
                out.extend_from_slice(&i8::try_from(v.as_i64().ok_or_else(bad)?).map_err(|_| bad())?.to_le_bytes())
            }
            "INT16" => {
                out.extend_from_slice(&i16::try_from(v.as_i64().ok_or_else(bad)?).map_err(|_| bad())?.to_le_bytes())
            }
            "INT32" => {
                out.extend_from_slice(&i32::try_from(v.as_i64().ok_or_else(bad)?).map_err(|_| bad())?.to_le_bytes())
            }
            "INT64" => out.extend_from_slice(&v.as_i64().ok_or_else(bad)?.to_le_bytes()),
            "UINT8" => out.push(u8::try_from(v.as_u64().ok_or_else(bad)?).map_err(|_| bad())?),
            "UINT16" => {
                out.extend_from_slice(&u16::try_from(v.as_u64().ok_or_else(bad)?).map_err(|_| bad())?.to_le_bytes())
            }
            "UINT32" => {
                out.extend_from_slice(&u32::try_from(v.as_u64().ok_or_else(bad)?).map_err(|_| bad())?.to_le_bytes())
            }
            "UINT64" => out.extend_from_slice(&v.as_u64().ok_or_else(bad)?.to_le_bytes()),
            // Narrowing to f32 is what the datatype says.
            #[allow(clippy::cast_possible_truncation)]
            "FP32" => out.extend_from_slice(&(v.as_f64().ok_or_else(bad)? as f32).to_le_bytes()),
            "FP64" => out.extend_from_slice(&v.as_f64().ok_or_else(bad)?.to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().ok_or_else(bad)?;
                let len = u32::try_from(s.len()).map_err(|_| bad())?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            _ => {
                return Err(Status::internal(format!(
                    "output '{name}': {datatype} came as JSON data, which this gateway cannot turn into raw contents"
                )));
            }
        }
    }
    Ok(out)
}

fn flatten<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        scalar => out.push(scalar),
    }
}

/// The gRPC status of a failed REST answer, with the answer's `{"error": "..."}` message:
/// 400, 415 INVALID_ARGUMENT; 401 UNAUTHENTICATED; 403 PERMISSION_DENIED; 404 NOT_FOUND; 405
/// UNIMPLEMENTED; 408, 504 DEADLINE_EXCEEDED; 413, 429 RESOURCE_EXHAUSTED; 502, 503 UNAVAILABLE;
/// 500 INTERNAL; any other UNKNOWN.
pub fn status_of(answer: &http::Response<Bytes>) -> Status {
    let status = answer.status().as_u16();
    let code = match status {
        400 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        405 => Code::Unimplemented,
        408 | 504 => Code::DeadlineExceeded,
        413 | 429 => Code::ResourceExhausted,
        502 | 503 => Code::Unavailable,
        500 => Code::Internal,
        _ => Code::Unknown,
    };
    let message = serde_json::from_slice::<serde_json::Value>(answer.body())
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("the server answered {status}"));
    let mut s = Status::new(code, message);
    crate::copy_metadata(answer, s.metadata_mut());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::model_infer_request::InferRequestedOutputTensor;

    fn input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    fn split(body: &Bytes, json_length: usize) -> (serde_json::Value, &[u8]) {
        (serde_json::from_slice(&body[..json_length]).expect("json"), &body[json_length..])
    }

    #[test]
    fn typed_contents_become_the_binary_extension() {
        let request = ModelInferRequest {
            model_name: "my model".into(),
            model_version: "2".into(),
            id: "r1".into(),
            inputs: vec![
                input(
                    "x",
                    "FP32",
                    vec![1, 2],
                    Some(InferTensorContents { fp32_contents: vec![1.0, -2.5], ..Default::default() }),
                ),
                input(
                    "s",
                    "BYTES",
                    vec![2],
                    Some(InferTensorContents {
                        bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()],
                        ..Default::default()
                    }),
                ),
                input(
                    "i",
                    "INT16",
                    vec![1],
                    Some(InferTensorContents { int_contents: vec![-2], ..Default::default() }),
                ),
            ],
            outputs: vec![InferRequestedOutputTensor { name: "y".into(), parameters: Default::default() }],
            ..Default::default()
        };
        let (path, body, n) = infer_request(&request).expect("request");
        assert_eq!(path, "/v2/models/my%20model/versions/2/infer");
        let (json, binary) = split(&body, n);
        assert_eq!(json["id"], "r1");
        assert_eq!(json["parameters"]["binary_data_output"], true);
        assert_eq!(json["outputs"][0]["name"], "y");
        assert_eq!(json["inputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(json["inputs"][1]["parameters"]["binary_data_size"], 10);
        assert_eq!(json["inputs"][2]["parameters"]["binary_data_size"], 2);
        let mut expected = Vec::new();
        expected.extend_from_slice(&1.0f32.to_le_bytes());
        expected.extend_from_slice(&(-2.5f32).to_le_bytes());
        expected.extend_from_slice(&[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        expected.extend_from_slice(&(-2i16).to_le_bytes());
        assert_eq!(binary, &expected[..]);
    }

    #[test]
    fn raw_contents_pass_through_and_mixing_is_refused() {
        let mut request = ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![input("x", "FP16", vec![2], None)],
            raw_input_contents: vec![Bytes::from_static(&[1, 2, 3, 4])],
            ..Default::default()
        };
        let (path, body, n) = infer_request(&request).expect("request");
        assert_eq!(path, "/v2/models/m/infer");
        assert_eq!(split(&body, n).1, &[1, 2, 3, 4]);
        request.raw_input_contents.push(Bytes::new());
        assert_eq!(infer_request(&request).expect_err("count").code(), Code::InvalidArgument);
        request.raw_input_contents.pop();
        request.inputs[0].contents = Some(InferTensorContents::default());
        assert_eq!(infer_request(&request).expect_err("mixed").code(), Code::InvalidArgument);
    }

    #[test]
    fn wrong_fields_ranges_and_types_are_invalid_arguments() {
        let wrong =
            input("x", "FP32", vec![1], Some(InferTensorContents { int_contents: vec![1], ..Default::default() }));
        let e = encode_input(&wrong, &mut Vec::new()).expect_err("field");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("fp32_contents"), "{}", e.message());
        let range =
            input("x", "UINT8", vec![1], Some(InferTensorContents { uint_contents: vec![256], ..Default::default() }));
        assert_eq!(encode_input(&range, &mut Vec::new()).expect_err("range").code(), Code::InvalidArgument);
        let half = input("x", "FP16", vec![1], Some(InferTensorContents::default()));
        assert_eq!(encode_input(&half, &mut Vec::new()).expect_err("fp16").code(), Code::InvalidArgument);
        assert_eq!(model_path("", "", "").expect_err("empty").code(), Code::InvalidArgument);
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: Vec<u8>) -> http::Response<Bytes> {
        let mut b = http::Response::builder().status(status);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(Bytes::from(body)).expect("response")
    }

    #[test]
    fn binary_and_json_outputs_become_raw_output_contents() {
        let json = br#"{"model_name":"m","model_version":"1","id":"r","outputs":[
            {"name":"a","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}},
            {"name":"b","datatype":"INT64","shape":[2],"data":[[1],[-1]]}]}"#;
        let mut body = json.to_vec();
        body.extend_from_slice(&3.5f32.to_le_bytes());
        let length = json.len().to_string();
        let r = infer_response(&answer(200, &[(HEADER_LENGTH, &length), ("x-sluice-version", "blue")], body))
            .expect("response");
        assert_eq!((r.model_name.as_str(), r.model_version.as_str(), r.id.as_str()), ("m", "1", "r"));
        assert_eq!(r.outputs.len(), 2);
        assert_eq!(&r.raw_output_contents[0][..], &3.5f32.to_le_bytes());
        let mut ints = 1i64.to_le_bytes().to_vec();
        ints.extend_from_slice(&(-1i64).to_le_bytes());
        assert_eq!(&r.raw_output_contents[1][..], &ints[..]);
    }

    #[test]
    fn failed_answers_map_to_statuses_with_their_message() {
        for (status, code) in [
            (400, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (413, Code::ResourceExhausted),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (500, Code::Internal),
        ] {
            let s = status_of(&answer(status, &[("x-sluice-version", "v2")], br#"{"error":"nope"}"#.to_vec()));
            assert_eq!((s.code(), s.message()), (code, "nope"), "{status}");
            assert_eq!(s.metadata().get("x-sluice-version").map(|v| v.to_str().ok()), Some(Some("v2")));
        }
        let r = infer_response(&answer(200, &[(HEADER_LENGTH, "999")], b"{}".to_vec()));
        assert_eq!(r.expect_err("length").code(), Code::Internal);
    }
}
