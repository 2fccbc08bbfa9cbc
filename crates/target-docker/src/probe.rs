//! Readiness and liveness of one running replica container, from its `/v2/health/ready` route.
//!
//! One request serves both questions: a `2xx` is ready; any other answer (503 while models load
//! or while draining) is alive but not ready; no answer within the timeout is neither. That
//! mirrors the scoring server, whose `ready` needs every model loaded and whose `live` only needs
//! the process to answer.
//!
//! The [`Probes`] fields, as the local target and Kubernetes read them:
//! - until the replica is first ready, it is asked every [`STARTING_PERIOD`] (not every period:
//!   a replica that loads in 2 s should serve after 2 s, not 10), and becomes ready after
//!   `success_threshold` successes in a row. If it is not ready `initial_delay_seconds` plus
//!   `failure_threshold` periods after it started, it is hung and is killed (an exit like any
//!   other, which counts towards a crash loop);
//! - once ready, it is asked every `period_seconds` with `timeout_seconds` to answer; it stops
//!   being ready after `failure_threshold` failures in a row and is ready again after
//!   `success_threshold` successes; `failure_threshold` probes in a row without any answer mean
//!   it is hung and is killed.

use std::time::{Duration, Instant};

use sluice_control::target::Probes;

/// How often a replica that has not been ready yet is asked.
pub const STARTING_PERIOD: Duration = Duration::from_millis(500);

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    /// It answered, with something other than a success.
    NotReady,
    /// No answer within the timeout, or no connection.
    NoAnswer,
}

/// What a probe changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Unchanged,
    Ready,
    NotReady,
    /// The replica should be killed; the text says why (its `last_exit`).
    Hung(String),
}

/// The probe state of one run of one container.
#[derive(Debug, Clone)]
pub struct Machine {
    probes: Probes,
    /// Until when a replica that was never ready may take to become ready.
    deadline: Instant,
    ever_ready: bool,
    ready: bool,
    successes: u32,
    failures: u32,
    silent: u32,
}

impl Machine {
    /// The probes of a run that began at `started`.
    pub fn new(probes: Probes, started: Instant) -> Machine {
        let grace = u64::from(probes.initial_delay_seconds)
            + u64::from(probes.failure_threshold) * u64::from(probes.period_seconds);
        Machine {
            probes,
            deadline: started + Duration::from_secs(grace),
            ever_ready: false,
            ready: false,
            successes: 0,
            failures: 0,
            silent: 0,
        }
    }

    /// How long to wait before the next probe.
    pub fn period(&self) -> Duration {
        if self.ever_ready { Duration::from_secs(u64::from(self.probes.period_seconds)) } else { STARTING_PERIOD }
    }

    /// How long a probe may wait for its answer.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.probes.timeout_seconds))
    }

    /// Takes one probe's outcome at `now`.
    pub fn record(&mut self, outcome: Outcome, now: Instant) -> Step {
        let p = self.probes;
        if outcome == Outcome::Ready {
            self.failures = 0;
            self.silent = 0;
            self.successes += 1;
            if !self.ready && self.successes >= p.success_threshold {
                self.ready = true;
                self.ever_ready = true;
                return Step::Ready;
            }
            return Step::Unchanged;
        }
        self.successes = 0;
        self.failures += 1;
        self.silent = if outcome == Outcome::NoAnswer { self.silent + 1 } else { 0 };
        if !self.ever_ready {
            if now >= self.deadline {
                self.ready = false;
                let waited = p.initial_delay_seconds + p.failure_threshold * p.period_seconds;
                return Step::Hung(format!("killed: not ready {waited} s after it started"));
            }
            return Step::Unchanged;
        }
        if self.silent >= p.failure_threshold {
            self.ready = false;
            return Step::Hung(format!("killed: did not answer {} health probes in a row", self.silent));
        }
        if self.ready && self.failures >= p.failure_threshold {
            self.ready = false;
            return Step::NotReady;
        }
        Step::Unchanged
    }
}

