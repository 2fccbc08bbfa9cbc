//! The Sluice control plane: services (models deployed with a deployment config, run as replica
//! processes on the local target or as containers on a [`target::ReplicaTarget`]), endpoints (up to six versions with traffic shares), keys and
//! tokens, state and logs. It persists everything in the data directory's SQLite database,
//! publishes the gateway configuration (key digests and public keys only), and serves the admin
//! API the CLI talks to.
#![forbid(unsafe_code)]

pub mod api;
mod autoscale;
mod endpoints;
pub mod model;
mod models;
mod secrets;
mod services;
mod store;
pub mod supervisor;
pub mod target;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_auth::{Jwks, KeyDigest, TokenSigner};
use sluice_routing::{AuthPolicy, EndpointRoute, GatewayConfig, ServiceRoute};
use tokio::sync::watch;

pub use api::router;
pub use autoscale::{AutoscaleStatus, Decision};
pub use model::*;
pub use models::{MAX_MODEL_BYTES, RegisterModel};
pub use secrets::{
    admin_token_path, control_url_path, gateway_credential, gateway_token_path, read_admin_token, read_gateway_token,
    read_secret, write_control_url,
};
pub use store::services_using_model;
use store::{Reads, Store};
use supervisor::{Found, Group};
use target::ReplicaTarget;

/// Control plane settings fixed at start.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Data directory: database, artifacts, secrets, replica logs.
    pub home: PathBuf,
    /// The `sluice` executable that replicas run (`sluice serve`).
    pub exe: PathBuf,
    /// Lifetime of issued tokens unless a request asks for less.
    pub token_ttl: Duration,
    /// How long a stopping replica may take to finish in-flight requests before it is killed.
    pub stop_grace: Duration,
    /// ONNX Runtime library handed to replicas, if set explicitly.
    pub ort_lib: Option<PathBuf>,
    /// Files holding the admin and gateway credentials (a Kubernetes Secret, say) instead of the
    /// ones the control plane creates in its data directory.
    pub admin_token_file: Option<PathBuf>,
    pub gateway_token_file: Option<PathBuf>,
    /// How long an autoscaled service's load must stay below its target before replicas go.
    pub autoscale_down_delay: Duration,
}

/// Everything that can go wrong in a control-plane operation; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The deploy target (a Kubernetes API server, a Docker Engine) refused or failed.
    #[error("{0}")]
    Target(#[from] target::TargetError),
    /// A model reference the registry could not resolve, or the registry itself failing; which
    /// one decides the status ([`RegistryError::is_internal`]).
    #[error("model '{reference}': {source}")]
    Registry {
        reference: String,
        #[source]
        source: sluice_registry::RegistryError,
    },
}

impl From<store::StoreError> for ControlError {
    fn from(e: store::StoreError) -> Self {
        ControlError::Internal(e.to_string())
    }
}

/// The running generations of one service: `current` serves; `next` is an update rolling out.
struct ServiceRuntime {
    current: Arc<Group>,
    next: Option<Arc<Group>>,
}

/// The control plane; share it as `Arc<ControlPlane>`.
pub struct ControlPlane {
    settings: ControlSettings,
    store: Mutex<Store>,
    runtimes: Mutex<HashMap<String, ServiceRuntime>>,
    signer: TokenSigner,
    admin_token: String,
    gateway_token: String,
    config_tx: watch::Sender<Arc<GatewayConfig>>,
    generation: AtomicU64,
    http: reqwest::Client,
    /// Where replicas run when not as local processes.
    remote: Option<Arc<dyn ReplicaTarget>>,
    /// Each gateway's latest traffic report, by gateway id, with when it came.
    gateway_reports: Mutex<HashMap<String, (std::time::Instant, sluice_routing::GatewayReport)>>,
    /// Each gateway's busy time per service, by (gateway, service): the autoscaler's input.
    load: Mutex<HashMap<(String, String), autoscale::LoadSample>>,
    /// The autoscaler's state per autoscaled service.
    scaling: Mutex<HashMap<String, autoscale::Scaling>>,
}

