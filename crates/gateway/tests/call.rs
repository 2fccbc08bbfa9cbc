//! `Gateway::call`, the gRPC front's way in: a REST request without a connection takes the HTTP
//! path (the gateway's own routes, auth, the version choice and its pin, forwarding), and its
//! answer names the version and the request id; the credential never reaches the replica.

use axum::Router;
use axum::extract::Request;
use bytes::Bytes;
use serde_json::{Value, json};
use sluice_auth::KeyDigest;
use sluice_gateway::{Gateway, GatewaySettings};
use sluice_routing::{AuthPolicy, EndpointRoute, EndpointVersion, GatewayConfig, ServiceRoute};
use tokio::net::TcpListener;

const KEY: &str = "call-key-0123456789abcdef-0123456789";

/// A replica that answers with its name, the path it got and the headers it saw.
async fn replica(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind replica");
    let addr = listener.local_addr().expect("addr").to_string();
    let app = Router::new().fallback(move |request: Request| async move {
        let headers: Vec<String> = request.headers().keys().map(|k| k.as_str().to_owned()).collect();
        axum::Json(json!({ "replica": name, "path": request.uri().path(), "headers": headers }))
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn version(name: &str, service: &str, default: bool) -> EndpointVersion {
    EndpointVersion {
        name: name.into(),
        service: service.into(),
        traffic_percentile: 0.0,
        is_default: default,
        is_control: default,
        shadow_percent: None,
    }
}

async fn gateway() -> std::sync::Arc<Gateway> {
    let digest = KeyDigest::of(KEY);
    let service = |name: &str, model: &str, replica: String| ServiceRoute {
        name: name.into(),
        models: vec![model.into()],
        replicas: vec![replica],
        auth: AuthPolicy::None,
        replica_capacity: None,
    };
    let config = GatewayConfig {
        generation: 1,
        services: vec![service("a", "ma", replica("a").await), service("b", "mb", replica("b").await)],
        endpoints: vec![EndpointRoute {
            name: "ep".into(),
            auth: AuthPolicy::Keys { primary: digest, secondary: digest },
            versions: vec![version("blue", "a", true), version("green", "b", false)],
        }],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(GatewaySettings { seed: 7, access_log: false, ..GatewaySettings::default() });
    gateway.apply(&config).expect("config");
    gateway
}

fn request(path: &str, headers: &[(&str, &str)]) -> http::Request<Bytes> {
    let mut b = http::Request::builder().method("POST").uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Bytes::from_static(b"{}")).expect("request")
}

fn json(answer: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(answer.body()).expect("json")
}

#[tokio::test]
async fn a_call_takes_the_http_path_auth_pin_and_all() {
    let gw = gateway().await;
    let bearer = format!("Bearer {KEY}");

    let answer = gw.call(request("/v2/models/ep/infer", &[("authorization", &bearer), ("x-request-id", "r-1")])).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-sluice-version"], "blue");
    assert_eq!(answer.headers()["x-request-id"], "r-1");
    let body = json(&answer);
    assert_eq!((body["replica"].as_str(), body["path"].as_str()), (Some("a"), Some("/v2/models/ma/infer")));
    let seen: Vec<&str> = body["headers"].as_array().expect("headers").iter().filter_map(Value::as_str).collect();
    assert!(!seen.contains(&"authorization") && seen.contains(&"x-request-id"), "{seen:?}");

    let pinned = [("authorization", bearer.as_str()), ("x-sluice-version", "green")];
    let answer = gw.call(request("/v2/models/ep/infer", &pinned)).await;
    assert_eq!(answer.headers()["x-sluice-version"], "green");
    assert_eq!(json(&answer)["path"], "/v2/models/mb/infer");

    for headers in [&[][..], &[("authorization", "Bearer nope")][..]] {
        let answer = gw.call(request("/v2/models/ep/infer", headers)).await;
        assert_eq!(answer.status(), 401, "{headers:?}");
        assert!(json(&answer)["error"].is_string());
    }
    // The gateway's own routes, and readiness without a key, as over HTTP.
    let live = gw.call(http::Request::get("/v2/health/live").body(Bytes::new()).expect("get")).await;
    assert_eq!((live.status().as_u16(), json(&live)["live"].as_bool()), (200, Some(true)));
    let ready = gw.call(http::Request::get("/v2/models/ep/ready").body(Bytes::new()).expect("get")).await;
    assert_eq!(ready.status(), 200);
    let unknown = gw.call(request("/v2/models/nope/infer", &[("authorization", &bearer)])).await;
    assert_eq!(unknown.status(), 404);
}
