//! The control plane's `docker` target: every replica of every service is one container on a
//! Docker Engine, reached over the Engine's Unix socket, on a user-defined network where each
//! replica has an address of its own. The target creates, starts, probes, restarts and removes
//! the containers itself, in one background loop per target: the Engine's restart policy is off
//! so that every exit passes through the target, which counts restarts, keeps each exit's status
//! and output, and stops a crash loop with a reason instead of retrying forever.
//!
//! The decisions are pure functions in [`plan`]; this file gathers their inputs (the Engine's
//! listing, the probes' findings) and carries the actions out.

#![forbid(unsafe_code)]

/// What a replica container is made of.
pub mod container;
/// The Engine API calls, public for tests that act on the Engine themselves.
pub mod engine;
mod http;
/// Container output.
pub mod logs;
/// The decisions, as pure functions.
pub mod plan;
mod probe;
/// Archives for the Engine.
pub mod tar;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use sluice_control::model::{LogChunk, ServiceState};
use sluice_control::target::{
    BoxFuture, Observed, Probes, REPLICA_PORT, ReplicaTarget, ServiceDeployment, TargetError,
};
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use crate::container::{MANAGED_BY, MANAGED_BY_LABEL, Template, container_name, create_body, token_archive};
use crate::engine::{Engine, EngineError};
use crate::plan::{Action, ExitReport, Health, Listed, Track, Verdict, Want};
use crate::probe::{Machine, Step};

/// How often the loop looks at the Engine when nothing asks it to sooner.
const TICK: Duration = Duration::from_secs(1);
/// How soon the loop looks again after it acted: to see what its actions did.
const AFTER_ACTIONS: Duration = Duration::from_millis(200);
/// How long a replica being removed has to finish its requests (SIGTERM, then SIGKILL).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a replica being removed keeps running after it left the ready addresses, before it
/// is asked to stop: gateways follow the control plane's configuration within moments, and a
/// request sent to it meanwhile is still answered.
const UNPUBLISH_DELAY: Duration = Duration::from_secs(2);
/// How long after connecting the target leaves containers of services it has not been told
/// about: a control plane that restarts applies its services only after the target connects,
/// and their replicas must not be removed in between.
const STRAY_GRACE: Duration = Duration::from_secs(30);
/// Lines of output read when a replica exits (the crash-loop reason quotes ten).
const EXIT_OUTPUT_LINES: usize = 10;
/// Lines of output per replica that `logs` returns.
const LOG_LINES: usize = 200;

/// Where and how the target runs replicas.
#[derive(Clone)]
pub struct DockerSettings {
    /// The Docker Engine's Unix socket.
    pub socket: PathBuf,
    /// The user-defined network the replicas join; the control plane and the gateways must be
    /// able to reach addresses on it.
    pub network: String,
    /// The replica image (entrypoint `sluice`, user 10001, `/data` writable).
    pub image: String,
    /// What replicas use to reach the control plane (its artifact route).
    pub control_url: String,
    /// The credential replicas present to fetch models.
    pub gateway_token: String,
}

impl std::fmt::Debug for DockerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerSettings")
            .field("socket", &self.socket)
            .field("network", &self.network)
            .field("image", &self.image)
            .field("control_url", &self.control_url)
            .field("gateway_token", &"<redacted>")
            .finish()
    }
}

/// The `docker` target. See the crate documentation.
pub struct DockerTarget {
    settings: DockerSettings,
    engine: Engine,
    state: Mutex<State>,
    /// Wakes the loop: a deployment changed, a probe changed its mind, a removal finished.
    wake: Arc<Notify>,
    changes: watch::Sender<u64>,
    connected: Instant,
}

impl std::fmt::Debug for DockerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerTarget").field("settings", &self.settings).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, Service>,
    /// Services removed since the target connected: their containers go at once.
    removed: HashSet<String>,
    /// What the target knows of each container of ours, by container id.
    tracked: HashMap<String, Tracked>,
    /// The last listing (without containers being removed); `None` before the first.
    listed: Option<Vec<Listed>>,
    /// Containers being stopped and removed in the background.
    removing: HashSet<String>,
    observed: HashMap<String, Observed>,
    /// Whether the last listing failed: the outage is logged once, not every second.
    engine_down: bool,
}

/// One wanted service.
struct Service {
    deployment: ServiceDeployment,
    failure: Option<String>,
    ever_healthy: bool,
}

