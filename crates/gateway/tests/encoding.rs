//! Compressed bodies through the gateway, against a replica (an axum server) that shows what it
//! received and answers in gzip whatever the caller asked: request bodies and their
//! `Content-Encoding` pass through untouched (the gateway's limit counts the encoded bytes), the
//! caller's `Accept-Encoding` reaches the replica, and an answer in a coding the caller did not
//! accept is decoded by the gateway, or refused with 502 when it cannot be.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::{Value, json};
use sluice_gateway::{Gateway, GatewaySettings};
use sluice_http1::encoding::{Coding, decode, encode};
use sluice_routing::{AuthPolicy, GatewayConfig, ServiceRoute};
use tokio::net::TcpListener;

/// The gateway's body limit in these tests: larger than the compressed bodies sent, smaller than
/// what they decode to.
const LIMIT: usize = 4096;

/// What the replica saw, in gzip whatever the caller accepts: a replica that ignores
/// `Accept-Encoding`.
async fn always_gzip(headers: HeaderMap, body: Bytes) -> ([(&'static str, &'static str); 3], Vec<u8>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let seen = json!({
        "content-encoding": header("content-encoding"),
        "accept-encoding": header("accept-encoding"),
        "content-length": header("content-length"),
        "body": body.to_vec(),
    });
    let answer = encode(Coding::Gzip, seen.to_string().as_bytes());
    ([("content-type", "application/json"), ("content-encoding", "gzip"), ("vary", "accept-encoding")], answer)
}

fn replica_app() -> Router {
    Router::new()
        .route("/v2/models/m/infer", post(always_gzip))
        .route("/v2/models/m/brotli", post(|| async { ([("content-encoding", "br")], vec![0x1b, 0x03, 0x00]) }))
        .route(
            "/v2/models/m/corrupt",
            post(|| async { ([("content-encoding", "gzip")], b"this is not gzip at all".to_vec()) }),
        )
}

/// A gateway in front of one replica, service `open` without auth.
async fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind replica");
    let replica = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, replica_app()).await;
    });
    let gateway = Gateway::new(GatewaySettings { max_body_bytes: LIMIT, seed: 7, ..GatewaySettings::default() });
    let config = GatewayConfig {
        generation: 1,
        services: vec![ServiceRoute {
            name: "open".into(),
            models: vec!["m".into()],
            replicas: vec![replica.to_string()],
            auth: AuthPolicy::None,
            replica_capacity: None,
        }],
        endpoints: Vec::new(),
        jwks: sluice_auth::Jwks { keys: Vec::new() },
    };
    gateway.apply(&config).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sluice_gateway::serve(listener, gateway, std::future::pending()));
    addr
}

/// Posts `body` with `headers` to `path` of service `open`: (status, headers, raw body).
async fn send(gateway: SocketAddr, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().post(format!("http://{gateway}/services/open/v2/models/m/{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.expect("answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_compressed_request_and_an_accepted_answer_pass_through_untouched() {
    let gateway = start().await;
    // Decodes to 5 times the gateway's limit; what the gateway holds is the encoded body.
    let json = format!("{{\"data\": [{}]}}", vec!["0.5"; 4 * LIMIT / 4].join(", "));
    assert!(json.len() > 4 * LIMIT);
    let gz = encode(Coding::Gzip, json.as_bytes());
    assert!(gz.len() < LIMIT);
    let (status, headers, body) = send(
        gateway,
        "infer",
        &[("content-encoding", "gzip"), ("accept-encoding", "gzip;q=1, identity;q=0.5")],
        gz.clone(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert_eq!(header(&headers, "vary"), Some("accept-encoding"));
    assert_eq!(header(&headers, "content-length"), Some(body.len().to_string().as_str()));
    let seen: Value = serde_json::from_slice(&decode(Coding::Gzip, &body, 1 << 20).expect("gzip")).expect("json");
    // The replica got the body as the caller sent it, with its coding and the caller's choice.
    assert_eq!(seen["content-encoding"], "gzip");
    assert_eq!(seen["accept-encoding"], "gzip;q=1, identity;q=0.5");
    assert_eq!(seen["content-length"], gz.len().to_string());
    assert_eq!(seen["body"], json!(gz));

    // Too large as it arrives is the gateway's 413, whatever it would decode to.
    let big = vec![b'x'; LIMIT + 1];
    let (status, _, body) = send(gateway, "infer", &[("content-encoding", "gzip")], big).await;
    assert_eq!(status, 413);
    let error: Value = serde_json::from_slice(&body).expect("json error");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("4096 bytes")), "{error}");
}

#[tokio::test]
async fn an_answer_in_a_coding_the_caller_did_not_accept_is_decoded() {
    let gateway = start().await;
    for accept in [None, Some("deflate"), Some("gzip;q=0, deflate"), Some("identity")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept-encoding", *a)).collect();
        let (status, got, body) = send(gateway, "infer", &headers, b"{}".to_vec()).await;
        assert_eq!(status, 200, "{accept:?}");
        assert_eq!(header(&got, "content-encoding"), None, "{accept:?}: forwarded an encoding not asked for");
        assert_eq!(header(&got, "content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(header(&got, "vary"), Some("accept-encoding"), "the replica's other headers stay");
        let seen: Value = serde_json::from_slice(&body).expect("identity JSON");
        assert_eq!(seen["accept-encoding"], json!(accept), "{accept:?}");
        assert_eq!(seen["body"], json!(b"{}"));
    }
}

#[tokio::test]
async fn an_answer_the_gateway_cannot_decode_for_the_caller_is_a_502() {
    let gateway = start().await;
    let (status, headers, body) = send(gateway, "brotli", &[], Vec::new()).await;
    assert_eq!(status, 502);
    assert_eq!(header(&headers, "content-encoding"), None);
    let error: Value = serde_json::from_slice(&body).expect("json error");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("'br'") && e.contains("did not accept")), "{error}");
    // A caller that accepts it gets it as it came.
    let (status, headers, body) = send(gateway, "brotli", &[("accept-encoding", "br")], Vec::new()).await;
    assert_eq!((status, header(&headers, "content-encoding"), body), (200, Some("br"), vec![0x1b, 0x03, 0x00]));

    let (status, _, body) = send(gateway, "corrupt", &[], Vec::new()).await;
    assert_eq!(status, 502);
    let error: Value = serde_json::from_slice(&body).expect("json error");
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains("gzip answer") && e.contains("cannot be decoded")),
        "{error}"
    );
}
