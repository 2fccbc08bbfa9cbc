//! Every class of bad input gets a 400 (or 404/413) whose message names the problem, and none of
//! them disturbs the server.

use serde_json::json;
use sluice_e2e::*;
use sluice_server::ServerConfig;

fn input(shape: serde_json::Value, datatype: &str, data: serde_json::Value) -> serde_json::Value {
    json!({ "inputs": [{ "name": "input", "shape": shape, "datatype": datatype, "data": data }] })
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_problem() {
    let server = TestServer::bundled(&["mlp-small", "tabular-mixed"]).await;
    let row: Vec<f32> = vec![0.5; 64];
    let tab = expected("tabular-mixed");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("mlp-small", b"{\"inputs\": [".to_vec(), "malformed request JSON"),
        ("mlp-small", b"".to_vec(), "malformed request JSON"),
        ("mlp-small", b"{}".to_vec(), "missing field `inputs`"),
        ("mlp-small", b"not json at all".to_vec(), "malformed request JSON"),
        (
            "mlp-small",
            serde_json::to_vec(&json!({ "inputs": [{ "name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row }] })).expect("json"),
            "unknown input 'pixels' (the model's inputs are: input)",
        ),
        (
            "mlp-small",
            serde_json::to_vec(&json!({ "inputs": input(json!([1, 64]), "FP32", json!(row))["inputs"], "outputs": [{ "name": "nope" }] })).expect("json"),
            "unknown output 'nope'",
        ),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 64]), "FP64", json!(row))).expect("json"), "has datatype FP64 but the model expects FP32"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 64]), "FLOAT", json!(row))).expect("json"), "unknown datatype 'FLOAT'"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 64]), "STRING", json!(row))).expect("json"), "unknown datatype 'STRING'"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 64]), "BYTES", json!(row))).expect("json"), "is not a valid BYTES value"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 63]), "FP32", json!(vec![0.5; 63]))).expect("json"), "has shape [1, 63] but the model expects [-1, 64]"),
        ("mlp-small", serde_json::to_vec(&input(json!([64]), "FP32", json!(row))).expect("json"), "has shape [64] but the model expects [-1, 64]"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 64]), "FP32", json!([1, 2, 3]))).expect("json"), "holds 64 elements but 3 were given"),
        ("mlp-small", serde_json::to_vec(&input(json!([-1, 64]), "FP32", json!(row))).expect("json"), "negative dimension"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 2]), "FP32", json!([1, "two"]))).expect("json"), "input 'input': invalid data"),
        ("mlp-small", serde_json::to_vec(&input(json!([1, 2]), "FP32", json!(null))).expect("json"), "has no data"),
        (
            "tabular-mixed",
            serde_json::to_vec(&json!({ "inputs": [tab["inputs"][0]] })).expect("json"),
            "missing input 'category'",
        ),
        (
            "tabular-mixed",
            serde_json::to_vec(&json!({ "inputs": [tab["inputs"][0], tab["inputs"][0], tab["inputs"][1]] })).expect("json"),
            "given more than once",
        ),
        (
            "tabular-mixed",
            serde_json::to_vec(&json!({ "inputs": [tab["inputs"][0], { "name": "category", "shape": [4], "datatype": "INT64", "data": [1.5, 2, 3, 4] }] })).expect("json"),
            "invalid data",
        ),
        (
            "tabular-mixed",
            serde_json::to_vec(&json!({ "inputs": [
                { "name": "features", "shape": [2, 8], "datatype": "FP32", "data": vec![0.5; 16] },
                { "name": "category", "shape": [1], "datatype": "INT64", "data": [3] },
            ] }))
            .expect("json"),
            "dimension 'batch' is 2 in input 'features' but 1 in input 'category'",
        ),
        (
            "tabular-mixed",
            serde_json::to_vec(&json!({ "inputs": [
                { "name": "features", "shape": [1, 8], "datatype": "FP32", "data": vec![0.5; 8] },
                { "name": "category", "shape": [1], "datatype": "INT64", "data": [99] },
            ] }))
            .expect("json"),
            "the model refused the input",
        ),
    ];
    for (model, body, needle) in cases {
        let (status, err) = server.post_bytes(&format!("/v2/models/{model}/infer"), body, &[]).await;
        assert_eq!(status, 400, "{needle}: {err}");
        let msg = err["error"].as_str().unwrap_or_else(|| panic!("JSON error body for {needle}: {err}"));
        assert!(msg.contains(needle), "expected '{needle}' in '{msg}'");
    }
    let (status, got) = server.post_json("/v2/models/mlp-small/infer", &v2_request(&expected("mlp-small"))).await;
    assert_eq!(status, 200, "the server still serves after all that: {got}");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let model = load("mlp-small", "1", &model_path("mlp-small"), test_config());
    let server = TestServer::start(vec![model], ServerConfig { max_body_bytes: 1024, ..ServerConfig::default() }).await;
    let big = input(json!([8, 64]), "FP32", json!(vec![0.123_456_f32; 8 * 64]));
    for path in ["/v2/models/mlp-small/infer", "/score"] {
        let (status, err) = server.post_json(path, &big).await;
        assert_eq!(status, 413, "{path}: {err}");
        assert!(err["error"].as_str().expect("error").contains("1024 bytes"), "{err}");
    }
    let small = input(json!([1, 64]), "FP32", json!(vec![0.5_f32; 64]));
    assert_eq!(server.post_json("/v2/models/mlp-small/infer", &small).await.0, 200);
}

/// The scoring server answers every request, errors included, with `x-request-id`: the caller's
/// (a gateway's) when sane, else a new one.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let server = TestServer::bundled(&["mlp-small"]).await;
    let id_of = |r: &reqwest::Response| r.headers().get("x-request-id").map(|v| v.to_str().expect("ascii").to_owned());
    let infer = server.url("/v2/models/mlp-small/infer");
    let ok =
        server.client.post(&infer).header("x-request-id", "gw-42").json(&v2_request(&expected("mlp-small"))).send();
    let ok = ok.await.expect("infer");
    assert_eq!((ok.status().as_u16(), id_of(&ok).as_deref()), (200, Some("gw-42")));
    let bad = server.client.post(&infer).header("x-request-id", "gw-43").body("{").send().await.expect("infer");
    assert_eq!((bad.status().as_u16(), id_of(&bad).as_deref()), (400, Some("gw-43")));
    for (path, status) in [("/v2/models/nope", 404), ("/v2/health/ready", 200)] {
        let r = server.client.get(server.url(path)).header("x-request-id", "bad id").send().await.expect("get");
        assert_eq!(r.status().as_u16(), status, "{path}");
        let id = id_of(&r).unwrap_or_default();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{path}: {id}");
    }
    server.stop().await;
}
