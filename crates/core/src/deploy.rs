//! The deployment configuration: how a model version is deployed as a service. Field names follow
//! Azure ML's `deploymentconfig.json` (as design.md lists them) so existing files keep working;
//! Sluice's own tunables (batching, instances) sit beside them. Everything is checked, and
//! contradictions are refused, before anything starts.

use serde::Deserialize;

// The defaults of the two admission settings live here, so the replica that applies them and the
// control plane that tells gateways what a replica can hold agree.

/// Requests a model admits at once when nothing sets `replica_max_concurrent_requests`.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 64;
/// Requests that may wait for admission when nothing sets `max_queued_requests`.
pub const DEFAULT_MAX_QUEUED_REQUESTS: usize = 256;

/// A deployment configuration file. Unknown fields are refused so that a typo cannot silently
/// fall back to a default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Accepted for compatibility (`"AKS"`, `"local"`); Sluice picks the target itself.
    #[serde(rename = "computeType")]
    pub compute_type: Option<String>,
    pub cpu_cores: Option<f64>,
    pub memory_gb: Option<f64>,
    pub cpu_cores_limit: Option<f64>,
    pub memory_gb_limit: Option<f64>,
    pub gpu_cores: Option<u32>,
    pub num_replicas: Option<u32>,
    pub autoscale_enabled: Option<bool>,
    pub autoscale_min_replicas: Option<u32>,
    pub autoscale_max_replicas: Option<u32>,
    pub autoscale_target_utilization: Option<u32>,
    pub autoscale_refresh_seconds: Option<u32>,
    pub replica_max_concurrent_requests: Option<usize>,
    /// Milliseconds a request may wait for admission.
    pub max_request_wait_time: Option<u64>,
    pub scoring_timeout_ms: Option<u64>,
    pub auth_enabled: Option<bool>,
    pub token_auth_enabled: Option<bool>,
    pub primary_key: Option<String>,
    pub secondary_key: Option<String>,
    pub collect_model_data: Option<bool>,
    pub enable_app_insights: Option<bool>,
    pub period_seconds: Option<u32>,
    pub initial_delay_seconds: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub success_threshold: Option<u32>,
    pub failure_threshold: Option<u32>,
    pub description: Option<String>,
    pub tags: Option<std::collections::BTreeMap<String, String>>,
    // --- Sluice's own settings ---
    /// Model instances per replica (default: one per core).
    pub instance_count: Option<usize>,
    /// ONNX Runtime threads per instance.
    pub intra_op_threads: Option<usize>,
    /// Most rows per batched model run; 1 turns batching off.
    pub max_batch_size: Option<usize>,
    /// Microseconds the first request of a batch may wait for more.
    pub max_queue_delay_us: Option<u64>,
    pub preferred_batch_sizes: Option<Vec<usize>>,
    /// Where models run: `cpu`, `cuda` or `cuda:N` [default: `cuda:0` when gpu_cores > 0, else cpu].
    pub device: Option<String>,
    /// What a model does when its GPU is missing: `fail` (the default) or `cpu` (run on the CPU,
    /// with a warning).
    pub device_fallback: Option<String>,
    /// Share of requests whose inputs and predictions `collect_model_data` keeps, in (0, 1]
    /// [default: 1, every request].
    pub collect_model_data_sample_rate: Option<f64>,
}

/// What a model whose GPU is missing does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceFallback {
    /// Refuse to load: the operator asked for a GPU and should hear that there is none.
    #[default]
    Fail,
    /// Load on the CPU and log a warning.
    Cpu,
}

impl std::str::FromStr for DeviceFallback {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fail" => Ok(DeviceFallback::Fail),
            "cpu" => Ok(DeviceFallback::Cpu),
            other => Err(format!("device_fallback must be \"fail\" or \"cpu\", got \"{other}\"")),
        }
    }
}

impl DeploymentConfig {
    /// The device models run on: `device`, else `cuda:0` when GPU cores are requested.
    pub fn model_device(&self) -> Option<String> {
        self.device.clone().or_else(|| self.gpu_cores.filter(|&n| n > 0).map(|_| "cuda:0".to_owned()))
    }
}

/// A setting that is accepted but does nothing where the service runs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEffect {
    /// The field's name in the file.
    pub field: &'static str,
    pub reason: String,
}

impl DeploymentConfig {
    /// The settings given in this file that have no effect on the local target (replicas as
    /// processes on this host), so that they are named to the operator instead of accepted
    /// silently. Every other field acts there: replica counts, admission and timeouts, auth and
    /// keys, probe period/timeout/failure threshold, batching, instances, threads, device (and
    /// `gpu_cores` above 0, which picks `cuda:0`).
    pub fn without_effect_on_local(&self) -> Vec<NoEffect> {
        self.without_effect(true)
    }

    /// The settings given in this file that have no effect where replicas run as containers
    /// (Kubernetes, Docker): those take resources, GPU counts and every probe field.
    pub fn without_effect_in_containers(&self) -> Vec<NoEffect> {
        self.without_effect(false)
    }

