//! The Sluice gateway: the front door in front of scoring replicas. It authenticates callers (key
//! digests, or tokens verified offline against the control plane's public keys), picks an
//! endpoint version by weight, pin header or sticky key, mirrors a share to a shadow, forwards to a
//! replica over keep-alive pools with ejection of failing replicas, and records per-version
//! metrics. Configuration arrives whole from the control plane and is swapped atomically; the last
//! one keeps serving while the control plane is away. By design this crate depends on no model or
//! engine crate, so a gateway image carries no ONNX Runtime or libtorch.
#![forbid(unsafe_code)]

pub mod error;
pub mod grpc;
pub mod metrics;
mod proxy;
mod server;
mod swagger;
mod table;
mod upstream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::StatusCode;
use sluice_auth::Algorithm;

pub use metrics::GatewayMetrics;
pub use server::serve;
pub use sluice_routing::{GatewayConfig, random_seed};
pub use table::{CONSECUTIVE_ERRORS, ConfigError};
use table::{ReplicaSet, RouteTable};

/// Gateway settings fixed at start.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The only algorithm tokens may be signed with; a token's own `alg` is never trusted.
    pub algorithm: Algorithm,
    /// Seed of the weighted picks, for reproducible splits in tests and experiments.
    pub seed: u64,
    /// Largest request body; larger ones get 413 before reaching a replica.
    pub max_body_bytes: usize,
    /// Time a replica has to send its response headers before the caller gets 504.
    pub upstream_timeout: Duration,
    /// Time a shadow copy may take before it is given up.
    pub shadow_timeout: Duration,
    /// Shadow copies in flight at once; more are skipped and counted.
    pub max_shadow_in_flight: usize,
    /// How long a gateway thread with one request in flight busy-polls for the replica's answer,
    /// and one with none for a caller's next request, before it sleeps (see
    /// `sluice_http1::poll`): lower latency at low concurrency for up to this much CPU per wait.
    /// Zero turns it off.
    pub busy_poll: Duration,
    /// Timeouts and the connection cap every caller is held to.
    pub limits: sluice_http1::Limits,
    /// How long a pooled connection to a replica may stay idle before the gateway closes it;
    /// shorter than the replicas' own idle timeout, so the gateway closes first.
    pub upstream_idle_timeout: Duration,
    /// Serve HTTPS with this certificate (reloaded on change) instead of plain HTTP.
    pub tls: Option<sluice_http1::tls::Tls>,
    /// Write one access log line per request (target `sluice::access`, INFO).
    pub access_log: bool,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            algorithm: Algorithm::EdDSA,
            seed: random_seed(),
            max_body_bytes: 16 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(120),
            shadow_timeout: Duration::from_secs(30),
            max_shadow_in_flight: 64,
            busy_poll: Duration::from_micros(DEFAULT_BUSY_POLL_MICROS),
            limits: sluice_http1::Limits::default(),
            upstream_idle_timeout: Duration::from_secs(30),
            tls: None,
            access_log: true,
        }
    }
}

/// Default of [`GatewaySettings::busy_poll`], in microseconds: longer than a small model's
/// answer takes, so at low concurrency the gateway rarely sleeps between request and answer.
pub const DEFAULT_BUSY_POLL_MICROS: u64 = 200;

/// A running gateway's state; share it as `Arc<Gateway>`.
pub struct Gateway {
    table: ArcSwap<RouteTable>,
    configured: AtomicBool,
    replicas: ReplicaSet,
    /// Every gateway series, rendered at `/metrics`.
    pub metrics: GatewayMetrics,
    settings: GatewaySettings,
    /// Counter of random draws; see [`sluice_routing::split::unit_interval_at`].
    draws: AtomicU64,
    clock: Instant,
    shadow_slots: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    /// A gateway with no routes yet; it reports not ready until the first configuration.
    pub fn new(settings: GatewaySettings) -> Arc<Self> {
        Arc::new(Gateway {
            table: ArcSwap::from_pointee(RouteTable::default()),
            configured: AtomicBool::new(false),
            replicas: ReplicaSet::default(),
            metrics: GatewayMetrics::default(),
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(settings.max_shadow_in_flight)),
            settings,
            draws: AtomicU64::new(0),
            clock: Instant::now(),
        })
    }

    /// Swaps in a new configuration. Requests in flight finish on the table they started with;
    /// connections to replicas that stay are kept. A configuration that does not hold together is
    /// refused whole and the current one stays.
    pub fn apply(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let table = RouteTable::build(config, self.settings.algorithm, &self.replicas, &self.metrics)?;
        self.table.store(Arc::new(table));
        self.configured.store(true, Ordering::Release);
        self.metrics.reloads.inc();
        Ok(())
    }

    /// Generation of the configuration being served.
    pub fn generation(&self) -> u64 {
        self.table.load().generation
    }

    /// Whether a configuration has been applied.
    pub fn is_configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

/// Serves the gateway on `threads` single-threaded runtimes, each accepting on its own
/// `SO_REUSEPORT` socket bound to `addr` (the kernel spreads connections over them), until
/// `shutdown` turns true; returns the bound address through `bound` as soon as it is known.
/// Measured against one multi-threaded runtime, this keeps each request and its upstream
/// connection on one thread: no work stealing or cross-thread wake-ups per proxied request.
pub fn serve_on_threads(
    addr: std::net::SocketAddr,
    threads: usize,
    gateway: Arc<Gateway>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    bound: std::sync::mpsc::Sender<std::io::Result<std::net::SocketAddr>>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    on_threads("sluice-gw", addr, threads, gateway, shutdown, bound, serve)
}

