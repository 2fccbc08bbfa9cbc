//! Services: a set of registered models deployed with a deployment config as replica processes.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::DeploymentConfig;
use sluice_registry::{ModelRef, Registry};

use crate::target::{ReplicaModel, ReplicaSpec, ServiceDeployment};

use crate::model::{
    AuthMode, CreateService, IgnoredSetting, Keys, LogChunk, ServiceSpec, ServiceState, ServiceStatus, UpdateService,
};
use crate::store::{Reads, Txn};
use crate::supervisor::{Group, Plan, Probe, read_log_from};
use crate::{ControlError, ControlPlane, ServiceRuntime, check_name, lock, timestamp};

/// Auth mode of a service from its (checked) deployment config: key auth unless turned off or
/// replaced by token auth, as in Azure ML.
/// Requests one replica of `spec` holds at once, admitted or waiting, summed over its models: the
/// same settings the replica applies (its model config over its deployment config over the
/// defaults), so a gateway can refuse what the replica would refuse without sending it.
pub(crate) fn replica_capacity(spec: &crate::model::ServiceSpec) -> Option<u32> {
    let setting = |model: &str, name: &str| {
        let own = spec.inference_config.as_ref().and_then(|c| c.get(model)).and_then(|m| m.get(name));
        own.or_else(|| spec.deploy_config.get(name)).and_then(serde_json::Value::as_u64)
    };
    let total: u64 = spec
        .models
        .iter()
        .map(|m| m.split(':').next().unwrap_or(m))
        .map(|m| {
            let admitted = setting(m, "replica_max_concurrent_requests")
                .unwrap_or(sluice_core::DEFAULT_MAX_CONCURRENT_REQUESTS as u64);
            let waiting = setting(m, "max_queued_requests").unwrap_or(sluice_core::DEFAULT_MAX_QUEUED_REQUESTS as u64);
            admitted.saturating_add(waiting)
        })
        .sum();
    u32::try_from(total).ok().filter(|&n| n > 0)
}

pub(crate) fn auth_mode(deploy_config: &serde_json::Value) -> AuthMode {
    if deploy_config.get("token_auth_enabled").and_then(|v| v.as_bool()) == Some(true) {
        AuthMode::Token
    } else if deploy_config.get("auth_enabled").and_then(|v| v.as_bool()) == Some(false) {
        AuthMode::None
    } else {
        AuthMode::Key
    }
}

/// The settings of a stored deployment config that the target does not act on.
fn ignored_settings(deploy_config: &serde_json::Value, in_containers: bool) -> Vec<IgnoredSetting> {
    let Ok(config) = serde_json::from_value::<DeploymentConfig>(deploy_config.clone()) else { return Vec::new() };
    let ignored = if in_containers { config.without_effect_in_containers() } else { config.without_effect_on_local() };
    ignored.into_iter().map(|n| IgnoredSetting { field: n.field.to_owned(), reason: n.reason }).collect()
}

/// A deployment config, checked, with explicit keys taken out: keys live in the credentials table
/// and never appear in `service show` or on disk beside the replicas.
struct CheckedDeployConfig {
    config: DeploymentConfig,
    stored: serde_json::Value,
    keys: (Option<String>, Option<String>),
}

fn check_deploy_config(value: Option<serde_json::Value>) -> Result<CheckedDeployConfig, ControlError> {
    let mut value = value.unwrap_or_else(|| serde_json::json!({}));
    let object = value
        .as_object_mut()
        .ok_or_else(|| ControlError::Invalid("the deployment config must be a JSON object".into()))?;
    let config = DeploymentConfig::from_json(&serde_json::Value::Object(object.clone()).to_string())
        .map_err(|e| ControlError::Invalid(e.to_string()))?;
    let mut problems = Vec::new();
    for (name, key) in [("primary_key", &config.primary_key), ("secondary_key", &config.secondary_key)] {
        if let Some(Err(e)) = key.as_deref().map(sluice_auth::check_key_value) {
            problems.push(format!("{name}: {e}"));
        }
    }
    if !problems.is_empty() {
        return Err(ControlError::Invalid(format!("invalid deployment config: {}", problems.join("; "))));
    }
    let primary = object.remove("primary_key").and_then(|v| v.as_str().map(str::to_owned));
    let secondary = object.remove("secondary_key").and_then(|v| v.as_str().map(str::to_owned));
    Ok(CheckedDeployConfig { config, stored: value, keys: (primary, secondary) })
}

