//! What a control plane on another host relies on, as real processes on loopback: the registry
//! through the admin API (`sluice model ...` with a control URL), artifacts served by content hash
//! to replicas that hold the gateway credential, `sluice replica` fetching and checking its models,
//! and a gateway serving a fixed routes file in front of a Unix socket (the sidecar layout).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sluice_e2e::process::{Server, kill_replicas, run_err, run_ok, sluice};
use sluice_e2e::{assert_outputs_match, expected, model_path, v2_request};

struct Control {
    home: tempfile::TempDir,
    server: Server,
    /// The CLI's own data directory: empty, so nothing can come from it by accident.
    client_home: tempfile::TempDir,
}

/// The control plane is killed when a test ends (a crash, to the replicas it started, which
/// outlive it by design so a restarted one can adopt them): its replicas are killed after it.
impl Drop for Control {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-KILL").arg(self.server.pid().to_string()).status();
        kill_replicas(self.home.path());
    }
}

impl Control {
    fn start() -> Control {
        let home = tempfile::tempdir().expect("tempdir");
        let server = Server::start({
            let mut c = sluice(home.path());
            c.args(["control", "--control-port", "0"]);
            c
        });
        Control { home, server, client_home: tempfile::tempdir().expect("tempdir") }
    }

    fn token(&self, which: &str) -> String {
        std::fs::read_to_string(self.home.path().join("control").join(which)).expect("token").trim().to_owned()
    }

    /// `sluice ARGS --control-url URL --admin-token-file FILE` from another data directory.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = sluice(self.client_home.path());
        c.args(args)
            .arg("--control-url")
            .arg(&self.server.url)
            .arg("--admin-token-file")
            .arg(self.home.path().join("control/admin-token"));
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&run_ok(&mut self.cli(&all))).expect("json")
    }
}

