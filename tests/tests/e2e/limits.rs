//! Admission and timeouts: overload turns into 503 with Retry-After, a slow model into 504, and
//! neither wedges the server.

use std::time::Duration;

use serde_json::json;
use sluice_e2e::*;
use sluice_runtime::ModelConfig;
use sluice_server::ServerConfig;

/// A binary-extension request of `rows` rows for mlp-large (about 40 us of compute per row).
fn large_request(server: &TestServer, rows: usize) -> reqwest::RequestBuilder {
    let data: Vec<u8> = (0..rows * 784).flat_map(|i| ((i % 97) as f32 / 97.0).to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({
        "inputs": [{ "name": "input", "shape": [rows, 784], "datatype": "FP32", "parameters": { "binary_data_size": data.len() } }]
    }))
    .expect("json");
    let len = header.len();
    let mut body = header;
    body.extend_from_slice(&data);
    server
        .client
        .post(server.url("/v2/models/mlp-large/infer"))
        .header("inference-header-content-length", len.to_string())
        .body(body)
}

#[tokio::test]
async fn overload_gets_503_with_retry_after() {
    let config = ModelConfig {
        instance_count: 1,
        max_concurrent_requests: 1,
        max_queued_requests: 1,
        max_request_wait: Duration::from_millis(5),
        scoring_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let model = load("mlp-large", "1", &model_path("mlp-large"), config);
    let server = TestServer::start(vec![model], ServerConfig::default()).await;
    // One long batch holds the only slot; small requests sent meanwhile wait 5 ms and are refused.
    let slow = tokio::spawn(large_request(&server, 4096).send());
    let mut refused = None;
    for _ in 0..200 {
        let r = large_request(&server, 1).send().await.expect("response");
        if r.status() == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = refused.expect("a request past the limit is refused while the slot is taken");
    assert_eq!(r.headers()["retry-after"], "1");
    let err: serde_json::Value = r.json().await.expect("json error");
    assert!(err["error"].as_str().expect("error").contains("overloaded"), "{err}");
    assert_eq!(slow.await.expect("task").expect("response").status(), 200, "the admitted request is served");
    assert_eq!(large_request(&server, 1).send().await.expect("response").status(), 200, "served again once idle");
}

#[tokio::test]
async fn an_overloaded_model_refuses_before_it_decodes() {
    let config = ModelConfig {
        instance_count: 1,
        max_concurrent_requests: 1,
        max_queued_requests: 0,
        scoring_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let model = load("mlp-large", "1", &model_path("mlp-large"), config);
    let server = TestServer::start(vec![model], ServerConfig::default()).await;
    let slow = tokio::spawn(large_request(&server, 4096).send());
    // While the only slot is taken, even a body that could not be decoded is refused with 503:
    // the excess costs an admission check, not a decode.
    let mut overloaded = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !slow.is_finished() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let r = server.client.post(server.url("/v2/models/mlp-large/infer")).body("{not json").send().await;
        match r.expect("response").status().as_u16() {
            503 => {
                overloaded = true;
                break;
            }
            status => assert_eq!(status, 400),
        }
    }
    assert!(overloaded, "a request beyond the limit was decoded instead of refused");
    assert_eq!(slow.await.expect("task").expect("response").status(), 200);
    // Once idle (the worker gives the slot back just after the answer), the same body is decoded
    // and refused for what it is.
    let mut status = 0;
    for _ in 0..100 {
        let r = server.client.post(server.url("/v2/models/mlp-large/infer")).body("{not json").send().await;
        status = r.expect("response").status().as_u16();
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, 400);
}

#[tokio::test]
async fn slow_inference_gets_504_and_the_server_recovers() {
    let config = ModelConfig { instance_count: 1, scoring_timeout: Duration::from_millis(20), ..test_config() };
    let model = load("mlp-large", "1", &model_path("mlp-large"), config);
    let server = TestServer::start(vec![model], ServerConfig::default()).await;
    let r = large_request(&server, 4096).send().await.expect("response");
    assert_eq!(r.status(), 504);
    let err: serde_json::Value = r.json().await.expect("json error");
    assert!(err["error"].as_str().expect("error").contains("scoring timeout of 20 ms"), "{err}");
    // The instance finishes the abandoned batch, then answers small requests in time again.
    let mut last = 0;
    for _ in 0..100 {
        last = large_request(&server, 1).send().await.expect("response").status().as_u16();
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 200);
}

#[tokio::test]
async fn a_caller_that_hangs_up_is_dropped_from_the_queue() {
    let config =
        ModelConfig { instance_count: 1, batching: None, scoring_timeout: Duration::from_secs(30), ..test_config() };
    let model = load("mlp-large", "1", &model_path("mlp-large"), config);
    let server = TestServer::start(vec![model], ServerConfig::default()).await;
    // One long batch holds the only instance; callers queued behind it give up after 30 ms.
    // Probes answered before that batch reaches the instance are fine; they just go first. A
    // probe that times out while the big body is still being decoded may never have reached the
    // queue (and is rightly not counted), so six give-ups must leave at least four abandoned.
    let slow = tokio::spawn(large_request(&server, 16384).send());
    let mut gave_up = 0;
    for _ in 0..1000 {
        match large_request(&server, 1).timeout(Duration::from_millis(30)).send().await {
            Ok(r) => assert_eq!(r.status(), 200),
            Err(e) if e.is_timeout() => gave_up += 1,
            Err(e) => panic!("probe failed: {e}"),
        }
        if gave_up == 6 {
            break;
        }
    }
    assert_eq!(gave_up, 6, "the slow batch never held the instance");
    assert_eq!(slow.await.expect("task").expect("response").status(), 200);
    let metrics = server.client.get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let abandoned: f64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_abandoned_requests_total{") && l.contains("mlp-large"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("abandoned counter");
    assert!(abandoned >= 4.0, "hung-up callers cost compute: {abandoned} abandoned\n{metrics}");
}
