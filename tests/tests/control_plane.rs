//! Control plane correctness with real processes: `sluice control` driven over its admin API by
//! concurrent clients, killed with SIGKILL and started again; `sluice model delete` against the
//! services the control plane stored; and the replica processes a crashed control plane leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sluice_e2e::model_path;
use sluice_e2e::process::{Server, kill_replicas, replica_processes, run_err, run_ok, sluice};

/// A `sluice control` process in a fresh data directory, and an admin API client.
struct Control {
    home: tempfile::TempDir,
    server: Option<Server>,
    port: u16,
    token: String,
    client: reqwest::Client,
    /// Requests that got no answer (sent while the control plane was down) and were sent again.
    resent: AtomicUsize,
}

impl Control {
    fn start() -> Control {
        Control::start_logging("warn")
    }

    /// A control plane (and its replicas) logging at `level` (`SLUICE_LOG`).
    fn start_logging(level: &str) -> Control {
        let home = tempfile::tempdir().expect("tempdir");
        run_ok(sluice(home.path()).args(["model", "register", "mlp-small"]).arg(model_path("mlp-small")));
        let server = Server::start({
            let mut c = Control::command(home.path(), 0);
            c.env("SLUICE_LOG", level);
            // Replicas inherit this environment; tracing must be off unless a config asks for it.
            c.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
            c
        });
        let port = server.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("control port");
        let token = std::fs::read_to_string(home.path().join("control/admin-token")).expect("admin token");
        Control {
            home,
            server: Some(server),
            port,
            token: token.trim().to_owned(),
            client: reqwest::Client::new(),
            resent: AtomicUsize::new(0),
        }
    }

    fn process(home: &Path, port: u16) -> Server {
        Server::start(Control::command(home, port))
    }

    fn command(home: &Path, port: u16) -> std::process::Command {
        let mut c = sluice(home);
        c.args(["control", "--control-port", &port.to_string(), "--stop-grace-seconds", "2"]);
        // More handler threads than this machine has cores, so that concurrent admin
        // requests really overlap inside the control plane (with one worker per core, on a
        // small machine, two handlers seldom run at the same moment).
        c.env("TOKIO_WORKER_THREADS", "16");
        c
    }

    /// SIGKILL, then a new control plane on the same port with the same data directory.
    fn crash_and_restart(&mut self) {
        self.server.take().expect("running").kill();
        self.server = Some(Control::process(self.home.path(), self.port));
    }

