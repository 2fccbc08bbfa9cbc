//! BYTES (string) tensors end to end, through the scikit-learn models that skl2onnx exports
//! (`models/make_sklearn.py`): string labels out with ZipMap as columns (`iris-labels`), string
//! features in (`ticket-router`). Expected outputs are ONNX Runtime's in Python.

use serde_json::{Value, json};
use sluice_e2e::*;
use sluice_runtime::{BatchConfig, ModelConfig};
use sluice_server::ServerConfig;

/// BYTES elements in the binary encoding: each a 4-byte little-endian length and its bytes.
fn length_prefixed(elements: &[&str]) -> Vec<u8> {
    elements.iter().flat_map(|e| [&(e.len() as u32).to_le_bytes()[..], e.as_bytes()].concat()).collect()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().expect("an array").iter().map(|s| s.as_str().expect("a string")).collect()
}

#[tokio::test]
async fn scikit_learn_string_models_answer_as_onnx_runtime_does() {
    let server = TestServer::bundled(&["iris-labels", "ticket-router"]).await;
    for model in ["iris-labels", "ticket-router"] {
        let want = expected(model);
        let (status, got) = server.post_json(&format!("/v2/models/{model}/infer"), &v2_request(&want)).await;
        assert_eq!(status, 200, "{got}");
        assert_outputs_match(&got, &want);
    }
    let (status, meta) = server.get("/v2/models/ticket-router").await;
    assert_eq!(status, 200);
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES", "{meta}");
    assert_eq!(meta["outputs"][0]["datatype"], "BYTES", "{meta}");
}

#[tokio::test]
async fn score_takes_and_gives_strings() {
    let server = TestServer::bundled(&["ticket-router", "iris-labels"]).await;
    let want = expected("ticket-router");
    let fields = &want["inputs"][0]["data"];
    let rows: Vec<Value> = strings(fields).chunks(2).map(|r| json!(r)).collect();
    let (status, got) = server.post_json("/models/ticket-router/score", &json!({ "inputs": { "fields": rows } })).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["outputs"]["label"], want["outputs"][0]["data"], "{got}");
    let (status, got) = server
        .post_json("/models/iris-labels/score", &json!({ "inputs": { "features": [[6.3, 3.3, 6.0, 2.5]] } }))
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["outputs"]["output_label"], json!(["virginica"]), "{got}");
}

#[tokio::test]
async fn bytes_travel_in_the_binary_extension() {
    let server = TestServer::bundled(&["ticket-router"]).await;
    let want = expected("ticket-router");
    let fields = strings(&want["inputs"][0]["data"]);
    let blob = length_prefixed(&fields);
    let header = json!({
        "inputs": [{ "name": "fields", "shape": [4, 2], "datatype": "BYTES", "parameters": { "binary_data_size": blob.len() } }],
        "outputs": [{ "name": "label", "parameters": { "binary_data": true } }],
    });
    let mut body = serde_json::to_vec(&header).expect("json");
    let json_len = body.len();
    body.extend_from_slice(&blob);
    let r = server
        .client
        .post(server.url("/v2/models/ticket-router/infer"))
        .header("inference-header-content-length", json_len.to_string())
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let header_len: usize = r.headers()["inference-header-content-length"].to_str().expect("ascii").parse().expect("n");
    let bytes = r.bytes().await.expect("body");
    let got: Value = serde_json::from_slice(&bytes[..header_len]).expect("json header");
    let label = &got["outputs"][0];
    assert_eq!((label["name"].as_str(), label["datatype"].as_str()), (Some("label"), Some("BYTES")), "{got}");
    let labels = strings(&want["outputs"][0]["data"]);
    assert_eq!(label["parameters"]["binary_data_size"], json!(length_prefixed(&labels).len()), "{got}");
    assert_eq!(&bytes[header_len..], length_prefixed(&labels).as_slice());
}

