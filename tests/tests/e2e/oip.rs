//! The Open Inference Protocol routes with JSON tensors.

use serde_json::json;
use sluice_e2e::*;
use sluice_runtime::{Execution, ModelConfig};
use sluice_server::ServerConfig;

#[tokio::test]
async fn health_and_server_metadata() {
    let server = TestServer::bundled(&["mlp-small"]).await;
    assert_eq!(server.get("/v2/health/live").await, (200, json!({ "live": true })));
    assert_eq!(server.get("/v2/health/ready").await, (200, json!({ "ready": true })));
    let (status, meta) = server.get("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "sluice");
    assert!(meta["extensions"].as_array().expect("extensions").contains(&json!("binary_tensor_data")));
    assert_eq!(server.get("/v2/nope").await.0, 404);
    // HEAD: the length GET would have, and no body (the client would hang or misread otherwise).
    let get = server.client.get(server.url("/v2")).send().await.expect("get");
    let length = get.headers()["content-length"].clone();
    assert_eq!(get.bytes().await.expect("body").len().to_string(), length.to_str().expect("ascii"));
    let head = server.client.head(server.url("/v2")).send().await.expect("head");
    assert_eq!((head.status().as_u16(), &head.headers()["content-length"]), (200, &length));
    assert!(head.bytes().await.expect("empty").is_empty());
}

#[tokio::test]
async fn model_metadata_and_readiness_with_and_without_version() {
    let server = TestServer::bundled(&["tabular-mixed"]).await;
    for path in ["/v2/models/tabular-mixed", "/v2/models/tabular-mixed/versions/1"] {
        let (status, meta) = server.get(path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(meta["name"], "tabular-mixed");
        assert_eq!(meta["versions"], json!(["1"]));
        assert_eq!(meta["platform"], "onnxruntime");
        assert_eq!(
            meta["inputs"],
            json!([
                { "name": "features", "datatype": "FP32", "shape": [-1, 8] },
                { "name": "category", "datatype": "INT64", "shape": [-1] }
            ])
        );
        assert_eq!(
            meta["outputs"],
            json!([
                { "name": "score", "datatype": "FP32", "shape": [-1, 1] },
                { "name": "flag", "datatype": "BOOL", "shape": [-1, 1] }
            ])
        );
    }
    for path in ["/v2/models/tabular-mixed/ready", "/v2/models/tabular-mixed/versions/1/ready"] {
        let (status, body) = server.get(path).await;
        assert_eq!((status, &body["ready"]), (200, &json!(true)), "{path}");
    }
}

#[tokio::test]
async fn unknown_model_or_version_is_404_on_every_route() {
    let server = TestServer::bundled(&["mlp-small"]).await;
    for path in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/mlp-small/versions/9",
        "/v2/models/mlp-small/versions/9/ready",
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].as_str().expect("error").contains("mlp-small"), "{path}: {body}");
    }
    let body = v2_request(&expected("mlp-small"));
    let (status, err) = server.post_json("/v2/models/nope/infer", &body).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().expect("error").contains("unknown model 'nope'"), "{err}");
    let (status, err) = server.post_json("/v2/models/mlp-small/versions/2/infer", &body).await;
    assert_eq!(status, 404);
    assert!(err["error"].as_str().expect("error").contains("no version '2'"), "{err}");
}

#[tokio::test]
async fn infer_matches_expected_outputs_for_every_bundled_model() {
    let server = TestServer::bundled(&["mlp-small", "mlp-large", "tabular-mixed"]).await;
    for name in ["mlp-small", "mlp-large", "tabular-mixed"] {
        let want = expected(name);
        for path in [format!("/v2/models/{name}/infer"), format!("/v2/models/{name}/versions/1/infer")] {
            let (status, got) = server.post_json(&path, &v2_request(&want)).await;
            assert_eq!(status, 200, "{path}: {got}");
            assert_eq!(got["model_name"], name);
            assert_eq!(got["model_version"], "1");
            assert_outputs_match(&got, &want);
        }
    }
}

