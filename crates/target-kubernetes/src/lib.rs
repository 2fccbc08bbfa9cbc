//! The control plane's `kubernetes` target: each service runs as one Deployment of `sluice replica`
//! pods in one namespace, and the service's state and ready replica addresses are read back from
//! the cluster.
//!
//! `apply` and `remove` only record what is wanted; a background loop converges. Each round it
//! deletes what is no longer wanted, server-side applies what changed, then lists the Deployments
//! and pods it manages (two label-selected lists, served from the API server's cache) and derives
//! each service's [`Observed`]:
//!
//! - **Failed** when the cluster refused the Deployment (401, 403, a missing namespace, an invalid
//!   object), or a pod of the newest generation crash-loops (with its previous container's last
//!   lines), cannot pull its image, cannot start its container, cannot be scheduled (the
//!   scheduler's message, e.g. `Insufficient cpu`), or the Deployment reports `ReplicaFailure` or
//!   `ProgressDeadlineExceeded`;
//! - **Healthy** when the newest generation has its desired ready pods and no older pod is left;
//! - **Unhealthy** when it was Healthy at this generation and replica count, and is not now;
//! - **Transitioning** otherwise: starting, rolling out, scaling, or retrying an API call that
//!   failed for a reason that may pass (the reason says `retrying: ...`).
//!
//! Ready pods of every generation are reported as addresses (`podIP:8000`): during a rollout the
//! old ones still serve. A pod being deleted is never reported ready.
//!
//! Polling rather than watching: two list calls a second are nothing for an API server, a round
//! is one sequence of calls that tests drive step by step, there is no watch to re-establish after
//! a disconnect or a `410 Gone`, and a second of delay is small beside pod start times (gateways
//! eject a replica that stops answering on their own, long before any target could tell them).
#![forbid(unsafe_code)]

mod manifest;
mod names;
mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use sluice_control::model::{LogChunk, ServiceState};
use sluice_control::target::{BoxFuture, Observed, ReplicaTarget, SERVICE_LABEL, ServiceDeployment, TargetError};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, timeout};

pub use manifest::deployment_for;
pub use names::deployment_name;

use manifest::CONTAINER;
use names::{generation_of, managed_selector, service_label_value};
use state::{ApplyFailure, Known, Seen};

/// Field manager of the target's server-side applies.
pub const FIELD_MANAGER: &str = "sluice-control";
/// How often the cluster is read.
const POLL_PERIOD: Duration = Duration::from_secs(1);
/// Longest wait for one API call; the client's own read timeout is made for watches (minutes).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off between failed API calls for one service doubles up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Lines of a crash-looping replica's previous run shown in the service's reason.
const CRASH_LOG_LINES: i64 = 10;
/// Lines `service logs` shows per replica.
const LOG_TAIL_LINES: i64 = 500;

/// Where and how replicas run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// Namespace of the Deployments (the control plane's own, usually).
    pub namespace: String,
    /// Image of the replica pods (runs `sluice replica`).
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// The control plane URL replicas fetch artifacts from (its advertised URL).
    pub control_url: String,
    /// Secret with the key `gateway-token`, mounted into replica pods: their credential for
    /// artifact downloads.
    pub token_secret: String,
    /// More labels for the Deployments and their pods (the Helm release's instance label, which
    /// the chart's NetworkPolicy selects replicas by). Never part of the selector.
    pub extra_labels: std::collections::BTreeMap<String, String>,
    /// Secrets replica pods pull their image with.
    pub image_pull_secrets: Vec<String>,
}

/// Runs services as Deployments; see the crate docs.
pub struct KubernetesTarget {
    client: kube::Client,
    settings: KubernetesSettings,
    shared: Mutex<Shared>,
    changes: watch::Sender<u64>,
    /// Wakes the loop when something is wanted, so an apply does not wait for the next round.
    wake: Notify,
}

/// What the target wants and what it last read, behind one lock (never held across an await).
#[derive(Default)]
struct Shared {
    /// Wanted services, by name (ordered, so a round's calls come in a known order).
    services: BTreeMap<String, Service>,
    /// Services whose Deployment is still to be deleted.
    removals: BTreeMap<String, Retry>,
    /// The last successful read of the cluster.
    cluster: Option<Cluster>,
    /// Why the last read failed, when it did.
    read_error: Option<String>,
    /// A crash-looping container's previous output, by pod and restart count, so each crash's
    /// log is read once.
    crash_logs: HashMap<(String, i32), String>,
}

