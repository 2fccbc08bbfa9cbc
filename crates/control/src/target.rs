//! Deploy targets other than the local one: where replicas run in containers on other hosts
//! (Kubernetes pods, Docker containers). The control plane tells such a target what each service
//! should run ([`ServiceDeployment`]) and reads back what runs ([`Observed`]); the target does the
//! work in the background and reports changes, after which the control plane republishes the
//! gateway configuration.
//!
//! A remote replica carries everything it needs in its [`ReplicaSpec`] (`sluice replica` reads it
//! from `SLUICE_REPLICA_SPEC`): the models by content hash, fetched from the control plane's
//! artifact route and verified, and the service's configs. No volume is shared with the control
//! plane, and a replica of one generation always runs that generation's models, even when it
//! restarts after the service moved on.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::{LogChunk, ReplicaStatus, ServiceState};

/// Environment variable holding a remote replica's [`ReplicaSpec`] as JSON.
pub const REPLICA_SPEC_ENV: &str = "SLUICE_REPLICA_SPEC";
/// Port remote replicas listen on.
pub const REPLICA_PORT: u16 = 8000;
/// Label (Kubernetes) or container label (Docker) naming a replica's service.
pub const SERVICE_LABEL: &str = "sluice.dev/service";
/// Label naming a replica's service generation.
pub const GENERATION_LABEL: &str = "sluice.dev/generation";
/// Label naming a replica's slot (Docker containers).
pub const REPLICA_LABEL: &str = "sluice.dev/replica";
/// Label every object a target makes carries, with [`MANAGED_BY`] as its value.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "sluice-control";

/// One model of a remote replica, fetched by content hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaModel {
    pub name: String,
    pub version: u32,
    pub format: sluice_registry::ModelFormat,
    /// Lowercase hex SHA-256 of the artifact: what it is fetched by and checked against.
    pub sha256: String,
    pub size_bytes: u64,
    /// The registry's model config (plugin library and options, TorchScript signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// The registered signature (what TorchScript models run with).
    #[serde(default)]
    pub signature: sluice_core::ModelSignature,
}

/// What one replica of a service generation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    pub service: String,
    pub generation: u64,
    pub models: Vec<ReplicaModel>,
    pub deploy_config: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_config: Option<serde_json::Value>,
}

/// Resources one replica asks for (`cpu_cores`, `memory_gb`, `gpu_cores` and the limits).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu_cores: Option<f64>,
    pub memory_gb: Option<f64>,
    pub cpu_cores_limit: Option<f64>,
    pub memory_gb_limit: Option<f64>,
    pub gpu_cores: Option<u32>,
}

/// Liveness and readiness probing (Azure ML's probe fields, with its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    pub period_seconds: u32,
    pub timeout_seconds: u32,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub initial_delay_seconds: u32,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            period_seconds: 10,
            timeout_seconds: 2,
            failure_threshold: 3,
            success_threshold: 1,
            initial_delay_seconds: 310,
        }
    }
}

/// What a service should run: its newest generation.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDeployment {
    pub replicas: usize,
    pub spec: ReplicaSpec,
    pub resources: Resources,
    pub probes: Probes,
}

impl ServiceDeployment {
    pub fn service(&self) -> &str {
        &self.spec.service
    }

    pub fn generation(&self) -> u64 {
        self.spec.generation
    }
}

/// What runs for a service, as the target last saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub state: ServiceState,
    /// Why the service is not Healthy, in the target's words (a crash loop with the replica's
    /// last log lines, an unschedulable pod with the scheduler's reason, ...).
    pub reason: Option<String>,
    /// Replicas the newest generation should have.
    pub desired: usize,
    pub replicas: Vec<ReplicaStatus>,
    /// `host:port` of every ready replica: what gateways balance over.
    pub ready_addresses: Vec<String>,
}

impl Observed {
    /// A service the target has not reported on yet.
    pub fn starting(desired: usize) -> Self {
        Observed {
            state: ServiceState::Transitioning,
            reason: Some("waiting for the target to report".into()),
            desired,
            replicas: Vec::new(),
            ready_addresses: Vec::new(),
        }
    }
}

/// A failure of the target itself (its API refusing or unreachable); the control plane answers
/// it with 502 and the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A place where replicas run, other than local processes.
///
/// `apply` and `remove` only record what is wanted and return; the target converges in the
/// background (a target's API may be slow or down, and a rollout takes minutes) and reports what
/// it sees through `observe`. Every change that can alter `observe` bumps `changes`.
pub trait ReplicaTarget: Send + Sync + 'static {
    /// Short name for messages (`kubernetes`, `docker`).
    fn name(&self) -> &'static str;
    /// Wants `deployment` running for its service: creates it, or rolls the service over to it
    /// when its generation is newer than what runs (the old replicas keep serving until the new
    /// ones are ready).
    fn apply(&self, deployment: ServiceDeployment);
    /// Wants nothing running for `service` any more.
    fn remove(&self, service: &str);
    /// What runs for `service` now.
    fn observe(&self, service: &str) -> Observed;
    /// The replicas' output (one chunk per replica, or only `replica`'s): the recent tail, or
    /// what they wrote since `since` (Unix seconds; lines of that very second may come again).
    /// Each chunk's `offset` is the Unix second it was read at: what a follower passes back.
    fn logs(
        &self,
        service: &str,
        replica: Option<usize>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Vec<LogChunk>, TargetError>>;
    /// Bumped on every change of what `observe` reports.
    fn changes(&self) -> watch::Receiver<u64>;
}

impl ServiceDeployment {
    /// Resources and probes from a checked deployment config.
    pub fn settings_from(config: &sluice_core::DeploymentConfig) -> (Resources, Probes) {
        let d = Probes::default();
        let probes = Probes {
            period_seconds: config.period_seconds.unwrap_or(d.period_seconds).max(1),
            timeout_seconds: config.timeout_seconds.unwrap_or(d.timeout_seconds).max(1),
            failure_threshold: config.failure_threshold.unwrap_or(d.failure_threshold).max(1),
            success_threshold: config.success_threshold.unwrap_or(d.success_threshold).max(1),
            initial_delay_seconds: config.initial_delay_seconds.unwrap_or(d.initial_delay_seconds),
        };
        let resources = Resources {
            cpu_cores: config.cpu_cores,
            memory_gb: config.memory_gb,
            cpu_cores_limit: config.cpu_cores_limit,
            memory_gb_limit: config.memory_gb_limit,
            gpu_cores: config.gpu_cores.filter(|&n| n > 0),
        };
        (resources, probes)
    }
}
