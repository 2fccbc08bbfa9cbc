//! Distributed tracing: W3C `traceparent` in and out, spans, and their export to an OpenTelemetry
//! collector with the OpenTelemetry SDK's batch span processor and OTLP/HTTP exporter
//! (`http/protobuf`, or `http/json`).
//!
//! Off unless [`init`] ran (the binary calls [`init_from_env`], which needs
//! `OTEL_EXPORTER_OTLP_ENDPOINT`): then [`server_span`] is one load and one branch and returns
//! `None`, so a request path that only carries `Option<Span>` costs nothing more.
//!
//! The request path keeps its own small [`Span`] (ids, parent, kind, times, attributes: what it
//! must know before the span ends, since its id goes out in `traceparent` at once); a span that
//! ends in a sampled trace becomes the SDK's `SpanData` and goes to the SDK's batch processor,
//! whose thread exports through `opentelemetry-otlp`. The exporter posts with [`PlainHttp`], a
//! few lines over a TCP stream, instead of the reqwest or hyper stacks the OTLP crate offers.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanProcessor};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";

/// Spans waiting for export; when the exporter falls behind, new spans are dropped (the SDK
/// counts them and says so at shutdown).
const QUEUE: usize = 4096;

/// Most spans in one export request.
const MAX_BATCH: usize = 512;

// === traceparent ===

/// A W3C trace context: `00-{trace id}-{parent span id}-{flags}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The `sampled` flag: whether the caller records this trace.
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` value. Version 00 must be exactly 55 characters; a later version
    /// may carry more after the flags (as the spec asks). Lowercase hex only; all-zero ids and
    /// version `ff` are invalid. Anything invalid is `None`: the request starts a new trace.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let version = hex_byte(&value[0..2])?;
        if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&value[3 + 2 * i..5 + 2 * i])?;
        }
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&value[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&value[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    /// The header value, version 00.
    pub fn header(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        push_hex(&mut out[3..35], &self.trace_id);
        push_hex(&mut out[36..52], &self.span_id);
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn push_hex(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

// === settings ===

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's base URL (`http://host:port`); spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// `service.name` of every span this process exports.
    pub service_name: String,
    /// Share of new traces recorded (0 to 1); a caller's sampled flag decides for its traces.
    pub ratio: f64,
    /// Longest a finished span waits before it is sent.
    pub delay: Duration,
    /// OTLP's encoding over HTTP: protobuf (the standard's default) or JSON.
    pub protocol: Protocol,
}

impl Settings {
    /// From the standard OpenTelemetry variables, read through `var`:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (none: tracing is off), `OTEL_SERVICE_NAME` (else
    /// `default_service`), `OTEL_TRACES_SAMPLER_ARG` (the ratio, default 1),
    /// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds, default 1000) and `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// (`http/protobuf`, the default, or `http/json`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>, default_service: &str) -> Result<Option<Settings>, String> {
        Self::from_vars_or(var, default_service, None)
    }

    /// As [`Settings::from_vars`], with `fallback` as the endpoint when the variable names none
    /// (a replica whose deployment config asks for Application Insights exports to the collector
    /// beside it).
    pub fn from_vars_or(
        var: impl Fn(&str) -> Option<String>,
        default_service: &str,
        fallback: Option<&str>,
    ) -> Result<Option<Settings>, String> {
        let Some(endpoint) =
            var("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|e| !e.trim().is_empty()).or(fallback.map(str::to_owned))
        else {
            return Ok(None);
        };
        let protocol = match var("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref().map(str::trim) {
            None | Some("" | "http/protobuf") => Protocol::HttpBinary,
            Some("http/json") => Protocol::HttpJson,
            Some(other) => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (use http/protobuf or http/json)"
                ));
            }
        };
        let ratio = var("OTEL_TRACES_SAMPLER_ARG").and_then(|r| r.trim().parse::<f64>().ok()).unwrap_or(1.0);
        let delay = var("OTEL_BSP_SCHEDULE_DELAY").and_then(|d| d.trim().parse::<u64>().ok()).unwrap_or(1000);
        Ok(Some(Settings {
            endpoint: endpoint.trim().trim_end_matches('/').to_owned(),
            service_name: var("OTEL_SERVICE_NAME").filter(|s| !s.is_empty()).unwrap_or_else(|| default_service.into()),
            ratio: if ratio.is_finite() { ratio.clamp(0.0, 1.0) } else { 1.0 },
            delay: Duration::from_millis(delay),
            protocol,
        }))
    }
}

