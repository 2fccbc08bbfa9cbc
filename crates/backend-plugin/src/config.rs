//! What a plugin model's registry config says: `"plugin": {"library": ..., "options": {...}}`.

use std::path::{Path, PathBuf};

use sluice_core::{Backend, BackendError, ModelSignature};

use crate::{PluginBackend, PluginLibrary};

/// The `plugin` object of a model config.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The shared library that implements the ABI.
    pub library: PathBuf,
    /// Handed to the plugin's load call as JSON; an object.
    pub options: serde_json::Value,
}

fn invalid(message: &str) -> BackendError {
    BackendError::Load(message.to_owned())
}

impl PluginConfig {
    /// Reads the `plugin` object of a model config.
    pub fn from_config(config: Option<&serde_json::Value>) -> Result<Self, BackendError> {
        let plugin = config.and_then(|c| c.get("plugin")).ok_or_else(|| {
            invalid(
                "a plugin model needs a config with \"plugin\": {\"library\": \"/path/lib.so\", \"options\": {...}}",
            )
        })?;
        let library =
            plugin.get("library").and_then(|l| l.as_str()).ok_or_else(|| invalid("plugin.library must be a path"))?;
        let options = plugin.get("options").cloned().unwrap_or_else(|| serde_json::json!({}));
        if !options.is_object() {
            return Err(invalid("plugin.options must be a JSON object"));
        }
        Ok(PluginConfig { library: PathBuf::from(library), options })
    }
}

/// What registration does with a plugin model: opens the library the config names, loads
/// `artifact` with it and returns the signature the plugin reports. The library path in `config`
/// is made absolute, so the registered model works from any directory.
pub fn describe(artifact: &Path, config: &mut serde_json::Value) -> Result<ModelSignature, BackendError> {
    let plugin = PluginConfig::from_config(Some(config))?;
    let library = std::fs::canonicalize(&plugin.library)
        .map_err(|e| BackendError::Load(format!("plugin library {}: {e}", plugin.library.display())))?;
    if let Some(l) = config.pointer_mut("/plugin/library") {
        *l = serde_json::Value::String(library.display().to_string());
    }
    let backend = PluginBackend::load(PluginLibrary::open(&library)?, artifact, &plugin.options)?;
    Ok(backend.signature().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_name_what_is_wrong() {
        let ok = serde_json::json!({"plugin": {"library": "/x/lib.so"}});
        let c = PluginConfig::from_config(Some(&ok)).expect("valid");
        assert_eq!((c.library, c.options), (PathBuf::from("/x/lib.so"), serde_json::json!({})));
        let cases = [
            (None, "needs a config"),
            (Some(serde_json::json!({"plugin": {}})), "plugin.library"),
            (Some(serde_json::json!({"plugin": {"library": "l", "options": 3}})), "plugin.options"),
        ];
        for (config, expected) in cases {
            let e = PluginConfig::from_config(config.as_ref()).expect_err("refused");
            assert!(e.to_string().contains(expected), "{e}");
        }
    }
}
