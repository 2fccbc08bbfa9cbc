//! The local deploy target: each replica of a service is a `sluice serve` child process on its own
//! loopback port. A replica is started, awaited until ready, probed for liveness, and restarted
//! with backoff when it dies. Its output goes to a log file the CLI can show and follow, kept
//! within its bound while the replica runs.
//!
//! Replicas outlive a control plane that dies (gateways keep serving through its outage). The next
//! control plane finds them ([`find_replicas`]: the pids its store recorded, and any `sluice serve`
//! of this data directory in `/proc`) and adopts each one that runs its service's current
//! generation in a slot it would otherwise fill: it supervises that process by pid instead of
//! starting another beside it. The rest (older generations, surplus) are stopped once the service
//! is healthy.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::ControlPlane;
use crate::model::{ReplicaStatus, ServiceState};

/// A replica that exits this many times in a row before becoming ready fails its service.
const START_ATTEMPTS: u32 = 3;
/// Longest a replica may take to load its models and listen.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// A replica rotates its log past this size, keeping one previous part (see
/// `sluice_telemetry::logfile`): at most about twice this on disk per replica.
const LOG_PART_BYTES: u64 = 2 * 1024 * 1024;
/// How often a process adopted from an earlier control plane (not a child: it cannot be waited
/// for) is checked for having exited.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// Liveness probing, from the deployment config's probe fields.
#[derive(Debug, Clone)]
pub struct Probe {
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

/// What to run for one generation of a service.
#[derive(Debug, Clone)]
pub struct Plan {
    pub service: String,
    pub generation: u64,
    pub models: Vec<String>,
    /// Replicas to run at first.
    pub replicas: usize,
    /// Replica slots: the most the autoscaler may run (`replicas` without autoscaling).
    pub slots: usize,
    pub deploy_config: PathBuf,
    pub inference_config: Option<PathBuf>,
    pub dir: PathBuf,
    pub probe: Probe,
}

/// One replica slot; its process may be replaced many times.
#[derive(Debug)]
pub struct Replica {
    pub index: usize,
    pid: AtomicU32,
    address: Mutex<Option<String>>,
    /// `unix:PATH` of the replica's Unix socket, when it listens on one: where gateways on this
    /// host send requests (cheaper than loopback TCP). `address` stays what probes and people use.
    local_address: Mutex<Option<String>>,
    ready: AtomicBool,
    /// Out of the gateways' configuration because the autoscaler is removing its slot.
    draining: AtomicBool,
    restarts: AtomicU32,
    last_exit: Mutex<Option<String>>,
    pub log_path: PathBuf,
}

impl Replica {
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            index: self.index,
            name: None,
            pid: Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0),
            address: lock(&self.address).clone(),
            ready: self.is_ready(),
            restarts: self.restarts.load(Ordering::Relaxed),
            last_exit: lock(&self.last_exit).clone(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The address gateways send callers to, when ready: the Unix socket if the replica has one.
    pub fn ready_address(&self) -> Option<String> {
        if !self.is_ready() || self.draining.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.local_address).clone().or_else(|| lock(&self.address).clone())
    }
}

