//! The request path: resolve the route, authenticate, pick a version, forward to a replica, mirror
//! to a shadow. See design.md, "Request path".

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use sluice_auth::{KeyDigest, bearer_credential};
use sluice_http1::Head;
use sluice_http1::encoding::{self, DecodeError};
use sluice_routing::split::unit_interval_at;
use sluice_routing::{AuthPolicy, ROUTE_KEY_HEADER, Role, TargetKind, VERSION_HEADER};
use sluice_telemetry::request_id::HEADER as REQUEST_ID;
use sluice_telemetry::trace::{Kind, Span, TRACEPARENT};

use crate::Gateway;
use crate::error::GatewayError;
use crate::metrics::RouteStats;
use crate::table::{Choice, EndpointTarget, RouteTable, ServiceTarget, Target, VersionTarget, millis_since};
use crate::upstream::Answer;

/// Headers the replica must not see besides the hop-by-hop ones: the caller's credential, the
/// gateway's own routing headers, and what the gateway sets itself (framing, the request id).
const NOT_FORWARDED: [&str; 7] =
    ["host", "authorization", "content-length", "expect", VERSION_HEADER, ROUTE_KEY_HEADER, REQUEST_ID];

/// Largest response body taken from a replica; a larger one fails the request with 502 rather
/// than holding unbounded memory.
const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// A parsed gateway URL: which target, and the path to send upstream.
struct Route<'a> {
    kind: Option<TargetKind>,
    name: &'a str,
    /// The upstream path without its leading slash.
    rest: &'a str,
    /// Whether `v2/models/{m}` in `rest` is rewritten to the service's model.
    rewrite_model: bool,
}

/// Paths a replica serves to callers; anything else (its /metrics, say) stays private.
pub(crate) fn scoring_path(rest: &str) -> bool {
    rest == "score"
        || rest == "v2"
        || rest.starts_with("v2/")
        || (rest.starts_with("models/") && rest.ends_with("/score"))
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_prefix('/')?;
    let (first, after) = path.split_once('/')?;
    match first {
        "services" | "endpoints" => {
            let (name, rest) = after.split_once('/')?;
            let kind = if first == "services" { TargetKind::Service } else { TargetKind::Endpoint };
            scoring_path(rest).then_some(Route {
                kind: Some(kind),
                name,
                rest,
                rewrite_model: kind == TargetKind::Endpoint,
            })
        }
        // OIP clients given the gateway's base URL: /v2/models/{endpoint or service}/...
        "v2" => {
            let name = after.strip_prefix("models/")?.split('/').next()?;
            Some(Route { kind: None, name, rest: path, rewrite_model: true })
        }
        // /models/{endpoint or service}/score, as on a scoring server.
        "models" => {
            let (name, tail) = after.split_once('/')?;
            (tail == "score").then_some(Route { kind: None, name, rest: "score", rewrite_model: false })
        }
        _ => None,
    }
}

/// Liveness and readiness routes of a replica, as the path after the target's prefix:
/// `v2/health/live`, `v2/health/ready`, `v2/models/{m}[/versions/{v}]/ready`.
pub(crate) fn is_health_path(rest: &str) -> bool {
    if rest == "v2/health/live" || rest == "v2/health/ready" {
        return true;
    }
    let Some(model) = rest.strip_prefix("v2/models/").and_then(|r| r.strip_suffix("/ready")) else {
        return false;
    };
    match model.split_once("/versions/") {
        Some((name, version)) => !name.contains('/') && !version.is_empty() && !version.contains('/'),
        None => !model.is_empty() && !model.contains('/'),
    }
}

