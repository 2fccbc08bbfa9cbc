//! The routing table built from a [`GatewayConfig`]: resolved once per configuration so that a
//! request only does map lookups and atomics. Tables are immutable and swapped whole, so a request
//! sees one consistent configuration from start to end.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::HeaderValue;
use sluice_auth::{Algorithm, TokenVerifier};

use crate::metrics::{GatewayMetrics, RouteStats};
use sluice_routing::{AuthPolicy, GatewayConfig, Role, Split, TargetKind, token_audience};

/// First ejection of a failing replica; doubles with each further ejection in a row, up to the
/// maximum (Envoy's outlier detection does the same with its base ejection time).
const EJECT_BASE: Duration = Duration::from_millis(500);
const EJECT_MAX: Duration = Duration::from_secs(30);
/// Error answers (500, 502, 504) and timeouts in a row that eject a replica that still accepts
/// connections: one is no proof of a sick replica, five in a row are (Envoy's `consecutive_5xx`).
pub const CONSECUTIVE_ERRORS: u32 = 5;

/// One scoring replica. Shared across tables by address, so its failure history survives reloads.
#[derive(Debug)]
pub struct Replica {
    /// `host:port`; shared with the upstream pool, which keys idle connections by it.
    pub addr: Arc<str>,
    /// Error answers and timeouts since the last good answer.
    consecutive_errors: AtomicU32,
    /// Ejections since the last good answer; each doubles the next pause.
    ejections: AtomicU32,
    /// Milliseconds since the gateway's clock origin before which the replica is skipped.
    ejected_until_ms: AtomicU64,
    /// Requests this gateway has sent it that are not answered yet.
    in_flight: AtomicU32,
}

