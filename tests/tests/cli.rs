//! The `sluice` binary as a user runs it: registry commands, `serve` and `up`, in temporary data
//! directories, over real HTTP.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_e2e::{expected, model_path, workspace};

use sluice_e2e::process::{Server, run_err, run_ok, sluice};

#[test]
fn model_commands_round_trip() {
    let home = tempfile::tempdir().expect("tempdir");
    let h = home.path();
    let out = run_ok(sluice(h).args(["model", "register", "mlp"]).arg(model_path("mlp-small")).args([
        "--description",
        "first",
        "--tag",
        "team=search",
    ]));
    assert!(out.contains("registered mlp:1"), "{out}");
    let json_out =
        run_ok(sluice(h).args(["model", "register", "mlp"]).arg(model_path("mlp-large")).args(["--output", "json"]));
    let v2: Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(v2["version"], 2);

    let list: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "list", "--output", "json"]))).expect("json");
    assert_eq!(list.as_array().expect("array").len(), 2);
    assert_eq!(list[0]["tags"]["team"], "search");
    let table = run_ok(sluice(h).args(["model", "list"]));
    assert!(table.contains("NAME") && table.contains("mlp") && table.contains("first"), "{table}");

    let shown: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "show", "mlp:1", "--output", "json"]))).expect("json");
    assert_eq!(
        shown["signature"]["inputs"][0],
        json!({ "name": "input", "datatype": "FP32", "shape": [-1, 64], "dim_names": ["batch", ""] })
    );
    let details = run_ok(sluice(h).args(["model", "show", "mlp"]));
    assert!(
        details.contains("version:     2") && details.contains("input") && details.contains("[-1, 784]"),
        "{details}"
    );

    let bad = h.join("bad.onnx");
    std::fs::write(&bad, "not a model").expect("write");
    let err = run_err(sluice(h).args(["model", "register", "mlp"]).arg(&bad));
    assert!(err.contains("not a valid ONNX model"), "{err}");
    let err = run_err(sluice(h).args(["model", "delete", "mlp"]));
    assert!(err.contains("give the version to delete"), "{err}");
    let err = run_err(sluice(h).args(["model", "show", "nope"]));
    assert!(err.contains("model 'nope' is not registered"), "{err}");

    assert!(run_ok(sluice(h).args(["model", "delete", "mlp:1"])).contains("deleted mlp:1"));
    let list: Value =
        serde_json::from_str(&run_ok(sluice(h).args(["model", "list", "--output", "json"]))).expect("json");
    assert_eq!(list.as_array().expect("array").len(), 1);
}

fn mlp_large_binary(rows: usize) -> (Vec<u8>, usize) {
    let data: Vec<u8> = (0..rows * 784).flat_map(|i| ((i % 89) as f32 / 89.0).to_le_bytes()).collect();
    let mut body = serde_json::to_vec(&json!({
        "inputs": [{ "name": "input", "shape": [rows, 784], "datatype": "FP32", "parameters": { "binary_data_size": data.len() } }]
    }))
    .expect("json");
    let len = body.len();
    body.extend_from_slice(&data);
    (body, len)
}

