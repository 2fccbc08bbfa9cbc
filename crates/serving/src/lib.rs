//! Model loading as a library: what `sluice serve` (and every replica the control plane starts)
//! does between reading its settings and answering requests. It resolves model references against
//! the registry, merges each model's settings (flags, then the deployment config, then the
//! per-model config), checks them all before anything starts, and starts each model on the engine
//! its format needs: ONNX Runtime, an accelerator plugin or libtorch, each behind a Cargo feature.
//! A model whose GPU is missing falls back to the CPU only when asked to. Nothing here parses a
//! command line or binds a socket, so loading can be tested, and reused, without a process.
#![forbid(unsafe_code)]

mod engine;
mod settings;

use std::path::{Path, PathBuf};
use std::time::Instant;

use sluice_core::{Device, DeviceFallback, ModelSignature};
use sluice_registry::{ModelFormat, ModelRef, Registry, RegistryError};
use sluice_server::Repository;

pub use settings::{Defaults, EngineOptions, LoadPlan, ModelOverrides, plan, read_deploy_config, read_model_config};

/// Everything loading needs, as plain values: the CLI fills it from flags and files, tests write
/// it out.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    /// The data directory: the registry, artifacts and the provisioned ONNX Runtime.
    pub home: PathBuf,
    /// Models to serve: `NAME` or `NAME:VERSION` from the registry, or the path of an .onnx file.
    pub models: Vec<String>,
    /// Models already resolved (a remote replica's, fetched by content hash), served beside
    /// `models`.
    pub sources: Vec<ModelSource>,
    /// Settings every model starts from (the flags of `sluice serve`).
    pub defaults: Defaults,
    /// The deployment config's settings; they override `defaults` for every model.
    pub deploy: ModelOverrides,
    /// Per-model settings by model name; they override the deployment config.
    pub per_model: std::collections::BTreeMap<String, ModelOverrides>,
    /// `libonnxruntime.so` to use instead of the provisioned copy.
    pub ort_lib: Option<PathBuf>,
}

/// Why models could not be served. Each message names the model and the cause once.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("model file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("cannot name a model after {0}")]
    Unnamed(PathBuf),
    #[error("cannot serve {spec}: {source}")]
    Registry {
        spec: String,
        #[source]
        source: RegistryError,
    },
    #[error("the model config names '{0}', which is not among the models being served")]
    UnknownModelInConfig(String),
    #[error("model {model}: {message}")]
    Settings { model: String, message: String },
    #[error("{path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error("model '{0}' is served twice")]
    Duplicate(String),
    #[error("no model could be loaded: {}", .0.join("; "))]
    NothingLoaded(Vec<String>),
}

/// A model to load: where its bytes are, what to call it, and how to run it.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub format: ModelFormat,
    /// The registry's model config (a plugin model's library and options).
    pub config: Option<serde_json::Value>,
    /// The registered signature (what TorchScript models run with).
    pub signature: ModelSignature,
}

/// Resolves model specs: a path to a file serves that file as `STEM:1`; anything else is a
/// registry reference (`NAME` is the latest version). The registry is opened only when needed.
pub fn resolve(home: &Path, specs: &[String]) -> Result<Vec<ModelSource>, ServingError> {
    let mut registry = None;
    let mut sources = Vec::with_capacity(specs.len());
    for spec in specs {
        let path = Path::new(spec);
        if path.is_file() {
            let name =
                path.file_stem().and_then(|s| s.to_str()).ok_or_else(|| ServingError::Unnamed(path.to_path_buf()))?;
            sources.push(ModelSource {
                name: name.to_owned(),
                version: "1".into(),
                path: path.to_path_buf(),
                format: ModelFormat::Onnx,
                config: None,
                signature: ModelSignature::default(),
            });
            continue;
        }
        if spec.ends_with(".onnx") || spec.contains('/') {
            return Err(ServingError::MissingFile(path.to_path_buf()));
        }
        let registry_error = |source| ServingError::Registry { spec: spec.clone(), source };
        let reference: ModelRef = spec.parse().map_err(registry_error)?;
        let registry = match &mut registry {
            Some(r) => r,
            None => registry.insert(Registry::open(home).map_err(registry_error)?),
        };
        let mv = registry.resolve(&reference).map_err(registry_error)?;
        sources.push(ModelSource {
            name: mv.name,
            version: mv.version.to_string(),
            path: mv.artifact_path,
            format: mv.format,
            config: mv.config,
            signature: mv.signature,
        });
    }
    Ok(sources)
}

