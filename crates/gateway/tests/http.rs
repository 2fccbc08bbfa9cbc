//! The gateway's HTTP/1.1 server and upstream client against a real replica (an axum server) over
//! loopback: what is forwarded and what is not, framing in both directions, limits, keep-alive,
//! pipelining, `Expect: 100-continue`, stale pooled connections and graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_auth::KeyDigest;
use sluice_gateway::{Gateway, GatewaySettings};
use sluice_routing::{AuthPolicy, GatewayConfig, ServiceRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const KEY: &str = "k3y-for-the-locked-service-0123456789abcdef";
const LIMIT: usize = 1024;

/// Answers with what it received, so a test can see exactly what the gateway forwarded.
async fn echo(request: Request) -> axum::Json<Value> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let headers: serde_json::Map<String, Value> =
        parts.headers.iter().map(|(n, v)| (n.as_str().to_owned(), json!(v.to_str().unwrap_or("?")))).collect();
    axum::Json(json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

fn replica_app() -> Router {
    Router::new()
        .route("/v2/models/m/infer", post(echo))
        .route("/v2/models/m", get(echo))
        .route(
            "/v2/models/m/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "slow answer"
            }),
        )
        .route("/v2/models/m/empty", post(|| async { axum::http::StatusCode::NO_CONTENT }))
        .route("/v2/health/ready", get(|| async { axum::Json(json!({ "ready": true, "from": "replica" })) }))
        .route("/v2/models/m/ready", get(|| async { axum::Json(json!({ "ready": true, "from": "replica" })) }))
        // No length known in advance: hyper sends it chunked.
        .route(
            "/v2/models/m/chunked",
            get(|| async {
                let parts = ["chunk one, ", "chunk two"].map(Ok::<_, std::io::Error>);
                Body::from_stream(futures_util::stream::iter(parts))
            }),
        )
}

/// The control plane's signing key in these tests.
fn signer() -> &'static sluice_auth::TokenSigner {
    static SIGNER: std::sync::OnceLock<sluice_auth::TokenSigner> = std::sync::OnceLock::new();
    SIGNER.get_or_init(sluice_auth::TokenSigner::generate)
}

/// A token for `audience` signed by [`signer`].
fn token(audience: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    signer().sign(&sluice_auth::Claims {
        iss: "sluice-control".into(),
        sub: "test".into(),
        aud: audience.into(),
        iat: now,
        exp: now + 600,
    })
}

/// A replica on `listener` until `stop` fires.
fn replica(listener: TcpListener) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, replica_app())
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

