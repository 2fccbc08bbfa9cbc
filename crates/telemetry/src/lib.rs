//! Logging setup and the few metric primitives Sluice needs: lock-free counters and fixed-bucket
//! histograms that the hot path updates with one atomic add each, rendered on demand in the
//! Prometheus text format. Knows nothing about models or HTTP.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Installs the global tracing subscriber. `SLUICE_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `try_init` so that tests and embedders that already installed one keep theirs.
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).try_init();
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket upper bounds, in seconds, for every `_seconds` histogram: 50 us to 10 s, since a request
/// to a small model takes tens of microseconds and a large batch on a slow model whole seconds.
pub const SECONDS_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Bucket upper bounds for size histograms (batch sizes): powers of two up to 1024.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// A fixed-bucket histogram: durations with [`SECONDS_BUCKETS`] by default, or sizes.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, in units of `1 / scale` (nanoseconds for durations), so that it can be
    /// an integer atomic.
    sum: AtomicU64,
    scale: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(SECONDS_BUCKETS, 1e9)
    }
}

impl Histogram {
    fn new(bounds: &'static [f64], scale: f64) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// A histogram of sizes (counts of things) with [`SIZE_BUCKETS`].
    pub fn sizes() -> Self {
        Histogram::new(SIZE_BUCKETS, 1.0)
    }

    /// Records a duration.
    pub fn observe(&self, d: Duration) {
        self.observe_value(d.as_secs_f64());
    }

    /// Records a value in the histogram's unit (seconds, or a size).
    pub fn observe_value(&self, v: f64) {
        let idx = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add((v * self.scale).max(0.0) as u64, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Sum of observations, in the histogram's unit.
    pub fn sum(&self) -> f64 {
        self.sum.load(Ordering::Relaxed) as f64 / self.scale
    }
}

/// Writes metric families in the Prometheus text exposition format (version 0.0.4).
#[derive(Debug, Default)]
pub struct TextEncoder {
    out: String,
}

/// Label pairs of one series; values are escaped on output.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

fn write_labels(out: &mut String, labels: Labels<'_>, extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().copied().chain(extra).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

impl TextEncoder {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A counter family; `name` should end in `_total`.
    pub fn counters<'a>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels<'a>, u64)>) {
        self.scalars(name, help, "counter", series);
    }

    /// A gauge family.
    pub fn gauges<'a>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels<'a>, f64)>) {
        self.scalars(name, help, "gauge", series);
    }

    fn scalars<'a, V: std::fmt::Display>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        series: impl IntoIterator<Item = (Labels<'a>, V)>,
    ) {
        self.header(name, help, kind);
        for (labels, value) in series {
            self.out.push_str(name);
            write_labels(&mut self.out, labels, None);
            let _ = writeln!(self.out, " {value}");
        }
    }

    /// A histogram family; a duration family's `name` ends in `_seconds`.
    pub fn histograms<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (Labels<'a>, &'a Histogram)>,
    ) {
        self.header(name, help, "histogram");
        for (labels, h) in series {
            let mut cumulative = 0;
            for (i, bucket) in h.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let le = h.bounds.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = write!(self.out, "{name}_bucket");
                write_labels(&mut self.out, labels, Some(("le", &le)));
                let _ = writeln!(self.out, " {cumulative}");
            }
            let sum = h.sum();
            let _ = write!(self.out, "{name}_sum");
            write_labels(&mut self.out, labels, None);
            let _ = write!(self.out, " {sum}\n{name}_count");
            write_labels(&mut self.out, labels, None);
            let _ = writeln!(self.out, " {cumulative}");
        }
    }

    /// The rendered text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut enc = TextEncoder::default();
        enc.histograms("x_seconds", "help", [(&[("model", "m\"1")][..], &h)]);
        let text = enc.finish();
        assert!(text.contains("x_seconds_bucket{model=\"m\\\"1\",le=\"0.00005\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{model=\"m\\\"1\",le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{model=\"m\\\"1\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count{model=\"m\\\"1\"} 3\n"), "{text}");
        assert_eq!(h.count(), 3);

        let sizes = Histogram::sizes();
        sizes.observe_value(3.0);
        sizes.observe_value(64.0);
        let mut enc = TextEncoder::default();
        enc.histograms("b", "help", [(&[][..], &sizes)]);
        let text = enc.finish();
        assert!(text.contains("b_bucket{le=\"2\"} 0\nb_bucket{le=\"4\"} 1\n"), "{text}");
        assert!(text.contains("b_sum 67\n"), "{text}");
    }
}