struct Service {
    want: ServiceDeployment,
    /// The cluster accepted `want`.
    applied: bool,
    failure: Option<ApplyFailure>,
    retry: Retry,
    /// Generation and replica count the service was last Healthy at.
    healthy_at: Option<(u64, usize)>,
    observed: Observed,
}

/// The managed Deployments and pods, by service label value.
#[derive(Default)]
struct Cluster {
    deployments: HashMap<String, Deployment>,
    pods: HashMap<String, Vec<Pod>>,
}

/// When a failed call may be made again.
#[derive(Debug, Default)]
struct Retry {
    failures: u32,
    /// `None` after a failure: not before the next change.
    not_before: Option<Instant>,
}

impl Retry {
    fn due(&self, now: Instant) -> bool {
        self.failures == 0 || self.not_before.is_some_and(|t| t <= now)
    }

    /// Schedules the next attempt 1 s, 2 s, 4 s ... up to [`MAX_BACKOFF`] after `now`; `never`
    /// waits for the next change instead.
    fn failed(&mut self, now: Instant, never: bool) {
        self.failures = self.failures.saturating_add(1);
        let backoff = Duration::from_secs(1 << (self.failures - 1).min(5)).min(MAX_BACKOFF);
        self.not_before = (!never).then(|| now + backoff);
    }
}

// === impl KubernetesTarget ===