/// Resolves registry references to `name:version`, refusing unknown models and duplicates.
fn resolve_models(home: &std::path::Path, refs: &[String]) -> Result<Vec<String>, ControlError> {
    if refs.is_empty() {
        return Err(ControlError::Invalid("a service needs at least one model (--model NAME[:VERSION])".into()));
    }
    let registry = Registry::open(home).map_err(|e| ControlError::Internal(e.to_string()))?;
    let mut resolved: Vec<String> = Vec::new();
    for r in refs {
        let registry_error = |source| ControlError::Registry { reference: r.clone(), source };
        let reference: ModelRef = r.parse().map_err(registry_error)?;
        let mv = registry.resolve(&reference).map_err(registry_error)?;
        if resolved.iter().any(|m| m.split(':').next() == Some(mv.name.as_str())) {
            return Err(ControlError::Invalid(format!("model '{}' is named twice", mv.name)));
        }
        resolved.push(format!("{}:{}", mv.name, mv.version));
    }
    Ok(resolved)
}

fn check_inference_config(config: &Option<serde_json::Value>, models: &[String]) -> Result<(), ControlError> {
    let Some(config) = config else { return Ok(()) };
    let object = config.as_object().ok_or_else(|| {
        ControlError::Invalid("the inference config must be a JSON object of per-model settings".into())
    })?;
    for name in object.keys() {
        if !models.iter().any(|m| m.split(':').next() == Some(name.as_str())) {
            return Err(ControlError::Invalid(format!(
                "the inference config names model '{name}', which the service does not deploy"
            )));
        }
    }
    Ok(())
}

/// Fails with 409 when a service or endpoint already has `name`: keys and tokens are asked for by
/// name, so one name means one thing. Checked again inside the transaction that creates it.
pub(crate) fn check_name_free(store: &impl Reads, name: &str) -> Result<(), ControlError> {
    if store.service(name)?.is_some() {
        return Err(ControlError::Conflict(format!("a service named '{name}' already exists")));
    }
    if store.endpoint(name)?.is_some() {
        return Err(ControlError::Conflict(format!("an endpoint named '{name}' already exists")));
    }
    Ok(())
}

/// Fails with 409 when a resolved `name:version` is no longer registered: `sluice model delete`
/// removed it since it was resolved. Checked in the transaction that stores the service, which
/// holds the write lock `model delete` needs, so a stored service never names a deleted version.
fn check_models_registered(tx: &Txn<'_>, models: &[String]) -> Result<(), ControlError> {
    for m in models {
        let registered = match m.split_once(':').map(|(n, v)| (n, v.parse::<u32>())) {
            Some((name, Ok(version))) => tx.has_model_version(name, version)?,
            _ => false,
        };
        if !registered {
            return Err(ControlError::Conflict(format!("model '{m}' was deleted from the registry meanwhile")));
        }
    }
    Ok(())
}

/// Replicas a deployment config starts with: `num_replicas`, or `autoscale_min_replicas` (the
/// autoscaler adds more under load).
fn replica_count(config: &DeploymentConfig) -> usize {
    match autoscale_range(config) {
        Some((min, _)) => min,
        None => config.num_replicas.unwrap_or(1) as usize,
    }
}

/// `(min, max)` replicas of an autoscaled service (Azure ML's defaults: 1 and 10).
pub(crate) fn autoscale_range(config: &DeploymentConfig) -> Option<(usize, usize)> {
    (config.autoscale_enabled == Some(true)).then(|| {
        let min = config.autoscale_min_replicas.unwrap_or(1).max(1) as usize;
        (min, (config.autoscale_max_replicas.unwrap_or(10) as usize).max(min))
    })
}

impl ControlPlane {
    /// Replicas a service starts a generation with: what the autoscaler chose last when it has,
    /// so an update does not drop a scaled-up service back to its minimum.
    fn autoscaled_count(&self, service: &str, config: &DeploymentConfig) -> usize {
        let base = replica_count(config);
        match (autoscale_range(config), lock(&self.scaling).get(service)) {
            (Some((min, max)), Some(s)) if s.desired > 0 => s.desired.clamp(min, max),
            _ => base,
        }
    }

