//! The Deployment of one service generation: a pure function of what the control plane wants and
//! the target's settings, so that applying it twice changes nothing and a test can compare it
//! field by field.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, KeyToPath,
    LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_control::target::{
    GENERATION_LABEL, Probes, REPLICA_PORT, REPLICA_SPEC_ENV, Resources, SERVICE_LABEL, ServiceDeployment,
};

use crate::KubernetesSettings;
use crate::names::{
    MANAGED_BY, MANAGED_BY_LABEL, MODELS_ANNOTATION, SERVICE_ANNOTATION, deployment_name, model_label_key,
    service_label_value,
};

/// The replica container's name (what logs are read from).
pub const CONTAINER: &str = "replica";
/// Key of the gateway credential in the token Secret, and its file name in the pod.
pub const TOKEN_KEY: &str = "gateway-token";
/// Where the token Secret is mounted.
pub const TOKEN_DIR: &str = "/etc/sluice/tokens";
/// User and group the replica runs as (the image's `sluice` user).
const RUN_AS: i64 = 10001;
/// A replica drains in-flight requests on SIGTERM; this leaves it time to (the local target's
/// stop grace is 30 s) before the kubelet kills it.
const TERMINATION_GRACE_SECONDS: i64 = 40;
/// Kubernetes' default; raised for services whose replicas may take longer than that to start
/// (a replica is only killed for failing liveness after `initial_delay_seconds`).
const PROGRESS_DEADLINE_SECONDS: u32 = 600;
/// Old ReplicaSets kept (Kubernetes keeps 10); rollbacks go through the control plane anyway.
const REVISION_HISTORY: i32 = 2;
/// Extended resource GPUs are asked for by (the NVIDIA device plugin's).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The Deployment for one service: `num_replicas` replicas of `sluice replica` running
/// `d.spec`, with the service's resources and probes, rolled over without ever having fewer
/// ready replicas than wanted (`maxUnavailable: 0`).
pub fn deployment_for(d: &ServiceDeployment, settings: &KubernetesSettings) -> Deployment {
    let service = d.service();
    let mut selector = BTreeMap::new();
    selector.insert(SERVICE_LABEL.to_owned(), service_label_value(service));
    selector.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    let mut labels = selector.clone();
    labels.insert(GENERATION_LABEL.to_owned(), d.generation().to_string());
    labels.insert("app.kubernetes.io/component".to_owned(), "replica".to_owned());
    labels.insert("app.kubernetes.io/name".to_owned(), "sluice".to_owned());
    for (key, value) in &settings.extra_labels {
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
    for model in &d.spec.models {
        if let Some(key) = model_label_key(&model.name) {
            labels.insert(key, model.version.to_string());
        }
    }
    let models = d.spec.models.iter().map(|m| format!("{}:{}", m.name, m.version)).collect::<Vec<_>>().join(",");
    let annotations =
        BTreeMap::from([(SERVICE_ANNOTATION.to_owned(), service.to_owned()), (MODELS_ANNOTATION.to_owned(), models)]);
    let meta =
        ObjectMeta { labels: Some(labels.clone()), annotations: Some(annotations.clone()), ..ObjectMeta::default() };
    let progress_deadline = PROGRESS_DEADLINE_SECONDS.max(d.probes.initial_delay_seconds.saturating_add(300));
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(service)),
            namespace: Some(settings.namespace.clone()),
            ..meta.clone()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(d.replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    // The old replicas serve until the new ones are ready.
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".to_owned())),
                }),
            }),
            progress_deadline_seconds: Some(seconds(progress_deadline)),
            revision_history_limit: Some(REVISION_HISTORY),
            template: PodTemplateSpec { metadata: Some(meta), spec: Some(pod_spec(d, settings)) },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(d: &ServiceDeployment, settings: &KubernetesSettings) -> PodSpec {
    let spec_json = serde_json::to_string(&d.spec).expect("a replica spec always serializes; this is a bug");
    let env = [
        (REPLICA_SPEC_ENV, spec_json),
        ("SLUICE_CONTROL_URL", settings.control_url.clone()),
        ("SLUICE_CONTROL_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_KEY}")),
        ("SLUICE_HOME", "/data".to_owned()),
        ("SLUICE_HOST", "0.0.0.0".to_owned()),
        ("SLUICE_PORT", REPLICA_PORT.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| EnvVar { name: name.to_owned(), value: Some(value), value_from: None })
    .collect();
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    };
    let empty_dir = |name: &str| Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let (liveness, readiness) = probes(&d.probes);
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(vec!["replica".to_owned()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(REPLICA_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: resources(&d.resources),
        liveness_probe: Some(liveness),
        readiness_probe: Some(readiness),
        volume_mounts: Some(vec![
            mount("data", "/data", false),
            mount("tmp", "/tmp", false),
            mount("tokens", TOKEN_DIR, true),
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    // GPU node pools are usually tainted so that only pods asking for GPUs land there.
    let tolerations = d.resources.gpu_cores.filter(|&n| n > 0).map(|_| {
        vec![Toleration {
            key: Some(GPU_RESOURCE.to_owned()),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Toleration::default()
        }]
    });
    PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            empty_dir("data"),
            empty_dir("tmp"),
            Volume {
                name: "tokens".to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(settings.token_secret.clone()),
                    items: Some(vec![KeyToPath { key: TOKEN_KEY.to_owned(), path: TOKEN_KEY.to_owned(), mode: None }]),
                    // Readable by the replica's group (fsGroup) only.
                    default_mode: Some(0o440),
                    optional: None,
                }),
                ..Volume::default()
            },
        ]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
            ..PodSecurityContext::default()
        }),
        // A replica talks to no Kubernetes API, and needs no variables for every Service in the
        // namespace.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        tolerations,
        image_pull_secrets: (!settings.image_pull_secrets.is_empty()).then(|| {
            settings.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect()
        }),
        ..PodSpec::default()
    }
}