impl KubernetesTarget {
    /// Infers the client configuration (`KUBECONFIG` or `~/.kube/config` when present, else the
    /// pod's service account), checks that the API answers and lets the target list Deployments
    /// and pods in the namespace, and starts the background loop.
    pub async fn connect(settings: KubernetesSettings) -> anyhow::Result<Arc<KubernetesTarget>> {
        // kube's TLS takes the process's rustls provider; the workspace builds rustls with ring
        // only, but a binary linking another provider too would need the choice made.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::infer().await.context(
            "no Kubernetes configuration: neither KUBECONFIG nor ~/.kube/config, and not in a pod with a service account",
        )?;
        let client = kube::Client::try_from(config).context("creating the Kubernetes client")?;
        let namespace = &settings.namespace;
        let lp = ListParams::default().labels(&managed_selector()).limit(1);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        timeout(CALL_TIMEOUT, deployments.list(&lp))
            .await
            .context("the Kubernetes API does not answer")?
            .with_context(|| format!("listing deployments in namespace {namespace}"))?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        timeout(CALL_TIMEOUT, pods.list(&lp))
            .await
            .context("the Kubernetes API does not answer")?
            .with_context(|| format!("listing pods in namespace {namespace}"))?;
        Ok(Self::with_client(client, settings))
    }

    /// Same as [`connect`](Self::connect) with a given client, unchecked. Must be called within
    /// a Tokio runtime (it spawns the loop, which ends when the target is dropped).
    pub fn with_client(client: kube::Client, settings: KubernetesSettings) -> Arc<KubernetesTarget> {
        let target = Self::idle(client, settings);
        target.spawn_loop(POLL_PERIOD);
        target
    }

    /// A target whose rounds nobody runs yet (tests call [`step`](Self::step)).
    pub(crate) fn idle(client: kube::Client, settings: KubernetesSettings) -> Arc<KubernetesTarget> {
        Arc::new(KubernetesTarget {
            client,
            settings,
            shared: Mutex::new(Shared::default()),
            changes: watch::channel(0).0,
            wake: Notify::new(),
        })
    }

    pub(crate) fn spawn_loop(self: &Arc<Self>, period: Duration) {
        let target = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(target) = target.upgrade() {
                target.step().await;
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    () = target.wake.notified() => {}
                }
            }
        });
    }

    /// One round: delete, apply, read the cluster, report.
    pub(crate) async fn step(&self) {
        self.delete_removed().await;
        self.apply_wanted().await;
        self.read_cluster().await;
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    /// Recomputes every service's [`Observed`] and bumps `changes` if any differs (or `changed`).
    fn refresh(&self, shared: &mut Shared, mut changed: bool) {
        for (name, service) in &mut shared.services {
            let observed =
                observe(name, service, shared.cluster.as_ref(), shared.read_error.as_deref(), &shared.crash_logs);
            if observed.state == ServiceState::Healthy {
                service.healthy_at = Some((service.want.generation(), service.want.replicas));
            }
            if observed != service.observed {
                service.observed = observed;
                changed = true;
            }
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// DELETEs the Deployment of each removed service (its ReplicaSets and pods go with it),
    /// until that succeeds or it is gone.
    async fn delete_removed(&self) {
        let now = Instant::now();
        let due: Vec<String> =
            self.lock().removals.iter().filter(|(_, r)| r.due(now)).map(|(s, _)| s.clone()).collect();
        for service in due {
            let name = deployment_name(&service);
            let result = timeout(CALL_TIMEOUT, self.deployments().delete(&name, &DeleteParams::background())).await;
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(kube::Error::Api(status))) if status.code == 404 => None,
                Ok(Err(e)) => Some(describe(&e)),
                Err(_) => Some("no answer".to_owned()),
            };
            let mut shared = self.lock();
            let Some(retry) = shared.removals.get_mut(&service) else { continue };
            match failure {
                None => {
                    tracing::info!(service, deployment = name, "deleted the service's deployment");
                    shared.removals.remove(&service);
                }
                Some(why) => {
                    tracing::warn!(
                        service,
                        deployment = name,
                        "deleting the service's deployment failed, retrying: {why}"
                    );
                    retry.failed(Instant::now(), false);
                }
            }
        }
    }

    /// Server-side applies each wanted Deployment the cluster has not accepted yet.
    async fn apply_wanted(&self) {
        let now = Instant::now();
        let due: Vec<ServiceDeployment> =
            self.lock().services.values().filter(|s| !s.applied && s.retry.due(now)).map(|s| s.want.clone()).collect();
        for want in due {
            let service = want.service();
            let name = deployment_name(service);
            let deployment = deployment_for(&want, &self.settings);
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let result =
                timeout(CALL_TIMEOUT, self.deployments().patch(&name, &params, &Patch::Apply(&deployment))).await;
            let mut shared = self.lock();
            let Some(s) = shared.services.get_mut(service) else { continue };
            if s.want != want {
                // Changed meanwhile: the next round applies the newer one.
                continue;
            }
            let failure = match result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(apply_failure(&e)),
                Err(_) => Some((
                    ApplyFailure { message: "the Kubernetes API did not answer".to_owned(), refused: false },
                    false,
                )),
            };
            match failure {
                None => {
                    tracing::info!(service, deployment = name, generation = want.generation(), "applied");
                    s.applied = true;
                    s.failure = None;
                    s.retry = Retry::default();
                }
                Some((failure, invalid)) => {
                    tracing::warn!(service, deployment = name, "applying the deployment failed: {}", failure.message);
                    // An invalid object stays invalid until the service changes; the rest is
                    // tried again (RBAC and namespaces get fixed while the control plane runs).
                    s.retry.failed(Instant::now(), invalid);
                    s.failure = Some(failure);
                }
            }
        }
    }

    /// Lists the managed Deployments and pods, reads the previous output of newly crash-looping
    /// replicas, and reports.
    async fn read_cluster(&self) {
        let lp = ListParams::default().labels(&managed_selector()).match_any();
        let listed = async {
            let deployments = timeout(CALL_TIMEOUT, self.deployments().list(&lp)).await;
            let deployments = deployments.map_err(|_| "no answer".to_owned())?.map_err(|e| describe(&e))?;
            let pods = timeout(CALL_TIMEOUT, self.pods().list(&lp)).await;
            let pods = pods.map_err(|_| "no answer".to_owned())?.map_err(|e| describe(&e))?;
            Ok::<_, String>((deployments.items, pods.items))
        };
        let (deployments, pods) = match listed.await {
            Ok(lists) => lists,
            Err(why) => {
                tracing::warn!(namespace = self.settings.namespace, "reading the cluster failed: {why}");
                let mut shared = self.lock();
                shared.read_error = Some(why);
                self.refresh(&mut shared, false);
                return;
            }
        };
        let mut cluster = Cluster::default();
        for d in deployments {
            if let Some(service) = d.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_LABEL)) {
                cluster.deployments.insert(service.clone(), d);
            }
        }
        for p in pods {
            if let Some(service) = p.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_LABEL)) {
                cluster.pods.entry(service.clone()).or_default().push(p);
            }
        }
        let mut crash_logs = self.crash_logs_to_read(&cluster);
        for ((pod, restarts), text) in &mut crash_logs {
            let params = LogParams {
                container: Some(CONTAINER.to_owned()),
                previous: true,
                tail_lines: Some(CRASH_LOG_LINES),
                ..LogParams::default()
            };
            *text = match timeout(CALL_TIMEOUT, self.pods().logs(pod, &params)).await {
                Ok(Ok(lines)) => lines,
                Ok(Err(e)) => format!("(its log cannot be read: {})", describe(&e)),
                Err(_) => "(its log cannot be read: no answer)".to_owned(),
            };
            tracing::debug!(pod, restarts, "read a crash-looping replica's previous output");
        }
        let mut shared = self.lock();
        let present: Vec<&str> = cluster.pods.values().flatten().filter_map(|p| p.metadata.name.as_deref()).collect();
        shared.crash_logs.retain(|(pod, _), _| present.contains(&pod.as_str()));
        shared.crash_logs.extend(crash_logs);
        for (name, s) in &mut shared.services {
            // Deleted behind the target's back: put it back.
            if s.applied && !cluster.deployments.contains_key(&service_label_value(name)) {
                tracing::warn!(service = name, "the service's deployment is gone; applying it again");
                s.applied = false;
            }
        }
        shared.cluster = Some(cluster);
        shared.read_error = None;
        self.refresh(&mut shared, false);
    }

    /// Pods of a wanted service's newest generation in CrashLoopBackOff whose current crash has
    /// not had its log read (the map's texts are filled in by the caller).
    fn crash_logs_to_read(&self, cluster: &Cluster) -> HashMap<(String, i32), String> {
        let shared = self.lock();
        let mut wanted = HashMap::new();
        for (name, s) in &shared.services {
            let generation = s.want.generation();
            for pod in cluster.pods.get(&service_label_value(name)).into_iter().flatten() {
                if generation_of(pod.metadata.labels.as_ref()) != generation {
                    continue;
                }
                let Some(pod_name) = pod.metadata.name.clone() else { continue };
                let crashing = pod
                    .status
                    .as_ref()
                    .and_then(|st| st.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.name == CONTAINER)
                    .find(|c| {
                        c.state.as_ref().and_then(|st| st.waiting.as_ref()).and_then(|w| w.reason.as_deref())
                            == Some("CrashLoopBackOff")
                    });
                if let Some(c) = crashing {
                    let key = (pod_name, c.restart_count);
                    if !shared.crash_logs.contains_key(&key) {
                        wanted.insert(key, String::new());
                    }
                }
            }
        }
        wanted
    }

    /// `service logs`: the tail of each replica's log (or only `replica`'s), numbered as
    /// [`observe`](ReplicaTarget::observe) numbers them.
    async fn read_logs(
        &self,
        service: &str,
        replica: Option<usize>,
        since: Option<u64>,
    ) -> Result<Vec<LogChunk>, TargetError> {
        let rows = self.lock().services.get(service).map(|s| s.observed.replicas.clone()).unwrap_or_default();
        if let Some(i) = replica
            && !rows.iter().any(|r| r.index == i)
        {
            return Err(TargetError(match rows.len() {
                0 => format!("service '{service}' has no replicas now"),
                n => format!("service '{service}' has replicas 0 to {}", n - 1),
            }));
        }
        let now = sluice_control::unix_now();
        // A follower asks for what came since its last read: the API takes that as seconds ago.
        let params = match since {
            Some(t) => LogParams {
                container: Some(CONTAINER.to_owned()),
                since_seconds: Some(i64::try_from(now.saturating_sub(t).max(1)).unwrap_or(i64::MAX)),
                ..LogParams::default()
            },
            None => LogParams {
                container: Some(CONTAINER.to_owned()),
                tail_lines: Some(LOG_TAIL_LINES),
                ..LogParams::default()
            },
        };
        let mut chunks = Vec::new();
        for row in rows.iter().filter(|r| replica.is_none_or(|i| i == r.index)) {
            let Some(pod) = &row.name else { continue };
            let text = match timeout(CALL_TIMEOUT, self.pods().logs(pod, &params)).await {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => format!("(no log from pod {pod}: {})\n", describe(&e)),
                Err(_) => format!("(no log from pod {pod}: the Kubernetes API did not answer)\n"),
            };
            chunks.push(LogChunk { replica: row.index, offset: now, text });
        }
        Ok(chunks)
    }
}

