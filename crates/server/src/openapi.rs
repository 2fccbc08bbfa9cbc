//! `GET /swagger.json`: an OpenAPI 3.0 document of what this server serves, generated from the
//! loaded models' signatures, so a caller (or a client generator) knows every route, every tensor's
//! name, datatype and shape, and has a request body that works.
//!
//! Each model gets literal paths (`/v2/models/mlp-small/infer`, not `/v2/models/{model}/infer`),
//! because each has its own request and response schemas: the unversioned routes describe the
//! latest version, and `/versions/{v}/...` each version. Datatypes become JSON types with their
//! ranges (`UINT8` is an integer in 0..=255, `BOOL` a boolean, `FP16` a number within ±65504);
//! shapes become array nesting for `/score` (fixed dimensions as `minItems`/`maxItems`) and a flat
//! row-major `data` array for OIP v2, with the dimensions spelled out in each description. The
//! `example` of each request body is built from the signature (zeros; a dynamic dimension is 1,
//! or the size another input fixes for a dimension of the same name) and is a request the model
//! takes. OpenAPI 3.0 rather than 3.1: more client generators read it.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value, json};
use sluice_core::{DataType, ModelSignature, TensorSpec};
use sluice_http1::percent_encode;

use crate::repository::Repository;

/// The OpenAPI version written.
pub const OPENAPI_VERSION: &str = "3.0.3";

/// Largest example a model's request gets, in tensor elements over all its inputs. Past it the
/// example is left out (and the description says so) rather than writing megabytes of zeros.
pub const MAX_EXAMPLE_ELEMENTS: usize = 1 << 16;

/// The document for everything `repository` serves.
pub fn document(repository: &Repository) -> Value {
    let mut doc = Builder::default();
    doc.server_paths();
    let only = repository.only().map(|m| (m.name().to_owned(), m.version().to_owned()));
    for name in repository.names() {
        let Ok(latest) = repository.get(&name, None) else { continue };
        let latest_version = latest.version().to_owned();
        let mut latest_refs = None;
        for version in repository.versions(&name) {
            let Ok(model) = repository.get(&name, Some(&version)) else { continue };
            let refs = doc.model_schemas(&name, &version, model.signature());
            doc.model_paths(&name, Some(&version), &refs);
            if version == latest_version {
                latest_refs = Some(refs);
            }
        }
        if let Some(refs) = latest_refs {
            doc.model_paths(&name, None, &refs);
            if only.as_ref().is_some_and(|(n, _)| *n == name) {
                doc.score_only(&name, &refs);
            }
        }
    }
    let models: Vec<String> =
        repository.names().iter().map(|n| format!("{n} (versions {})", repository.versions(n).join(", "))).collect();
    json!({
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Sluice scoring server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Open Inference Protocol v2 and /score for the models this server serves: {}. \
                 Unversioned model routes go to a model's latest version. Generated from the models' \
                 signatures; each request body's example is a request the model takes.",
                if models.is_empty() { "none".to_owned() } else { models.join("; ") }
            ),
        },
        "servers": [{ "url": "/" }],
        "tags": doc.tags.iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        "paths": doc.paths,
        "components": { "schemas": doc.schemas },
    })
}

/// What the routes of one model version refer to: the names of its schemas, and its examples.
struct ModelRefs {
    infer_request: String,
    infer_response: String,
    score_request: String,
    score_response: String,
    infer_example: Option<Value>,
    score_example: Option<Value>,
}

#[derive(Default)]
struct Builder {
    paths: Map<String, Value>,
    schemas: Map<String, Value>,
    operation_ids: HashSet<String>,
    tags: Vec<String>,
}

