//! `sluice control`, `sluice gateway` and `sluice up` (both in one process, in front of the
//! bundled models deployed as services).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_control::target::ReplicaTarget;
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
    /// File holding the admin credential to use (e.g. a mounted Kubernetes Secret) [default: one
    /// created in the data directory on first start]. At least 32 characters.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the gateway credential to use, which gateways and remote replicas present
    /// [default: one created in the data directory on first start]. At least 32 characters.
    #[arg(long, env = "SLUICE_GATEWAY_TOKEN_FILE")]
    pub gateway_token_file: Option<PathBuf>,
    /// Seconds an autoscaled service's utilization must stay below its target before replicas
    /// are removed (scaling up is immediate).
    #[arg(long, env = "SLUICE_AUTOSCALE_DOWN_DELAY_SECONDS", default_value_t = 60)]
    pub autoscale_down_delay_seconds: u64,
}

/// Where `sluice control` runs replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// `sluice serve` child processes on this host.
    Local,
    /// One Deployment per service in a Kubernetes namespace (in-cluster config or KUBECONFIG).
    Kubernetes,
    /// One container per replica on a Docker Engine, on a user-defined network.
    Docker,
}

/// The deploy target of `sluice control` and its settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Where replicas run.
    #[arg(long, env = "SLUICE_TARGET", value_enum, default_value_t = TargetKind::Local)]
    pub target: TargetKind,
    /// Image replicas run (kubernetes, docker); its entrypoint is `sluice`.
    #[arg(long, env = "SLUICE_REPLICA_IMAGE", required_if_eq_any = [("target", "kubernetes"), ("target", "docker")])]
    pub replica_image: Option<String>,
    /// URL at which replicas reach this control plane to fetch their models (kubernetes, docker),
    /// e.g. http://sluice-control.sluice.svc:8001.
    #[arg(long, env = "SLUICE_ADVERTISE_URL", required_if_eq_any = [("target", "kubernetes"), ("target", "docker")])]
    pub advertise_url: Option<String>,
    /// Namespace of the service Deployments (kubernetes) [default: this pod's namespace, else
    /// `default`].
    #[arg(long, env = "SLUICE_NAMESPACE")]
    pub namespace: Option<String>,
    /// imagePullPolicy of replica pods (kubernetes): IfNotPresent, Always or Never.
    #[arg(long, env = "SLUICE_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// Secret holding the gateway credential under the key `gateway-token`, mounted into replica
    /// pods so they can fetch models (kubernetes). The Helm chart makes it.
    #[arg(long, env = "SLUICE_REPLICA_TOKEN_SECRET", default_value = "sluice-tokens")]
    pub replica_token_secret: String,
    /// A label KEY=VALUE added to every replica Deployment and pod (kubernetes); repeat for
    /// several. The Helm chart adds its release's instance label, which its NetworkPolicy selects.
    #[arg(long = "replica-label", env = "SLUICE_REPLICA_LABELS", value_delimiter = ',', value_name = "KEY=VALUE")]
    pub replica_labels: Vec<String>,
    /// A Secret replica pods pull their image with (kubernetes); repeat for several.
    #[arg(long = "replica-image-pull-secret", env = "SLUICE_REPLICA_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub replica_image_pull_secrets: Vec<String>,
    /// User-defined network replica containers join (docker); the control plane and gateways must
    /// be on it too.
    #[arg(long, env = "SLUICE_DOCKER_NETWORK", required_if_eq("target", "docker"))]
    pub docker_network: Option<String>,
    /// The Docker Engine's socket (docker).
    #[arg(long, env = "SLUICE_DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
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
    /// Serve a fixed configuration from this JSON file instead of following a control plane (the
    /// sidecar layout: one pod with `sluice serve` and a gateway). Its schema is what the control
    /// plane publishes at /v1/gateway/config; replicas may be `unix:/path/to/socket`.
    #[arg(long, env = "SLUICE_GATEWAY_ROUTES_FILE", conflicts_with_all = ["control_url", "control_token_file"])]
    pub routes_file: Option<PathBuf>,
    /// Also serve the Open Inference Protocol over gRPC on this port of --host (0 picks a free
    /// one), with the same routes, auth (metadata `authorization: Bearer KEY`), version choice
    /// and pinning (`x-sluice-version`) as HTTP, over TLS when --tls-cert is given; off when not
    /// given.
    #[arg(long, env = "SLUICE_GATEWAY_GRPC_PORT", value_name = "PORT")]
    pub grpc_port: Option<u16>,
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
    pub target: TargetArgs,
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
    /// Port of the gateway's Open Inference Protocol gRPC front [default: 8003, or a free one
    /// when --port is 0].
    #[arg(long, env = "SLUICE_GATEWAY_GRPC_PORT", value_name = "PORT")]
    pub grpc_port: Option<u16>,
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

