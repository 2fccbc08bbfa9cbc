//! The autoscaler, with Azure ML's semantics: a service's utilization is the share of its
//! replicas' capacity (`replica_max_concurrent_requests` each) that is busy, as the gateways see
//! it (their reports' busy time: the average number of requests in flight). Above
//! `autoscale_target_utilization` replicas are added at once, as many as bring it back to the
//! target; below it they are removed only after it stayed low for the scale-down delay (about a
//! minute); never outside `autoscale_min_replicas`..`autoscale_max_replicas`. Removed replicas
//! drain: they leave the gateways' configuration before they stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_core::DeploymentConfig;

use crate::services::autoscale_range;
use crate::store::Reads;
use crate::{ControlPlane, lock};

/// A gateway's busy-time samples older than this no longer count (gateways report every second).
const LOAD_MAX_AGE: Duration = Duration::from_secs(5);

/// One gateway's view of one service, from its last two reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadSample {
    at: Instant,
    busy_seconds: f64,
    /// Average requests in flight between the last two reports.
    concurrency: f64,
}

/// What `service show` says about a service's autoscaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscaleStatus {
    pub min_replicas: usize,
    pub max_replicas: usize,
    pub target_utilization: u32,
    /// Replicas running now and wanted now.
    pub current_replicas: usize,
    pub desired_replicas: usize,
    /// Busy share of the running replicas' capacity, in percent, at the last evaluation.
    pub utilization: Option<f64>,
    pub last_decision: Option<Decision>,
}

/// A change of a service's replica count, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: String,
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// The autoscaler's memory of one service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scaling {
    pub desired: usize,
    pub utilization: Option<f64>,
    /// Since when the load has wanted fewer replicas than run.
    low_since: Option<Instant>,
    last_evaluated: Option<Instant>,
    pub last_decision: Option<Decision>,
}

/// The replica count that brings `concurrency` to `target` percent of capacity, within bounds.
pub fn needed(concurrency: f64, per_replica: usize, target: u32, min: usize, max: usize) -> usize {
    let per_replica = per_replica.max(1) as f64 * f64::from(target.clamp(1, 100)) / 100.0;
    ((concurrency / per_replica).ceil() as usize).clamp(min, max)
}

/// A service's autoscaling settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Requests one replica takes at once (`replica_max_concurrent_requests`).
    pub per_replica: usize,
    /// Percent of capacity to keep busy.
    pub target: u32,
    pub min: usize,
    pub max: usize,
    /// How long the load must want fewer replicas before they go.
    pub down_delay: Duration,
}

/// One evaluation: the new replica count (or `None` to keep `current`), with the reason.
pub fn evaluate(
    scaling: &mut Scaling,
    policy: Policy,
    current: usize,
    concurrency: f64,
    now: Instant,
) -> Option<(usize, String)> {
    let Policy { per_replica, target, min, max, down_delay } = policy;
    let utilization = 100.0 * concurrency / (current.max(1) * per_replica.max(1)) as f64;
    scaling.utilization = Some(utilization);
    let want = needed(concurrency, per_replica, target, min, max);
    let why = |verb: &str| {
        format!(
            "utilization {utilization:.0}% of {current} replica(s) x {per_replica} concurrent requests is {verb} the \
             target {target}% ({concurrency:.1} requests in flight on average)"
        )
    };
    if current < min || current > max {
        scaling.low_since = None;
        return Some((current.clamp(min, max), format!("keeping within {min}..{max} replicas")));
    }
    if want > current {
        scaling.low_since = None;
        return Some((want, why("above")));
    }
    if want == current {
        scaling.low_since = None;
        return None;
    }
    let since = *scaling.low_since.get_or_insert(now);
    if now.duration_since(since) < down_delay {
        return None;
    }
    scaling.low_since = None;
    Some((want, format!("{} for {} s", why("below"), down_delay.as_secs())))
}

impl ControlPlane {
    /// Takes one gateway's busy times: the growth since its previous report over the time
    /// between them is the average concurrency it kept each service at.
    pub(crate) fn record_load(&self, gateway: &str, loads: &[sluice_routing::ServiceLoad]) {
        let now = Instant::now();
        let mut samples = lock(&self.load);
        samples.retain(|_, s| now.duration_since(s.at) < LOAD_MAX_AGE * 6);
        for load in loads {
            let key = (gateway.to_owned(), load.service.clone());
            let concurrency = match samples.get(&key) {
                Some(prev) if now > prev.at => {
                    ((load.busy_seconds - prev.busy_seconds) / now.duration_since(prev.at).as_secs_f64()).max(0.0)
                }
                _ => load.in_flight as f64,
            };
            samples.insert(key, LoadSample { at: now, busy_seconds: load.busy_seconds, concurrency });
        }
    }

