//! Gateway metrics: per endpoint, version and role (control, treatment, shadow), so every
//! treatment can be compared with the control from `/metrics`; per service for direct calls.
//! Series live as long as the gateway, across configuration changes, so counters never go back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::StatusCode;
use sluice_routing::{GatewayReport, ServiceLoad, VersionReport};
use sluice_telemetry::{Counter, Histogram, TextEncoder};

/// Requests and latency of one route (an endpoint version in a role, or a service).
#[derive(Debug, Default)]
pub struct RouteStats {
    /// By status class: 1xx..5xx.
    by_class: [Counter; 5],
    latency: Histogram,
}

impl RouteStats {
    /// Records one answered request; latency is until the response headers arrived.
    pub fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.latency.observe(elapsed);
    }

    /// Requests answered with 5xx.
    pub fn errors(&self) -> u64 {
        self.by_class[4].get()
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Reasons a request is refused by the gateway itself.
const REASONS: [&str; 10] = [
    "not_found",
    "method_not_allowed",
    "headers_too_large",
    "unauthorized",
    "forbidden",
    "too_large",
    "bad_request",
    "unavailable",
    "upstream_timeout",
    "upstream_error",
];

type EndpointKey = (String, String, &'static str);

/// How busy one service's replicas are kept by this gateway: requests in flight, and the summed
/// time of answered ones (the autoscaler reads its growth as the average concurrency).
#[derive(Debug, Default)]
pub struct ServiceBusy {
    in_flight: AtomicU64,
    busy_nanos: AtomicU64,
}

/// A request counted in flight until dropped.
pub struct InFlight<'a> {
    busy: &'a ServiceBusy,
    started: Instant,
}

impl ServiceBusy {
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { busy: self, started: Instant::now() }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.busy.busy_nanos.fetch_add(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.busy.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every gateway series.
#[derive(Debug, Default)]
pub struct GatewayMetrics {
    endpoints: Mutex<BTreeMap<EndpointKey, Arc<RouteStats>>>,
    busy: Mutex<BTreeMap<String, Arc<ServiceBusy>>>,
    services: Mutex<BTreeMap<String, Arc<RouteStats>>>,
    refused: [Counter; REASONS.len()],
    /// Mirrors skipped because too many were already in flight.
    pub shadow_dropped: Counter,
    /// Requests retried on another replica after a connection failure.
    pub upstream_retries: Counter,
    /// Replicas taken out of rotation after failing.
    pub ejections: Counter,
    /// Configurations applied.
    pub reloads: Counter,
}

impl GatewayMetrics {
    /// The series of one endpoint version in one role; looked up when a configuration is built,
    /// never per request.
    pub fn endpoint(&self, endpoint: &str, version: &str, role: &'static str) -> Arc<RouteStats> {
        let mut map = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry((endpoint.to_owned(), version.to_owned(), role)).or_default().clone()
    }

    /// The series of direct calls to a service.
    pub fn service(&self, service: &str) -> Arc<RouteStats> {
        let mut map = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(service.to_owned()).or_default().clone()
    }

    /// How busy `service` is kept; looked up when a configuration is built.
    pub fn busy(&self, service: &str) -> Arc<ServiceBusy> {
        let mut map = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(service.to_owned()).or_default().clone()
    }

    /// Counts a request the gateway refused or could not forward.
    pub fn refused(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.refused[i].inc();
        }
    }

    /// Every endpoint version's counters, for the control plane (`endpoint show`).
    pub fn report(&self, gateway: &str) -> GatewayReport {
        let endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let versions = endpoints
            .iter()
            .map(|((endpoint, version, role), s)| VersionReport {
                endpoint: endpoint.clone(),
                version: version.clone(),
                role: (*role).to_owned(),
                by_class: std::array::from_fn(|i| s.by_class[i].get()),
                latency_buckets: s.latency.bucket_counts(),
            })
            .collect();
        drop(endpoints);
        let busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let services = busy
            .iter()
            .map(|(service, b)| ServiceLoad {
                service: service.clone(),
                busy_seconds: b.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                in_flight: b.in_flight.load(Ordering::Relaxed),
            })
            .collect();
        GatewayReport {
            gateway: gateway.to_owned(),
            latency_bounds: sluice_telemetry::SECONDS_BUCKETS.to_vec(),
            versions,
            services,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut enc = TextEncoder::default();
        {
            let endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
            let labels: Vec<Vec<[(&str, &str); 4]>> = endpoints
                .iter()
                .map(|((e, v, r), _)| {
                    CLASSES.map(|c| [("endpoint", e.as_str()), ("version", v), ("role", r), ("code", c)]).to_vec()
                })
                .collect();
            enc.counters(
                "sluice_gateway_requests_total",
                "Requests answered per endpoint, version, role and status class.",
                endpoints.values().zip(&labels).flat_map(|(s, ls)| {
                    ls.iter().zip(&s.by_class).filter(|(_, c)| c.get() > 0).map(|(l, c)| (&l[..], c.get()))
                }),
            );
            let short: Vec<[(&str, &str); 3]> = endpoints
                .keys()
                .map(|(e, v, r)| [("endpoint", e.as_str()), ("version", v.as_str()), ("role", *r)])
                .collect();
            enc.histograms(
                "sluice_gateway_request_duration_seconds",
                "Time from receiving a request to the replica's response headers, per endpoint version and role.",
                endpoints.values().zip(&short).map(|(s, l)| (&l[..], &s.latency)),
            );
        }
        {
            let services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
            let labels: Vec<Vec<[(&str, &str); 2]>> =
                services.keys().map(|s| CLASSES.map(|c| [("service", s.as_str()), ("code", c)]).to_vec()).collect();
            enc.counters(
                "sluice_gateway_service_requests_total",
                "Requests sent straight to a service, per status class.",
                services.values().zip(&labels).flat_map(|(s, ls)| {
                    ls.iter().zip(&s.by_class).filter(|(_, c)| c.get() > 0).map(|(l, c)| (&l[..], c.get()))
                }),
            );
            let short: Vec<[(&str, &str); 1]> = services.keys().map(|s| [("service", s.as_str())]).collect();
            enc.histograms(
                "sluice_gateway_service_request_duration_seconds",
                "Time to the replica's response headers for requests sent straight to a service.",
                services.values().zip(&short).map(|(s, l)| (&l[..], &s.latency)),
            );
        }
        let reasons: Vec<[(&str, &str); 1]> = REASONS.iter().map(|r| [("reason", *r)]).collect();
        enc.counters(
            "sluice_gateway_refused_total",
            "Requests the gateway answered itself with an error, by reason.",
            reasons.iter().zip(&self.refused).map(|(l, c)| (&l[..], c.get())),
        );
        enc.counters(
            "sluice_gateway_shadow_dropped_total",
            "Shadow copies skipped because too many were in flight.",
            [(&[][..], self.shadow_dropped.get())],
        );
        enc.counters(
            "sluice_gateway_upstream_retries_total",
            "Requests resent to another replica after a connection failure.",
            [(&[][..], self.upstream_retries.get())],
        );
        enc.counters(
            "sluice_gateway_replica_ejections_total",
            "Times a failing replica was taken out of rotation.",
            [(&[][..], self.ejections.get())],
        );
        enc.counters(
            "sluice_gateway_config_reloads_total",
            "Routing configurations applied.",
            [(&[][..], self.reloads.get())],
        );
        enc.finish()
    }
}
