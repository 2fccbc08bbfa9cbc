//! Test support for Sluice's end-to-end tests: a real scoring server on 127.0.0.1:0 with real ONNX
//! Runtime sessions, the bundled models and their expected outputs.

pub mod gateway;
pub mod openapi;
pub mod process;
pub mod python;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use sluice_backend_ort::{OrtBackend, OrtOptions};
use sluice_core::Backend;
use sluice_runtime::{ModelConfig, ModelHandle};
use sluice_server::{AppState, Repository, ServerConfig};
use tokio::sync::oneshot;

/// A test whose prerequisite is missing (pip cannot install a client, no Docker Engine) says so
/// and passes, so `cargo test` works on a machine without them; with `SLUICE_TESTS_REQUIRE_ALL=1`
/// (as `.ci/run` sets, on machines that have both) it fails instead, so CI never reports a test
/// as passed that did not run.
pub fn skip(reason: &str) {
    if std::env::var("SLUICE_TESTS_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{reason} (SLUICE_TESTS_REQUIRE_ALL=1 makes this a failure, not a skip)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// A bundled model file.
pub fn model_path(name: &str) -> PathBuf {
    workspace().join("models").join(format!("{name}.onnx"))
}

/// `models/expected/<name>.json`: fixed inputs and the outputs a NumPy forward pass gave.
pub fn expected(name: &str) -> Value {
    let path = workspace().join("models/expected").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("expected outputs exist")).expect("valid json")
}

/// The ONNX Runtime library for tests: `SLUICE_ORT_LIB` when set, else provisioned once (through
/// the same code path as `sluice serve`) into `target/test-runtime`.
pub fn ort_library() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let explicit = std::env::var_os("SLUICE_ORT_LIB").map(PathBuf::from);
        sluice_backend_ort::locate_or_provision(explicit.as_deref(), &workspace().join("target/test-runtime"))
            .expect("ONNX Runtime for tests")
    })
    .clone()
}

/// Small, fast defaults for tests: two instances, generous limits.
pub fn test_config() -> ModelConfig {
    ModelConfig { instance_count: 2, ..ModelConfig::for_this_machine() }
}

/// Loads `file` as model `name:version`.
pub fn load(name: &str, version: &str, file: &Path, config: ModelConfig) -> ModelHandle {
    let env = sluice_backend_ort::init(&ort_library()).expect("ONNX Runtime loads");
    ModelHandle::start(name, version, config, |_| {
        OrtBackend::load(env, file, &OrtOptions::default()).map(|b| Box::new(b) as Box<dyn Backend>)
    })
    .expect("model loads")
}

/// A scoring server running on 127.0.0.1:0 until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Serves the given model handles.
    pub async fn start(models: Vec<ModelHandle>, config: ServerConfig) -> Self {
        let mut repository = Repository::default();
        for m in models {
            repository.insert(m).expect("distinct models");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(repository, config);
        let task = tokio::spawn(async move {
            sluice_server::serve(listener, None, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        TestServer { addr, client: reqwest::Client::new(), stop: Some(stop), task: Some(task) }
    }

    /// The bundled models by name, version 1, with [`test_config`].
    pub async fn bundled(names: &[&str]) -> Self {
        let models = names.iter().map(|n| load(n, "1", &model_path(n), test_config())).collect();
        Self::start(models, ServerConfig::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_bytes(path, serde_json::to_vec(body).expect("serializes"), &[]).await
    }

    pub async fn post_bytes(&self, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).body(body).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Posts every body to `batched` at once (so they can share engine runs), then each alone to
    /// `alone`; both answers of each body, in order, after checking that all were 200.
    pub async fn batched_and_alone(
        self: &std::sync::Arc<Self>,
        batched: &str,
        alone: &str,
        bodies: &[Value],
    ) -> Vec<(Value, Value)> {
        let tasks: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|body| {
                let (server, path) = (self.clone(), batched.to_owned());
                tokio::spawn(async move { server.post_json(&path, &body).await })
            })
            .collect();
        let mut answers = Vec::new();
        for (task, body) in tasks.into_iter().zip(bodies) {
            let (status, together) = task.await.expect("task");
            assert_eq!(status, 200, "{together}");
            let (status, single) = self.post_json(alone, body).await;
            assert_eq!(status, 200, "{single}");
            answers.push((together, single));
        }
        answers
    }

    /// Engine runs of `model` version `version` so far (`sluice_batch_size_count`).
    pub async fn engine_runs(&self, model: &str, version: &str) -> u64 {
        let text = self.client.get(self.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        let series = format!("sluice_batch_size_count{{model=\"{model}\",version=\"{version}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in the metrics"))
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Flattens JSON numbers (nested or not) into f64s.
pub fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(numbers).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number")],
        Value::Bool(b) => vec![f64::from(u8::from(*b))],
        other => panic!("not numeric data: {other}"),
    }
}

/// Asserts two numeric sequences agree within `tolerance` (absolute).
pub fn assert_close(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tolerance, "{what}[{i}]: got {g}, expected {w} (tolerance {tolerance})");
    }
}

/// The expected file's inputs as an OIP v2 request body.
pub fn v2_request(expected: &Value) -> Value {
    serde_json::json!({ "inputs": expected["inputs"] })
}

/// Compares an OIP v2 response's outputs with the expected file's, by name.
pub fn assert_outputs_match(response: &Value, expected: &Value) {
    let tolerance = expected["tolerance"].as_f64().expect("tolerance");
    for want in expected["outputs"].as_array().expect("outputs") {
        let name = want["name"].as_str().expect("name");
        let got = response["outputs"]
            .as_array()
            .expect("outputs in response")
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("output {name} missing from {response}"));
        assert_eq!(got["datatype"], want["datatype"], "{name} datatype");
        assert_eq!(got["shape"], want["shape"], "{name} shape");
        if want["datatype"] == "BYTES" {
            assert_eq!(got["data"], want["data"], "{name}");
        } else {
            assert_close(&numbers(&got["data"]), &numbers(&want["data"]), tolerance, name);
        }
    }
}
