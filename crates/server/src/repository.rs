//! The models a server serves, by name and version.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_runtime::ModelHandle;

use crate::error::ApiError;

/// Loaded model versions. Versions sort numerically when they are numbers, so the latest of
/// `2` and `10` is `10`; an unversioned request goes to the latest.
#[derive(Debug, Default)]
pub struct Repository {
    models: BTreeMap<String, BTreeMap<VersionKey, Arc<ModelHandle>>>,
    /// Models that failed to load, with the reason: requests for them get 503 naming it, while
    /// the other models serve.
    failed: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct VersionKey(Option<u64>, String);

impl VersionKey {
    fn new(v: &str) -> Self {
        VersionKey(v.parse().ok(), v.to_owned())
    }
}

impl Repository {
    /// Adds a model version; a second model with the same name and version replaces nothing and
    /// is an error.
    pub fn insert(&mut self, handle: ModelHandle) -> Result<(), String> {
        let versions = self.models.entry(handle.name().to_owned()).or_default();
        let key = VersionKey::new(handle.version());
        if versions.contains_key(&key) {
            return Err(format!("model {}:{} is given twice", handle.name(), handle.version()));
        }
        versions.insert(key, Arc::new(handle));
        Ok(())
    }

    /// Records a model that could not be loaded.
    pub fn insert_failed(&mut self, name: &str, reason: String) {
        self.failed.insert(name.to_owned(), reason);
    }

    /// The named version, or the latest when `version` is `None`.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<&Arc<ModelHandle>, ApiError> {
        if let (None, Some(reason)) = (self.models.get(name), self.failed.get(name)) {
            return Err(ApiError::NotReady(format!("model '{name}' failed to load: {reason}")));
        }
        let versions = self.models.get(name).ok_or_else(|| ApiError::UnknownModel {
            name: name.to_owned(),
            serving: self.models.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
        let found = match version {
            Some(v) => versions.get(&VersionKey::new(v)),
            None => versions.values().next_back(),
        };
        found.ok_or_else(|| ApiError::UnknownVersion {
            name: name.to_owned(),
            version: version.unwrap_or_default().to_owned(),
            serving: self.versions(name).join(", "),
        })
    }

    /// Version names of a model, oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.models.get(name).map(|v| v.keys().map(|k| k.1.clone()).collect()).unwrap_or_default()
    }

    /// Every loaded model version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ModelHandle>> {
        self.models.values().flat_map(|v| v.values())
    }

    /// The only model, if exactly one name is served (what a bare `/score` scores against).
    pub fn only(&self) -> Option<&Arc<ModelHandle>> {
        let mut names = self.models.values();
        match (names.next(), names.next()) {
            (Some(versions), None) => versions.values().next_back(),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }
}