impl Replica {
    fn new(addr: Arc<str>) -> Self {
        Replica {
            addr,
            consecutive_errors: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Counts a request sent to the replica until the returned guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    fn has_room(&self, capacity: Option<u32>) -> bool {
        capacity.is_none_or(|c| self.in_flight.load(Ordering::Relaxed) < c)
    }

    fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// The replica could not be reached, or sent no response: skip it for a while at once.
    /// Returns whether this started a new ejection.
    pub fn unreachable(&self, now_ms: u64) -> bool {
        self.eject(now_ms)
    }

    /// The replica answered 500, 502 or 504, or did not answer in time: ejected once that has
    /// happened [`CONSECUTIVE_ERRORS`] times in a row. A 503 is not counted: it is a replica
    /// shedding load with `Retry-After`, and ejecting it would push its load onto the others.
    /// Returns whether this started a new ejection.
    pub fn errored(&self, now_ms: u64) -> bool {
        if self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1 < CONSECUTIVE_ERRORS {
            return false;
        }
        self.consecutive_errors.store(0, Ordering::Relaxed);
        self.eject(now_ms)
    }

    fn eject(&self, now_ms: u64) -> bool {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(6);
        let pause = (EJECT_BASE * 2u32.pow(n)).min(EJECT_MAX);
        let until = now_ms + pause.as_millis() as u64;
        self.ejected_until_ms.fetch_max(until, Ordering::Relaxed) <= now_ms
    }

    /// The replica answered well: back in full rotation.
    pub fn succeeded(&self) {
        if self.consecutive_errors.load(Ordering::Relaxed) != 0 || self.ejections.load(Ordering::Relaxed) != 0 {
            self.consecutive_errors.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// A request in flight to a replica; it stops counting when dropped, whether it was answered,
/// failed or was given up.
pub struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Replicas by address, reused from one table to the next.
#[derive(Debug, Default)]
pub struct ReplicaSet {
    by_addr: Mutex<HashMap<String, Arc<Replica>>>,
}

impl ReplicaSet {
    fn get(&self, addr: &str) -> Arc<Replica> {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(addr.to_owned()).or_insert_with(|| Arc::new(Replica::new(addr.into()))).clone()
    }

    /// Forgets replicas that no configuration names any more.
    fn retain(&self, live: &HashSet<&str>) {
        let mut map = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|addr, _| live.contains(addr.as_str()));
    }

    /// Whether a configuration names the replica at `addr`.
    pub fn contains(&self, addr: &str) -> bool {
        self.by_addr.lock().unwrap_or_else(PoisonError::into_inner).contains_key(addr)
    }
}

/// The replicas of one service, picked round-robin, skipping ejected ones and ones at capacity.
#[derive(Debug)]
pub struct Pool {
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
    /// Requests one replica holds at once (see `ServiceRoute::replica_capacity`).
    pub capacity: Option<u32>,
}

/// What [`Pool::choose`] found.
pub enum Choice<'a> {
    Replica(usize, &'a Arc<Replica>),
    /// Every replica not yet tried holds as many requests as it can take.
    Full,
    /// Every replica has been tried (or there is none).
    Exhausted,
}

impl Pool {
    /// The next replica not yet `tried` (a bit per index) with room for a request, preferring
    /// ones not ejected.
    pub fn choose(&self, now_ms: u64, tried: u64) -> Choice<'_> {
        let n = self.replicas.len().min(64);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let untried = (0..n).map(|i| (start + i) % n.max(1)).filter(|i| tried & (1 << i) == 0);
        let (mut fallback, mut full) = (None, false);
        for i in untried {
            let r = &self.replicas[i];
            if !r.has_room(self.capacity) {
                full = true;
            } else if !r.ejected(now_ms) {
                return Choice::Replica(i, r);
            } else {
                fallback.get_or_insert((i, r));
            }
        }
        // Every untried replica with room is ejected: trying one beats refusing the request.
        match (fallback, full) {
            (Some((i, r)), _) => Choice::Replica(i, r),
            (None, true) => Choice::Full,
            (None, false) => Choice::Exhausted,
        }
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }
}

/// A service as the data plane sees it.
#[derive(Debug)]
pub struct ServiceTarget {
    pub name: String,
    /// The model OIP routes are rewritten to, when the service has exactly one.
    pub sole_model: Option<String>,
    pub pool: Pool,
    pub auth: AuthPolicy,
    pub stats: Arc<RouteStats>,
    /// Every request sent to the service, whichever route it came by (the autoscaler's input).
    pub busy: Arc<crate::metrics::ServiceBusy>,
    /// `x-sluice-version` of direct calls: the service's name, built once.
    pub version_header: HeaderValue,
}

/// One version of an endpoint, resolved.
#[derive(Debug)]
pub struct VersionTarget {
    pub service: Arc<ServiceTarget>,
    /// `x-sluice-version` of its responses, built once.
    pub version_header: HeaderValue,
    /// Labelled with the version's role at the time the table was built.
    pub stats: Arc<RouteStats>,
    /// The version's role in this table, for the access log.
    pub role: Role,
}

/// An endpoint as the data plane sees it.
#[derive(Debug)]
pub struct EndpointTarget {
    pub name: String,
    pub auth: AuthPolicy,
    pub split: Split,
    /// The default version's name (what `/endpoints/{e}/swagger.json` describes).
    pub default_version: String,
    pub versions: HashMap<String, VersionTarget>,
}

/// What a route resolved to.
#[derive(Debug, Clone)]
pub enum Target {
    Service(Arc<ServiceTarget>),
    Endpoint(Arc<EndpointTarget>),
}

impl Target {
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Service(_) => TargetKind::Service,
            Target::Endpoint(_) => TargetKind::Endpoint,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Target::Service(s) => &s.name,
            Target::Endpoint(e) => &e.name,
        }
    }

    pub fn auth(&self) -> &AuthPolicy {
        match self {
            Target::Service(s) => &s.auth,
            Target::Endpoint(e) => &e.auth,
        }
    }

    /// The `aud` a token for this target carries.
    pub fn audience(&self) -> String {
        token_audience(self.kind(), self.name())
    }
}

/// One immutable routing configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    pub generation: u64,
    pub services: HashMap<String, Arc<ServiceTarget>>,
    pub endpoints: HashMap<String, Arc<EndpointTarget>>,
    /// Hex digests of every key of every target, to tell "a key, but not for this" (403) from
    /// "not a key" (401).
    pub all_key_digests: HashSet<String>,
    pub verifier: Option<TokenVerifier>,
    /// OpenAPI documents made for this configuration (see `swagger.rs`).
    pub swagger: crate::swagger::Cache,
}

