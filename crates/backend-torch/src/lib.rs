//! TorchScript models on libtorch, through `tch`.
//!
//! libtorch is large and not on every machine, so the engine sits behind the `torch` feature; a
//! build without it still compiles this crate and refuses TorchScript models with a message that
//! says how to get a build that runs them. TorchScript files do not record their inputs and
//! outputs the way ONNX graphs do, so the signature comes from the model's config in the registry.
#![forbid(unsafe_code)]

use std::path::Path;

use sluice_core::{Backend, BackendError, Device, ModelSignature};

/// How a TorchScript model instance runs.
#[derive(Debug, Clone)]
pub struct TorchOptions {
    pub device: Device,
    /// libtorch's intra-op threads. libtorch keeps one pool per process, so the last model loaded
    /// sets it for all.
    pub intra_op_threads: usize,
}

/// Whether this build can run TorchScript models.
pub fn is_available() -> bool {
    cfg!(feature = "torch")
}

/// Loads the TorchScript file at `path` as one model instance.
pub fn load(path: &Path, signature: &ModelSignature, options: &TorchOptions) -> Result<Box<dyn Backend>, BackendError> {
    #[cfg(feature = "torch")]
    {
        engine::TorchBackend::load(path, signature, options).map(|b| Box::new(b) as Box<dyn Backend>)
    }
    #[cfg(not(feature = "torch"))]
    {
        let _ = (path, signature, options);
        Err(BackendError::Unsupported(
            "TorchScript models need a build with the `torch` feature (libtorch): export \
             LIBTORCH=$(scripts/provision-libtorch.sh) and build with --features torch"
                .into(),
        ))
    }
}

#[cfg(feature = "torch")]
mod engine {
    use std::path::Path;

    use sluice_core::{Backend, BackendError, BackendInfo, Device, ModelSignature, Tensor, TensorData};
    use tch::{CModule, IValue, Kind};

    use crate::TorchOptions;

    /// One loaded TorchScript module. `CModule` is Send, and each instance belongs to one worker.
    pub struct TorchBackend {
        module: CModule,
        signature: ModelSignature,
        device: Device,
        torch_device: tch::Device,
    }

