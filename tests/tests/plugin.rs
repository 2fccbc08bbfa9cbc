//! Accelerator plugins and model formats end to end: the example plugin (a cdylib emulating a
//! fixed-point FPGA device) registered, served beside an ONNX model and failing in every way the
//! ABI allows, with the server still serving its other models.

use std::path::Path;

use serde_json::{Value, json};
use sluice_e2e::process::{PluginMlp, Server, example_plugin, run_err, run_ok, sluice};
use sluice_e2e::{model_path, ort_library};

const ROWS: [[f64; 4]; 3] = [[1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [-2.0, 1.5, 3.0, -0.75]];

fn write(dir: &Path, name: &str, value: &Value) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).expect("write");
    path
}

/// Registers the example MLP as a plugin model with `options`; returns the CLI's output.
fn register(home: &Path, name: &str, library: &Path, options: Value) -> std::process::Command {
    let model = write(home, &format!("{name}.json"), &PluginMlp::new().json);
    let config =
        write(home, &format!("{name}-config.json"), &json!({ "plugin": { "library": library, "options": options } }));
    let mut cmd = sluice(home);
    cmd.args(["model", "register", name]).arg(model).args(["--format", "plugin", "--config"]).arg(config);
    cmd
}

fn infer_body() -> Value {
    let data: Vec<f64> = ROWS.iter().flatten().copied().collect();
    json!({ "inputs": [{ "name": "x", "datatype": "FP32", "shape": [3, 4], "data": data }] })
}

#[tokio::test]
async fn plugin_models_serve_beside_onnx_and_fail_cleanly() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let library = example_plugin();

    // Registration opens the plugin and records the signature it reports.
    run_ok(&mut register(h, "fpga", &library, json!({ "frac_bits": 8 })));
    let shown: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "show", "fpga", "--output", "json"]))).expect("json");
    assert_eq!(shown["format"], "plugin");
    assert_eq!(shown["signature"]["inputs"][0], json!({ "name": "x", "datatype": "FP32", "shape": [-1, 4] }));
    assert_eq!(shown["signature"]["outputs"][0]["shape"], json!([-1, 2]));

    // Libraries that are not plugins, speak another ABI version, or fail to load are refused.
    let err = run_err(&mut register(h, "bad1", &ort_library(), json!({})));
    assert!(err.contains("missing symbol sluice_plugin_abi_version"), "{err}");
    let err = run_err(register(h, "bad2", &library, json!({})).env("SLUICE_EXAMPLE_PLUGIN_ABI", "2"));
    assert!(err.contains("implements plugin ABI version 2, but this Sluice speaks version 1"), "{err}");
    let err = run_err(&mut register(h, "bad3", &library, json!({ "fault": "load" })));
    assert!(err.contains("sluice_plugin_load") && err.contains("emulated fault"), "{err}");
    let err = run_err(
        sluice(h)
            .args(["model", "register", "bad4"])
            .arg(write(h, "m.json", &PluginMlp::new().json))
            .args(["--format", "plugin"]),
    );
    assert!(err.contains("needs --config"), "{err}");

    // A model whose device fails at run time, and one whose library is gone by serve time.
    run_ok(&mut register(h, "faulty", &library, json!({ "fault": "run" })));
    let copy = h.join("libvanishing.so");
    std::fs::copy(&library, &copy).expect("copy");
    run_ok(&mut register(h, "vanishing", &copy, json!({})));
    std::fs::remove_file(&copy).expect("remove");

    let server = Server::start({
        let mut c = sluice(h);
        c.args(["serve", "fpga", "faulty", "vanishing"]).arg(model_path("mlp-small")).args(["--port", "0"]);
        c
    });
    let client = reqwest::Client::new();
    let r =
        client.post(format!("{}/v2/models/fpga/infer", server.url)).json(&infer_body()).send().await.expect("infer");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["outputs"][0]["shape"], json!([3, 2]));
    let got: Vec<f64> =
        body["outputs"][0]["data"].as_array().expect("data").iter().map(|v| v.as_f64().expect("f64")).collect();
    let want: Vec<f64> = PluginMlp::new().forward(&ROWS).into_iter().flatten().collect();
    for (g, w) in got.iter().zip(&want) {
        // Q8 fixed point: a few 1/256 steps of error through two layers.
        assert!((g - w).abs() < 0.05, "fixed-point answer {got:?} is too far from {want:?}");
    }
    assert!(got.iter().zip(&want).any(|(g, w)| g != w), "fixed point is not float: {got:?}");
    let meta: Value =
        reqwest::get(format!("{}/v2/models/fpga", server.url)).await.expect("meta").json().await.expect("json");
    assert_eq!(meta["platform"], "plugin", "{meta}");

    // A run error is that request's 500; the server and its other models carry on.
    let r =
        client.post(format!("{}/v2/models/faulty/infer", server.url)).json(&infer_body()).send().await.expect("infer");
    assert_eq!(r.status(), 500);
    assert!(r.text().await.expect("text").contains("DMA transfer timed out"));
    let r = client
        .post(format!("{}/v2/models/vanishing/infer", server.url))
        .json(&infer_body())
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 503);
    let text = r.text().await.expect("text");
    assert!(text.contains("failed to load") && text.contains("libvanishing.so"), "{text}");
    let r = client
        .post(format!("{}/v2/models/mlp-small/infer", server.url))
        .json(&sluice_e2e::v2_request(&sluice_e2e::expected("mlp-small")))
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200, "the ONNX model still serves");
    let r =
        client.post(format!("{}/v2/models/fpga/infer", server.url)).json(&infer_body()).send().await.expect("infer");
    assert_eq!(r.status(), 200, "the plugin model still serves after its neighbour failed");
    let (ok, _) = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    assert!(ok);
}