impl Service {
    fn want(&self) -> Want<'_> {
        Want {
            replicas: self.deployment.replicas,
            generation: self.deployment.generation(),
            failure: self.failure.as_deref(),
            ever_healthy: self.ever_healthy,
        }
    }
}

#[derive(Default)]
struct Tracked {
    track: Track,
    /// The prober of the current run, while the container runs.
    probe: Option<Prober>,
    /// How the last run ended, as its prober saw it; taken when the exit is recorded.
    ended: Option<RunEnd>,
    /// When the exited container may start again.
    restart_at: Option<Instant>,
}

struct RunEnd {
    became_ready: bool,
    hung: Option<String>,
}

/// A task probing one run of one container.
struct Prober {
    addr: String,
    cell: Arc<ProbeCell>,
    task: AbortHandle,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a prober found, read by the loop.
#[derive(Default)]
struct ProbeCell {
    ready: AtomicBool,
    ever_ready: AtomicBool,
    /// Set once: why the container should be killed.
    hung: OnceLock<String>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DockerTarget {
    /// Checks that the Engine answers (`GET /_ping`) and that the network exists, then starts
    /// the background loop. Containers that already run a wanted slot are adopted on the first
    /// passes after the control plane applies its services.
    pub async fn connect(settings: DockerSettings) -> anyhow::Result<Arc<DockerTarget>> {
        let engine = Engine::new(&settings.socket);
        engine.ping().await?;
        // Replicas need an address each: on the host network they would all share one.
        if matches!(settings.network.as_str(), "host" | "none") || settings.network.starts_with("container:") {
            bail!("network '{}' gives replicas no address of their own; use a user-defined network", settings.network);
        }
        if !engine.network_exists(&settings.network).await? {
            bail!(
                "there is no docker network '{0}' (create it with `docker network create {0}`, and attach the control plane and gateways to it)",
                settings.network
            );
        }
        let target = Arc::new(DockerTarget {
            settings,
            engine,
            state: Mutex::new(State::default()),
            wake: Arc::new(Notify::new()),
            changes: watch::channel(0).0,
            connected: Instant::now(),
        });
        tokio::spawn(run(Arc::downgrade(&target)));
        Ok(target)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The Engine's filter for our containers on our network: two control planes on one Engine
    /// with different networks leave each other's replicas alone.
    fn filters(&self) -> serde_json::Value {
        json!({
            "label": [format!("{MANAGED_BY_LABEL}={MANAGED_BY}")],
            "network": [self.settings.network],
        })
    }

    /// One look at the Engine and the actions it calls for. Whether anything was done.
    async fn pass(self: &Arc<Self>) -> bool {
        let containers = match self.engine.list(&self.filters()).await {
            Ok(c) => c,
            Err(e) => {
                let mut st = self.lock();
                if !st.engine_down {
                    tracing::warn!(error = %e, "docker target: cannot list containers; retrying");
                    st.engine_down = true;
                }
                return false;
            }
        };
        let listed: Vec<Listed> =
            containers.iter().filter_map(|c| Listed::from_container(c, &self.settings.network)).collect();
        let actions = {
            let mut guard = self.lock();
            let st = &mut *guard;
            if std::mem::take(&mut st.engine_down) {
                tracing::info!("docker target: the engine answers again");
            }
            self.sync_tracked(st, &listed);
            let visible: Vec<Listed> = listed.into_iter().filter(|l| !st.removing.contains(&l.id)).collect();
            let wanted: BTreeMap<String, Want<'_>> = st.services.iter().map(|(k, s)| (k.clone(), s.want())).collect();
            let strays = self.connected.elapsed() >= STRAY_GRACE;
            let actions = plan::plan(&wanted, &st.removed, strays, &visible, |id| health(&st.tracked, id));
            st.listed = Some(visible);
            actions
        };
        self.refresh_observed();
        let acted = !actions.is_empty();
        for action in actions {
            self.act(action).await;
        }
        if acted {
            self.refresh_observed();
        }
        acted
    }

    /// Brings the per-container memory up to date with a listing: probers for running
    /// containers, the end of a run for stopped ones, nothing for containers that are gone.
    fn sync_tracked(&self, st: &mut State, listed: &[Listed]) {
        let ids: HashSet<&str> = listed.iter().map(|l| l.id.as_str()).collect();
        st.tracked.retain(|id, _| ids.contains(id.as_str()));
        for l in listed {
            let probes = st.services.get(&l.service).map_or_else(Probes::default, |s| s.deployment.probes);
            let t = st.tracked.entry(l.id.clone()).or_default();
            if let Some(p) = &t.probe
                && p.cell.ever_ready.load(Ordering::Acquire)
            {
                t.track.served = true;
            }
            let addr = l.ip.as_ref().map(|ip| format!("{ip}:{REPLICA_PORT}"));
            match (l.state, addr) {
                (plan::RunState::Running, Some(addr)) => {
                    if t.probe.as_ref().is_none_or(|p| p.addr != addr) {
                        t.probe = Some(spawn_prober(addr, probes, self.wake.clone()));
                    }
                }
                (plan::RunState::Running, None) => {}
                _ => {
                    if let Some(p) = t.probe.take() {
                        t.ended = Some(RunEnd {
                            became_ready: p.cell.ever_ready.load(Ordering::Acquire),
                            hung: p.cell.hung.get().cloned(),
                        });
                    }
                }
            }
        }
    }

    /// Recomputes what `observe` reports from the last listing and the probes; bumps `changes`
    /// when any service's report changed.
    fn refresh_observed(&self) {
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(listed) = &st.listed else { return };
        let mut changed = false;
        for (name, service) in st.services.iter_mut() {
            // A container being removed no longer counts, nor serves: its removal unpublishes it.
            let containers: Vec<&Listed> =
                listed.iter().filter(|l| &l.service == name && !st.removing.contains(&l.id)).collect();
            let (observed, all_ready) = plan::observe(&service.want(), &containers, |id| health(&st.tracked, id));
            if all_ready && service.failure.is_none() && !service.ever_healthy {
                service.ever_healthy = true;
            }
            if st.observed.get(name) != Some(&observed) {
                if observed.state != st.observed.get(name).map_or(ServiceState::Transitioning, |o| o.state) {
                    tracing::info!(service = %name, state = ?observed.state, reason = observed.reason.as_deref().unwrap_or(""), "docker target: service state");
                }
                st.observed.insert(name.clone(), observed);
                changed = true;
            }
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    async fn act(self: &Arc<Self>, action: Action) {
        match action {
            Action::Create { service, generation, index } => self.create(&service, generation, index).await,
            Action::Revive { id, name, newest } => self.revive(&id, &name, newest).await,
            Action::Kill { id, name } => {
                tracing::warn!(container = %name, "docker target: killing a replica that stopped answering");
                if let Err(e) = self.engine.kill(&id).await {
                    tracing::warn!(container = %name, error = %e, "docker target: cannot kill");
                }
            }
            Action::Remove { id, name, stop: false } => {
                tracing::info!(container = %name, "docker target: removing");
                if let Err(e) = self.engine.remove(&id).await {
                    tracing::warn!(container = %name, error = %e, "docker target: cannot remove");
                }
            }
            Action::Remove { id, name, stop: true } => {
                // In the background: stopping waits for the replica's requests, up to the grace.
                self.lock().removing.insert(id.clone());
                let target = Arc::downgrade(self);
                let engine = self.engine.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(UNPUBLISH_DELAY).await;
                    tracing::info!(container = %name, "docker target: stopping and removing");
                    if let Err(e) = engine.stop(&id, STOP_GRACE).await {
                        tracing::warn!(container = %name, error = %e, "docker target: cannot stop; removing by force");
                    }
                    if let Err(e) = engine.remove(&id).await {
                        tracing::warn!(container = %name, error = %e, "docker target: cannot remove");
                    }
                    if let Some(t) = target.upgrade() {
                        t.lock().removing.remove(&id);
                        t.wake.notify_one();
                    }
                });
            }
        }
    }

    /// Creates slot `index` of `service`'s `generation`, puts the credential in, starts it.
    async fn create(&self, service: &str, generation: u64, index: usize) {
        let name = container_name(service, generation, index);
        let body = {
            let st = self.lock();
            let Some(s) = st.services.get(service).filter(|s| s.deployment.generation() == generation) else { return };
            let template = Template {
                image: &self.settings.image,
                network: &self.settings.network,
                control_url: &self.settings.control_url,
            };
            create_body(&template, &s.deployment, index)
        };
        tracing::info!(container = %name, image = %self.settings.image, "docker target: creating a replica");
        let id = match self.engine.create(&name, &body).await {
            Ok(id) => id,
            Err(e) => return self.refused(service, generation, &format!("cannot create replica {name}"), &e, false),
        };
        let token = token_archive(&self.settings.gateway_token);
        if let Err(e) = self.engine.put_archive(&id, "/", &token).await {
            let _ = self.engine.remove(&id).await;
            return self.refused(
                service,
                generation,
                &format!("cannot put the credential into replica {name}"),
                &e,
                false,
            );
        }
        if let Err(e) = self.engine.start(&id).await {
            // Left created: removed and made again on a later pass unless this failed the
            // generation.
            self.refused(service, generation, &format!("cannot start replica {name}"), &e, true);
        }
    }

    /// Handles an Engine error while making a replica: the generation fails when the Engine
    /// refused for a reason that trying again will not change (no such image, a bad limit, a
    /// runtime that cannot run it), else the next pass tries again.
    fn refused(&self, service: &str, generation: u64, what: &str, e: &EngineError, starting: bool) {
        let permanent = match e.status() {
            // A name in use: a container still being removed, or one the last listing missed.
            None | Some(409) => false,
            // The Engine itself failing while creating may pass; a start refused with a server
            // error is the runtime refusing the container (no such executable, no GPU driver).
            Some(s) if s >= 500 => starting,
            Some(_) => true,
        };
        if permanent {
            self.fail(service, generation, format!("{what}: {}", e.message()));
        } else {
            tracing::warn!(service, error = %e, "docker target: {what}; trying again");
        }
    }

    fn fail(&self, service: &str, generation: u64, reason: String) {
        let mut st = self.lock();
        if let Some(s) = st.services.get_mut(service)
            && s.deployment.generation() == generation
            && s.failure.is_none()
        {
            tracing::error!(service, generation, %reason, "docker target: the service failed");
            s.failure = Some(reason);
        }
    }

    /// Records the exit of a container and starts it again, unless its generation failed.
    async fn revive(&self, id: &str, name: &str, newest: bool) {
        let exit = match self.engine.exit(id).await {
            Ok(exit) if !exit.running => exit,
            Ok(_) => return,
            Err(e) => return tracing::warn!(container = %name, error = %e, "docker target: cannot inspect"),
        };
        let seen = self.lock().tracked.get(id).is_some_and(|t| t.track.has_recorded(&exit.finished_at));
        // The output is only needed for an exit not recorded yet (a later pass after a back-off
        // comes here again for the same exit).
        let output =
            if seen { String::new() } else { self.engine.logs(id, EXIT_OUTPUT_LINES, None).await.unwrap_or_default() };
        let (due, slot) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let slot = st.listed.iter().flatten().find(|l| l.id == id).map(|l| (l.service.clone(), l.generation));
            let Some(t) = st.tracked.get_mut(id) else { return };
            let ended = t.ended.take();
            let description = match ended.as_ref().and_then(|e| e.hung.as_deref()) {
                Some(hung) => format!("was killed ({hung})"),
                None if exit.oom_killed => format!("exited with code {} (out of memory)", exit.code),
                None => format!("exited with code {}", exit.code),
            };
            let report = ExitReport {
                finished_at: &exit.finished_at,
                description,
                output: &output,
                became_ready: ended.as_ref().is_some_and(|e| e.became_ready),
                counts: newest,
            };
            match t.track.record_exit(name, &report) {
                Verdict::Seen => {}
                Verdict::Restart(after) => {
                    tracing::warn!(container = %name, exit = t.track.last_exit.as_deref().unwrap_or(""), "docker target: replica exited; starting it again");
                    t.restart_at = Some(Instant::now() + after);
                }
                Verdict::CrashLoop(reason) => {
                    t.restart_at = None;
                    drop(guard);
                    if let Some((service, generation)) = slot {
                        self.fail(&service, generation, reason);
                    }
                    return;
                }
            }
            (t.restart_at.is_some_and(|at| Instant::now() >= at), slot)
        };
        if !due {
            return;
        }
        match self.engine.start(id).await {
            Ok(()) => {
                if let Some(t) = self.lock().tracked.get_mut(id) {
                    t.track.restarts += 1;
                    t.restart_at = None;
                }
            }
            Err(e) => match slot {
                Some((service, generation)) if newest => {
                    self.refused(&service, generation, &format!("cannot start replica {name} again"), &e, true)
                }
                _ => tracing::warn!(container = %name, error = %e, "docker target: cannot start again"),
            },
        }
    }
}

/// The probes' and the memory's view of one container.
fn health(tracked: &HashMap<String, Tracked>, id: &str) -> Health {
    let Some(t) = tracked.get(id) else { return Health::default() };
    let cell = t.probe.as_ref().map(|p| &p.cell);
    Health {
        ready: cell.is_some_and(|c| c.ready.load(Ordering::Acquire)),
        hung: cell.is_some_and(|c| c.hung.get().is_some()),
        served: t.track.served || cell.is_some_and(|c| c.ever_ready.load(Ordering::Acquire)),
        restarts: t.track.restarts,
        last_exit: t.track.last_exit.clone(),
    }
}

/// Probes `addr` until aborted (the container stopped) or it is found hung.
fn spawn_prober(addr: String, probes: Probes, wake: Arc<Notify>) -> Prober {
    let cell = Arc::new(ProbeCell::default());
    let task = tokio::spawn({
        let (addr, cell) = (addr.clone(), cell.clone());
        async move {
            let mut machine = Machine::new(probes, Instant::now());
            loop {
                let outcome = probe::probe(&addr, machine.timeout()).await;
                match machine.record(outcome, Instant::now()) {
                    Step::Unchanged => {}
                    Step::Ready => {
                        cell.ever_ready.store(true, Ordering::Release);
                        cell.ready.store(true, Ordering::Release);
                        wake.notify_one();
                    }
                    Step::NotReady => {
                        cell.ready.store(false, Ordering::Release);
                        wake.notify_one();
                    }
                    Step::Hung(why) => {
                        cell.ready.store(false, Ordering::Release);
                        let _ = cell.hung.set(why);
                        wake.notify_one();
                        return;
                    }
                }
                tokio::time::sleep(machine.period()).await;
            }
        }
    });
    Prober { addr, cell, task: task.abort_handle() }
}

/// The loop: a pass, then a pause that anything worth a look cuts short. Ends when the target
/// is dropped.
async fn run(target: Weak<DockerTarget>) {
    loop {
        let Some(t) = target.upgrade() else { return };
        let acted = t.pass().await;
        let wake = t.wake.clone();
        drop(t);
        let pause = if acted { AFTER_ACTIONS } else { TICK };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}

impl ReplicaTarget for DockerTarget {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn apply(&self, deployment: ServiceDeployment) {
        let mut st = self.lock();
        let name = deployment.service().to_owned();
        st.removed.remove(&name);
        match st.services.get_mut(&name) {
            Some(s) if deployment.generation() < s.deployment.generation() => {
                tracing::debug!(service = %name, generation = deployment.generation(), "docker target: an older generation than the one wanted; ignored");
                return;
            }
            Some(s) if deployment == s.deployment => return,
            // The same generation changed: a retry of what failed, also.
            Some(s) if deployment.generation() == s.deployment.generation() => {
                s.deployment = deployment;
                s.failure = None;
            }
            _ => {
                st.services.insert(name, Service { deployment, failure: None, ever_healthy: false });
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    fn remove(&self, service: &str) {
        let mut st = self.lock();
        st.services.remove(service);
        st.removed.insert(service.to_owned());
        let had = st.observed.remove(service).is_some();
        drop(st);
        if had {
            self.changes.send_modify(|n| *n += 1);
        }
        self.wake.notify_one();
    }

    fn observe(&self, service: &str) -> Observed {
        let st = self.lock();
        if let Some(o) = st.observed.get(service) {
            return o.clone();
        }
        match st.services.get(service) {
            Some(s) => Observed::starting(s.deployment.replicas),
            None => Observed {
                state: ServiceState::Failed,
                reason: Some("not deployed on the docker target".into()),
                desired: 0,
                replicas: Vec::new(),
                ready_addresses: Vec::new(),
            },
        }
    }

    fn logs(
        &self,
        service: &str,
        replica: Option<usize>,
        since: Option<u64>,
    ) -> BoxFuture<'_, Result<Vec<LogChunk>, TargetError>> {
        let service = service.to_owned();
        Box::pin(async move {
            let failed = |e: EngineError| TargetError(e.to_string());
            let containers = self.engine.list(&self.filters()).await.map_err(failed)?;
            let mut listed: Vec<Listed> = containers
                .iter()
                .filter_map(|c| Listed::from_container(c, &self.settings.network))
                .filter(|l| l.service == service && replica.is_none_or(|r| r == l.index))
                .collect();
            // One chunk per replica slot: the newest generation's container.
            listed.sort_by(|a, b| a.index.cmp(&b.index).then(b.generation.cmp(&a.generation)));
            listed.dedup_by_key(|l| l.index);
            let mut chunks = Vec::with_capacity(listed.len());
            let now = sluice_control::unix_now();
            for l in listed {
                let text = self.engine.logs(&l.id, LOG_LINES, since).await.map_err(failed)?;
                chunks.push(LogChunk { replica: l.index, offset: now, text });
            }
            Ok(chunks)
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
