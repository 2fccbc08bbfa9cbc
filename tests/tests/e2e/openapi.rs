//! `GET /swagger.json`: a valid OpenAPI document of every route and model, whose examples score.

use serde_json::{Value, json};
use sluice_e2e::openapi::{check, example, exchange, operations};
use sluice_e2e::*;

/// Calls every operation of `doc` on `server` (GETs as they are, POSTs with their example) and
/// asserts each answers 200; returns the exchanges for [`check`].
async fn call_every_operation(server: &TestServer, doc: &Value) -> Vec<Value> {
    let mut exchanges = Vec::new();
    for (path, method) in operations(doc) {
        let (status, response, request) = match method.as_str() {
            "get" => {
                let (status, response) = server.get(&path).await;
                (status, response, None)
            }
            "post" => {
                let body = example(doc, &path, "post").unwrap_or_else(|| panic!("POST {path} has no example"));
                let (status, response) = server.post_json(&path, body).await;
                (status, response, Some(body))
            }
            other => panic!("unexpected method {other} at {path}"),
        };
        assert_eq!(status, 200, "{method} {path} with {request:?}: {response}");
        exchanges.push(exchange(&path, &method, request, status, &response));
    }
    exchanges
}

#[tokio::test]
async fn the_document_covers_every_route_and_each_example_scores() {
    let server = TestServer::bundled(&["mlp-small", "tabular-mixed", "dtype-echo"]).await;
    let (status, doc) = server.get("/swagger.json").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().expect("paths");
    for m in ["mlp-small", "tabular-mixed", "dtype-echo"] {
        for path in [
            format!("/v2/models/{m}"),
            format!("/v2/models/{m}/ready"),
            format!("/v2/models/{m}/infer"),
            format!("/v2/models/{m}/versions/1"),
            format!("/v2/models/{m}/versions/1/ready"),
            format!("/v2/models/{m}/versions/1/infer"),
            format!("/models/{m}/score"),
            format!("/models/{m}/versions/1/score"),
        ] {
            assert!(paths.contains_key(&path), "{path} missing");
        }
    }
    for path in ["/v2/health/live", "/v2/health/ready", "/v2"] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    assert!(!paths.contains_key("/score"), "three models: /score answers 400, so it is not offered");

    // Names, datatypes and shapes come from the signatures.
    let schemas = &doc["components"]["schemas"];
    let infer = &schemas["tabular-mixed.v1.InferRequest"];
    let tensors = infer["properties"]["inputs"]["items"]["oneOf"].as_array().expect("a variant per input");
    let described: Vec<(Value, Value)> = tensors
        .iter()
        .map(|t| (t["properties"]["name"]["enum"][0].clone(), t["properties"]["datatype"]["enum"][0].clone()))
        .collect();
    assert_eq!(described, [(json!("features"), json!("FP32")), (json!("category"), json!("INT64"))]);
    let features = &schemas["tabular-mixed.v1.ScoreRequest"]["properties"]["inputs"]["properties"]["features"];
    assert_eq!((features["items"]["minItems"].clone(), features["items"]["maxItems"].clone()), (json!(8), json!(8)));
    assert!(features.get("minItems").is_none(), "the batch dimension is dynamic: {features}");
    let echo = &schemas["dtype-echo.v1.ScoreRequest"]["properties"]["inputs"]["properties"];
    for (input, ty) in [("in_BOOL", "boolean"), ("in_UINT8", "integer"), ("in_FP16", "number"), ("in_INT64", "integer")]
    {
        assert_eq!(echo[input]["items"]["items"]["type"], ty, "{input}");
    }
    assert_eq!(echo["in_UINT8"]["items"]["items"]["maximum"], 255);
    // The example uses 1 for the dynamic batch dimension.
    let tabular = example(&doc, "/models/tabular-mixed/score", "post").expect("example");
    assert_eq!(tabular["inputs"]["category"], json!([0]));
    assert_eq!(tabular["inputs"]["features"], json!([vec![0.0; 8]]));

    let exchanges = call_every_operation(&server, &doc).await;
    let echoed = exchanges.iter().find(|x| x["path"] == "/models/dtype-echo/score").expect("dtype-echo scored");
    assert_eq!(echoed["response"]["outputs"]["out_BOOL"], json!([[false, false]]));
    check(&doc, &exchanges);
}

#[tokio::test]
async fn versions_get_their_own_schemas_and_one_model_gets_score() {
    // Two versions of one name with different signatures: the unversioned routes describe the
    // latest, each versioned route its own.
    let models = vec![
        load("m", "1", &model_path("mlp-small"), test_config()),
        load("m", "2", &model_path("tabular-mixed"), test_config()),
    ];
    let server = TestServer::start(models, sluice_server::ServerConfig::default()).await;
    let (status, doc) = server.get("/swagger.json").await;
    assert_eq!(status, 200, "{doc}");
    let v1 = example(&doc, "/v2/models/m/versions/1/infer", "post").expect("v1 example");
    assert_eq!(v1["inputs"][0]["name"], "input");
    assert_eq!(v1["inputs"][0]["shape"], json!([1, 64]));
    let latest = example(&doc, "/v2/models/m/infer", "post").expect("latest example");
    assert_eq!(latest, example(&doc, "/v2/models/m/versions/2/infer", "post").expect("v2 example"));
    assert_eq!(latest["inputs"][1]["name"], "category");
    // One model served: the bare /score is its, with the latest version's schema.
    let only = example(&doc, "/score", "post").expect("/score example");
    assert!(only["inputs"]["category"].is_array(), "{only}");
    let exchanges = call_every_operation(&server, &doc).await;
    check(&doc, &exchanges);
}