    fn torch_device(device: Device) -> Result<tch::Device, BackendError> {
        match device {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if !tch::Cuda::is_available() || i64::from(n) >= count {
                    return Err(BackendError::Load(format!(
                        "device cuda:{n} is not available to libtorch ({count} CUDA devices found)"
                    )));
                }
                Ok(tch::Device::Cuda(n as usize))
            }
        }
    }

    fn engine_error(e: tch::TchError) -> BackendError {
        BackendError::Inference(e.to_string())
    }

    impl TorchBackend {
        pub fn load(path: &Path, signature: &ModelSignature, options: &TorchOptions) -> Result<Self, BackendError> {
            if signature.inputs.is_empty() || signature.outputs.is_empty() {
                return Err(BackendError::Load("a TorchScript model needs its signature in the model config".into()));
            }
            let torch_device = torch_device(options.device)?;
            tch::set_num_threads(options.intra_op_threads.max(1) as i32);
            let mut module = CModule::load_on_device(path, torch_device)
                .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
            module.set_eval();
            Ok(TorchBackend { module, signature: signature.clone(), device: options.device, torch_device })
        }

        fn to_torch(&self, t: &Tensor) -> Result<tch::Tensor, BackendError> {
            let flat = match &t.data {
                TensorData::Bool(v) => tch::Tensor::f_from_slice(v),
                TensorData::U8(v) => tch::Tensor::f_from_slice(v),
                TensorData::I8(v) => tch::Tensor::f_from_slice(v),
                TensorData::I16(v) => tch::Tensor::f_from_slice(v),
                TensorData::I32(v) => tch::Tensor::f_from_slice(v),
                TensorData::I64(v) => tch::Tensor::f_from_slice(v),
                TensorData::F16(v) => tch::Tensor::f_from_slice(v),
                TensorData::F32(v) => tch::Tensor::f_from_slice(v),
                TensorData::F64(v) => tch::Tensor::f_from_slice(v),
                TensorData::U16(_) | TensorData::U32(_) | TensorData::U64(_) | TensorData::Bytes(_) => {
                    return Err(BackendError::Unsupported(format!(
                        "input {}: libtorch has no {} tensors",
                        t.name,
                        t.dtype().as_str()
                    )));
                }
            }
            .map_err(engine_error)?;
            flat.f_reshape(&t.shape).and_then(|x| x.f_to_device(self.torch_device)).map_err(engine_error)
        }
    }

    fn from_torch(t: &tch::Tensor, name: &str) -> Result<Tensor, BackendError> {
        let t = t.f_to_device(tch::Device::Cpu).and_then(|t| t.f_contiguous()).map_err(engine_error)?;
        let shape = t.size();
        let flat = t.f_reshape([-1]).map_err(engine_error)?;
        let v = |e: tch::TchError| engine_error(e);
        let data = match t.kind() {
            Kind::Bool => TensorData::Bool(Vec::<bool>::try_from(&flat).map_err(v)?),
            Kind::Uint8 => TensorData::U8(Vec::<u8>::try_from(&flat).map_err(v)?),
            Kind::Int8 => TensorData::I8(Vec::<i8>::try_from(&flat).map_err(v)?),
            Kind::Int16 => TensorData::I16(Vec::<i16>::try_from(&flat).map_err(v)?),
            Kind::Int => TensorData::I32(Vec::<i32>::try_from(&flat).map_err(v)?),
            Kind::Int64 => TensorData::I64(Vec::<i64>::try_from(&flat).map_err(v)?),
            Kind::Half => TensorData::F16(Vec::<half::f16>::try_from(&flat).map_err(v)?),
            Kind::Float => TensorData::F32(Vec::<f32>::try_from(&flat).map_err(v)?),
            Kind::Double => TensorData::F64(Vec::<f64>::try_from(&flat).map_err(v)?),
            other => {
                return Err(BackendError::Unsupported(format!(
                    "output {name}: libtorch kind {other:?} has no OIP datatype"
                )));
            }
        };
        Tensor::new(name, shape, data).map_err(|e| BackendError::Inference(format!("output {name}: {e}")))
    }

    impl Backend for TorchBackend {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }

        fn info(&self) -> BackendInfo {
            BackendInfo { platform: "pytorch_libtorch", device: self.device }
        }

        fn infer(&mut self, inputs: &[Tensor], outputs: &[usize]) -> Result<Vec<Tensor>, BackendError> {
            // Inference only: no autograd graph is built.
            tch::no_grad(|| {
                let args: Vec<IValue> =
                    inputs.iter().map(|t| self.to_torch(t).map(IValue::Tensor)).collect::<Result<_, _>>()?;
                let result = self.module.forward_is(&args).map_err(engine_error)?;
                let tensors: Vec<tch::Tensor> = match result {
                    IValue::Tensor(t) => vec![t],
                    IValue::TensorList(ts) => ts,
                    IValue::Tuple(items) | IValue::GenericList(items) => items
                        .into_iter()
                        .map(|i| match i {
                            IValue::Tensor(t) => Ok(t),
                            _ => Err(BackendError::Inference("the model returned a non-tensor output".into())),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => {
                        return Err(BackendError::Inference(
                            "the model returned neither tensors nor a tuple of them".into(),
                        ));
                    }
                };
                if tensors.len() != self.signature.outputs.len() {
                    return Err(BackendError::Inference(format!(
                        "the model returned {} outputs; its config names {}",
                        tensors.len(),
                        self.signature.outputs.len()
                    )));
                }
                outputs
                    .iter()
                    .map(|&i| {
                        let spec = &self.signature.outputs[i];
                        let out = from_torch(&tensors[i], &spec.name)?;
                        if out.dtype() != spec.datatype {
                            return Err(BackendError::Inference(format!(
                                "output {} is {} but the model config says {}",
                                spec.name,
                                out.dtype().as_str(),
                                spec.datatype.as_str()
                            )));
                        }
                        Ok(out)
                    })
                    .collect()
            })
        }
    }
}