/// `rest` with the model segment of `v2/models/{m}...` replaced by `model`.
fn upstream_path(rest: &str, model: Option<&str>, query: Option<&str>) -> String {
    let mut out = String::with_capacity(rest.len() + 32);
    out.push('/');
    match (rest.strip_prefix("v2/models/"), model) {
        (Some(tail), Some(model)) => {
            let end = tail.find('/').unwrap_or(tail.len());
            out.push_str("v2/models/");
            out.push_str(model);
            out.push_str(&tail[end..]);
        }
        _ => out.push_str(rest),
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// What is sent upstream, prepared once and reused across retries and the shadow copy.
struct Outgoing {
    method: String,
    rest: String,
    rewrite_model: bool,
    query: Option<String>,
    /// The caller's headers that are forwarded, as header lines.
    headers: Vec<u8>,
    body: Bytes,
}

impl Outgoing {
    /// `traced`: the gateway sends its own `traceparent` (per attempt), so the caller's is not
    /// forwarded; without tracing it passes through untouched.
    fn new(request: &Head, request_id: &[u8], rest: String, rewrite_model: bool, body: Bytes, traced: bool) -> Self {
        let mut headers = Vec::with_capacity(256);
        for (name, value) in request.headers() {
            if !NOT_FORWARDED.iter().any(|n| n.eq_ignore_ascii_case(name))
                && !request.is_hop_by_hop(name)
                && (!traced || !name.eq_ignore_ascii_case(TRACEPARENT))
            {
                sluice_http1::push_header(&mut headers, name, value);
            }
        }
        // The replica (and a shadow) see the id the caller gets back, so their logs join.
        sluice_http1::push_header(&mut headers, REQUEST_ID, request_id);
        let query = request.target().split_once('?').map(|(_, q)| q.to_owned());
        Outgoing { method: request.method().to_owned(), rest, rewrite_model, query, headers, body }
    }

    /// The request head for one attempt at `replica`, with the path `path` and the gateway's
    /// `traceparent` when tracing.
    fn head_for(&self, replica: &str, path: &str, traceparent: Option<&[u8; 55]>) -> Vec<u8> {
        let mut head = Vec::with_capacity(64 + path.len() + self.headers.len());
        head.extend_from_slice(self.method.as_bytes());
        head.push(b' ');
        head.extend_from_slice(path.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        // A Unix socket's path is no host name; such a replica is on this host.
        let host = if replica.starts_with(sluice_routing::UNIX_PREFIX) { "localhost" } else { replica };
        sluice_http1::push_header(&mut head, "host", host.as_bytes());
        head.extend_from_slice(&self.headers);
        if let Some(traceparent) = traceparent {
            sluice_http1::push_header(&mut head, TRACEPARENT, traceparent);
        }
        if !self.body.is_empty() || self.method != "GET" && self.method != "HEAD" {
            sluice_http1::push_content_length(&mut head, self.body.len());
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// The replica's answer as the caller may take it. Compressed bodies pass through the gateway
/// untouched both ways: the request's `Content-Encoding` goes to the replica with the body as it
/// arrived (the replica decodes it, within its own limit on the decoded size), and so does the
/// caller's `Accept-Encoding`, so a replica compresses only in a coding the caller takes. An
/// answer in a coding the caller did not ask for (from a replica that ignores `Accept-Encoding`)
/// is never forwarded as it is: it is decoded here, within [`MAX_RESPONSE_BYTES`], or is a 502
/// when it cannot be. An answer without `Content-Encoding` costs one header lookup.
fn for_caller(request: &Head, answer: Answer) -> Result<Answer, GatewayError> {
    let Some(content_encoding) = answer.head.header("content-encoding") else { return Ok(answer) };
    if answer.body.is_empty() || encoding::accepts(request.header("accept-encoding"), content_encoding) {
        return Ok(answer);
    }
    let coding = match encoding::content_coding(&answer.head) {
        Ok(Some(coding)) => coding,
        Ok(None) => return Ok(answer),
        Err(_) => {
            return Err(GatewayError::UpstreamEncoding(format!(
                "the replica answered in Content-Encoding '{}', which the caller did not accept and the gateway cannot decode",
                String::from_utf8_lossy(content_encoding)
            )));
        }
    };
    let undecodable = |detail: String| {
        GatewayError::UpstreamEncoding(format!(
            "the replica's {} answer, which the caller did not accept, cannot be decoded: {detail}",
            coding.as_str()
        ))
    };
    let body = encoding::decode(coding, &answer.body, MAX_RESPONSE_BYTES).map_err(|e| match e {
        DecodeError::Corrupt { detail, .. } => undecodable(detail),
        DecodeError::TooLarge { limit, .. } => undecodable(format!("it is larger than {limit} bytes decoded")),
        DecodeError::Unsupported(coding) => undecodable(format!("unsupported coding '{coding}'")),
    })?;
    let head = encoding::decoded_response_head(&answer.head, body.len()).map_err(|e| undecodable(e.to_string()))?;
    Ok(Answer { head, body: body.into() })
}

/// Everything decided about a request before its body is read: where it goes, under which name
/// it is measured and answered, and the shadow that gets a copy.
pub(crate) struct Decision {
    service: Arc<ServiceTarget>,
    stats: Arc<RouteStats>,
    version_header: HeaderValue,
    /// The endpoint the caller named, if any (its errors then still name the version tried).
    endpoint: Option<Arc<EndpointTarget>>,
    /// The version's role; `None` for a direct call to a service.
    role: Option<Role>,
    shadow: Option<(Arc<ServiceTarget>, Arc<RouteStats>)>,
    rest: String,
    rewrite_model: bool,
}

/// Where a request went, as the access log names it.
pub(crate) struct RouteLabels {
    endpoint: Option<Arc<EndpointTarget>>,
    service: Arc<ServiceTarget>,
    version: Option<HeaderValue>,
    role: Option<Role>,
}

impl RouteLabels {
    pub(crate) fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref().map(|e| e.name.as_str())
    }

    pub(crate) fn version(&self) -> Option<&str> {
        self.version.as_ref().and_then(|v| v.to_str().ok())
    }

    /// `control`, `treatment`, `shadow`, or `none` for a direct call to a service.
    pub(crate) fn role(&self) -> &'static str {
        self.role.map_or("none", Role::as_str)
    }

    pub(crate) fn service(&self) -> &str {
        &self.service.name
    }

    /// Sets the route's attributes on a request's span.
    pub(crate) fn annotate(&self, span: &mut Span) {
        if let Some(endpoint) = self.endpoint() {
            span.set("sluice.endpoint", endpoint);
        }
        if let Some(version) = self.version() {
            span.set("sluice.version", version);
        }
        span.set("sluice.role", self.role());
        span.set("sluice.service", self.service());
    }
}

impl Decision {
    /// Its labels for the access log; reference counts only, no allocation.
    pub(crate) fn labels(&self) -> RouteLabels {
        RouteLabels {
            endpoint: self.endpoint.clone(),
            service: self.service.clone(),
            version: self.endpoint.is_some().then(|| self.version_header.clone()),
            role: self.role,
        }
    }
}

/// What the caller gets back for a forwarded request.
pub(crate) enum Outcome {
    Answer(Answer, HeaderValue),
    Failed(GatewayError, Option<HeaderValue>),
}

/// 403 for a valid credential (`what`: key or token) that belongs to another target.
fn forbidden(what: &str, target: &Target) -> GatewayError {
    GatewayError::Forbidden(format!("this {what} is not valid for {} '{}'", target.kind().as_str(), target.name()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// === impl Gateway ===

impl Gateway {
    /// Resolves the route, authenticates and picks the version: everything that can refuse a
    /// request before its body is read (so a refused caller never uploads it).
    pub(crate) fn decide(&self, request: &Head) -> Result<Decision, GatewayError> {
        let table = self.table.load();
        let path = request.target().split('?').next().unwrap_or_default();
        let route = parse_route(path).ok_or_else(|| {
            GatewayError::NotFound(format!(
                "no route for {path}: use /endpoints/NAME/..., /services/NAME/... or /v2/models/NAME/..."
            ))
        })?;
        let target = table.target(route.kind, route.name).ok_or_else(|| {
            let what = route.kind.map_or("endpoint or service", TargetKind::as_str);
            GatewayError::NotFound(format!("no {what} named '{}'", route.name))
        })?;
        if request.headers().filter(|(n, _)| n.eq_ignore_ascii_case("authorization")).nth(1).is_some() {
            // Proxies in front may read another of them than the first: never guess which.
            return Err(GatewayError::BadRequest("more than one Authorization header".into()));
        }
        // Liveness and readiness tell nothing a caller could misuse, and load balancers and
        // orchestrators probe them without credentials (design.md, "Authentication").
        let probe = matches!(request.method(), "GET" | "HEAD") && is_health_path(route.rest);
        if !probe {
            self.authorize(&table, &target, request)?;
        }
        let (service, stats, version_header, role, shadow) = match &target {
            Target::Service(service) => (service, &service.stats, &service.version_header, None, None),
            Target::Endpoint(endpoint) => {
                let (version, shadow) = self.choose(endpoint, request)?;
                (&version.service, &version.stats, &version.version_header, Some(version.role), shadow)
            }
        };
        Ok(Decision {
            service: service.clone(),
            stats: stats.clone(),
            version_header: version_header.clone(),
            endpoint: match &target {
                Target::Endpoint(e) => Some(e.clone()),
                Target::Service(_) => None,
            },
            role,
            shadow: shadow.map(|s| (s.service.clone(), s.stats.clone())),
            rest: route.rest.to_owned(),
            rewrite_model: route.rewrite_model,
        })
    }

    /// Forwards a decided request with its body (and mirrors it), measuring it under its route.
    pub(crate) async fn dispatch(
        self: &Arc<Self>,
        decision: Decision,
        request: &Head,
        request_id: &[u8],
        body: Bytes,
        started: Instant,
        span: Option<&Span>,
    ) -> Outcome {
        let out =
            Arc::new(Outgoing::new(request, request_id, decision.rest, decision.rewrite_model, body, span.is_some()));
        if let Some((service, stats)) = decision.shadow {
            let shadow = span.map(|s| {
                let mut shadow = s.child("gateway shadow call", Kind::Client);
                shadow.set("sluice.service", service.name.as_str());
                shadow.set("sluice.role", "shadow");
                shadow
            });
            self.mirror(service, stats, out.clone(), shadow);
        }
        let mut upstream = span.map(|s| {
            let mut upstream = s.child("gateway upstream call", Kind::Client);
            upstream.set("sluice.service", decision.service.name.as_str());
            upstream
        });
        let traceparent = upstream.as_ref().map(|s| s.context().header());
        let in_flight = decision.service.busy.begin();
        let result = self.forward(&decision.service, &out, self.settings.busy_poll, traceparent.as_ref()).await;
        drop(in_flight);
        if let Some(mut upstream) = upstream.take() {
            match &result {
                Ok(answer) => upstream.set("http.response.status_code", answer.head.status),
                Err(e) => {
                    upstream.set("error.type", e.reason());
                    upstream.fail();
                }
            }
            upstream.end();
        }
        let result = result.and_then(|answer| for_caller(request, answer));
        let status = match &result {
            Ok(answer) => http::StatusCode::from_u16(answer.head.status).unwrap_or(http::StatusCode::BAD_GATEWAY),
            Err(e) => e.status(),
        };
        decision.stats.record(status, started.elapsed());
        match result {
            Ok(answer) => Outcome::Answer(answer, decision.version_header),
            Err(e) => {
                self.metrics.refused(e.reason());
                Outcome::Failed(e, decision.endpoint.is_some().then_some(decision.version_header))
            }
        }
    }

    /// The version a request goes to (pinned, sticky or weighted) and the shadow that gets a copy.
    fn choose<'e>(
        &self,
        endpoint: &'e EndpointTarget,
        request: &Head,
    ) -> Result<(&'e VersionTarget, Option<&'e VersionTarget>), GatewayError> {
        let (name, mirror) = match request.header(VERSION_HEADER) {
            // A pinned request is a deliberate test of one version: never mirrored.
            Some(v) => (std::str::from_utf8(v).unwrap_or_default(), None),
            None => {
                let draw = self.draws.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
                let (name, _) = match request.header(ROUTE_KEY_HEADER) {
                    Some(key) => endpoint.split.pick_sticky(key),
                    None => endpoint.split.pick(unit_interval_at(self.settings.seed, draw)),
                };
                (name, endpoint.split.mirror(unit_interval_at(self.settings.seed, draw + 1)))
            }
        };
        let version = endpoint.versions.get(name).ok_or_else(|| {
            let mut names: Vec<_> = endpoint.versions.keys().map(String::as_str).collect();
            names.sort_unstable();
            GatewayError::NotFound(format!(
                "endpoint '{}' has no version '{name}' (versions: {})",
                endpoint.name,
                names.join(", ")
            ))
        })?;
        Ok((version, mirror.and_then(|m| endpoint.versions.get(m))))
    }

    /// Key or token check for `target`. 401 for a missing or invalid credential, 403 for a valid
    /// one that belongs to something else. Errors never echo the credential.
    fn authorize(&self, table: &RouteTable, target: &Target, request: &Head) -> Result<(), GatewayError> {
        let policy = target.auth();
        if matches!(policy, AuthPolicy::None) {
            return Ok(());
        }
        let credential = request.header("authorization").and_then(bearer_credential).ok_or_else(|| {
            GatewayError::Unauthorized(format!(
                "{} '{}' needs credentials: send 'Authorization: Bearer <{}>'",
                target.kind().as_str(),
                target.name(),
                if matches!(policy, AuthPolicy::Token) { "token" } else { "key" }
            ))
        })?;
        match policy {
            AuthPolicy::None => Ok(()),
            AuthPolicy::Keys { primary, secondary } => {
                // Hashed once; both compared every time, in constant time, so timing says nothing
                // about which matched.
                let presented = KeyDigest::of(credential);
                if primary.ct_eq(&presented) | secondary.ct_eq(&presented) {
                    Ok(())
                } else if table.all_key_digests.contains(&presented.to_hex()) {
                    Err(forbidden("key", target))
                } else if table.verifier.as_ref().is_some_and(|v| v.verify(credential, unix_now()).is_ok()) {
                    // A valid token, of a token-auth target: the caller is known, not allowed here.
                    Err(forbidden("token", target))
                } else {
                    Err(GatewayError::Unauthorized("invalid key".into()))
                }
            }
            AuthPolicy::Token => {
                let verifier = table
                    .verifier
                    .as_ref()
                    .ok_or_else(|| GatewayError::Unauthorized("no token signing keys are published yet".into()))?;
                let claims = match verifier.verify(credential, unix_now()) {
                    Ok(claims) => claims,
                    // A valid key, of a key-auth target: the caller is known, not allowed here.
                    Err(_) if table.all_key_digests.contains(&KeyDigest::of(credential).to_hex()) => {
                        return Err(forbidden("key", target));
                    }
                    Err(e) => return Err(GatewayError::Unauthorized(format!("invalid token: {e}"))),
                };
                if claims.aud == target.audience() { Ok(()) } else { Err(forbidden("token", target)) }
            }
        }
    }

    /// Sends the request to one replica of `service`. A request that got no response (refused
    /// connection, reset, closed keep-alive connection) is resent to another replica: scoring has
    /// no side effects, so a replica dying mid-request costs the caller nothing. `poll` is how long
    /// to busy-poll for the answer before sleeping on it (see `sluice_http1::poll`).
    async fn forward(
        &self,
        service: &ServiceTarget,
        out: &Outgoing,
        poll: Duration,
        traceparent: Option<&[u8; 55]>,
    ) -> Result<Answer, GatewayError> {
        let path = upstream_path(
            &out.rest,
            if out.rewrite_model { service.sole_model.as_deref() } else { None },
            out.query.as_deref(),
        );
        let to_head = out.method == "HEAD";
        let mut tried = 0u64;
        let mut last_error = None;
        loop {
            let now = millis_since(self.clock);
            let (index, replica) = match service.pool.choose(now, tried) {
                Choice::Replica(index, replica) => (index, replica),
                // Refused here rather than sent to be refused: under overload the replica's CPU
                // goes to the requests it admitted, not to turning others away.
                Choice::Full if last_error.is_none() => {
                    // Admitted requests first: the refusal waits until this thread's ready work
                    // and its sockets have been seen (tokio runs a yielded task after polling for
                    // I/O), so answers from replicas are relayed before a burst of 503s is written.
                    // In the overload soak (benches/RESULTS.md, 2026-12-03, A/B of 60 s runs) this
                    // took the admitted p99 from 3.1-3.3 ms to 2.5-2.7 ms; refusals' p50 stayed
                    // at 0.75 ms.
                    tokio::task::yield_now().await;
                    return Err(GatewayError::Unavailable(format!(
                        "every replica of service '{}' holds as many requests as it can take ({} each)",
                        service.name,
                        service.pool.capacity.unwrap_or_default()
                    )));
                }
                Choice::Full | Choice::Exhausted => {
                    return Err(match last_error {
                        None => GatewayError::Unavailable(format!("service '{}' has no ready replica", service.name)),
                        Some(source) => GatewayError::Upstream { service: service.name.clone(), source },
                    });
                }
            };
            tried |= 1 << index;
            let head = out.head_for(&replica.addr, &path, traceparent);
            let _in_flight = replica.enter();
            let sent = crate::upstream::send(&replica.addr, &head, &out.body, to_head, MAX_RESPONSE_BYTES, poll);
            match tokio::time::timeout(self.settings.upstream_timeout, sent).await {
                Err(_) => {
                    if replica.errored(now) {
                        self.ejected(service, replica, "did not answer in time");
                    }
                    return Err(GatewayError::UpstreamTimeout {
                        service: service.name.clone(),
                        timeout_ms: u64::try_from(self.settings.upstream_timeout.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                Ok(Ok(answer)) => {
                    match answer.head.status {
                        500 | 502 | 504 => {
                            if replica.errored(now) {
                                self.ejected(service, replica, "answered with errors in a row");
                            }
                        }
                        _ => replica.succeeded(),
                    }
                    return Ok(answer);
                }
                Ok(Err(e)) => {
                    if replica.unreachable(now) {
                        self.ejected(service, replica, &e.to_string());
                    }
                    // A response that started and broke off is the caller's answer: never resent.
                    if !e.is_retryable() {
                        return Err(GatewayError::Upstream { service: service.name.clone(), source: e });
                    }
                    if service.pool.len() > 1 {
                        self.metrics.upstream_retries.inc();
                    }
                    last_error = Some(e);
                }
            }
        }
    }

    /// Counts and logs a replica's ejection.
    fn ejected(&self, service: &ServiceTarget, replica: &crate::table::Replica, why: &str) {
        self.metrics.ejections.inc();
        tracing::warn!(service = %service.name, replica = %replica.addr, reason = why, "replica ejected for a while");
    }

    /// Copies the request to a shadow in the background. Its answer is measured and dropped; when
    /// too many copies are in flight the copy is skipped, so a slow shadow costs bounded memory and
    /// never the caller's time.
    fn mirror(
        self: &Arc<Self>,
        service: Arc<ServiceTarget>,
        stats: Arc<crate::metrics::RouteStats>,
        out: Arc<Outgoing>,
        span: Option<Span>,
    ) {
        let Ok(permit) = self.shadow_slots.clone().try_acquire_owned() else {
            self.metrics.shadow_dropped.inc();
            if let Some(mut span) = span {
                span.set("error.type", "shadow_dropped");
                span.end();
            }
            return;
        };
        let gw = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let traceparent = span.as_ref().map(|s| s.context().header());
            let status = match tokio::time::timeout(
                gw.settings.shadow_timeout,
                gw.forward(&service, &out, Duration::ZERO, traceparent.as_ref()),
            )
            .await
            {
                Ok(Ok(answer)) => {
                    http::StatusCode::from_u16(answer.head.status).unwrap_or(http::StatusCode::BAD_GATEWAY)
                }
                Ok(Err(e)) => e.status(),
                Err(_) => http::StatusCode::GATEWAY_TIMEOUT,
            };
            stats.record(status, started.elapsed());
            if let Some(mut span) = span {
                span.set("http.response.status_code", status.as_u16());
                span.end();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_unix_address_is_what_the_connector_reads() {
        assert_eq!(sluice_routing::UNIX_PREFIX, sluice_http1::stream::UNIX_PREFIX);
    }

    #[test]
    fn routes_parse_and_rewrite() {
        let r = parse_route("/endpoints/fraud/v2/models/anything/infer").expect("route");
        assert_eq!((r.kind, r.name, r.rest), (Some(TargetKind::Endpoint), "fraud", "v2/models/anything/infer"));
        assert_eq!(upstream_path(r.rest, Some("mlp"), Some("a=1")), "/v2/models/mlp/infer?a=1");
        let r = parse_route("/services/s1/score").expect("route");
        assert!(!r.rewrite_model);
        assert_eq!(upstream_path(r.rest, None, None), "/score");
        let r = parse_route("/v2/models/fraud/ready").expect("route");
        assert_eq!((r.kind, r.name), (None, "fraud"));
        assert_eq!(upstream_path(r.rest, Some("m"), None), "/v2/models/m/ready");
        assert_eq!(upstream_path("v2/models/x", Some("m"), None), "/v2/models/m");
        let r = parse_route("/models/fraud/score").expect("route");
        assert_eq!((r.name, r.rest), ("fraud", "score"));
        for probe in ["v2/health/live", "v2/health/ready", "v2/models/m/ready", "v2/models/m/versions/2/ready"] {
            assert!(is_health_path(probe), "{probe}");
        }
        for other in ["v2/models/m/infer", "v2/models/m", "v2/models//ready", "v2/models/a/b/ready", "score"] {
            assert!(!is_health_path(other), "{other}");
        }
        // A replica's own metrics and unknown paths are not reachable through the gateway.
        assert!(parse_route("/services/s1/metrics").is_none());
        assert!(parse_route("/elsewhere").is_none());
        assert!(parse_route("/models/x/other").is_none());
    }
}