#[test]
fn the_registry_works_through_the_admin_api() {
    let c = Control::start();
    let registered = c.json(&["model", "register", "mlp-small", model_path("mlp-small").to_str().expect("utf8")]);
    assert_eq!((registered["name"].as_str(), registered["version"].as_u64()), (Some("mlp-small"), Some(1)));
    let again = c.json(&["model", "register", "mlp-small", model_path("mlp-small").to_str().expect("utf8")]);
    assert_eq!(again["version"], 2);
    // Stored on the control plane's side, nowhere else.
    assert!(!c.client_home.path().join("sluice.db").exists());
    let listed = c.json(&["model", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let shown = c.json(&["model", "show", "mlp-small"]);
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["signature"]["inputs"][0]["name"], "input", "{shown}");

    // Refusals carry the server's message.
    let garbage = c.client_home.path().join("garbage.onnx");
    std::fs::write(&garbage, b"not a model at all").expect("write");
    let refused = run_err(&mut c.cli(&["model", "register", "bad", garbage.to_str().expect("utf8")]));
    assert!(refused.contains("not a valid ONNX model"), "{refused}");
    assert!(!refused.contains("upload-"), "the temporary upload path leaks: {refused}");
    assert!(run_err(&mut c.cli(&["model", "show", "nope"])).contains("'nope' is not registered"));
    let plugin =
        run_err(&mut c.cli(&["model", "register", "p", garbage.to_str().expect("utf8"), "--format", "plugin"]));
    assert!(plugin.contains("register them there"), "{plugin}");

    // A version a service deploys is not deleted; another is.
    run_ok(&mut c.cli(&["service", "create", "s", "--model", "mlp-small:2", "--wait"]));
    let in_use = run_err(&mut c.cli(&["model", "delete", "mlp-small:2"]));
    assert!(in_use.contains("in use by service 's'"), "{in_use}");
    assert!(run_ok(&mut c.cli(&["model", "delete", "mlp-small:1"])).contains("deleted mlp-small:1"));
    assert_eq!(c.json(&["model", "list"]).as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn artifacts_are_served_by_hash_to_the_gateway_credential_only() {
    let c = Control::start();
    let mv = c.json(&["model", "register", "mlp-small", model_path("mlp-small").to_str().expect("utf8")]);
    let sha = mv["sha256"].as_str().expect("sha256");
    let url = format!("{}/v1/artifacts/sha256/{sha}", c.server.url);
    let http = reqwest::Client::new();
    let anonymous = http.get(&url).send().await.expect("answer");
    assert_eq!(anonymous.status(), 401);
    let wrong = http.get(&url).bearer_auth("x".repeat(43)).send().await.expect("answer");
    assert_eq!(wrong.status(), 401);
    let r = http.get(&url).bearer_auth(c.token("gateway-token")).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.expect("body");
    assert_eq!(&bytes[..], &std::fs::read(model_path("mlp-small")).expect("model")[..]);
    let unknown = http.get(format!("{}/v1/artifacts/sha256/{}", c.server.url, "0".repeat(64)));
    assert_eq!(unknown.bearer_auth(c.token("gateway-token")).send().await.expect("answer").status(), 404);
    let traversal = http.get(format!("{}/v1/artifacts/sha256/..%2F..%2Fcontrol%2Fadmin-token", c.server.url));
    assert_eq!(traversal.bearer_auth(c.token("gateway-token")).send().await.expect("answer").status(), 400);
}

/// `sluice replica` with `spec`, fetching from `c`; its data directory is `home`.
fn replica(c: &Control, home: &Path, spec: &Value) -> Command {
    let mut cmd = sluice(home);
    cmd.env("SLUICE_REPLICA_SPEC", spec.to_string())
        .env("SLUICE_CONTROL_URL", &c.server.url)
        .env("SLUICE_CONTROL_TOKEN_FILE", c.home.path().join("control/gateway-token"))
        .args(["replica", "--host", "127.0.0.1", "--port", "0", "--instances", "1", "--fetch-attempts", "2"]);
    cmd
}

#[tokio::test]
async fn a_replica_fetches_its_models_by_hash_checks_them_and_serves_them() {
    let c = Control::start();
    let mv = c.json(&["model", "register", "mlp-small", model_path("mlp-small").to_str().expect("utf8")]);
    let sha = mv["sha256"].as_str().expect("sha256").to_owned();
    let spec = json!({
        "service": "s", "generation": 4,
        "models": [{ "name": "mlp-small", "version": 7, "format": "onnx", "sha256": sha, "size_bytes": 1 }],
        "deploy_config": { "scoring_timeout_ms": 5000 },
    });
    let home = tempfile::tempdir().expect("tempdir");
    let server = Server::start(replica(&c, home.path(), &spec));
    let http = reqwest::Client::new();
    // Served under the registered version, from the fetched and checked copy.
    let meta: Value =
        http.get(format!("{}/v2/models/mlp-small", server.url)).send().await.expect("meta").json().await.expect("json");
    assert_eq!(meta["versions"], json!(["7"]), "{meta}");
    let want = expected("mlp-small");
    let r = http
        .post(format!("{}/v2/models/mlp-small/infer", server.url))
        .json(&v2_request(&want))
        .send()
        .await
        .expect("infer");
    assert_eq!(r.status(), 200);
    assert_outputs_match(&r.json().await.expect("json"), &want);
    assert!(home.path().join("artifacts/sha256").join(&sha).is_file());
    drop(server);

    // Bytes that do not hash to what the spec names are never served: the control plane's copy
    // corrupted, a fresh replica refuses it.
    std::fs::write(c.home.path().join("artifacts/sha256").join(&sha), b"tampered").expect("tamper");
    let fresh = tempfile::tempdir().expect("tempdir");
    let refused = run_err(&mut replica(&c, fresh.path(), &spec));
    assert!(refused.contains(&format!("not {sha}")), "{refused}");
    assert!(!fresh.path().join("artifacts/sha256").join(&sha).exists());
    // A replica that kept a good copy restarts from it without asking.
    let restarted = Server::start(replica(&c, home.path(), &spec));
    let ready = http.get(format!("{}/v2/health/ready", restarted.url)).send().await.expect("ready");
    assert_eq!(ready.status(), 200);

    // Without the credential nothing is fetched, and the refusal says so at once.
    let mut no_token = replica(&c, tempfile::tempdir().expect("tempdir").path(), &spec);
    no_token.env("SLUICE_CONTROL_TOKEN_FILE", c.home.path().join("control/admin-token.missing"));
    assert!(run_err(&mut no_token).contains("reading the control plane credential"));
}

#[tokio::test]
async fn a_gateway_serves_a_routes_file_in_front_of_a_unix_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("serve.sock");
    let _serve = Server::start({
        let mut c = sluice(dir.path());
        c.args(["serve", "--port", "0", "--instances", "1", "--unix-socket"]).arg(&socket).arg(model_path("mlp-small"));
        c
    });
    let key = "k".repeat(40);
    let digest = sluice_auth::KeyDigest::of(&key).to_hex();
    let routes = json!({
        "generation": 1,
        "services": [{
            "name": "model", "models": ["mlp-small"], "replicas": [format!("unix:{}", socket.display())],
            "auth": { "mode": "keys", "primary": digest, "secondary": digest },
        }],
        "endpoints": [],
        "jwks": { "keys": [] },
    });
    let routes_file = dir.path().join("routes.json");
    std::fs::write(&routes_file, routes.to_string()).expect("write");
    let gateway = Server::start({
        let mut c = sluice(dir.path());
        c.args(["gateway", "--port", "0", "--routes-file"]).arg(&routes_file);
        c
    });
    let http = reqwest::Client::new();
    let url = format!("{}/services/model/v2/models/mlp-small/infer", gateway.url);
    let want = expected("mlp-small");
    let r = http.post(&url).bearer_auth(&key).json(&v2_request(&want)).send().await.expect("infer");
    assert_eq!(r.status(), 200);
    assert_outputs_match(&r.json().await.expect("json"), &want);
    let anonymous = http.post(&url).json(&v2_request(&want)).send().await.expect("answer");
    assert_eq!(anonymous.status(), 401);
    // Probes through the gateway need no key (the sidecar's kubelet probes go this way).
    let ready = http.get(format!("{}/services/model/v2/health/ready", gateway.url)).send().await.expect("ready");
    assert_eq!(ready.status(), 200);

    // A routes file that is not a configuration fails at start, naming the file.
    std::fs::write(&routes_file, r#"{"generation": 1}"#).expect("write");
    let refused = run_err(sluice(dir.path()).args(["gateway", "--port", "0", "--routes-file"]).arg(&routes_file));
    assert!(refused.contains("is not a gateway configuration"), "{refused}");
}
