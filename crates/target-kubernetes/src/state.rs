//! A service's state as the cluster shows it: its pods (by generation) and its Deployment's
//! conditions, read into an [`Observed`]. Pure, so each rule is tested on objects alone.

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use sluice_control::model::{ReplicaStatus, ServiceState};
use sluice_control::target::{Observed, REPLICA_PORT, ServiceDeployment};

use crate::manifest::CONTAINER;
use crate::names::generation_of;

/// Waiting reasons of a container whose image cannot be had.
const IMAGE_FAILURES: [&str; 4] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];
/// Waiting reasons of a container the kubelet cannot create or start (a missing Secret key, a
/// bad mount, a runtime refusal).
const START_FAILURES: [&str; 3] = ["CreateContainerConfigError", "CreateContainerError", "RunContainerError"];

/// Why the last apply of a service's Deployment did not succeed.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyFailure {
    pub message: String,
    /// The cluster refused it (401, 403, a missing namespace, an invalid object): no use waiting
    /// for it to pass by itself.
    pub refused: bool,
}

/// What the target knows of one service besides the cluster's objects.
#[derive(Debug)]
pub struct Known<'a> {
    pub want: &'a ServiceDeployment,
    /// The cluster accepted `want`.
    pub applied: bool,
    pub failure: Option<&'a ApplyFailure>,
    /// Generation and replica count at which the service was last Healthy.
    pub healthy_at: Option<(u64, usize)>,
}

/// The cluster's objects of one service, as last read.
#[derive(Debug)]
pub struct Seen<'a> {
    pub deployment: Option<&'a Deployment>,
    pub pods: &'a [&'a Pod],
    /// The last lines of a crash-looping pod's previous container, by pod name and restart count.
    pub crash_logs: &'a HashMap<(String, i32), String>,
}

/// Observed state of a service: see the crate docs for the rules.
pub fn observe(known: &Known<'_>, seen: &Seen<'_>) -> Observed {
    let generation = known.want.generation();
    let desired = known.want.replicas;
    let mut pods: Vec<&Pod> = seen.pods.to_vec();
    pods.sort_by(|a, b| {
        generation_of(b.metadata.labels.as_ref())
            .cmp(&generation_of(a.metadata.labels.as_ref()))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let replicas: Vec<ReplicaStatus> = pods.iter().enumerate().map(|(index, pod)| replica_status(index, pod)).collect();
    let ready_addresses = replicas.iter().filter(|r| r.ready).filter_map(|r| r.address.clone()).collect();
    let newest: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| generation_of(p.metadata.labels.as_ref()) == generation && !terminating(p))
        .collect();
    let older = pods.iter().filter(|p| generation_of(p.metadata.labels.as_ref()) != generation).count();
    let ready_new = newest.iter().filter(|p| pod_ready(p)).count();

    let (state, reason) = if let Some(failure) = known.failure {
        if failure.refused {
            (
                ServiceState::Failed,
                format!("kubernetes refused the deployment of generation {generation}: {}", failure.message),
            )
        } else {
            (ServiceState::Transitioning, format!("retrying: {}", failure.message))
        }
    } else if let Some(why) = newest.iter().find_map(|p| pod_failure(p, seen.crash_logs)) {
        (ServiceState::Failed, why)
    } else if let Some(why) = seen.deployment.and_then(|d| deployment_failure(d, generation)) {
        (ServiceState::Failed, why)
    } else if known.applied && ready_new >= desired && older == 0 {
        return Observed { state: ServiceState::Healthy, reason: None, desired, replicas, ready_addresses };
    } else if known.applied && known.healthy_at == Some((generation, desired)) && older == 0 {
        let waiting = newest.iter().filter(|p| !pod_ready(p)).map(|p| not_ready(p)).collect::<Vec<_>>().join(", ");
        (ServiceState::Unhealthy, format!("{ready_new} of {desired} replicas ready; not ready: {waiting}"))
    } else if !known.applied {
        (ServiceState::Transitioning, format!("applying generation {generation}"))
    } else if older > 0 {
        (
            ServiceState::Transitioning,
            format!(
                "rolling out generation {generation}: {ready_new} of {desired} new replicas ready, {older} old {} left",
                if older == 1 { "replica" } else { "replicas" }
            ),
        )
    } else {
        let waiting = newest.iter().filter(|p| !pod_ready(p)).map(|p| not_ready(p)).collect::<Vec<_>>();
        let mut reason = format!("starting: {ready_new} of {desired} replicas ready");
        if !waiting.is_empty() {
            reason = format!("{reason}; waiting for {}", waiting.join(", "));
        }
        (ServiceState::Transitioning, reason)
    };
    Observed { state, reason: Some(reason), desired, replicas, ready_addresses }
}

/// The pod as a replica row; its address is `podIP:8000` (`[ip]:8000` for IPv6).
fn replica_status(index: usize, pod: &Pod) -> ReplicaStatus {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).filter(|ip| !ip.is_empty());
    let address =
        ip.map(|ip| if ip.contains(':') { format!("[{ip}]:{REPLICA_PORT}") } else { format!("{ip}:{REPLICA_PORT}") });
    let container = replica_container(pod);
    ReplicaStatus {
        index,
        name: pod.metadata.name.clone(),
        pid: None,
        address,
        ready: pod_ready(pod),
        restarts: container.map_or(0, |c| u32::try_from(c.restart_count).unwrap_or(0)),
        last_exit: container.and_then(last_exit),
    }
}