/// A configuration that cannot be served; nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("endpoint '{endpoint}': {source}")]
    Split { endpoint: String, source: sluice_routing::SplitError },
    #[error("endpoint '{endpoint}' version '{version}' names unknown service '{service}'")]
    UnknownService { endpoint: String, version: String, service: String },
    #[error("token verification keys: {0}")]
    Keys(String),
}

impl RouteTable {
    /// Resolves a configuration; refuses it whole if any part is inconsistent, so a gateway never
    /// serves half of a configuration.
    pub fn build(
        config: &GatewayConfig,
        algorithm: Algorithm,
        replicas: &ReplicaSet,
        metrics: &GatewayMetrics,
    ) -> Result<RouteTable, ConfigError> {
        let mut all_key_digests = HashSet::new();
        let mut note_keys = |auth: &AuthPolicy| {
            if let AuthPolicy::Keys { primary, secondary } = auth {
                all_key_digests.insert(primary.to_hex());
                all_key_digests.insert(secondary.to_hex());
            }
        };
        let mut live_addrs = HashSet::new();
        let mut services = HashMap::new();
        for s in &config.services {
            note_keys(&s.auth);
            live_addrs.extend(s.replicas.iter().map(String::as_str));
            let pool = Pool {
                replicas: s.replicas.iter().map(|a| replicas.get(a)).collect(),
                next: AtomicUsize::new(0),
                capacity: s.replica_capacity,
            };
            let target = ServiceTarget {
                name: s.name.clone(),
                sole_model: (s.models.len() == 1).then(|| s.models[0].clone()),
                pool,
                auth: s.auth.clone(),
                stats: metrics.service(&s.name),
                busy: metrics.busy(&s.name),
                version_header: header_value(&s.name),
            };
            services.insert(s.name.clone(), Arc::new(target));
        }
        let mut endpoints = HashMap::new();
        for e in &config.endpoints {
            note_keys(&e.auth);
            let specs: Vec<_> = e.versions.iter().map(|v| v.split_spec()).collect();
            let split = Split::new(&specs).map_err(|source| ConfigError::Split { endpoint: e.name.clone(), source })?;
            let mut versions = HashMap::new();
            for v in &e.versions {
                let service = services.get(&v.service).cloned().ok_or_else(|| ConfigError::UnknownService {
                    endpoint: e.name.clone(),
                    version: v.name.clone(),
                    service: v.service.clone(),
                })?;
                let role = if v.shadow_percent.is_some() {
                    Role::Shadow
                } else if v.is_control {
                    Role::Control
                } else {
                    Role::Treatment
                };
                let stats = metrics.endpoint(&e.name, &v.name, role.as_str());
                let version = VersionTarget { service, version_header: header_value(&v.name), stats, role };
                versions.insert(v.name.clone(), version);
            }
            // `Split::new` made sure there is exactly one.
            let default_version = e.versions.iter().find(|v| v.is_default).map(|v| v.name.clone()).unwrap_or_default();
            endpoints.insert(
                e.name.clone(),
                Arc::new(EndpointTarget {
                    name: e.name.clone(),
                    auth: e.auth.clone(),
                    split,
                    versions,
                    default_version,
                }),
            );
        }
        let verifier = if config.jwks.keys.is_empty() {
            None
        } else {
            Some(TokenVerifier::new(algorithm, &config.jwks).map_err(|e| ConfigError::Keys(e.to_string()))?)
        };
        replicas.retain(&live_addrs);
        Ok(RouteTable {
            generation: config.generation,
            services,
            endpoints,
            all_key_digests,
            verifier,
            swagger: Default::default(),
        })
    }

    /// An endpoint or service by name; `kind` restricts the lookup, `None` tries endpoints first.
    pub fn target(&self, kind: Option<TargetKind>, name: &str) -> Option<Target> {
        let endpoint = || self.endpoints.get(name).cloned().map(Target::Endpoint);
        let service = || self.services.get(name).cloned().map(Target::Service);
        match kind {
            Some(TargetKind::Endpoint) => endpoint(),
            Some(TargetKind::Service) => service(),
            None => endpoint().or_else(service),
        }
    }
}

/// A name as a header value; control-plane names are always valid ones.
fn header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid-name"))
}

/// Milliseconds since `origin`, the gateway's clock for ejections.
pub fn millis_since(origin: Instant) -> u64 {
    origin.elapsed().as_millis() as u64
}