/// Liveness and readiness as Azure ML sets them: the initial delay applies to liveness only (a
/// replica loading a large model is not killed before it), readiness starts at once so a replica
/// serves as soon as it is ready. No startup probe: the deployment config has no field for one,
/// and the liveness delay already is the start budget.
fn probes(p: &Probes) -> (Probe, Probe) {
    let http_get = |path: &str| {
        Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(REPLICA_PORT)),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        })
    };
    let liveness = Probe {
        http_get: http_get("/v2/health/live"),
        initial_delay_seconds: Some(seconds(p.initial_delay_seconds)),
        period_seconds: Some(seconds(p.period_seconds)),
        timeout_seconds: Some(seconds(p.timeout_seconds)),
        failure_threshold: Some(seconds(p.failure_threshold)),
        // Kubernetes refuses any other value for liveness.
        success_threshold: Some(1),
        ..Probe::default()
    };
    let readiness = Probe {
        http_get: http_get("/v2/health/ready"),
        period_seconds: Some(seconds(p.period_seconds)),
        timeout_seconds: Some(seconds(p.timeout_seconds)),
        failure_threshold: Some(seconds(p.failure_threshold)),
        success_threshold: Some(seconds(p.success_threshold)),
        ..Probe::default()
    };
    (liveness, readiness)
}

/// Requests and limits: `cpu_cores`/`memory_gb` as requests, the `*_limit` fields as limits,
/// `gpu_cores` as a limit of `nvidia.com/gpu` (extended resources are asked for by their limit;
/// Kubernetes sets the request to it).
fn resources(r: &Resources) -> Option<ResourceRequirements> {
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = r.cpu_cores {
        requests.insert("cpu".to_owned(), cpu_quantity(cpu));
    }
    if let Some(gb) = r.memory_gb {
        requests.insert("memory".to_owned(), memory_quantity(gb));
    }
    if let Some(cpu) = r.cpu_cores_limit {
        limits.insert("cpu".to_owned(), cpu_quantity(cpu));
    }
    if let Some(gb) = r.memory_gb_limit {
        limits.insert("memory".to_owned(), memory_quantity(gb));
    }
    if let Some(gpus) = r.gpu_cores.filter(|&n| n > 0) {
        limits.insert(GPU_RESOURCE.to_owned(), Quantity(gpus.to_string()));
    }
    if requests.is_empty() && limits.is_empty() {
        return None;
    }
    Some(ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        claims: None,
    })
}

/// Cores as Kubernetes writes them: whole cores bare (`2`), else millicores (`500m`); at least
/// one millicore.
pub fn cpu_quantity(cores: f64) -> Quantity {
    let millis = ((cores * 1000.0).round() as i64).max(1);
    Quantity(if millis % 1000 == 0 { (millis / 1000).to_string() } else { format!("{millis}m") })
}

/// `memory_gb` read as GiB (Kubernetes users size memory in binary units), in the form
/// Kubernetes writes it back (`1Gi`, `1536Mi`), so that applying it again is no change.
pub fn memory_quantity(gb: f64) -> Quantity {
    let mib = ((gb * 1024.0).round() as i64).max(1);
    Quantity(if mib % 1024 == 0 { format!("{}Gi", mib / 1024) } else { format!("{mib}Mi") })
}

/// A count of seconds (or probe attempts) as Kubernetes' `int32`.
fn seconds(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_in_kubernetes_canonical_form() {
        assert_eq!(cpu_quantity(0.5).0, "500m");
        assert_eq!(cpu_quantity(2.0).0, "2");
        assert_eq!(cpu_quantity(1.25).0, "1250m");
        assert_eq!(cpu_quantity(0.0001).0, "1m");
        assert_eq!(memory_quantity(1.0).0, "1Gi");
        assert_eq!(memory_quantity(0.5).0, "512Mi");
        assert_eq!(memory_quantity(1.5).0, "1536Mi");
        assert_eq!(memory_quantity(16.0).0, "16Gi");
    }
}