    /// One admin request: the status and the JSON body, or the transport error.
    async fn try_send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
        self.try_send_on(&self.client, method, path, body).await
    }

    /// [`Control::try_send`] on `client`'s connections.
    async fn try_send_on(
        &self,
        client: &reqwest::Client,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut request =
            client.request(method, format!("http://127.0.0.1:{}{path}", self.port)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_send(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: cannot reach the control plane: {e}"))
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Creates a service of mlp-small with `replicas` replicas; does not wait for them.
    async fn service(&self, name: &str, replicas: u32) {
        let body = json!({ "name": name, "models": ["mlp-small"], "deploy_config": { "num_replicas": replicas, "period_seconds": 1 } });
        let (status, answer) = self.send(Method::POST, "/v1/services", Some(&body)).await;
        assert_eq!(status, 201, "{answer}");
    }

    async fn wait_healthy(&self, name: &str) -> Value {
        let started = Instant::now();
        loop {
            if let Ok((200, shown)) = self.try_send(Method::GET, &format!("/v1/services/{name}"), None).await
                && shown["state"] == "Healthy"
            {
                return shown;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "service {name} did not become healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The configuration gateways get, read with the gateway credential.
    async fn gateway_config(&self) -> Value {
        let token = std::fs::read_to_string(self.home.path().join("control/gateway-token")).expect("gateway token");
        let url = format!("http://127.0.0.1:{}/v1/gateway/config", self.port);
        let response = self.client.get(url).bearer_auth(token.trim()).send().await.expect("gateway config");
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.terminate();
        }
        // Whatever a failed test left running in this data directory, by pid.
        kill_replicas(self.home.path());
    }
}

/// Sends `body` to `path` from 8 clients at once and checks that exactly one create succeeded
/// and the others were refused with 409 naming the name.
async fn create_from_eight_clients(control: &Arc<Control>, path: &'static str, body: Value) {
    let name = body["name"].as_str().expect("name").to_owned();
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (control, barrier, body) = (control.clone(), barrier.clone(), body.clone());
            tokio::spawn(async move {
                // A connection each, opened before the barrier: the creates leave together.
                let client = reqwest::Client::new();
                let warm = control.try_send_on(&client, Method::GET, "/v1/services", None).await;
                assert!(matches!(warm, Ok((200, _))), "{warm:?}");
                barrier.wait().await;
                control.try_send_on(&client, Method::POST, path, Some(&body)).await.expect("an answer")
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("client"));
    }
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{path} {name}: {answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(*status, 409, "{body}");
        let error = body["error"].as_str().expect("error message");
        assert!(error.contains(&format!("'{name}' already exists")), "{error}");
    }
}

/// Of concurrent creates of one name, exactly one succeeds; the others get 409 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_have_one_winner() {
    let control = Arc::new(Control::start());
    for r in 0..3 {
        let body =
            json!({ "name": format!("twin-{r}"), "models": ["mlp-small"], "deploy_config": { "num_replicas": 1 } });
        create_from_eight_clients(&control, "/v1/services", body).await;
    }
    for r in 0..150 {
        let body = json!({ "name": format!("same-{r}"), "version": { "name": "v1", "service": "twin-0" } });
        create_from_eight_clients(&control, "/v1/endpoints", body).await;
    }
    // Each service runs one replica: no second group was started for a losing create.
    for r in 0..3 {
        control.wait_healthy(&format!("twin-{r}")).await;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        assert_eq!(replica_processes(control.home.path()).len(), 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sluice model delete` refuses a version a service deploys, naming the service, and deletes it
/// once no service uses it.
#[tokio::test]
async fn model_delete_refuses_a_version_a_service_uses() {
    let control = Control::start();
    // mlp-small:1 is registered by start; version 2 is the same bytes.
    run_ok(sluice(control.home.path()).args(["model", "register", "mlp-small"]).arg(model_path("mlp-small")));
    control.service("user", 1).await;
    let delete = |reference: &str| {
        let mut c = sluice(control.home.path());
        c.args(["model", "delete", reference]);
        c
    };
    let refused = run_err(&mut delete("mlp-small:2"));
    assert!(refused.contains("model 'mlp-small:2' is in use by service 'user'"), "{refused}");
    run_ok(&mut delete("mlp-small:1"));
    let listed = run_ok(sluice(control.home.path()).args(["model", "list"]));
    assert!(listed.lines().any(|l| l.starts_with("mlp-small ") && l.contains(" 2 ")), "{listed}");
    let (status, body) = control.send(Method::DELETE, "/v1/services/user", None).await;
    assert_eq!(status, 204, "{body}");
    run_ok(&mut delete("mlp-small:2"));
}

/// A control plane killed with SIGKILL and started again adopts the replicas it left: there are
/// never more replica processes than the service asks for, and an adopted replica that dies is
/// replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_adopts_its_replicas() {
    let mut control = Control::start();
    control.service("six", 3).await;
    control.wait_healthy("six").await;
    let before = replica_processes(control.home.path());
    assert_eq!(before.len(), 3, "{before:?}");

    control.crash_and_restart();
    let started = Instant::now();
    let mut healthy_at = None;
    // Until a while after the service is healthy again: the old control plane stopped replicas
    // it left 5 s after that.
    while healthy_at.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(7)) {
        let now = replica_processes(control.home.path());
        assert!(now.len() <= 3, "{} replica processes for 3 replicas: {now:?} (before: {before:?})", now.len());
        if healthy_at.is_none()
            && let Ok((200, shown)) = control.try_send(Method::GET, "/v1/services/six", None).await
            && shown["state"] == "Healthy"
        {
            healthy_at = Some(Instant::now());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "service six did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replica_processes(control.home.path()), before, "the replicas were adopted, not replaced");
    let shown = control.get("/v1/services/six").await;
    let pids: BTreeSet<u64> =
        shown["replicas"].as_array().expect("replicas").iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert_eq!(pids, before.iter().map(|&p| u64::from(p)).collect(), "{shown}");
    let config = control.gateway_config().await;
    let route = config["services"].as_array().expect("services").iter().find(|s| s["name"] == "six").cloned();
    assert_eq!(route.expect("six is published")["replicas"].as_array().expect("replicas").len(), 3, "{config}");

    // An adopted replica that dies is noticed and replaced.
    sluice_e2e::process::signal(before[0], "KILL");
    let started = Instant::now();
    loop {
        let shown = control.get("/v1/services/six").await;
        let restarted = shown["replicas"].as_array().expect("replicas").iter().any(|r| r["restarts"] == 1);
        if restarted && shown["state"] == "Healthy" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the killed replica was not replaced: {shown}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = replica_processes(control.home.path());
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(!now.contains(&before[0]));
}

/// What one client knows it stored: every write it got an answer for.
#[derive(Default)]
struct Expected {
    /// Endpoint name → whether it has version v2, and its secondary key if one was set.
    own: BTreeMap<String, (bool, Option<String>)>,
    /// The client's version's traffic on its shared endpoint.
    traffic: f64,
    /// Names of race-* endpoints this client got a 201 for.
    won: Vec<String>,
    /// Names of race-* endpoints whose create this client sent again after a crash and then got a
    /// 409: its first attempt may or may not have been the one stored.
    maybe_won: Vec<String>,
}

/// How a write ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Done,
    /// 409 on a create, first time: the name was taken.
    Taken,
    /// 409 on a create sent again after a crash.
    TakenAfterRetry,
}

const CLIENTS: usize = 8;
const WRITES_PER_CLIENT: usize = 125;

/// Sends one write until it gets an answer, through a crash of the control plane. A retried
/// write may have been applied by its first attempt: then `applied` (the answer a repeat of an
/// applied write gets) counts as done.
async fn write(control: &Control, method: Method, path: &str, body: Option<&Value>, ok: u16, applied: u16) -> Outcome {
    let mut retried = false;
    let started = Instant::now();
    loop {
        match control.try_send(method.clone(), path, body).await {
            Ok((status, _)) if status == ok => return Outcome::Done,
            Ok((status, _)) if retried && status == applied => return Outcome::Done,
            Ok((409, _)) if method == Method::POST && retried => return Outcome::TakenAfterRetry,
            Ok((409, _)) if method == Method::POST => return Outcome::Taken,
            Ok((status, answer)) => panic!("{method} {path} {body:?}: {status} {answer}"),
            Err(e) => {
                assert!(started.elapsed() < Duration::from_secs(60), "{method} {path}: {e}");
                retried = true;
                control.resent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One client's writes: its version's traffic on a shared endpoint (which the other clients of
/// that endpoint change at the same time), endpoints of its own (create, add a version, set a
/// key, delete), and creates of one name that all clients send.
async fn client(
    control: Arc<Control>,
    i: usize,
    barrier: Arc<tokio::sync::Barrier>,
    done: Arc<AtomicUsize>,
) -> Expected {
    let shared = format!("shared-{}", i / 4);
    let mine = format!("c{i}");
    let mut expected = Expected::default();
    let mut own: Vec<String> = Vec::new();
    for k in 0..WRITES_PER_CLIENT {
        // Every write leaves with the other clients' writes, so that they meet in the control plane.
        barrier.wait().await;
        match k % 6 {
            0 | 3 => {
                let traffic = ((k * 7 + i) % 20 + 1) as f64;
                let body = json!({ "name": mine, "traffic": traffic });
                let path = format!("/v1/endpoints/{shared}/versions/{mine}");
                write(&control, Method::PATCH, &path, Some(&body), 200, 200).await;
                expected.traffic = traffic;
            }
            1 => {
                let name = format!("e{i}-{k}");
                let body = json!({ "name": name, "version": { "name": "v1", "service": "s1" } });
                let outcome = write(&control, Method::POST, "/v1/endpoints", Some(&body), 201, 409).await;
                assert_eq!(outcome, Outcome::Done, "{name}");
                expected.own.insert(name.clone(), (false, None));
                own.push(name);
            }
            2 => {
                let name = own.last().expect("created at k % 6 == 1");
                let body = json!({ "name": "v2", "service": "s2", "traffic": 25.0 });
                let path = format!("/v1/endpoints/{name}/versions");
                write(&control, Method::POST, &path, Some(&body), 200, 409).await;
                expected.own.get_mut(name).expect("own").0 = true;
            }
            4 => {
                let name = own.last().expect("created at k % 6 == 1");
                let key = format!("key-{i:02}-{k:04}-{}", "k".repeat(32));
                let body = json!({ "key": "secondary", "value": key });
                write(&control, Method::POST, &format!("/v1/keys/{name}/regenerate"), Some(&body), 204, 204).await;
                expected.own.get_mut(name).expect("own").1 = Some(key);
                if own.len() > 3 {
                    let oldest = own.remove(0);
                    write(&control, Method::DELETE, &format!("/v1/endpoints/{oldest}"), None, 204, 404).await;
                    expected.own.remove(&oldest);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {
                // One name from all clients; exactly one may win.
                let name = format!("race-{k}");
                let body = json!({ "name": name, "version": { "name": "v1", "service": "s2" } });
                match write(&control, Method::POST, "/v1/endpoints", Some(&body), 201, 0).await {
                    Outcome::Done => expected.won.push(name),
                    Outcome::Taken => {}
                    Outcome::TakenAfterRetry => expected.maybe_won.push(name),
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    expected
}

/// Checks an endpoint as the gateway would take it: one default, at most one control, 1-6
/// versions, live traffic within 100, existing services.
fn assert_valid_endpoint(e: &Value) {
    let versions = e["versions"].as_array().unwrap_or_else(|| panic!("no versions: {e}"));
    assert!((1..=6).contains(&versions.len()), "{e}");
    assert_eq!(versions.iter().filter(|v| v["is_default"] == true).count(), 1, "{e}");
    assert!(versions.iter().filter(|v| v["role"] == "control").count() <= 1, "{e}");
    let live: f64 = versions
        .iter()
        .filter(|v| v["is_default"] != true)
        .map(|v| v["traffic_percentile"].as_f64().expect("traffic"))
        .sum();
    assert!(live <= 100.0, "{e}");
    for v in versions {
        assert!(v["service"] == "s1" || v["service"] == "s2", "{e}");
    }
}

/// 1000 admin writes from 8 concurrent clients, with a SIGKILL of the control plane in the
/// middle: none that was answered is lost (no lost update between clients changing one
/// endpoint), one name is created once, and the restarted control plane serves a store in which
/// every endpoint is whole and valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_writes_survive_a_crash_consistent() {
    let mut control = Control::start();
    control.service("s1", 1).await;
    control.service("s2", 1).await;
    for g in 0..2 {
        let body = json!({ "name": format!("shared-{g}"), "version": { "name": "base", "service": "s1" } });
        assert_eq!(control.send(Method::POST, "/v1/endpoints", Some(&body)).await.0, 201);
        for i in g * 4..g * 4 + 4 {
            let body = json!({ "name": format!("c{i}"), "service": "s2" });
            let (status, answer) =
                control.send(Method::POST, &format!("/v1/endpoints/shared-{g}/versions"), Some(&body)).await;
            assert_eq!(status, 200, "{answer}");
        }
    }

    let done = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let c = Arc::new(control);
    let clients: Vec<_> =
        (0..CLIENTS).map(|i| tokio::spawn(client(c.clone(), i, barrier.clone(), done.clone()))).collect();
    // The crash, halfway.
    while done.load(Ordering::Relaxed) < CLIENTS * WRITES_PER_CLIENT / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (home, port) = (c.home.path().to_path_buf(), c.port);
    let old = {
        // The `Server` is inside the shared `Control`; a crash is a SIGKILL of its pid.
        let pid = c.server.as_ref().expect("running").pid();
        sluice_e2e::process::kill_and_wait_gone(pid);
        pid
    };
    let restarted = Control::process(&home, port);
    let mut expected = Vec::new();
    for t in clients {
        expected.push(t.await.expect("client"));
    }
    let total = done.load(Ordering::Relaxed);
    assert!(total >= CLIENTS * WRITES_PER_CLIENT, "{total} writes");
    assert!(c.resent.load(Ordering::Relaxed) > 0, "the crash happened while clients were writing");
    control = Arc::into_inner(c).expect("the clients are done");
    // The killed process is reaped when its `Server` is dropped; the new one takes its place.
    control.server.replace(restarted).expect("the old server").kill();
    assert_ne!(old, control.server.as_ref().expect("running").pid());

    let check = |endpoints: &Value| {
        let endpoints = endpoints.as_array().expect("endpoints").clone();
        let by_name: BTreeMap<String, Value> =
            endpoints.iter().map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone())).collect();
        for e in &endpoints {
            assert_valid_endpoint(e);
        }
        for (i, exp) in expected.iter().enumerate() {
            let shared = &by_name[&format!("shared-{}", i / 4)];
            let mine = shared["versions"].as_array().expect("versions").iter().find(|v| v["name"] == format!("c{i}"));
            let traffic = mine.expect("the client's version")["traffic_percentile"].as_f64().expect("traffic");
            assert_eq!(traffic, exp.traffic, "client {i}'s last traffic change was lost: {shared}");
            let stored: BTreeSet<&String> = by_name.keys().filter(|n| n.starts_with(&format!("e{i}-"))).collect();
            assert_eq!(stored, exp.own.keys().collect(), "client {i}'s endpoints");
            for (name, (has_v2, _)) in &exp.own {
                let versions = by_name[name]["versions"].as_array().expect("versions").len();
                assert_eq!(versions, if *has_v2 { 2 } else { 1 }, "{}", by_name[name]);
            }
        }
        let races: BTreeSet<&String> = by_name.keys().filter(|n| n.starts_with("race-")).collect();
        let won: Vec<&String> = expected.iter().flat_map(|e| &e.won).collect();
        let unique: BTreeSet<&String> = won.iter().copied().collect();
        assert_eq!(won.len(), unique.len(), "a name was created twice: {won:?}");
        let maybe: BTreeSet<&String> = expected.iter().flat_map(|e| &e.maybe_won).collect();
        assert!(unique.is_subset(&races), "won {unique:?}, stored {races:?}");
        assert!(races.iter().all(|r| unique.contains(r) || maybe.contains(r)), "won {unique:?}, stored {races:?}");
        by_name.into_keys().collect::<Vec<_>>()
    };
    let endpoints = control.get("/v1/endpoints").await;
    let names = check(&endpoints);
    for (exp, i) in expected.iter().zip(0..) {
        for (name, (_, key)) in &exp.own {
            let keys = control.get(&format!("/v1/keys/{name}")).await;
            if let Some(key) = key {
                assert_eq!(keys["secondary_key"].as_str(), Some(key.as_str()), "client {i}: {name}");
            }
        }
    }
    for name in &names {
        let keys = control.get(&format!("/v1/keys/{name}")).await;
        assert!(keys["primary_key"].is_string() && keys["secondary_key"].is_string(), "{name}: {keys}");
    }
    // Gateways are served exactly the stored endpoints.
    let config = control.gateway_config().await;
    let published: Vec<String> = config["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(published, names);

    // Once more: what it serves survives another crash unchanged.
    control.crash_and_restart();
    assert_eq!(control.get("/v1/endpoints").await, endpoints);
}

/// Deployment-config settings that the local target does not act on are named when the service
/// is created or updated and in `service show` (table and JSON), each with its reason; and the
/// replica logs the control plane keeps are plain text without terminal colour codes.
#[tokio::test]
async fn settings_without_effect_are_named_and_replica_logs_carry_no_colour_codes() {
    let control = Control::start_logging("info");
    let home = control.home.path();
    let config = json!({ "num_replicas": 1, "cpu_cores": 0.5, "memory_gb": 1, "success_threshold": 2 });
    let body = json!({ "name": "r", "models": ["mlp-small"], "deploy_config": config });
    let (status, created) = control.send(Method::POST, "/v1/services", Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    let fields = |shown: &Value| -> Vec<String> {
        let ignored = shown["ignored_settings"].as_array().expect("ignored_settings");
        assert!(ignored.iter().all(|i| i["reason"].as_str().is_some_and(|r| !r.is_empty())), "{shown}");
        ignored.iter().map(|i| i["field"].as_str().expect("field").to_owned()).collect()
    };
    assert_eq!(fields(&created), ["cpu_cores", "memory_gb", "success_threshold"]);
    control.wait_healthy("r").await;

    let table = run_ok(sluice(home).args(["service", "show", "r"]));
    assert!(
        table.contains("ignored settings") && table.contains("cpu_cores: local replicas are plain processes"),
        "{table}"
    );
    let shown: Value =
        serde_json::from_str(&run_ok(sluice(home).args(["service", "show", "r", "--output", "json"]))).expect("json");
    assert_eq!(fields(&shown), ["cpu_cores", "memory_gb", "success_threshold"]);

    let logs = run_ok(sluice(home).args(["service", "logs", "r", "--replica", "0"]));
    assert!(logs.contains("model loaded"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "colour codes in a replica log: {logs:?}");
    assert!(!logs.contains("exporting traces"), "a replica traced without being asked to: {logs}");

    // `enable_app_insights` turns tracing on in the replica, towards the OpenTelemetry collector
    // beside it (nothing listens there in this test; no request is sent, so nothing is exported).
    let config = json!({ "num_replicas": 1, "enable_app_insights": true });
    let body = json!({ "name": "insights", "models": ["mlp-small"], "deploy_config": config });
    let (status, created) = control.send(Method::POST, "/v1/services", Some(&body)).await;
    assert_eq!(status, 201, "{created}");
    control.wait_healthy("insights").await;
    let logs = run_ok(sluice(home).args(["service", "logs", "insights", "--replica", "0"]));
    assert!(
        logs.contains("exporting traces over OTLP/HTTP") && logs.contains("http://localhost:4318"),
        "enable_app_insights did not turn the replica's tracing on: {logs}"
    );

    // An update says it too, on stderr, as the CLI prints it.
    let file = home.join("delay.json");
    std::fs::write(&file, r#"{"initial_delay_seconds": 30}"#).expect("write");
    let out = sluice(home).args(["service", "update", "r", "--deploy-config"]).arg(&file).output().expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("initial_delay_seconds has no effect here: local replicas are probed"), "{stderr}");
}
