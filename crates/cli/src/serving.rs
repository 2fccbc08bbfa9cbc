//! `sluice serve`: its flags, turned into a [`ServeConfig`] that `sluice_serving` loads; then
//! the listeners and the server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_runtime::Execution;
use sluice_server::{AppState, Repository, ServerConfig};
use sluice_serving::{Defaults, ServeConfig};

/// Runtime limits and parallelism, shared by `serve` and `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Instances of each model, each on its own thread [default: one per CPU core].
    #[arg(long, env = "SLUICE_INSTANCES")]
    pub instances: Option<usize>,
    /// Where inference runs: `threads` (one dedicated thread per instance) or `inline` (on the
    /// HTTP worker threads; can cut latency for tiny models on an idle server, but measured slower
    /// under load).
    #[arg(long, env = "SLUICE_EXECUTION", default_value = "threads")]
    pub execution: Execution,
    /// Most rows that dynamic batching joins into one model run; 1 turns batching off. Only for
    /// models whose first dimension is dynamic, and only with threads execution.
    #[arg(long, env = "SLUICE_MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,
    /// Microseconds the first request of a batch may wait for more; 0 (the default) is
    /// opportunistic: a free instance takes whatever is queued, and a lone request never waits.
    #[arg(long, env = "SLUICE_MAX_QUEUE_DELAY_US", default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Batch sizes sent as soon as they are reached, comma-separated (e.g. 8,16,32).
    #[arg(long, env = "SLUICE_PREFERRED_BATCH_SIZES", value_delimiter = ',')]
    pub preferred_batch_sizes: Vec<usize>,
    /// Threads that run HTTP and JSON work [default: one per CPU core].
    #[arg(long, env = "SLUICE_HTTP_THREADS")]
    pub http_threads: Option<usize>,
    /// ONNX Runtime threads inside one instance. 1 is fastest when instances fill the cores.
    #[arg(long, env = "SLUICE_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,
    /// Requests admitted per model at once (Azure ML: replica_max_concurrent_requests).
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_REQUESTS", default_value_t = sluice_core::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for admission per model; beyond this they get 503 at once.
    #[arg(long, env = "SLUICE_MAX_QUEUED_REQUESTS", default_value_t = sluice_core::DEFAULT_MAX_QUEUED_REQUESTS)]
    pub max_queued_requests: usize,
    /// Milliseconds a request waits for admission before 503 (Azure ML: max_request_wait_time).
    #[arg(long, env = "SLUICE_MAX_REQUEST_WAIT_MS", default_value_t = 500)]
    pub max_request_wait_ms: u64,
    /// Milliseconds an admitted request may take before 504 (Azure ML: scoring_timeout_ms).
    #[arg(long, env = "SLUICE_SCORING_TIMEOUT_MS", default_value_t = 60_000)]
    pub scoring_timeout_ms: u64,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Deployment config (Azure ML deploymentconfig.json field names: replica_max_concurrent_requests,
    /// max_request_wait_time, scoring_timeout_ms, ...; plus instance_count, intra_op_threads,
    /// max_batch_size, max_queue_delay_us, preferred_batch_sizes). Checked before anything starts;
    /// its settings override the flags above for every model.
    #[arg(long, env = "SLUICE_DEPLOY_CONFIG")]
    pub deploy_config: Option<PathBuf>,
    /// JSON file of per-model settings that override the flags and the deployment config, e.g.
    /// {"mlp-large": {"instance_count": 2, "intra_op_threads": 1, "scoring_timeout_ms": 5000}}.
    #[arg(long, env = "SLUICE_MODEL_CONFIG")]
    pub model_config: Option<PathBuf>,
    /// Path of libonnxruntime.so to use. Without it, sluice uses the copy in its data directory
    /// and fetches the pinned onnxruntime wheel from PyPI with pip the first time.
    #[arg(long, env = "SLUICE_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// What every listener allows its callers (the scoring server, the gateway, the admin API): slow
/// or silent connections are closed and connections beyond a cap wait, so a few hundred slow
/// callers cannot exhaust a server's file descriptors.
#[derive(Debug, Clone, clap::Args)]
pub struct FrontDoorArgs {
    /// Milliseconds a request head may take to arrive, from its first byte (for a new
    /// connection, from the accept: one that says nothing is closed after it); then 408.
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// Milliseconds a request body may take before --min-body-rate applies to it.
    #[arg(long, env = "SLUICE_BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// Least rate, in bytes per second, at which a request body must keep arriving after
    /// --body-read-timeout-ms; a slower one gets 408 and the connection is closed.
    #[arg(long, env = "SLUICE_MIN_BODY_RATE", default_value_t = 64 * 1024)]
    pub min_body_rate: u64,
    /// Milliseconds a keep-alive connection may wait for its next request before it is closed.
    #[arg(long, env = "SLUICE_IDLE_TIMEOUT_MS", default_value_t = 75_000)]
    pub idle_timeout_ms: u64,
    /// Open connections per listener at most; more wait in the listen backlog (the open ones
    /// keep working) until one closes.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
}

impl FrontDoorArgs {
    /// The limits, checked.
    pub fn limits(&self) -> anyhow::Result<sluice_http1::Limits> {
        if self.header_read_timeout_ms == 0 || self.idle_timeout_ms == 0 || self.min_body_rate == 0 {
            bail!("--header-read-timeout-ms, --idle-timeout-ms and --min-body-rate must be greater than 0");
        }
        if self.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        Ok(sluice_http1::Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            min_body_rate: self.min_body_rate,
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_connections: self.max_connections,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Models to serve: NAME or NAME:VERSION from the registry, or the path of an .onnx file.
    #[arg(required = true, value_name = "MODEL")]
    pub models: Vec<String>,
    /// Address to listen on.
    #[arg(long, env = "SLUICE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "SLUICE_PORT", default_value_t = 8000)]
    pub port: u16,
    /// Once the models are loaded and the port is bound, write the address here (the control
    /// plane starts replicas with it).
    #[arg(long, hide = true)]
    pub addr_file: Option<PathBuf>,
    /// Also listen on this Unix domain socket (a gateway on the same host reaches replicas there
    /// for less than over loopback TCP; the control plane starts replicas with one). A stale
    /// socket file left by an earlier run is replaced.
    #[arg(long, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// Also serve the Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, as the
    /// Triton and KServe gRPC clients call it) on this port of --host (0 picks a free one); off
    /// when not given.
    #[arg(long, env = "SLUICE_GRPC_PORT", value_name = "PORT")]
    pub grpc_port: Option<u16>,
    /// The service this replica serves: names the folder of its collected data (with
    /// collect_model_data in the deployment config); the control plane sets it.
    #[arg(long, env = "SLUICE_SERVICE", default_value = "serve", hide = true)]
    pub service_name: String,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub front_door: FrontDoorArgs,
}

impl TuningArgs {
    /// The flags as the settings every model starts from.
    fn defaults(&self) -> Defaults {
        Defaults {
            instances: self.instances,
            execution: self.execution,
            max_batch_size: self.max_batch_size,
            max_queue_delay_us: self.max_queue_delay_us,
            preferred_batch_sizes: self.preferred_batch_sizes.clone(),
            intra_op_threads: self.intra_op_threads,
            max_concurrent_requests: self.max_concurrent_requests,
            max_queued_requests: self.max_queued_requests,
            max_request_wait_ms: self.max_request_wait_ms,
            scoring_timeout_ms: self.scoring_timeout_ms,
        }
    }

    /// What `sluice_serving` loads `models` with: the flags, then the files they name.
    pub fn serve_config(&self, home: &Path, models: Vec<String>) -> anyhow::Result<ServeConfig> {
        let deploy = self.deploy_config.as_deref().map(sluice_serving::read_deploy_config).transpose()?;
        let per_model = self.model_config.as_deref().map(sluice_serving::read_model_config).transpose()?;
        Ok(ServeConfig {
            home: home.to_path_buf(),
            models,
            sources: Vec::new(),
            defaults: self.defaults(),
            deploy: deploy.unwrap_or_default(),
            per_model: per_model.unwrap_or_default(),
            ort_lib: self.ort_lib.clone(),
        })
    }
}

pub(crate) fn tokio_runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        if n == 0 {
            bail!("--http-threads must be at least 1");
        }
        builder.worker_threads(n);
    }
    Ok(builder.enable_all().thread_name("sluice-http").build()?)
}

/// Resolves on Ctrl-C or SIGTERM. Both handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM that arrives between a server's first answer and that poll
/// (another worker thread can answer first) would otherwise kill the process instead of draining
/// it. Call it inside the runtime, before the server can answer anything.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            () = received(interrupt.as_mut()) => {}
            () = received(term.as_mut()) => {}
        }
        eprintln!("sluice: shutting down; finishing in-flight requests");
    }
}

