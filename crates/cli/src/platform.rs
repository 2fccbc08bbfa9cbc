//! `sluice control`, `sluice gateway` and `sluice up` (both in one process, in front of the
//! bundled models deployed as services).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_control::{ControlPlane, ControlSettings, CreateService, ServiceState, UpdateService};
use sluice_gateway::{ControlSource, Gateway, GatewaySettings};
use sluice_registry::{RegisterOptions, Registry};

use crate::serving::{FrontDoorArgs, bundled_models_dir, shutdown_signal, tokio_runtime};

/// Control plane settings, shared by `control` and `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Address of the admin API.
    #[arg(long, env = "SLUICE_CONTROL_HOST", default_value = "127.0.0.1")]
    pub control_host: String,
    /// Port of the admin API (0 picks a free one).
    #[arg(long, env = "SLUICE_CONTROL_PORT", default_value_t = 8001)]
    pub control_port: u16,
    /// Lifetime, and longest lifetime a caller may ask for, of issued tokens, in seconds.
    #[arg(long, env = "SLUICE_TOKEN_TTL_SECONDS", default_value_t = 3600)]
    pub token_ttl_seconds: u64,
    /// Seconds a stopping replica may take to finish in-flight requests before it is killed.
    #[arg(long, env = "SLUICE_STOP_GRACE_SECONDS", default_value_t = 30)]
    pub stop_grace_seconds: u64,
    /// Path of libonnxruntime.so for the replicas [default: provisioned into the data directory].
    #[arg(long, env = "SLUICE_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// Gateway settings, shared by `gateway` and `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// The only JWT algorithm tokens are accepted with; a token's own header never decides it.
    #[arg(long, env = "SLUICE_JWT_ALGORITHM", default_value = "EdDSA")]
    pub jwt_algorithm: String,
    /// Seed of the weighted version picks [default: random]. With a seed, the versions a run's
    /// requests get are reproducible.
    #[arg(long, env = "SLUICE_GATEWAY_SEED")]
    pub seed: Option<u64>,
    /// Largest request body in bytes; larger ones get 413 before they are read (a declared length
    /// is refused before the upload). Smaller than a replica's default (64 MiB): the gateway
    /// holds each body while it forwards it, for every caller at once, and scoring requests are
    /// rarely larger; raise it for services that take large tensors.
    #[arg(long, env = "SLUICE_GATEWAY_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub gateway_max_body_bytes: usize,
    /// Milliseconds a replica has to answer before the caller gets 504.
    #[arg(long, env = "SLUICE_UPSTREAM_TIMEOUT_MS", default_value_t = 120_000)]
    pub upstream_timeout_ms: u64,
    /// Milliseconds a shadow copy may take before it is given up.
    #[arg(long, env = "SLUICE_SHADOW_TIMEOUT_MS", default_value_t = 30_000)]
    pub shadow_timeout_ms: u64,
    /// Shadow copies in flight at once; beyond this, copies are skipped (and counted).
    #[arg(long, env = "SLUICE_MAX_SHADOW_IN_FLIGHT", default_value_t = 64)]
    pub max_shadow_in_flight: usize,
    /// Threads that run the gateway, each a single-threaded event loop with its own listening
    /// socket (SO_REUSEPORT) and upstream pool [default: one per CPU core].
    #[arg(long, env = "SLUICE_GATEWAY_THREADS")]
    pub gateway_threads: Option<usize>,
    /// Microseconds a gateway thread that is otherwise idle keeps polling for a replica's answer,
    /// or for a caller's next request, before it sleeps. Saves the wake-up of a sleeping thread
    /// (tens of microseconds on a virtual machine) at low concurrency, for up to this much CPU
    /// per wait; under load the threads are never idle and it costs nothing. 0 turns it off.
    #[arg(long, env = "SLUICE_GATEWAY_BUSY_POLL_US", default_value_t = sluice_gateway::DEFAULT_BUSY_POLL_MICROS)]
    pub busy_poll_us: u64,
    /// Milliseconds a pooled connection to a replica may stay idle before the gateway closes it
    /// (keep it below the replicas' --idle-timeout-ms, so the gateway closes first).
    #[arg(long, env = "SLUICE_UPSTREAM_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub upstream_idle_timeout_ms: u64,
    /// Serve HTTPS: PEM file of the certificate chain (with --tls-key). Both files are read
    /// again when they change, so a renewed certificate needs no restart.
    #[arg(long, env = "SLUICE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (with --tls-cert).
    #[arg(long, env = "SLUICE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// One log line per request (target `sluice::access`, INFO): request id, endpoint, version,
    /// role, service, status, duration, bytes, caller. JSON when stderr is not a terminal.
    /// `--access-log false` turns it off; `SLUICE_LOG` can also filter it.
    #[arg(long, env = "SLUICE_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
}

