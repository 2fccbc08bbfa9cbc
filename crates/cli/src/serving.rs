//! `sluice serve`: resolve models, load them into the runtime, serve HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use sluice_backend_ort::{OrtBackend, OrtOptions};
use sluice_core::{Backend, DeploymentConfig, Device, DeviceFallback};
use sluice_registry::{ModelFormat, ModelRef, Registry};
use sluice_runtime::{BatchConfig, Execution, ModelConfig, ModelHandle};
use sluice_server::{AppState, Repository, ServerConfig};

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
    #[arg(long, env = "SLUICE_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for admission per model; beyond this they get 503 at once.
    #[arg(long, env = "SLUICE_MAX_QUEUED_REQUESTS", default_value_t = 256)]
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

/// Per-model settings from `--model-config`; Azure ML deployment-config names where one exists.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelOverrides {
    instance_count: Option<usize>,
    intra_op_threads: Option<usize>,
    execution: Option<String>,
    max_batch_size: Option<usize>,
    max_queue_delay_us: Option<u64>,
    preferred_batch_sizes: Option<Vec<usize>>,
    replica_max_concurrent_requests: Option<usize>,
    max_queued_requests: Option<usize>,
    max_request_wait_time: Option<u64>,
    scoring_timeout_ms: Option<u64>,
    device: Option<String>,
    device_fallback: Option<String>,
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
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// A model to load: where its bytes are, what to call it, and how to run it.
struct ModelSource {
    name: String,
    version: String,
    path: PathBuf,
    format: ModelFormat,
    config: Option<serde_json::Value>,
    /// The registered signature (what TorchScript models run with).
    signature: sluice_core::ModelSignature,
}

fn resolve(home: &Path, specs: &[String]) -> anyhow::Result<Vec<ModelSource>> {
    let mut registry = None;
    specs
        .iter()
        .map(|spec| {
            let path = Path::new(spec);
            if path.is_file() {
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .ok_or_else(|| anyhow::anyhow!("cannot name a model after {}", path.display()))?;
                return Ok(ModelSource {
                    name: name.to_owned(),
                    version: "1".into(),
                    path: path.to_path_buf(),
                    format: ModelFormat::Onnx,
                    config: None,
                    signature: Default::default(),
                });
            }
            if spec.ends_with(".onnx") || spec.contains('/') {
                bail!("model file {spec} does not exist");
            }
            let reference: ModelRef = spec.parse()?;
            if registry.is_none() {
                registry = Some(Registry::open(home)?);
            }
            let registry = registry.as_ref().expect("opened above");
            let mv = registry.resolve(&reference).with_context(|| format!("cannot serve {spec}"))?;
            Ok(ModelSource {
                name: mv.name,
                version: mv.version.to_string(),
                path: mv.artifact_path,
                format: mv.format,
                config: mv.config,
                signature: mv.signature,
            })
        })
        .collect()
}

