//! A model's settings: the defaults (flags), the deployment config and the per-model config,
//! merged in that order of precedence and checked into a [`LoadPlan`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::{DeploymentConfig, Device, DeviceFallback};
use sluice_runtime::{BatchConfig, Execution, ModelConfig};

use crate::ServingError;

/// The settings every model starts from; `sluice serve`'s flags, with the same defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Instances per model; `None` is one per CPU core.
    pub instances: Option<usize>,
    pub execution: Execution,
    /// Most rows per batched run; 1 turns batching off.
    pub max_batch_size: usize,
    pub max_queue_delay_us: u64,
    pub preferred_batch_sizes: Vec<usize>,
    /// ONNX Runtime (or libtorch) threads inside one instance.
    pub intra_op_threads: usize,
    pub max_concurrent_requests: usize,
    pub max_queued_requests: usize,
    pub max_request_wait_ms: u64,
    pub scoring_timeout_ms: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            instances: None,
            execution: Execution::Threads,
            max_batch_size: 64,
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            intra_op_threads: 1,
            max_concurrent_requests: sluice_core::DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_queued_requests: sluice_core::DEFAULT_MAX_QUEUED_REQUESTS,
            max_request_wait_ms: 500,
            scoring_timeout_ms: 60_000,
        }
    }
}

/// Settings that override the defaults, from a deployment config or per model (`--model-config`);
/// Azure ML deployment-config names where one exists. Unset fields leave the layer below in force.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverrides {
    pub instance_count: Option<usize>,
    pub intra_op_threads: Option<usize>,
    pub execution: Option<String>,
    pub max_batch_size: Option<usize>,
    pub max_queue_delay_us: Option<u64>,
    pub preferred_batch_sizes: Option<Vec<usize>>,
    pub replica_max_concurrent_requests: Option<usize>,
    pub max_queued_requests: Option<usize>,
    pub max_request_wait_time: Option<u64>,
    pub scoring_timeout_ms: Option<u64>,
    pub device: Option<String>,
    pub device_fallback: Option<String>,
}

impl ModelOverrides {
    /// `self`'s settings, falling back to `base` for the ones it leaves out.
    pub fn or(&self, base: &ModelOverrides) -> ModelOverrides {
        ModelOverrides {
            instance_count: self.instance_count.or(base.instance_count),
            intra_op_threads: self.intra_op_threads.or(base.intra_op_threads),
            execution: self.execution.clone().or_else(|| base.execution.clone()),
            max_batch_size: self.max_batch_size.or(base.max_batch_size),
            max_queue_delay_us: self.max_queue_delay_us.or(base.max_queue_delay_us),
            preferred_batch_sizes: self.preferred_batch_sizes.clone().or_else(|| base.preferred_batch_sizes.clone()),
            replica_max_concurrent_requests: self
                .replica_max_concurrent_requests
                .or(base.replica_max_concurrent_requests),
            max_queued_requests: self.max_queued_requests.or(base.max_queued_requests),
            max_request_wait_time: self.max_request_wait_time.or(base.max_request_wait_time),
            scoring_timeout_ms: self.scoring_timeout_ms.or(base.scoring_timeout_ms),
            device: self.device.clone().or_else(|| base.device.clone()),
            device_fallback: self.device_fallback.clone().or_else(|| base.device_fallback.clone()),
        }
    }

    /// The settings of a deployment config that one scoring process applies (replica counts,
    /// probes and auth belong to services).
    pub fn from_deployment(config: &DeploymentConfig) -> Self {
        ModelOverrides {
            instance_count: config.instance_count,
            intra_op_threads: config.intra_op_threads,
            max_batch_size: config.max_batch_size,
            max_queue_delay_us: config.max_queue_delay_us,
            preferred_batch_sizes: config.preferred_batch_sizes.clone(),
            replica_max_concurrent_requests: config.replica_max_concurrent_requests,
            max_request_wait_time: config.max_request_wait_time,
            scoring_timeout_ms: config.scoring_timeout_ms,
            device: config.model_device(),
            device_fallback: config.device_fallback.clone(),
            ..ModelOverrides::default()
        }
    }
}