    /// What a remote target runs for `spec`: the models by content hash, the configs, resources
    /// and probes. Read from the registry outside any store transaction (opening it may write).
    pub(crate) fn deployment(&self, spec: &ServiceSpec) -> Result<ServiceDeployment, ControlError> {
        let registry = Registry::open(self.home()).map_err(|e| ControlError::Internal(e.to_string()))?;
        let mut models = Vec::with_capacity(spec.models.len());
        for m in &spec.models {
            let registry_error = |source| ControlError::Registry { reference: m.clone(), source };
            let reference: ModelRef = m.parse().map_err(registry_error)?;
            let mv = registry.resolve(&reference).map_err(registry_error)?;
            models.push(ReplicaModel {
                name: mv.name,
                version: mv.version,
                format: mv.format,
                sha256: mv.sha256,
                size_bytes: mv.size_bytes,
                config: mv.config,
                signature: mv.signature,
            });
        }
        let config: DeploymentConfig =
            serde_json::from_value(spec.deploy_config.clone()).map_err(|e| ControlError::Internal(e.to_string()))?;
        let (resources, probes) = ServiceDeployment::settings_from(&config);
        Ok(ServiceDeployment {
            replicas: self.autoscaled_count(&spec.name, &config),
            spec: ReplicaSpec {
                service: spec.name.clone(),
                generation: spec.generation,
                models,
                deploy_config: spec.deploy_config.clone(),
                inference_config: spec.inference_config.clone(),
            },
            resources,
            probes,
        })
    }

    /// Starts what `spec` (just stored) asks for: local replicas for `plan`, or the deployment on
    /// the remote target. Called with the store locked, so launches follow the order of the
    /// store's writes and an older generation never lands after a newer one.
    fn launch(self: &Arc<Self>, spec: &ServiceSpec, plan: Option<Plan>) -> Result<(), ControlError> {
        if let Some(remote) = &self.remote {
            remote.apply(self.deployment(spec)?);
            return Ok(());
        }
        let Some(plan) = plan else { return Err(ControlError::Internal("a local service needs a plan".into())) };
        let next = Group::start(self, plan);
        let superseded = {
            let mut runtimes = lock(&self.runtimes);
            match runtimes.get_mut(&spec.name) {
                Some(rt) => rt.next.replace(next),
                None => {
                    runtimes.insert(spec.name.clone(), ServiceRuntime { current: next, next: None });
                    None
                }
            }
        };
        if let Some(old) = superseded {
            old.stop();
        }
        Ok(())
    }

    /// The local plan of `spec`, unless replicas run on a remote target.
    fn local_plan(&self, spec: &ServiceSpec) -> Result<Option<Plan>, ControlError> {
        if self.remote.is_some() { Ok(None) } else { self.plan(spec).map(Some) }
    }

    /// Writes the files replicas of `spec` start from and says how to run them.
    pub(crate) fn plan(&self, spec: &ServiceSpec) -> Result<Plan, ControlError> {
        let internal = |e: std::io::Error| ControlError::Internal(format!("writing service files: {e}"));
        let dir = self.home().join("services").join(&spec.name).join(format!("g{}", spec.generation));
        std::fs::create_dir_all(&dir).map_err(internal)?;
        let deploy_config = dir.join("deploymentconfig.json");
        std::fs::write(&deploy_config, spec.deploy_config.to_string()).map_err(internal)?;
        let inference_config = match &spec.inference_config {
            Some(c) => {
                let path = dir.join("inference-config.json");
                std::fs::write(&path, c.to_string()).map_err(internal)?;
                Some(path)
            }
            None => None,
        };
        let config: DeploymentConfig =
            serde_json::from_value(spec.deploy_config.clone()).map_err(|e| ControlError::Internal(e.to_string()))?;
        let replicas = self.autoscaled_count(&spec.name, &config);
        let slots = autoscale_range(&config).map_or(replicas, |(_, max)| max);
        let probe = Probe {
            period: Duration::from_secs(u64::from(config.period_seconds.unwrap_or(10).max(1))),
            timeout: Duration::from_secs(u64::from(config.timeout_seconds.unwrap_or(2).max(1))),
            failure_threshold: config.failure_threshold.unwrap_or(3).max(1),
        };
        Ok(Plan {
            service: spec.name.clone(),
            generation: spec.generation,
            models: spec.models.clone(),
            replicas,
            slots,
            deploy_config,
            inference_config,
            dir,
            probe,
        })
    }