/// A gateway that has not reported for this long is gone (or cut off): its counters no longer
/// count. Gateways report every second.
const REPORT_MAX_AGE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").field("home", &self.settings.home).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn timestamp() -> String {
    // Seconds are enough for created/updated times.
    sluice_core::time::Utc::now().rfc3339_seconds()
}

impl ControlPlane {
    /// Opens the store and secrets under `settings.home` and starts every stored service. Replica
    /// processes left by an earlier control plane that died are adopted where they run a slot of
    /// their service's current generation (no second process is started beside them); the others
    /// are stopped once their service is ready, so a gateway that kept serving through the outage
    /// loses nothing.
    pub fn start(settings: ControlSettings) -> anyhow::Result<Arc<Self>> {
        Self::start_on(settings, None)
    }

    /// Starts with replicas on `remote` instead of local processes (with `None`, as [`start`]).
    /// Every stored service is applied to the target again; it finds what already runs (replicas
    /// outlive the control plane) and changes only what differs.
    ///
    /// [`start`]: ControlPlane::start
    pub fn start_on(settings: ControlSettings, remote: Option<Arc<dyn ReplicaTarget>>) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.home)?;
        let home = &settings.home;
        let admin_token =
            secrets::given_or_created(home, &admin_token_path(home), settings.admin_token_file.as_deref(), "admin")?;
        let gateway_token = secrets::gateway_credential(home, settings.gateway_token_file.as_deref())?;
        let signer = secrets::signing_key(&settings.home)?;
        let store = Store::open(&settings.home)?;
        let mut left = Vec::new();
        if remote.is_none() {
            let recorded = store.replica_pids()?;
            left = supervisor::find_replicas(&settings.home, recorded.iter().map(|(pid, _)| *pid));
            for (pid, _) in &recorded {
                if !left.iter().any(|f| f.pid == *pid) {
                    store.remove_replica_pid(*pid)?;
                }
            }
        }
        // Unix milliseconds: generations keep increasing across restarts, so a gateway that
        // follows the control plane never mistakes a new configuration for one it has.
        let generation = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
        let http = reqwest::Client::builder().build()?;
        let cp = Arc::new(ControlPlane {
            settings,
            store: Mutex::new(store),
            runtimes: Mutex::new(HashMap::new()),
            signer,
            admin_token,
            gateway_token,
            config_tx: watch::channel(Arc::new(GatewayConfig::default())).0,
            generation: AtomicU64::new(generation),
            http,
            remote,
            gateway_reports: Mutex::new(HashMap::new()),
            load: Mutex::new(HashMap::new()),
            scaling: Mutex::new(HashMap::new()),
        });
        cp.start_autoscaler();
        let specs = lock(&cp.store).services()?;
        if let Some(remote) = &cp.remote {
            for spec in &specs {
                remote.apply(cp.deployment(spec)?);
            }
            cp.follow_target(remote.changes());
            cp.publish();
            return Ok(cp);
        }
        for spec in specs {
            let plan = cp.plan(&spec)?;
            // One process per slot of this generation is adopted; the rest stay in `left`.
            let mut adopted: Vec<Found> = Vec::new();
            left.retain(|f| {
                let adopt = f.dir == plan.dir && f.index < plan.replicas && !adopted.iter().any(|a| a.index == f.index);
                if adopt {
                    adopted.push(f.clone());
                }
                !adopt
            });
            let group = Group::start_adopting(&cp, plan, adopted);
            lock(&cp.runtimes).insert(spec.name.clone(), ServiceRuntime { current: group, next: None });
        }
        cp.publish();
        cp.retire_stale(left);
        Ok(cp)
    }

    /// The configuration gateways serve, updated on every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<GatewayConfig>> {
        self.config_tx.subscribe()
    }

    /// Constant-time check of the admin credential.
    pub fn is_admin(&self, presented: &str) -> bool {
        sluice_auth::constant_time_str_eq(presented, &self.admin_token)
    }

    /// Constant-time check of a credential that may read the gateway configuration: the gateway
    /// credential or the admin one.
    pub fn may_read_gateway_config(&self, presented: &str) -> bool {
        sluice_auth::constant_time_str_eq(presented, &self.gateway_token) | self.is_admin(presented)
    }

    /// The public keys that verify issued tokens.
    pub fn jwks(&self) -> Jwks {
        Jwks { keys: vec![self.signer.public_jwk()] }
    }

    /// Stops every local replica, letting in-flight requests finish. Replicas on a remote target
    /// keep running: gateways keep serving through the control plane's absence.
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group>> =
            lock(&self.runtimes).drain().flat_map(|(_, rt)| std::iter::once(rt.current).chain(rt.next)).collect();
        for g in &groups {
            g.stop();
        }
        for g in groups {
            g.stop_and_wait().await;
        }
    }

    /// Republishes the gateway configuration whenever the remote target reports a change.
    fn follow_target(self: &Arc<Self>, mut changes: watch::Receiver<u64>) {
        let cp = Arc::downgrade(self);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let Some(cp) = cp.upgrade() else { break };
                cp.publish();
            }
        });
    }

    /// `host:port` of the ready replicas of `service`.
    fn ready_addresses(&self, runtimes: &HashMap<String, ServiceRuntime>, service: &str) -> Vec<String> {
        match &self.remote {
            Some(remote) => remote.observe(service).ready_addresses,
            None => runtimes.get(service).map(|rt| rt.current.ready_addresses()).unwrap_or_default(),
        }
    }

    /// Rebuilds and publishes the gateway configuration.
    fn publish(&self) {
        match self.build_config() {
            Ok(config) => {
                self.config_tx.send_replace(Arc::new(config));
            }
            Err(e) => tracing::error!(error = %e, "cannot build the gateway configuration"),
        }
    }

    fn build_config(&self) -> Result<GatewayConfig, ControlError> {
        let store = lock(&self.store);
        let runtimes = lock(&self.runtimes);
        let policy = |kind: &str, name: &str, mode: AuthMode| -> Result<AuthPolicy, ControlError> {
            Ok(match mode {
                AuthMode::None => AuthPolicy::None,
                AuthMode::Token => AuthPolicy::Token,
                AuthMode::Key => {
                    let keys = store
                        .keys(kind, name)?
                        .ok_or_else(|| ControlError::Internal(format!("{kind} '{name}' has no keys")))?;
                    AuthPolicy::Keys {
                        primary: KeyDigest::of(&keys.primary_key),
                        secondary: KeyDigest::of(&keys.secondary_key),
                    }
                }
            })
        };
        let mut services = Vec::new();
        for spec in store.services()? {
            let replicas = self.ready_addresses(&runtimes, &spec.name);
            let models = spec.models.iter().map(|m| m.split(':').next().unwrap_or(m).to_owned()).collect();
            let auth = policy("service", &spec.name, services::auth_mode(&spec.deploy_config))?;
            let replica_capacity = services::replica_capacity(&spec);
            services.push(ServiceRoute { name: spec.name, models, replicas, auth, replica_capacity });
        }
        let mut endpoints = Vec::new();
        for spec in store.endpoints()? {
            let auth = policy("endpoint", &spec.name, spec.auth)?;
            endpoints.push(EndpointRoute { name: spec.name, auth, versions: spec.versions });
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(GatewayConfig { generation, services, endpoints, jwks: self.jwks() })
    }

    /// The configuration once its generation differs from `after`, or `None` after `wait`.
    pub async fn gateway_config(&self, after: Option<u64>, wait: Duration) -> Option<Arc<GatewayConfig>> {
        let mut rx = self.subscribe();
        let changed = |c: &Arc<GatewayConfig>| after != Some(c.generation);
        match tokio::time::timeout(wait, rx.wait_for(changed)).await {
            Ok(Ok(config)) => Some(config.clone()),
            _ => None,
        }
    }

    // === replica events, called by the supervisor ===

    fn replica_spawned(&self, pid: u32, service: &str) {
        if let Err(e) = lock(&self.store).add_replica_pid(pid, service) {
            tracing::warn!(error = %e, "cannot record replica pid");
        }
    }

    fn replica_exited(&self, pid: u32, service: &str) {
        if let Err(e) = lock(&self.store).remove_replica_pid(pid) {
            tracing::warn!(error = %e, "cannot forget replica pid");
        }
        tracing::debug!(service, pid, "replica process gone");
        self.publish();
    }

    /// A replica became ready: publish it, and finish a rolling update whose replicas are all up.
    fn replica_ready(self: &Arc<Self>, service: &str) {
        let retired = {
            let mut runtimes = lock(&self.runtimes);
            match runtimes.get_mut(service) {
                Some(rt) if rt.next.as_ref().is_some_and(|n| n.all_ready()) => {
                    let next = rt.next.take().expect("checked above; this is a bug");
                    Some(std::mem::replace(&mut rt.current, next))
                }
                _ => None,
            }
        };
        self.publish();
        if let Some(old) = retired {
            tracing::info!(
                service,
                generation = old.plan.generation,
                "update rolled out; stopping the previous replicas"
            );
            // Gateways need a moment to take the new addresses before the old replicas stop
            // accepting connections.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                old.stop_and_wait().await;
            });
        }
    }

    /// Stops replica processes left by an earlier run that were not adopted (older generations,
    /// surplus slots, deleted services) once their service is healthy again (or at once when the
    /// service is gone). A pid is signalled only while it still runs `sluice serve` for this data
    /// directory; it is forgotten once it is gone.
    fn retire_stale(self: &Arc<Self>, stale: Vec<Found>) {
        for found in stale {
            let cp = self.clone();
            let service = found
                .dir
                .parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            tokio::spawn(async move {
                let pid = found.pid;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
                while tokio::time::Instant::now() < deadline {
                    let healthy = lock(&cp.runtimes).get(&service).is_none_or(|rt| rt.current.all_ready());
                    if healthy {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                tracing::info!(pid, service, "stopping a replica left by an earlier control plane");
                supervisor::stop_stale(pid, &cp.settings.home, cp.settings.stop_grace).await;
                if let Some(socket) = &found.socket {
                    let _ = std::fs::remove_file(socket);
                }
                if let Err(e) = lock(&cp.store).remove_replica_pid(pid) {
                    tracing::warn!(error = %e, "cannot forget replica pid");
                }
            });
        }
    }

    fn home(&self) -> &Path {
        &self.settings.home
    }

    /// The stored bytes of a registered artifact, by its lowercase hex SHA-256: what remote
    /// replicas fetch their models from (and check against the same hash).
    pub fn artifact_path(&self, sha256: &str) -> Result<PathBuf, ControlError> {
        let well_formed =
            sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return Err(ControlError::Invalid(format!("'{sha256}' is not a lowercase hex SHA-256")));
        }
        let path = self.home().join("artifacts").join("sha256").join(sha256);
        if !path.is_file() {
            return Err(ControlError::NotFound(format!("no artifact with SHA-256 {sha256}")));
        }
        Ok(path)
    }
}

/// Names of services, endpoints and versions: what fits a URL path segment and a metric label.
fn check_name(what: &str, name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "{what} name '{name}' is not valid: use 1-63 lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("service", "mlp-small").is_ok());
        assert!(check_name("version", "v1.2").is_ok());
        for bad in ["", "Upper", "-x", "x-", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name("service", bad).is_err(), "{bad}");
        }
    }
}