/// The replicas of one service generation.
#[derive(Debug)]
pub struct Group {
    pub plan: Plan,
    /// Every slot; the first `active` run a process, the others wait to be scaled up to.
    pub replicas: Vec<Arc<Replica>>,
    failed: Mutex<Option<String>>,
    ever_healthy: AtomicBool,
    stop: watch::Sender<bool>,
    /// Slots that run (the autoscaler moves it); a slot at or past it drains and waits.
    active: watch::Sender<usize>,
    /// What the autoscaler asked for last: a scale-down waiting for gateways applies only if
    /// nothing was asked since.
    wanted: std::sync::atomic::AtomicUsize,
    /// Finished replica tasks; `stop_and_wait` waits for all of them.
    done: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Group {
    /// Starts every replica of `plan` in the background.
    pub fn start(cp: &Arc<ControlPlane>, plan: Plan) -> Arc<Group> {
        Group::start_adopting(cp, plan, Vec::new())
    }

    /// Starts the replicas of `plan`, taking over `adopted` processes (left by an earlier control
    /// plane, running this plan's generation) in their slots instead of starting new ones there.
    pub fn start_adopting(cp: &Arc<ControlPlane>, plan: Plan, adopted: Vec<Found>) -> Arc<Group> {
        let replicas = (0..plan.slots.max(plan.replicas))
            .map(|index| {
                Arc::new(Replica {
                    index,
                    pid: AtomicU32::new(0),
                    address: Mutex::new(None),
                    local_address: Mutex::new(None),
                    ready: AtomicBool::new(false),
                    draining: AtomicBool::new(false),
                    restarts: AtomicU32::new(0),
                    last_exit: Mutex::new(None),
                    log_path: plan.dir.join(format!("replica-{index}.log")),
                })
            })
            .collect();
        let group = Arc::new(Group {
            replicas,
            failed: Mutex::new(None),
            ever_healthy: AtomicBool::new(false),
            stop: watch::channel(false).0,
            active: watch::channel(plan.replicas).0,
            wanted: std::sync::atomic::AtomicUsize::new(plan.replicas),
            done: Arc::new(tokio::sync::Semaphore::new(0)),
            plan,
        });
        for replica in &group.replicas {
            let adopt = adopted.iter().find(|f| f.index == replica.index).cloned();
            tokio::spawn(run_replica(cp.clone(), group.clone(), replica.clone(), adopt));
        }
        group
    }

    /// The slots that run now.
    pub fn running(&self) -> &[Arc<Replica>] {
        &self.replicas[..(*self.active.borrow()).min(self.replicas.len())]
    }

    /// Replicas that run now (what the autoscaler last asked for).
    pub fn active(&self) -> usize {
        self.running().len()
    }

    /// Runs `n` replicas (within the slots): more start at once; fewer drain first, out of the
    /// gateways' configuration before they stop, so no request is lost to a scale-down.
    pub fn scale_to(self: &Arc<Self>, cp: &Arc<ControlPlane>, n: usize) {
        let n = n.clamp(1, self.replicas.len());
        let now = self.active();
        self.wanted.store(n, Ordering::Release);
        // Slots kept (a scale-down still waiting for gateways may be called off) serve again.
        let mut returned = false;
        for r in &self.replicas[..n.min(now)] {
            returned |= r.draining.swap(false, Ordering::AcqRel);
        }
        if n > now {
            self.active.send_replace(n);
        } else if n < now {
            for r in &self.replicas[n..now] {
                r.draining.store(true, Ordering::Release);
            }
            let group = self.clone();
            tokio::spawn(async move {
                // Gateways need a moment to take the smaller set before those replicas stop.
                tokio::time::sleep(Duration::from_secs(2)).await;
                if group.wanted.load(Ordering::Acquire) == n {
                    group.active.send_if_modified(|a| {
                        let lower = n < *a;
                        if lower {
                            *a = n;
                        }
                        lower
                    });
                }
            });
        }
        if returned || n < now {
            cp.publish();
        }
    }

    /// Ready addresses, for the gateway.
    pub fn ready_addresses(&self) -> Vec<String> {
        self.running().iter().filter_map(|r| r.ready_address()).collect()
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    pub fn all_ready(&self) -> bool {
        self.running().iter().all(|r| r.is_ready())
    }

    /// State and reason of this generation on its own.
    pub fn state(&self) -> (ServiceState, Option<String>) {
        if let Some(reason) = self.failure() {
            return (ServiceState::Failed, Some(reason));
        }
        let running = self.running();
        let ready = running.iter().filter(|r| r.is_ready()).count();
        if ready == running.len() {
            return (ServiceState::Healthy, None);
        }
        let progress = format!("{ready} of {} replicas ready", running.len());
        if self.ever_healthy.load(Ordering::Relaxed) {
            let why = running
                .iter()
                .find(|r| !r.is_ready())
                .and_then(|r| lock(&r.last_exit).clone().map(|e| format!("replica {}: {e}", r.index)));
            (ServiceState::Unhealthy, Some(why.map_or(progress.clone(), |w| format!("{progress}; {w}"))))
        } else {
            (ServiceState::Transitioning, Some(progress))
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(service = %self.plan.service, %reason, "service failed");
        *lock(&self.failed) = Some(reason);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Asks every replica to stop (SIGTERM, so in-flight requests finish).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops every replica and waits until their processes are gone.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let n = self.replicas.len() as u32;
        if let Ok(permits) = self.done.acquire_many(n).await {
            permits.forget();
        }
    }
}

/// How one run of a replica process ended.
struct Ended {
    became_ready: bool,
    stopped: bool,
    /// Stopped because the autoscaler took its slot away: it waits to be needed again.
    retired: bool,
    status: String,
}

async fn run_replica(cp: Arc<ControlPlane>, group: Arc<Group>, replica: Arc<Replica>, mut adopt: Option<Found>) {
    let mut backoff = Duration::from_millis(250);
    let mut start_failures = 0;
    while !group.stopping() {
        // A slot past the active count waits until the autoscaler needs it (or the group stops).
        if replica.index >= *group.active.borrow() {
            let (mut active, mut stop) = (group.active.subscribe(), group.stop.subscribe());
            tokio::select! {
                _ = needed(&mut active, replica.index) => {}
                _ = stopped(&mut stop) => {}
            }
            start_failures = 0;
            continue;
        }
        let addr_file = group.plan.dir.join(format!("replica-{}.addr", replica.index));
        let (process, socket) = match adopt.take() {
            Some(found) => {
                tracing::info!(service = %group.plan.service, replica = replica.index, pid = found.pid, "adopting a replica left by an earlier control plane");
                (Process::Adopted { pid: found.pid, home: cp.settings.home.clone() }, found.socket)
            }
            None => {
                let _ = std::fs::remove_file(&addr_file);
                let socket = unix_socket_path(&group.plan, &replica);
                match spawn(&cp, &group.plan, &replica, &addr_file, socket.as_deref()) {
                    Ok(child) => (Process::Child(child), socket),
                    Err(e) => {
                        group.fail(format!("cannot start replica {}: {e}", replica.index));
                        break;
                    }
                }
            }
        };
        let pid = process.pid().unwrap_or(0);
        replica.pid.store(pid, Ordering::Relaxed);
        cp.replica_spawned(pid, &group.plan.service);
        let ended = supervise(&cp, &group, &replica, process, &addr_file).await;
        // A replica killed outright leaves its socket file behind.
        if let Some(path) = &socket {
            let _ = std::fs::remove_file(path);
        }
        replica.ready.store(false, Ordering::Release);
        replica.pid.store(0, Ordering::Relaxed);
        *lock(&replica.address) = None;
        *lock(&replica.local_address) = None;
        cp.replica_exited(pid, &group.plan.service);
        if ended.stopped {
            break;
        }
        if ended.retired {
            replica.draining.store(false, Ordering::Release);
            continue;
        }
        let tail = log_tail(&replica.log_path, 3);
        let exit =
            if tail.is_empty() { ended.status.clone() } else { format!("{}; last output: {tail}", ended.status) };
        replica.restarts.fetch_add(1, Ordering::Relaxed);
        *lock(&replica.last_exit) = Some(exit.clone());
        if ended.became_ready {
            start_failures = 0;
            backoff = Duration::from_millis(250);
        } else {
            start_failures += 1;
            if start_failures >= START_ATTEMPTS {
                group.fail(format!(
                    "replica {} exited before becoming ready {start_failures} times in a row; last: {exit}",
                    replica.index
                ));
                break;
            }
        }
        tracing::warn!(service = %group.plan.service, replica = replica.index, status = %ended.status, "replica exited; restarting");
        let mut stop = group.stop.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    group.done.add_permits(1);
}

/// A replica process: a child of this control plane, or one an earlier control plane started and
/// this one adopted. An adopted process is not our child, so it is watched through `/proc` and
/// signalled by pid (checked to still be our replica first, as pids are reused).
enum Process {
    Child(Child),
    Adopted { pid: u32, home: PathBuf },
}

impl Process {
    fn pid(&self) -> Option<u32> {
        match self {
            Process::Child(child) => child.id(),
            Process::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Waits for the process to exit and says how it ended.
    async fn wait(&mut self) -> String {
        match self {
            Process::Child(child) => describe(child.wait().await),
            Process::Adopted { pid, home } => {
                while is_running_replica(*pid, home) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
                "exited (adopted from an earlier control plane, so its status is unknown)".into()
            }
        }
    }

    /// SIGKILL, and waits until it is gone.
    async fn kill(&mut self) {
        match self {
            Process::Child(child) => {
                let _ = child.kill().await;
                let _ = child.wait().await;
            }
            Process::Adopted { pid, home } => {
                if is_running_replica(*pid, home) {
                    signal(*pid, nix::sys::signal::Signal::SIGKILL);
                }
                self.wait().await;
            }
        }
    }
}

fn spawn(
    cp: &ControlPlane,
    plan: &Plan,
    replica: &Replica,
    addr_file: &Path,
    unix_socket: Option<&Path>,
) -> std::io::Result<Child> {
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&replica.log_path)?;
    writeln!(
        log,
        "--- sluice: starting replica {} of service {} (generation {}) ---",
        replica.index, plan.service, plan.generation
    )?;
    let mut cmd = Command::new(&cp.settings.exe);
    cmd.arg("serve").args(&plan.models).args(["--host", "127.0.0.1", "--port", "0"]).arg("--addr-file").arg(addr_file);
    if let Some(socket) = unix_socket {
        cmd.arg("--unix-socket").arg(socket);
    }
    cmd.arg("--deploy-config").arg(&plan.deploy_config);
    if let Some(path) = &plan.inference_config {
        cmd.arg("--model-config").arg(path);
    }
    if let Some(lib) = &cp.settings.ort_lib {
        cmd.arg("--ort-lib").arg(lib);
    }
    // A replica's log is read by people (`sluice service logs`) and its last lines end up in
    // `last_exit`: plain text (without colour codes, as it is a file) unless the operator chose
    // a format for the whole platform.
    if std::env::var_os("SLUICE_LOG_FORMAT").is_none() {
        cmd.env("SLUICE_LOG_FORMAT", "text");
    }
    // The replica keeps its own log bounded: only the writer can rotate it without losing lines.
    cmd.env(sluice_telemetry::logfile::LOG_FILE_ENV, &replica.log_path)
        .env(sluice_telemetry::logfile::LOG_LIMIT_ENV, LOG_PART_BYTES.to_string());
    cmd.env("SLUICE_HOME", &cp.settings.home)
        // Names the folder of the service's collected model data.
        .env("SLUICE_SERVICE", &plan.service)
        // The flags above decide these; the control plane's own environment must not.
        .env_remove("SLUICE_HOST")
        .env_remove("SLUICE_PORT")
        .env_remove("SLUICE_DEPLOY_CONFIG")
        .env_remove("SLUICE_MODEL_CONFIG")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C at the terminal reaches the control plane, which then
        // stops replicas in order, instead of killing them under in-flight requests.
        .process_group(0);
    cmd.spawn()
}

/// Where one run of replica `replica` of `plan` listens for gateways on this host. Each run gets
/// its own path: a replica left by a crashed control plane keeps serving on its socket while its
/// successor starts. `None` when the path would be too long for a Unix socket address (107 bytes
/// on Linux): that replica is reached over TCP only.
fn unix_socket_path(plan: &Plan, replica: &Replica) -> Option<PathBuf> {
    const MAX_SOCKET_PATH: usize = 107;
    let run = sluice_routing::random_seed() as u32;
    let path = plan.dir.join(format!("r{}-{run:08x}.sock", replica.index));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        tracing::info!(service = %plan.service, path = %path.display(), "socket path too long for a Unix socket; gateways reach this replica over TCP");
        return None;
    }
    Some(path)
}

/// Watches one replica process from start to exit.
async fn supervise(
    cp: &Arc<ControlPlane>,
    group: &Group,
    replica: &Replica,
    mut child: Process,
    addr_file: &Path,
) -> Ended {
    let mut stop = group.stop.subscribe();
    let mut active = group.active.subscribe();
    let index = replica.index;
    let started = Instant::now();
    let ended = |status: String, became_ready: bool| Ended { became_ready, stopped: false, retired: false, status };
    let grace = cp.settings.stop_grace;

    // Phase 1: wait for the address file, written once the models are loaded and the port bound.
    let address = loop {
        tokio::select! {
            status = child.wait() => return ended(status, false),
            _ = stopped(&mut stop) => return terminate(child, grace).await,
            _ = retired(&mut active, index) => return Ended { retired: true, stopped: false, ..terminate(child, grace).await },
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        // The TCP address, then the Unix socket's when the replica listens on one.
        if let Ok(text) = std::fs::read_to_string(addr_file)
            && let Some(addr) = text.lines().next().filter(|l| !l.is_empty())
        {
            let local = text.lines().nth(1).map(str::trim).filter(|l| l.starts_with(sluice_routing::UNIX_PREFIX));
            *lock(&replica.local_address) = local.map(str::to_owned);
            break addr.trim().to_owned();
        }
        if started.elapsed() > START_TIMEOUT {
            child.kill().await;
            return ended(format!("did not start listening within {} s", START_TIMEOUT.as_secs()), false);
        }
    };
    *lock(&replica.address) = Some(address.clone());

    // Phase 2: readiness.
    let ready_url = format!("http://{address}/v2/health/ready");
    loop {
        tokio::select! {
            status = child.wait() => return ended(status, false),
            _ = stopped(&mut stop) => return terminate(child, grace).await,
            _ = retired(&mut active, index) => return Ended { retired: true, stopped: false, ..terminate(child, grace).await },
            ok = probe(&cp.http, &ready_url, Duration::from_secs(2)) => if ok { break },
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    replica.ready.store(true, Ordering::Release);
    if group.all_ready() {
        // Remembered now, so that a replica lost later reads as Unhealthy, not as starting.
        group.ever_healthy.store(true, Ordering::Relaxed);
    }
    tracing::info!(service = %group.plan.service, replica = replica.index, %address, "replica ready");
    cp.replica_ready(&group.plan.service);

    // Phase 3: liveness.
    let live_url = format!("http://{address}/v2/health/live");
    let mut failures = 0;
    loop {
        tokio::select! {
            status = child.wait() => return ended(status, true),
            _ = stopped(&mut stop) => return terminate(child, grace).await,
            _ = retired(&mut active, index) => return Ended { retired: true, stopped: false, ..terminate(child, grace).await },
            _ = tokio::time::sleep(group.plan.probe.period) => {}
        }
        if probe(&cp.http, &live_url, group.plan.probe.timeout).await {
            failures = 0;
            continue;
        }
        failures += 1;
        if failures >= group.plan.probe.failure_threshold {
            child.kill().await;
            return ended(format!("killed after {failures} failed liveness probes"), true);
        }
    }
}

/// Resolves once the autoscaler needs slot `index`.
async fn needed(rx: &mut watch::Receiver<usize>, index: usize) {
    let _ = rx.wait_for(|a| index < *a).await;
}

/// Resolves once the autoscaler takes slot `index` away.
async fn retired(rx: &mut watch::Receiver<usize>, index: usize) {
    let _ = rx.wait_for(|a| index >= *a).await;
}

/// Resolves once the group is asked to stop (the guard `wait_for` returns is not `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn probe(http: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    matches!(http.get(url).timeout(timeout).send().await, Ok(r) if r.status().is_success())
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(mut child: Process, grace: Duration) -> Ended {
    if let Some(pid) = child.pid() {
        signal_term(pid);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        child.kill().await;
    }
    Ended { became_ready: false, stopped: true, retired: false, status: "stopped".into() }
}

/// Stops a replica process an earlier control plane left: SIGTERM, then SIGKILL after `grace`.
pub async fn stop_stale(pid: u32, home: &Path, grace: Duration) {
    if is_running_replica(pid, home) {
        let _ = terminate(Process::Adopted { pid, home: home.to_path_buf() }, grace).await;
    }
}

/// Sends SIGTERM to `pid`; a process that is already gone is fine.
pub fn signal_term(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGTERM);
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "exited".into(),
        },
        Err(e) => format!("could not be waited for: {e}"),
    }
}

/// The last `n` non-empty lines of a log, joined with " | ".
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = read_log_from(path, None).1;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("--- sluice:")).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A log's text from `offset` (or its last 64 KiB), and the offset to read from next. The log
/// is read with its previous part (the replica rotates it, see `sluice_telemetry::logfile`): an
/// offset past the current part's end means it was rotated since, so the rest of the previous
/// part comes first.
pub fn read_log_from(path: &Path, offset: Option<u64>) -> (u64, String) {
    const TAIL: u64 = 64 * 1024;
    let previous = sluice_telemetry::logfile::previous_part(path);
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut bytes = Vec::new();
    match offset {
        Some(o) if o <= len => read_range(path, o, len, &mut bytes),
        Some(o) => {
            read_range(&previous, o, u64::MAX, &mut bytes);
            read_range(path, 0, len, &mut bytes);
        }
        None => {
            if len < TAIL {
                let previous_len = std::fs::metadata(&previous).map_or(0, |m| m.len());
                read_range(&previous, previous_len.saturating_sub(TAIL - len), u64::MAX, &mut bytes);
            }
            read_range(path, len.saturating_sub(TAIL), len, &mut bytes);
        }
    }
    (len, String::from_utf8_lossy(&bytes).into_owned())
}

/// Appends bytes `from..to` of file `path` (as far as it reaches) to `out`.
fn read_range(path: &Path, from: u64, to: u64, out: &mut Vec<u8>) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return };
    if file.seek(SeekFrom::Start(from)).is_ok() {
        let _ = file.take(to.saturating_sub(from)).read_to_end(out);
    }
}

/// Whether `pid` is a `sluice serve` replica started for data directory `home`: checked before a
/// recorded pid is signalled, since pids are reused.
pub fn is_our_replica(pid: u32, home: &Path) -> bool {
    replica_args(pid, home).is_some()
}

/// Whether `pid` is one of our replicas and has not exited (an exited process whose parent died
/// may linger as a zombie when nothing reaps it; its command line reads empty).
fn is_running_replica(pid: u32, home: &Path) -> bool {
    is_our_replica(pid, home)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])))
}