#[tokio::test]
async fn malformed_strings_get_400s_that_say_why() {
    let server = TestServer::bundled(&["ticket-router"]).await;
    let binary = |blob: Vec<u8>, shape: Value| {
        let header = json!({
            "inputs": [{ "name": "fields", "shape": shape, "datatype": "BYTES", "parameters": { "binary_data_size": blob.len() } }],
        });
        let mut body = serde_json::to_vec(&header).expect("json");
        let json_len = body.len();
        body.extend_from_slice(&blob);
        (body, vec![("inference-header-content-length", json_len.to_string())])
    };
    let path = "/v2/models/ticket-router/infer";
    // A length that runs past the data, and data that ends inside a length.
    let over = [&(100u32).to_le_bytes()[..], b"email"].concat();
    let (body, headers) = binary(over, json!([1, 1]));
    let (status, got) = server.post_bytes(path, body, &headers).await;
    assert_eq!(status, 400, "{got}");
    assert!(got["error"].as_str().expect("error").contains("claims 100 bytes"), "{got}");
    let short = [length_prefixed(&["email"]), vec![3, 0]].concat();
    let (body, headers) = binary(short, json!([1, 1]));
    let (status, got) = server.post_bytes(path, body, &headers).await;
    assert_eq!(status, 400, "{got}");
    assert!(got["error"].as_str().expect("error").contains("4-byte little-endian length"), "{got}");
    // More elements than the shape holds.
    let (body, headers) = binary(length_prefixed(&["email", "invoice", "extra"]), json!([1, 2]));
    let (status, got) = server.post_bytes(path, body, &headers).await;
    assert_eq!(status, 400, "{got}");
    // Not text: ONNX strings are UTF-8.
    let raw = [&2u32.to_le_bytes()[..], &[0xff, 0xfe], &length_prefixed(&["invoice"])].concat();
    let (body, headers) = binary(raw, json!([1, 2]));
    let (status, got) = server.post_bytes(path, body, &headers).await;
    assert_eq!(status, 400, "{got}");
    assert!(got["error"].as_str().expect("error").contains("not UTF-8"), "{got}");
    // Numbers where strings belong, and strings where numbers belong.
    let (status, got) = server
        .post_json(
            path,
            &json!({ "inputs": [{ "name": "fields", "shape": [1, 2], "datatype": "BYTES", "data": [1, 2] }] }),
        )
        .await;
    assert_eq!(status, 400, "{got}");
    assert!(got["error"].as_str().expect("error").contains("not a valid BYTES value"), "{got}");
    let (status, got) = server
        .post_json(
            path,
            &json!({ "inputs": [{ "name": "fields", "shape": [1, 2], "datatype": "FP32", "data": [1, 2] }] }),
        )
        .await;
    assert_eq!(status, 400, "{got}");
    assert!(got["error"].as_str().expect("error").contains("BYTES"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_requests_batch_and_get_their_own_answers() {
    let batched = ModelConfig {
        instance_count: 1,
        batching: Some(BatchConfig { max_batch_size: 16, ..BatchConfig::default() }),
        ..test_config()
    };
    let single = ModelConfig { instance_count: 1, batching: None, ..test_config() };
    let path = model_path("ticket-router");
    let server = std::sync::Arc::new(
        TestServer::start(
            vec![load("ticket-router", "1", &path, batched), load("ticket-router", "2", &path, single)],
            ServerConfig::default(),
        )
        .await,
    );
    let channels = ["email", "phone", "chat", "web"];
    let products = ["invoice", "router", "plan", "refund", "upgrade", "something new"];
    let requests: Vec<Value> = (0..40)
        .map(|i| {
            let rows = 1 + i % 3;
            let data: Vec<&str> = (0..rows).flat_map(|r| [channels[(i + r) % 4], products[(i * 7 + r) % 6]]).collect();
            json!({ "inputs": [{ "name": "fields", "shape": [rows, 2], "datatype": "BYTES", "data": data }] })
        })
        .collect();
    let answers = server
        .batched_and_alone(
            "/v2/models/ticket-router/versions/1/infer",
            "/v2/models/ticket-router/versions/2/infer",
            &requests,
        )
        .await;
    for (batched, alone) in answers {
        assert_eq!(batched["outputs"][0], alone["outputs"][0], "labels, batched vs alone");
        assert_close(
            &numbers(&batched["outputs"][1]["data"]),
            &numbers(&alone["outputs"][1]["data"]),
            1e-5,
            "probabilities, batched vs alone",
        );
    }
    let runs = server.engine_runs("ticket-router", "1").await;
    assert!(runs < 40, "40 concurrent requests on one instance ran as {runs} batches");
}
