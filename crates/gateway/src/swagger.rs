//! `GET /services/{s}/swagger.json` and `GET /endpoints/{e}/swagger.json`: the OpenAPI document
//! of a service or an endpoint, in the gateway's URL space.
//!
//! The gateway knows no model signatures (it depends on nothing of the model side), so it asks a
//! replica for its `/swagger.json` (for an endpoint, a replica of its default version's service)
//! and rewrites it: every path the gateway forwards gets the target's prefix, paths it does not
//! forward are dropped, and the security scheme says what the target's auth policy asks for (a
//! bearer key or a bearer JWT; none when auth is off), with the health routes open as the gateway
//! keeps them. The document is made once per configuration: the cache lives in the route table,
//! so a new configuration (a new model version, a new default version, other keys) starts afresh.
//!
//! These routes need no credential, as the reference product's `swagger_uri` needs none: Swagger
//! UI and client generators fetch a document without headers, and the document tells nothing a
//! caller could misuse. It names routes, tensors, datatypes and shapes, never a key, and scoring
//! still needs the credential it documents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use sluice_routing::{AuthPolicy, ROUTE_KEY_HEADER, TargetKind, VERSION_HEADER};
use sluice_telemetry::request_id::HEADER as REQUEST_ID;

use crate::Gateway;
use crate::error::GatewayError;
use crate::proxy::{is_health_path, scoring_path};
use crate::table::{Choice, ServiceTarget, Target, millis_since};

/// Largest document taken from a replica.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// Documents made for one configuration, by the target's audience (`service:NAME`).
#[derive(Debug, Default)]
pub struct Cache(Mutex<HashMap<String, Bytes>>);

impl Cache {
    fn get(&self, key: &str) -> Option<Bytes> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn insert(&self, key: String, document: Bytes) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key, document);
    }
}

/// The target of `/services/{s}/swagger.json` or `/endpoints/{e}/swagger.json`.
pub(crate) fn route(path: &str) -> Option<(TargetKind, &str)> {
    let (first, rest) = path.strip_prefix('/')?.split_once('/')?;
    let kind = match first {
        "services" => TargetKind::Service,
        "endpoints" => TargetKind::Endpoint,
        _ => return None,
    };
    let name = rest.strip_suffix("/swagger.json")?;
    (!name.is_empty() && !name.contains('/')).then_some((kind, name))
}

// === impl Gateway ===

impl Gateway {
    /// The document of the `kind` named `name`, from this configuration's cache or made now.
    pub(crate) async fn swagger(
        &self,
        method: &str,
        kind: TargetKind,
        name: &str,
        request_id: &[u8],
    ) -> Result<Bytes, GatewayError> {
        if method != "GET" && method != "HEAD" {
            return Err(GatewayError::MethodNotAllowed(format!("swagger.json answers GET only, not {method}")));
        }
        // Held across the fetch: the document is made for, and cached in, this configuration.
        let table = self.table.load_full();
        let target = table
            .target(Some(kind), name)
            .ok_or_else(|| GatewayError::NotFound(format!("no {} named '{name}'", kind.as_str())))?;
        let key = target.audience();
        if let Some(document) = table.swagger.get(&key) {
            return Ok(document);
        }
        let (service, version) = match &target {
            Target::Service(service) => (service.clone(), None),
            Target::Endpoint(endpoint) => {
                let version = endpoint
                    .versions
                    .get(&endpoint.default_version)
                    .ok_or_else(|| GatewayError::NotFound(format!("endpoint '{name}' has no default version")))?;
                (version.service.clone(), Some(endpoint.default_version.as_str()))
            }
        };
        let document = self.fetch_document(&service, request_id).await?;
        let document = rewrite(document, &target, &service.name, version)
            .map_err(|reason| GatewayError::UpstreamDocument { service: service.name.clone(), reason })?;
        let body = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
        table.swagger.insert(key, body.clone());
        Ok(body)
    }