/// [`serve_on_threads`] for the gateway's gRPC front ([`grpc::serve`]): OIP v2 over gRPC on
/// `threads` single-threaded runtimes of its own, with the same route table, auth and upstream
/// pools' behaviour as the HTTP front.
pub fn serve_grpc_on_threads(
    addr: std::net::SocketAddr,
    threads: usize,
    gateway: Arc<Gateway>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    bound: std::sync::mpsc::Sender<std::io::Result<std::net::SocketAddr>>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    on_threads("sluice-gw-grpc", addr, threads, gateway, shutdown, bound, grpc::serve)
}

/// Runs `serve` on `threads` single-threaded runtimes, each with its own `SO_REUSEPORT` listener
/// on `addr`; see [`serve_on_threads`].
fn on_threads<S, F>(
    name: &'static str,
    addr: std::net::SocketAddr,
    threads: usize,
    gateway: Arc<Gateway>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    bound: std::sync::mpsc::Sender<std::io::Result<std::net::SocketAddr>>,
    serve: S,
) -> std::thread::JoinHandle<std::io::Result<()>>
where
    S: Fn(tokio::net::TcpListener, Arc<Gateway>, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F
        + Send
        + Copy
        + 'static,
    F: Future<Output = std::io::Result<()>>,
{
    std::thread::spawn(move || {
        let mut addr = addr;
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let (gateway, mut shutdown) = (gateway.clone(), shutdown.clone());
            let worker = std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move {
                    let listener = (|| {
                        let socket = if addr.is_ipv4() {
                            tokio::net::TcpSocket::new_v4()?
                        } else {
                            tokio::net::TcpSocket::new_v6()?
                        };
                        socket.set_reuseport(true)?;
                        socket.set_reuseaddr(true)?;
                        socket.bind(addr)?;
                        socket.listen(1024)
                    })();
                    let listener = match listener {
                        Ok(l) => {
                            let _ = tx.send(l.local_addr());
                            l
                        }
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    serve(
                        listener,
                        gateway,
                        Box::pin(async move {
                            let _ = shutdown.wait_for(|s| *s).await;
                        }),
                    )
                    .await
                })
            });
            let worker = match worker {
                Ok(w) => w,
                Err(e) => {
                    let _ = bound.send(Err(e));
                    return Ok(());
                }
            };
            // Later sockets join the port the first one got (it may have been 0).
            match rx.recv() {
                Ok(Ok(a)) => addr = a,
                Ok(Err(e)) => {
                    let _ = bound.send(Err(e));
                    return worker.join().unwrap_or(Ok(()));
                }
                Err(_) => return worker.join().unwrap_or(Ok(())),
            }
            workers.push(worker);
        }
        let _ = bound.send(Ok(addr));
        let mut result = Ok(());
        for w in workers {
            if let Ok(Err(e)) = w.join() {
                result = Err(e);
            }
        }
        result
    })
}

/// Where a standalone gateway gets its configuration.
#[derive(Debug, Clone)]
pub struct ControlSource {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:8001`.
    pub url: String,
    /// The credential the control plane gave gateways.
    pub token: String,
}

/// How often a gateway sends the control plane its traffic counters.
pub const REPORT_PERIOD: Duration = Duration::from_secs(1);

/// Sends the control plane this gateway's per-version counters every [`REPORT_PERIOD`], so
/// `endpoint show` adds up what every gateway saw. A failed report is dropped: the next one
/// carries the same cumulative counters.
pub async fn report_to_control(gateway: Arc<Gateway>, source: ControlSource) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let id = format!("{:016x}", sluice_routing::random_seed());
    let url = format!("{}/v1/gateway/report", source.url);
    loop {
        tokio::time::sleep(REPORT_PERIOD).await;
        let report = gateway.metrics.report(&id);
        if let Err(e) = client.post(&url).bearer_auth(&source.token).json(&report).send().await {
            tracing::debug!(error = %e, "cannot send the traffic report; the next one will");
        }
    }
}

/// Follows the control plane's configuration with long polls, applying each new generation. While
/// the control plane is unreachable the gateway keeps serving its last configuration and retries.
pub async fn follow_control(gateway: Arc<Gateway>, source: ControlSource) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default();
    let mut outage = false;
    loop {
        let url = format!("{}/v1/gateway/config?after={}&wait_ms=25000", source.url, gateway.generation());
        let result = client.get(&url).bearer_auth(&source.token).send().await;
        let pause = match result {
            Ok(r) if r.status() == StatusCode::NOT_MODIFIED => None,
            Ok(r) if r.status().is_success() => match r.json::<GatewayConfig>().await {
                Ok(config) => {
                    match gateway.apply(&config) {
                        Ok(()) => tracing::info!(generation = config.generation, "gateway configuration applied"),
                        Err(e) => {
                            tracing::error!(error = %e, "control plane sent a configuration that cannot be served; keeping the current one")
                        }
                    }
                    if outage {
                        tracing::info!("control plane reachable again");
                        outage = false;
                    }
                    None
                }
                Err(e) => Some(format!("unreadable configuration: {e}")),
            },
            Ok(r) => Some(format!("control plane answered {}", r.status())),
            Err(e) => Some(format!("control plane unreachable: {e}")),
        };
        if let Some(problem) = pause {
            if !outage {
                tracing::warn!(%problem, generation = gateway.generation(), "serving the last configuration");
                outage = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
