//! Request ids and the access log: every answer carries `x-request-id` (the caller's when sane,
//! else a new one), the replica sees the same id, and each request gives one access line with
//! where it went and never the caller's credential.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::Request;

use serde_json::{Value, json};
use sluice_auth::KeyDigest;
use sluice_gateway::{Gateway, GatewaySettings};
use sluice_routing::{AuthPolicy, EndpointRoute, EndpointVersion, GatewayConfig, ServiceRoute};
use tokio::net::TcpListener;

const KEY: &str = "access-log-key-0123456789abcdef-SECRET";

/// The tests here run one at a time: they capture logs with a thread's own subscriber, and
/// tracing caches whether a log site is enabled across threads, so a test running beside another
/// (with another subscriber, or none) can see its access lines filtered away.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Answers with the `x-request-id` it received.
async fn echo_id(request: Request) -> axum::Json<Value> {
    let id = request.headers().get("x-request-id").map(|v| v.to_str().unwrap_or("?").to_owned());
    axum::Json(json!({ "seen_id": id }))
}

/// Everything the subscriber writes, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<Value> {
        let text = String::from_utf8(self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()).expect("utf-8");
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

/// A gateway in front of one echoing replica: service `s` (key auth) and endpoint `e` whose only
/// version `blue` (the control) is `s`.
async fn start(access_log: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind replica");
    let replica = listener.local_addr().expect("addr").to_string();
    let app = Router::new().route("/v2/models/m/infer", axum::routing::post(echo_id));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let digest = KeyDigest::of(KEY);
    let auth = AuthPolicy::Keys { primary: digest, secondary: digest };
    let config = GatewayConfig {
        generation: 1,
        services: vec![ServiceRoute {
            name: "s".into(),
            models: vec!["m".into()],
            replicas: vec![replica],
            auth: auth.clone(),
            replica_capacity: None,
        }],
        endpoints: vec![EndpointRoute {
            name: "e".into(),
            auth,
            versions: vec![EndpointVersion {
                name: "blue".into(),
                service: "s".into(),
                traffic_percentile: 100.0,
                is_default: true,
                is_control: true,
                shadow_percent: None,
            }],
        }],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(GatewaySettings { seed: 7, access_log, ..GatewaySettings::default() });
    gateway.apply(&config).expect("config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(sluice_gateway::serve(listener, gateway, std::future::pending()));
    addr
}

/// Installs a JSON subscriber for this thread (the current-thread runtime of the test runs the
/// gateway here too), with the filter an operator would use.
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(tracing_subscriber::EnvFilter::new("sluice::access=info,warn"))
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

async fn send(client: &reqwest::Client, url: String, id: Option<&str>) -> reqwest::Response {
    let mut request = client.post(url).header("authorization", format!("Bearer {KEY}")).body("{}");
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    request.send().await.expect("send")
}

fn id_of(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"].to_str().expect("ascii").to_owned()
}

#[tokio::test]
async fn every_answer_carries_a_request_id_that_the_replica_saw_too() {
    let _serial = SERIAL.lock().await;
    let gw = start(true).await;
    let client = reqwest::Client::new();
    let url = format!("http://{gw}/services/s/v2/models/m/infer");

    // The caller's own id is kept, end to end.
    let r = send(&client, url.clone(), Some("trace-abc.123")).await;
    assert_eq!(id_of(&r), "trace-abc.123");
    assert_eq!(r.json::<Value>().await.expect("json")["seen_id"], "trace-abc.123");

    // None, or one that is not sane: a new one, the same at the replica and the caller.
    let too_long = "x".repeat(129);
    for sent in [None, Some(too_long.as_str()), Some("two words")] {
        let r = send(&client, url.clone(), sent).await;
        let id = id_of(&r);
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{sent:?} gave {id}");
        assert_eq!(r.json::<Value>().await.expect("json")["seen_id"], id.as_str(), "{sent:?}");
    }
    let a = id_of(&send(&client, url.clone(), None).await);
    let b = id_of(&send(&client, url.clone(), None).await);
    assert_ne!(a, b);

    // The gateway's own answers too: a refusal, a health check.
    let refused = client.post(url.clone()).header("x-request-id", "refused-1").send().await.expect("send");
    assert_eq!((refused.status().as_u16(), id_of(&refused).as_str()), (401, "refused-1"));
    let live = client.get(format!("http://{gw}/v2/health/live")).send().await.expect("send");
    assert_eq!(id_of(&live).len(), 32);
}

#[tokio::test]
async fn one_access_line_per_request_says_where_it_went_and_never_the_credential() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();
    let gw = start(true).await;
    let client = reqwest::Client::new();
    let r = send(&client, format!("http://{gw}/endpoints/e/v2/models/any/infer?key={KEY}"), Some("req-1")).await;
    assert_eq!(r.status(), 200);
    let r = send(&client, format!("http://{gw}/services/s/v2/models/m/infer"), Some("req-2")).await;
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("http://{gw}/services/s/v2/models/m/infer"))
        .header("authorization", "Bearer wrong-SECRET")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);

    let lines = captured.lines();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines.iter().all(|l| l["target"] == "sluice::access" && l["level"] == "INFO"), "{lines:#?}");
    let endpoint = &lines[0];
    for (field, want) in [
        ("request_id", json!("req-1")),
        ("method", json!("POST")),
        ("path", json!("/endpoints/e/v2/models/any/infer")),
        ("endpoint", json!("e")),
        ("version", json!("blue")),
        ("role", json!("control")),
        ("service", json!("s")),
        ("status", json!(200)),
        ("bytes_in", json!(2)),
    ] {
        assert_eq!(endpoint[field], want, "{field} in {endpoint}");
    }
    assert!(endpoint["bytes_out"].as_u64().is_some_and(|n| n > 0), "{endpoint}");
    assert!(endpoint["duration_us"].as_u64().is_some(), "{endpoint}");
    assert!(endpoint["caller"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{endpoint}");
    assert!(endpoint["timestamp"].is_string(), "{endpoint}");
    let direct = &lines[1];
    assert_eq!((direct["role"].as_str(), direct["service"].as_str()), (Some("none"), Some("s")), "{direct}");
    assert!(direct.get("endpoint").is_none() && direct.get("version").is_none(), "{direct}");
    assert_eq!(lines[2]["status"], 401);
    let text = captured.text();
    for secret in [KEY, &KEY[..12], "SECRET", "Bearer"] {
        assert!(!text.contains(secret), "the log holds '{secret}': {text}");
    }
}

#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    let _serial = SERIAL.lock().await;
    let (captured, _guard) = capture();
    let gw = start(false).await;
    let r = send(&reqwest::Client::new(), format!("http://{gw}/services/s/v2/models/m/infer"), None).await;
    assert_eq!(r.status(), 200);
    assert!(id_of(&r).len() == 32, "ids do not depend on the log");
    assert!(captured.lines().is_empty(), "{}", captured.text());
}