/// Ready by its Ready condition, and not on its way out (a terminating pod may still be Ready
/// while it drains; gateways must stop sending it new requests).
fn pod_ready(pod: &Pod) -> bool {
    !terminating(pod) && condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn condition<'p>(pod: &'p Pod, type_: &str) -> Option<&'p k8s_openapi::api::core::v1::PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

fn replica_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == CONTAINER)
}

/// How the container's previous run ended: `exit 1`, `OOMKilled (exit 137)`.
fn last_exit(c: &ContainerStatus) -> Option<String> {
    let t = c.last_state.as_ref()?.terminated.as_ref()?;
    Some(match t.reason.as_deref() {
        Some(reason) if reason != "Error" && reason != "Completed" => format!("{reason} (exit {})", t.exit_code),
        _ => format!("exit {}", t.exit_code),
    })
}

/// Why a pod of the newest generation cannot become ready, when the cluster says so.
fn pod_failure(pod: &Pod, crash_logs: &HashMap<(String, i32), String>) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    if let Some(c) = replica_container(pod)
        && let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
    {
        let reason = waiting.reason.as_deref().unwrap_or("");
        let message = waiting.message.as_deref().unwrap_or("").trim();
        if reason == "CrashLoopBackOff" {
            let exit = last_exit(c).unwrap_or_else(|| "exit unknown".to_owned());
            let restarts = c.restart_count;
            let output = match crash_logs.get(&(name.to_owned(), restarts)).map(|l| l.trim_end()) {
                Some("") | None => "no output".to_owned(),
                Some(lines) => format!("last output:\n{lines}"),
            };
            return Some(format!("replica {name} keeps crashing ({exit}, {restarts} restarts); {output}"));
        }
        if IMAGE_FAILURES.contains(&reason) {
            let image = pod_image(pod).unwrap_or(&c.image);
            return Some(format!("replica {name} cannot pull image {image}: {reason}: {message}"));
        }
        if START_FAILURES.contains(&reason) {
            return Some(format!("replica {name} cannot start: {reason}: {message}"));
        }
    }
    let scheduled = condition(pod, "PodScheduled")?;
    (scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable")).then(|| {
        format!("replica {name} cannot be scheduled: {}", scheduled.message.as_deref().unwrap_or("no node fits").trim())
    })
}

fn pod_image(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.containers.iter().find(|c| c.name == CONTAINER)?.image.as_deref()
}

/// Why a Deployment of `generation` does not progress, from its conditions (only once the
/// Deployment controller has seen that generation's template).
fn deployment_failure(d: &Deployment, generation: u64) -> Option<String> {
    if generation_of(d.metadata.labels.as_ref()) != generation {
        return None;
    }
    let status = d.status.as_ref()?;
    if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return None;
    }
    let conditions = status.conditions.as_ref()?;
    let message = |c: &k8s_openapi::api::apps::v1::DeploymentCondition| c.message.clone().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| c.type_ == "ReplicaFailure" && c.status == "True") {
        return Some(format!("kubernetes cannot create replicas: {}", message(c)));
    }
    conditions
        .iter()
        .find(|c| {
            c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| format!("the rollout of generation {generation} stopped making progress: {}", message(c)))
}

/// A not-ready pod and what it waits for: `sluice-a-7d9-x (ContainerCreating)`.
fn not_ready(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let waiting = replica_container(pod).and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let running = replica_container(pod).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    match (waiting, running, phase) {
        (Some(reason), _, _) => format!("{name} ({reason})"),
        (None, true, _) => format!("{name} (running, not ready)"),
        (None, false, Some(phase)) => format!("{name} ({phase})"),
        (None, false, None) => name.to_owned(),
    }
}