impl GatewayArgs {
    /// Gateway threads: the flag, else one per core.
    fn threads(&self) -> anyhow::Result<usize> {
        match self.gateway_threads {
            Some(0) => bail!("--gateway-threads must be at least 1"),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(2, |n| n.get())),
        }
    }

    /// The TLS certificate to serve, when the flags name one.
    fn tls(&self) -> anyhow::Result<Option<sluice_http1::tls::Tls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Ok(Some(sluice_http1::tls::Tls::from_files(cert, key).context("--tls-cert / --tls-key")?))
            }
            _ => Ok(None),
        }
    }

    fn settings(&self, limits: sluice_http1::Limits) -> anyhow::Result<GatewaySettings> {
        let algorithm = self.jwt_algorithm.parse().map_err(|e| anyhow::anyhow!("--jwt-algorithm: {e}"))?;
        if self.gateway_max_body_bytes == 0
            || self.upstream_timeout_ms == 0
            || self.shadow_timeout_ms == 0
            || self.upstream_idle_timeout_ms == 0
        {
            bail!(
                "--gateway-max-body-bytes, --upstream-timeout-ms, --shadow-timeout-ms and --upstream-idle-timeout-ms must be greater than 0"
            );
        }
        Ok(GatewaySettings {
            algorithm,
            seed: self.seed.unwrap_or_else(sluice_gateway::random_seed),
            max_body_bytes: self.gateway_max_body_bytes,
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            shadow_timeout: Duration::from_millis(self.shadow_timeout_ms),
            max_shadow_in_flight: self.max_shadow_in_flight,
            busy_poll: Duration::from_micros(self.busy_poll_us),
            limits,
            upstream_idle_timeout: Duration::from_millis(self.upstream_idle_timeout_ms),
            tls: self.tls()?,
            access_log: self.access_log,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct GatewayCmdArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SLUICE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Control plane to follow [default: the one recorded in the data directory, else
    /// http://127.0.0.1:8001].
    #[arg(long, env = "SLUICE_CONTROL_URL")]
    pub control_url: Option<String>,
    /// File holding the control plane's gateway credential, which can only read the routing
    /// configuration [default: control/gateway-token in the data directory].
    #[arg(long, env = "SLUICE_CONTROL_TOKEN_FILE")]
    pub control_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
}

#[derive(Debug, clap::Args)]
pub struct ControlCmdArgs {
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address of the gateway.
    #[arg(long, env = "SLUICE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the gateway (0 picks a free one).
    #[arg(long, env = "SLUICE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Folder of bundled .onnx models [default: ./models, else the one in the source tree].
    #[arg(long, env = "SLUICE_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    /// Limits of both the gateway's and the admin API's listeners.
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
}

fn control_settings(home: &Path, args: &ControlArgs) -> anyhow::Result<ControlSettings> {
    if args.token_ttl_seconds == 0 {
        bail!("--token-ttl-seconds must be at least 1");
    }
    // Provisioned once here, so replicas starting together do not all fetch it.
    let ort_lib = sluice_serving::ort_library(args.ort_lib.as_deref(), home)?;
    Ok(ControlSettings {
        home: home.to_path_buf(),
        exe: std::env::current_exe().context("cannot find the sluice executable for replicas")?,
        token_ttl: Duration::from_secs(args.token_ttl_seconds),
        stop_grace: Duration::from_secs(args.stop_grace_seconds),
        ort_lib: Some(ort_lib),
    })
}

/// Binds the admin API, starts the control plane and serves the API in the background.
async fn start_control(
    home: &Path,
    args: &ControlArgs,
    limits: sluice_http1::Limits,
) -> anyhow::Result<(Arc<ControlPlane>, SocketAddr)> {
    let settings = control_settings(home, args)?;
    let (listener, addr) =
        bind(&args.control_host, args.control_port).await.context("the control plane's admin API")?;
    let cp = ControlPlane::start(settings)?;
    sluice_control::write_control_url(home, &format!("http://{addr}"))?;
    let app = sluice_control::router(cp.clone());
    tokio::spawn(async move {
        if let Err(e) = crate::admin_front::serve(listener, app, limits, std::future::pending()).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok((cp, addr))
}

pub fn control(home: &Path, args: ControlCmdArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let runtime = tokio_runtime(None)?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        let (cp, addr) = start_control(home, &args.control, args.front_door.limits()?).await?;
        println!(
            "sluice: control plane on http://{addr} (data in {}; admin credential in {})",
            home.display(),
            sluice_control::admin_token_path(home).display()
        );
        shutdown.await;
        cp.shutdown().await;
        eprintln!("sluice: stopped");
        Ok(())
    })
}

pub fn gateway(home: &Path, args: GatewayCmdArgs) -> anyhow::Result<()> {
    let settings = args.gateway.settings(args.front_door.limits()?)?;
    let token = match &args.control_token_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned()
        }
        None => sluice_control::read_gateway_token(home)?,
    };
    let url = crate::client::control_url(home, args.control_url.as_deref());
    let threads = args.gateway.threads()?;
    // This thread's runtime only handles signals and follows the control plane; the gateway
    // serves on its own threads.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        watch_tls(&settings);
        let base = |addr| gateway_url(&settings, addr);
        let gateway = Gateway::new(settings.clone());
        let server = GatewayThreads::start(&args.host, args.port, threads, gateway.clone()).await?;
        tokio::spawn(sluice_gateway::follow_control(gateway, ControlSource { url: url.clone(), token }));
        println!("sluice: gateway on {}, following the control plane at {url}", base(server.addr));
        shutdown.await;
        server.stop().await?;
        eprintln!("sluice: stopped");
        Ok(())
    })
}

