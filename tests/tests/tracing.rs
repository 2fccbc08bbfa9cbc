//! Tracing through the platform as a user runs it: `sluice control` and `sluice gateway` as real
//! processes exporting to an OTLP/HTTP receiver in this test, which decodes what arrives: the
//! control plane's replicas in OTLP's default protobuf encoding, the gateway in its JSON one.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;
use sluice_e2e::process::{Server, kill_replicas, run_ok, sluice};
use sluice_e2e::{expected, model_path, v2_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// A span as it arrived: its resource's `service.name` and the OTLP JSON span.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Value,
}

impl Received {
    fn name(&self) -> &str {
        self.span["name"].as_str().unwrap_or_default()
    }

    fn field(&self, key: &str) -> &str {
        self.span[key].as_str().unwrap_or_default()
    }

    /// A string or integer attribute, as a string.
    fn attribute(&self, key: &str) -> Option<String> {
        let attributes = self.span["attributes"].as_array()?;
        let value = &attributes.iter().find(|a| a["key"] == key)?["value"];
        value["stringValue"].as_str().or_else(|| value["intValue"].as_str()).map(str::to_owned)
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1:0: answers every `POST /v1/traces` with 200 and sends the
/// spans of its body (protobuf, decoded with the protocol's generated types and read through
/// their OTLP JSON form; or JSON) down the channel.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                let (head_end, length) = loop {
                    let n = stream.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the exporter closed before sending a whole head");
                    data.extend_from_slice(&buf[..n]);
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
                        assert!(head.starts_with("post /v1/traces "), "unexpected request: {head}");
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .expect("content-length");
                        break (end + 4, length);
                    }
                };
                while data.len() < head_end + length {
                    let n = stream.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the exporter closed before sending the whole body");
                    data.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
                let body = &data[head_end..head_end + length];
                let body: Value = if head.contains("content-type: application/x-protobuf") {
                    use prost::Message;
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    serde_json::to_value(&request).expect("the OTLP JSON form")
                } else {
                    assert!(head.contains("content-type: application/json"), "{head}");
                    serde_json::from_slice(body).expect("OTLP JSON")
                };
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await.ok();
                for resource in body["resourceSpans"].as_array().expect("resourceSpans") {
                    let service = resource["resource"]["attributes"]
                        .as_array()
                        .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
                        .and_then(|a| a["value"]["stringValue"].as_str())
                        .unwrap_or_default()
                        .to_owned();
                    for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
                        for span in scope["spans"].as_array().expect("spans") {
                            let _ = tx.send(Received { service: service.clone(), span: span.clone() });
                        }
                    }
                }
            });
        }
    });
    (url, rx)
}

/// Spans received until `done` holds for them, or `wait` has passed.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Received>,
    wait: Duration,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + wait;
    let mut spans = Vec::new();
    while !done(&spans) {
        match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), rx.recv()).await {
            Ok(Some(span)) => spans.push(span),
            _ => break,
        }
    }
    spans
}

fn traced(cmd: &mut std::process::Command, endpoint: &str, protocol: &str) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_TRACES_SAMPLER_ARG");
}

