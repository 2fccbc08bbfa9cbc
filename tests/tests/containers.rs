//! Multi-host tests on real containers: the control plane (Docker target), two gateways and every
//! replica each in its own container, built from the project's Dockerfile, on a private Docker
//! network where each has its own address. They need a Docker Engine; where none answers they
//! skip and say why (`.ci/run` runs them on machines that have one).
//!
//! One test walks through what a cluster user relies on: register and deploy through the admin
//! API, an 80/20 endpoint split, a replica container killed under load (gateways route around it,
//! nothing fails beyond requests in flight on it, and it comes back), and the control plane's
//! container stopped (gateways keep serving their last configuration) and started again (its
//! state intact from its volume).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_e2e::process::{run_ok, sluice, sluice_bin};
use sluice_e2e::{expected, v2_request, workspace};

const IMAGE: &str = "sluice:e2e";

/// Runs `docker ARGS`, returning stdout; panics with stderr on failure.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `docker ARGS`, ignoring failure (cleanup).
fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker").args(args).output();
}

/// Why containers cannot run here, if they cannot.
fn no_docker() -> Option<String> {
    match Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output() {
        Err(e) => Some(format!("no docker command: {e}")),
        Ok(out) if !out.status.success() => {
            Some(format!("no Docker Engine answers: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
        Ok(_) => None,
    }
}

/// The image under test: this test build's `sluice` (debug info stripped, to keep the build
/// context small) on the project's own base image, through deploy/build-image.sh.
fn build_image() {
    let bin = sluice_bin();
    let stripped = workspace().join("target/e2e-image/sluice");
    std::fs::create_dir_all(stripped.parent().expect("parent")).expect("mkdir");
    let out = Command::new("objcopy").arg("--strip-debug").arg(&bin).arg(&stripped).output();
    if !out.as_ref().is_ok_and(|o| o.status.success()) {
        std::fs::copy(&bin, &stripped).expect("copy the binary");
    }
    let status = Command::new(workspace().join("deploy/build-image.sh"))
        .args(["--tag", IMAGE, "--binary"])
        .arg(&stripped)
        .current_dir(workspace())
        .status()
        .expect("build-image.sh runs");
    assert!(status.success(), "deploy/build-image.sh failed");
}

/// Everything one test made on the engine, removed when dropped (also when the test fails).
struct Cluster {
    tag: String,
    network: String,
    volume: String,
    tokens: tempfile::TempDir,
    admin_token_file: PathBuf,
    client_home: tempfile::TempDir,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Replica containers carry their service label; the others carry the test's tag.
        for filter in
            [format!("label=sluice-e2e={}", self.tag), "label=app.kubernetes.io/managed-by=sluice-control".into()]
        {
            let ids = docker_quiet_output(&[
                "ps",
                "-aq",
                "--filter",
                &filter,
                "--filter",
                &format!("network={}", self.network),
            ]);
            for id in ids.split_whitespace() {
                docker_quiet(&["rm", "-f", id]);
            }
        }
        docker_quiet(&["network", "rm", &self.network]);
        docker_quiet(&["volume", "rm", "-f", &self.volume]);
    }
}

fn docker_quiet_output(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Cluster {
    fn new() -> Cluster {
        let tag = format!("{:08x}", std::process::id() ^ (Instant::now().elapsed().subsec_nanos()));
        let network = format!("sluice-e2e-{tag}");
        let volume = format!("sluice-e2e-{tag}-control");
        docker(&["network", "create", &network]);
        docker(&["volume", "create", &volume]);
        // Credentials the test hands the containers, as a Kubernetes Secret would be mounted.
        let tokens = tempfile::tempdir().expect("tempdir");
        for (name, value) in [("admin-token", random_token()), ("gateway-token", random_token())] {
            let path = tokens.path().join(name);
            std::fs::write(&path, value).expect("write token");
            set_mode(&path, 0o644);
        }
        set_mode(tokens.path(), 0o755);
        let admin_token_file = tokens.path().join("admin-token");
        Cluster {
            tag,
            network,
            volume,
            tokens,
            admin_token_file,
            client_home: tempfile::tempdir().expect("tempdir"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
        }
    }

    fn name(&self, role: &str) -> String {
        format!("sluice-e2e-{}-{role}", self.tag)
    }

    /// Starts a detached container of the image running `sluice ARGS`.
    fn run(&self, role: &str, extra: &[&str], args: &[&str]) {
        let name = self.name(role);
        let label = format!("sluice-e2e={}", self.tag);
        let tokens = format!("{}:/etc/sluice/tokens:ro", self.tokens.path().display());
        let mut all = vec!["run", "-d", "--name", &name, "--network", &self.network, "--label", &label, "-v", &tokens];
        all.extend(extra);
        all.push(IMAGE);
        all.extend(args);
        docker(&all);
    }

    fn start_control(&self) {
        let socket_group = socket_group();
        let data = format!("{}:/data", self.volume);
        let advertise = format!("http://{}:8001", self.name("control"));
        self.run(
            "control",
            &["-v", "/var/run/docker.sock:/var/run/docker.sock", "--group-add", &socket_group, "-v", &data],
            &[
                "control",
                "--target",
                "docker",
                "--docker-network",
                &self.network,
                "--replica-image",
                IMAGE,
                "--advertise-url",
                &advertise,
                "--control-port",
                "8001",
                "--admin-token-file",
                "/etc/sluice/tokens/admin-token",
                "--gateway-token-file",
                "/etc/sluice/tokens/gateway-token",
                "--stop-grace-seconds",
                "5",
            ],
        );
    }

    fn start_gateway(&self, role: &str) {
        let control = format!("http://{}:8001", self.name("control"));
        self.run(
            role,
            &[],
            &[
                "gateway",
                "--port",
                "8000",
                "--seed",
                "11",
                "--control-url",
                &control,
                "--control-token-file",
                "/etc/sluice/tokens/gateway-token",
            ],
        );
    }

    /// The container's address on the test network.
    fn ip(&self, role: &str) -> String {
        let format = format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.network);
        docker(&["inspect", "-f", &format, &self.name(role)])
    }

    fn control_url(&self) -> String {
        format!("http://{}:8001", self.ip("control"))
    }

    /// `sluice ARGS` on this host against the control plane's admin API.
    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = sluice(self.client_home.path());
        cmd.args(args)
            .arg("--control-url")
            .arg(self.control_url())
            .arg("--admin-token-file")
            .arg(&self.admin_token_file);
        run_ok(&mut cmd)
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        serde_json::from_str(&self.cli(&all)).expect("json output")
    }

    async fn wait_until<F: Future<Output = bool>>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> F) {
        let started = Instant::now();
        while !check().await {
            assert!(started.elapsed() < limit, "timed out after {limit:?} waiting until {what}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn answers(&self, url: &str) -> bool {
        self.http.get(url).send().await.is_ok_and(|r| r.status().is_success())
    }

    /// The last lines of every container of this test, for a failure's message.
    fn logs(&self) -> String {
        let ids = docker_quiet_output(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("network={}", self.network),
        ]);
        ids.split_whitespace()
            .map(|name| {
                let out = Command::new("docker").args(["logs", "--tail", "15", name]).output();
                let text = out
                    .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
                format!("--- {name}\n{}", text.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn random_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The group that owns the engine's socket: the control plane's container joins it to use it
/// (it runs as the image's unprivileged user).
fn socket_group() -> String {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/var/run/docker.sock").map(|m| m.gid().to_string()).unwrap_or_else(|_| "0".into())
}

/// A scoring request through `gateway` to endpoint `ep`; the version that answered, or the
/// status and body when it failed.
async fn score(http: &reqwest::Client, gateway: &str, key: &str, body: &Value) -> Result<String, String> {
    let url = format!("{gateway}/endpoints/ep/v2/models/mlp-small/infer");
    match http.post(&url).bearer_auth(key).json(body).send().await {
        Ok(r) if r.status().is_success() => {
            Ok(r.headers().get("x-sluice-version").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned())
        }
        Ok(r) => Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Load through both gateways until `stop`: counts successes and keeps the failures.
fn load(
    http: reqwest::Client,
    gateways: [String; 2],
    key: String,
    body: Value,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<Vec<String>>) {
    let ok = Arc::new(AtomicU64::new(0));
    let counter = ok.clone();
    let task = tokio::spawn(async move {
        let mut workers = Vec::new();
        for i in 0..4 {
            let (http, gateway, key, body, stop, ok) =
                (http.clone(), gateways[i % 2].clone(), key.clone(), body.clone(), stop.clone(), counter.clone());
            workers.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match score(&http, &gateway, &key, &body).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e),
                    }
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for w in workers {
            failures.extend(w.await.expect("load worker"));
        }
        failures
    });
    (ok, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_of_containers_splits_survives_a_lost_replica_and_a_control_plane_restart() {
    if let Some(reason) = no_docker() {
        sluice_e2e::skip(&format!("multi-host container tests need a Docker Engine: {reason}"));
        return;
    }
    build_image();
    let c = Cluster::new();
    c.start_control();
    c.wait_until("the control plane answers", Duration::from_secs(60), || async {
        c.answers(&format!("{}/v1/health", c.control_url())).await
    })
    .await;

    // Register and deploy through the admin API, as against a control plane on a cluster.
    let model = workspace().join("models/mlp-small.onnx");
    c.cli(&["model", "register", "mlp-small", model.to_str().expect("utf8")]);
    let registered = c.cli_json(&["model", "list"]);
    assert_eq!(registered[0]["name"], "mlp-small", "{registered}");
    for (service, replicas) in [("small-a", 2), ("small-b", 1)] {
        let config = c.client_home.path().join(format!("{service}.json"));
        std::fs::write(&config, json!({ "num_replicas": replicas }).to_string()).expect("write");
        c.cli(&[
            "service",
            "create",
            service,
            "--model",
            "mlp-small:1",
            "--deploy-config",
            config.to_str().expect("utf8"),
            "--wait",
        ]);
    }
    let status = c.cli_json(&["service", "show", "small-a"]);
    assert_eq!(status["state"], "Healthy", "{status}");
    let replicas = status["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 2, "{status}");
    // Each replica is its own container with its own address on the network.
    let addresses: Vec<&str> = replicas.iter().map(|r| r["address"].as_str().expect("address")).collect();
    assert_ne!(addresses[0], addresses[1], "{status}");
    for r in replicas {
        let name = r["name"].as_str().expect("container name");
        let running = docker(&["inspect", "-f", "{{.State.Running}}", name]);
        assert_eq!(running, "true", "replica container {name}");
    }
    c.cli(&["endpoint", "create", "ep", "--version", "a=small-a"]);
    c.cli(&["endpoint", "version", "add", "ep", "b=small-b", "--traffic", "20"]);
    let key = c.cli(&["keys", "get", "ep", "--key", "primary"]).trim().to_owned();

    // Two gateways, each its own container following the control plane.
    c.start_gateway("gateway-1");
    c.start_gateway("gateway-2");
    let gateways = [format!("http://{}:8000", c.ip("gateway-1")), format!("http://{}:8000", c.ip("gateway-2"))];
    let body = v2_request(&expected("mlp-small"));
    for gw in &gateways {
        c.wait_until("a gateway serves the endpoint", Duration::from_secs(60), || async {
            score(&c.http, gw, &key, &body).await.is_ok()
        })
        .await;
    }

    // The split: version a (the default) takes 80 %, b 20 %, through both gateways.
    let n = 500;
    let mut b = 0;
    for i in 0..n {
        let version = score(&c.http, &gateways[i % 2], &key, &body).await.expect("scored");
        b += usize::from(version == "b");
    }
    let share = b as f64 / n as f64;
    assert!((0.14..=0.26).contains(&share), "version b took {share:.3} of {n} requests, not about 0.20");

    // A replica container killed under load: the gateways eject it and retry elsewhere, so
    // nothing fails beyond the requests in flight on it (4 callers: at most 4), and the target
    // starts it again.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, task) = load(c.http.clone(), gateways.clone(), key.clone(), body.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = replicas[0]["name"].as_str().expect("name").to_owned();
    docker(&["kill", &victim]);
    let before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ok.load(Ordering::Relaxed) > before + 20, "requests kept succeeding after the kill");
    c.wait_until("the killed replica is back and ready", Duration::from_secs(90), || async {
        let status = c.cli_json(&["service", "show", "small-a"]);
        let back = status["replicas"].as_array().is_some_and(|rs| {
            rs.iter().filter(|r| r["ready"] == true).count() == 2
                && rs.iter().any(|r| r["restarts"].as_u64() >= Some(1))
        });
        back && status["state"] == "Healthy"
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let failures = task.await.expect("load");
    assert!(
        failures.len() <= 4,
        "{} requests failed beyond the 4 in flight: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // The control plane's container stopped: the gateways keep serving their last configuration.
    docker(&["stop", "-t", "10", &c.name("control")]);
    for i in 0..40 {
        score(&c.http, &gateways[i % 2], &key, &body).await.expect("served while the control plane is down");
    }
    // Started again: its state is intact from its volume (models, services, endpoint, keys).
    docker(&["start", &c.name("control")]);
    c.wait_until("the control plane answers again", Duration::from_secs(60), || async {
        c.answers(&format!("{}/v1/health", c.control_url())).await
    })
    .await;
    let endpoint = c.cli_json(&["endpoint", "show", "ep"]);
    assert_eq!(endpoint["versions"].as_array().map(Vec::len), Some(2), "{endpoint}");
    assert_eq!(c.cli(&["keys", "get", "ep", "--key", "primary"]).trim(), key);
    c.wait_until("the services are Healthy again, their containers adopted", Duration::from_secs(60), || async {
        let list = c.cli_json(&["service", "list"]);
        list.as_array().is_some_and(|ss| ss.len() == 2 && ss.iter().all(|s| s["state"] == "Healthy"))
    })
    .await;
    // Adopted, not replaced: the replica that was never killed is the same container.
    let survivor = replicas[1]["name"].as_str().expect("name");
    let after = c.cli_json(&["service", "show", "small-a"]);
    assert!(after["replicas"].as_array().expect("replicas").iter().any(|r| r["name"] == survivor), "{after}");
    for i in 0..20 {
        score(&c.http, &gateways[i % 2], &key, &body).await.expect("served after the restart");
    }
}
