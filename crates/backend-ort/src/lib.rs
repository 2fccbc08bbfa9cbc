//! ONNX Runtime backend. `libonnxruntime` is opened at run time (`ort`'s `load-dynamic`), so the
//! build never downloads anything: [`provision`] finds the library or fetches the pinned PyPI wheel
//! with pip on first use. Each [`OrtBackend`] owns one session and is driven by one worker thread.

mod provision;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use ort::environment::Environment;
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::{TensorElementType, TensorRef, ValueType};
use sluice_core::{
    Backend, BackendError, BackendInfo, DataType, Device, ModelSignature, Tensor, TensorData, TensorSpec,
};

pub use provision::{ORT_VERSION, ProvisionError, locate_or_provision};

/// Per-model settings for ONNX Runtime sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtOptions {
    /// Threads ONNX Runtime may use inside one operator. One per instance is the measured best on
    /// small machines: instances already run in parallel, and ORT's own pool would oversubscribe.
    pub intra_op_threads: usize,
    pub device: Device,
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions { intra_op_threads: 1, device: Device::Cpu }
    }
}

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one per process).
static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// Opens `libonnxruntime` at `library` and creates the environment, once per process. Calling it
/// again with the same library is free; with another library it is an error, since a process
/// cannot hold two copies of ONNX Runtime.
pub fn init(library: &Path) -> Result<&'static Environment, BackendError> {
    if let Some((path, env)) = ENVIRONMENT.get() {
        return same_library(path, library).map(|()| env);
    }
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((path, env)) = ENVIRONMENT.get() {
        return same_library(path, library).map(|()| env);
    }
    if !library.is_file() {
        return Err(BackendError::Load(format!("ONNX Runtime library {} does not exist", library.display())));
    }
    // `init_from` may panic (rather than erroring) on a library it cannot use; turn that into an
    // error the user can act on. The floor is the API version `ort` is compiled for (`api-NN` in
    // Cargo.toml), which can be older than the pinned ORT_VERSION: 1.31.x still loads.
    let builder = std::panic::catch_unwind(|| ort::init_from(library))
        .map_err(|_| {
            BackendError::Load(format!(
                "{} is not a usable ONNX Runtime library (Sluice needs 1.{} or newer; it is tested with {ORT_VERSION})",
                library.display(),
                ort::MINOR_VERSION
            ))
        })?
        .map_err(|e| BackendError::Load(format!("cannot open {}: {e}", library.display())))?;
    let env = builder
        .with_name("sluice")
        .with_telemetry(false)
        .build()
        .map_err(|e| BackendError::Load(format!("cannot create the ONNX Runtime environment: {e}")))?;
    let (_, env) = ENVIRONMENT.get_or_init(|| (library.to_path_buf(), env));
    Ok(env)
}

fn same_library(loaded: &Path, wanted: &Path) -> Result<(), BackendError> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canon(loaded) == canon(wanted) {
        Ok(())
    } else {
        Err(BackendError::Load(format!(
            "ONNX Runtime is already loaded from {}; cannot also load {}",
            loaded.display(),
            wanted.display()
        )))
    }
}

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec(name: &str, ty: &ValueType, what: &str) -> Result<TensorSpec, BackendError> {
    match ty {
        ValueType::Tensor { ty, shape, dimension_symbols } => {
            let datatype = datatype(*ty).ok_or_else(|| {
                BackendError::Unsupported(format!("{what} '{name}' has element type {ty}, which Sluice cannot serve"))
            })?;
            let dim_names = dimension_symbols.iter().cloned().collect();
            Ok(TensorSpec { name: name.to_owned(), datatype, shape: shape.to_vec(), dim_names })
        }
        other => Err(BackendError::Unsupported(format!("{what} '{name}' is a {other}, not a tensor"))),
    }
}

/// Execution providers for a GPU, best first. Registration must fail loudly: by default ONNX
/// Runtime falls back to the CPU without a word, and a model meant for the GPU would quietly run
/// an order of magnitude slower.
#[cfg(feature = "cuda")]
fn gpu_providers(device_id: u32) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, BackendError> {
    let id = device_id as i32;
    let mut providers = Vec::new();
    #[cfg(feature = "tensorrt")]
    // TensorRT may decline a graph; CUDA then takes it.
    providers.push(ort::ep::TensorRT::default().with_device_id(id).build());
    providers.push(ort::ep::CUDA::default().with_device_id(id).build().error_on_failure());
    Ok(providers)
}

#[cfg(not(feature = "cuda"))]
fn gpu_providers(device_id: u32) -> Result<Vec<ort::ep::ExecutionProviderDispatch>, BackendError> {
    Err(BackendError::Load(format!(
        "device cuda:{device_id}: this build has no GPU execution provider (build with --features cuda and run with \
         the onnxruntime-gpu library), or set device_fallback to \"cpu\""
    )))
}

/// One ONNX Runtime session: one model instance.
pub struct OrtBackend {
    session: Session,
    signature: ModelSignature,
    device: Device,
}

