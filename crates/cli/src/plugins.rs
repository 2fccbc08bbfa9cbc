//! Plugin models on the CLI side: what a plugin model's config says, and loading it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use sluice_backend_plugin::{PluginBackend, PluginLibrary};
use sluice_core::{Backend, ModelSignature};

/// `"plugin": {"library": ..., "options": {...}}` of a model config.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub library: PathBuf,
    pub options: serde_json::Value,
}

impl PluginConfig {
    pub fn from_config(config: Option<&serde_json::Value>) -> anyhow::Result<Self> {
        let plugin = config.and_then(|c| c.get("plugin")).context(
            "a plugin model needs a config with \"plugin\": {\"library\": \"/path/lib.so\", \"options\": {...}}",
        )?;
        let library = plugin.get("library").and_then(|l| l.as_str()).context("plugin.library must be a path")?;
        let options = plugin.get("options").cloned().unwrap_or_else(|| serde_json::json!({}));
        if !options.is_object() {
            bail!("plugin.options must be a JSON object");
        }
        Ok(PluginConfig { library: PathBuf::from(library), options })
    }
}

/// Opens the plugin a model config names, loads `artifact` with it and returns the signature it
/// reports. The library path in `config` is made absolute, so the model works from any directory.
pub fn describe(artifact: &Path, config: Option<&mut serde_json::Value>) -> anyhow::Result<ModelSignature> {
    let Some(config) = config else {
        bail!("a plugin model needs --config with \"plugin\": {{\"library\": PATH, \"options\": {{...}}}}");
    };
    let plugin = PluginConfig::from_config(Some(config))?;
    let library = std::fs::canonicalize(&plugin.library)
        .with_context(|| format!("plugin library {}", plugin.library.display()))?;
    if let Some(l) = config.pointer_mut("/plugin/library") {
        *l = serde_json::Value::String(library.display().to_string());
    }
    let backend = load(&library, artifact, &plugin.options)?;
    Ok(backend.signature().clone())
}

/// One instance of a plugin model.
pub fn load(library: &Path, artifact: &Path, options: &serde_json::Value) -> anyhow::Result<PluginBackend> {
    let library: Arc<PluginLibrary> = PluginLibrary::open(library)?;
    Ok(PluginBackend::load(library, artifact, options)?)
}