impl Builder {
    /// The server's own routes and the schemas every model route shares.
    fn server_paths(&mut self) {
        let object = |properties: Value, required: &[&str]| json!({ "type": "object", "required": required, "properties": properties });
        let string = json!({ "type": "string" });
        let strings = json!({ "type": "array", "items": { "type": "string" } });
        let tensor_metadata = object(
            json!({
                "name": string,
                "datatype": { "type": "string", "enum": DataType::ALL.map(DataType::as_str) },
                "shape": { "type": "array", "items": { "type": "integer", "format": "int64" },
                           "description": "-1 is a dimension of any size" },
            }),
            &["name", "datatype", "shape"],
        );
        for (name, schema) in [
            ("Error", object(json!({ "error": string }), &["error"])),
            ("Live", object(json!({ "live": { "type": "boolean" } }), &["live"])),
            ("Ready", object(json!({ "ready": { "type": "boolean" } }), &["ready"])),
            (
                "ServerMetadata",
                object(
                    json!({
                        "name": string,
                        "version": string,
                        "extensions": strings,
                        "models": { "type": "object", "additionalProperties": strings,
                                    "description": "each model's versions" },
                    }),
                    &["name", "version", "extensions"],
                ),
            ),
            ("TensorMetadata", tensor_metadata),
            (
                "ModelMetadata",
                object(
                    json!({
                        "name": string,
                        "versions": strings,
                        "platform": string,
                        "device": string,
                        "inputs": { "type": "array", "items": schema_ref("TensorMetadata") },
                        "outputs": { "type": "array", "items": schema_ref("TensorMetadata") },
                    }),
                    &["name", "versions", "platform", "inputs", "outputs"],
                ),
            ),
            (
                "ModelReady",
                object(
                    json!({ "name": string, "version": string, "ready": { "type": "boolean" } }),
                    &["name", "version", "ready"],
                ),
            ),
        ] {
            self.schemas.insert(name.to_owned(), schema);
        }
        self.tag("server");
        let mut get = |path: &str, id: &str, summary: &str, responses: Value| {
            let op = self.operation(id, "server", summary, None, responses);
            self.paths.insert(path.to_owned(), json!({ "get": op }));
        };
        get("/v2/health/live", "server_live", "Liveness: the process answers", json!({ "200": reply("live", "Live") }));
        get(
            "/v2/health/ready",
            "server_ready",
            "Readiness: every model is loaded and the server is not draining",
            json!({ "200": reply("ready", "Ready"), "503": reply("not ready (draining)", "Ready") }),
        );
        get(
            "/v2",
            "server_metadata",
            "Server metadata: extensions and the models served",
            json!({ "200": reply("server metadata", "ServerMetadata") }),
        );
    }

    fn tag(&mut self, tag: &str) {
        if !self.tags.iter().any(|t| t == tag) {
            self.tags.push(tag.to_owned());
        }
    }

    /// A unique component name from `parts`.
    fn schema_name(&self, parts: &[&str]) -> String {
        let base = component_name(&parts.join("."));
        unique(base, |n| self.schemas.contains_key(n))
    }

    /// An operation object with a unique `operationId` built from `id`.
    fn operation(&mut self, id: &str, tag: &str, summary: &str, body: Option<Value>, responses: Value) -> Value {
        let id = unique(identifier(id), |n| self.operation_ids.contains(n));
        self.operation_ids.insert(id.clone());
        let mut op = json!({ "operationId": id, "tags": [tag], "summary": summary, "responses": responses });
        if let Some(body) = body {
            op["requestBody"] = body;
        }
        op
    }

    /// The request and response schemas of one model version.
    fn model_schemas(&mut self, name: &str, version: &str, signature: &ModelSignature) -> ModelRefs {
        let names = |what: &str| [name, &format!("v{version}"), what].map(str::to_owned);
        let mut add = |what: &str, schema: Value| {
            let parts = names(what);
            let key = self.schema_name(&parts.iter().map(String::as_str).collect::<Vec<_>>());
            self.schemas.insert(key.clone(), schema);
            key
        };
        let shapes = example_shapes(&signature.inputs);
        let elements = shapes.iter().map(|s| elements(s)).fold(0usize, usize::saturating_add);
        let examples = elements <= MAX_EXAMPLE_ELEMENTS;
        ModelRefs {
            infer_request: add("InferRequest", infer_request(signature)),
            infer_response: add("InferResponse", infer_response(signature)),
            score_request: add("ScoreRequest", score_request(signature)),
            score_response: add("ScoreResponse", score_response(signature)),
            infer_example: examples.then(|| infer_example(&signature.inputs, &shapes)),
            score_example: examples.then(|| score_example(&signature.inputs, &shapes)),
        }
    }