    /// Average requests in flight at `service`'s replicas, over every gateway that reported lately.
    fn concurrency(&self, service: &str) -> f64 {
        let now = Instant::now();
        lock(&self.load)
            .iter()
            .filter(|((_, s), sample)| s == service && now.duration_since(sample.at) < LOAD_MAX_AGE)
            .map(|(_, sample)| sample.concurrency)
            .sum()
    }

    /// Runs the autoscaler every 250 ms; each service is evaluated every
    /// `autoscale_refresh_seconds` (default 1).
    pub(crate) fn start_autoscaler(self: &Arc<Self>) {
        let cp = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(cp) = cp.upgrade() else { break };
                if let Err(e) = cp.autoscale_once() {
                    tracing::warn!(error = %e, "autoscaler round failed");
                }
            }
        });
    }

    fn autoscale_once(self: &Arc<Self>) -> Result<(), crate::ControlError> {
        let specs = lock(&self.store).services()?;
        let now = Instant::now();
        let mut live: HashMap<String, ()> = HashMap::new();
        for spec in specs {
            live.insert(spec.name.clone(), ());
            let Ok(config) = serde_json::from_value::<DeploymentConfig>(spec.deploy_config.clone()) else { continue };
            let Some(range) = autoscale_range(&config) else { continue };
            let refresh = Duration::from_secs(u64::from(config.autoscale_refresh_seconds.unwrap_or(1).max(1)));
            let target = config.autoscale_target_utilization.unwrap_or(70);
            let per_replica =
                config.replica_max_concurrent_requests.unwrap_or(sluice_core::DEFAULT_MAX_CONCURRENT_REQUESTS);
            let Some(current) = self.running_replicas(&spec.name, range.0) else { continue };
            let concurrency = self.concurrency(&spec.name);
            let decision = {
                let mut all = lock(&self.scaling);
                let scaling =
                    all.entry(spec.name.clone()).or_insert_with(|| Scaling { desired: current, ..Scaling::default() });
                if scaling.last_evaluated.is_some_and(|t| now.duration_since(t) < refresh) {
                    continue;
                }
                scaling.last_evaluated = Some(now);
                let policy = Policy {
                    per_replica,
                    target,
                    min: range.0,
                    max: range.1,
                    down_delay: self.settings.autoscale_down_delay,
                };
                let decided = evaluate(scaling, policy, current, concurrency, now);
                if let Some((to, reason)) = &decided {
                    scaling.desired = *to;
                    scaling.last_decision = Some(Decision {
                        at: sluice_core::time::Utc::now().rfc3339_seconds(),
                        from: current,
                        to: *to,
                        reason: reason.clone(),
                    });
                }
                decided
            };
            if let Some((to, reason)) = decision {
                tracing::info!(service = %spec.name, from = current, to, %reason, "autoscaling");
                self.scale(&spec, to)?;
            }
        }
        lock(&self.scaling).retain(|name, _| live.contains_key(name));
        Ok(())
    }

    /// Replicas `service` runs now; `None` while an update rolls out (the autoscaler waits).
    fn running_replicas(&self, service: &str, min: usize) -> Option<usize> {
        if self.remote.is_some() {
            return Some(lock(&self.scaling).get(service).map_or(min, |s| s.desired));
        }
        let runtimes = lock(&self.runtimes);
        let rt = runtimes.get(service)?;
        rt.next.is_none().then(|| rt.current.active())
    }

    fn scale(self: &Arc<Self>, spec: &crate::model::ServiceSpec, to: usize) -> Result<(), crate::ControlError> {
        if let Some(remote) = &self.remote {
            let mut deployment = self.deployment(spec)?;
            deployment.replicas = to;
            remote.apply(deployment);
            return Ok(());
        }
        let group = lock(&self.runtimes).get(&spec.name).map(|rt| rt.current.clone());
        if let Some(group) = group {
            group.scale_to(self, to);
        }
        Ok(())
    }

    /// `service show`'s autoscaling part, for an autoscaled service.
    pub(crate) fn autoscale_status(
        &self,
        service: &str,
        config: &DeploymentConfig,
        current: usize,
    ) -> Option<AutoscaleStatus> {
        let (min, max) = autoscale_range(config)?;
        let scaling = lock(&self.scaling).get(service).cloned().unwrap_or_default();
        Some(AutoscaleStatus {
            min_replicas: min,
            max_replicas: max,
            target_utilization: config.autoscale_target_utilization.unwrap_or(70),
            current_replicas: current,
            desired_replicas: if scaling.desired == 0 { current } else { scaling.desired },
            utilization: scaling.utilization,
            last_decision: scaling.last_decision,
        })
    }

    /// Replica counts as Prometheus gauges (the control plane's `/metrics`).
    pub fn render_metrics(&self) -> String {
        let Ok(specs) = self.list_services() else { return String::new() };
        let mut out = String::from(
            "# HELP sluice_service_replicas Replicas of a service that run now.\n# TYPE sluice_service_replicas gauge\n",
        );
        for s in &specs {
            out.push_str(&format!("sluice_service_replicas{{service=\"{}\"}} {}\n", s.name, s.replicas.len()));
        }
        out.push_str("# HELP sluice_service_desired_replicas Replicas a service should run (the autoscaler's choice for autoscaled services).\n# TYPE sluice_service_desired_replicas gauge\n");
        for s in &specs {
            out.push_str(&format!(
                "sluice_service_desired_replicas{{service=\"{}\"}} {}\n",
                s.name, s.desired_replicas
            ));
        }
        out.push_str("# HELP sluice_service_utilization_ratio Busy share of an autoscaled service's capacity at the last evaluation.\n# TYPE sluice_service_utilization_ratio gauge\n");
        for s in &specs {
            if let Some(u) = s.autoscale.as_ref().and_then(|a| a.utilization) {
                out.push_str(&format!("sluice_service_utilization_ratio{{service=\"{}\"}} {}\n", s.name, u / 100.0));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replicas_needed_bring_utilization_to_the_target() {
        // 4 requests per replica at 70 %: 2.8 in flight per replica.
        assert_eq!(needed(0.0, 4, 70, 1, 10), 1);
        assert_eq!(needed(2.8, 4, 70, 1, 10), 1);
        assert_eq!(needed(2.9, 4, 70, 1, 10), 2);
        assert_eq!(needed(100.0, 4, 70, 1, 10), 10, "never above max");
        assert_eq!(needed(0.0, 4, 70, 3, 10), 3, "never below min");
    }

    #[test]
    fn up_at_once_down_only_after_sustained_low_load() {
        let t0 = Instant::now();
        let mut s = Scaling::default();
        let p = Policy { per_replica: 4, target: 70, min: 1, max: 5, down_delay: Duration::from_secs(60) };
        // 9 in flight on 1 replica of 4: 225 %, up to ceil(9 / 2.8) = 4 at once.
        let (to, reason) = evaluate(&mut s, p, 1, 9.0, t0).expect("scale up");
        assert_eq!(to, 4);
        assert!(reason.contains("above the target 70%"), "{reason}");
        // At the target: nothing.
        assert_eq!(evaluate(&mut s, p, 4, 7.8, t0), None);
        // Idle: not before the delay, then down to min.
        assert_eq!(evaluate(&mut s, p, 4, 0.0, t0), None);
        assert_eq!(evaluate(&mut s, p, 4, 0.0, t0 + Duration::from_secs(59)), None);
        let (to, reason) = evaluate(&mut s, p, 4, 0.0, t0 + Duration::from_secs(60)).expect("down");
        assert_eq!(to, 1);
        assert!(reason.contains("below") && reason.contains("60 s"), "{reason}");
        // A burst in the middle of a quiet minute starts the wait again.
        let mut s = Scaling::default();
        assert_eq!(evaluate(&mut s, p, 3, 0.0, t0), None);
        assert_eq!(evaluate(&mut s, p, 3, 8.0, t0 + Duration::from_secs(30)), None);
        assert_eq!(evaluate(&mut s, p, 3, 0.0, t0 + Duration::from_secs(70)), None);
        assert!(evaluate(&mut s, p, 3, 0.0, t0 + Duration::from_secs(130)).is_some());
    }
}
