//! The local deploy target: each replica of a service is a `sluice serve` child process on its own
//! loopback port. A replica is started, awaited until ready, probed for liveness, and restarted
//! with backoff when it dies. Its output goes to a bounded log file the CLI can show and follow.

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
/// A replica log is cut back to its newest part past this size.
const LOG_LIMIT_BYTES: u64 = 4 * 1024 * 1024;

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
    pub replicas: usize,
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
    restarts: AtomicU32,
    last_exit: Mutex<Option<String>>,
    pub log_path: PathBuf,
}

impl Replica {
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            index: self.index,
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
        if !self.is_ready() {
            return None;
        }
        lock(&self.local_address).clone().or_else(|| lock(&self.address).clone())
    }
}

/// The replicas of one service generation.
#[derive(Debug)]
pub struct Group {
    pub plan: Plan,
    pub replicas: Vec<Arc<Replica>>,
    failed: Mutex<Option<String>>,
    ever_healthy: AtomicBool,
    stop: watch::Sender<bool>,
    /// Finished replica tasks; `stop_and_wait` waits for all of them.
    done: Arc<tokio::sync::Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Group {
    /// Starts every replica of `plan` in the background.
    pub fn start(cp: &Arc<ControlPlane>, plan: Plan) -> Arc<Group> {
        let replicas = (0..plan.replicas)
            .map(|index| {
                Arc::new(Replica {
                    index,
                    pid: AtomicU32::new(0),
                    address: Mutex::new(None),
                    local_address: Mutex::new(None),
                    ready: AtomicBool::new(false),
                    restarts: AtomicU32::new(0),
                    last_exit: Mutex::new(None),
                    log_path: plan.dir.join(format!("replica-{index}.log")),
                })
            })
            .collect();
        let group = Arc::new(Group {
            plan,
            replicas,
            failed: Mutex::new(None),
            ever_healthy: AtomicBool::new(false),
            stop: watch::channel(false).0,
            done: Arc::new(tokio::sync::Semaphore::new(0)),
        });
        for replica in &group.replicas {
            tokio::spawn(run_replica(cp.clone(), group.clone(), replica.clone()));
        }
        group
    }

    /// Ready addresses, for the gateway.
    pub fn ready_addresses(&self) -> Vec<String> {
        self.replicas.iter().filter_map(|r| r.ready_address()).collect()
    }

    pub fn failure(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    pub fn all_ready(&self) -> bool {
        self.replicas.iter().all(|r| r.is_ready())
    }

    /// State and reason of this generation on its own.
    pub fn state(&self) -> (ServiceState, Option<String>) {
        if let Some(reason) = self.failure() {
            return (ServiceState::Failed, Some(reason));
        }
        let ready = self.replicas.iter().filter(|r| r.is_ready()).count();
        if ready == self.replicas.len() {
            return (ServiceState::Healthy, None);
        }
        let progress = format!("{ready} of {} replicas ready", self.replicas.len());
        if self.ever_healthy.load(Ordering::Relaxed) {
            let why = self
                .replicas
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
    status: String,
}

async fn run_replica(cp: Arc<ControlPlane>, group: Arc<Group>, replica: Arc<Replica>) {
    let mut backoff = Duration::from_millis(250);
    let mut start_failures = 0;
    while !group.stopping() {
        trim_log(&replica.log_path);
        let addr_file = group.plan.dir.join(format!("replica-{}.addr", replica.index));
        let _ = std::fs::remove_file(&addr_file);
        let socket = unix_socket_path(&group.plan, &replica);
        let child = match spawn(&cp, &group.plan, &replica, &addr_file, socket.as_deref()) {
            Ok(child) => child,
            Err(e) => {
                group.fail(format!("cannot start replica {}: {e}", replica.index));
                break;
            }
        };
        let pid = child.id().unwrap_or(0);
        replica.pid.store(pid, Ordering::Relaxed);
        cp.replica_spawned(pid, &group.plan.service);
        let ended = supervise(&cp, &group, &replica, child, &addr_file).await;
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
    cmd.env("SLUICE_HOME", &cp.settings.home)
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
    mut child: Child,
    addr_file: &Path,
) -> Ended {
    let mut stop = group.stop.subscribe();
    let started = Instant::now();
    let ended = |status: String, became_ready: bool| Ended { became_ready, stopped: false, status };

    // Phase 1: wait for the address file, written once the models are loaded and the port bound.
    let address = loop {
        tokio::select! {
            status = child.wait() => return ended(describe(status), false),
            _ = stopped(&mut stop) => return terminate(child, cp.settings.stop_grace).await,
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
            let _ = child.kill().await;
            return ended(format!("did not start listening within {} s", START_TIMEOUT.as_secs()), false);
        }
    };
    *lock(&replica.address) = Some(address.clone());

    // Phase 2: readiness.
    let ready_url = format!("http://{address}/v2/health/ready");
    loop {
        tokio::select! {
            status = child.wait() => return ended(describe(status), false),
            _ = stopped(&mut stop) => return terminate(child, cp.settings.stop_grace).await,
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
            status = child.wait() => return ended(describe(status), true),
            _ = stopped(&mut stop) => return terminate(child, cp.settings.stop_grace).await,
            _ = tokio::time::sleep(group.plan.probe.period) => {}
        }
        if probe(&cp.http, &live_url, group.plan.probe.timeout).await {
            failures = 0;
            continue;
        }
        failures += 1;
        if failures >= group.plan.probe.failure_threshold {
            let _ = child.kill().await;
            let _ = child.wait().await;
            return ended(format!("killed after {failures} failed liveness probes"), true);
        }
    }
}

/// Resolves once the group is asked to stop (the guard `wait_for` returns is not `Send`).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn probe(http: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    matches!(http.get(url).timeout(timeout).send().await, Ok(r) if r.status().is_success())
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(mut child: Child, grace: Duration) -> Ended {
    if let Some(pid) = child.id() {
        signal_term(pid);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
        let _ = child.wait().await;
    }
    Ended { became_ready: false, stopped: true, status: "stopped".into() }
}

/// Sends SIGTERM to `pid`; a process that is already gone is fine.
pub fn signal_term(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
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

/// Keeps a replica log bounded: past the limit, the newest quarter is kept.
fn trim_log(path: &Path) {
    let Ok(meta) = std::fs::metadata(path) else { return };
    if meta.len() <= LOG_LIMIT_BYTES {
        return;
    }
    if let Ok(bytes) = std::fs::read(path) {
        let keep = &bytes[bytes.len() - (LOG_LIMIT_BYTES / 4) as usize..];
        let start = keep.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let _ = std::fs::write(path, &keep[start..]);
    }
}

/// The last `n` non-empty lines of a log, joined with " | ".
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = read_log_from(path, None).1;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("--- sluice:")).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// A log's text from `offset` (or its last 64 KiB), and the offset to read from next. A log that
/// was cut back since `offset` is read from its start.
pub fn read_log_from(path: &Path, offset: Option<u64>) -> (u64, String) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else { return (0, String::new()) };
    let len = file.metadata().map_or(0, |m| m.len());
    let from = match offset {
        Some(o) if o <= len => o,
        Some(_) => 0,
        None => len.saturating_sub(64 * 1024),
    };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_ok() {
        let _ = file.take(len - from).read_to_end(&mut bytes);
    }
    (from + bytes.len() as u64, String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `pid` is a `sluice serve` replica started for data directory `home`: checked before a
/// recorded pid is signalled, since pids are reused.
pub fn is_our_replica(pid: u32, home: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let has = |s: &[u8]| args.contains(&s);
    let in_home = args.iter().any(|a| a.starts_with(home.as_os_str().as_encoded_bytes()));
    has(b"serve") && has(b"--addr-file") && in_home
}
