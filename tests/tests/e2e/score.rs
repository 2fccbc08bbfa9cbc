//! `POST /score`, the simple API.

use serde_json::json;
use sluice_e2e::*;

#[tokio::test]
async fn score_single_input_nested_rows_and_single_example() {
    let server = TestServer::bundled(&["mlp-small"]).await;
    let want = expected("mlp-small");
    let rows: Vec<Vec<f64>> = numbers(&want["inputs"][0]["data"]).chunks(64).map(<[f64]>::to_vec).collect();
    let (status, got) = server.post_json("/score", &json!({ "data": rows })).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["model_name"], "mlp-small");
    let out = &got["outputs"]["output"];
    assert_eq!(out.as_array().expect("rows").len(), 3);
    assert_close(&numbers(out), &numbers(&want["outputs"][0]["data"]), 1e-4, "score output");

    // One example without a batch dimension is a batch of one.
    let (status, got) = server.post_json("/models/mlp-small/score", &json!({ "data": rows[0] })).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["outputs"]["output"].as_array().expect("rows").len(), 1);
    assert_close(&numbers(&got["outputs"]["output"]), &numbers(&want["outputs"][0]["data"])[..10], 1e-4, "row 0");
    let (status, got) =
        server.post_json("/models/mlp-small/versions/1/score", &json!({ "data": [rows[1].clone()] })).await;
    assert_eq!(status, 200, "{got}");
    assert_close(&numbers(&got["outputs"]["output"]), &numbers(&want["outputs"][0]["data"])[10..20], 1e-4, "row 1");
}

#[tokio::test]
async fn score_multi_input_and_its_errors() {
    let server = TestServer::bundled(&["mlp-small", "tabular-mixed"]).await;
    let want = expected("tabular-mixed");
    let features: Vec<Vec<f64>> = numbers(&want["inputs"][0]["data"]).chunks(8).map(<[f64]>::to_vec).collect();
    let body = json!({ "inputs": { "features": features, "category": want["inputs"][1]["data"] } });
    let (status, got) = server.post_json("/models/tabular-mixed/score", &body).await;
    assert_eq!(status, 200, "{got}");
    assert_close(&numbers(&got["outputs"]["score"]), &numbers(&want["outputs"][0]["data"]), 1e-4, "score");
    assert_eq!(numbers(&got["outputs"]["flag"]), numbers(&want["outputs"][1]["data"]));

    let only_flag = json!({ "inputs": body["inputs"], "outputs": ["flag"] });
    let (_, got) = server.post_json("/models/tabular-mixed/score", &only_flag).await;
    assert!(got["outputs"].get("score").is_none(), "{got}");

    let cases = [
        ("/score", json!({ "data": [[1.0]] }), "serves several models"),
        ("/models/tabular-mixed/score", json!({ "data": features }), "has 2 inputs (features, category)"),
        ("/models/tabular-mixed/score", json!({ "inputs": { "features": features } }), "missing input 'category'"),
        ("/models/tabular-mixed/score", json!({ "inputs": { "feature": features } }), "unknown input 'feature'"),
        ("/models/mlp-small/score", json!({ "data": [[1.0, 2.0], [3.0]] }), "ragged"),
        ("/models/mlp-small/score", json!({ "data": [[1.0, 2.0]] }), "has shape [1, 2] but the model expects [-1, 64]"),
        ("/models/mlp-small/score", json!({ "rows": [[1.0]] }), "unknown field `rows`"),
        ("/models/mlp-small/score", json!({}), "missing \"data\""),
    ];
    for (path, body, needle) in cases {
        let (status, err) = server.post_json(path, &body).await;
        assert_eq!(status, 400, "{path} {needle}: {err}");
        assert!(err["error"].as_str().expect("error").contains(needle), "expected '{needle}' in {err}");
    }
    let (status, _) = server.post_json("/models/nope/score", &json!({ "data": [[1.0]] })).await;
    assert_eq!(status, 404);
}