#[test]
fn formats_are_detected_and_recorded() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    // A zip is taken for TorchScript, which needs its signature in the config.
    let archive = h.join("model.pt");
    std::fs::write(&archive, b"PK\x03\x04 not really a torchscript archive").expect("write");
    let err = run_err(sluice(h).args(["model", "register", "ts"]).arg(&archive));
    assert!(err.contains("torchscript files do not record their inputs and outputs"), "{err}");
    let config = write(
        h,
        "ts.json",
        &json!({ "signature": { "inputs": [{ "name": "input", "datatype": "FP32", "shape": [-1, 64] }],
                                "outputs": [{ "name": "output", "datatype": "FP32", "shape": [-1, 10] }] } }),
    );
    run_ok(sluice(h).args(["model", "register", "ts"]).arg(&archive).arg("--config").arg(&config));
    let shown: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "show", "ts", "--output", "json"]))).expect("json");
    assert_eq!(shown["format"], "torchscript");
    assert_eq!(shown["signature"]["inputs"][0]["shape"], json!([-1, 64]));
    // Without the torch feature, serving it says what is missing.
    let err = run_err(sluice(h).args(["serve", "ts", "--port", "0"]));
    assert!(err.contains("need a build with the `torch` feature"), "{err}");
    // An ONNX file given as TorchScript, and unknown formats, are refused.
    let err = run_err(
        sluice(h).args(["model", "register", "x"]).arg(model_path("mlp-small")).args(["--format", "torchscript"]),
    );
    assert!(err.contains("not a TorchScript archive"), "{err}");
    let err = run_err(
        sluice(h).args(["model", "register", "x"]).arg(model_path("mlp-small")).args(["--format", "tensorflow"]),
    );
    assert!(err.contains("unknown model format 'tensorflow'"), "{err}");
    // ONNX stays the default, detected.
    run_ok(sluice(h).args(["model", "register", "m"]).arg(model_path("mlp-small")));
    let shown: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "show", "m", "--output", "json"]))).expect("json");
    assert_eq!(shown["format"], "onnx");
}