/// Finds `libonnxruntime` (`explicit`, then the copy in `home`) or fetches the pinned wheel into
/// `home`. The control plane calls it once, so the replicas it starts together do not all fetch it.
#[cfg(feature = "ort")]
pub fn ort_library(explicit: Option<&Path>, home: &Path) -> Result<PathBuf, sluice_backend_ort::ProvisionError> {
    sluice_backend_ort::locate_or_provision(explicit, home)
}

/// Models resolved and their settings checked: nothing has started yet, so a bad setting fails
/// before a port is bound or an engine loaded.
#[derive(Debug)]
pub struct Prepared {
    models: Vec<(ModelSource, LoadPlan)>,
    home: PathBuf,
    ort_lib: Option<PathBuf>,
}

/// Resolves the models of `config` and checks every model's merged settings.
pub fn prepare(config: ServeConfig) -> Result<Prepared, ServingError> {
    let mut sources = resolve(&config.home, &config.models)?;
    sources.extend(config.sources);
    if let Some(unknown) = config.per_model.keys().find(|k| !sources.iter().any(|s| &s.name == *k)) {
        return Err(ServingError::UnknownModelInConfig(unknown.clone()));
    }
    let models = sources
        .into_iter()
        .map(|source| {
            let merged = config.per_model.get(&source.name).cloned().unwrap_or_default().or(&config.deploy);
            let plan = plan(&config.defaults, &merged)
                .map_err(|message| ServingError::Settings { model: source.name.clone(), message })?;
            Ok((source, plan))
        })
        .collect::<Result<_, ServingError>>()?;
    Ok(Prepared { models, home: config.home, ort_lib: config.ort_lib })
}

/// Resolves, checks and loads: [`prepare`] then [`Prepared::load`].
pub fn load(config: ServeConfig) -> Result<Repository, ServingError> {
    prepare(config)?.load()
}

impl Prepared {
    /// Starts every model and returns the repository to serve. A model that fails to load is
    /// logged and answered with 503 naming the reason, while the others serve; if none loads,
    /// this fails with every reason.
    pub fn load(self) -> Result<Repository, ServingError> {
        let mut engines = engine::Engines::new(&self.home, self.ort_lib.as_deref());
        let mut repository = Repository::default();
        let mut failures = Vec::new();
        let total = self.models.len();
        for (source, plan) in &self.models {
            let started = Instant::now();
            let device = plan.engine.device;
            let loaded = match engines.start(source, plan, device) {
                Err(e) if device != Device::Cpu && plan.fallback == DeviceFallback::Cpu => {
                    tracing::warn!(model = %source.name, %device, error = %e, "GPU unavailable; running on cpu (device_fallback)");
                    engines.start(source, plan, Device::Cpu)
                }
                other => other,
            };
            match loaded {
                Ok(handle) => {
                    tracing::info!(
                        model = %source.name,
                        version = %source.version,
                        format = %source.format,
                        instances = plan.config.instance_count,
                        intra_op_threads = plan.engine.intra_op_threads,
                        load_ms = started.elapsed().as_millis() as u64,
                        "model loaded"
                    );
                    repository.insert(handle).map_err(|_| ServingError::Duplicate(source.name.clone()))?;
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::error!(model = %source.name, version = %source.version, error = %reason, "model failed to load; serving the others");
                    failures.push(format!("{}:{}: {reason}", source.name, source.version));
                    repository.insert_failed(&source.name, reason);
                }
            }
        }
        if failures.len() == total {
            return Err(ServingError::NothingLoaded(failures));
        }
        Ok(repository)
    }
}

#[cfg(test)]
mod tests;
