//! The control plane's resources as the admin API and the CLI exchange them.

use serde::{Deserialize, Serialize};
use sluice_routing::EndpointVersion;

/// A service as stored: resolved models and the configs it was deployed with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    /// Resolved `name:version` references.
    pub models: Vec<String>,
    /// The deployment config as given (Azure ML `deploymentconfig.json` field names).
    pub deploy_config: serde_json::Value,
    /// Per-model runtime settings, in `sluice serve --model-config` form.
    pub inference_config: Option<serde_json::Value>,
    /// Bumped by every update; replicas of older generations are replaced.
    pub generation: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateService {
    pub name: String,
    /// `NAME` or `NAME:VERSION` references into the registry; NAME alone means the latest.
    pub models: Vec<String>,
    #[serde(default)]
    pub deploy_config: Option<serde_json::Value>,
    #[serde(default)]
    pub inference_config: Option<serde_json::Value>,
}

/// `PATCH /v1/services/{name}`: what is given replaces what was there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateService {
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub deploy_config: Option<serde_json::Value>,
    #[serde(default)]
    pub inference_config: Option<serde_json::Value>,
}

/// Where a service is in its life (Azure ML's states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceState {
    /// Replicas are starting (or an update is rolling out).
    Transitioning,
    /// Every replica is ready.
    Healthy,
    /// It was healthy, and some replica is not ready now (restarting, failing probes).
    Unhealthy,
    /// Replicas cannot start; the reason says why. Nothing is retried until an update.
    Failed,
}

/// One replica as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub index: usize,
    /// The pod or container name, on a target that runs replicas in containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The process id, on the local target.
    pub pid: Option<u32>,
    pub address: Option<String>,
    pub ready: bool,
    pub restarts: u32,
    pub last_exit: Option<String>,
}

/// `GET /v1/services/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub models: Vec<String>,
    pub state: ServiceState,
    pub reason: Option<String>,
    pub auth: AuthMode,
    pub desired_replicas: usize,
    pub replicas: Vec<ReplicaStatus>,
    /// For an autoscaled service: bounds, current and desired replicas, utilization and the last
    /// decision with its reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::AutoscaleStatus>,
    /// Path on the gateway that scores with this service.
    pub scoring_path: String,
    /// Path on the gateway of this service's OpenAPI document (no credential needed). Absent
    /// from control planes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swagger_uri: Option<String>,
    pub generation: u64,
    pub deploy_config: serde_json::Value,
    /// Settings of `deploy_config` that have no effect on this target, each with why: named so
    /// that nothing is accepted silently.
    #[serde(default)]
    pub ignored_settings: Vec<IgnoredSetting>,
    pub inference_config: Option<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
}

/// A deployment-config field that is accepted but does nothing where the service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredSetting {
    pub field: String,
    pub reason: String,
}

/// How callers of a service or endpoint authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Primary and secondary keys (the default).
    #[default]
    Key,
    /// JWTs from `sluice token get`.
    Token,
    /// No auth (`auth_enabled: false`).
    None,
}

/// An endpoint as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub name: String,
    pub auth: AuthMode,
    pub versions: Vec<EndpointVersion>,
    pub created_at: String,
    pub updated_at: String,
}

/// `POST /v1/endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub name: String,
    #[serde(default)]
    pub auth: AuthMode,
    /// The first version; it becomes the default.
    pub version: VersionChange,
}

/// Adding or changing an endpoint version. Flags that are set flip on the other versions (one
/// default, one control); unset fields keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionChange {
    pub name: String,
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub traffic: Option<f64>,
    /// Make this version the default (the one that takes what the others leave).
    #[serde(default)]
    pub default: bool,
    /// Make this version the control (the previous control becomes a treatment).
    #[serde(default)]
    pub control: bool,
    /// Make this version a treatment again.
    #[serde(default)]
    pub treatment: bool,
    /// Make this version the shadow with this mirror percentage.
    #[serde(default)]
    pub shadow: Option<f64>,
    /// Make a shadow version live again.
    #[serde(default)]
    pub no_shadow: bool,
}

/// One version of `GET /v1/endpoints/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionStatus {
    pub name: String,
    pub service: String,
    /// `control`, `treatment` or `shadow`.
    pub role: String,
    pub is_default: bool,
    pub traffic_percentile: f64,
    /// Share of live traffic in percent, the default's remainder included.
    pub effective_percent: f64,
    pub shadow_percent: Option<f64>,
    /// Requests, errors and latency the gateways saw for this version (since each started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<sluice_routing::VersionStats>,
}

/// `GET /v1/endpoints/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub name: String,
    pub auth: AuthMode,
    pub scoring_path: String,
    /// Path on the gateway of the endpoint's OpenAPI document (its default version's, no
    /// credential needed). Absent from control planes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swagger_uri: Option<String>,
    pub versions: Vec<VersionStatus>,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/keys/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keys {
    pub primary_key: String,
    pub secondary_key: String,
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyName::Primary => "primary",
            KeyName::Secondary => "secondary",
        })
    }
}

/// Which key to regenerate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyName {
    Primary,
    Secondary,
}

/// `POST /v1/keys/{name}/regenerate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegenerateKey {
    pub key: KeyName,
    /// An explicit value instead of a random one.
    #[serde(default)]
    pub value: Option<String>,
}

/// `POST /v1/tokens/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime in seconds [default: the control plane's setting].
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A token and when to fetch the next one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    /// Unix seconds at which the token stops working.
    pub expires_on: u64,
    /// Unix seconds after which the caller should fetch a new token.
    pub refresh_by: u64,
}

/// `GET /v1/services/{name}/data`: where a service's collected model data is and how much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceData {
    pub service: String,
    /// Whether its deployment config asks for collection (`collect_model_data`).
    pub collecting: bool,
    pub sample_rate: Option<f64>,
    /// The files on this host, under `<data dir>/collected/<service>/<model>/<version>/<inputs|predictions>/<yyyy>/<mm>/<dd>/`.
    pub usage: sluice_collect::Usage,
    /// Where else data is, when replicas run elsewhere.
    pub note: Option<String>,
}

/// `GET /v1/services/{name}/logs`: one chunk per replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    pub replica: usize,
    /// Pass this back as `offset` to get only what follows.
    pub offset: u64,
    pub text: String,
}