struct Fixture {
    gateway: SocketAddr,
    replica: SocketAddr,
    stop_replica: Option<oneshot::Sender<()>>,
    stop_gateway: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Fixture {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind replica");
    let replica_addr = listener.local_addr().expect("addr");
    let stop_replica = replica(listener);
    let settings = GatewaySettings { max_body_bytes: LIMIT, seed: 7, ..GatewaySettings::default() };
    let gateway = Gateway::new(settings);
    let route = |name: &str, auth| ServiceRoute {
        name: name.into(),
        models: vec!["m".into()],
        replicas: vec![replica_addr.to_string()],
        auth,
        replica_capacity: None,
    };
    let digest = KeyDigest::of(KEY);
    let config = GatewayConfig {
        generation: 1,
        services: vec![
            route("open", AuthPolicy::None),
            route("locked", AuthPolicy::Keys { primary: digest, secondary: digest }),
            route("tokened", AuthPolicy::Token),
        ],
        endpoints: Vec::new(),
        jwks: sluice_auth::Jwks { keys: vec![signer().public_jwk()] },
    };
    gateway.apply(&config).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    let (stop_gateway, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(sluice_gateway::serve(listener, gateway, async move {
        let _ = stopped.await;
    }));
    Fixture {
        gateway: addr,
        replica: replica_addr,
        stop_replica: Some(stop_replica),
        stop_gateway: Some(stop_gateway),
        served,
    }
}

/// Sends raw bytes and reads until the gateway closes or `until` appears `count` times.
async fn raw(stream: &mut TcpStream, send: &[u8], until: &str, count: usize) -> String {
    stream.write_all(send).await.expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches(until).count() < count {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await.expect("answer in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the gateway closed the connection (read returns end of stream).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn forwards_the_request_but_not_the_hop_or_the_credential() {
    let f = start().await;
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://{}/services/locked/v2/models/m/infer?trace=1", f.gateway))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-caller", "kept")
        .header("x-sluice-route-key", "user-1")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .body("{\"inputs\": []}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-sluice-version"], "locked");
    assert!(response.headers().contains_key("content-length"));
    let seen: Value = response.json().await.expect("json");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/v2/models/m/infer?trace=1");
    assert_eq!(seen["body"], "{\"inputs\": []}");
    let headers = &seen["headers"];
    assert_eq!(headers["host"], f.replica.to_string());
    assert_eq!(headers["x-caller"], "kept");
    assert_eq!(headers["content-length"], "14");
    for gone in ["authorization", "x-sluice-route-key", "x-hop", "connection"] {
        assert!(headers.get(gone).is_none(), "{gone} reached the replica: {headers}");
    }
    // The same connection carries on: the key is checked per request.
    let refused =
        client.post(format!("http://{}/services/locked/v2/models/m/infer", f.gateway)).send().await.expect("send");
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let error: Value = refused.json().await.expect("json error");
    assert!(error["error"].as_str().is_some_and(|e| e.contains("needs credentials")), "{error}");
}

#[tokio::test]
async fn pipelined_and_chunked_requests_are_answered_in_order() {
    let f = start().await;
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let wire = b"POST /services/open/v2/models/m/infer HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nfirst\r\n0\r\n\r\n\
        POST /services/open/v2/models/m/infer HTTP/1.1\r\nHost: g\r\nContent-Length: 6\r\n\r\nsecond\
        GET /v2/health/live HTTP/1.1\r\nHost: g\r\n\r\n";
    let got = raw(&mut s, wire, "HTTP/1.1 ", 3).await;
    let first = got.find("\"body\":\"first\"").expect("first answered");
    let second = got.find("\"body\":\"second\"").expect("second answered");
    assert!(first < second, "{got}");
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
}

#[tokio::test]
async fn expect_continue_is_honoured_and_refusals_skip_the_upload() {
    let f = start().await;
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let head = b"POST /services/open/v2/models/m/infer HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let interim = raw(&mut s, head, "\r\n\r\n", 1).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"), "{interim}");
    let answer = raw(&mut s, b"body", "\"body\":\"body\"", 1).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // Without a key the answer is final at once, and the connection closes (the body never came).
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let head = b"POST /services/locked/v2/models/m/infer HTTP/1.1\r\nHost: g\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let answer = raw(&mut s, head, "}", 1).await;
    assert!(answer.starts_with("HTTP/1.1 401 Unauthorized") && !answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(closed(&mut s).await);

    // A refused request whose body was sent anyway is read past, and the connection stays usable.
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let wire = b"POST /services/nobody/v2/models/m/infer HTTP/1.1\r\nHost: g\r\nContent-Length: 4\r\n\r\nbody\
        GET /v2/health/live HTTP/1.1\r\nHost: g\r\n\r\n";
    let got = raw(&mut s, wire, "HTTP/1.1 ", 2).await;
    assert!(got.starts_with("HTTP/1.1 404 Not Found") && got.contains("no service named 'nobody'"), "{got}");
    assert!(got.contains("HTTP/1.1 200 OK"), "{got}");
}

#[tokio::test]
async fn limits_and_malformed_requests_get_a_named_4xx() {
    let f = start().await;
    let cases: [(&[u8], &str, &str); 4] = [
        (
            b"POST /services/open/v2/models/m/infer HTTP/1.1\r\nContent-Length: 5000\r\n\r\n",
            "413 Content Too Large",
            "larger than the limit of 1024 bytes",
        ),
        (
            b"POST /services/open/v2/models/m/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n500\r\n",
            "413 Content Too Large",
            "larger than the limit",
        ),
        (
            b"POST /services/open/v2/models/m/infer HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "400 Bad Request",
            "both Transfer-Encoding and Content-Length",
        ),
        (b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", "400 Bad Request", "malformed"),
    ];
    for (wire, status, message) in cases {
        let mut s = TcpStream::connect(f.gateway).await.expect("connect");
        let got = raw(&mut s, wire, "}", 1).await;
        assert!(got.starts_with(&format!("HTTP/1.1 {status}")) && got.contains(message), "{got}");
        assert!(closed(&mut s).await, "connection left open after: {got}");
    }
    let mut big = b"GET /v2/health/live HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(70 * 1024, b'a');
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let got = raw(&mut s, &big, "}", 1).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let got = raw(&mut s, b"DELETE /metrics HTTP/1.1\r\n\r\n", "}", 1).await;
    assert!(got.starts_with("HTTP/1.1 405") && got.contains("allow: GET, HEAD"), "{got}");
    // None of it hurt the gateway.
    let ok = reqwest::get(format!("http://{}/v2/health/ready", f.gateway)).await.expect("ready");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn chunked_and_head_answers_are_reframed() {
    let f = start().await;
    let mut s = TcpStream::connect(f.gateway).await.expect("connect");
    let got = raw(&mut s, b"GET /services/open/v2/models/m/chunked HTTP/1.1\r\nHost: g\r\n\r\n", "chunk two", 1).await;
    assert!(got.contains("content-length: 20\r\n") && !got.to_ascii_lowercase().contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\nchunk one, chunk two"), "{got}");
    // HEAD: the length a GET would have, and no body; the connection then carries a GET.
    let got = raw(
        &mut s,
        b"HEAD /services/open/v2/models/m HTTP/1.1\r\nHost: g\r\n\r\nGET /services/open/v2/models/m HTTP/1.1\r\nHost: g\r\n\r\n",
        "\"method\":\"GET\"",
        1,
    )
    .await;
    let (head_answer, get_answer) = got.split_once("\r\n\r\n").expect("two answers");
    assert!(head_answer.starts_with("HTTP/1.1 200 OK") && head_answer.contains("content-length: "), "{got}");
    assert!(get_answer.starts_with("HTTP/1.1 200 OK"), "HEAD answer carried a body: {got}");
    // A 204 carries no length, and the connection goes on to the next answer.
    let got = raw(
        &mut s,
        b"POST /services/open/v2/models/m/empty HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\nGET /v2/health/live HTTP/1.1\r\nHost: g\r\n\r\n",
        "HTTP/1.1 ",
        2,
    )
    .await;
    let (no_content, next) = got.split_once("\r\n\r\n").expect("two answers");
    assert!(no_content.starts_with("HTTP/1.1 204") && !no_content.contains("content-length"), "{got}");
    assert!(next.starts_with("HTTP/1.1 200 OK"), "{got}");
}

#[tokio::test]
async fn a_replica_restart_behind_pooled_connections_costs_no_request() {
    let mut f = start().await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/services/open/v2/models/m/infer", f.gateway);
    // Enough concurrent requests to leave several pooled connections to the replica.
    let first = futures_util::future::join_all((0..4).map(|_| client.post(&url).body("x").send())).await;
    assert!(first.iter().all(|r| r.as_ref().is_ok_and(|r| r.status() == 200)));
    // The replica goes away (closing its keep-alive connections) and comes back on the same port.
    let _ = f.stop_replica.take().expect("replica").send(());
    let listener = loop {
        match TcpListener::bind(f.replica).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    f.stop_replica = Some(replica(listener));
    for _ in 0..8 {
        let r = client.post(&url).body("again").send().await.expect("send");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
}

#[tokio::test]
async fn shutdown_answers_requests_in_flight_first() {
    let mut f = start().await;
    let url = format!("http://{}/services/open/v2/models/m/slow", f.gateway);
    let slow = tokio::spawn(async move { reqwest::Client::new().post(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = f.stop_gateway.take().expect("gateway").send(());
    assert_eq!(slow.await.expect("join").expect("slow request answered"), 200);
    tokio::time::timeout(Duration::from_secs(5), &mut f.served)
        .await
        .expect("serve returned")
        .expect("join")
        .expect("ok");
    assert!(TcpStream::connect(f.gateway).await.is_err(), "still accepting after shutdown");
}

#[tokio::test]
async fn gateway_metrics_count_refusals() {
    let f = start().await;
    let client = reqwest::Client::new();
    let _ = client.get(format!("http://{}/services/locked/v2/models/m", f.gateway)).send().await.expect("send");
    let text =
        client.get(format!("http://{}/metrics", f.gateway)).send().await.expect("metrics").text().await.expect("text");
    assert!(text.lines().any(|l| l.contains("reason=\"unauthorized\"") && l.ends_with(" 1")), "{text}");
}

/// A replica that reads each request whole, counts it, writes `answer` and closes the connection:
/// an answer shorter than its declared length is a response broken off after it started.
async fn scripted_replica(answer: &'static [u8], received: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then as much body as it declares, so closing resets nothing unread.
                let wanted = loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break end + 4 + length;
                    }
                };
                while got.len() < wanted {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
                received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = stream.write_all(answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A gateway with one open service `s` in front of `replicas`.
async fn gateway_for(replicas: Vec<String>) -> SocketAddr {
    gateway_with(GatewaySettings { seed: 7, ..GatewaySettings::default() }, replicas).await.0
}

#[tokio::test]
async fn a_response_that_broke_off_is_never_resent_but_no_response_is() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let url = |gateway: SocketAddr| format!("http://{gateway}/services/s/v2/models/m/infer");
    let client = reqwest::Client::new();

    // Both replicas start an answer and break it off: the first one's failure is the caller's.
    let broken = Arc::new(AtomicUsize::new(0));
    let truncated = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"outputs\":";
    let replicas =
        vec![scripted_replica(truncated, broken.clone()).await, scripted_replica(truncated, broken.clone()).await];
    let gateway = gateway_for(replicas).await;
    let r = client.post(url(gateway)).body("{}").send().await.expect("send");
    assert_eq!(r.status(), 502);
    let error = r.json::<Value>().await.expect("json")["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("broke off"), "{error}");
    assert_eq!(broken.load(Ordering::SeqCst), 1, "a started response was resent to the other replica");

    // Both close without a byte of answer: the request is resent, so both replicas see it.
    let silent = Arc::new(AtomicUsize::new(0));
    let replicas = vec![scripted_replica(b"", silent.clone()).await, scripted_replica(b"", silent.clone()).await];
    let gateway = gateway_for(replicas).await;
    let r = client.post(url(gateway)).body("{}").send().await.expect("send");
    assert_eq!(r.status(), 502);
    assert_eq!(silent.load(Ordering::SeqCst), 2, "a request with no response is tried on the next replica");
}

#[tokio::test]
async fn probes_need_no_credential_and_the_gateway_answers_oip_health_and_metadata() {
    let f = start().await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("http://{}{path}", f.gateway)).send();
    // The service's and its model's readiness through a locked service, without a key.
    for path in ["/services/locked/v2/health/ready", "/services/locked/v2/models/m/ready"] {
        let r = get(path).await.expect("send");
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.expect("json")["from"], "replica", "{path}");
    }
    // Anything else still needs it.
    assert_eq!(get("/services/locked/v2/models/m").await.expect("send").status(), 401);
    // The gateway's own: JSON bodies, as OIP clients expect.
    let live = get("/v2/health/live").await.expect("send");
    assert_eq!(live.json::<Value>().await.expect("json"), json!({ "live": true }));
    let ready = get("/v2/health/ready").await.expect("send");
    assert_eq!(ready.json::<Value>().await.expect("json"), json!({ "ready": true }));
    let meta = get("/v2").await.expect("send").json::<Value>().await.expect("json");
    assert_eq!(meta["name"], "sluice-gateway");
    assert!(meta["version"].is_string() && meta["extensions"].is_array(), "{meta}");
    let r = client.post(format!("http://{}/v2/health/live", f.gateway)).send().await.expect("send");
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.expect("json")["error"].is_string());
}

#[tokio::test]
async fn a_valid_credential_of_another_target_is_403_whatever_its_type() {
    let f = start().await;
    let client = reqwest::Client::new();
    let status = |service: &str, credential: String| {
        client.get(format!("http://{}/services/{service}/v2/models/m", f.gateway)).bearer_auth(credential).send()
    };
    assert_eq!(status("tokened", token("service:tokened")).await.expect("send").status(), 200);
    assert_eq!(status("locked", KEY.into()).await.expect("send").status(), 200);
    // A token at a key-auth service, a key at a token-auth one, a token of another service.
    assert_eq!(status("locked", token("service:tokened")).await.expect("send").status(), 403);
    assert_eq!(status("tokened", KEY.into()).await.expect("send").status(), 403);
    assert_eq!(status("tokened", token("service:elsewhere")).await.expect("send").status(), 403);
    // Neither a key nor a token of anything.
    assert_eq!(status("locked", "made-up".into()).await.expect("send").status(), 401);
    assert_eq!(status("tokened", "made-up".into()).await.expect("send").status(), 401);
}

#[tokio::test]
async fn a_request_with_two_authorization_headers_is_refused() {
    let f = start().await;
    let mut stream = TcpStream::connect(f.gateway).await.expect("connect");
    let request = format!(
        "GET /services/locked/v2/models/m HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\nauthorization: Bearer other\r\nconnection: close\r\n\r\n"
    );
    let answer = raw(&mut stream, request.as_bytes(), "}", 1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("more than one Authorization header"), "{answer}");
}

/// What a [`keep_alive_replica`] saw.
#[derive(Default)]
struct Seen {
    requests: std::sync::atomic::AtomicUsize,
    open: std::sync::atomic::AtomicUsize,
}

/// A keep-alive replica that answers every request with `status` and counts requests and open
/// connections (a connection counts as closed once the gateway closes it).
async fn keep_alive_replica(status: u16) -> (String, std::sync::Arc<Seen>) {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = std::sync::Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = counters.clone();
            seen.open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                    // Requests here have no body: each head is one request.
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        seen.requests.fetch_add(1, Ordering::SeqCst);
                        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
                seen.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

/// A gateway (with `settings`) in front of one open service `s` on `replicas`.
async fn gateway_with(settings: GatewaySettings, replicas: Vec<String>) -> (SocketAddr, std::sync::Arc<Gateway>) {
    let gateway = Gateway::new(settings);
    gateway.apply(&one_service(1, replicas)).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sluice_gateway::serve(listener, gateway.clone(), std::future::pending()));
    (addr, gateway)
}

fn one_service(generation: u64, replicas: Vec<String>) -> GatewayConfig {
    let service = ServiceRoute {
        name: "s".into(),
        models: vec!["m".into()],
        replicas,
        auth: AuthPolicy::None,
        replica_capacity: None,
    };
    GatewayConfig { generation, services: vec![service], ..GatewayConfig::default() }
}

/// Waits up to 10 s for `check`.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replicas_answering_errors_in_a_row_are_ejected_but_shedding_ones_are_not() {
    use std::sync::atomic::Ordering;
    let client = reqwest::Client::new();
    let (sick, sick_seen) = keep_alive_replica(500).await;
    let (well, _) = keep_alive_replica(200).await;
    let (gateway, gw) = gateway_with(GatewaySettings { seed: 7, ..GatewaySettings::default() }, vec![sick, well]).await;
    let url = format!("http://{gateway}/services/s/v2/models/m");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(client.get(&url).send().await.expect("send").status().as_u16());
    }
    // Round robin sends it every other request until five 500s in a row eject it.
    assert_eq!(sick_seen.requests.load(Ordering::SeqCst), sluice_gateway::CONSECUTIVE_ERRORS as usize, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 500).count(), 5, "answers are never resent: {statuses:?}");
    assert!(gw.metrics.render().contains("sluice_gateway_replica_ejections_total 1"));

    // A replica shedding load (503) keeps its share.
    let (shedding, shedding_seen) = keep_alive_replica(503).await;
    let (well, _) = keep_alive_replica(200).await;
    let (gateway, _) =
        gateway_with(GatewaySettings { seed: 7, ..GatewaySettings::default() }, vec![shedding, well]).await;
    let url = format!("http://{gateway}/services/s/v2/models/m");
    for _ in 0..20 {
        client.get(&url).send().await.expect("send");
    }
    assert_eq!(shedding_seen.requests.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn pooled_connections_close_when_idle_and_when_their_replica_is_removed() {
    use std::sync::atomic::Ordering;
    let client = reqwest::Client::new();
    let (replica, seen) = keep_alive_replica(200).await;
    let settings = GatewaySettings { upstream_idle_timeout: Duration::from_millis(300), ..GatewaySettings::default() };
    let (gateway, _) = gateway_with(settings, vec![replica]).await;
    let url = format!("http://{gateway}/services/s/v2/models/m");
    assert_eq!(client.get(&url).send().await.expect("send").status(), 200);
    assert_eq!(seen.open.load(Ordering::SeqCst), 1, "the connection is pooled");
    eventually("the idle connection is closed", || seen.open.load(Ordering::SeqCst) == 0).await;

    // With a long idle timeout, removing the replica from the configuration closes its connections.
    let (old, old_seen) = keep_alive_replica(200).await;
    let (new, _) = keep_alive_replica(200).await;
    let (gateway, gw) = gateway_with(GatewaySettings::default(), vec![old]).await;
    let url = format!("http://{gateway}/services/s/v2/models/m");
    assert_eq!(client.get(&url).send().await.expect("send").status(), 200);
    assert_eq!(old_seen.open.load(Ordering::SeqCst), 1);
    gw.apply(&one_service(2, vec![new])).expect("config");
    eventually("the removed replica's connection is closed", || old_seen.open.load(Ordering::SeqCst) == 0).await;
    assert_eq!(client.get(&url).send().await.expect("send").status(), 200);
}

/// Writes a new self-signed certificate for `localhost` and its key to `dir`; returns its DER.
fn write_certificate(dir: &std::path::Path) -> Vec<u8> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    // Written whole then renamed, as a certificate manager does, so a reload never sees half.
    for (name, text) in [("cert.pem", generated.cert.pem()), ("key.pem", generated.signing_key.serialize_pem())] {
        std::fs::write(dir.join(format!("{name}.tmp")), text).expect("write");
        std::fs::rename(dir.join(format!("{name}.tmp")), dir.join(name)).expect("rename");
    }
    generated.cert.der().to_vec()
}

/// A TLS client that trusts exactly `certificates`; returns the server's certificate and answer.
async fn over_tls(gateway: SocketAddr, trusted: &[Vec<u8>], request: &[u8]) -> std::io::Result<(Vec<u8>, String)> {
    let mut roots = rustls::RootCertStore::empty();
    for der in trusted {
        roots.add(rustls::pki_types::CertificateDer::from(der.clone())).expect("trusted");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(gateway).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    let served = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    tls.write_all(request).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    Ok((served, String::from_utf8_lossy(&answer).into_owned()))
}

#[tokio::test]
async fn the_gateway_serves_https_and_follows_a_renewed_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = write_certificate(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let tls = sluice_http1::tls::Tls::from_files(&cert, &key).expect("tls");
    tokio::spawn(tls.clone().watch(Duration::from_millis(50), |_| {}));
    let (replica, _) = keep_alive_replica(200).await;
    let (gateway, _) =
        gateway_with(GatewaySettings { tls: Some(tls), ..GatewaySettings::default() }, vec![replica]).await;
    let request = b"GET /services/s/v2/models/m HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    let (served, answer) = over_tls(gateway, std::slice::from_ref(&first), request).await.expect("https");
    assert_eq!(served, first);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(gateway).await.expect("connect");
    let answer = raw(&mut plain, request, "HTTP/1.1", 1).await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");

    // A renewed certificate is served to new connections without a restart.
    std::thread::sleep(Duration::from_millis(1100)); // a newer modification time on coarse clocks
    let second = write_certificate(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (served, _) = over_tls(gateway, &[first.clone(), second.clone()], request).await.expect("https");
        if served == second {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was not served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that trusts only the old certificate is refused now.
    assert!(over_tls(gateway, &[first], request).await.is_err());
}

#[tokio::test]
async fn requests_beyond_a_replicas_capacity_are_refused_at_the_gateway() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind replica");
    let replica_addr = listener.local_addr().expect("addr").to_string();
    let _stop = replica(listener);
    let gateway = Gateway::new(GatewaySettings::default());
    let mut config = one_service(1, vec![replica_addr]);
    config.services[0].replica_capacity = Some(2);
    gateway.apply(&config).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let gw = listener.local_addr().expect("addr");
    tokio::spawn(sluice_gateway::serve(listener, gateway, std::future::pending()));
    let client = reqwest::Client::new();
    // Three at once to a replica that holds two and answers in 400 ms: the third is refused by
    // the gateway at once, without reaching the replica.
    let url = format!("http://{gw}/services/s/v2/models/m/slow");
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..3).map(|_| async {
        let r = client.post(&url).send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"), started.elapsed())
    }))
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _, _)| *s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503], "{answers:?}");
    let (_, body, took) = answers.iter().find(|(s, _, _)| *s == 503).expect("a 503");
    assert!(body.contains("as many requests as it can take"), "{body}");
    assert!(*took < Duration::from_millis(400), "refused at once, not after the replica: {took:?}");
    // With the two answered, there is room again.
    assert_eq!(client.post(&url).send().await.expect("send").status(), 200);
}
