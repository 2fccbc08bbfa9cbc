//! The model registry through the admin API, for a control plane on another host (a Kubernetes
//! StatefulSet, a container): `sluice model register|list|show|delete` with `SLUICE_CONTROL_URL`
//! set land here instead of in a local data directory.

use serde::{Deserialize, Serialize};
use sluice_registry::{ModelRef, ModelVersion, RegisterOptions, Registry, RegistryError};

use crate::{ControlError, ControlPlane};

/// Largest model file the admin API accepts.
pub const MAX_MODEL_BYTES: usize = 2 * 1024 * 1024 * 1024;

/// Metadata of an upload (the `options` query parameter, as JSON); the body is the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterModel {
    /// `onnx` or `torchscript` [default: detected from the bytes]. Plugin models name a library
    /// on the control plane's host, so they are registered there.
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// The model config (a TorchScript model's `signature`).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// The status a registry failure gets on the model routes, where the model is the resource.
fn model_error(reference: &str, e: RegistryError) -> ControlError {
    match e {
        RegistryError::UnknownModel(_) | RegistryError::UnknownVersion { .. } => ControlError::NotFound(e.to_string()),
        RegistryError::InUse { .. } => ControlError::Conflict(e.to_string()),
        source => ControlError::Registry { reference: reference.to_owned(), source },
    }
}

impl ControlPlane {
    fn registry(&self) -> Result<Registry, ControlError> {
        Registry::open(self.home()).map_err(|e| ControlError::Internal(format!("opening the registry: {e}")))
    }

    pub fn list_models(&self) -> Result<Vec<ModelVersion>, ControlError> {
        self.registry()?.list().map_err(|e| model_error("", e))
    }

    /// One version (`NAME` is the latest).
    pub fn show_model(&self, reference: &str) -> Result<ModelVersion, ControlError> {
        let r: ModelRef = reference.parse().map_err(|e| model_error(reference, e))?;
        self.registry()?.resolve(&r).map_err(|e| model_error(reference, e))
    }

    /// Registers `bytes` as the next version of `name`, with the same checks as on the command
    /// line (the signature read from the graph; a corrupt file refused, nothing stored).
    pub fn register_model(
        &self,
        name: &str,
        bytes: &[u8],
        options: RegisterModel,
    ) -> Result<ModelVersion, ControlError> {
        let format = options.format.as_deref().map(str::parse).transpose().map_err(|e| model_error(name, e))?;
        if format == Some(sluice_registry::ModelFormat::Plugin) {
            return Err(ControlError::Invalid(
                "plugin models name a library on the control plane's host: register them there with `sluice model register`".into(),
            ));
        }
        // The registry validates and stores files; the upload goes through one, removed after.
        let dir = self.home().join("uploads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ControlError::Internal(format!("creating {}: {e}", dir.display())))?;
        let upload = tempfile_in(&dir, bytes)?;
        let options = RegisterOptions {
            description: options.description,
            tags: options.tags,
            format,
            config: options.config,
            signature: None,
        };
        // The upload's temporary path means nothing to the caller: name the upload instead.
        let registered = self.registry()?.register(name, upload.path(), options).map_err(|e| match e {
            RegistryError::NotAModel { source, .. } => {
                ControlError::Invalid(format!("model '{name}': the upload is {source}"))
            }
            RegistryError::NotTorchScript(_) => ControlError::Invalid(format!(
                "model '{name}': the upload is not a TorchScript archive (a zip written by torch.jit.save)"
            )),
            e => model_error(name, e),
        });
        drop(upload);
        let mv = registered?;
        tracing::info!(model = %mv.name, version = mv.version, sha256 = %mv.sha256, "model registered through the admin API");
        Ok(mv)
    }

    /// Deletes one version, refused while a service deploys it (in the same transaction).
    pub fn delete_model(&self, name: &str, version: u32) -> Result<ModelVersion, ControlError> {
        let reference = format!("{name}:{version}");
        let mv = self
            .registry()?
            .delete_unless_used(name, version, |conn| {
                let services = crate::store::services_using_model(conn, name, version)?;
                Ok(services.into_iter().map(|s| format!("service '{s}'")).collect())
            })
            .map_err(|e| model_error(&reference, e))?;
        tracing::info!(model = name, version, "model deleted through the admin API");
        Ok(mv)
    }
}

/// A file in `dir` holding `bytes`, removed when dropped.
struct Upload(std::path::PathBuf);

impl Upload {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &std::path::Path, bytes: &[u8]) -> Result<Upload, ControlError> {
    let path = dir.join(format!("upload-{:016x}", sluice_routing::random_seed()));
    std::fs::write(&path, bytes).map_err(|e| ControlError::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(Upload(path))
}