/// What one service looks like now, from what the target knows and last read.
fn observe(
    name: &str,
    service: &Service,
    cluster: Option<&Cluster>,
    read_error: Option<&str>,
    crash_logs: &HashMap<(String, i32), String>,
) -> Observed {
    if cluster.is_none() && service.failure.is_none() {
        let mut starting = Observed::starting(service.want.replicas);
        if let Some(why) = read_error {
            starting.reason = Some(format!("cannot read the cluster's state, retrying: {why}"));
        }
        return starting;
    }
    let label = service_label_value(name);
    let pods: Vec<&Pod> = cluster.and_then(|c| c.pods.get(&label)).map(|p| p.iter().collect()).unwrap_or_default();
    let known = Known {
        want: &service.want,
        applied: service.applied,
        failure: service.failure.as_ref(),
        healthy_at: service.healthy_at,
    };
    let seen = Seen { deployment: cluster.and_then(|c| c.deployments.get(&label)), pods: &pods, crash_logs };
    let mut observed = state::observe(&known, &seen);
    if let Some(why) = read_error {
        // Keep what was last seen (the pods most likely still serve), and say it may be stale.
        let stale = format!("as last seen; reading the cluster fails, retrying: {why}");
        observed.reason = Some(match observed.reason {
            Some(reason) => format!("{reason} ({stale})"),
            None => stale,
        });
    }
    observed
}