#[tokio::test]
async fn up_registers_once_serves_and_drains_on_sigterm() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = Server::start({
        let mut c = sluice(home.path());
        c.args(["up", "--port", "0", "--control-port", "0", "--stop-grace-seconds", "10"]);
        c
    });
    let client = reqwest::Client::new();
    let key =
        |name: &str| run_ok(sluice(home.path()).args(["keys", "get", name, "--key", "primary"])).trim().to_owned();
    // Key auth is on by default.
    let r =
        client.post(format!("{}/models/tabular-mixed/score", server.url)).json(&json!({})).send().await.expect("post");
    assert_eq!(r.status(), 401);
    // The ready-to-paste example from the banner works.
    let r = client
        .post(format!("{}/models/tabular-mixed/score", server.url))
        .bearer_auth(key("tabular-mixed"))
        .json(&json!({ "inputs": { "features": [[0.5, -1.2, 0.3, 0.0, 1.1, -0.4, 0.9, 0.2]], "category": [3] } }))
        .send()
        .await
        .expect("score");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    assert!(body["outputs"]["score"][0][0].as_f64().is_some(), "{body}");
    // Every bundled model answers with its expected outputs.
    for name in ["mlp-small", "mlp-large", "tabular-mixed", "iris-labels", "ticket-router"] {
        let want = expected(name);
        let r = client
            .post(format!("{}/v2/models/{name}/infer", server.url))
            .bearer_auth(key(name))
            .json(&sluice_e2e::v2_request(&want))
            .send()
            .await
            .expect("infer");
        assert_eq!(r.status(), 200, "{name}");
        sluice_e2e::assert_outputs_match(&r.json().await.expect("json"), &want);
    }

    // SIGTERM while a long request runs: the request still completes.
    let (body, len) = mlp_large_binary(2048);
    let slow = tokio::spawn(
        client
            .post(format!("{}/v2/models/mlp-large/infer", server.url))
            .bearer_auth(key("mlp-large"))
            .header("inference-header-content-length", len.to_string())
            .body(body)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (ok, stderr) = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    assert!(ok, "clean exit: {stderr}");
    assert!(stderr.contains("shutting down") && stderr.contains("stopped"), "{stderr}");
    assert_eq!(slow.await.expect("task").expect("in-flight request answered").status(), 200);
    // The replicas stopped with it.
    let leftovers = Command::new("pgrep").arg("-f").arg(home.path()).output().expect("pgrep");
    assert!(leftovers.stdout.is_empty(), "replica processes left: {}", String::from_utf8_lossy(&leftovers.stdout));

    let listed = || -> Vec<(String, u64)> {
        let list: Value =
            serde_json::from_str(&run_ok(sluice(home.path()).args(["model", "list", "--output", "json"])))
                .expect("json");
        list.as_array()
            .expect("array")
            .iter()
            .map(|m| (m["name"].as_str().expect("name").to_owned(), m["version"].as_u64().expect("version")))
            .collect()
    };
    let first = listed();
    assert!(first.contains(&("mlp-small".into(), 1)) && first.contains(&("tabular-mixed".into(), 1)), "{first:?}");

    // A second `up` registers nothing new.
    let again = Server::start({
        let mut c = sluice(home.path());
        c.args(["up", "--port", "0", "--control-port", "0", "--stop-grace-seconds", "10"]);
        c
    });
    let r = reqwest::get(format!("{}/v2/health/ready", again.url)).await.expect("ready");
    assert_eq!(r.status(), 200);
    let services: Value =
        serde_json::from_str(&run_ok(sluice(home.path()).args(["service", "list", "--output", "json"]))).expect("json");
    let services = services.as_array().expect("array");
    let bundled = std::fs::read_dir(workspace().join("models"))
        .expect("the models folder")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "onnx")))
        .count();
    assert_eq!(services.len(), bundled, "one service per bundled model");
    assert!(services.iter().all(|s| s["generation"] == 1 && s["state"] == "Healthy"), "{services:?}");
    let (ok, _) = tokio::task::spawn_blocking(move || again.terminate()).await.expect("join");
    assert!(ok);
    assert_eq!(listed(), first, "up is idempotent");
}

#[tokio::test]
async fn serve_takes_files_and_registry_references() {
    let home = tempfile::tempdir().expect("tempdir");
    run_ok(sluice(home.path()).args(["model", "register", "tab"]).arg(model_path("tabular-mixed")));
    let server = Server::start({
        let mut c = sluice(home.path());
        c.arg("serve").arg(model_path("mlp-small")).arg("tab:1").args(["--instances", "1", "--port", "0"]);
        c
    });
    let meta: Value = reqwest::get(format!("{}/v2", server.url)).await.expect("meta").json().await.expect("json");
    assert_eq!(meta["models"], json!({ "mlp-small": ["1"], "tab": ["1"] }));
    let want = expected("tabular-mixed");
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/tab/versions/1/infer", server.url))
        .json(&sluice_e2e::v2_request(&want))
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    sluice_e2e::assert_outputs_match(&r.json().await.expect("json"), &want);
    let (ok, _) = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    assert!(ok);

    let err = run_err(sluice(home.path()).args(["serve", "tab:7", "--port", "0"]));
    assert!(err.contains("model 'tab' has no version 7"), "{err}");
    let err = run_err(sluice(home.path()).args(["serve", "missing/model.onnx", "--port", "0"]));
    assert!(err.contains("does not exist"), "{err}");
    let err = run_err(
        sluice(home.path())
            .args(["serve", "tab", "--port", "0"])
            .env("SLUICE_ORT_LIB", "/nonexistent/libonnxruntime.so"),
    );
    assert!(err.contains("SLUICE_ORT_LIB"), "{err}");
}