    /// `/v2/models/{name}[/versions/{version}][/ready|/infer]` and `/models/.../score`.
    fn model_paths(&mut self, name: &str, version: Option<&str>, refs: &ModelRefs) {
        self.tag(name);
        let (at, id_suffix) = match version {
            Some(v) => (format!("{}/versions/{}", percent_encode(name), percent_encode(v)), format!("{name}_v{v}")),
            None => (percent_encode(name), name.to_owned()),
        };
        let which = match version {
            Some(v) => format!("model '{name}' version {v}"),
            None => format!("model '{name}' (its latest version)"),
        };
        let errors = |codes: &[&str]| {
            let mut r = Map::new();
            for code in codes {
                r.insert((*code).to_owned(), error_reply(code));
            }
            r
        };
        let mut responses = errors(&["404", "503"]);
        responses.insert("200".into(), reply("model metadata", "ModelMetadata"));
        let op = self.operation(
            &format!("metadata_{id_suffix}"),
            name,
            &format!("Metadata of {which}: inputs and outputs"),
            None,
            Value::Object(responses),
        );
        self.paths.insert(format!("/v2/models/{at}"), json!({ "get": op }));

        let mut responses = errors(&["404"]);
        responses.insert("200".into(), reply("ready", "ModelReady"));
        responses.insert("503".into(), reply("not ready (draining) or failed to load", "ModelReady"));
        let op = self.operation(
            &format!("ready_{id_suffix}"),
            name,
            &format!("Readiness of {which}"),
            None,
            Value::Object(responses),
        );
        self.paths.insert(format!("/v2/models/{at}/ready"), json!({ "get": op }));

        let scoring_errors = ["400", "404", "413", "500", "503", "504"];
        let mut responses = errors(&scoring_errors);
        responses.insert(
            "200".into(),
            json!({
                "description": "the outputs; with binary outputs asked for, the body is \
                    application/octet-stream: this JSON in the first Inference-Header-Content-Length \
                    bytes, then each binary output's bytes",
                "content": { "application/json": { "schema": schema_ref(&refs.infer_response) } },
            }),
        );
        let op = self.operation(
            &format!("infer_{id_suffix}"),
            name,
            &format!("Open Inference Protocol v2 inference with {which}"),
            Some(request_body(&refs.infer_request, refs.infer_example.as_ref())),
            Value::Object(responses),
        );
        self.paths.insert(format!("/v2/models/{at}/infer"), json!({ "post": op }));

        let op = self.score_operation(&format!("score_{id_suffix}"), name, &which, refs);
        self.paths.insert(format!("/models/{at}/score"), json!({ "post": op }));
    }

    /// `POST /score`, when one model is served.
    fn score_only(&mut self, name: &str, refs: &ModelRefs) {
        let op = self.score_operation("score", name, &format!("model '{name}', the only model served"), refs);
        self.paths.insert("/score".into(), json!({ "post": op }));
    }

    fn score_operation(&mut self, id: &str, tag: &str, which: &str, refs: &ModelRefs) -> Value {
        let mut responses = Map::new();
        for code in ["400", "404", "413", "500", "503", "504"] {
            responses.insert(code.into(), error_reply(code));
        }
        responses.insert("200".into(), reply("the outputs, as nested arrays", &refs.score_response));
        self.operation(
            id,
            tag,
            &format!("Score with {which}: nested arrays in, nested arrays out"),
            Some(request_body(&refs.score_request, refs.score_example.as_ref())),
            Value::Object(responses),
        )
    }
}