    fn without_effect(&self, local: bool) -> Vec<NoEffect> {
        let mut out = Vec::new();
        let mut note = |given: bool, field: &'static str, reason: &str| {
            if given {
                out.push(NoEffect { field, reason: reason.to_owned() });
            }
        };
        note(
            self.compute_type.is_some(),
            "computeType",
            "accepted for compatibility; Sluice runs the service on the target it was started with",
        );
        let resources = "local replicas are plain processes: no CPU or memory is reserved or limited for them";
        note(local && self.cpu_cores.is_some(), "cpu_cores", resources);
        note(local && self.cpu_cores_limit.is_some(), "cpu_cores_limit", resources);
        note(local && self.memory_gb.is_some(), "memory_gb", resources);
        note(local && self.memory_gb_limit.is_some(), "memory_gb_limit", resources);
        note(
            local && self.gpu_cores.is_some_and(|n| n > 1),
            "gpu_cores",
            "only whether it is above 0 counts locally: models run on one GPU (cuda:0, or `device`)",
        );
        note(
            !local && self.collect_model_data == Some(true),
            "collect_model_data",
            "collected inside each replica's container (under /data/collected, which goes with the \
             container); `sluice service data` reads the local target's data only",
        );
        note(
            local && self.initial_delay_seconds.is_some(),
            "initial_delay_seconds",
            "local replicas are probed from the moment they report ready, not after a delay",
        );
        note(
            local && self.success_threshold.is_some(),
            "success_threshold",
            "a local replica is back in rotation after one successful probe",
        );
        out
    }
}

/// A deployment configuration that cannot be deployed; the message names the fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid deployment config: {0}")]
pub struct DeployConfigError(pub String);