/// Turns tracing on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (see [`Settings::from_vars`]), or
/// with `fallback` as the endpoint when one is given.
pub fn init_from_env(default_service: &str, fallback: Option<&str>) {
    match Settings::from_vars_or(|name| std::env::var(name).ok(), default_service, fallback) {
        Ok(None) => {}
        Ok(Some(settings)) => {
            if let Err(e) = init(settings) {
                tracing::warn!(error = %e, "tracing stays off");
            }
        }
        Err(e) => tracing::warn!(error = %e, "tracing stays off"),
    }
}

/// Starts the SDK's batch processor with the OTLP exporter and turns tracing on for this process
/// (once; later calls fail).
pub fn init(settings: Settings) -> Result<(), String> {
    let target = Target::parse(&settings.endpoint)?;
    if TRACER.get().is_some() {
        return Err("tracing is already set up".into());
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(PlainHttp)
        .with_protocol(settings.protocol)
        .with_endpoint(format!("http://{}{}", target.authority, target.path))
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(QUEUE)
        .with_max_export_batch_size(MAX_BATCH)
        .with_scheduled_delay(settings.delay)
        .build();
    let mut processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    processor.set_resource(&Resource::builder().with_service_name(settings.service_name.clone()).build());
    let scope = InstrumentationScope::builder("sluice").with_version(env!("CARGO_PKG_VERSION")).build();
    TRACER
        .set(Tracer { processor, ratio: settings.ratio, scope })
        .map_err(|_| "tracing is already set up".to_owned())?;
    let protocol = if settings.protocol == Protocol::HttpJson { "http/json" } else { "http/protobuf" };
    tracing::info!(endpoint = %settings.endpoint, protocol, ratio = settings.ratio, "exporting traces over OTLP/HTTP");
    Ok(())
}

/// Whether this process traces.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

struct Tracer {
    processor: BatchSpanProcessor,
    ratio: f64,
    scope: InstrumentationScope,
}

// === spans ===

/// What kind of work a span is (OTLP `SpanKind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int(n)
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Value {
        Value::Int(i64::from(n))
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// One unit of work in a trace, exported when it ends (if its trace is sampled).
#[derive(Debug)]
pub struct Span {
    context: TraceParent,
    parent: Option<[u8; 8]>,
    /// Whether the parent is the caller's (from `traceparent`) rather than this process's.
    remote_parent: bool,
    name: &'static str,
    kind: Kind,
    start_ns: u64,
    end_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    error: bool,
}

/// A span for a request this process serves, continuing the caller's trace when `traceparent`
/// is a valid one (its sampled flag decides), else starting one (sampled at the configured
/// ratio). `None` when tracing is off.
pub fn server_span(name: &'static str, traceparent: Option<&[u8]>) -> Option<Span> {
    let tracer = TRACER.get()?;
    let (trace_id, parent, sampled) = match traceparent.and_then(TraceParent::parse) {
        Some(caller) => (caller.trace_id, Some(caller.span_id), caller.sampled),
        None => {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&random().to_be_bytes());
            id[8..].copy_from_slice(&random().to_be_bytes());
            // The ratio applies to the trace id's random bits, so all spans of a trace agree.
            let draw = (random() >> 11) as f64 / (1u64 << 53) as f64;
            (id, None, draw < tracer.ratio)
        }
    };
    let mut span = Span::new(TraceParent { trace_id, span_id: new_span_id(), sampled }, parent, name, Kind::Server);
    span.remote_parent = parent.is_some();
    Some(span)
}

impl Span {
    fn new(context: TraceParent, parent: Option<[u8; 8]>, name: &'static str, kind: Kind) -> Span {
        Span {
            context,
            parent,
            remote_parent: false,
            name,
            kind,
            start_ns: now_ns(),
            end_ns: 0,
            attributes: Vec::new(),
            error: false,
        }
    }

    /// A span for part of this one's work, starting now.
    pub fn child(&self, name: &'static str, kind: Kind) -> Span {
        Span::new(TraceParent { span_id: new_span_id(), ..self.context }, Some(self.context.span_id), name, kind)
    }

    /// This span's context: what goes out as `traceparent` to work it causes.
    pub fn context(&self) -> TraceParent {
        self.context
    }

    /// The span that this one is a child of, if any.
    pub fn parent(&self) -> Option<[u8; 8]> {
        self.parent
    }

    /// Sets when it started (Unix nanoseconds), for work measured elsewhere.
    pub fn started_at(mut self, start_ns: u64) -> Span {
        self.start_ns = start_ns;
        self
    }

    /// Adds an attribute, unless the trace is not sampled.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if self.context.sampled {
            self.attributes.push((key, value.into()));
        }
    }

    /// Marks it failed (OTLP status `ERROR`).
    pub fn fail(&mut self) {
        self.error = true;
    }

    /// Ends it now.
    pub fn end(self) {
        self.end_at(now_ns());
    }

    /// Ends it at `end_ns` (Unix nanoseconds) and hands it to the batch processor when sampled.
    pub fn end_at(mut self, end_ns: u64) {
        let Some(tracer) = TRACER.get() else { return };
        if !self.context.sampled {
            return;
        }
        self.end_ns = end_ns.max(self.start_ns);
        tracer.processor.on_end(self.into_span_data(tracer.scope.clone()));
    }

    /// The SDK's form of this span.
    fn into_span_data(self, scope: InstrumentationScope) -> SpanData {
        let flags = if self.context.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let at = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.context.trace_id),
                SpanId::from_bytes(self.context.span_id),
                flags,
                false,
                TraceState::default(),
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.remote_parent,
            span_kind: match self.kind {
                Kind::Internal => SpanKind::Internal,
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            },
            name: Cow::Borrowed(self.name),
            start_time: at(self.start_ns),
            end_time: at(self.end_ns),
            attributes: self
                .attributes
                .into_iter()
                .map(|(key, value)| match value {
                    Value::Str(s) => KeyValue::new(key, s),
                    Value::Int(n) => KeyValue::new(key, n),
                })
                .collect(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: if self.error { Status::error("") } else { Status::Unset },
            instrumentation_scope: scope,
        }
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// SplitMix64 per thread, seeded from the standard library's random hash keys (as request ids).
fn random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
    }
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