// === schemas ===

/// `{"$ref": "#/components/schemas/NAME"}`.
fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// A JSON response whose body is the schema `name`.
fn reply(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema_ref(schema) } } })
}

fn error_reply(code: &str) -> Value {
    let description = match code {
        "400" => "the request does not fit the model (the message names what is wrong)",
        "404" => "unknown model or version",
        "413" => "the body is larger than the server takes",
        "500" => "the engine failed",
        "503" => "overloaded (Retry-After), draining, or the model failed to load",
        "504" => "the model did not answer within the scoring timeout",
        _ => "error",
    };
    reply(description, "Error")
}

fn request_body(schema: &str, example: Option<&Value>) -> Value {
    let mut media = json!({ "schema": schema_ref(schema) });
    if let Some(example) = example {
        media["example"] = example.clone();
    }
    json!({ "required": true, "content": { "application/json": media } })
}

/// The JSON schema of one element of `datatype`: its JSON type, and its range where the JSON
/// type is wider than the datatype (a value outside it is refused with 400).
pub fn element_schema(datatype: DataType) -> Value {
    let int = |format: &str, min: i128, max: i128| json!({ "type": "integer", "format": format, "minimum": min_max(min), "maximum": min_max(max) });
    match datatype {
        DataType::Bool => json!({ "type": "boolean" }),
        DataType::U8 => int("int32", 0, u8::MAX.into()),
        DataType::U16 => int("int32", 0, u16::MAX.into()),
        DataType::U32 => int("int64", 0, u32::MAX.into()),
        DataType::U64 => int("uint64", 0, u64::MAX.into()),
        DataType::I8 => int("int32", i8::MIN.into(), i8::MAX.into()),
        DataType::I16 => int("int32", i16::MIN.into(), i16::MAX.into()),
        DataType::I32 => json!({ "type": "integer", "format": "int32" }),
        DataType::I64 => json!({ "type": "integer", "format": "int64" }),
        DataType::F16 => json!({ "type": "number", "format": "float", "minimum": -65504.0, "maximum": 65504.0,
                                 "description": "half precision (FP16)" }),
        DataType::F32 => json!({ "type": "number", "format": "float" }),
        DataType::F64 => json!({ "type": "number", "format": "double" }),
        DataType::Bytes => json!({ "type": "string", "description": "a BYTES element as UTF-8 text" }),
    }
}

/// An integer bound as a JSON number (every bound used fits `i64` or `u64`).
fn min_max(v: i128) -> Value {
    match (i64::try_from(v), u64::try_from(v)) {
        (Ok(i), _) => i.into(),
        (_, Ok(u)) => u.into(),
        _ => Value::Null,
    }
}

