//! The request path: resolve the route, authenticate, pick a version, forward to a replica, mirror
//! to a shadow. See design.md, "Request path".

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, Uri, header};
use http_body_util::{BodyExt, Full};
use sluice_auth::{KeyDigest, bearer_credential};

use crate::Gateway;
use crate::config::{AuthPolicy, TargetKind};
use crate::error::GatewayError;
use crate::split::unit_interval_at;
use crate::table::{EndpointTarget, RouteTable, ServiceTarget, Target, VersionTarget, millis_since};

/// Pins a request to one version by name; also names the version that answered, on every response.
pub const VERSION_HEADER: &str = "x-sluice-version";
/// Routes a request by a stable hash of its value, so one user stays on one version.
pub const ROUTE_KEY_HEADER: &str = "x-sluice-route-key";

/// Headers that describe one hop, or that the replica must not see (the caller's credential).
/// Removed in place from the caller's headers, which are then forwarded without a copy.
const NOT_FORWARDED: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    VERSION_HEADER,
    ROUTE_KEY_HEADER,
];

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
fn scoring_path(rest: &str) -> bool {
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

/// The axum fallback: every scoring route goes through here.
pub async fn handle(State(gw): State<Arc<Gateway>>, request: Request) -> Response {
    match gw.route(request).await {
        Ok(response) => response,
        Err(e) => {
            gw.metrics.refused(e.reason());
            e.into_response()
        }
    }
}

/// What is sent upstream, prepared once and reused across retries and the shadow copy.
struct Outgoing {
    method: Method,
    rest: String,
    rewrite_model: bool,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
}

// === impl Gateway ===

impl Gateway {
    async fn route(self: &Arc<Self>, request: Request) -> Result<Response, GatewayError> {
        let started = Instant::now();
        let table = self.table.load_full();
        let (mut parts, body) = request.into_parts();
        let route = parse_route(parts.uri.path()).ok_or_else(|| {
            GatewayError::NotFound(format!(
                "no route for {}: use /endpoints/NAME/..., /services/NAME/... or /v2/models/NAME/...",
                parts.uri.path()
            ))
        })?;
        let target = table.target(route.kind, route.name).ok_or_else(|| {
            let what = route.kind.map_or("endpoint or service", TargetKind::as_str);
            GatewayError::NotFound(format!("no {what} named '{}'", route.name))
        })?;
        self.authorize(&table, &target, &parts.headers)?;
        // The version is chosen while the pin and route-key headers are still there.
        let (service, stats, version_header, shadow) = match &target {
            Target::Service(service) => (service, &service.stats, &service.version_header, None),
            Target::Endpoint(endpoint) => {
                let (version, shadow) = self.choose(endpoint, &parts.headers)?;
                (&version.service, &version.stats, &version.version_header, shadow)
            }
        };
        let body = read_body(body, &parts.headers, self.settings.max_body_bytes).await?;
        for name in NOT_FORWARDED {
            parts.headers.remove(name);
        }
        let outgoing = Arc::new(Outgoing {
            method: parts.method,
            rest: route.rest.to_owned(),
            rewrite_model: route.rewrite_model,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        });
        if let Some(shadow) = shadow {
            self.mirror(shadow.service.clone(), shadow.stats.clone(), outgoing.clone());
        }
        let result = self.forward(service, &outgoing).await;
        let status = result.as_ref().map_or_else(GatewayError::status, |r| r.status());
        stats.record(status, started.elapsed());
        let mut response = match (result, &target) {
            (Ok(r), _) => r,
            // A direct service call's failure is the gateway's own error response...
            (Err(e), Target::Service(_)) => return Err(e),
            // ...an endpoint's still names the version that was tried.
            (Err(e), Target::Endpoint(_)) => {
                self.metrics.refused(e.reason());
                e.into_response()
            }
        };
        response.headers_mut().insert(VERSION_HEADER, version_header.clone());
        Ok(response)
    }

    /// The version a request goes to (pinned, sticky or weighted) and the shadow that gets a copy.
    fn choose<'e>(
        &self,
        endpoint: &'e EndpointTarget,
        headers: &HeaderMap,
    ) -> Result<(&'e VersionTarget, Option<&'e VersionTarget>), GatewayError> {
        let (name, mirror) = match headers.get(VERSION_HEADER) {
            // A pinned request is a deliberate test of one version: never mirrored.
            Some(v) => (v.to_str().unwrap_or_default(), None),
            None => {
                let draw = self.draws.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
                let (name, _) = match headers.get(ROUTE_KEY_HEADER) {
                    Some(key) => endpoint.split.pick_sticky(key.as_bytes()),
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
    fn authorize(&self, table: &RouteTable, target: &Target, headers: &HeaderMap) -> Result<(), GatewayError> {
        let policy = target.auth();
        if matches!(policy, AuthPolicy::None) {
            return Ok(());
        }
        let credential =
            headers.get(header::AUTHORIZATION).and_then(|v| bearer_credential(v.as_bytes())).ok_or_else(|| {
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
                    Err(GatewayError::Forbidden(format!(
                        "this key is not valid for {} '{}'",
                        target.kind().as_str(),
                        target.name()
                    )))
                } else {
                    Err(GatewayError::Unauthorized("invalid key".into()))
                }
            }
            AuthPolicy::Token => {
                let verifier = table
                    .verifier
                    .as_ref()
                    .ok_or_else(|| GatewayError::Unauthorized("no token signing keys are published yet".into()))?;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let claims = verifier
                    .verify(credential, now)
                    .map_err(|e| GatewayError::Unauthorized(format!("invalid token: {e}")))?;
                if claims.aud == target.audience() {
                    Ok(())
                } else {
                    Err(GatewayError::Forbidden(format!(
                        "this token is not valid for {} '{}'",
                        target.kind().as_str(),
                        target.name()
                    )))
                }
            }
        }
    }

    /// Sends the request to one replica of `service`. A request that got no response (refused
    /// connection, reset, closed keep-alive connection) is resent to another replica: scoring has
    /// no side effects, so a replica dying mid-request costs the caller nothing.
    async fn forward(&self, service: &ServiceTarget, out: &Outgoing) -> Result<Response, GatewayError> {
        let path = upstream_path(
            &out.rest,
            if out.rewrite_model { service.sole_model.as_deref() } else { None },
            out.query.as_deref(),
        );
        let mut tried = 0u64;
        let mut last_error = None;
        loop {
            let now = millis_since(self.clock);
            let Some((index, replica)) = service.pool.choose(now, tried) else {
                return Err(match last_error {
                    None => GatewayError::Unavailable(format!("service '{}' has no ready replica", service.name)),
                    Some(e) => {
                        GatewayError::Upstream(format!("no replica of service '{}' answered: {e}", service.name))
                    }
                });
            };
            tried |= 1 << index;
            let uri: Uri = format!("http://{}{path}", replica.addr)
                .parse()
                .map_err(|_| GatewayError::BadRequest("the request path is not a valid URI".into()))?;
            let build = || {
                let mut request = http::Request::new(Full::new(out.body.clone()));
                *request.method_mut() = out.method.clone();
                *request.uri_mut() = uri.clone();
                *request.headers_mut() = out.headers.clone();
                request
            };
            match tokio::time::timeout(self.settings.upstream_timeout, crate::upstream::send(&replica.addr, build))
                .await
            {
                Err(_) => {
                    return Err(GatewayError::UpstreamTimeout(format!(
                        "service '{}' did not answer within {} ms",
                        service.name,
                        self.settings.upstream_timeout.as_millis()
                    )));
                }
                Ok(Ok(response)) => {
                    replica.succeeded();
                    return Ok(response);
                }
                Ok(Err(e)) => {
                    if replica.failed(now) {
                        self.metrics.ejections.inc();
                        tracing::warn!(service = %service.name, replica = %replica.addr, error = %e, "replica failed; ejected for a while");
                    }
                    if service.pool.len() > 1 {
                        self.metrics.upstream_retries.inc();
                    }
                    last_error = Some(e);
                }
            }
        }
    }

    /// Copies the request to a shadow in the background. Its answer is measured and dropped; when
    /// too many copies are in flight the copy is skipped, so a slow shadow costs bounded memory and
    /// never the caller's time.
    fn mirror(
        self: &Arc<Self>,
        service: Arc<ServiceTarget>,
        stats: Arc<crate::metrics::RouteStats>,
        out: Arc<Outgoing>,
    ) {
        let Ok(permit) = self.shadow_slots.clone().try_acquire_owned() else {
            self.metrics.shadow_dropped.inc();
            return;
        };
        let gw = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let status = match tokio::time::timeout(gw.settings.shadow_timeout, gw.forward(&service, &out)).await {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    status
                }
                Ok(Err(e)) => e.status(),
                Err(_) => http::StatusCode::GATEWAY_TIMEOUT,
            };
            stats.record(status, started.elapsed());
        });
    }
}

/// The whole body, refused with 413 past `limit` (by Content-Length at once, else while reading).
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            GatewayError::PayloadTooLarge { limit }
        } else {
            GatewayError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A replica's own metrics and unknown paths are not reachable through the gateway.
        assert!(parse_route("/services/s1/metrics").is_none());
        assert!(parse_route("/elsewhere").is_none());
        assert!(parse_route("/models/x/other").is_none());
    }
}