impl ModelOverrides {
    /// `self`'s settings, falling back to `base` for the ones it leaves out.
    fn or(&self, base: &ModelOverrides) -> ModelOverrides {
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
}

/// Reads and checks a deployment config and returns the settings a scoring process applies.
fn load_deploy_config(path: Option<&Path>) -> anyhow::Result<ModelOverrides> {
    let Some(path) = path else { return Ok(ModelOverrides::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config = DeploymentConfig::from_json(&text).with_context(|| format!("{}", path.display()))?;
    if config.num_replicas.is_some_and(|n| n > 1) || config.autoscale_enabled == Some(true) {
        tracing::info!("num_replicas and autoscale_* apply to services; `sluice serve` is one replica");
    }
    Ok(ModelOverrides {
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
    })
}

fn load_overrides(path: Option<&Path>) -> anyhow::Result<BTreeMap<String, ModelOverrides>> {
    let Some(path) = path else { return Ok(BTreeMap::new()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("invalid model config {}", path.display()))
}

/// How one model is loaded: runtime settings, engine options, and what to do without its GPU.
struct LoadPlan {
    config: ModelConfig,
    engine: OrtOptions,
    fallback: DeviceFallback,
}

fn model_config(tuning: &TuningArgs, o: &ModelOverrides) -> anyhow::Result<LoadPlan> {
    let defaults = ModelConfig::for_this_machine();
    let config = ModelConfig {
        instance_count: o.instance_count.or(tuning.instances).unwrap_or(defaults.instance_count),
        execution: match &o.execution {
            Some(e) => e.parse().map_err(anyhow::Error::msg)?,
            None => tuning.execution,
        },
        batching: Some(BatchConfig {
            max_batch_size: o.max_batch_size.unwrap_or(tuning.max_batch_size),
            max_queue_delay: Duration::from_micros(o.max_queue_delay_us.unwrap_or(tuning.max_queue_delay_us)),
            preferred_batch_sizes: o
                .preferred_batch_sizes
                .clone()
                .unwrap_or_else(|| tuning.preferred_batch_sizes.clone()),
        })
        .filter(|b| b.max_batch_size > 1),
        max_concurrent_requests: o.replica_max_concurrent_requests.unwrap_or(tuning.max_concurrent_requests),
        max_queued_requests: o.max_queued_requests.unwrap_or(tuning.max_queued_requests),
        max_request_wait: Duration::from_millis(o.max_request_wait_time.unwrap_or(tuning.max_request_wait_ms)),
        scoring_timeout: Duration::from_millis(o.scoring_timeout_ms.unwrap_or(tuning.scoring_timeout_ms)),
    };
    if config.scoring_timeout.is_zero() {
        bail!("scoring_timeout_ms must be greater than 0");
    }
    if config.instance_count == 0 {
        bail!("instance_count (--instances) must be at least 1");
    }
    if config.max_concurrent_requests == 0 {
        bail!("replica_max_concurrent_requests (--max-concurrent-requests) must be at least 1");
    }
    let intra_op_threads = o.intra_op_threads.unwrap_or(tuning.intra_op_threads);
    if intra_op_threads == 0 {
        bail!("intra_op_threads must be at least 1");
    }
    let device: Device = o.device.as_deref().unwrap_or("cpu").parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let fallback: DeviceFallback =
        o.device_fallback.as_deref().unwrap_or("fail").parse().map_err(|e: String| anyhow::anyhow!(e))?;
    Ok(LoadPlan { config, engine: OrtOptions { intra_op_threads, device }, fallback })
}

/// The deployment config and per-model settings, read and checked before anything starts.
struct Settings {
    deploy: ModelOverrides,
    per_model: BTreeMap<String, ModelOverrides>,
}

fn load_settings(tuning: &TuningArgs, sources: &[ModelSource]) -> anyhow::Result<Settings> {
    let deploy = load_deploy_config(tuning.deploy_config.as_deref())?;
    let per_model = load_overrides(tuning.model_config.as_deref())?;
    if let Some(unknown) = per_model.keys().find(|k| !sources.iter().any(|s| &s.name == *k)) {
        bail!("the model config names '{unknown}', which is not among the models being served");
    }
    for source in sources {
        let merged = per_model.get(&source.name).cloned().unwrap_or_default().or(&deploy);
        model_config(tuning, &merged).with_context(|| format!("model {}", source.name))?;
    }
    Ok(Settings { deploy, per_model })
}

/// Loads every model and returns the repository to serve. A model that fails to load is logged
/// and answered with 503 naming the reason, while the others serve; if none loads, this fails.
fn load_models(
    home: &Path,
    tuning: &TuningArgs,
    settings: &Settings,
    sources: Vec<ModelSource>,
) -> anyhow::Result<Repository> {
    let (deploy, overrides) = (&settings.deploy, &settings.per_model);
    // ONNX Runtime is provisioned only when an ONNX model is served.
    let mut ort_env = None;
    let mut repository = Repository::default();
    let mut failures = Vec::new();
    let total = sources.len();
    for source in sources {
        let merged = overrides.get(&source.name).cloned().unwrap_or_default().or(deploy);
        let plan = model_config(tuning, &merged).with_context(|| format!("model {}", source.name))?;
        let started = Instant::now();
        let instances = plan.config.instance_count;
        let mut load = |device: Device| -> anyhow::Result<ModelHandle> {
            let config = plan.config.clone();
            let engine = OrtOptions { device, ..plan.engine.clone() };
            match source.format {
                ModelFormat::Onnx => {
                    if ort_env.is_none() {
                        let library = sluice_backend_ort::locate_or_provision(tuning.ort_lib.as_deref(), home)?;
                        ort_env = Some(sluice_backend_ort::init(&library)?);
                    }
                    let env = ort_env.expect("initialised above; this is a bug");
                    Ok(ModelHandle::start(&source.name, &source.version, config, |_| {
                        OrtBackend::load(env, &source.path, &engine).map(|b| Box::new(b) as Box<dyn Backend>)
                    })?)
                }
                ModelFormat::Plugin => {
                    if device != Device::Cpu {
                        bail!("plugin models run where their plugin puts them; device must be cpu, got {device}");
                    }
                    let plugin = crate::plugins::PluginConfig::from_config(source.config.as_ref())?;
                    let library = sluice_backend_plugin::PluginLibrary::open(&plugin.library)?;
                    Ok(ModelHandle::start(&source.name, &source.version, config, |_| {
                        sluice_backend_plugin::PluginBackend::load(library.clone(), &source.path, &plugin.options)
                            .map(|b| Box::new(b) as Box<dyn Backend>)
                    })?)
                }
                ModelFormat::Torchscript => {
                    let signature = source.signature.clone();
                    let options =
                        sluice_backend_torch::TorchOptions { device, intra_op_threads: engine.intra_op_threads };
                    Ok(ModelHandle::start(&source.name, &source.version, config, |_| {
                        sluice_backend_torch::load(&source.path, &signature, &options)
                    })?)
                }
            }
        };
        let device = plan.engine.device;
        let loaded = match load(device) {
            Err(e) if device != Device::Cpu && plan.fallback == DeviceFallback::Cpu => {
                tracing::warn!(model = %source.name, %device, error = %format!("{e:#}"), "GPU unavailable; running on cpu (device_fallback)");
                load(Device::Cpu)
            }
            other => other,
        };
        let options = &plan.engine;
        match loaded {
            Ok(handle) => {
                tracing::info!(
                    model = %source.name,
                    version = %source.version,
                    format = %source.format,
                    instances,
                    intra_op_threads = options.intra_op_threads,
                    load_ms = started.elapsed().as_millis() as u64,
                    "model loaded"
                );
                repository.insert(handle).map_err(anyhow::Error::msg)?;
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(model = %source.name, version = %source.version, error = %reason, "model failed to load; serving the others");
                failures.push(format!("{}:{}: {reason}", source.name, source.version));
                repository.insert_failed(&source.name, reason);
            }
        }
    }
    if failures.len() == total {
        bail!("no model could be loaded: {}", failures.join("; "));
    }
    Ok(repository)
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

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("sluice: shutting down; finishing in-flight requests");
}

/// Binds, loads, prints `banner(addr)` and serves until Ctrl-C or SIGTERM.
fn run_server(
    home: &Path,
    host: &str,
    port: u16,
    unix_socket: Option<&Path>,
    tuning: &TuningArgs,
    sources: Vec<ModelSource>,
    banner: impl FnOnce(SocketAddr, &Repository) -> String,
) -> anyhow::Result<()> {
    let settings = load_settings(tuning, &sources)?;
    let runtime = tokio_runtime(tuning.http_threads)?;
    // Bind before loading so a busy port fails at once, not after a slow model load.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((host, port)))
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let addr = listener.local_addr()?;
    let unix = match unix_socket {
        Some(path) => Some(runtime.block_on(async { bind_unix(path) })?),
        None => None,
    };
    let repository = load_models(home, tuning, &settings, sources)?;
    let state = AppState::new(repository, ServerConfig { max_body_bytes: tuning.max_body_bytes });
    println!("{}", banner(addr, &state.repository));
    let served = runtime.block_on(sluice_server::serve(listener, unix, state, shutdown_signal()));
    if let Some(path) = unix_socket {
        let _ = std::fs::remove_file(path);
    }
    served?;
    eprintln!("sluice: stopped");
    Ok(())
}

/// Listens on the Unix socket `path`, first removing a socket file an earlier run left there
/// (never a file of another kind).
fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("--unix-socket {}: the path exists and is not a socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("cannot replace the stale socket {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path).with_context(|| format!("cannot listen on the Unix socket {}", path.display()))
}

fn listing(repository: &Repository) -> String {
    repository.all().map(|m| format!("{}:{}", m.name(), m.version())).collect::<Vec<_>>().join(", ")
}

pub fn serve(home: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let sources = resolve(home, &args.models)?;
    let addr_file = args.addr_file;
    let unix_socket = args.unix_socket;
    run_server(home, &args.host, args.port, unix_socket.as_deref(), &args.tuning, sources, |addr, repo| {
        if let Some(path) = &addr_file {
            // The TCP address, then the Unix socket's when there is one. Written whole then
            // renamed, so a reader never sees half of it.
            let mut text = addr.to_string();
            if let Some(socket) = &unix_socket {
                text.push('\n');
                text.push_str(&sluice_http1::stream::unix_address(socket));
            }
            let tmp = path.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::error!(error = %e, path = %path.display(), "cannot write the address file");
            }
        }
        format!("sluice: serving {} on http://{addr}", listing(repo))
    })
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