/// `[batch (any size), 8]`: a shape as words, with the dimensions' names where the model gives
/// them.
pub fn describe_shape(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec
        .shape
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let name = spec.dim_names.get(i).filter(|n| !n.is_empty());
            match (name, d) {
                (Some(n), d) if d < 0 => format!("{n} (any size)"),
                (Some(n), d) => format!("{n} = {d}"),
                (None, d) if d < 0 => "any size".to_owned(),
                (None, d) => d.to_string(),
            }
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn describe(spec: &TensorSpec) -> String {
    format!("'{}': {}, shape {}", spec.name, spec.datatype, describe_shape(spec))
}

/// The schema of a tensor's data nested as its shape: one array level per dimension, fixed
/// dimensions as `minItems`/`maxItems`.
pub fn nested_schema(spec: &TensorSpec) -> Value {
    let mut schema = element_schema(spec.datatype);
    for &dim in spec.shape.iter().rev() {
        schema = json!({ "type": "array", "items": schema });
        if dim >= 0 {
            schema["minItems"] = dim.into();
            schema["maxItems"] = dim.into();
        }
    }
    schema
}

/// One OIP v2 tensor (an input, or an output when `output`) of the shape of `spec`.
fn tensor_schema(spec: &TensorSpec, output: bool) -> Value {
    let rank = spec.shape.len();
    let data_description = if output {
        "the values, flat in row-major order; absent when the output is sent as binary data"
    } else {
        "the values, flat in row-major order (arrays nested as the shape are taken too); leave it out \
         when the input's bytes follow the JSON as binary tensor data"
    };
    let mut properties = json!({
        "name": { "type": "string", "enum": [spec.name] },
        "datatype": { "type": "string", "enum": [spec.datatype.as_str()] },
        "shape": {
            "type": "array",
            "items": { "type": "integer", "format": "int64", "minimum": 0 },
            "minItems": rank,
            "maxItems": rank,
            "description": format!("the tensor's shape: {}", describe_shape(spec)),
        },
        "data": { "type": "array", "items": element_schema(spec.datatype), "description": data_description },
    });
    let parameters = if output {
        json!({ "binary_data_size": { "type": "integer", "minimum": 0 } })
    } else {
        json!({ "binary_data_size": { "type": "integer", "minimum": 0,
                "description": "bytes of this input in the binary part of the body" } })
    };
    properties["parameters"] = json!({ "type": "object", "properties": parameters });
    json!({
        "type": "object",
        "description": describe(spec),
        "required": ["name", "datatype", "shape"],
        "properties": properties,
    })
}

/// An array of one tensor per spec, any order: `oneOf` the tensors, told apart by name.
fn tensor_list(specs: &[TensorSpec], output: bool, exact: bool) -> Value {
    let items: Vec<Value> = specs.iter().map(|s| tensor_schema(s, output)).collect();
    let mut list = match <[Value; 1]>::try_from(items) {
        Ok([one]) => json!({ "type": "array", "items": one }),
        Err(items) => json!({ "type": "array", "items": { "oneOf": items } }),
    };
    if exact {
        list["minItems"] = specs.len().into();
        list["maxItems"] = specs.len().into();
    }
    list
}

fn names(specs: &[TensorSpec]) -> Vec<&str> {
    specs.iter().map(|s| s.name.as_str()).collect()
}

/// `POST .../infer` body.
pub fn infer_request(signature: &ModelSignature) -> Value {
    let output_names = names(&signature.outputs);
    json!({
        "type": "object",
        "description": format!(
            "An Open Inference Protocol v2 request: every input once ({}).",
            signature.inputs.iter().map(describe).collect::<Vec<_>>().join("; ")
        ),
        "required": ["inputs"],
        "properties": {
            "id": { "type": "string", "description": "echoed in the response" },
            "parameters": {
                "type": "object",
                "properties": { "binary_data_output": { "type": "boolean",
                    "description": "every output as binary tensor data" } },
            },
            "inputs": tensor_list(&signature.inputs, false, true),
            "outputs": {
                "type": "array",
                "description": "the outputs to return (all when absent)",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": { "type": "string", "enum": output_names },
                        "parameters": { "type": "object",
                                        "properties": { "binary_data": { "type": "boolean" } } },
                    },
                },
            },
        },
    })
}

/// `POST .../infer` answer.
pub fn infer_response(signature: &ModelSignature) -> Value {
    json!({
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": { "type": "string" },
            "model_version": { "type": "string" },
            "id": { "type": "string" },
            "outputs": tensor_list(&signature.outputs, true, false),
        },
    })
}