    /// `GET /swagger.json` from a replica of `service`, trying the others while none answers.
    async fn fetch_document(&self, service: &Arc<ServiceTarget>, request_id: &[u8]) -> Result<Value, GatewayError> {
        let mut tried = 0u64;
        let mut last_error = None;
        loop {
            let replica = match service.pool.choose(millis_since(self.clock), tried) {
                Choice::Replica(index, replica) => {
                    tried |= 1 << index;
                    replica
                }
                Choice::Full | Choice::Exhausted => {
                    return Err(match last_error {
                        None => GatewayError::Unavailable(format!("service '{}' has no ready replica", service.name)),
                        Some(source) => GatewayError::Upstream { service: service.name.clone(), source },
                    });
                }
            };
            let mut head = b"GET /swagger.json HTTP/1.1\r\n".to_vec();
            // A Unix socket's path is no host name; such a replica is on this host.
            let host = if replica.addr.starts_with(sluice_routing::UNIX_PREFIX) { "localhost" } else { &replica.addr };
            sluice_http1::push_header(&mut head, "host", host.as_bytes());
            sluice_http1::push_header(&mut head, REQUEST_ID, request_id);
            head.extend_from_slice(b"\r\n");
            let _in_flight = replica.enter();
            let sent = crate::upstream::send(&replica.addr, &head, &[], false, MAX_DOCUMENT_BYTES, Duration::ZERO);
            let answer = match tokio::time::timeout(self.settings.upstream_timeout, sent).await {
                Err(_) => {
                    return Err(GatewayError::UpstreamTimeout {
                        service: service.name.clone(),
                        timeout_ms: u64::try_from(self.settings.upstream_timeout.as_millis()).unwrap_or(u64::MAX),
                    });
                }
                Ok(Err(e)) if e.is_retryable() => {
                    last_error = Some(e);
                    continue;
                }
                Ok(Err(e)) => return Err(GatewayError::Upstream { service: service.name.clone(), source: e }),
                Ok(Ok(answer)) => answer,
            };
            let bad = |reason: String| GatewayError::UpstreamDocument { service: service.name.clone(), reason };
            if answer.head.status != 200 {
                return Err(bad(format!("a replica answered {} to GET /swagger.json", answer.head.status)));
            }
            return serde_json::from_slice(&answer.body).map_err(|e| bad(format!("not JSON: {e}")));
        }
    }
}