/// The control plane's settings; `local` replicas need ONNX Runtime on this host.
fn control_settings(home: &Path, args: &ControlArgs, local: bool) -> anyhow::Result<ControlSettings> {
    if args.token_ttl_seconds == 0 {
        bail!("--token-ttl-seconds must be at least 1");
    }
    // Provisioned once here, so replicas starting together do not all fetch it. Replicas in
    // containers bring their own.
    let ort_lib = if local { Some(sluice_serving::ort_library(args.ort_lib.as_deref(), home)?) } else { None };
    Ok(ControlSettings {
        home: home.to_path_buf(),
        exe: std::env::current_exe().context("cannot find the sluice executable for replicas")?,
        token_ttl: Duration::from_secs(args.token_ttl_seconds),
        stop_grace: Duration::from_secs(args.stop_grace_seconds),
        ort_lib,
        admin_token_file: args.admin_token_file.clone(),
        gateway_token_file: args.gateway_token_file.clone(),
        autoscale_down_delay: Duration::from_secs(args.autoscale_down_delay_seconds),
    })
}

/// Binds the admin API, starts the control plane and serves the API in the background.
async fn start_control(
    home: &Path,
    args: &ControlArgs,
    limits: sluice_http1::Limits,
    remote: Option<Arc<dyn ReplicaTarget>>,
) -> anyhow::Result<(Arc<ControlPlane>, SocketAddr)> {
    let settings = control_settings(home, args, remote.is_none())?;
    let (listener, addr) =
        bind(&args.control_host, args.control_port).await.context("the control plane's admin API")?;
    let cp = ControlPlane::start_on(settings, remote)?;
    sluice_control::write_control_url(home, &format!("http://{addr}"))?;
    let app = sluice_control::router(cp.clone());
    let admin = cp.clone();
    let is_admin = move |token: &str| admin.is_admin(token);
    tokio::spawn(async move {
        if let Err(e) = crate::admin_front::serve(listener, app, is_admin, limits, std::future::pending()).await {
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
        let remote = replica_target(home, &args).await?;
        let target = remote.as_ref().map_or("local", |t| t.name());
        let (cp, addr) = start_control(home, &args.control, args.front_door.limits()?, remote).await?;
        println!(
            "sluice: control plane on http://{addr}, replicas on the {target} target (data in {}; admin credential in {})",
            home.display(),
            sluice_control::admin_token_path(home).display()
        );
        shutdown.await;
        cp.shutdown().await;
        eprintln!("sluice: stopped");
        Ok(())
    })
}

/// The remote target `args` ask for, connected; `None` for local processes.
async fn replica_target(home: &Path, args: &ControlCmdArgs) -> anyhow::Result<Option<Arc<dyn ReplicaTarget>>> {
    let t = &args.target;
    let required = |value: &Option<String>, flag: &str| {
        value.clone().ok_or_else(|| anyhow::anyhow!("--target {:?} needs {flag}", t.target))
    };
    Ok(match t.target {
        TargetKind::Local => None,
        TargetKind::Kubernetes => {
            let namespace = match &t.namespace {
                Some(ns) => ns.clone(),
                None => std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                    .map(|ns| ns.trim().to_owned())
                    .unwrap_or_else(|_| "default".to_owned()),
            };
            let settings = sluice_target_kubernetes::KubernetesSettings {
                namespace,
                image: required(&t.replica_image, "--replica-image")?,
                image_pull_policy: t.image_pull_policy.clone(),
                control_url: required(&t.advertise_url, "--advertise-url")?,
                token_secret: t.replica_token_secret.clone(),
                extra_labels: t
                    .replica_labels
                    .iter()
                    .map(|l| match l.split_once('=') {
                        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                        _ => Err(anyhow::anyhow!("--replica-label {l:?}: expected KEY=VALUE")),
                    })
                    .collect::<anyhow::Result<_>>()?,
                image_pull_secrets: t.replica_image_pull_secrets.clone(),
            };
            let target = sluice_target_kubernetes::KubernetesTarget::connect(settings)
                .await
                .context("connecting to the Kubernetes API")?;
            Some(target)
        }
        TargetKind::Docker => {
            let settings = sluice_target_docker::DockerSettings {
                socket: t.docker_socket.clone(),
                network: required(&t.docker_network, "--docker-network")?,
                image: required(&t.replica_image, "--replica-image")?,
                control_url: required(&t.advertise_url, "--advertise-url")?,
                gateway_token: sluice_control::gateway_credential(home, args.control.gateway_token_file.as_deref())?,
            };
            let target = sluice_target_docker::DockerTarget::connect(settings)
                .await
                .with_context(|| format!("connecting to the Docker Engine at {}", t.docker_socket.display()))?;
            Some(target)
        }
    })
}

pub fn gateway(home: &Path, args: GatewayCmdArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.routes_file {
        return gateway_with_routes(path, args.host.clone(), args.port, &args);
    }
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
        let server = GatewayThreads::start(&args.host, args.port, threads, gateway.clone(), false).await?;
        let grpc = GatewayThreads::grpc(&args.host, args.grpc_port, threads, &gateway).await?;
        let source = ControlSource { url: url.clone(), token };
        tokio::spawn(sluice_gateway::report_to_control(gateway.clone(), source.clone()));
        tokio::spawn(sluice_gateway::follow_control(gateway, source));
        println!(
            "sluice: gateway on {}, following the control plane at {url}{}",
            base(server.addr),
            GatewayThreads::named(grpc.as_ref())
        );
        shutdown.await;
        server.stop_with(grpc).await?;
        eprintln!("sluice: stopped");
        Ok(())
    })
}