/// `POST /score` body: `{"inputs": {name: nested}}`, or `{"data": nested}` for a single-input
/// model.
pub fn score_request(signature: &ModelSignature) -> Value {
    let inputs: Map<String, Value> =
        signature.inputs.iter().map(|s| (s.name.clone(), described(nested_schema(s), &describe(s)))).collect();
    let mut properties = json!({
        "inputs": {
            "type": "object",
            "properties": inputs,
            "required": names(&signature.inputs),
            "additionalProperties": false,
        },
        "outputs": {
            "type": "array",
            "description": "the outputs to return (all when absent)",
            "items": { "type": "string", "enum": names(&signature.outputs) },
        },
    });
    let batch_note = "An example without its leading dynamic (batch) dimension is a batch of one.";
    let (description, required) = match signature.inputs.as_slice() {
        [only] => {
            properties["data"] = described(nested_schema(only), &describe(only));
            (
                format!("Give \"data\" (the input {}) or \"inputs\" by name, not both. {batch_note}", describe(only)),
                None,
            )
        }
        _ => (format!("Every input by name in \"inputs\". {batch_note}"), Some(json!(["inputs"]))),
    };
    let mut schema = json!({
        "type": "object",
        "description": description,
        "properties": properties,
        "additionalProperties": false,
    });
    // OpenAPI 3.0 wants a `required` list to name at least one property.
    if let Some(required) = required {
        schema["required"] = required;
    }
    schema
}

/// `POST /score` answer: the outputs asked for, nested as their shapes.
pub fn score_response(signature: &ModelSignature) -> Value {
    let outputs: Map<String, Value> =
        signature.outputs.iter().map(|s| (s.name.clone(), described(nested_schema(s), &describe(s)))).collect();
    json!({
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": { "type": "string" },
            "model_version": { "type": "string" },
            "outputs": { "type": "object", "properties": outputs, "additionalProperties": false },
        },
    })
}

fn described(mut schema: Value, description: &str) -> Value {
    schema["description"] = description.into();
    schema
}

// === examples ===

/// A concrete shape per input that the model takes: fixed dimensions as they are; a dynamic one
/// takes the size that another input fixes for a dimension of the same name (inputs must agree on
/// it), else 1.
pub fn example_shapes(inputs: &[TensorSpec]) -> Vec<Vec<i64>> {
    let mut fixed: HashMap<&str, i64> = HashMap::new();
    for spec in inputs {
        for (name, &dim) in spec.dim_names.iter().zip(&spec.shape) {
            if !name.is_empty() && dim >= 0 {
                fixed.entry(name).or_insert(dim);
            }
        }
    }
    inputs
        .iter()
        .map(|spec| {
            spec.shape
                .iter()
                .enumerate()
                .map(|(i, &dim)| match spec.dim_names.get(i).and_then(|n| fixed.get(n.as_str())) {
                    _ if dim >= 0 => dim,
                    Some(&size) => size,
                    None => 1,
                })
                .collect()
        })
        .collect()
}

/// Elements of a tensor of `shape`, saturating.
fn elements(shape: &[i64]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(usize::try_from(d).unwrap_or(0)))
}

/// A value every model takes for `datatype`: zero (an index, a count, a feature), `false`, or a
/// short word.
pub fn example_value(datatype: DataType) -> Value {
    match datatype {
        DataType::Bool => false.into(),
        DataType::Bytes => "a".into(),
        DataType::F16 | DataType::F32 | DataType::F64 => 0.0.into(),
        _ => 0.into(),
    }
}

fn nested_example(value: &Value, shape: &[i64]) -> Value {
    match shape.split_first() {
        None => value.clone(),
        Some((&n, rest)) => Value::Array((0..n.max(0)).map(|_| nested_example(value, rest)).collect()),
    }
}

/// The infer example: each input with its concrete shape and flat zeros.
pub fn infer_example(inputs: &[TensorSpec], shapes: &[Vec<i64>]) -> Value {
    let tensors: Vec<Value> = inputs
        .iter()
        .zip(shapes)
        .map(|(spec, shape)| {
            let n = elements(shape);
            json!({
                "name": spec.name,
                "datatype": spec.datatype.as_str(),
                "shape": shape,
                "data": vec![example_value(spec.datatype); n],
            })
        })
        .collect();
    json!({ "inputs": tensors })
}