    /// Deploys a new service; its replicas start in the background. Of concurrent creates of one
    /// name, one succeeds and the others are refused (409).
    pub fn create_service(self: &Arc<Self>, request: CreateService) -> Result<ServiceStatus, ControlError> {
        check_name("service", &request.name)?;
        check_name_free(&*lock(&self.store), &request.name)?;
        let models = resolve_models(self.home(), &request.models)?;
        let deploy = check_deploy_config(request.deploy_config)?;
        check_inference_config(&request.inference_config, &models)?;
        let now = timestamp();
        let spec = ServiceSpec {
            name: request.name.clone(),
            models,
            deploy_config: deploy.stored,
            inference_config: request.inference_config,
            generation: 1,
            created_at: now.clone(),
            updated_at: now,
        };
        let keys = Keys {
            primary_key: deploy.keys.0.unwrap_or_else(sluice_auth::generate_key),
            secondary_key: deploy.keys.1.unwrap_or_else(sluice_auth::generate_key),
        };
        // The store stays locked until the replicas are started, so the runtimes follow the order
        // of the store's writes.
        let mut store = lock(&self.store);
        let plan = store.write(|tx| {
            check_name_free(tx, &spec.name)?;
            check_models_registered(tx, &spec.models)?;
            // Only the winner of a race for the name writes the service's files.
            let plan = self.local_plan(&spec)?;
            tx.insert_service(&spec, &keys)?;
            Ok::<_, ControlError>(plan)
        })?;
        self.launch(&spec, plan)?;
        drop(store);
        tracing::info!(service = %spec.name, models = ?spec.models, replicas = deploy.config.num_replicas.unwrap_or(1), "service created");
        self.publish();
        self.service_status(&spec.name)
    }

    /// Replaces a service's models or configs. New replicas start beside the old ones, which keep
    /// serving until every new replica is ready; then traffic moves and the old ones drain.
    /// Concurrent updates are applied one after another, each to what the previous one stored.
    pub fn update_service(self: &Arc<Self>, name: &str, request: UpdateService) -> Result<ServiceStatus, ControlError> {
        // Resolved before the transaction: the registry is read through its own connection.
        let models = request.models.as_deref().map(|refs| resolve_models(self.home(), refs)).transpose()?;
        let deploy = request.deploy_config.map(|c| check_deploy_config(Some(c))).transpose()?;
        let mut store = lock(&self.store);
        let (plan, spec) = store.write(|tx| {
            let mut spec =
                tx.service(name)?.ok_or_else(|| ControlError::NotFound(format!("no service named '{name}'")))?;
            let mut new_keys = None;
            if let Some(models) = models {
                check_models_registered(tx, &models)?;
                spec.models = models;
            }
            if let Some(deploy) = deploy {
                spec.deploy_config = deploy.stored;
                if deploy.keys.0.is_some() || deploy.keys.1.is_some() {
                    let old = tx.keys("service", name)?;
                    let old = old.ok_or_else(|| ControlError::Internal(format!("service '{name}' has no keys")))?;
                    new_keys = Some(Keys {
                        primary_key: deploy.keys.0.unwrap_or(old.primary_key),
                        secondary_key: deploy.keys.1.unwrap_or(old.secondary_key),
                    });
                }
            }
            if request.inference_config.is_some() {
                spec.inference_config = request.inference_config;
            }
            check_inference_config(&spec.inference_config, &spec.models)?;
            spec.generation += 1;
            spec.updated_at = timestamp();
            let plan = self.local_plan(&spec)?;
            tx.update_service(&spec, new_keys.as_ref())?;
            Ok::<_, ControlError>((plan, spec))
        })?;
        self.launch(&spec, plan)?;
        drop(store);
        tracing::info!(service = name, generation = spec.generation, "service update rolling out");
        self.publish();
        self.service_status(name)
    }

