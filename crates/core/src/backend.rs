use std::fmt;

use crate::{ModelSignature, Tensor};

/// Where a model instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal (`cuda:0`).
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("unknown device '{s}' (expected cpu, cuda or cuda:N)")),
        }
    }
}

/// What a backend instance reports about itself (shown in model metadata and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// Engine name, e.g. `onnxruntime`.
    pub platform: &'static str,
    pub device: Device,
}

/// Failures inside an engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The model could not be loaded. The message is the cause alone: whoever reports it says
    /// which model failed to load (so it is said once).
    #[error("{0}")]
    Load(String),
    #[error("inference failed: {0}")]
    Inference(String),
    /// The engine refused the request's values (an index out of range, say): the client's fault.
    #[error("the model refused the input: {0}")]
    InvalidInput(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// One loaded instance of a model in an inference engine.
///
/// An instance is owned by exactly one worker thread, which is why `infer` takes `&mut self`:
/// engines such as ONNX Runtime need exclusive access to run a session, and one instance per thread
/// avoids a lock on the hot path. The trait is synchronous and object-safe so that ONNX Runtime,
/// libtorch and C-ABI plugins can all sit behind `Box<dyn Backend>`.
///
/// `infer` runs one batch: the runtime concatenates requests along the first dimension, calls
/// `infer` once and splits the outputs back per request, so a backend never needs to know about
/// batching.
pub trait Backend: Send {
    /// The model's inputs and outputs as the engine sees them.
    fn signature(&self) -> &ModelSignature;

    /// Engine and device, for metadata.
    fn info(&self) -> BackendInfo;

    /// Runs the model. `inputs` are in signature order and already validated; `outputs` are indices
    /// into `signature().outputs`, and the result holds those outputs in that order.
    fn infer(&mut self, inputs: &[Tensor], outputs: &[usize]) -> Result<Vec<Tensor>, BackendError>;

    /// Whether the instance can still serve (a plugin may report a device fault here).
    fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda:1".parse(), Ok(Device::Cuda(1)));
        assert!("tpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }
}