/// The next delivery of `signal`; never, when its handler could not be installed.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Checks the settings, binds, loads, prints `banner(addr)` and serves until Ctrl-C or SIGTERM.
/// `service` names the service a replica serves (for collected data); `serve` run by hand is
/// its own service, `serve`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_server(
    host: &str,
    port: u16,
    unix_socket: Option<&Path>,
    grpc_port: Option<u16>,
    tuning: &TuningArgs,
    limits: sluice_http1::Limits,
    config: ServeConfig,
    service: &str,
    banner: impl FnOnce(SocketAddr, &Repository) -> String,
) -> anyhow::Result<()> {
    let config_home = config.home.clone();
    let prepared = sluice_serving::prepare(config)?;
    let runtime = tokio_runtime(tuning.http_threads)?;
    // Bind before loading so a busy port fails at once, not after a slow model load.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((host, port)))
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    let grpc = match grpc_port {
        Some(port) => Some(
            runtime
                .block_on(tokio::net::TcpListener::bind((host, port)))
                .with_context(|| format!("cannot listen for gRPC on {host}:{port}"))?,
        ),
        None => None,
    };
    let unix = match unix_socket {
        Some(path) => Some(runtime.block_on(async { sluice_http1::stream::bind_unix(path) })?),
        None => None,
    };
    let shutdown = {
        let _runtime = runtime.enter();
        shutdown_signal()
    };
    let repository = prepared.load()?;
    let deployment = match tuning.deploy_config.as_deref() {
        Some(path) => Some(sluice_core::DeploymentConfig::from_json(
            &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        )?),
        None => None,
    };
    let collector = collector(&config_home, deployment.as_ref(), service)?;
    trace_for_app_insights(deployment.as_ref());
    // `serve` run by hand is no control plane's service.
    let service_name = (service != "serve").then(|| Arc::from(service));
    let config = ServerConfig { max_body_bytes: tuning.max_body_bytes, limits, collector, service: service_name };
    let state = AppState::new(repository, config);
    let mut line = banner(addr, &state.repository);
    // The gRPC front stops with the HTTP one: at the same signal, after in-flight calls.
    let (stop_grpc, grpc_stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stop_grpc.send_replace(true);
    };
    let grpc = match grpc {
        Some(listener) => {
            line.push_str(&format!(", OIP gRPC on {}", listener.local_addr()?));
            let options = sluice_grpc::Options {
                max_message_bytes: tuning.max_body_bytes,
                max_connections: state.config.limits.max_connections,
                first_bytes_timeout: state.config.limits.header_read_timeout,
                ..Default::default()
            };
            let state = state.clone();
            let handler = move |request| {
                let state = state.clone();
                async move { sluice_server::call(&state, request).await }
            };
            let mut stopped = grpc_stopped;
            let stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(runtime.spawn(sluice_grpc::serve(listener, handler, options, stopped)))
        }
        None => None,
    };
    println!("{line}");
    let served = runtime.block_on(sluice_server::serve(listener, unix, state, shutdown));
    if let Some(grpc) = grpc {
        runtime.block_on(grpc)?.context("the gRPC front failed")?;
    }
    if let Some(path) = unix_socket {
        let _ = std::fs::remove_file(path);
    }
    served?;
    eprintln!("sluice: stopped");
    Ok(())
}