/// The `/score` example: `{"data": ...}` for a single-input model, else `{"inputs": {...}}`.
pub fn score_example(inputs: &[TensorSpec], shapes: &[Vec<i64>]) -> Value {
    let nested = |(spec, shape): (&TensorSpec, &Vec<i64>)| nested_example(&example_value(spec.datatype), shape);
    match (inputs, shapes) {
        ([only], [shape]) => json!({ "data": nested((only, shape)) }),
        _ => {
            let named: BTreeMap<&str, Value> =
                inputs.iter().zip(shapes).map(|p| (p.0.name.as_str(), nested(p))).collect();
            json!({ "inputs": named })
        }
    }
}

// === names ===

/// A component key OpenAPI 3.0 accepts (`^[a-zA-Z0-9.\-_]+$`).
fn component_name(name: &str) -> String {
    let out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' }).collect();
    if out.is_empty() { "_".into() } else { out }
}

/// An `operationId` that reads as an identifier in generated clients.
fn identifier(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// `base`, or `base_2`, `base_3`... for the first that `taken` says is free.
fn unique(base: String, taken: impl Fn(&str) -> bool) -> String {
    if !taken(&base) {
        return base;
    }
    (2..).map(|i| format!("{base}_{i}")).find(|n| !taken(n)).unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64], dims: &[&str]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
            dim_names: dims.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn datatypes_map_to_json_types_with_their_ranges() {
        let types: Vec<(&str, Value)> =
            DataType::ALL.iter().map(|&d| (d.as_str(), element_schema(d)["type"].clone())).collect();
        for (name, ty) in types {
            let want = match name {
                "BOOL" => "boolean",
                "FP16" | "FP32" | "FP64" => "number",
                "BYTES" => "string",
                _ => "integer",
            };
            assert_eq!(ty, want, "{name}");
        }
        let range = |d| {
            let s = element_schema(d);
            (s["minimum"].clone(), s["maximum"].clone())
        };
        assert_eq!(range(DataType::U8), (json!(0), json!(255)));
        assert_eq!(range(DataType::I8), (json!(-128), json!(127)));
        assert_eq!(range(DataType::I16), (json!(-32768), json!(32767)));
        assert_eq!(range(DataType::U32), (json!(0), json!(4_294_967_295u64)));
        assert_eq!(range(DataType::U64), (json!(0), json!(u64::MAX)));
        assert_eq!(range(DataType::F16), (json!(-65504.0), json!(65504.0)));
        assert_eq!(element_schema(DataType::F64)["format"], "double");
        assert_eq!(element_schema(DataType::I64)["format"], "int64");
        // Example values are of the datatype's JSON type: an integer input refuses 0.0.
        assert_eq!(example_value(DataType::I64), json!(0));
        assert!(example_value(DataType::I64).is_u64());
        assert!(example_value(DataType::F32).is_f64());
        assert_eq!(example_value(DataType::Bool), json!(false));
    }

    #[test]
    fn shapes_nest_with_fixed_dims_bounded_and_dynamic_ones_open() {
        let s = spec("x", DataType::F32, &[-1, 3, 2], &["batch", "", ""]);
        let n = nested_schema(&s);
        assert_eq!(n["type"], "array");
        assert!(n.get("minItems").is_none(), "a dynamic dimension has no bound: {n}");
        assert_eq!((n["items"]["minItems"].clone(), n["items"]["maxItems"].clone()), (json!(3), json!(3)));
        assert_eq!(n["items"]["items"]["maxItems"], 2);
        assert_eq!(n["items"]["items"]["items"]["type"], "number");
        assert_eq!(describe_shape(&s), "[batch (any size), 3, 2]");
        assert_eq!(describe_shape(&spec("y", DataType::I8, &[-1, 4], &[])), "[any size, 4]");
        // A scalar is its element.
        assert_eq!(nested_schema(&spec("s", DataType::Bool, &[], &[])), json!({ "type": "boolean" }));
    }

    #[test]
    fn dynamic_dims_become_one_or_the_size_a_named_dim_is_fixed_to() {
        let inputs = [
            spec("a", DataType::F32, &[-1, 8], &["batch", ""]),
            spec("b", DataType::I64, &[-1], &["batch"]),
            spec("c", DataType::F32, &[-1, -1], &["n", "seq"]),
            spec("d", DataType::F32, &[4, 16], &["n", "seq"]),
        ];
        assert_eq!(example_shapes(&inputs), vec![vec![1, 8], vec![1], vec![4, 16], vec![4, 16]]);
        // Every example fits its signature.
        let sig = ModelSignature { inputs: inputs.to_vec(), outputs: Vec::new() };
        for (spec, shape) in sig.inputs.iter().zip(example_shapes(&inputs)) {
            assert!(spec.shape.iter().zip(&shape).all(|(&s, &g)| s < 0 || s == g), "{shape:?}");
        }
    }

    #[test]
    fn examples_are_built_from_the_signature() {
        let inputs = [
            spec("features", DataType::F32, &[-1, 3], &["batch", ""]),
            spec("category", DataType::I64, &[-1], &["batch"]),
        ];
        let shapes = example_shapes(&inputs);
        assert_eq!(
            infer_example(&inputs, &shapes),
            json!({ "inputs": [
                { "name": "features", "datatype": "FP32", "shape": [1, 3], "data": [0.0, 0.0, 0.0] },
                { "name": "category", "datatype": "INT64", "shape": [1], "data": [0] },
            ] })
        );
        assert_eq!(
            score_example(&inputs, &shapes),
            json!({ "inputs": { "features": [[0.0, 0.0, 0.0]], "category": [0] } })
        );
        let one = [spec("flag", DataType::Bool, &[-1, 2], &[])];
        assert_eq!(score_example(&one, &example_shapes(&one)), json!({ "data": [[false, false]] }));
    }

    #[test]
    fn request_schemas_name_every_tensor() {
        let sig = ModelSignature {
            inputs: vec![
                spec("features", DataType::F32, &[-1, 8], &["batch", ""]),
                spec("category", DataType::I64, &[-1], &["batch"]),
            ],
            outputs: vec![spec("score", DataType::F32, &[-1, 1], &[]), spec("flag", DataType::Bool, &[-1, 1], &[])],
        };
        let infer = infer_request(&sig);
        let inputs = &infer["properties"]["inputs"];
        assert_eq!((inputs["minItems"].clone(), inputs["maxItems"].clone()), (json!(2), json!(2)));
        let variants = inputs["items"]["oneOf"].as_array().expect("one variant per input");
        assert_eq!(variants[1]["properties"]["name"]["enum"], json!(["category"]));
        assert_eq!(variants[1]["properties"]["datatype"]["enum"], json!(["INT64"]));
        assert_eq!(variants[1]["properties"]["data"]["items"]["type"], "integer");
        assert_eq!(infer["properties"]["outputs"]["items"]["properties"]["name"]["enum"], json!(["score", "flag"]));
        let score = score_request(&sig);
        assert_eq!(score["required"], json!(["inputs"]));
        assert!(score["properties"].get("data").is_none(), "several inputs: no \"data\"");
        assert_eq!(score["properties"]["inputs"]["required"], json!(["features", "category"]));
        let response = score_response(&sig);
        assert_eq!(response["properties"]["outputs"]["properties"]["flag"]["items"]["items"]["type"], "boolean");
    }

    #[test]
    fn names_are_made_safe_and_unique() {
        assert_eq!(percent_encode("my model/2"), "my%20model%2F2");
        assert_eq!(component_name("a b.v1.InferRequest"), "a_b.v1.InferRequest");
        assert_eq!(identifier("infer_mlp-small_v1"), "infer_mlp_small_v1");
        assert_eq!(identifier("9lives"), "_9lives");
        let taken = ["x", "x_2"];
        assert_eq!(unique("x".into(), |n| taken.contains(&n)), "x_3");
    }
}