    /// Removes a service and stops its replicas; refused while an endpoint version uses it.
    pub async fn delete_service(&self, name: &str) -> Result<(), ControlError> {
        let (runtime, doomed) = self.remove_service(name)?;
        self.publish();
        if let Some(rt) = runtime {
            for group in std::iter::once(rt.current).chain(rt.next) {
                group.stop_and_wait().await;
            }
        }
        if let Some(doomed) = doomed {
            let _ = std::fs::remove_dir_all(&doomed);
        }
        tracing::info!(service = name, "service deleted");
        Ok(())
    }

    /// The synchronous part of a delete: the store, the runtimes and the service's folder, which
    /// is moved aside (to be removed once the replicas are gone) while the store is locked, so a
    /// service created again under this name right after starts in a fresh folder.
    fn remove_service(&self, name: &str) -> Result<(Option<ServiceRuntime>, Option<std::path::PathBuf>), ControlError> {
        let dir = self.home().join("services").join(name);
        let mut store = lock(&self.store);
        store.write(|tx| {
            if tx.service(name)?.is_none() {
                return Err(ControlError::NotFound(format!("no service named '{name}'")));
            }
            let users: Vec<String> = tx
                .endpoints()?
                .into_iter()
                .flat_map(|e| {
                    let endpoint = e.name;
                    e.versions.into_iter().filter(|v| v.service == name).map(move |v| format!("{endpoint}/{}", v.name))
                })
                .collect();
            if !users.is_empty() {
                return Err(ControlError::Conflict(format!(
                    "service '{name}' is used by endpoint versions {}; delete or repoint them first",
                    users.join(", ")
                )));
            }
            tx.delete("service", name)?;
            Ok(())
        })?;
        let runtime = lock(&self.runtimes).remove(name);
        if let Some(remote) = &self.remote {
            remote.remove(name);
        }
        let doomed =
            self.home().join("services").join(format!(".deleted-{name}-{:08x}", sluice_routing::random_seed() as u32));
        let moved = std::fs::rename(&dir, &doomed).is_ok();
        drop(store);
        Ok((runtime, moved.then_some(doomed)))
    }

    pub(crate) fn stored_service(&self, name: &str) -> Result<ServiceSpec, ControlError> {
        lock(&self.store).service(name)?.ok_or_else(|| ControlError::NotFound(format!("no service named '{name}'")))
    }

    /// State, replicas and configuration of one service.
    pub fn service_status(&self, name: &str) -> Result<ServiceStatus, ControlError> {
        let spec = self.stored_service(name)?;
        Ok(self.status_of(spec))
    }

    pub fn list_services(&self) -> Result<Vec<ServiceStatus>, ControlError> {
        let specs = lock(&self.store).services()?;
        Ok(specs.into_iter().map(|s| self.status_of(s)).collect())
    }

    fn status_of(&self, spec: ServiceSpec) -> ServiceStatus {
        let runtimes = lock(&self.runtimes);
        let remote = self.remote.as_ref().map(|r| r.observe(&spec.name));
        let (state, reason, replicas, desired) = match (remote, runtimes.get(&spec.name)) {
            (Some(o), _) => (o.state, o.reason, o.replicas, o.desired),
            (None, None) => (ServiceState::Failed, Some("not running".to_owned()), Vec::new(), 0),
            (None, Some(rt)) => {
                let current = &rt.current;
                let replicas = current.running().iter().map(|r| r.status()).collect();
                let (state, reason) = match &rt.next {
                    Some(next) => match next.failure() {
                        Some(f) => (
                            ServiceState::Failed,
                            Some(format!(
                                "update to generation {} failed: {f}; generation {} keeps serving",
                                next.plan.generation, current.plan.generation
                            )),
                        ),
                        None => (
                            ServiceState::Transitioning,
                            Some(format!(
                                "rolling out generation {}: {}",
                                next.plan.generation,
                                next.state().1.unwrap_or_default()
                            )),
                        ),
                    },
                    None => current.state(),
                };
                let desired = rt.next.as_ref().unwrap_or(current).active();
                (state, reason, replicas, desired)
            }
        };
        let autoscale = serde_json::from_value::<DeploymentConfig>(spec.deploy_config.clone())
            .ok()
            .and_then(|c| self.autoscale_status(&spec.name, &c, replicas.len()));
        ServiceStatus {
            autoscale,
            scoring_path: format!("/services/{}/score", spec.name),
            swagger_uri: Some(format!("/services/{}/swagger.json", spec.name)),
            ignored_settings: ignored_settings(&spec.deploy_config, self.remote.is_some()),
            auth: auth_mode(&spec.deploy_config),
            name: spec.name,
            models: spec.models,
            state,
            reason,
            desired_replicas: desired,
            replicas,
            generation: spec.generation,
            deploy_config: spec.deploy_config,
            inference_config: spec.inference_config,
            created_at: spec.created_at,
            updated_at: spec.updated_at,
        }
    }