impl DeploymentConfig {
    /// Parses a JSON document and checks it.
    pub fn from_json(text: &str) -> Result<Self, DeployConfigError> {
        let config: DeploymentConfig = serde_json::from_str(text).map_err(|e| DeployConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Every contradiction and out-of-range value, reported together.
    pub fn validate(&self) -> Result<(), DeployConfigError> {
        let mut problems = Vec::new();
        let autoscale = self.autoscale_enabled == Some(true);
        if autoscale && self.num_replicas.is_some() {
            problems.push(
                "num_replicas and autoscale_enabled cannot both be set (choose a fixed count or autoscaling)".into(),
            );
        }
        if !autoscale
            && (self.autoscale_min_replicas.is_some()
                || self.autoscale_max_replicas.is_some()
                || self.autoscale_target_utilization.is_some()
                || self.autoscale_refresh_seconds.is_some())
        {
            problems.push("autoscale_* settings are given but autoscale_enabled is not true".into());
        }
        if let Some(rate) = self.collect_model_data_sample_rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            problems.push(format!("collect_model_data_sample_rate must be in (0, 1], not {rate}"));
        }
        if let (Some(min), Some(max)) = (self.autoscale_min_replicas, self.autoscale_max_replicas)
            && min > max
        {
            problems.push(format!("autoscale_min_replicas ({min}) is above autoscale_max_replicas ({max})"));
        }
        if let Some(t) = self.autoscale_target_utilization
            && !(1..=100).contains(&t)
        {
            problems.push(format!("autoscale_target_utilization must be 1-100, got {t}"));
        }
        if self.num_replicas == Some(0) {
            problems.push("num_replicas must be at least 1".into());
        }
        if self.token_auth_enabled == Some(true) && self.auth_enabled == Some(true) {
            problems.push("auth_enabled (key auth) and token_auth_enabled cannot both be true".into());
        }
        if self.auth_enabled == Some(false) && (self.primary_key.is_some() || self.secondary_key.is_some()) {
            problems.push("primary_key/secondary_key are given but auth_enabled is false".into());
        }
        for (name, value) in [("primary_key", &self.primary_key), ("secondary_key", &self.secondary_key)] {
            if value.as_ref().is_some_and(|k| k.len() < 16) {
                // The key itself is never echoed.
                problems.push(format!("{name} must be at least 16 characters"));
            }
        }
        for (request, limit, what) in
            [(self.cpu_cores, self.cpu_cores_limit, "cpu_cores"), (self.memory_gb, self.memory_gb_limit, "memory_gb")]
        {
            // NaN counts as not positive.
            if let Some(v) = request.filter(|v| v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)) {
                problems.push(format!("{what} must be greater than 0, got {v}"));
            }
            if let (Some(r), Some(l)) = (request, limit)
                && l < r
            {
                problems.push(format!("{what}_limit ({l}) is below {what} ({r})"));
            }
        }
        for (name, value) in [
            ("replica_max_concurrent_requests", self.replica_max_concurrent_requests),
            ("instance_count", self.instance_count),
            ("intra_op_threads", self.intra_op_threads),
            ("max_batch_size", self.max_batch_size),
        ] {
            if value == Some(0) {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if self.scoring_timeout_ms == Some(0) {
            problems.push("scoring_timeout_ms must be greater than 0".into());
        }
        if let (Some(sizes), Some(max)) = (&self.preferred_batch_sizes, self.max_batch_size)
            && let Some(big) = sizes.iter().find(|&&s| s > max || s == 0)
        {
            problems.push(format!("preferred batch size {big} is outside 1..=max_batch_size ({max})"));
        }
        match self.device.as_deref().map(str::parse::<crate::Device>) {
            Some(Err(e)) => problems.push(format!("device: {e}")),
            Some(Ok(crate::Device::Cpu)) if self.gpu_cores.is_some_and(|n| n > 0) => {
                problems.push("gpu_cores is above 0 but device is cpu".into());
            }
            _ => {}
        }
        if let Some(f) = self.device_fallback.as_deref()
            && f.parse::<DeviceFallback>().is_err()
        {
            problems.push(format!("device_fallback must be \"fail\" or \"cpu\", got \"{f}\""));
        }
        if problems.is_empty() { Ok(()) } else { Err(DeployConfigError(problems.join("; "))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_an_azure_style_file() {
        let config = DeploymentConfig::from_json(
            r#"{"computeType": "AKS", "cpu_cores": 0.5, "memory_gb": 1, "num_replicas": 2,
                "replica_max_concurrent_requests": 4, "max_request_wait_time": 300, "scoring_timeout_ms": 2000,
                "auth_enabled": true, "max_batch_size": 32}"#,
        )
        .expect("valid");
        assert_eq!(config.num_replicas, Some(2));
        assert_eq!(config.max_batch_size, Some(32));
    }

    #[test]
    fn refuses_every_contradiction_by_name() {
        let cases = [
            (r#"{"num_replicas": 2, "autoscale_enabled": true}"#, "num_replicas and autoscale_enabled"),
            (r#"{"autoscale_max_replicas": 3}"#, "autoscale_enabled is not true"),
            (
                r#"{"autoscale_enabled": true, "autoscale_min_replicas": 4, "autoscale_max_replicas": 2}"#,
                "above autoscale_max_replicas",
            ),
            (r#"{"autoscale_enabled": true, "autoscale_target_utilization": 120}"#, "1-100"),
            (r#"{"auth_enabled": true, "token_auth_enabled": true}"#, "cannot both be true"),
            (r#"{"auth_enabled": false, "primary_key": "0123456789abcdef"}"#, "auth_enabled is false"),
            (r#"{"primary_key": "short"}"#, "primary_key must be at least 16"),
            (r#"{"cpu_cores": 2, "cpu_cores_limit": 1}"#, "cpu_cores_limit (1) is below cpu_cores (2)"),
            (r#"{"memory_gb": 4, "memory_gb_limit": 2}"#, "memory_gb_limit (2) is below memory_gb (4)"),
            (r#"{"cpu_cores": 0}"#, "cpu_cores must be greater than 0"),
            (r#"{"num_replicas": 0}"#, "num_replicas must be at least 1"),
            (r#"{"replica_max_concurrent_requests": 0}"#, "replica_max_concurrent_requests must be at least 1"),
            (r#"{"scoring_timeout_ms": 0}"#, "scoring_timeout_ms must be greater than 0"),
            (r#"{"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}"#, "preferred batch size 16"),
            (r#"{"num_replica": 2}"#, "unknown field `num_replica`"),
            (r#"{"cpu_cores": "two"}"#, "invalid type"),
        ];
        for (json, needle) in cases {
            let err = DeploymentConfig::from_json(json).expect_err(json).to_string();
            assert!(err.contains(needle), "{json}: expected '{needle}' in '{err}'");
        }
    }

    #[test]
    fn settings_without_effect_on_the_local_target_are_named() {
        let config = DeploymentConfig::from_json(
            r#"{"cpu_cores": 0.5, "memory_gb": 1, "num_replicas": 2, "scoring_timeout_ms": 2000,
                "collect_model_data": true, "enable_app_insights": false, "gpu_cores": 1}"#,
        )
        .expect("valid");
        let named: Vec<_> = config.without_effect_on_local().iter().map(|n| n.field).collect();
        assert_eq!(named, ["cpu_cores", "memory_gb"]);
        let in_containers: Vec<_> = config.without_effect_in_containers().iter().map(|n| n.field).collect();
        assert_eq!(in_containers, ["collect_model_data"]);
        assert!(DeploymentConfig::from_json(r#"{"collect_model_data_sample_rate": 0}"#).is_err());
        // Autoscaling acts on every target.
        let autoscaled = DeploymentConfig::from_json(
            r#"{"autoscale_enabled": true, "autoscale_min_replicas": 2, "autoscale_max_replicas": 5}"#,
        )
        .expect("valid");
        assert!(autoscaled.without_effect_on_local().is_empty());
        assert!(DeploymentConfig::default().without_effect_on_local().is_empty());
    }

    #[test]
    fn keys_are_never_echoed() {
        let err = DeploymentConfig::from_json(r#"{"primary_key": "s3cr3t"}"#).expect_err("short").to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