/// Methods of an OpenAPI path item (its other keys are summaries and shared parameters).
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// A replica's document as `target`'s callers see it at the gateway. `service` answered it;
/// `version` is the endpoint version it stands for.
fn rewrite(mut doc: Value, target: &Target, service: &str, version: Option<&str>) -> Result<Value, String> {
    if !doc.get("openapi").and_then(Value::as_str).is_some_and(|v| v.starts_with("3.")) {
        return Err("not an OpenAPI 3 document".into());
    }
    let Some(root) = doc.as_object_mut() else { return Err("not a JSON object".into()) };
    let Some(paths) = root.get_mut("paths").and_then(Value::as_object_mut).map(std::mem::take) else {
        return Err("no paths".into());
    };
    let kind = target.kind();
    let name = target.name();
    let secured = !matches!(target.auth(), AuthPolicy::None);
    let mut prefixed = Map::new();
    for (path, mut item) in paths {
        // Only what the gateway forwards: a replica's own routes (its /metrics) stay private.
        let Some(rest) = path.strip_prefix('/').filter(|rest| scoring_path(rest)) else { continue };
        let health = is_health_path(rest);
        for (method, op) in item.as_object_mut().into_iter().flatten() {
            let Some(op) = op.as_object_mut().filter(|_| METHODS.contains(&method.as_str())) else { continue };
            if secured && health {
                // Probes need no credential at the gateway (proxy.rs, `decide`).
                op.insert("security".into(), json!([]));
            }
            if kind == TargetKind::Endpoint && !health {
                let parameters = op.entry("parameters").or_insert_with(|| json!([]));
                if let Some(list) = parameters.as_array_mut() {
                    list.extend(endpoint_headers());
                }
            }
        }
        prefixed.insert(format!("/{}s/{name}/{rest}", kind.as_str()), item);
    }
    root.insert("paths".into(), Value::Object(prefixed));
    root.insert("servers".into(), json!([{ "url": "/" }]));
    let about = match version {
        None => format!("Service '{name}' through the Sluice gateway."),
        Some(version) => format!(
            "Endpoint '{name}' through the Sluice gateway: each request goes to a version picked by \
             weight, or the one named by {VERSION_HEADER}, or one chosen by a stable hash of \
             {ROUTE_KEY_HEADER}. The schemas are those of its default version '{version}' (service \
             '{service}'); under the endpoint, /v2/models/NAME reaches the picked version's model \
             whatever NAME is when its service serves one model."
        ),
    };
    let info = root.entry("info").or_insert_with(|| json!({}));
    if let Some(info) = info.as_object_mut() {
        let title = format!("Sluice {} '{name}'", kind.as_str());
        let replica = info.get("description").and_then(Value::as_str).unwrap_or_default();
        let description = format!("{about} {replica}").trim_end().to_owned();
        info.insert("title".into(), title.into());
        info.insert("description".into(), description.into());
    }
    let components = root.entry("components").or_insert_with(|| json!({}));
    if !components.is_object() {
        *components = json!({});
    }
    if let Some(components) = components.as_object_mut() {
        components.remove("securitySchemes");
    }
    root.remove("security");
    let scheme = match target.auth() {
        AuthPolicy::None => None,
        AuthPolicy::Keys { .. } => Some(json!({
            "type": "http",
            "scheme": "bearer",
            "description": format!(
                "the primary or secondary key of {} '{name}' (sluice keys get {name})",
                kind.as_str()
            ),
        })),
        AuthPolicy::Token => Some(json!({
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": format!("a token for {} '{name}' (sluice token get {name})", kind.as_str()),
        })),
    };
    if let Some(scheme) = scheme {
        if let Some(components) = root.get_mut("components").and_then(Value::as_object_mut) {
            components.insert("securitySchemes".into(), json!({ "bearer": scheme }));
        }
        root.insert("security".into(), json!([{ "bearer": [] }]));
    }
    Ok(doc)
}