// === export ===

/// The collector's address, from an `http://host:port[/base]` endpoint.
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Target, String> {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            format!("OTEL_EXPORTER_OTLP_ENDPOINT '{endpoint}' must be http://HOST:PORT (a local collector); https is not supported")
        })?;
        let (authority, base) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
        if authority.is_empty() {
            return Err(format!("OTEL_EXPORTER_OTLP_ENDPOINT '{endpoint}' names no host"));
        }
        let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:4318") };
        let base = base.trim_end_matches('/');
        let path = if base.is_empty() { "/v1/traces".to_owned() } else { format!("/{base}/v1/traces") };
        Ok(Target { authority, path })
    }
}

/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The OTLP exporter's HTTP client: one POST per export on a new connection to a plain-HTTP
/// collector (one beside the process), answered with the collector's status. The batch
/// processor's own thread runs it, so it may block.
#[derive(Debug)]
pub struct PlainHttp;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for PlainHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let authority = request.uri().authority().ok_or("the exporter's URL names no host")?.to_string();
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-protobuf");
        let status = post(&authority, path, content_type, request.body())?;
        Ok(http::Response::builder().status(status).body(bytes::Bytes::new())?)
    }
}

/// One POST on a new connection; the status code of the answer.
fn post(authority: &str, path: &str, content_type: &str, body: &[u8]) -> Result<u16, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, EXPORT_TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(EXPORT_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(EXPORT_TIMEOUT)).map_err(|e| e.to_string())?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).map_err(|e| e.to_string())?;
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).map_err(|e| format!("reading the collector's answer: {e}"))?;
    let code = std::str::from_utf8(&status[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("the collector's answer is not HTTP: {:?}", String::from_utf8_lossy(&status)))?;
    // Read the rest of the answer (the collector closes after it: `connection: close`), so the
    // connection ends with a FIN rather than a reset for unread bytes, which collectors log as
    // errors. Bounded, and best effort: the status is what the exporter needs.
    let _ = std::io::copy(&mut stream.take(ANSWER_LIMIT), &mut std::io::sink());
    Ok(code)
}

