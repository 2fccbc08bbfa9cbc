//! The engine factory: which backend runs a model, chosen by its format, each behind its Cargo
//! feature. A build without an engine refuses that format with a message saying how to get one.

use std::path::Path;

use sluice_core::{Backend, BackendError, Device};
use sluice_registry::ModelFormat;
use sluice_runtime::{ModelHandle, StartError};

use crate::{LoadPlan, ModelSource};

/// Why one model did not start. Messages name the cause once; the model is named by the caller.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[cfg(feature = "ort")]
    #[error(transparent)]
    Provision(#[from] sluice_backend_ort::ProvisionError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[cfg(not(all(feature = "ort", feature = "plugin")))]
    #[error("{format} models need a build with the `{feature}` feature")]
    NotBuiltIn { format: ModelFormat, feature: &'static str },
    #[error("plugin models run where their plugin puts them; device must be cpu, got {0}")]
    PluginDevice(Device),
}

/// Engines shared by the models of one process: ONNX Runtime is provisioned and initialised
/// once, and only when an ONNX model is served.
pub(crate) struct Engines<'a> {
    home: &'a Path,
    ort_lib: Option<&'a Path>,
    #[cfg(feature = "ort")]
    ort: Option<&'static sluice_backend_ort::Environment>,
}

impl<'a> Engines<'a> {
    pub(crate) fn new(home: &'a Path, ort_lib: Option<&'a Path>) -> Self {
        Engines {
            home,
            ort_lib,
            #[cfg(feature = "ort")]
            ort: None,
        }
    }

    /// Starts `source`'s instances on `device` with the engine its format needs.
    pub(crate) fn start(
        &mut self,
        source: &ModelSource,
        plan: &LoadPlan,
        device: Device,
    ) -> Result<ModelHandle, EngineError> {
        let config = plan.config.clone();
        let (name, version) = (&source.name, &source.version);
        match source.format {
            ModelFormat::Onnx => self.start_onnx(source, plan, device),
            ModelFormat::Plugin => start_plugin(source, plan, device),
            ModelFormat::Torchscript => {
                let options =
                    sluice_backend_torch::TorchOptions { device, intra_op_threads: plan.engine.intra_op_threads };
                Ok(ModelHandle::start(name, version, config, |_| {
                    sluice_backend_torch::load(&source.path, &source.signature, &options)
                })?)
            }
        }
    }

    #[cfg(feature = "ort")]
    fn start_onnx(
        &mut self,
        source: &ModelSource,
        plan: &LoadPlan,
        device: Device,
    ) -> Result<ModelHandle, EngineError> {
        use sluice_backend_ort::{OrtBackend, OrtOptions};
        let env = match self.ort {
            Some(env) => env,
            None => {
                let library = sluice_backend_ort::locate_or_provision(self.ort_lib, self.home)?;
                *self.ort.insert(sluice_backend_ort::init(&library)?)
            }
        };
        let options = OrtOptions { device, intra_op_threads: plan.engine.intra_op_threads };
        Ok(ModelHandle::start(&source.name, &source.version, plan.config.clone(), |_| {
            OrtBackend::load(env, &source.path, &options).map(|b| Box::new(b) as Box<dyn Backend>)
        })?)
    }

    #[cfg(not(feature = "ort"))]
    fn start_onnx(&mut self, _: &ModelSource, _: &LoadPlan, _: Device) -> Result<ModelHandle, EngineError> {
        let _ = (self.home, self.ort_lib);
        Err(EngineError::NotBuiltIn { format: ModelFormat::Onnx, feature: "ort" })
    }
}

#[cfg(feature = "plugin")]
fn start_plugin(source: &ModelSource, plan: &LoadPlan, device: Device) -> Result<ModelHandle, EngineError> {
    use sluice_backend_plugin::{PluginBackend, PluginConfig, PluginLibrary};
    if device != Device::Cpu {
        return Err(EngineError::PluginDevice(device));
    }
    let plugin = PluginConfig::from_config(source.config.as_ref())?;
    let library = PluginLibrary::open(&plugin.library)?;
    Ok(ModelHandle::start(&source.name, &source.version, plan.config.clone(), |_| {
        PluginBackend::load(library.clone(), &source.path, &plugin.options).map(|b| Box::new(b) as Box<dyn Backend>)
    })?)
}

#[cfg(not(feature = "plugin"))]
fn start_plugin(_: &ModelSource, _: &LoadPlan, _: Device) -> Result<ModelHandle, EngineError> {
    Err(EngineError::NotBuiltIn { format: ModelFormat::Plugin, feature: "plugin" })
}