/// The gateway serving on its own threads (see [`sluice_gateway::serve_on_threads`]).
struct GatewayThreads {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    joined: std::thread::JoinHandle<std::io::Result<()>>,
}

impl GatewayThreads {
    async fn start(host: &str, port: u16, threads: usize, gateway: Arc<Gateway>) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("no address for {host}"))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let joined = sluice_gateway::serve_on_threads(addr, threads, gateway, stopped, bound_tx);
        let addr = tokio::task::spawn_blocking(move || bound_rx.recv())
            .await?
            .context("the gateway threads did not start")?
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        Ok(GatewayThreads { addr, stop, joined })
    }

    /// Stops accepting and returns once in-flight requests have finished.
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        let joined = self.joined;
        tokio::task::spawn_blocking(move || joined.join())
            .await?
            .map_err(|_| anyhow::anyhow!("a gateway thread panicked"))??;
        Ok(())
    }
}

async fn bind(host: &str, port: u16) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener =
        tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Applies every configuration the in-process control plane publishes.
fn feed(gateway: Arc<Gateway>, cp: &ControlPlane) {
    let mut rx = cp.subscribe();
    tokio::spawn(async move {
        loop {
            let config = rx.borrow_and_update().clone();
            if let Err(e) = gateway.apply(&config) {
                tracing::error!(error = %e, "configuration refused; keeping the current one");
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    });
}

/// Registers the bundled models (when their bytes are new) and returns `name:version` of each.
fn register_bundled(home: &Path, dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .onnx models in {}", dir.display());
    }
    let mut registry = Registry::open(home)?;
    let mut models = Vec::new();
    for file in files {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_owned();
        let options = RegisterOptions { description: "bundled with sluice".into(), ..Default::default() };
        let (mv, new) = registry.register_if_changed(&name, &file, options)?;
        if new {
            eprintln!("sluice: registered {}:{} from {}", mv.name, mv.version, file.display());
        }
        models.push((mv.name.clone(), format!("{}:{}", mv.name, mv.version)));
    }
    Ok(models)
}

pub fn up(home: &Path, args: UpArgs) -> anyhow::Result<()> {
    let limits = args.front_door.limits()?;
    let gateway_settings = args.gateway.settings(limits.clone())?;
    let dir = bundled_models_dir(args.models_dir.clone())?;
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let models = register_bundled(home, &dir)?;
    let threads = args.gateway.threads()?;
    let runtime = tokio_runtime(None)?;
    runtime.block_on(async {
        // The gateway listens first so a busy port fails before anything starts; it answers
        // "not ready" until the control plane's first configuration arrives.
        watch_tls(&gateway_settings);
        let gateway = Gateway::new(gateway_settings.clone());
        let server = GatewayThreads::start(&args.host, args.port, threads, gateway.clone()).await?;
        let addr = server.addr;
        let (cp, control_addr) = start_control(home, &args.control, limits).await?;
        feed(gateway, &cp);

        // One service per bundled model, kept on the latest registered bytes.
        for (name, reference) in &models {
            let result = match cp.service_status(name) {
                Ok(s) if s.models == [reference.clone()] => Ok(()),
                Ok(_) => cp
                    .update_service(name, UpdateService { models: Some(vec![reference.clone()]), ..Default::default() })
                    .map(drop),
                Err(_) => cp
                    .create_service(CreateService {
                        name: name.clone(),
                        models: vec![reference.clone()],
                        deploy_config: None,
                        inference_config: None,
                    })
                    .map(drop),
            };
            result.with_context(|| format!("deploying {name}"))?;
        }
        let started = Instant::now();
        loop {
            let states: Vec<(String, ServiceState, Option<String>)> =
                cp.list_services()?.into_iter().map(|s| (s.name, s.state, s.reason)).collect();
            if states.iter().all(|(_, s, _)| matches!(s, ServiceState::Healthy | ServiceState::Failed)) {
                for (name, _, reason) in states.iter().filter(|(_, s, _)| *s == ServiceState::Failed) {
                    eprintln!("sluice: service {name} failed: {}", reason.as_deref().unwrap_or("unknown"));
                }
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                eprintln!("sluice: some services are still starting; `sluice service list` shows them");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Installed before the banner, so a caller that stops `up` as soon as it reads it drains.
        let shutdown = shutdown_signal();
        println!("{}", banner(home, &gateway_url(&gateway_settings, addr), control_addr, &models));
        shutdown.await;
        server.stop().await?;
        cp.shutdown().await;
        eprintln!("sluice: stopped");
        Ok(())
    })
}

/// The gateway's base URL: https when it terminates TLS.
fn gateway_url(settings: &GatewaySettings, addr: SocketAddr) -> String {
    format!("{}://{addr}", if settings.tls.is_some() { "https" } else { "http" })
}

/// Reloads the gateway's certificate when its files change, logging each attempt.
fn watch_tls(settings: &GatewaySettings) {
    if let Some(tls) = settings.tls.clone() {
        tokio::spawn(tls.watch(Duration::from_secs(5), |reloaded| match reloaded {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate files changed but cannot be used; keeping the current one")
            }
        }));
    }
}

fn banner(home: &Path, gateway: &str, control: SocketAddr, models: &[(String, String)]) -> String {
    let exe = std::env::current_exe().map_or_else(|_| "sluice".into(), |p| p.display().to_string());
    let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "\nSluice gateway on {gateway} in front of the services {} (control plane on http://{control}; data in {home})\n\n\
         Key auth is on. Try it:\n  \
         KEY=$({exe} --home {home} keys get tabular-mixed --key primary)\n  \
         curl -s {gateway}/models/tabular-mixed/score -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' \\\n    \
         -d '{{\"inputs\": {{\"features\": [[0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2]], \"category\": [3]}}}}'\n  \
         curl -s {gateway}/v2/models/tabular-mixed/infer -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' \\\n    \
         -d '{{\"inputs\": [{{\"name\": \"features\", \"shape\": [1, 8], \"datatype\": \"FP32\", \"data\": [0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2]}}, \
         {{\"name\": \"category\", \"shape\": [1], \"datatype\": \"INT64\", \"data\": [3]}}]}}'\n  \
         curl -s {gateway}/metrics\n  \
         {exe} --home {home} service list\n\nPress Ctrl-C to stop.",
        names.join(", "),
        home = home.display(),
    )
}
