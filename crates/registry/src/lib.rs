//! The model registry: named, versioned model artifacts in an embedded SQLite store, with the
//! bytes kept once per content hash under `<home>/artifacts/sha256/`. Registration detects the
//! format (ONNX, TorchScript, or an accelerator plugin's artifact) and records the model's
//! signature: read from an ONNX file, so a corrupt or non-model file is refused before it is
//! stored; given in the model's config for formats whose files do not record it.
#![forbid(unsafe_code)]

mod onnx;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_core::ModelSignature;

pub use onnx::{OnnxError, read_signature};

/// Registry failures; messages are meant for the person at the CLI.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    NotAModel { path: PathBuf, source: OnnxError },
    #[error("{0}: not a TorchScript archive (a TorchScript file is a zip written by torch.jit.save)")]
    NotTorchScript(PathBuf),
    #[error("{format} files do not record their inputs and outputs: give \"signature\" in the model config")]
    MissingSignature { format: ModelFormat },
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    #[error("model '{0}' is not registered")]
    UnknownModel(String),
    #[error("model '{name}' has no version {version}")]
    UnknownVersion { name: String, version: u32 },
    #[error("invalid model name '{0}': use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    InvalidName(String),
    #[error("invalid model reference '{0}': expected NAME or NAME:VERSION with VERSION a positive integer")]
    InvalidReference(String),
    #[error("invalid tag '{0}': expected KEY=VALUE")]
    InvalidTag(String),
    #[error("registry store: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("artifact store: {0}")]
    Artifact(#[from] std::io::Error),
    #[error("registry store holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("model '{reference}' is in use by {}; delete them or move them to another version first", .users.join(", "))]
    InUse { reference: String, users: Vec<String> },
}

impl RegistryError {
    /// Whether the registry itself failed (its database, its artifact files), rather than the
    /// request naming something that is not there or not valid: a 500, not a 400, at an API.
    pub fn is_internal(&self) -> bool {
        match self {
            RegistryError::Store(_) | RegistryError::Artifact(_) | RegistryError::Corrupt(_) => true,
            RegistryError::Read { .. }
            | RegistryError::NotAModel { .. }
            | RegistryError::NotTorchScript(_)
            | RegistryError::MissingSignature { .. }
            | RegistryError::InvalidConfig(_)
            | RegistryError::UnknownModel(_)
            | RegistryError::UnknownVersion { .. }
            | RegistryError::InvalidName(_)
            | RegistryError::InvalidReference(_)
            | RegistryError::InvalidTag(_)
            | RegistryError::InUse { .. } => false,
        }
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// `NAME` or `NAME:VERSION`, as the CLI and `sluice serve` take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub name: String,
    /// `None` means the latest version.
    pub version: Option<u32>,
}

impl FromStr for ModelRef {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        let (name, version) = match s.split_once(':') {
            None => (s, None),
            Some((name, v)) => {
                let v: u32 = v.parse().map_err(|_| RegistryError::InvalidReference(s.into()))?;
                if v == 0 {
                    return Err(RegistryError::InvalidReference(s.into()));
                }
                (name, Some(v))
            }
        };
        validate_name(name)?;
        Ok(ModelRef { name: name.into(), version })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}:{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(RegistryError::InvalidName(name.into())) }
}

/// Parses `KEY=VALUE` tags from the command line.
pub fn parse_tag(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().into(), v.into())),
        _ => Err(RegistryError::InvalidTag(s.into())),
    }
}

/// How a model's artifact is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// An ONNX graph, run by ONNX Runtime.
    Onnx,
    /// A TorchScript archive, run by libtorch (builds with the `torch` feature).
    Torchscript,
    /// A file an accelerator plugin understands; the model config names the plugin library.
    Plugin,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Torchscript => "torchscript",
            ModelFormat::Plugin => "plugin",
        }
    }

    /// The format of a file by its contents: TorchScript archives are zip files; anything else is
    /// taken for ONNX (and refused at registration if it is not). Plugin artifacts are whatever
    /// their plugin reads, so they are never guessed.
    pub fn detect(bytes: &[u8]) -> ModelFormat {
        if bytes.starts_with(b"PK\x03\x04") { ModelFormat::Torchscript } else { ModelFormat::Onnx }
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelFormat {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "onnx" => Ok(ModelFormat::Onnx),
            "torchscript" => Ok(ModelFormat::Torchscript),
            "plugin" => Ok(ModelFormat::Plugin),
            other => Err(RegistryError::InvalidConfig(format!(
                "unknown model format '{other}' (expected onnx, torchscript or plugin)"
            ))),
        }
    }
}