/// An API error in a few words: the API server's message and code, or the client's error.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.reason.is_empty() => format!("{} ({})", status.message, status.code),
        kube::Error::Api(status) => format!("{} ({} {})", status.message, status.code, status.reason),
        other => other.to_string(),
    }
}

/// A failed apply, and whether the object itself is invalid. Refused (no use waiting for it to
/// pass) on 400 and 422 (invalid), 401, 403 and 404 (the namespace); anything else may pass.
fn apply_failure(e: &kube::Error) -> (ApplyFailure, bool) {
    let code = match e {
        kube::Error::Api(status) => status.code,
        _ => 0,
    };
    let refused = matches!(code, 400 | 401 | 403 | 404 | 422);
    (ApplyFailure { message: describe(e), refused }, matches!(code, 400 | 422))
}

// === impl ReplicaTarget ===

impl ReplicaTarget for KubernetesTarget {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn apply(&self, deployment: ServiceDeployment) {
        let service = deployment.service().to_owned();
        let mut shared = self.lock();
        shared.removals.remove(&service);
        match shared.services.get_mut(&service) {
            Some(s) if deployment.generation() < s.want.generation() => {
                tracing::debug!(
                    service,
                    generation = deployment.generation(),
                    newest = s.want.generation(),
                    "ignoring an older generation"
                );
                return;
            }
            Some(s) if s.want == deployment => return,
            Some(s) => {
                s.want = deployment;
                s.applied = false;
                s.failure = None;
                s.retry = Retry::default();
            }
            None => {
                let observed = Observed::starting(deployment.replicas);
                shared.services.insert(
                    service,
                    Service {
                        want: deployment,
                        applied: false,
                        failure: None,
                        retry: Retry::default(),
                        healthy_at: None,
                        observed,
                    },
                );
                // `observe` answered `starting(0)` for it until now.
                self.refresh(&mut shared, true);
                drop(shared);
                self.wake.notify_one();
                return;
            }
        }
        self.refresh(&mut shared, false);
        drop(shared);
        self.wake.notify_one();
    }

    fn remove(&self, service: &str) {
        let mut shared = self.lock();
        shared.removals.insert(service.to_owned(), Retry::default());
        if shared.services.remove(service).is_some() {
            self.refresh(&mut shared, true);
        }
        drop(shared);
        self.wake.notify_one();
    }

    fn observe(&self, service: &str) -> Observed {
        self.lock().services.get(service).map_or_else(|| Observed::starting(0), |s| s.observed.clone())
    }

    fn logs(
        &self,
        service: &str,
        replica: Option<usize>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Vec<LogChunk>, TargetError>> {
        let service = service.to_owned();
        Box::pin(async move { self.read_logs(&service, replica, since).await })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