    /// Where the service's collected model data is, and how much there is.
    pub fn service_data(&self, name: &str) -> Result<crate::model::ServiceData, ControlError> {
        let spec = self.stored_service(name)?;
        let config: Option<DeploymentConfig> = serde_json::from_value(spec.deploy_config).ok();
        let collecting = config.as_ref().is_some_and(|c| c.collect_model_data == Some(true));
        let note = self.remote.as_ref().map(|r| {
            format!(
                "replicas run on the {} target: each keeps its data in its container under /data/collected/{name}/",
                r.name()
            )
        });
        Ok(crate::model::ServiceData {
            service: name.to_owned(),
            collecting,
            sample_rate: collecting.then(|| config.and_then(|c| c.collect_model_data_sample_rate).unwrap_or(1.0)),
            usage: sluice_collect::usage(&self.home().join("collected").join(name)),
            note,
        })
    }

    /// Log text of the serving replicas (or one of them), from `offset` or the recent tail (a
    /// remote target gives its recent tail).
    pub async fn service_logs(
        &self,
        name: &str,
        replica: Option<usize>,
        offset: Option<u64>,
    ) -> Result<Vec<LogChunk>, ControlError> {
        self.stored_service(name)?;
        if let Some(remote) = &self.remote {
            let replicas = remote.observe(name).replicas;
            if let Some(i) = replica
                && !replicas.iter().any(|r| r.index == i)
            {
                return Err(ControlError::NotFound(format!(
                    "service '{name}' has no replica {i} now (it has {})",
                    replicas.iter().map(|r| r.index.to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
            return Ok(remote.logs(name, replica, offset).await?);
        }
        let runtimes = lock(&self.runtimes);
        let Some(rt) = runtimes.get(name) else { return Ok(Vec::new()) };
        let group = rt.next.as_ref().unwrap_or(&rt.current);
        if let Some(i) = replica
            && i >= group.active()
        {
            return Err(ControlError::NotFound(format!(
                "service '{name}' has replicas 0 to {}",
                group.active().saturating_sub(1)
            )));
        }
        Ok(group
            .running()
            .iter()
            .filter(|r| replica.is_none_or(|i| i == r.index))
            .map(|r| {
                let (offset, text) = read_log_from(&r.log_path, offset);
                LogChunk { replica: r.index, offset, text }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::replica_capacity;
    use crate::model::ServiceSpec;

    fn spec(models: &[&str], deploy: serde_json::Value, inference: Option<serde_json::Value>) -> ServiceSpec {
        ServiceSpec {
            name: "s".into(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            deploy_config: deploy,
            inference_config: inference,
            generation: 1,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn a_replicas_capacity_is_what_it_admits_and_lets_wait() {
        let defaults = (sluice_core::DEFAULT_MAX_CONCURRENT_REQUESTS + sluice_core::DEFAULT_MAX_QUEUED_REQUESTS) as u32;
        assert_eq!(replica_capacity(&spec(&["a:1"], json!({}), None)), Some(defaults));
        let deploy = json!({ "replica_max_concurrent_requests": 4 });
        let per_model = json!({ "a": { "max_queued_requests": 0 }, "b": { "replica_max_concurrent_requests": 2 } });
        // a: 4 admitted (deployment config) + 0 waiting (its own); b: 2 + the default wait.
        let want = 4 + 2 + sluice_core::DEFAULT_MAX_QUEUED_REQUESTS as u32;
        assert_eq!(replica_capacity(&spec(&["a:1", "b:3"], deploy, Some(per_model))), Some(want));
    }
}