impl OrtBackend {
    /// Loads the model at `path` into a new session of the process environment.
    pub fn load(env: &Environment, path: &Path, options: &OrtOptions) -> Result<Self, BackendError> {
        let load_err = |e: ort::Error<_>| BackendError::Load(format!("{}: {e}", path.display()));
        let builder = Session::builder(env)
            .map_err(|e| BackendError::Load(e.to_string()))?
            .with_intra_threads(options.intra_op_threads.max(1))
            .map_err(load_err)?
            .with_inter_threads(1)
            .map_err(load_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(load_err)?;
        let mut builder = match options.device {
            Device::Cpu => builder,
            Device::Cuda(n) => builder.with_execution_providers(gpu_providers(n)?).map_err(|e| {
                BackendError::Load(format!(
                    "device cuda:{n}: ONNX Runtime could not start its GPU execution provider ({e}); \
                         it needs the onnxruntime-gpu library (--ort-lib) and an NVIDIA GPU, or set \
                         device_fallback to \"cpu\""
                ))
            })?,
        };
        let session = builder.commit_from_file(path).map_err(|e| {
            // ONNX Runtime usually names the file itself ("Load model from PATH failed: ...").
            let (path, e) = (path.display().to_string(), e.to_string());
            BackendError::Load(if e.contains(&path) { e } else { format!("{path}: {e}") })
        })?;
        let inputs = session.inputs().iter().map(|o| spec(o.name(), o.dtype(), "input")).collect::<Result<_, _>>()?;
        let outputs =
            session.outputs().iter().map(|o| spec(o.name(), o.dtype(), "output")).collect::<Result<_, _>>()?;
        Ok(OrtBackend { session, signature: ModelSignature { inputs, outputs }, device: options.device })
    }
}

fn input_value(t: &Tensor) -> Result<SessionInputValue<'_>, BackendError> {
    let shape = t.shape.as_slice();
    let fail = |e: ort::Error| BackendError::Inference(e.to_string());
    if let TensorData::Bytes(elements) = &t.data {
        // ONNX Runtime copies string elements in as NUL-terminated UTF-8 text.
        let text = elements
            .iter()
            .enumerate()
            .map(|(i, e)| match String::from_utf8(e.clone()) {
                Ok(s) if !s.contains('\0') => Ok(s),
                Ok(_) => Err(format!("element {i} of input '{}' contains a NUL byte", t.name)),
                Err(_) => Err(format!("element {i} of input '{}' is not UTF-8 text, as ONNX strings must be", t.name)),
            })
            .collect::<Result<Vec<String>, _>>()
            .map_err(BackendError::InvalidInput)?;
        return Ok(ort::value::Tensor::from_string_array((shape, text.as_slice())).map_err(fail)?.into());
    }
    macro_rules! view {
        ($($variant:ident),*) => {
            match &t.data {
                $(TensorData::$variant(v) => TensorRef::from_array_view((shape, v.as_slice())).map_err(fail)?.into(),)*
                TensorData::Bytes(_) => unreachable!("handled above"),
            }
        };
    }
    Ok(view!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, F32, F64))
}

fn extract(value: &ort::value::DynValue, dtype: DataType) -> ort::Result<(Vec<i64>, TensorData)> {
    macro_rules! take {
        ($variant:ident, $t:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    Ok(match dtype {
        DataType::Bool => take!(Bool, bool),
        DataType::U8 => take!(U8, u8),
        DataType::U16 => take!(U16, u16),
        DataType::U32 => take!(U32, u32),
        DataType::U64 => take!(U64, u64),
        DataType::I8 => take!(I8, i8),
        DataType::I16 => take!(I16, i16),
        DataType::I32 => take!(I32, i32),
        DataType::I64 => take!(I64, i64),
        DataType::F16 => take!(F16, half::f16),
        DataType::F32 => take!(F32, f32),
        DataType::F64 => take!(F64, f64),
        DataType::Bytes => {
            let (shape, text) = value.try_extract_strings()?;
            (shape.to_vec(), TensorData::Bytes(text.into_iter().map(String::into_bytes).collect()))
        }
    })
}

impl Backend for OrtBackend {
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn info(&self) -> BackendInfo {
        BackendInfo { platform: "onnxruntime", device: self.device }
    }

    fn infer(&mut self, inputs: &[Tensor], outputs: &[usize]) -> Result<Vec<Tensor>, BackendError> {
        let fail = |e: ort::Error| match e.code() {
            ort::error::ErrorCode::InvalidArgument => BackendError::InvalidInput(e.message().to_owned()),
            _ => BackendError::Inference(e.to_string()),
        };
        let values = inputs.iter().map(|t| Ok((t.name.as_str(), input_value(t)?))).collect::<Result<Vec<_>, _>>()?;
        let results = self.session.run(values).map_err(fail)?;
        outputs
            .iter()
            .map(|&idx| {
                let spec = &self.signature.outputs[idx];
                let (shape, data) = extract(&results[spec.name.as_str()], spec.datatype).map_err(fail)?;
                Ok(Tensor { name: spec.name.clone(), shape, data })
            })
            .collect()
    }
}
