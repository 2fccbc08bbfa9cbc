//! The control plane, services, endpoints and the gateway as a user runs them: `sluice control`,
//! `sluice gateway` and the admin commands as real processes, with real replica processes scoring
//! with ONNX Runtime on loopback ports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::openapi;
use sluice_e2e::process::{Server, run_err, run_ok, signal, sluice};
use sluice_e2e::{assert_outputs_match, expected, model_path, v2_request};

/// A control plane and a gateway following it, in a fresh data directory.
struct Platform {
    home: tempfile::TempDir,
    control: Option<Server>,
    control_port: u16,
    gateway: Option<Server>,
    client: reqwest::Client,
}

impl Platform {
    async fn start(gateway_args: &[&str]) -> Platform {
        Platform::start_with(gateway_args, &[]).await
    }

    /// With more flags for `sluice control`.
    async fn start_with(gateway_args: &[&str], control_args: &[&str]) -> Platform {
        let home = tempfile::tempdir().expect("tempdir");
        for model in ["mlp-small", "dtype-echo"] {
            run_ok(sluice(home.path()).args(["model", "register", model]).arg(model_path(model)));
        }
        let control = Server::start({
            let mut c = sluice(home.path());
            c.args(["control", "--control-port", "0", "--stop-grace-seconds", "5"]).args(control_args);
            c
        });
        let control_port: u16 = control.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("control port");
        let gateway = Server::start({
            let mut c = sluice(home.path());
            c.args(["gateway", "--port", "0", "--seed", "7"]).args(gateway_args);
            c
        });
        let p = Platform {
            home,
            control: Some(control),
            control_port,
            gateway: Some(gateway),
            client: reqwest::Client::new(),
        };
        let ready = format!("{}/v2/health/ready", p.gateway_url());
        p.wait_until("the gateway has a configuration", || {
            let client = p.client.clone();
            let ready = ready.clone();
            async move { client.get(&ready).send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
        p
    }

    fn start_control(home: &std::path::Path, port: u16) -> Server {
        Server::start({
            let mut c = sluice(home);
            c.args(["control", "--control-port", &port.to_string(), "--stop-grace-seconds", "5"]);
            c
        })
    }

    fn gateway_url(&self) -> &str {
        &self.gateway.as_ref().expect("gateway").url
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = sluice(self.home.path());
        c.args(args);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.cmd(args))
    }

    fn err(&self, args: &[&str]) -> String {
        run_err(&mut self.cmd(args))
    }

    /// A CLI call that does not block the test's other tasks.
    async fn ok_async(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::from(self.cmd(args)).output().await.expect("runs");
        assert!(out.status.success(), "sluice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    fn write(&self, name: &str, value: &Value) -> PathBuf {
        let path = self.home.path().join(name);
        std::fs::write(&path, value.to_string()).expect("write");
        path
    }

    /// `service create NAME --model MODEL [--deploy-config] --wait`.
    async fn service(&self, name: &str, model: &str, deploy: Option<Value>) {
        let mut args = vec!["service", "create", name, "--model", model, "--wait"];
        let path;
        if let Some(config) = deploy {
            path = self.write(&format!("{name}-deploy.json"), &config);
            args.extend(["--deploy-config", path.to_str().expect("utf8 path")]);
        }
        self.ok_async(&args).await;
    }

    fn key(&self, name: &str) -> String {
        self.ok(&["keys", "get", name, "--key", "primary"]).trim().to_owned()
    }

    async fn wait_until<F: Future<Output = bool>>(&self, what: &str, mut check: impl FnMut() -> F) {
        let started = Instant::now();
        while !check().await {
            assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sum of a gateway metric family's series whose labels contain `labels`.
    async fn metric(&self, family: &str, labels: &str) -> u64 {
        let text =
            reqwest::get(format!("{}/metrics", self.gateway_url())).await.expect("metrics").text().await.expect("text");
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
            .filter(|l| l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The replica addresses the control plane publishes to gateways for `service`.
    async fn published_replicas(&self, service: &str) -> Vec<String> {
        let token = std::fs::read_to_string(self.home.path().join("control/gateway-token")).expect("gateway token");
        let url = format!("http://127.0.0.1:{}/v1/gateway/config", self.control_port);
        let config: Value = self
            .client
            .get(url)
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("gateway config")
            .json()
            .await
            .expect("json");
        let services = config["services"].as_array().expect("services");
        let route = services.iter().find(|s| s["name"] == service).expect("service in the configuration");
        route["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .map(|r| r.as_str().expect("address").to_owned())
            .collect()
    }

    fn replica_pids(&self, service: &str) -> Vec<u32> {
        let shown = self.json(&["service", "show", service]);
        shown["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .filter_map(|r| r["pid"].as_u64().map(|p| p as u32))
            .collect()
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(control) = self.control.take() {
            let _ = control.terminate();
        }
        self.gateway.take();
        // Whatever a failed test left running in this data directory.
        let _ = Command::new("pkill").arg("-KILL").arg("-f").arg(self.home.path()).status();
    }
}

/// An infer request for mlp-small and the outputs it must produce.
fn mlp_request() -> (Value, Value) {
    let want = expected("mlp-small");
    (v2_request(&want), want)
}

/// Sends requests from `workers` tasks until `stop`; returns (answered, failures).
fn load(
    client: reqwest::Client,
    url: String,
    key: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (body, want) = mlp_request();
        let (body, want) = (Arc::new(body), Arc::new(want));
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (client, url, key, stop, body, want) =
                    (client.clone(), url.clone(), key.clone(), stop.clone(), body.clone(), want.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failures) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        match client.post(&url).bearer_auth(&key).json(&*body).send().await {
                            Ok(r) if r.status() == 200 => {
                                let v: Value = r.json().await.expect("json");
                                assert_outputs_match(&v, &want);
                                ok += 1;
                            }
                            Ok(r) => failures.push(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
                            Err(e) => failures.push(e.to_string()),
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        let (mut ok, mut failures) = (0, Vec::new());
        for t in tasks {
            let (o, f) = t.await.expect("worker");
            ok += o;
            failures.extend(f);
        }
        (ok, failures)
    })
}

/// Stops a [`load`] and asserts that every request succeeded and at least `min` ran.
async fn finish_load(stop: &AtomicBool, running: tokio::task::JoinHandle<(usize, Vec<String>)>, min: usize) {
    stop.store(true, Ordering::Relaxed);
    let (answered, failures) = running.await.expect("load");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered > min, "the load ran ({answered} requests)");
}

/// Counts the `x-sluice-version` of `n` GETs of `url`, `concurrency` at a time.
async fn versions_of(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    n: usize,
    concurrency: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let per = n / concurrency;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.to_owned(), key.to_owned());
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(per);
                for _ in 0..per {
                    let r = client.get(&url).bearer_auth(&key).send().await.expect("request");
                    assert_eq!(r.status(), 200);
                    seen.push(r.headers()["x-sluice-version"].to_str().expect("ascii").to_owned());
                }
                seen
            })
        })
        .collect();
    for t in tasks {
        for v in t.await.expect("task") {
            *counts.entry(v).or_insert(0) += 1;
        }
    }
    counts
}

/// Pearson's chi-square statistic of `counts` against `shares` (fractions summing to 1).
fn chi_square(counts: &BTreeMap<String, usize>, shares: &[(&str, f64)]) -> f64 {
    let n: usize = counts.values().sum();
    assert!(counts.keys().all(|k| shares.iter().any(|(v, _)| v == k)), "unexpected versions in {counts:?}");
    shares
        .iter()
        .map(|(v, p)| {
            let expected = n as f64 * p;
            let observed = *counts.get(*v).unwrap_or(&0) as f64;
            (observed - expected).powi(2) / expected
        })
        .sum()
}

/// 99.9th percentile of chi-square with 2 degrees of freedom.
const CHI2_2DOF_P999: f64 = 13.82;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_follows_weights_and_changes_lose_no_request() {
    let p = Platform::start(&[]).await;
    for s in ["a", "b", "c"] {
        p.service(s, "mlp-small", None).await;
    }
    p.ok(&["endpoint", "create", "ep", "--version", "v1=a"]);
    p.ok(&["endpoint", "version", "add", "ep", "v2=b", "--traffic", "30"]);
    let shown = p.ok(&["endpoint", "version", "add", "ep", "v3=c", "--traffic", "20"]);
    assert!(shown.contains("v1 (default)") && shown.contains("50.0%"), "{shown}");
    let key = p.key("ep");
    let ready = format!("{}/endpoints/ep/v2/models/anything/ready", p.gateway_url());
    // Pinned requests do not draw from the seeded sequence, so waiting cannot change the counts.
    p.wait_until("the gateway routes v3", || {
        let req = p.client.get(&ready).bearer_auth(&key).header("x-sluice-version", "v3");
        async move { req.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    let counts = versions_of(&p.client, &ready, &key, 10_000, 16).await;
    let chi = chi_square(&counts, &[("v1", 0.5), ("v2", 0.3), ("v3", 0.2)]);
    assert!(chi < CHI2_2DOF_P999, "split {counts:?} is off the configured 50/30/20 (chi-square {chi})");

    p.ok(&["endpoint", "version", "update", "ep", "v2", "--traffic", "10"]);
    p.ok(&["endpoint", "version", "update", "ep", "v3", "--traffic", "45"]);
    p.wait_until("the gateway has the new weights", || {
        let url = format!("{}/metrics", p.gateway_url());
        async move { reqwest::get(&url).await.is_ok() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = versions_of(&p.client, &ready, &key, 10_000, 16).await;
    let chi = chi_square(&counts, &[("v1", 0.45), ("v2", 0.10), ("v3", 0.45)]);
    assert!(chi < CHI2_2DOF_P999, "split {counts:?} is off the configured 45/10/45 (chi-square {chi})");

    // Versions and weights change, and a service rolls out new replicas, while requests flow.
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}/endpoints/ep/v2/models/mlp-small/infer", p.gateway_url());
    let running = load(p.client.clone(), url, key.clone(), 8, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let two_replicas = p.write("two.json", &json!({ "num_replicas": 2 }));
    for change in [
        vec!["endpoint", "version", "add", "ep", "v4=a", "--traffic", "5"],
        vec!["endpoint", "version", "update", "ep", "v2", "--default"],
        vec!["endpoint", "version", "update", "ep", "v4", "--control", "--traffic", "40"],
        vec!["endpoint", "version", "delete", "ep", "v1"],
        vec!["endpoint", "version", "update", "ep", "v3", "--traffic", "0"],
        vec!["service", "update", "b", "--deploy-config", two_replicas.to_str().expect("utf8"), "--wait"],
        vec!["endpoint", "version", "delete", "ep", "v4"],
        vec!["endpoint", "version", "add", "ep", "v5=c", "--traffic", "50"],
    ] {
        p.ok_async(&change).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finish_load(&stop, running, 50).await;
    let b = p.json(&["service", "show", "b"]);
    assert_eq!((b["generation"].as_u64(), b["state"].as_str()), (Some(2), Some("Healthy")), "{b}");
    assert_eq!(b["replicas"].as_array().expect("replicas").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_sticky_and_shadows_that_never_touch_the_caller() {
    let p = Platform::start(&["--max-shadow-in-flight", "4", "--shadow-timeout-ms", "60000"]).await;
    for (s, model) in [("a", "mlp-small"), ("b", "mlp-small"), ("mirror", "mlp-small"), ("echo", "dtype-echo")] {
        p.service(s, model, None).await;
    }
    p.ok(&["endpoint", "create", "ep", "--version", "v1=a"]);
    p.ok(&["endpoint", "version", "add", "ep", "v2=b", "--traffic", "50"]);
    p.ok(&["endpoint", "version", "add", "ep", "sh=mirror", "--shadow", "50"]);
    let key = p.key("ep");
    let gw = p.gateway_url().to_owned();
    let infer = format!("{gw}/endpoints/ep/v2/models/mlp-small/infer");
    let (body, want) = mlp_request();
    p.wait_until("the gateway routes the shadow", || {
        let req = p
            .client
            .get(format!("{gw}/endpoints/ep/v2/models/x/ready"))
            .bearer_auth(&key)
            .header("x-sluice-version", "sh");
        async move { req.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let shadow_seen = || p.metric("sluice_gateway_requests_total", "endpoint=\"ep\",version=\"sh\"");

    // Pinned: always that version, never mirrored.
    let before = shadow_seen().await;
    for _ in 0..30 {
        let r = p
            .client
            .post(&infer)
            .bearer_auth(&key)
            .header("x-sluice-version", "v2")
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!((r.status().as_u16(), r.headers()["x-sluice-version"].to_str().expect("ascii")), (200, "v2"));
    }
    let pinned_shadow = shadow_seen().await;
    // (The pinned wait above was the only other request that reached the shadow.)
    assert!(pinned_shadow <= before + 1, "pinned requests were mirrored: {before} -> {pinned_shadow}");
    let r = p
        .client
        .post(&infer)
        .bearer_auth(&key)
        .header("x-sluice-version", "v9")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.expect("json");
    assert!(e["error"].as_str().expect("error").contains("no version 'v9'"), "{e}");

    // Sticky: one key, one version; different keys spread over both.
    let mut seen = BTreeMap::new();
    for user in 0..40 {
        let mut versions = Vec::new();
        for _ in 0..4 {
            let r = p
                .client
                .post(&infer)
                .bearer_auth(&key)
                .header("x-sluice-route-key", format!("user-{user}"))
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
            versions.push(r.headers()["x-sluice-version"].to_str().expect("ascii").to_owned());
        }
        assert!(versions.windows(2).all(|w| w[0] == w[1]), "user-{user} moved between versions: {versions:?}");
        *seen.entry(versions[0].clone()).or_insert(0) += 1;
    }
    assert!(seen.len() == 2 && seen.values().all(|&n| n >= 8), "route keys should spread over v1 and v2: {seen:?}");

    // The shadow gets about its share of unpinned requests; callers get the live answer.
    let before = shadow_seen().await;
    for _ in 0..400 {
        let r = p.client.post(&infer).bearer_auth(&key).json(&body).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_ne!(r.headers()["x-sluice-version"], "sh", "the shadow never answers callers");
        assert_outputs_match(&r.json().await.expect("json"), &want);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mirrored = shadow_seen().await - before;
    assert!((140..=260).contains(&mirrored), "about 50% of 400 requests should be mirrored, got {mirrored}");

    // A frozen shadow: callers are not slowed, and copies beyond the in-flight cap are dropped.
    let frozen = p.replica_pids("mirror");
    assert_eq!(frozen.len(), 1);
    signal(frozen[0], "STOP");
    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let started = Instant::now();
        let r = p.client.post(&infer).bearer_auth(&key).json(&body).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_outputs_match(&r.json().await.expect("json"), &want);
        slowest = slowest.max(started.elapsed());
    }
    signal(frozen[0], "CONT");
    // Each copy to the frozen shadow would hold a caller for the 60 s shadow timeout.
    assert!(slowest < Duration::from_secs(5), "a caller waited {slowest:?} on a frozen shadow");
    assert!(p.metric("sluice_gateway_shadow_dropped_total", "").await > 0, "copies beyond the cap are dropped");

    // A failing shadow (a model that refuses this input): callers still get their answers.
    p.ok(&["endpoint", "version", "update", "ep", "sh", "--service", "echo"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..100 {
        let r = p.client.post(&infer).bearer_auth(&key).json(&body).send().await.expect("send");
        assert_eq!(r.status(), 200);
        assert_outputs_match(&r.json().await.expect("json"), &want);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed =
        p.metric("sluice_gateway_requests_total", "endpoint=\"ep\",version=\"sh\",role=\"shadow\",code=\"4xx\"").await;
    assert!(failed > 0, "the failing shadow's answers are measured");
}

/// Status of a GET with an optional bearer credential.
async fn status(client: &reqwest::Client, url: &str, credential: Option<&str>) -> (u16, String) {
    let mut req = client.get(url);
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    let r = req.send().await.expect("send");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn auth_matrix() {
    let p = Platform::start(&[]).await;
    p.service("keyed", "mlp-small", None).await;
    p.service("tokened", "mlp-small", Some(json!({ "token_auth_enabled": true }))).await;
    p.service("open", "mlp-small", Some(json!({ "auth_enabled": false }))).await;
    p.ok(&["endpoint", "create", "ek", "--version", "v1=keyed"]);
    p.ok(&["endpoint", "create", "et", "--version", "v1=keyed", "--auth", "token"]);
    let gw = p.gateway_url().to_owned();
    // Model metadata needs a credential; readiness (below) never does.
    let url = |target: &str| format!("{gw}/{target}/v2/models/mlp-small");
    let (keyed, ek, et, tokened, open) = (
        url("services/keyed"),
        url("endpoints/ek"),
        url("endpoints/et"),
        url("services/tokened"),
        url("services/open"),
    );
    p.wait_until("the gateway knows every target", || {
        let (c, et) = (p.client.clone(), et.clone());
        async move { status(&c, &et, None).await.0 == 401 }
    })
    .await;
    let c = &p.client;

    let keys = p.json(&["keys", "get", "keyed"]);
    let (primary, secondary) =
        (keys["primary_key"].as_str().expect("key"), keys["secondary_key"].as_str().expect("key"));
    assert_eq!(primary.len(), 43, "256-bit random keys");
    assert_eq!(status(c, &keyed, None).await.0, 401, "no credential");
    let (code, body) = status(c, &keyed, Some("wrong-key-wrong-key-wrong-key")).await;
    assert_eq!(code, 401, "wrong key");
    assert!(!body.contains("wrong-key"), "errors never echo the credential: {body}");
    assert_eq!(status(c, &keyed, Some(primary)).await.0, 200, "primary key");
    assert_eq!(status(c, &keyed, Some(secondary)).await.0, 200, "secondary key");
    let ek_key = p.key("ek");
    assert_eq!(status(c, &keyed, Some(&ek_key)).await.0, 403, "another endpoint's key");
    assert_eq!(status(c, &ek, Some(primary)).await.0, 403, "a service's key on an endpoint");
    assert_eq!(status(c, &ek, Some(&ek_key)).await.0, 200);

    // Rotation: the old primary stops working, the secondary never does.
    p.ok(&["keys", "regen", "keyed", "--key", "primary"]);
    let old = primary.to_owned();
    p.wait_until("the old key is refused", || {
        let (c, keyed, old) = (c.clone(), keyed.clone(), old.clone());
        async move { status(&c, &keyed, Some(&old)).await.0 == 401 }
    })
    .await;
    assert_eq!(status(c, &keyed, Some(secondary)).await.0, 200, "secondary still valid after regen");
    assert_eq!(status(c, &keyed, Some(&p.key("keyed"))).await.0, 200, "new primary");
    p.ok(&["keys", "regen", "keyed", "--key", "secondary", "--value", "my-own-secondary-key-0001"]);
    p.wait_until("the explicit key works", || {
        let (c, keyed) = (c.clone(), keyed.clone());
        async move { status(&c, &keyed, Some("my-own-secondary-key-0001")).await.0 == 200 }
    })
    .await;
    assert!(p.err(&["keys", "regen", "keyed", "--key", "primary", "--value", "short"]).contains("at least 16"));

    // Tokens.
    let token: Value = p.json(&["token", "get", "tokened"]);
    let jwt = token["access_token"].as_str().expect("token").to_owned();
    assert!(token["refresh_by"].as_u64() < token["expires_on"].as_u64(), "{token}");
    assert_eq!(status(c, &tokened, Some(&jwt)).await.0, 200, "valid token");
    assert_eq!(status(c, &tokened, None).await.0, 401, "no token");
    assert_eq!(status(c, &tokened, Some(&old)).await.0, 401, "a key that no longer exists");
    assert_eq!(status(c, &tokened, Some("my-own-secondary-key-0001")).await.0, 403, "a valid key on a token service");
    assert_eq!(status(c, &keyed, Some(&jwt)).await.0, 403, "a valid token on a key service");
    for target in ["services/keyed", "services/tokened", "endpoints/ek", "endpoints/et"] {
        for probe in ["v2/health/ready", "v2/models/mlp-small/ready"] {
            let (code, body) = status(c, &format!("{gw}/{target}/{probe}"), None).await;
            assert_eq!(code, 200, "{target}/{probe} needs no credential: {body}");
        }
    }
    let et_token = p.json(&["token", "get", "et"])["access_token"].as_str().expect("token").to_owned();
    assert_eq!(status(c, &et, Some(&et_token)).await.0, 200);
    assert_eq!(status(c, &tokened, Some(&et_token)).await.0, 403, "token for another endpoint");
    assert_eq!(status(c, &et, Some(&jwt)).await.0, 403, "token for a service on an endpoint");
    // alg: none, with the real token's claims.
    let claims = jwt.split('.').nth(1).expect("payload");
    let none = format!("{}.{claims}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(status(c, &tokened, Some(&none)).await.0, 401, "alg none");
    // Signed with another key.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let forged = sluice_auth::TokenSigner::generate().sign(&sluice_auth::Claims {
        iss: "sluice-control".into(),
        sub: "x".into(),
        aud: "service:tokened".into(),
        iat: now,
        exp: now + 600,
    });
    assert_eq!(status(c, &tokened, Some(&forged)).await.0, 401, "token signed with another key");
    // Expired.
    let short = p.json(&["token", "get", "tokened", "--ttl", "1"])["access_token"].as_str().expect("token").to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, body) = status(c, &tokened, Some(&short)).await;
    assert_eq!(code, 401, "expired token");
    assert!(body.contains("expired"), "{body}");
    assert!(p.err(&["token", "get", "keyed"]).contains("does not use token auth"));

    // auth_enabled: false, and health routes, need nothing.
    assert_eq!(status(c, &open, None).await.0, 200);
    assert_eq!(status(c, &format!("{gw}/v2/health/ready"), None).await.0, 200);
    // The admin API needs the admin credential, which only the owner can read.
    let control = &p.control.as_ref().expect("control").url;
    assert_eq!(status(c, &format!("{control}/v1/services"), None).await.0, 401);
    assert_eq!(status(c, &format!("{control}/v1/services"), Some(primary)).await.0, 401);
    // Gateways read the routing configuration with their own credential, which can do nothing
    // else, and the configuration carries key digests, never keys.
    let gateway_token = std::fs::read_to_string(p.home.path().join("control/gateway-token")).expect("gateway token");
    assert_eq!(status(c, &format!("{control}/v1/services"), Some(gateway_token.trim())).await.0, 401);
    let (code, config) = status(c, &format!("{control}/v1/gateway/config"), Some(gateway_token.trim())).await;
    assert_eq!(code, 200);
    let current = p.key("keyed");
    assert!(config.contains("keyed") && !config.contains(&current) && !config.contains(secondary), "{config}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.home.path().join("control/admin-token")).expect("admin token").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_restart_and_state_survives_a_control_plane_crash() {
    let mut p = Platform::start(&[]).await;
    p.service("r", "mlp-small", Some(json!({ "num_replicas": 2, "period_seconds": 1 }))).await;
    p.ok(&["endpoint", "create", "e", "--version", "v1=r"]);
    p.ok(&["keys", "regen", "e", "--key", "secondary"]);
    let keys_before = p.json(&["keys", "get", "e"]);
    let endpoint_before = p.json(&["endpoint", "show", "e"]);
    let key = keys_before["primary_key"].as_str().expect("key").to_owned();
    let url = format!("{}/endpoints/e/v2/models/mlp-small/infer", p.gateway_url());
    p.wait_until("the gateway routes e", || {
        let req = p.client.get(format!("{}/endpoints/e/v2/models/x/ready", p.gateway_url())).bearer_auth(&key);
        async move { req.send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(p.client.clone(), url, key.clone(), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Gateways on this host reach replicas over their Unix sockets, so the requests above went
    // there: the published addresses are nothing else.
    let sockets = p.published_replicas("r").await;
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    for address in &sockets {
        let path = address.strip_prefix("unix:").unwrap_or_else(|| panic!("not a Unix socket: {address}"));
        assert!(std::path::Path::new(path).exists(), "{path}");
    }

    // A replica dies: the gateway routes around it and the control plane restarts it.
    let pids = p.replica_pids("r");
    assert_eq!(pids.len(), 2);
    let killed = u64::from(pids[0]);
    signal(pids[0], "KILL");
    p.wait_until("the replica is back", || {
        let shown = p.json(&["service", "show", "r"]);
        async move {
            let r0 = &shown["replicas"][0];
            shown["state"] == "Healthy"
                && r0["ready"] == true
                && r0["restarts"] == 1
                && r0["pid"].as_u64() != Some(killed)
        }
    })
    .await;
    assert!(
        p.json(&["service", "show", "r"])["replicas"][0]["last_exit"].as_str().expect("last exit").contains("signal 9")
    );
    let logs = p.ok(&["service", "logs", "r", "--replica", "0"]);
    assert_eq!(logs.matches("starting replica 0").count(), 2, "{logs}");
    // The killed replica's socket is cleaned up; its successor listens on a socket of its own.
    let killed_socket = sockets[0].trim_start_matches("unix:");
    assert!(!std::path::Path::new(killed_socket).exists(), "{killed_socket} left behind");
    let now = p.published_replicas("r").await;
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.iter().all(|a| a.starts_with("unix:") && *a != sockets[0]), "{now:?}");

    // The control plane crashes: the gateway keeps serving its last configuration.
    let serving_pids = p.replica_pids("r");
    p.control.take().expect("control").kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(p.err(&["keys", "get", "e"]).contains("cannot reach the control plane"));
    // It comes back on the same address with everything it had.
    p.control = Some(Platform::start_control(p.home.path(), p.control_port));
    assert_eq!(p.json(&["keys", "get", "e"]), keys_before);
    assert_eq!(p.json(&["endpoint", "show", "e"]), endpoint_before);
    p.wait_until("the service is healthy again", || {
        let state = p.json(&["service", "show", "r"])["state"].clone();
        async move { state == "Healthy" }
    })
    .await;
    // Replicas the crashed control plane left are adopted, not run beside new ones: the same
    // processes serve, and no other replica of this data directory runs.
    let mut serving_pids = serving_pids;
    serving_pids.sort_unstable();
    let mut adopted = p.replica_pids("r");
    adopted.sort_unstable();
    assert_eq!(adopted, serving_pids);
    assert_eq!(sluice_e2e::process::replica_processes(p.home.path()), serving_pids);
    tokio::time::sleep(Duration::from_millis(500)).await;
    finish_load(&stop, running, 20).await;
}

#[tokio::test]
async fn contradictions_and_invalid_changes_are_refused_by_name() {
    let p = Platform::start(&[]).await;
    for (config, message) in [
        (
            json!({ "num_replicas": 2, "autoscale_enabled": true }),
            "num_replicas and autoscale_enabled cannot both be set",
        ),
        (
            json!({ "auth_enabled": true, "token_auth_enabled": true }),
            "auth_enabled (key auth) and token_auth_enabled cannot both be true",
        ),
        (json!({ "cpu_cores": 2, "cpu_cores_limit": 1 }), "cpu_cores_limit (1) is below cpu_cores (2)"),
        (json!({ "memory_gb": 4, "memory_gb_limit": 2 }), "memory_gb_limit (2) is below memory_gb (4)"),
        (
            json!({ "autoscale_enabled": true, "autoscale_min_replicas": 3, "autoscale_max_replicas": 2 }),
            "autoscale_min_replicas (3) is above autoscale_max_replicas (2)",
        ),
        (json!({ "autoscale_min_replicas": 2 }), "autoscale_enabled is not true"),
        (json!({ "num_replicas": 0 }), "num_replicas must be at least 1"),
        (json!({ "gpu_cores": 1, "device": "cpu" }), "gpu_cores is above 0 but device is cpu"),
        (json!({ "device": "tpu:0" }), "unknown device 'tpu:0'"),
        (json!({ "device_fallback": "maybe" }), "device_fallback must be \"fail\" or \"cpu\""),
        (json!({ "num_replica": 2 }), "unknown field `num_replica`"),
        (json!({ "primary_key": "short" }), "primary_key must be at least 16 characters"),
        (
            json!({ "auth_enabled": false, "primary_key": "a-long-enough-key-000" }),
            "primary_key/secondary_key are given but auth_enabled is false",
        ),
        (json!({ "scoring_timeout_ms": 0 }), "scoring_timeout_ms must be greater than 0"),
        (json!([1, 2]), "must be a JSON object"),
    ] {
        let path = p.write("bad.json", &config);
        let err =
            p.err(&["service", "create", "x", "--model", "mlp-small", "--deploy-config", path.to_str().expect("utf8")]);
        assert!(err.contains(message), "{config} should be refused with '{message}', got: {err}");
    }
    assert!(p.err(&["service", "create", "x", "--model", "nope"]).contains("model 'nope'"));
    assert!(p.err(&["service", "create", "Bad/Name", "--model", "mlp-small"]).contains("is not valid"));
    assert_eq!(p.json(&["service", "list"]), json!([]), "nothing was created");

    p.service("a", "mlp-small", None).await;
    assert!(p.err(&["service", "create", "a", "--model", "mlp-small"]).contains("already exists"));
    p.ok(&["endpoint", "create", "ep", "--version", "v1=a"]);
    p.ok(&["endpoint", "version", "add", "ep", "v2=a", "--traffic", "60"]);
    p.ok(&["endpoint", "version", "add", "ep", "sh=a", "--shadow", "10"]);
    assert!(p.err(&["endpoint", "create", "a", "--version", "v1=a"]).contains("a service named 'a' already exists"));
    let before = p.json(&["endpoint", "show", "ep"]);
    for (args, message) in [
        (vec!["add", "ep", "v3=a", "--traffic", "50"], "traffic percentiles add up to 110, more than 100"),
        (vec!["update", "ep", "v2", "--traffic", "101"], "traffic_percentile must be within 0-100, got 101"),
        (vec!["add", "ep", "s2=a", "--shadow", "5"], "at most one version may be a shadow, found 2"),
        (vec!["update", "ep", "sh", "--shadow", "60"], "shadow percent must be within 0-50, got 60"),
        (vec!["update", "ep", "sh", "--traffic", "5"], "shadow version 'sh' cannot also take live traffic"),
        (vec!["update", "ep", "sh", "--default"], "shadow version 'sh' cannot also take live traffic"),
        (vec!["delete", "ep", "v1"], "make another version the default first"),
        (vec!["add", "ep", "v3=nosuch"], "service 'nosuch', which does not exist"),
        (vec!["add", "ep", "v2=a"], "version 'v2' already exists"),
        (vec!["update", "ep", "v7", "--traffic", "1"], "no version named 'v7'"),
        (vec!["update", "ep", "v2", "--control", "--treatment"], "contradict"),
        (vec!["add", "ep", "Bad/Name=a"], "is not valid"),
    ] {
        let mut all = vec!["endpoint", "version"];
        all.extend(args.iter().copied());
        let err = p.err(&all);
        assert!(err.contains(message), "{args:?} should be refused with '{message}', got: {err}");
    }
    for v in ["v3", "v4", "v5"] {
        p.ok(&["endpoint", "version", "add", "ep", &format!("{v}=a")]);
    }
    let full = p.json(&["endpoint", "show", "ep"]);
    let err = p.err(&["endpoint", "version", "add", "ep", "v6=a"]);
    assert!(err.contains("an endpoint needs 1 to 6 versions, got 7"), "{err}");
    assert_eq!(p.json(&["endpoint", "show", "ep"]), full, "a refused change changes nothing");
    for v in ["v3", "v4", "v5"] {
        p.ok(&["endpoint", "version", "delete", "ep", v]);
    }
    let mut after = p.json(&["endpoint", "show", "ep"]);
    after["updated_at"] = before["updated_at"].clone();
    assert_eq!(after, before, "refused changes left the endpoint as it was");
    assert!(p.err(&["service", "delete", "a"]).contains("is used by endpoint versions ep/v1, ep/v2, ep/sh"));
    p.ok(&["endpoint", "delete", "ep"]);
    p.ok(&["service", "delete", "a"]);
    assert_eq!(p.json(&["service", "list"]), json!([]));
}

#[tokio::test]
async fn a_plugin_model_deploys_as_a_service() {
    let p = Platform::start(&[]).await;
    let model = p.write("fpga.json", &sluice_e2e::process::PluginMlp::new().json);
    let config = p.write(
        "fpga-config.json",
        &json!({ "plugin": { "library": sluice_e2e::process::example_plugin(), "options": {} } }),
    );
    p.ok(&[
        "model",
        "register",
        "fpga",
        model.to_str().expect("utf8"),
        "--format",
        "plugin",
        "--config",
        config.to_str().expect("utf8"),
    ]);
    p.service("accel", "fpga", Some(json!({ "num_replicas": 2 }))).await;
    let key = p.key("accel");
    let rows = [[0.5, -1.0, 2.0, 0.25]];
    let r = p
        .client
        .post(format!("{}/services/accel/score", p.gateway_url()))
        .bearer_auth(&key)
        .json(&json!({ "data": rows }))
        .send()
        .await
        .expect("score");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.expect("json");
    let want = sluice_e2e::process::PluginMlp::new().forward(&rows);
    let got = body["outputs"]["y"][0].as_array().expect("row");
    for (g, w) in got.iter().zip(&want[0]) {
        assert!((g.as_f64().expect("f64") - w).abs() < 0.05, "{body} vs {want:?}");
    }
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024
}

/// Sends raw `request` bytes and reads the answer until the peer closes (or 30 s pass); the status
/// code, or 0 when the connection was cut without one.
async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else { return 0 };
    let (mut rd, mut wr) = stream.into_split();
    let request = request.to_vec();
    // Written while the answer is read: a refused upload must not block the test.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut got)).await;
    writer.abort();
    std::str::from_utf8(got.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The 85 requests a hostile caller might send: oversized (a 50 MB body among them), malformed,
/// deeply nested, lying about their lengths or shapes.
fn hostile_requests(path: &str, key: &str) -> Vec<(&'static str, Vec<u8>)> {
    let head = |length: usize, extra: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {length}\r\n{extra}connection: close\r\n\r\n")
            .into_bytes()
    };
    let with_body = |body: &[u8], extra: &str| {
        let mut r = head(body.len(), extra);
        r.extend_from_slice(body);
        r
    };
    let floats = |n: usize| {
        let data = vec!["0.123456"; n].join(",");
        format!(r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{data}]}}]}}"#).into_bytes()
    };
    let mut all: Vec<(&'static str, Vec<u8>)> = Vec::new();
    all.push(("a 50 MB body", with_body(&floats(5_500_000), "")));
    for _ in 0..9 {
        all.push(("a 50 MB declared length", head(50_000_000, "")));
    }
    for _ in 0..5 {
        all.push(("a 15 MB body of the wrong shape", with_body(&floats(1_600_000), "")));
    }
    for depth in [100, 1_000, 10_000, 100_000, 1_000_000] {
        let nested = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":{}1{}}}]}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        all.push(("deeply nested data", with_body(nested.as_bytes(), "")));
        let object = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        all.push(("deeply nested objects", with_body(object.as_bytes(), "")));
    }
    for body in
        [&b"{"[..], b"not json", b"{\"inputs\": [", b"\xff\xfe\xfd", b"{\"inputs\":[{\"name\":1}]}", b"[]", b"null"]
    {
        all.push(("malformed JSON", with_body(body, "")));
    }
    for shape in ["[1000000000,1000000000]", "[-1,64]", "[9223372036854775807]", "[]", "[0,64]"] {
        let body = format!(r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","data":[1,2]}}]}}"#);
        all.push(("a shape that lies", with_body(body.as_bytes(), "")));
    }
    for length in ["999999999", "-5", "abc"] {
        let body =
            br#"{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}]}"#;
        all.push((
            "a binary header length that lies",
            with_body(body, &format!("inference-header-content-length: {length}\r\n")),
        ));
    }
    for number in ["1e39", "1e400", "-1e39", "\"x\"", "true", "NaN"] {
        let body = format!(r#"{{"inputs":[{{"name":"input","shape":[1,1],"datatype":"FP32","data":[{number}]}}]}}"#);
        all.push(("a number out of range", with_body(body.as_bytes(), "")));
    }
    for chunks in ["zz\r\nabc\r\n0\r\n\r\n", "ffffffffffffffffff\r\n", "5\r\nabc\r\n0\r\n\r\n", "4000000\r\n"] {
        let mut r = format!("POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").into_bytes();
        r.extend_from_slice(chunks.as_bytes());
        all.push(("a chunked body that lies", r));
    }
    for _ in 0..5 {
        let mut r = format!("POST {path} HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n", "a".repeat(70_000)).into_bytes();
        r.extend_from_slice(b"{}");
        all.push(("a head over 64 KiB", r));
    }
    for _ in 0..5 {
        all.push(("both length and chunked", head(10, "transfer-encoding: chunked\r\n")));
    }
    while all.len() < 85 {
        all.push(("a wrong credential", format!("POST {path} HTTP/1.1\r\nauthorization: Bearer nope\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}").into_bytes()));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_leave_the_gateway_and_the_replica_within_their_memory_bound() {
    let mut p = Platform::start(&[]).await;
    p.service("m", "mlp-small", Some(json!({ "num_replicas": 1 }))).await;
    let key = p.key("m");
    let gateway_pid = p.gateway.as_ref().expect("gateway").pid();
    let replica_pid = p.replica_pids("m")[0];
    let gw = p.gateway_url().trim_start_matches("http://").to_owned();
    let path = "/services/m/v2/models/mlp-small/infer";
    // Warm both up with ordinary requests first, so the baseline includes what serving costs.
    let (request, _) = mlp_request();
    for _ in 0..20 {
        let r = p.client.post(format!("http://{gw}{path}")).bearer_auth(&key).json(&request).send().await;
        assert_eq!(r.expect("served").status(), 200);
    }
    let (gateway_before, replica_before) = (rss_mib(gateway_pid), rss_mib(replica_pid));
    let requests = hostile_requests(path, &key);
    assert_eq!(requests.len(), 85);
    for (what, bytes) in &requests {
        let status = raw_status(&gw, bytes).await;
        assert!(status == 0 || (400..500).contains(&status), "{what}: {status}");
    }
    // The replica's own limit (64 MiB) is above the gateway's: the 50 MB body, straight to it.
    let replica = p.json(&["service", "show", "m"])["replicas"][0]["address"].as_str().expect("address").to_owned();
    let direct = hostile_requests("/v2/models/mlp-small/infer", "");
    for _ in 0..3 {
        assert_eq!(raw_status(&replica, &direct[0].1).await, 400, "{}", direct[0].0);
    }
    // Still serving, and within 50 MB of where each started.
    let r = p.client.post(format!("http://{gw}{path}")).bearer_auth(&key).json(&request).send().await;
    assert_eq!(r.expect("served").status(), 200);
    let (gateway_after, replica_after) = (rss_mib(gateway_pid), rss_mib(replica_pid));
    println!("RSS MiB: gateway {gateway_before} -> {gateway_after}, replica {replica_before} -> {replica_after}");
    assert!(gateway_after <= gateway_before + 50, "gateway: {gateway_before} -> {gateway_after} MiB");
    assert!(replica_after <= replica_before + 50, "replica: {replica_before} -> {replica_after} MiB");
    p.control.take().expect("control").terminate();
}

/// `endpoint show` puts each version's traffic side by side, as the gateways counted it, and every
/// admin command answers JSON with `--output json`, mutating ones included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_show_compares_versions_from_gateway_counts_and_every_command_speaks_json() {
    let p = Platform::start(&[]).await;
    for s in ["a", "b"] {
        p.service(s, "mlp-small", None).await;
    }
    let created = p.json(&["endpoint", "create", "ep", "--version", "control=a", "--control"]);
    assert_eq!(created["versions"][0]["role"], "control", "{created}");
    let added = p.json(&["endpoint", "version", "add", "ep", "treat=b", "--traffic", "50"]);
    assert_eq!(added["versions"].as_array().map(Vec::len), Some(2), "{added}");
    let key = p.key("ep");
    let url = format!("{}/endpoints/ep/v2/models/mlp-small/infer", p.gateway_url());
    let body = v2_request(&expected("mlp-small"));
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..200 {
        let mut req = p.client.post(&url).bearer_auth(&key).json(&body);
        // A few pinned to a version that does not exist: 404s are not errors of a version.
        if i % 50 == 0 {
            req = req.header("x-sluice-version", "treat");
        }
        let r = req.send().await.expect("infer");
        assert_eq!(r.status(), 200);
        let version = r.headers()["x-sluice-version"].to_str().expect("ascii").to_owned();
        *sent.entry(version).or_default() += 1;
    }
    // The gateway reports every second.
    let mut shown = Value::Null;
    p.wait_until("the control plane has the gateway's counts", || {
        shown = p.json(&["endpoint", "show", "ep"]);
        let total: u64 = shown["versions"]
            .as_array()
            .map_or(0, |vs| vs.iter().filter_map(|v| v["stats"]["requests"].as_u64()).sum());
        std::future::ready(total == 200)
    })
    .await;
    for v in shown["versions"].as_array().expect("versions") {
        let name = v["name"].as_str().expect("name");
        let stats = &v["stats"];
        assert_eq!(stats["requests"].as_u64(), sent.get(name).copied(), "{name}: {shown}");
        assert_eq!((stats["errors"].as_u64(), stats["gateways"].as_u64()), (Some(0), Some(1)), "{shown}");
        let (p50, p99) = (stats["p50_ms"].as_f64().expect("p50"), stats["p99_ms"].as_f64().expect("p99"));
        assert!(0.0 < p50 && p50 <= p99, "{name}: p50 {p50} p99 {p99}");
    }
    let table = p.ok(&["endpoint", "show", "ep"]);
    assert!(table.contains("REQUESTS") && table.contains("P99") && table.contains("1 gateway(s)"), "{table}");

    // The rest of the mutating commands answer JSON too.
    let updated = p.json(&["endpoint", "version", "update", "ep", "treat", "--traffic", "10"]);
    assert_eq!(updated["versions"][1]["traffic_percentile"], 10.0, "{updated}");
    let regen = p.json(&["keys", "regen", "ep", "--key", "secondary"]);
    assert_eq!(regen["regenerated"]["name"], "ep", "{regen}");
    let state = p.json(&["service", "state", "a"]);
    assert_eq!((state["state"].as_str(), state["ready_replicas"].as_u64()), (Some("Healthy"), Some(1)), "{state}");
    let removed = p.json(&["endpoint", "version", "delete", "ep", "treat"]);
    assert_eq!(removed["versions"].as_array().map(Vec::len), Some(1), "{removed}");
    assert_eq!(p.json(&["endpoint", "delete", "ep"])["deleted"]["endpoint"], "ep");
    assert_eq!(p.json(&["service", "delete", "b"])["deleted"]["service"], "b");
    let logs = p.ok(&["service", "logs", "a", "--output", "json"]);
    let first: Value = serde_json::from_str(logs.lines().next().expect("a chunk")).expect("json line");
    assert_eq!(first["replica"], 0, "{logs}");
}

/// Calls every operation of a gateway's OpenAPI document (GETs as they are, POSTs with their
/// example), with `credential` only where the document says one is needed; asserts each answers
/// 200 and returns the exchanges for `openapi::check`.
async fn call_every_documented_operation(p: &Platform, doc: &Value, credential: Option<&str>) -> Vec<Value> {
    let mut exchanges = Vec::new();
    for (path, method) in openapi::operations(doc) {
        let url = format!("{}{path}", p.gateway_url());
        let (mut req, body) = match method.as_str() {
            "get" => (p.client.get(&url), None),
            "post" => {
                let body = openapi::example(doc, &path, "post").unwrap_or_else(|| panic!("POST {path} has no example"));
                (p.client.post(&url).json(body), Some(body))
            }
            other => panic!("unexpected method {other} at {path}"),
        };
        let secured = doc.get("security").is_some() && doc["paths"][&path][&method].get("security") != Some(&json!([]));
        if secured {
            req = req.bearer_auth(credential.expect("a credential for a secured document"));
        }
        let r = req.send().await.expect("send");
        let status = r.status().as_u16();
        let response: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{method} {path} (credential sent: {secured}): {response}");
        exchanges.push(openapi::exchange(&path, &method, body, status, &response));
    }
    exchanges
}

/// The gateway serves each service's and endpoint's OpenAPI document without a credential, in
/// its own URL space and with the security its auth asks for; requests built from the examples
/// score through the gateway; `service show` names the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_documents_of_services_and_endpoints_score_through_the_gateway() {
    let p = Platform::start(&[]).await;
    run_ok(p.cmd(&["model", "register", "tabular-mixed"]).arg(model_path("tabular-mixed")));
    p.service("mlp", "mlp-small", None).await;
    p.service("tab", "tabular-mixed", Some(json!({ "token_auth_enabled": true }))).await;
    p.service("echo", "dtype-echo", Some(json!({ "auth_enabled": false }))).await;
    p.ok(&["endpoint", "create", "ep", "--version", "blue=tab"]);
    p.ok(&["endpoint", "version", "add", "ep", "green=mlp", "--traffic", "0"]);
    let gw = p.gateway_url().to_owned();
    let get = |uri: String| {
        let req = p.client.get(format!("{gw}{uri}"));
        async move {
            let r = req.send().await.expect("send");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let shown = p.json(&["service", "show", "mlp"]);
    assert_eq!(shown["swagger_uri"], "/services/mlp/swagger.json", "{shown}");
    assert!(p.ok(&["service", "show", "mlp"]).contains("swagger:     /services/mlp/swagger.json"));
    let uri = |what: &str, name: &str| p.json(&[what, "show", name])["swagger_uri"].as_str().expect("uri").to_owned();

    // Key auth: a bearer key; no credential needed for the document itself.
    let (status, doc) = get(uri("service", "mlp")).await;
    assert_eq!(status, 200, "{doc}");
    assert!(openapi::operations(&doc).iter().all(|(path, _)| path.starts_with("/services/mlp/")), "{doc}");
    assert!(doc["paths"].get("/services/mlp/v2/models/mlp-small/infer").is_some(), "{doc}");
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!((scheme["type"].as_str(), scheme["scheme"].as_str()), (Some("http"), Some("bearer")), "{doc}");
    assert!(scheme.get("bearerFormat").is_none());
    let example = openapi::example(&doc, "/services/mlp/score", "post").expect("example").clone();
    let r = p.client.post(format!("{gw}/services/mlp/score")).json(&example).send().await.expect("send");
    assert_eq!(r.status(), 401, "the document says scoring needs the key, and it does");
    let exchanges = call_every_documented_operation(&p, &doc, Some(&p.key("mlp"))).await;
    openapi::check(&doc, &exchanges);

    // Token auth: a bearer JWT.
    let (status, doc) = get(uri("service", "tab")).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["bearerFormat"], "JWT", "{doc}");
    let token = p.json(&["token", "get", "tab"])["access_token"].as_str().expect("token").to_owned();
    let exchanges = call_every_documented_operation(&p, &doc, Some(&token)).await;
    openapi::check(&doc, &exchanges);

    // Auth off: no security at all, and every datatype's example echoes.
    let (status, doc) = get(uri("service", "echo")).await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc.get("security").is_none() && doc["components"].get("securitySchemes").is_none(), "{doc}");
    let exchanges = call_every_documented_operation(&p, &doc, None).await;
    openapi::check(&doc, &exchanges);

    // An endpoint: its default version's service's schemas, under the endpoint's prefix and key.
    let (status, doc) = get(uri("endpoint", "ep")).await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc["paths"].get("/endpoints/ep/v2/models/tabular-mixed/infer").is_some(), "{doc}");
    assert!(doc["info"]["description"].as_str().expect("description").contains("default version 'blue'"));
    assert!(doc["components"]["securitySchemes"]["bearer"].get("bearerFormat").is_none(), "key auth: {doc}");
    let exchanges = call_every_documented_operation(&p, &doc, Some(&p.key("ep"))).await;
    openapi::check(&doc, &exchanges);

    // A new default version is a new configuration: the document follows it.
    p.ok(&["endpoint", "version", "update", "ep", "green", "--default"]);
    p.wait_until("the endpoint's document is its new default version's", || {
        let fetched = get("/endpoints/ep/swagger.json".into());
        async move { fetched.await.1["paths"].get("/endpoints/ep/v2/models/mlp-small/infer").is_some() }
    })
    .await;

    let (status, e) = get("/services/nope/swagger.json".into()).await;
    assert_eq!(status, 404, "{e}");
    let r = p.client.post(format!("{gw}/services/mlp/swagger.json")).send().await.expect("send");
    assert_eq!(r.status(), 405);
}

/// `collect_model_data`: sampled requests' inputs and predictions land under the data directory,
/// partitioned by service, model, version and day, and join by the request id the caller sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collected_model_data_joins_inputs_and_predictions_by_request_id() {
    let p = Platform::start(&[]).await;
    p.service(
        "collected",
        "mlp-small",
        Some(json!({ "collect_model_data": true, "collect_model_data_sample_rate": 0.5 })),
    )
    .await;
    let key = p.key("collected");
    let url = format!("{}/services/collected/v2/models/mlp-small/infer", p.gateway_url());
    let body = v2_request(&expected("mlp-small"));
    for i in 0..20 {
        let r = p.client.post(&url).bearer_auth(&key).header("x-request-id", format!("req-{i}")).json(&body);
        assert_eq!(r.send().await.expect("infer").status(), 200);
    }
    let mut data = Value::Null;
    p.wait_until("the collected data is on disk", || {
        data = p.json(&["service", "data", "collected"]);
        std::future::ready(data["usage"]["files"].as_u64() == Some(2))
    })
    .await;
    assert_eq!((data["collecting"].as_bool(), data["sample_rate"].as_f64()), (Some(true), Some(0.5)), "{data}");
    let dir = PathBuf::from(data["usage"]["path"].as_str().expect("path"));
    assert!(dir.starts_with(p.home.path().join("collected")), "{data}");
    let read = |kind: &str| -> Vec<Value> {
        let mut out = Vec::new();
        let mut stack = vec![dir.join("mlp-small/1").join(kind)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("dir").flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    let text = std::fs::read_to_string(e.path()).expect("read");
                    out.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).expect("json line")));
                }
            }
        }
        out
    };
    let (inputs, predictions) = (read("inputs"), read("predictions"));
    // Half of the 20, evenly: every second request.
    assert_eq!((inputs.len(), predictions.len()), (10, 10));
    for input in &inputs {
        let id = input["request_id"].as_str().expect("id");
        assert!(id.starts_with("req-"), "{input}");
        assert_eq!(input["inputs"], body, "the request as sent");
        let answer = predictions.iter().find(|p| p["request_id"] == id).expect("its prediction");
        assert_eq!((&answer["model"], &answer["version"]), (&json!("mlp-small"), &json!("1")));
        assert!(answer["predictions"]["outputs"].is_array(), "{answer}");
    }
    let table = p.ok(&["service", "data", "collected"]);
    assert!(
        table.contains("collecting model data, sampling 50% of requests") && table.contains("files:  2"),
        "{table}"
    );
}

/// Autoscaling on the local target: load that needs more replicas scales the service up to it
/// (never past max), light load brings it back to min after the scale-down delay, and no request
/// fails in either direction (removed replicas leave the gateways' configuration, then drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_autoscaled_service_follows_load_within_its_bounds_without_failing_requests() {
    let p = Platform::start_with(&[], &["--autoscale-down-delay-seconds", "3"]).await;
    let deploy = json!({
        "autoscale_enabled": true, "autoscale_min_replicas": 1, "autoscale_max_replicas": 3,
        "autoscale_target_utilization": 70, "replica_max_concurrent_requests": 2,
        "max_request_wait_time": 5000,
    });
    p.service("auto", "mlp-small", Some(deploy)).await;
    let key = p.key("auto");
    let url = format!("{}/services/auto/v2/models/mlp-small/infer", p.gateway_url());
    let running = |p: &Platform| {
        let s = p.json(&["service", "show", "auto"]);
        (s["replicas"].as_array().map_or(0, |r| r.iter().filter(|r| r["ready"] == true).count()), s)
    };
    assert_eq!(running(&p).0, 1);

    // Six callers keep about six requests in flight: 2 per replica at 70 % wants 5, capped at 3.
    let stop = Arc::new(AtomicBool::new(false));
    let heavy = load(p.client.clone(), url.clone(), key.clone(), 6, stop.clone());
    let mut shown = Value::Null;
    p.wait_until("the service scales up to its max", || {
        let (ready, s) = running(&p);
        shown = s;
        std::future::ready(ready == 3)
    })
    .await;
    let decision = &shown["autoscale"]["last_decision"];
    assert!(decision["reason"].as_str().is_some_and(|r| r.contains("above the target 70%")), "{shown}");
    assert_eq!(shown["autoscale"]["max_replicas"], 3);
    // Held at max under the same load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(running(&p).0, 3, "never past max");
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = heavy.await.expect("load");
    assert!(ok > 100 && failures.is_empty(), "{ok} ok; failed while scaling up: {failures:?}");

    // One caller: needs one replica; after the delay the others drain while requests flow.
    let stop = Arc::new(AtomicBool::new(false));
    let light = load(p.client.clone(), url.clone(), key.clone(), 1, stop.clone());
    p.wait_until("the service scales back to its min", || {
        let (ready, s) = running(&p);
        let desired = s["desired_replicas"].as_u64();
        std::future::ready(ready == 1 && desired == Some(1))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = light.await.expect("load");
    assert!(ok > 20 && failures.is_empty(), "{ok} ok; failed while scaling down: {failures:?}");
    let shown = p.json(&["service", "show", "auto"]);
    let reason = shown["autoscale"]["last_decision"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("below the target") && reason.contains("for 3 s"), "{shown}");
    // `service state` says it in one line, and in its JSON.
    let line = p.ok(&["service", "state", "auto"]);
    assert!(line.contains("1 of 1 replicas ready") && line.contains(&reason), "{line}");
    let state = p.json(&["service", "state", "auto"]);
    assert_eq!(state["autoscale"]["last_decision"]["reason"].as_str(), Some(reason.as_str()), "{state}");
    // The control plane's metrics say it too.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", p.control_port)).await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains("sluice_service_desired_replicas{service=\"auto\"} 1"), "{text}");
}