/// The routing headers an endpoint's callers may send.
fn endpoint_headers() -> [Value; 2] {
    let header = |name: &str, description: &str| {
        json!({ "name": name, "in": "header", "required": false, "schema": { "type": "string" },
                "description": description })
    };
    [
        header(VERSION_HEADER, "pin the request to this version (never mirrored to a shadow)"),
        header(ROUTE_KEY_HEADER, "route by a stable hash of this key, so one user stays on one version"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::GatewayMetrics;
    use crate::table::{ReplicaSet, RouteTable};
    use sluice_auth::{Algorithm, KeyDigest};
    use sluice_routing::{EndpointRoute, EndpointVersion, GatewayConfig, ServiceRoute};

    fn replica_document() -> Value {
        json!({
            "openapi": "3.0.3",
            "info": { "title": "Sluice scoring server", "version": "0.1.0", "description": "Models: m." },
            "servers": [{ "url": "/" }],
            "paths": {
                "/v2/health/live": { "get": { "responses": {} } },
                "/v2/models/m/ready": { "get": { "responses": {} } },
                "/v2/models/m/infer": { "post": { "responses": {} } },
                "/models/m/score": { "post": { "responses": {} } },
                "/score": { "post": { "responses": {} } },
                "/metrics": { "get": { "responses": {} } },
            },
            "components": { "schemas": {} },
        })
    }

    fn table(auth: AuthPolicy) -> RouteTable {
        let config = GatewayConfig {
            generation: 1,
            services: vec![ServiceRoute {
                name: "s".into(),
                models: vec!["m".into()],
                replicas: Vec::new(),
                auth: auth.clone(),
                replica_capacity: None,
            }],
            endpoints: vec![EndpointRoute {
                name: "e".into(),
                auth,
                versions: vec![EndpointVersion {
                    name: "blue".into(),
                    service: "s".into(),
                    traffic_percentile: 100.0,
                    is_default: true,
                    is_control: false,
                    shadow_percent: None,
                }],
            }],
            jwks: Default::default(),
        };
        RouteTable::build(&config, Algorithm::EdDSA, &ReplicaSet::default(), &GatewayMetrics::default())
            .expect("valid configuration")
    }

    fn keys() -> AuthPolicy {
        AuthPolicy::Keys { primary: KeyDigest::of("a"), secondary: KeyDigest::of("b") }
    }

    #[test]
    fn swagger_routes_name_a_service_or_an_endpoint() {
        assert_eq!(route("/services/s/swagger.json"), Some((TargetKind::Service, "s")));
        assert_eq!(route("/endpoints/e/swagger.json"), Some((TargetKind::Endpoint, "e")));
        for other in
            ["/services//swagger.json", "/services/a/b/swagger.json", "/models/m/swagger.json", "/swagger.json"]
        {
            assert_eq!(route(other), None, "{other}");
        }
    }

    #[test]
    fn a_service_document_is_prefixed_and_secured_as_its_auth_asks() {
        let t = table(keys());
        let service = t.target(Some(TargetKind::Service), "s").expect("service");
        let doc = rewrite(replica_document(), &service, "s", None).expect("rewritten");
        let paths: Vec<&str> = doc["paths"].as_object().expect("paths").keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "/services/s/models/m/score",
                "/services/s/score",
                "/services/s/v2/health/live",
                "/services/s/v2/models/m/infer",
                "/services/s/v2/models/m/ready",
            ],
            "every forwarded path prefixed, the replica's /metrics dropped"
        );
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert!(doc["components"]["securitySchemes"]["bearer"].get("bearerFormat").is_none());
        assert_eq!(doc["security"], json!([{ "bearer": [] }]));
        assert_eq!(doc["paths"]["/services/s/v2/health/live"]["get"]["security"], json!([]), "probes stay open");
        assert_eq!(doc["paths"]["/services/s/v2/models/m/ready"]["get"]["security"], json!([]));
        assert!(doc["paths"]["/services/s/score"]["post"].get("security").is_none(), "scoring needs the key");
        assert_eq!(doc["info"]["title"], "Sluice service 's'");
        assert_eq!(doc["servers"], json!([{ "url": "/" }]));

        let t = table(AuthPolicy::Token);
        let service = t.target(Some(TargetKind::Service), "s").expect("service");
        let doc = rewrite(replica_document(), &service, "s", None).expect("rewritten");
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["bearerFormat"], "JWT");

        let t = table(AuthPolicy::None);
        let service = t.target(Some(TargetKind::Service), "s").expect("service");
        let doc = rewrite(replica_document(), &service, "s", None).expect("rewritten");
        assert!(doc.get("security").is_none() && doc["components"].get("securitySchemes").is_none(), "{doc}");
        assert!(doc["paths"]["/services/s/v2/health/live"]["get"].get("security").is_none());
    }

    #[test]
    fn an_endpoint_document_names_its_default_version_and_routing_headers() {
        let t = table(keys());
        let endpoint = t.target(Some(TargetKind::Endpoint), "e").expect("endpoint");
        let doc = rewrite(replica_document(), &endpoint, "s", Some("blue")).expect("rewritten");
        let infer = &doc["paths"]["/endpoints/e/v2/models/m/infer"]["post"];
        let headers: Vec<&str> =
            infer["parameters"].as_array().expect("parameters").iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(headers, [VERSION_HEADER, ROUTE_KEY_HEADER]);
        assert!(doc["paths"]["/endpoints/e/v2/health/live"]["get"].get("parameters").is_none());
        let description = doc["info"]["description"].as_str().expect("description");
        assert!(description.contains("default version 'blue' (service 's')") && description.ends_with("Models: m."));
    }

    #[test]
    fn what_is_not_an_openapi_document_is_refused() {
        let t = table(AuthPolicy::None);
        let service = t.target(Some(TargetKind::Service), "s").expect("service");
        for bad in
            [json!({ "error": "no route" }), json!({ "openapi": "2.0", "paths": {} }), json!({ "openapi": "3.0.3" })]
        {
            assert!(rewrite(bad.clone(), &service, "s", None).is_err(), "{bad}");
        }
    }
}