async fn wait_ready(client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    while !client.get(url).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_from_the_caller_through_the_gateway_to_the_replica() {
    let (collector, mut spans) = receiver().await;
    let home = tempfile::tempdir().expect("tempdir");
    let _replicas = Replicas(home.path());
    run_ok(sluice(home.path()).args(["model", "register", "mlp-small"]).arg(model_path("mlp-small")));
    // Replicas inherit the control plane's environment, so they export too.
    let control = Server::start({
        let mut c = sluice(home.path());
        c.args(["control", "--control-port", "0", "--stop-grace-seconds", "5"]);
        traced(&mut c, &collector, "http/protobuf");
        c
    });
    let gateway = Server::start({
        let mut c = sluice(home.path());
        c.args(["gateway", "--port", "0"]);
        traced(&mut c, &collector, "http/json");
        c
    });
    // A second gateway without the variable: it exports nothing and passes the caller's
    // traceparent through untouched.
    let plain = Server::start({
        let mut c = sluice(home.path());
        c.args(["gateway", "--port", "0"]).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        c
    });
    let client = reqwest::Client::new();
    run_ok(sluice(home.path()).args(["service", "create", "s1", "--model", "mlp-small", "--wait"]));
    run_ok(sluice(home.path()).args(["endpoint", "create", "ep", "--version", "v1=s1"]));
    // Half the requests are mirrored (to the same service: only the spans matter here).
    run_ok(sluice(home.path()).args(["endpoint", "version", "add", "ep", "sh=s1", "--shadow", "50"]));
    let key = run_ok(sluice(home.path()).args(["keys", "get", "ep", "--key", "primary"])).trim().to_owned();
    let body = v2_request(&expected("mlp-small"));
    for gw in [&gateway.url, &plain.url] {
        let ready = format!("{gw}/endpoints/ep/v2/models/x/ready");
        let started = Instant::now();
        while !client.get(&ready).bearer_auth(&key).send().await.is_ok_and(|r| r.status() == 200) {
            assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {ready}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    wait_ready(&client, &format!("{}/v2/health/ready", gateway.url)).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = client
        .post(format!("{}/endpoints/ep/v2/models/mlp-small/infer", gateway.url))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);

    let in_trace = |s: &Received| s.field("traceId") == trace_id;
    let got = collect(&mut spans, Duration::from_secs(15), |all| {
        let upstream = all.iter().find(|s| in_trace(s) && s.name() == "gateway upstream call");
        ["gateway request", "replica inference", "replica queue wait"]
            .iter()
            .all(|name| all.iter().any(|s| in_trace(s) && s.name() == *name))
            && upstream.is_some_and(|u| {
                all.iter().any(|s| s.name() == "replica request" && s.field("parentSpanId") == u.field("spanId"))
            })
    })
    .await;
    let find = |name: &str| {
        got.iter()
            .find(|s| in_trace(s) && s.name() == name)
            .unwrap_or_else(|| panic!("no '{name}' span in trace {trace_id}; received: {got:#?}"))
    };
    let gateway_span = find("gateway request");
    let upstream = find("gateway upstream call");
    let child_of = |parent: &Received, name: &str| {
        got.iter()
            .find(|s| in_trace(s) && s.name() == name && s.field("parentSpanId") == parent.field("spanId"))
            .unwrap_or_else(|| panic!("no '{name}' span under '{}'; received: {got:#?}", parent.name()))
    };
    let replica = child_of(upstream, "replica request");
    assert_eq!(replica.attribute("url.path").as_deref(), Some("/v2/models/mlp-small/infer"));
    // The control plane's health probes, one a second per replica, are not traced.
    let probes: Vec<_> =
        got.iter().filter(|s| s.attribute("url.path").is_some_and(|p| p.starts_with("/v2/health/"))).collect();
    assert!(probes.is_empty(), "health probes were traced: {probes:#?}");
    let inference = child_of(replica, "replica inference");
    let queue = child_of(replica, "replica queue wait");
    find("gateway auth and version choice");

    // The caller's span is the gateway's parent; the gateway's upstream call is the replica's.
    assert_eq!(gateway_span.field("parentSpanId"), caller_span);
    assert_eq!(gateway_span.service, "sluice-gateway");
    assert_eq!(gateway_span.span["kind"], 2);
    assert_eq!(upstream.field("parentSpanId"), gateway_span.field("spanId"));
    assert_eq!(upstream.span["kind"], 3);
    assert_eq!(replica.field("parentSpanId"), upstream.field("spanId"), "the replica continues the gateway's trace");
    assert_ne!(replica.service, "sluice-gateway");
    assert_eq!(inference.field("parentSpanId"), replica.field("spanId"));
    assert_eq!(queue.field("parentSpanId"), replica.field("spanId"));

    for (key, want) in [
        ("sluice.endpoint", "ep"),
        ("sluice.version", "v1"),
        ("sluice.service", "s1"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(gateway_span.attribute(key).as_deref(), Some(want), "gateway span {key}");
    }
    // A lone version is the treatment; `none` is only for a direct call to a service.
    assert_eq!(gateway_span.attribute("sluice.role").as_deref(), Some("treatment"));
    assert_eq!(upstream.attribute("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(replica.attribute("sluice.model").as_deref(), Some("mlp-small"));
    assert_eq!(replica.attribute("sluice.service").as_deref(), Some("s1"), "the replica names its service");
    assert!(replica.attribute("sluice.model_version").is_some());
    assert_eq!(replica.attribute("http.response.status_code").as_deref(), Some("200"));
    assert!(inference.attribute("sluice.batch_size").is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n >= 1)));
    let nanos = |s: &Received, k: &str| s.field(k).parse::<u64>().expect("nanoseconds");
    assert!(nanos(gateway_span, "startTimeUnixNano") <= nanos(upstream, "startTimeUnixNano"));
    assert!(nanos(upstream, "endTimeUnixNano") <= nanos(gateway_span, "endTimeUnixNano"));

    // A mirrored request: the shadow call is the gateway span's child, and the shadow replica's
    // span is the shadow call's. Twelve requests, each mirrored at 50 %, one trace each.
    for i in 1..=12 {
        let r = client
            .post(format!("{}/endpoints/ep/v2/models/mlp-small/infer", gateway.url))
            .bearer_auth(&key)
            .header("traceparent", format!("00-{i:032x}-{caller_span}-01"))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    let mirrored_under = |all: &[Received], shadow: &Received| {
        all.iter().any(|s| s.name() == "replica request" && s.field("parentSpanId") == shadow.field("spanId"))
    };
    // The request's own span can end, and be exported in a later batch, after its shadow call's:
    // wait for all three.
    let under_request = |all: &[Received], shadow: &Received| {
        all.iter().any(|s| s.name() == "gateway request" && s.field("spanId") == shadow.field("parentSpanId"))
    };
    let got = collect(&mut spans, Duration::from_secs(15), |all| {
        all.iter().any(|s| s.name() == "gateway shadow call" && mirrored_under(all, s) && under_request(all, s))
    })
    .await;
    let shadow = got
        .iter()
        .find(|s| s.name() == "gateway shadow call" && mirrored_under(&got, s) && under_request(&got, s))
        .unwrap_or_else(|| panic!("no shadow call with its replica span and its request's span; received: {got:#?}"));
    let parent = got
        .iter()
        .find(|s| s.name() == "gateway request" && s.field("spanId") == shadow.field("parentSpanId"))
        .expect("the shadow call's parent is its request's gateway span");
    assert_eq!(parent.field("traceId"), shadow.field("traceId"));
    assert_eq!(shadow.attribute("sluice.role").as_deref(), Some("shadow"));
    assert_eq!(shadow.attribute("sluice.service").as_deref(), Some("s1"));

    // Through the gateway without tracing: only the replica's spans arrive, children of the
    // caller's span, which that gateway passed on.
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = client
        .post(format!("{}/endpoints/ep/v2/models/mlp-small/infer", plain.url))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{other_trace}-{caller_span}-01"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let got = collect(&mut spans, Duration::from_secs(15), |all| {
        all.iter().any(|s| s.field("traceId") == other_trace && s.name() == "replica request")
    })
    .await;
    let other: Vec<_> = got.iter().filter(|s| s.field("traceId") == other_trace).collect();
    let replica = other.iter().find(|s| s.name() == "replica request").expect("the replica's span");
    assert_eq!(replica.field("parentSpanId"), caller_span);
    // Give a stray gateway span time to arrive, then check there is none.
    let late = collect(&mut spans, Duration::from_millis(500), |_| false).await;
    assert!(
        !other
            .iter()
            .chain(late.iter().filter(|s| s.field("traceId") == other_trace).collect::<Vec<_>>().iter())
            .any(|s| s.name().starts_with("gateway")),
        "the gateway without OTEL_EXPORTER_OTLP_ENDPOINT exported spans"
    );

    drop(plain);
    drop(gateway);
    let _ = control.terminate();
}

/// Kills the replicas of a data directory (by pid) when a test ends, passed or failed.
struct Replicas<'a>(&'a std::path::Path);

impl Drop for Replicas<'_> {
    fn drop(&mut self) {
        kill_replicas(self.0);
    }
}