fn config_file_error(path: &Path, message: impl std::fmt::Display) -> ServingError {
    ServingError::ConfigFile { path: path.to_path_buf(), message: message.to_string() }
}

/// Reads and checks a deployment config file (Azure ML's `deploymentconfig.json` names).
pub fn read_deploy_config(path: &Path) -> Result<ModelOverrides, ServingError> {
    let text = std::fs::read_to_string(path).map_err(|e| config_file_error(path, e))?;
    let config = DeploymentConfig::from_json(&text).map_err(|e| config_file_error(path, e))?;
    if config.num_replicas.is_some_and(|n| n > 1) || config.autoscale_enabled == Some(true) {
        tracing::info!("num_replicas and autoscale_* apply to services; `sluice serve` is one replica");
    }
    Ok(ModelOverrides::from_deployment(&config))
}

/// Reads a per-model settings file: `{"model name": {settings}, ...}`.
pub fn read_model_config(path: &Path) -> Result<BTreeMap<String, ModelOverrides>, ServingError> {
    let text = std::fs::read_to_string(path).map_err(|e| config_file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| config_file_error(path, format!("invalid model config: {e}")))
}

/// How one model is loaded: runtime settings, engine options, and what to do without its GPU.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub config: ModelConfig,
    pub engine: EngineOptions,
    pub fallback: DeviceFallback,
}

/// What every engine is told about an instance.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    pub intra_op_threads: usize,
    pub device: Device,
}

/// Merges `overrides` over `defaults` and checks the result; the error names the setting.
pub fn plan(defaults: &Defaults, o: &ModelOverrides) -> Result<LoadPlan, String> {
    let machine = ModelConfig::for_this_machine();
    let config = ModelConfig {
        instance_count: o.instance_count.or(defaults.instances).unwrap_or(machine.instance_count),
        execution: match &o.execution {
            Some(e) => e.parse()?,
            None => defaults.execution,
        },
        batching: Some(BatchConfig {
            max_batch_size: o.max_batch_size.unwrap_or(defaults.max_batch_size),
            max_queue_delay: Duration::from_micros(o.max_queue_delay_us.unwrap_or(defaults.max_queue_delay_us)),
            preferred_batch_sizes: o
                .preferred_batch_sizes
                .clone()
                .unwrap_or_else(|| defaults.preferred_batch_sizes.clone()),
        })
        .filter(|b| b.max_batch_size > 1),
        max_concurrent_requests: o.replica_max_concurrent_requests.unwrap_or(defaults.max_concurrent_requests),
        max_queued_requests: o.max_queued_requests.unwrap_or(defaults.max_queued_requests),
        max_request_wait: Duration::from_millis(o.max_request_wait_time.unwrap_or(defaults.max_request_wait_ms)),
        scoring_timeout: Duration::from_millis(o.scoring_timeout_ms.unwrap_or(defaults.scoring_timeout_ms)),
    };
    if config.scoring_timeout.is_zero() {
        return Err("scoring_timeout_ms must be greater than 0".into());
    }
    if config.instance_count == 0 {
        return Err("instance_count (--instances) must be at least 1".into());
    }
    if config.max_concurrent_requests == 0 {
        return Err("replica_max_concurrent_requests (--max-concurrent-requests) must be at least 1".into());
    }
    let intra_op_threads = o.intra_op_threads.unwrap_or(defaults.intra_op_threads);
    if intra_op_threads == 0 {
        return Err("intra_op_threads must be at least 1".into());
    }
    let device: Device = o.device.as_deref().unwrap_or("cpu").parse()?;
    let fallback: DeviceFallback = o.device_fallback.as_deref().unwrap_or("fail").parse()?;
    Ok(LoadPlan { config, engine: EngineOptions { intra_op_threads, device }, fallback })
}