#[tokio::test]
async fn nested_data_id_echo_and_output_filtering() {
    let server = TestServer::bundled(&["tabular-mixed"]).await;
    let want = expected("tabular-mixed");
    let features = &want["inputs"][0];
    let rows: Vec<Vec<f64>> = numbers(&features["data"]).chunks(8).map(<[f64]>::to_vec).collect();
    let body = json!({
        "id": "req-42",
        "inputs": [
            { "name": "features", "shape": features["shape"], "datatype": "FP32", "data": rows },
            want["inputs"][1],
        ],
        "outputs": [{ "name": "flag" }],
    });
    let (status, got) = server.post_json("/v2/models/tabular-mixed/infer", &body).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["id"], "req-42");
    let outputs = got["outputs"].as_array().expect("outputs");
    assert_eq!(outputs.len(), 1, "only the requested output: {got}");
    assert_eq!(outputs[0]["name"], "flag");
    assert_eq!(outputs[0]["datatype"], "BOOL");
    assert_eq!(outputs[0]["data"], want["outputs"][1]["data"]);
}

#[tokio::test]
async fn several_versions_in_one_server_latest_by_default() {
    let v1 = load("model", "1", &model_path("mlp-small"), test_config());
    let v2 = load("model", "2", &model_path("tabular-mixed"), test_config());
    let server = TestServer::start(vec![v1, v2], ServerConfig::default()).await;
    let (_, meta) = server.get("/v2/models/model").await;
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["inputs"][0]["name"], "features", "unversioned metadata is the latest version");
    let (_, meta1) = server.get("/v2/models/model/versions/1").await;
    assert_eq!(meta1["inputs"][0]["name"], "input");
    let small = expected("mlp-small");
    let (status, got) = server.post_json("/v2/models/model/versions/1/infer", &v2_request(&small)).await;
    assert_eq!(status, 200);
    assert_eq!(got["model_version"], "1");
    assert_outputs_match(&got, &small);
    let tab = expected("tabular-mixed");
    let (status, got) = server.post_json("/v2/models/model/infer", &v2_request(&tab)).await;
    assert_eq!(status, 200);
    assert_eq!(got["model_version"], "2");
    assert_outputs_match(&got, &tab);
}

#[tokio::test]
async fn metrics_count_requests_errors_and_latency_per_model() {
    let server = TestServer::bundled(&["mlp-small"]).await;
    let good = v2_request(&expected("mlp-small"));
    for _ in 0..3 {
        assert_eq!(server.post_json("/v2/models/mlp-small/infer", &good).await.0, 200);
    }
    let bad = json!({ "inputs": [{ "name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3] }] });
    assert_eq!(server.post_json("/v2/models/mlp-small/infer", &bad).await.0, 400);
    let text = server.client.get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let labels = "model=\"mlp-small\",version=\"1\"";
    assert!(text.contains(&format!("sluice_requests_total{{{labels}}} 4\n")), "{text}");
    assert!(
        text.contains(&format!("sluice_request_errors_total{{{labels},error_type=\"bad_request\"}} 1\n")),
        "{text}"
    );
    assert!(text.contains(&format!("sluice_request_duration_seconds_count{{{labels}}} 4\n")), "{text}");
    assert!(text.contains(&format!("sluice_inference_duration_seconds_count{{{labels}}} 3\n")), "{text}");
    assert!(text.contains(&format!("sluice_queue_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3\n")), "{text}");
}

#[tokio::test]
async fn inline_execution_gives_the_same_answers() {
    let config = ModelConfig { execution: Execution::Inline, ..test_config() };
    let small = load("mlp-small", "1", &model_path("mlp-small"), config.clone());
    let tab = load("tabular-mixed", "1", &model_path("tabular-mixed"), config);
    assert!(small.runs_inline() && tab.runs_inline());
    let server = TestServer::start(vec![small, tab], ServerConfig::default()).await;
    for name in ["mlp-small", "tabular-mixed"] {
        let want = expected(name);
        let (status, got) = server.post_json(&format!("/v2/models/{name}/infer"), &v2_request(&want)).await;
        assert_eq!(status, 200, "{got}");
        assert_outputs_match(&got, &want);
    }
}