#[tokio::test]
async fn serve_listens_on_a_unix_socket_too() {
    use std::io::{Read, Write};
    let home = tempfile::tempdir().expect("tempdir");
    let socket = home.path().join("replica.sock");
    // A socket file an earlier run left behind is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("stale socket"));
    let server = Server::start({
        let mut c = sluice(home.path());
        c.arg("serve").arg(model_path("mlp-small")).args(["--port", "0", "--unix-socket"]).arg(&socket);
        c
    });
    let path = socket.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect to the Unix socket");
        s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        answer
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (ok, _) = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    assert!(ok);
    assert!(!socket.exists(), "the socket file outlived the server");

    // Anything else at the path is never removed.
    std::fs::write(&socket, "not a socket").expect("write");
    let err = run_err(
        sluice(home.path())
            .arg("serve")
            .arg(model_path("mlp-small"))
            .args(["--port", "0", "--unix-socket"])
            .arg(&socket),
    );
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&socket).expect("still there"), "not a socket");
}

#[tokio::test]
async fn deploy_config_is_checked_before_anything_starts_and_applied() {
    let home = tempfile::tempdir().expect("tempdir");
    let bad = home.path().join("bad.json");
    std::fs::write(&bad, r#"{"num_replicas": 2, "autoscale_enabled": true, "cpu_cores": 2, "cpu_cores_limit": 1}"#)
        .expect("write");
    let err = run_err(
        sluice(home.path())
            .arg("serve")
            .arg(model_path("mlp-small"))
            .arg("--deploy-config")
            .arg(&bad)
            .args(["--port", "0"]),
    );
    assert!(
        err.contains("num_replicas and autoscale_enabled")
            && err.contains("cpu_cores_limit (1) is below cpu_cores (2)"),
        "{err}"
    );
    assert!(!home.path().join("runtimes").exists(), "refused before anything was fetched or loaded");
    let per_model = home.path().join("models.json");
    std::fs::write(&per_model, r#"{"mlp-small": {"device": "cuda:0"}}"#).expect("write");
    let err = run_err(
        sluice(home.path())
            .arg("serve")
            .arg(model_path("mlp-small"))
            .arg("--model-config")
            .arg(&per_model)
            .args(["--port", "0"]),
    );
    // No GPU here: loading on cuda:0 fails, and says how to get a GPU build or fall back.
    assert!(
        err.contains("device cuda:0") && err.contains("GPU execution provider") && err.contains("device_fallback"),
        "{err}"
    );
    // With device_fallback "cpu" the model runs on the CPU, with a warning.
    std::fs::write(&per_model, r#"{"mlp-small": {"device": "cuda:0", "device_fallback": "cpu"}}"#).expect("write");
    let fallback = Server::start({
        let mut c = sluice(home.path());
        c.arg("serve").arg(model_path("mlp-small")).arg("--model-config").arg(&per_model).args(["--port", "0"]);
        c
    });
    let r = reqwest::Client::new()
        .post(format!("{}/v2/models/mlp-small/infer", fallback.url))
        .json(&sluice_e2e::v2_request(&expected("mlp-small")))
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    let (ok, stderr) = tokio::task::spawn_blocking(move || fallback.terminate()).await.expect("join");
    assert!(ok && stderr.contains("GPU unavailable; running on cpu"), "{stderr}");
    let bad_device = home.path().join("bad-device.json");
    std::fs::write(&bad_device, r#"{"gpu_cores": 1, "device": "cpu", "device_fallback": "maybe"}"#).expect("write");
    let err = run_err(
        sluice(home.path())
            .arg("serve")
            .arg(model_path("mlp-small"))
            .arg("--deploy-config")
            .arg(&bad_device)
            .args(["--port", "0"]),
    );
    assert!(err.contains("gpu_cores is above 0 but device is cpu") && err.contains("device_fallback must be"), "{err}");
    let err = run_err(sluice(home.path()).arg("serve").arg(model_path("mlp-small")).args([
        "--instances",
        "0",
        "--port",
        "0",
    ]));
    assert!(err.contains("instance_count (--instances) must be at least 1"), "{err}");

    let good = home.path().join("deploymentconfig.json");
    std::fs::write(
        &good,
        r#"{"computeType": "AKS", "cpu_cores": 1, "memory_gb": 1, "instance_count": 1,
        "replica_max_concurrent_requests": 8, "scoring_timeout_ms": 5000, "max_batch_size": 16}"#,
    )
    .expect("write");
    let server = Server::start({
        let mut c = sluice(home.path());
        c.arg("serve").arg(model_path("mlp-small")).arg("--deploy-config").arg(&good).args(["--port", "0"]);
        c
    });
    let text = reqwest::get(format!("{}/metrics", server.url)).await.expect("metrics").text().await.expect("text");
    assert!(text.contains("sluice_model_instances{model=\"mlp-small\",version=\"1\"} 1\n"), "{text}");
    let (ok, _) = tokio::task::spawn_blocking(move || server.terminate()).await.expect("join");
    assert!(ok);
}