/// Asks `addr` (`ip:port`) whether it is ready.
pub async fn probe(addr: &str, timeout: Duration) -> Outcome {
    let ask = crate::http::request(addr, "GET", "/v2/health/ready", None, 64 * 1024);
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(answer)) if (200..300).contains(&answer.status) => Outcome::Ready,
        Ok(Ok(_)) => Outcome::NotReady,
        Ok(Err(_)) | Err(_) => Outcome::NoAnswer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(success: u32, failure: u32) -> Probes {
        Probes {
            period_seconds: 10,
            timeout_seconds: 2,
            failure_threshold: failure,
            success_threshold: success,
            initial_delay_seconds: 30,
        }
    }

    #[test]
    fn ready_after_enough_successes_asked_quickly_until_then() {
        let t0 = Instant::now();
        let mut m = Machine::new(probes(2, 3), t0);
        assert_eq!(m.period(), STARTING_PERIOD);
        assert_eq!(m.record(Outcome::NoAnswer, t0), Step::Unchanged);
        assert_eq!(m.record(Outcome::Ready, t0), Step::Unchanged);
        assert_eq!(m.record(Outcome::NotReady, t0), Step::Unchanged, "a failure resets the run");
        assert_eq!(m.record(Outcome::Ready, t0), Step::Unchanged);
        assert_eq!(m.record(Outcome::Ready, t0), Step::Ready);
        assert_eq!(m.period(), Duration::from_secs(10));
        assert_eq!(m.record(Outcome::Ready, t0), Step::Unchanged);
    }

    #[test]
    fn not_ready_after_enough_failures_and_back_after_successes() {
        let t0 = Instant::now();
        let mut m = Machine::new(probes(1, 3), t0);
        assert_eq!(m.record(Outcome::Ready, t0), Step::Ready);
        assert_eq!(m.record(Outcome::NotReady, t0), Step::Unchanged);
        assert_eq!(m.record(Outcome::NotReady, t0), Step::Unchanged);
        assert_eq!(m.record(Outcome::NotReady, t0), Step::NotReady);
        // Answering 503 (draining, overloaded) for long is not a reason to kill it.
        for _ in 0..10 {
            assert_eq!(m.record(Outcome::NotReady, t0), Step::Unchanged);
        }
        assert_eq!(m.record(Outcome::Ready, t0), Step::Ready);
    }

    #[test]
    fn silence_after_being_ready_is_a_hang() {
        let t0 = Instant::now();
        let mut m = Machine::new(probes(1, 3), t0);
        assert_eq!(m.record(Outcome::Ready, t0), Step::Ready);
        assert_eq!(m.record(Outcome::NoAnswer, t0), Step::Unchanged);
        assert_eq!(m.record(Outcome::NotReady, t0), Step::Unchanged, "an answer breaks the silence");
        assert_eq!(m.record(Outcome::NoAnswer, t0), Step::NotReady, "three failures in a row");
        assert_eq!(m.record(Outcome::NoAnswer, t0), Step::Unchanged, "two without an answer");
        assert!(matches!(m.record(Outcome::NoAnswer, t0), Step::Hung(r) if r.contains("3 health probes")));
    }

    #[test]
    fn a_replica_never_ready_is_hung_after_the_initial_delay_and_the_failure_periods() {
        let t0 = Instant::now();
        let mut m = Machine::new(probes(1, 3), t0);
        // 30 s initial delay + 3 × 10 s.
        assert_eq!(m.record(Outcome::NoAnswer, t0 + Duration::from_secs(59)), Step::Unchanged);
        assert_eq!(m.record(Outcome::NotReady, t0 + Duration::from_secs(59)), Step::Unchanged);
        let step = m.record(Outcome::NotReady, t0 + Duration::from_secs(60));
        assert_eq!(step, Step::Hung("killed: not ready 60 s after it started".into()));
    }
}
