//! The libtorch backend end to end (built with `--features torch`): the TorchScript twin of
//! mlp-small, registered with its signature in the model config, answers like the ONNX model
//! through the same server, batched or not.
#![cfg(feature = "torch")]

use serde_json::{Value, json};
use sluice_e2e::process::{Server, run_err, run_ok, sluice};
use sluice_e2e::{assert_outputs_match, expected, model_path, v2_request, workspace};

#[tokio::test]
async fn torchscript_and_onnx_twins_agree_through_the_server() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let pt = workspace().join("models/mlp-small.pt");
    run_ok(
        sluice(h)
            .args(["model", "register", "mlp-ts"])
            .arg(&pt)
            .arg("--config")
            .arg(workspace().join("models/mlp-small.pt.json")),
    );
    run_ok(sluice(h).args(["model", "register", "mlp-onnx"]).arg(model_path("mlp-small")));
    let shown: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "show", "mlp-ts", "--output", "json"]))).expect("json");
    assert_eq!(shown["format"], "torchscript");

    let server = Server::start({
        let mut c = sluice(h);
        c.args(["serve", "mlp-ts", "mlp-onnx", "--port", "0"]);
        c
    });
    let client = reqwest::Client::new();
    let want = expected("mlp-small");
    let meta: Value =
        reqwest::get(format!("{}/v2/models/mlp-ts", server.url)).await.expect("meta").json().await.expect("json");
    assert_eq!(meta["platform"], "pytorch_libtorch", "{meta}");
    let mut answers = Vec::new();
    for model in ["mlp-ts", "mlp-onnx"] {
        let r = client
            .post(format!("{}/v2/models/{model}/infer", server.url))
            .json(&v2_request(&want))
            .send()
            .await
            .expect("infer");
        assert_eq!(r.status(), 200, "{model}");
        let body: Value = r.json().await.expect("json");
        assert_outputs_match(&body, &want);
        answers.push(body["outputs"][0]["data"].clone());
    }
    let close = |a: &Value, b: &Value| {
        let (a, b) = (a.as_array().expect("data"), b.as_array().expect("data"));
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| (x.as_f64().expect("f64") - y.as_f64().expect("f64")).abs() < 1e-5)
    };
    assert!(close(&answers[0], &answers[1]), "TorchScript {} vs ONNX {}", answers[0], answers[1]);

    // Many requests at once are batched by the runtime; each still gets its own answer.
    let rows: Vec<Vec<f32>> =
        (0..24).map(|r| (0..64).map(|i| ((r * 64 + i) % 23) as f32 / 23.0 - 0.5).collect()).collect();
    let requests = rows.iter().map(|row| {
        let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 64], "data": row }] });
        let (client, url) = (client.clone(), server.url.clone());
        async move {
            let ts: Value = client
                .post(format!("{url}/v2/models/mlp-ts/infer"))
                .json(&body)
                .send()
                .await
                .expect("ts")
                .json()
                .await
                .expect("json");
            let onnx: Value = client
                .post(format!("{url}/v2/models/mlp-onnx/infer"))
                .json(&body)
                .send()
                .await
                .expect("onnx")
                .json()
                .await
                .expect("json");
            (ts["outputs"][0]["data"].clone(), onnx["outputs"][0]["data"].clone())
        }
    });
    for (ts, onnx) in futures_join(requests).await {
        assert!(close(&ts, &onnx), "TorchScript {ts} vs ONNX {onnx}");
    }
    let (ok, _) = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    assert!(ok);

    // No GPU here: cuda:0 is refused with a message naming it.
    let config = h.join("gpu.json");
    std::fs::write(&config, r#"{"mlp-ts": {"device": "cuda:0"}}"#).expect("write");
    let err = run_err(sluice(h).args(["serve", "mlp-ts", "--port", "0", "--model-config"]).arg(&config));
    assert!(err.contains("device cuda:0 is not available to libtorch"), "{err}");
}

/// Runs futures concurrently on the test's runtime.
async fn futures_join<F: Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}
