//! What gateways tell the control plane about the traffic they saw, so `endpoint show` can put
//! each version's requests, errors and latency side by side (control against treatments) across
//! every gateway. Counters are cumulative since the gateway started; the control plane keeps each
//! gateway's latest report and adds them up.

use serde::{Deserialize, Serialize};

/// One gateway's counters, sent every few seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// Random per gateway process: reports of one gateway replace each other.
    pub gateway: String,
    /// Upper bounds of the latency buckets, in seconds (the last bucket is +Inf, not listed).
    pub latency_bounds: Vec<f64>,
    pub versions: Vec<VersionReport>,
    /// How busy each service's replicas were kept by this gateway (the autoscaler's input).
    #[serde(default)]
    pub services: Vec<ServiceLoad>,
}

/// One service's load as one gateway sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceLoad {
    pub service: String,
    /// Seconds of requests answered so far, summed (cumulative): its growth over an interval
    /// divided by the interval is the average number of requests in flight.
    pub busy_seconds: f64,
    /// Requests in flight when the report was made.
    pub in_flight: u64,
}

/// Requests of one endpoint version in one role, as one gateway counted them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionReport {
    pub endpoint: String,
    pub version: String,
    pub role: String,
    /// Answers by status class, 1xx to 5xx.
    pub by_class: [u64; 5],
    /// Non-cumulative counts per latency bucket; one more than `latency_bounds` (+Inf).
    pub latency_buckets: Vec<u64>,
}

/// One version's traffic, summed over gateways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionStats {
    pub requests: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
    pub error_rate: f64,
    /// Latency quantiles in milliseconds (to the replica's response headers), interpolated within
    /// histogram buckets as Prometheus does; `None` before any request.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Gateways whose reports these add up.
    pub gateways: usize,
}

/// The traffic of `endpoint`'s `version` (every role it has had) in `reports`; `None` when no
/// gateway has answered a request for it.
pub fn version_stats(reports: &[&GatewayReport], endpoint: &str, version: &str) -> Option<VersionStats> {
    let mut requests = 0;
    let mut errors = 0;
    let mut gateways = 0;
    let mut buckets: Vec<u64> = Vec::new();
    let mut bounds: &[f64] = &[];
    for report in reports {
        let mut seen = false;
        for v in report.versions.iter().filter(|v| v.endpoint == endpoint && v.version == version) {
            seen = true;
            requests += v.by_class.iter().sum::<u64>();
            errors += v.by_class[4];
            // Reports of one build share bounds; a report with other bounds cannot be added up.
            if buckets.is_empty() {
                bounds = &report.latency_bounds;
                buckets = vec![0; bounds.len() + 1];
            }
            if report.latency_bounds == bounds && v.latency_buckets.len() == buckets.len() {
                for (sum, n) in buckets.iter_mut().zip(&v.latency_buckets) {
                    *sum += n;
                }
            }
        }
        gateways += usize::from(seen);
    }
    // Nothing to compare before a request: a version no caller reached yet shows none.
    if gateways == 0 || requests == 0 {
        return None;
    }
    let ms = |q| quantile(bounds, &buckets, q).map(|s| s * 1000.0);
    Some(VersionStats {
        requests,
        errors,
        error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        gateways,
    })
}

/// The `q` quantile of a histogram (non-cumulative `buckets`, one per bound plus +Inf), linearly
/// interpolated within its bucket; the largest finite bound when it falls in +Inf.
pub fn quantile(bounds: &[f64], buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 || buckets.len() != bounds.len() + 1 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else { return bounds.last().copied() };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * ((rank - below as f64) / n as f64).clamp(0.0, 1.0));
        }
        below += n;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(gateway: &str, version: &str, by_class: [u64; 5], buckets: Vec<u64>) -> GatewayReport {
        GatewayReport {
            gateway: gateway.into(),
            latency_bounds: vec![0.001, 0.01, 0.1],
            versions: vec![VersionReport {
                endpoint: "ep".into(),
                version: version.into(),
                role: "control".into(),
                by_class,
                latency_buckets: buckets,
            }],
            services: Vec::new(),
        }
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let bounds = [0.001, 0.01, 0.1];
        // 10 under 1 ms, 90 between 1 and 10 ms.
        let buckets = [10, 90, 0, 0];
        assert_eq!(quantile(&bounds, &buckets, 0.05), Some(0.0005));
        let p50 = quantile(&bounds, &buckets, 0.5).expect("p50");
        assert!((p50 - 0.005).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&bounds, &[0, 0, 0, 3], 0.5), Some(0.1), "beyond the last bound");
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
    }

    #[test]
    fn versions_add_up_across_gateways() {
        let a = report("g1", "v1", [0, 90, 0, 5, 5], vec![100, 0, 0, 0]);
        let b = report("g2", "v1", [0, 100, 0, 0, 0], vec![0, 100, 0, 0]);
        let other = report("g3", "v2", [0, 7, 0, 0, 0], vec![7, 0, 0, 0]);
        let stats = version_stats(&[&a, &b, &other], "ep", "v1").expect("stats");
        assert_eq!((stats.requests, stats.errors, stats.gateways), (200, 5, 2));
        assert!((stats.error_rate - 0.025).abs() < 1e-12);
        let p50 = stats.p50_ms.expect("p50");
        assert!((p50 - 1.0).abs() < 1e-9, "half under 1 ms, half above: {p50}");
        assert!(stats.p99_ms.expect("p99") > 9.0);
        assert_eq!(version_stats(&[&a, &b], "ep", "v9"), None);
        let idle = report("g4", "v1", [0; 5], vec![0, 0, 0, 0]);
        assert_eq!(version_stats(&[&idle], "ep", "v1"), None, "known but never reached");
    }
}