pub(crate) fn listing(repository: &Repository) -> String {
    repository.all().map(|m| format!("{}:{}", m.name(), m.version())).collect::<Vec<_>>().join(", ")
}

pub fn serve(home: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let config = args.tuning.serve_config(home, args.models)?;
    let limits = args.front_door.limits()?;
    let addr_file = args.addr_file;
    let unix_socket = args.unix_socket;
    let service = args.service_name.clone();
    let (host, port, grpc) = (&args.host, args.port, args.grpc_port);
    run_server(host, port, unix_socket.as_deref(), grpc, &args.tuning, limits, config, &service, |addr, repo| {
        if let Some(path) = &addr_file {
            // The TCP address, then the Unix socket's when there is one. Written whole then
            // renamed, so a reader never sees half of it.
            let mut text = addr.to_string();
            if let Some(socket) = &unix_socket {
                text.push('\n');
                text.push_str(&sluice_routing::unix_address(socket));
            }
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::error!(error = %e, path = %path.display(), "cannot write the address file");
            }
        }
        format!("sluice: serving {} on http://{addr}", listing(repo))
    })
}

/// Where a replica whose deployment config has `enable_app_insights: true` sends its traces when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` names no collector: the OpenTelemetry collector beside it (the
/// OTLP/HTTP port), which forwards to Application Insights with its Azure Monitor exporter.
const APP_INSIGHTS_COLLECTOR: &str = "http://localhost:4318";

/// Turns tracing on for `enable_app_insights: true` (tracing is already on when the variable is
/// set).
fn trace_for_app_insights(deployment: Option<&sluice_core::DeploymentConfig>) {
    if deployment.is_some_and(|d| d.enable_app_insights == Some(true)) && !sluice_telemetry::trace::enabled() {
        sluice_telemetry::trace::init_from_env("sluice-serve", Some(APP_INSIGHTS_COLLECTOR));
    }
}

/// The model data collector the deployment config asks for (`collect_model_data`), writing
/// under `<home>/collected/<service>/`.
fn collector(
    home: &Path,
    deployment: Option<&sluice_core::DeploymentConfig>,
    service: &str,
) -> anyhow::Result<Option<Arc<sluice_collect::Collector>>> {
    let Some(config) = deployment else { return Ok(None) };
    if config.collect_model_data != Some(true) {
        return Ok(None);
    }
    let rate = config.collect_model_data_sample_rate.unwrap_or(1.0);
    let settings = sluice_collect::CollectConfig::new(home.join("collected"), service, rate);
    let dir = settings.root.join(service);
    let collector = sluice_collect::Collector::start(settings)
        .with_context(|| format!("starting model data collection in {}", dir.display()))?;
    tracing::info!(service, sample_rate = rate, dir = %dir.display(), "collecting model data");
    Ok(Some(collector))
}

pub(crate) fn bundled_models_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir);
    }
    let local = PathBuf::from("models");
    if local.join("mlp-small.onnx").is_file() {
        return Ok(local);
    }
    let source_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    if source_tree.join("mlp-small.onnx").is_file() {
        return Ok(source_tree);
    }
    bail!("cannot find the bundled models: run from the sluice checkout or pass --models-dir")
}