/// A gateway serving the fixed configuration in `path` (the sidecar layout).
fn gateway_with_routes(path: &Path, host: String, port: u16, args: &GatewayCmdArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the routes file {}", path.display()))?;
    let config: sluice_routing::GatewayConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not a gateway configuration", path.display()))?;
    let settings = args.gateway.settings(args.front_door.limits()?)?;
    let threads = args.gateway.threads()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        watch_tls(&settings);
        let gateway = Gateway::new(settings.clone());
        gateway.apply(&config).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let server = GatewayThreads::start(&host, port, threads, gateway.clone(), false).await?;
        let grpc = GatewayThreads::grpc(&host, args.grpc_port, threads, &gateway).await?;
        println!(
            "sluice: gateway on {}, serving the routes in {}{}",
            gateway_url(&settings, server.addr),
            path.display(),
            GatewayThreads::named(grpc.as_ref())
        );
        shutdown.await;
        server.stop_with(grpc).await?;
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
    /// The gateway's gRPC front on `port`, when there is one.
    async fn grpc(
        host: &str,
        port: Option<u16>,
        threads: usize,
        gateway: &Arc<Gateway>,
    ) -> anyhow::Result<Option<Self>> {
        match port {
            Some(port) => Ok(Some(GatewayThreads::start(host, port, threads, gateway.clone(), true).await?)),
            None => Ok(None),
        }
    }

    /// `, OIP gRPC on ADDR` for a started gRPC front; empty without one.
    fn named(grpc: Option<&Self>) -> String {
        grpc.map(|g| format!(", OIP gRPC on {}", g.addr)).unwrap_or_default()
    }

    /// HTTP/1.1 (`grpc` false) or the OIP gRPC front (`grpc` true) on `threads` threads.
    async fn start(host: &str, port: u16, threads: usize, gateway: Arc<Gateway>, grpc: bool) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("no address for {host}"))?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let joined = if grpc {
            sluice_gateway::serve_grpc_on_threads(addr, threads, gateway, stopped, bound_tx)
        } else {
            sluice_gateway::serve_on_threads(addr, threads, gateway, stopped, bound_tx)
        };
        let addr = tokio::task::spawn_blocking(move || bound_rx.recv())
            .await?
            .context("the gateway threads did not start")?
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        Ok(GatewayThreads { addr, stop, joined })
    }

    /// Stops accepting and returns once in-flight requests have finished.
    /// Stops this front and the gRPC one (when there is one) together: both stop accepting at
    /// once, then each lets its in-flight requests finish.
    async fn stop_with(self, grpc: Option<GatewayThreads>) -> anyhow::Result<()> {
        let grpc = async move {
            match grpc {
                Some(grpc) => grpc.stop().await,
                None => Ok(()),
            }
        };
        tokio::try_join!(self.stop(), grpc).map(|_| ())
    }

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
fn feed(gateway: Arc<Gateway>, cp: &Arc<ControlPlane>) {
    // Traffic counters go to the control plane as a standalone gateway's would, for `endpoint show`.
    let (reporter, control) = (gateway.clone(), Arc::downgrade(cp));
    tokio::spawn(async move {
        let id = format!("{:016x}", sluice_routing::random_seed());
        loop {
            tokio::time::sleep(sluice_gateway::REPORT_PERIOD).await;
            let Some(cp) = control.upgrade() else { break };
            cp.record_gateway_report(reporter.metrics.report(&id));
        }
    });
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
        let server = GatewayThreads::start(&args.host, args.port, threads, gateway.clone(), false).await?;
        // On by default in `up` (the zero-setup way to try everything); a free port with --port 0.
        // With TLS on the gateway, gRPC is served over TLS too.
        let grpc_port = args.grpc_port.or(Some(if args.port == 0 { 0 } else { DEFAULT_UP_GRPC_PORT }));
        let grpc = GatewayThreads::grpc(&args.host, grpc_port, threads, &gateway).await?;
        let addr = server.addr;
        let (cp, control_addr) = start_control(home, &args.control, limits, None).await?;
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
        let mut shown: Vec<(String, ServiceState, Option<String>)> = Vec::new();
        loop {
            let states: Vec<(String, ServiceState, Option<String>)> =
                cp.list_services()?.into_iter().map(|s| (s.name, s.state, s.reason)).collect();
            // Progress: a line per service whose state or reason changed, and the count ready.
            if states != shown {
                let ready = states.iter().filter(|(_, s, _)| *s == ServiceState::Healthy).count();
                for (name, state, reason) in states.iter().filter(|s| !shown.contains(s)) {
                    let why = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                    eprintln!("sluice: [{ready}/{} ready] {name} {state:?}{why}", states.len());
                }
                shown = states.clone();
            }
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
        let grpc_addr = grpc.as_ref().map(|g| g.addr);
        println!("{}", banner(home, &gateway_url(&gateway_settings, addr), grpc_addr, control_addr, &models));
        shutdown.await;
        server.stop_with(grpc).await?;
        cp.shutdown().await;
        eprintln!("sluice: stopped");
        Ok(())
    })
}

/// Port of `up`'s gRPC front unless --grpc-port says otherwise (8000 is the gateway's HTTP, 8001
/// the control plane's; 8002 is left alone, as Triton users know it as the metrics port).
const DEFAULT_UP_GRPC_PORT: u16 = 8003;

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

fn banner(
    home: &Path,
    gateway: &str,
    grpc: Option<SocketAddr>,
    control: SocketAddr,
    models: &[(String, String)],
) -> String {
    let exe = std::env::current_exe().map_or_else(|_| "sluice".into(), |p| p.display().to_string());
    let grpc = match grpc {
        Some(addr) => format!("on {addr}, with the same keys as metadata 'authorization: Bearer KEY'"),
        None => "off".into(),
    };
    let names: Vec<&str> = models.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "\nSluice gateway on {gateway} in front of the services {} (control plane on http://{control}; data in {home})\n\
         OIP gRPC (Triton and KServe gRPC clients) {grpc}\n\n\
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
