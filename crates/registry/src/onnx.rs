//! Reads what the registry needs from an ONNX file (graph inputs and outputs with datatypes and
//! shapes) without an inference engine: only the handful of protobuf fields involved are declared,
//! and prost skips the rest.

use sluice_core::{DataType, ModelSignature, TensorSpec};

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetId>,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct OperatorSetId {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<NamedProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, tag = "4")]
    op_type: String,
}

/// `TensorProto` keeps its name in field 8; only the name is needed to tell initializers apart
/// from real inputs (IR < 4 lists initializers among the graph inputs).
#[derive(Clone, PartialEq, prost::Message)]
struct NamedProto {
    #[prost(string, tag = "8")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TypeTensor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TypeTensor {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<ShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

/// Why a file is not a servable ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not a valid ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("not a valid ONNX model: {0}")]
    Invalid(String),
}

/// ONNX `TensorProto.DataType` codes to protocol datatypes; `None` for types Sluice cannot serve.
fn datatype(code: i32) -> Option<DataType> {
    Some(match code {
        1 => DataType::F32,
        2 => DataType::U8,
        3 => DataType::I8,
        4 => DataType::U16,
        5 => DataType::I16,
        6 => DataType::I32,
        7 => DataType::I64,
        9 => DataType::Bool,
        10 => DataType::F16,
        11 => DataType::F64,
        12 => DataType::U32,
        13 => DataType::U64,
        8 => DataType::Bytes,
        _ => return None,
    })
}

fn spec(v: &ValueInfoProto, what: &str) -> Result<TensorSpec, OnnxError> {
    let tensor = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| OnnxError::Invalid(format!("{what} '{}' is not a tensor", v.name)))?;
    let datatype = datatype(tensor.elem_type).ok_or_else(|| {
        OnnxError::Invalid(format!(
            "{what} '{}' has ONNX element type {}, which Sluice cannot serve",
            v.name, tensor.elem_type
        ))
    })?;
    let dims = tensor.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
    let shape = dims.iter().map(|d| d.dim_value.filter(|&v| v >= 0).unwrap_or(-1)).collect();
    let dim_names = dims.iter().map(|d| d.dim_param.clone().unwrap_or_default()).collect();
    Ok(TensorSpec { name: v.name.clone(), datatype, shape, dim_names })
}

/// Parses an ONNX model and returns its signature, refusing anything that is not a usable model.
pub fn read_signature(bytes: &[u8]) -> Result<ModelSignature, OnnxError> {
    use prost::Message;
    let model = ModelProto::decode(bytes)?;
    if model.ir_version <= 0 {
        return Err(OnnxError::Invalid("missing IR version".into()));
    }
    if model.opset_import.is_empty() {
        return Err(OnnxError::Invalid("no opset imported".into()));
    }
    let graph = model.graph.ok_or_else(|| OnnxError::Invalid("the file holds no graph".into()))?;
    if graph.node.is_empty() {
        return Err(OnnxError::Invalid("the graph has no nodes".into()));
    }
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(|i| spec(i, "input"))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = graph.output.iter().map(|o| spec(o, "output")).collect::<Result<Vec<_>, _>>()?;
    if outputs.is_empty() {
        return Err(OnnxError::Invalid("the graph has no outputs".into()));
    }
    Ok(ModelSignature { inputs, outputs })
}