/// The arguments of `pid` when it runs `sluice serve` for data directory `home`.
fn replica_args(pid: u32, home: &Path) -> Option<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<PathBuf> =
        cmdline.split(|&b| b == 0).map(|a| PathBuf::from(std::ffi::OsStr::from_bytes(a))).collect();
    let has = |s: &str| args.iter().any(|a| a.as_os_str() == s);
    let in_home = args.iter().any(|a| a.starts_with(home));
    (has("serve") && has("--addr-file") && in_home).then_some(args)
}

/// A running replica process of this data directory that an earlier control plane started.
#[derive(Debug, Clone)]
pub struct Found {
    pub pid: u32,
    /// The generation folder its address file is in (`services/NAME/gN`).
    pub dir: PathBuf,
    /// Its replica slot.
    pub index: usize,
    /// Its Unix socket, when it has one.
    pub socket: Option<PathBuf>,
}

/// Replica processes of data directory `home` still running: the `recorded` pids, and any other
/// (a control plane killed between starting a replica and recording its pid) found in `/proc`.
pub fn find_replicas(home: &Path, recorded: impl IntoIterator<Item = u32>) -> Vec<Found> {
    let mut pids: Vec<u32> = recorded.into_iter().collect();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        pids.extend(entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids.retain(|&pid| pid != std::process::id());
    pids.into_iter()
        .filter(|&pid| is_running_replica(pid, home))
        .filter_map(|pid| {
            let args = replica_args(pid, home)?;
            let after = |flag: &str| args.iter().position(|a| a.as_os_str() == flag).and_then(|i| args.get(i + 1));
            let addr_file = after("--addr-file")?;
            let index =
                addr_file.file_name()?.to_str()?.strip_prefix("replica-")?.strip_suffix(".addr")?.parse().ok()?;
            Some(Found { pid, dir: addr_file.parent()?.to_path_buf(), index, socket: after("--unix-socket").cloned() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotated log reads on across the rotation: what was written after the offset in the
    /// previous part, then the current part.
    #[test]
    fn reading_a_log_follows_its_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replica-0.log");
        std::fs::write(&path, "one\ntwo\n").expect("write");
        let (offset, text) = read_log_from(&path, None);
        assert_eq!((offset, text.as_str()), (8, "one\ntwo\n"));
        std::fs::write(&path, "one\ntwo\nthree\n").expect("write");
        std::fs::rename(&path, sluice_telemetry::logfile::previous_part(&path)).expect("rotate");
        std::fs::write(&path, "four\n").expect("write");
        let (offset, text) = read_log_from(&path, Some(offset));
        assert_eq!((offset, text.as_str()), (5, "three\nfour\n"));
        assert_eq!(read_log_from(&path, None).1, "one\ntwo\nthree\nfour\n");
        assert_eq!(log_tail(&path, 2), "three | four");
    }
}