/// One registered model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: u32,
    /// How the artifact is run.
    pub format: ModelFormat,
    pub sha256: String,
    pub size_bytes: u64,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub signature: ModelSignature,
    /// RFC 3339 UTC timestamp.
    pub created_at: String,
    /// Where the artifact's bytes live.
    pub artifact_path: PathBuf,
    /// The model config given at registration: `signature` for formats that do not record one,
    /// `plugin: {library, options}` for plugin models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// Optional metadata given at registration.
#[derive(Debug, Clone, Default)]
pub struct RegisterOptions {
    pub description: String,
    pub tags: BTreeMap<String, String>,
    /// The format; detected from the file when `None`.
    pub format: Option<ModelFormat>,
    /// The model config (a JSON object), stored with the version.
    pub config: Option<serde_json::Value>,
    /// The signature, for formats whose files do not record it, when the caller learnt it
    /// otherwise (a plugin describes its models); else the config's `signature` is used.
    pub signature: Option<ModelSignature>,
}

/// The registry under one data directory.
pub struct Registry {
    conn: Connection,
    artifacts: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS model_names (
    name TEXT PRIMARY KEY,
    -- versions are never reused, even after a delete, so NAME:VERSION always means the same bytes
    next_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL REFERENCES model_names(name),
    version INTEGER NOT NULL,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    signature TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS model_versions_sha256 ON model_versions(sha256);
";

impl Registry {
    /// Opens (creating if needed) the registry under the data directory `home`.
    pub fn open(home: &Path) -> Result<Self> {
        let artifacts = home.join("artifacts").join("sha256");
        std::fs::create_dir_all(&artifacts)?;
        let conn = Connection::open(home.join("sluice.db"))?;
        // WAL lets `sluice serve` read while the CLI writes; FULL sync makes a returned
        // registration durable even across power loss.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        // Databases written before model configs existed gain the column.
        let has_config: bool =
            conn.prepare("SELECT 1 FROM pragma_table_info('model_versions') WHERE name = 'config'")?.exists([])?;
        if !has_config {
            conn.execute_batch("ALTER TABLE model_versions ADD COLUMN config TEXT")?;
        }
        Ok(Registry { conn, artifacts })
    }

    /// Registers the model file at `path` as the next version of `name`.
    pub fn register(&mut self, name: &str, path: &Path, options: RegisterOptions) -> Result<ModelVersion> {
        let file = ModelFile::read(path)?;
        self.register_file(name, &file, options)
    }

    fn register_file(&mut self, name: &str, file: &ModelFile, options: RegisterOptions) -> Result<ModelVersion> {
        validate_name(name)?;
        let artifact = self.store_artifact(file, &options)?;
        let tx = self.conn.transaction()?;
        let next: u32 = tx
            .query_row("SELECT next_version FROM model_names WHERE name = ?1", [name], |r| r.get(0))
            .optional()?
            .unwrap_or(1);
        tx.execute(
            "INSERT INTO model_names(name, next_version) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET next_version = excluded.next_version",
            params![name, next + 1],
        )?;
        tx.execute(
            "INSERT INTO model_versions(name, version, format, sha256, size_bytes, description, tags, signature, config, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            params![
                name,
                next,
                artifact.format.as_str(),
                artifact.sha256,
                artifact.size as i64,
                options.description,
                serde_json::to_string(&options.tags)?,
                serde_json::to_string(&artifact.signature)?,
                options.config.as_ref().map(serde_json::to_string).transpose()?,
            ],
        )?;
        tx.commit()?;
        self.get(name, Some(next))
    }

    /// Returns the latest version of `name` whose bytes equal the file at `path`, registering the
    /// file as a new version only when none does. Lets `sluice up` run any number of times.
    pub fn register_if_changed(
        &mut self,
        name: &str,
        path: &Path,
        options: RegisterOptions,
    ) -> Result<(ModelVersion, bool)> {
        let file = ModelFile::read(path)?;
        let existing: Option<u32> = self
            .conn
            .query_row(
                "SELECT MAX(version) FROM model_versions WHERE name = ?1 AND sha256 = ?2",
                params![name, file.sha256],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        match existing {
            Some(v) => Ok((self.get(name, Some(v))?, false)),
            None => Ok((self.register_file(name, &file, options)?, true)),
        }
    }

    /// Every registered version, by name then version.
    pub fn list(&self) -> Result<Vec<ModelVersion>> {
        let mut stmt = self.conn.prepare(&format!("{SELECT} ORDER BY name, version"))?;
        let rows = stmt.query_map([], |r| row(&self.artifacts, r))?;
        rows.map(|r| r?).collect()
    }

    /// One version; `None` means the latest.
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<ModelVersion> {
        get_in(&self.artifacts, &self.conn, name, version)
    }

    /// Resolves a reference.
    pub fn resolve(&self, r: &ModelRef) -> Result<ModelVersion> {
        self.get(&r.name, r.version)
    }

    /// Deletes one version; its artifact is removed when no other version shares the bytes.
    pub fn delete(&mut self, name: &str, version: u32) -> Result<ModelVersion> {
        self.delete_unless_used(name, version, |_| Ok(Vec::new()))
    }

    /// Deletes one version unless `users` names something that uses it ([`RegistryError::InUse`]).
    /// `users` runs inside the delete's transaction, which holds the database's write lock from its
    /// start: whatever it checks in the shared database (the control plane's services) cannot
    /// start using the version before the delete commits. The registry knows nothing of those
    /// users; the caller brings the check.
    pub fn delete_unless_used(
        &mut self,
        name: &str,
        version: u32,
        users: impl FnOnce(&Connection) -> rusqlite::Result<Vec<String>>,
    ) -> Result<ModelVersion> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mv = get_in(&self.artifacts, &tx, name, Some(version))?;
        let users = users(&tx)?;
        if !users.is_empty() {
            return Err(RegistryError::InUse { reference: format!("{name}:{version}"), users });
        }
        tx.execute("DELETE FROM model_versions WHERE name = ?1 AND version = ?2", params![name, version])?;
        let shared: i64 =
            tx.query_row("SELECT COUNT(*) FROM model_versions WHERE sha256 = ?1", [&mv.sha256], |r| r.get(0))?;
        tx.commit()?;
        if shared == 0 {
            // After the commit: a crash here leaves an unreferenced file, never a dangling record.
            match std::fs::remove_file(&mv.artifact_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(mv)
    }

    /// Validates the file and copies it into the content-addressed store (once per content).
    fn store_artifact(&self, file: &ModelFile, options: &RegisterOptions) -> Result<StoredArtifact> {
        let (path, bytes, sha256) = (&file.path, &file.bytes, file.sha256.clone());
        let format = options.format.unwrap_or_else(|| ModelFormat::detect(bytes));
        if let Some(config) = &options.config
            && !config.is_object()
        {
            return Err(RegistryError::InvalidConfig("the model config must be a JSON object".into()));
        }
        let given = || -> Result<ModelSignature> {
            if let Some(s) = &options.signature {
                return Ok(s.clone());
            }
            let from_config = options.config.as_ref().and_then(|c| c.get("signature"));
            let s = from_config.ok_or(RegistryError::MissingSignature { format })?;
            serde_json::from_value(s.clone()).map_err(|e| RegistryError::InvalidConfig(format!("signature: {e}")))
        };
        let signature = match format {
            ModelFormat::Onnx => {
                read_signature(bytes).map_err(|source| RegistryError::NotAModel { path: path.clone(), source })?
            }
            ModelFormat::Torchscript => {
                if ModelFormat::detect(bytes) != ModelFormat::Torchscript {
                    return Err(RegistryError::NotTorchScript(path.clone()));
                }
                given()?
            }
            ModelFormat::Plugin => {
                let library =
                    options.config.as_ref().and_then(|c| c.pointer("/plugin/library")).and_then(|l| l.as_str());
                if library.is_none() {
                    return Err(RegistryError::InvalidConfig(
                        "a plugin model's config needs \"plugin\": {\"library\": PATH, \"options\": {...}}".into(),
                    ));
                }
                given()?
            }
        };
        if signature.inputs.is_empty() || signature.outputs.is_empty() {
            return Err(RegistryError::InvalidConfig("the signature needs at least one input and one output".into()));
        }
        let dest = self.artifacts.join(&sha256);
        if !dest.exists() {
            // Write to a temporary file in the same folder, sync, then rename: a crash never leaves
            // a half-written artifact under its final name.
            let mut tmp = tempfile::NamedTempFile::new_in(&self.artifacts)?;
            tmp.write_all(bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&dest).map_err(|e| e.error)?;
        }
        Ok(StoredArtifact { sha256, size: bytes.len() as u64, signature, format })
    }
}

/// [`Registry::get`] on `conn` (the registry's connection, or a transaction on it).
fn get_in(artifacts: &Path, conn: &Connection, name: &str, version: Option<u32>) -> Result<ModelVersion> {
    let found = match version {
        Some(v) => conn
            .query_row(&format!("{SELECT} WHERE name = ?1 AND version = ?2"), params![name, v], |r| row(artifacts, r))
            .optional()?,
        None => conn
            .query_row(&format!("{SELECT} WHERE name = ?1 ORDER BY version DESC LIMIT 1"), [name], |r| {
                row(artifacts, r)
            })
            .optional()?,
    };
    match (found, version) {
        (Some(mv), _) => mv,
        (None, Some(version)) if has_name(conn, name)? => {
            Err(RegistryError::UnknownVersion { name: name.into(), version })
        }
        (None, _) => Err(RegistryError::UnknownModel(name.into())),
    }
}

fn row(artifacts: &Path, r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ModelVersion>> {
    let sha256: String = r.get(3)?;
    let tags: String = r.get(6)?;
    let signature: String = r.get(7)?;
    let size: i64 = r.get(4)?;
    let format: String = r.get(2)?;
    let config: Option<String> = r.get(9)?;
    Ok((|| {
        Ok(ModelVersion {
            name: r.get(0)?,
            version: r.get(1)?,
            format: format.parse()?,
            config: config.map(|c| serde_json::from_str(&c)).transpose()?,
            artifact_path: artifacts.join(&sha256),
            sha256,
            size_bytes: size as u64,
            description: r.get(5)?,
            tags: serde_json::from_str(&tags)?,
            signature: serde_json::from_str(&signature)?,
            created_at: r.get(8)?,
        })
    })())
}

fn has_name(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row("SELECT 1 FROM model_versions WHERE name = ?1 LIMIT 1", [name], |_| Ok(())).optional()?.is_some())
}

/// Whether `conn` (a connection to, or a transaction on, a data directory's database) holds model
/// version `name:version`: for a caller that must check it inside its own transaction.
pub fn has_version(conn: &Connection, name: &str, version: u32) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row("SELECT 1 FROM model_versions WHERE name = ?1 AND version = ?2", params![name, version], |_| Ok(()))
        .optional()?
        .is_some())
}

/// A model file read into memory once, with its content hash.
struct ModelFile {
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
}

impl ModelFile {
    fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| RegistryError::Read { path: path.into(), source })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        Ok(ModelFile { path: path.into(), bytes, sha256 })
    }
}

struct StoredArtifact {
    sha256: String,
    size: u64,
    signature: ModelSignature,
    format: ModelFormat,
}

const SELECT: &str = "SELECT name, version, format, sha256, size_bytes, description, tags, signature, created_at, config FROM model_versions";
