//! Logging setup and the few metric primitives Sluice needs: lock-free counters and fixed-bucket
//! histograms that the hot path updates with one atomic add each, rendered on demand in the
//! Prometheus text format; and distributed tracing (`trace`: W3C `traceparent`, spans, OTLP/HTTP
//! export). Knows nothing about models.
#![forbid(unsafe_code)]

pub mod logfile;
pub mod trace;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `tracing` target of the gateway's access log: one event per request, so operators can
/// route or filter it (`SLUICE_LOG=sluice::access=info,warn`).
pub const ACCESS_TARGET: &str = "sluice::access";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: for files, pipes and log collectors.
    Json,
    /// Human-readable lines; coloured only on a terminal.
    Text,
}

impl LogFormat {
    /// `SLUICE_LOG_FORMAT` (`json` or `text`) when set; otherwise JSON unless stderr is a
    /// terminal.
    pub fn from_env() -> LogFormat {
        match std::env::var("SLUICE_LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            Ok("text") => LogFormat::Text,
            _ if std::io::IsTerminal::is_terminal(&std::io::stderr()) => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }
}

/// Installs the global tracing subscriber, writing to stderr. `SLUICE_LOG` (or `RUST_LOG`)
/// filters, default `info`; the format is [`LogFormat::from_env`]. Colour codes are written only
/// when stderr is a terminal, so logs kept in files (a replica's, say) carry none.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // `try_init` so that tests and embedders that already installed one keep theirs.
    let _ = match LogFormat::from_env() {
        // The target is kept in JSON: it is what tells an access line from the others.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// Request ids: the `x-request-id` a caller sent, when it is sane, or a new random one.
pub mod request_id {
    use std::cell::Cell;

    /// The header that carries a request's id, in requests and responses.
    pub const HEADER: &str = "x-request-id";

    /// Longest caller-chosen id kept; a longer one is replaced.
    pub const MAX_LEN: usize = 128;

    /// Whether a caller's id is kept: 1 to [`MAX_LEN`] visible ASCII characters (no spaces or
    /// control characters, which could forge or break a log line).
    pub fn is_valid(id: &[u8]) -> bool {
        !id.is_empty() && id.len() <= MAX_LEN && id.iter().all(|b| b.is_ascii_graphic())
    }

    /// A new id: 128 random bits as 32 lowercase hex digits, on the stack.
    #[derive(Clone, Copy)]
    pub struct RequestId([u8; 32]);

    impl RequestId {
        /// From a per-thread generator (SplitMix64 seeded from the standard library's random
        /// hash keys): a few nanoseconds, no lock, no system call. Unique, not unguessable: an id
        /// is a label, never a secret.
        pub fn generate() -> Self {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut out = [0u8; 32];
            for half in out.chunks_exact_mut(16) {
                let mut v = next();
                for b in half.iter_mut() {
                    *b = HEX[(v & 0xf) as usize];
                    v >>= 4;
                }
            }
            RequestId(out)
        }

        pub fn as_bytes(&self) -> &[u8] {
            &self.0
        }

        pub fn as_str(&self) -> &str {
            // Hex digits only.
            std::str::from_utf8(&self.0).unwrap_or_default()
        }
    }

    impl std::fmt::Debug for RequestId {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// The id of one request: the caller's when [`is_valid`], else a new one.
    #[derive(Clone, Copy)]
    pub enum Id<'a> {
        Caller(&'a [u8]),
        New(RequestId),
    }

    impl<'a> Id<'a> {
        /// The id for a request whose `x-request-id` header is `sent`.
        pub fn of(sent: Option<&'a [u8]>) -> Self {
            match sent {
                Some(id) if is_valid(id) => Id::Caller(id),
                _ => Id::New(RequestId::generate()),
            }
        }

        pub fn as_bytes(&self) -> &[u8] {
            match self {
                Id::Caller(id) => id,
                Id::New(id) => id.as_bytes(),
            }
        }

        pub fn as_str(&self) -> &str {
            // A valid caller id is ASCII.
            std::str::from_utf8(self.as_bytes()).unwrap_or_default()
        }
    }

    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }

    fn seed() -> u64 {
        use std::hash::BuildHasher;
        // Fresh random keys per process (from the OS), varied per thread and per call.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        std::hash::RandomState::new().hash_one((nanos, std::thread::current().id()))
    }

    /// SplitMix64: statistically sound, and each state gives a distinct output.
    fn next() -> u64 {
        STATE.with(|s| {
            let state = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            s.set(state);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }
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

    /// Upper bounds of the buckets (the last bucket, +Inf, is not listed).
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Non-cumulative counts per bucket, +Inf last.
    pub fn bucket_counts(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
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
    fn request_ids_keep_a_sane_caller_id_and_make_distinct_new_ones() {
        use request_id::{Id, is_valid};
        assert_eq!(Id::of(Some(b"abc-123")).as_str(), "abc-123");
        for bad in [&b""[..], b"has space", b"tab\there", "caf\u{e9}".as_bytes(), &[b'a'; 129]] {
            assert!(!is_valid(bad), "{bad:?}");
            let id = Id::of(Some(bad));
            assert_eq!(id.as_bytes().len(), 32, "{bad:?} replaced");
        }
        assert!(is_valid(&[b'a'; 128]));
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| Id::of(None).as_str().to_owned()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

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