/// Most bytes of a collector's answer read after its status line (an OTLP answer is a small
/// message, or a short error).
const ANSWER_LIMIT: u64 = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let tp = TraceParent::parse(GOOD).expect("valid");
        assert!(tp.sampled);
        assert_eq!(hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&tp.span_id), "00f067aa0ba902b7");
        assert_eq!(&tp.header()[..], GOOD);
        let off = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
        assert!(!off.sampled);
        assert_eq!(&off.header()[53..], b"00");
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // A later version may append fields after a dash.
        assert!(TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
    }

    #[test]
    fn settings_come_from_the_standard_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert!(Settings::from_vars(vars(&[]), "s").expect("valid").is_none());
        let s = Settings::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]), "sluice-gateway")
            .expect("valid")
            .expect("on");
        assert_eq!((s.endpoint.as_str(), s.service_name.as_str(), s.ratio), ("http://c:4318", "sluice-gateway", 1.0));
        assert_eq!(s.protocol, Protocol::HttpBinary, "protobuf is OTLP's default");
        let s = Settings::from_vars(
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_SERVICE_NAME", "front"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
            "x",
        )
        .expect("valid")
        .expect("on");
        assert_eq!((s.service_name.as_str(), s.ratio, s.protocol), ("front", 0.25, Protocol::HttpJson));
        const GRPC: &[(&str, &str)] =
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        let err = Settings::from_vars(vars(GRPC), "x").expect_err("grpc is not offered");
        assert!(err.contains("http/protobuf"), "{err}");
        // Application Insights without an endpoint: the collector beside the process.
        let s = Settings::from_vars_or(vars(&[]), "x", Some("http://localhost:4318")).expect("valid").expect("on");
        assert_eq!(s.endpoint, "http://localhost:4318");
        let t = Target::parse("http://c").expect("target");
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("c:4318", "/v1/traces"));
        let t = Target::parse("http://c:1/otlp/").expect("target");
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("c:1", "/otlp/v1/traces"));
        assert!(Target::parse("https://c").is_err());
    }

    #[test]
    fn spans_become_the_sdks_span_data() {
        let caller = TraceParent::parse(GOOD).expect("valid");
        let mut root =
            Span::new(TraceParent { span_id: new_span_id(), ..caller }, Some(caller.span_id), "gateway", Kind::Server);
        root.remote_parent = true;
        let mut child = root.child("upstream", Kind::Client);
        child.set("sluice.service", "s1");
        child.set("http.status_code", 200u16);
        child.fail();
        child.end_ns = child.start_ns + 5;
        let (child_id, root_id) = (child.context.span_id, root.context.span_id);
        let scope = InstrumentationScope::builder("sluice").build();
        let data = child.into_span_data(scope.clone());
        assert_eq!(format!("{}", data.span_context.trace_id()), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(data.span_context.span_id(), SpanId::from_bytes(child_id));
        assert!(data.span_context.is_sampled());
        assert_eq!(data.parent_span_id, SpanId::from_bytes(root_id));
        assert!(!data.parent_span_is_remote, "a child's parent is this process's span");
        assert_eq!(data.span_kind, SpanKind::Client);
        assert_eq!(data.end_time.duration_since(data.start_time).expect("ordered"), Duration::from_nanos(5));
        assert_eq!(
            data.attributes,
            vec![KeyValue::new("sluice.service", "s1"), KeyValue::new("http.status_code", 200i64)]
        );
        assert!(matches!(data.status, Status::Error { .. }));
        let data = root.into_span_data(scope);
        assert_eq!(format!("{}", data.parent_span_id), "00f067aa0ba902b7");
        assert!(data.parent_span_is_remote, "the caller's span is remote");
    }
}
