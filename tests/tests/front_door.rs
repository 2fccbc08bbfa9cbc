//! The front-door limits of every listener, set by flags as a user sets them: the scoring server
//! holds 500 slow connections off while normal callers are served, and the gateway and the admin
//! API close callers that say nothing or trickle a head.

use std::time::Duration;

use sluice_e2e::model_path;
use sluice_e2e::process::{Server, sluice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: [&str; 8] = [
    "--header-read-timeout-ms",
    "700",
    "--body-read-timeout-ms",
    "300",
    "--min-body-rate",
    "1000",
    "--idle-timeout-ms",
    "1500",
];

fn addr(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// Everything the server sends until it closes `stream` (at most 10 s).
async fn until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    read.ok().map(|_| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scoring_server_closes_500_slow_callers_and_serves_the_others() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = Server::start({
        let mut c = sluice(home.path());
        c.arg("serve").arg(model_path("mlp-small")).args(["--port", "0", "--instances", "1"]).args(LIMITS);
        c
    });
    let target = addr(&server);
    let mut slow = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(&target).await.expect("connect");
        // Half say nothing; half send the start of a head and stop.
        if i % 2 == 1 {
            s.write_all(b"POST /v2/models/mlp-small/in").await.expect("write");
        }
        slow.push(s);
    }
    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "inputs": [{ "name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64] }]
    });
    for _ in 0..20 {
        let r = client.post(format!("{}/v2/models/mlp-small/infer", server.url)).json(&body).send().await;
        assert_eq!(r.expect("a normal caller is served").status(), 200);
    }
    for (i, s) in slow.iter_mut().enumerate() {
        let answer = until_closed(s).await.expect("a slow connection was kept open");
        if i % 2 == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "a trickled head gets 408: {answer:?}");
        }
    }

    // A body slower than --min-body-rate after --body-read-timeout-ms gets 408.
    let (mut rd, mut wr) = TcpStream::connect(&target).await.expect("connect").into_split();
    wr.write_all(b"POST /v2/models/mlp-small/infer HTTP/1.1\r\ncontent-length: 5000\r\n\r\n{").await.expect("write");
    tokio::spawn(async move {
        for _ in 0..40 {
            if wr.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut got)).await;
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("\"error\""), "{answer}");
}

#[tokio::test]
async fn the_gateway_and_the_admin_api_close_silent_and_trickling_callers() {
    let home = tempfile::tempdir().expect("tempdir");
    let control = Server::start({
        let mut c = sluice(home.path());
        c.args(["control", "--control-port", "0"]).args(LIMITS);
        c
    });
    let gateway = Server::start({
        let mut c = sluice(home.path());
        c.args(["gateway", "--port", "0"]).args(LIMITS);
        c
    });
    for server in [&control, &gateway] {
        let target = addr(server);
        let mut silent = TcpStream::connect(&target).await.expect("connect");
        assert!(until_closed(&mut silent).await.is_some(), "{}: a silent connection was kept open", server.url);
        let mut trickling = TcpStream::connect(&target).await.expect("connect");
        trickling.write_all(b"GET /v2/health/live HTT").await.expect("write");
        let answer = until_closed(&mut trickling).await.expect("a trickling connection was kept open");
        assert!(answer.starts_with("HTTP/1.1 408"), "{}: {answer:?}", server.url);
        // A normal caller on the same listener is answered.
        let r = reqwest::get(format!("{}/v2/health/live", server.url)).await.expect("answered");
        assert!(r.status().as_u16() < 500, "{}: {}", server.url, r.status());
    }
    // Every error of the admin API has a JSON body, the router's own 404 and 405 included.
    let client = reqwest::Client::new();
    let admin = std::fs::read_to_string(home.path().join("control/admin-token")).expect("admin token");
    for (method, path, status) in [("GET", "/no/such/route", 404), ("DELETE", "/v1/gateway/config", 405)] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let request = client.request(method, format!("{}{path}", control.url)).bearer_auth(admin.trim());
        let r = request.send().await.expect("answered");
        assert_eq!(r.status().as_u16(), status, "{path}");
        let body: serde_json::Value = r.json().await.expect("a JSON body");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(path)), "{body}");
    }
}
