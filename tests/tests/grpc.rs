//! OIP v2 over gRPC, on `sluice serve --grpc-port` and through `sluice gateway --grpc-port`, with
//! real processes on 127.0.0.1:
//!
//! - the official Triton (`tritonclient[grpc]`) and KServe (`kserve`, its `InferenceGRPCClient`)
//!   clients from PyPI, pinned and installed with pip under `target/` on first use, run
//!   `tests/clients/grpc_clients.py`: health, metadata, readiness, infer with raw and typed
//!   contents compared with the expected outputs and the HTTP path's answer, key auth as metadata,
//!   a pinned version, `x-sluice-version` in response metadata, INVALID_ARGUMENT for malformed raw
//!   contents; and `tests/clients/grpc_strings.py`: the scikit-learn string models (BYTES in and
//!   out) directly and through a gateway, as the expected files say. Skipped, saying why, only
//!   when pip cannot install them;
//! - a tonic client built from the same proto (`sluice-grpc`'s generated client), for the typed
//!   contents of every datatype family and the status of each refusal.

use std::ffi::OsStr;
use std::process::Command;

use sluice_e2e::process::{Server, sluice};
use sluice_e2e::python::{installed, python, run_client};
use sluice_e2e::{expected, model_path, workspace};
use sluice_grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use sluice_grpc::pb::model_infer_request::InferInputTensor;
use sluice_grpc::pb::{InferTensorContents, ModelInferRequest, ModelMetadataRequest, ServerLiveRequest};

/// The clients, pinned: versions whose wheels install on this project's Python (3.11) and agree
/// on grpcio and protobuf.
const CLIENTS: [&str; 2] = ["tritonclient[grpc]==2.73.0", "kserve==0.21.0"];

/// The address after `OIP gRPC on ` in a server's banner line.
fn grpc_addr(server: &Server) -> String {
    let (_, after) = server.line.split_once("OIP gRPC on ").expect("the banner names the gRPC address");
    after.chars().take_while(|c| !c.is_whitespace() && *c != ',').collect()
}

/// A scoring server of `model` with its gRPC front on a free port.
fn serve(dir: &std::path::Path, model: &str) -> Server {
    serve_models(dir, &[model])
}

/// A scoring server of `models` with its gRPC front on a free port.
fn serve_models(dir: &std::path::Path, models: &[&str]) -> Server {
    Server::start({
        let mut c = sluice(dir);
        c.args(["serve", "--port", "0", "--grpc-port", "0", "--instances", "1"])
            .args(models.iter().map(|m| model_path(m)));
        c
    })
}

/// Replica `small` (mlp-small, with its own gRPC front) and `tab` (tabular-mixed), and a gateway
/// whose endpoint `ep` (key auth) has version `blue` (small, the default) and `green` (tab, no
/// share: reached only when pinned). Returns them with the key.
fn platform(dir: &std::path::Path) -> (Server, Server, Server, String) {
    platform_with(dir, &[])
}

/// [`platform`], the gateway started with `extra` arguments.
fn platform_with(dir: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (Server, Server, Server, String) {
    let small = serve(dir, "mlp-small");
    let tab = serve(dir, "tabular-mixed");
    let key = "g".repeat(43);
    let digest = sluice_auth::KeyDigest::of(&key).to_hex();
    let none = serde_json::json!({ "mode": "none" });
    let routes = serde_json::json!({
        "generation": 1,
        "services": [
            { "name": "small", "models": ["mlp-small"], "replicas": [small.url.trim_start_matches("http://")], "auth": none },
            { "name": "tab", "models": ["tabular-mixed"], "replicas": [tab.url.trim_start_matches("http://")], "auth": none },
        ],
        "endpoints": [{
            "name": "ep",
            "auth": { "mode": "keys", "primary": digest, "secondary": digest },
            "versions": [
                { "name": "blue", "service": "small", "traffic_percentile": 0.0, "is_default": true, "is_control": true, "shadow_percent": null },
                { "name": "green", "service": "tab", "traffic_percentile": 0.0, "is_default": false, "is_control": false, "shadow_percent": null },
            ],
        }],
        "jwks": { "keys": [] },
    });
    let gateway = sluice_e2e::gateway::start(dir, &routes, extra);
    (small, tab, gateway, key)
}

/// The folder (for `PYTHONPATH`) holding both clients, installed on first use; `None`, with the
/// reason printed, when pip cannot install them.
fn grpc_clients() -> Option<std::path::PathBuf> {
    let pins = CLIENTS.map(|p| p.rsplit("==").next().unwrap_or_default().to_owned());
    let dir = workspace().join(format!("target/grpc-clients-triton{}-kserve{}", pins[0], pins[1]));
    // Each imported in its own interpreter (see below), at its pinned version.
    let ready = |dir: &std::path::Path| {
        [("tritonclient", "tritonclient.grpc", &pins[0]), ("kserve", "kserve", &pins[1])].iter().all(
            |(package, module, pin)| {
                let check = format!(
                    "import sys, numpy, {module}\nfrom importlib.metadata import version\n\
                     sys.exit(version('{package}') != sys.argv[1])"
                );
                Command::new(python())
                    .args(["-c", &check, pin])
                    .env("PYTHONPATH", dir)
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        )
    };
    installed(&dir, &CLIENTS, ready)
}

#[test]
fn the_triton_and_kserve_grpc_clients_work_directly_and_through_the_gateway() {
    let Some(clients) = grpc_clients() else { return };
    let home = tempfile::tempdir().expect("tempdir");
    let (small, _tab, gateway, key) = platform(home.path());
    // One process per client: both register the protocol's messages in protobuf's default pool.
    for (client, checks) in [("triton", 14), ("kserve", 5)] {
        let expected = workspace().join("models/expected/mlp-small.json");
        let (small_grpc, gateway_grpc) = (grpc_addr(&small), grpc_addr(&gateway));
        let args = [client, &small_grpc, &small.url, &gateway_grpc, &gateway.url, &key].map(OsStr::new);
        let text = run_client(
            "grpc_clients.py",
            &[&args[..], &[expected.as_os_str()]].concat(),
            std::slice::from_ref(&clients),
        );
        assert_eq!(text.matches("ok: ").count(), checks, "{text}");
    }
}

/// The scikit-learn string models (BYTES in and out) through the official Triton and KServe gRPC
/// clients, straight to the scoring server and through a gateway with key auth, answering as the
/// expected files (ONNX Runtime in Python) say.
#[test]
fn the_official_grpc_clients_score_string_models_directly_and_through_the_gateway() {
    let Some(clients) = grpc_clients() else { return };
    let home = tempfile::tempdir().expect("tempdir");
    let models = ["iris-labels", "ticket-router"];
    let replica = serve_models(home.path(), &models);
    let key = "s".repeat(43);
    let routes = sluice_e2e::gateway::endpoint_per_model(&replica.url, &models, &key);
    let gateway = sluice_e2e::gateway::start(home.path(), &routes, &[]);
    // Two models, each direct and through the gateway; KServe's with raw and typed contents.
    for (client, checks) in [("triton", 4), ("kserve", 8)] {
        let expected = workspace().join("models/expected");
        let (replica_grpc, gateway_grpc) = (grpc_addr(&replica), grpc_addr(&gateway));
        let args =
            [client, &replica_grpc, &gateway_grpc, &key, expected.to_str().expect("a UTF-8 path")].map(OsStr::new);
        let text = run_client("grpc_strings.py", &args, std::slice::from_ref(&clients));
        assert_eq!(text.matches("ok: ").count(), checks, "{text}");
    }
}

#[tokio::test]
async fn a_tonic_client_sends_typed_contents_and_gets_each_refusal_as_its_status() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = serve(home.path(), "tabular-mixed");
    let mut client =
        GrpcInferenceServiceClient::connect(format!("http://{}", grpc_addr(&server))).await.expect("connects");
    assert!(client.server_live(ServerLiveRequest {}).await.expect("live").into_inner().live);
    let meta = client
        .model_metadata(ModelMetadataRequest { name: "tabular-mixed".into(), version: String::new() })
        .await
        .expect("metadata")
        .into_inner();
    assert_eq!(meta.inputs.iter().map(|t| t.datatype.as_str()).collect::<Vec<_>>(), ["FP32", "INT64"]);

    // FP32 and INT64 as typed contents: the same outputs as the expected file.
    let want = expected("tabular-mixed");
    let input = |i: usize, contents: InferTensorContents| InferInputTensor {
        name: want["inputs"][i]["name"].as_str().expect("name").into(),
        datatype: want["inputs"][i]["datatype"].as_str().expect("datatype").into(),
        shape: want["inputs"][i]["shape"].as_array().expect("shape").iter().filter_map(|d| d.as_i64()).collect(),
        parameters: Default::default(),
        contents: Some(contents),
    };
    let floats: Vec<f32> = sluice_e2e::numbers(&want["inputs"][0]["data"]).iter().map(|&v| v as f32).collect();
    let ints: Vec<i64> = sluice_e2e::numbers(&want["inputs"][1]["data"]).iter().map(|&v| v as i64).collect();
    let request = ModelInferRequest {
        model_name: "tabular-mixed".into(),
        inputs: vec![
            input(0, InferTensorContents { fp32_contents: floats.clone(), ..Default::default() }),
            input(1, InferTensorContents { int64_contents: ints.clone(), ..Default::default() }),
        ],
        ..Default::default()
    };
    let response = client.model_infer(request.clone()).await.expect("infer").into_inner();
    assert_eq!(response.model_name, "tabular-mixed");
    assert_eq!(response.raw_output_contents.len(), response.outputs.len());
    for (i, output) in response.outputs.iter().enumerate() {
        let spec = want["outputs"].as_array().expect("outputs").iter().find(|o| o["name"] == output.name.as_str());
        let spec = spec.expect("an expected output of that name");
        assert_eq!(output.datatype, spec["datatype"].as_str().expect("datatype"));
        let raw = &response.raw_output_contents[i];
        let got: Vec<f64> = match output.datatype.as_str() {
            "FP32" => raw.chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4")))).collect(),
            "INT64" => raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8")) as f64).collect(),
            "BOOL" => raw.iter().map(|&b| f64::from(b)).collect(),
            other => panic!("unexpected output datatype {other}"),
        };
        let tolerance = want["tolerance"].as_f64().unwrap_or(1e-4);
        sluice_e2e::assert_close(&got, &sluice_e2e::numbers(&spec["data"]), tolerance, &output.name);
    }

    // Refusals, each with its status: the wrong contents field, a value out of range, too few
    // elements for the shape, an unknown model.
    let mut wrong_field = request.clone();
    wrong_field.inputs[1].contents =
        Some(InferTensorContents { int_contents: vec![1; ints.len()], ..Default::default() });
    let e = client.model_infer(wrong_field).await.expect_err("wrong field");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("int64_contents"), "{}", e.message());
    let mut short = request.clone();
    short.inputs[0].contents = Some(InferTensorContents { fp32_contents: vec![1.0], ..Default::default() });
    let e = client.model_infer(short).await.expect_err("short");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut unknown = request.clone();
    unknown.model_name = "nope".into();
    assert_eq!(client.model_infer(unknown).await.expect_err("unknown").code(), tonic::Code::NotFound);
    let mut unknown_version = request;
    unknown_version.model_version = "7".into();
    assert_eq!(client.model_infer(unknown_version).await.expect_err("version").code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn bytes_tensors_go_as_typed_contents_and_as_length_prefixed_raw_contents() {
    let home = tempfile::tempdir().expect("tempdir");
    let server = serve(home.path(), "ticket-router");
    let mut client =
        GrpcInferenceServiceClient::connect(format!("http://{}", grpc_addr(&server))).await.expect("connects");
    let want = expected("ticket-router");
    let input = &want["inputs"][0];
    let strings: Vec<&str> = input["data"].as_array().expect("data").iter().filter_map(|v| v.as_str()).collect();
    let tensor = |contents| InferInputTensor {
        name: input["name"].as_str().expect("name").into(),
        datatype: "BYTES".into(),
        shape: input["shape"].as_array().expect("shape").iter().filter_map(|d| d.as_i64()).collect(),
        parameters: Default::default(),
        contents,
    };
    let typed = ModelInferRequest {
        model_name: "ticket-router".into(),
        inputs: vec![tensor(Some(InferTensorContents {
            bytes_contents: strings.iter().map(|s| s.as_bytes().to_vec().into()).collect(),
            ..Default::default()
        }))],
        ..Default::default()
    };
    let mut raw_bytes = Vec::new();
    for s in &strings {
        raw_bytes.extend_from_slice(&u32::try_from(s.len()).expect("short").to_le_bytes());
        raw_bytes.extend_from_slice(s.as_bytes());
    }
    let raw = ModelInferRequest {
        model_name: "ticket-router".into(),
        inputs: vec![tensor(None)],
        raw_input_contents: vec![raw_bytes.clone().into()],
        ..Default::default()
    };
    let labels: Vec<&str> = want["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == "label")
        .expect("a label output")["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for request in [typed, raw] {
        let response = client.model_infer(request).await.expect("infer").into_inner();
        let at = response.outputs.iter().position(|o| o.name == "label").expect("label");
        assert_eq!(response.outputs[at].datatype, "BYTES");
        // Each element a 4-byte little-endian length and its bytes.
        let mut rest = &response.raw_output_contents[at][..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
            got.push(std::str::from_utf8(&rest[4..4 + len]).expect("utf8").to_owned());
            rest = &rest[4 + len..];
        }
        assert_eq!(got, labels);
    }
    // A length that runs past the end is INVALID_ARGUMENT.
    raw_bytes[0] = 200;
    let bad = ModelInferRequest {
        model_name: "ticket-router".into(),
        inputs: vec![tensor(None)],
        raw_input_contents: vec![raw_bytes.into()],
        ..Default::default()
    };
    let e = client.model_infer(bad).await.expect_err("bad length");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
}

/// A scoring server's gRPC calls get what its HTTP requests get: model data collection (with the
/// caller's request id, so inputs and predictions join) and the request id back in metadata.
#[tokio::test]
async fn grpc_calls_are_collected_and_carry_the_request_id() {
    let home = tempfile::tempdir().expect("tempdir");
    let config = home.path().join("dc.json");
    std::fs::write(&config, r#"{"collect_model_data": true}"#).expect("write the deployment config");
    let server = Server::start({
        let mut c = sluice(home.path());
        c.args(["serve", "--port", "0", "--grpc-port", "0", "--instances", "1", "--deploy-config"])
            .arg(&config)
            .arg(model_path("ticket-router"));
        c
    });
    let mut client =
        GrpcInferenceServiceClient::connect(format!("http://{}", grpc_addr(&server))).await.expect("connects");
    let fields = ["email", "invoice", "chat", "router"];
    let mut request = tonic::Request::new(ModelInferRequest {
        model_name: "ticket-router".into(),
        inputs: vec![InferInputTensor {
            name: "fields".into(),
            datatype: "BYTES".into(),
            shape: vec![2, 2],
            parameters: Default::default(),
            contents: Some(InferTensorContents {
                bytes_contents: fields.iter().map(|s| s.as_bytes().to_vec().into()).collect(),
                ..Default::default()
            }),
        }],
        ..Default::default()
    });
    request.metadata_mut().insert("x-request-id", "grpc-req-7".parse().expect("ascii"));
    let response = client.model_infer(request).await.expect("infer");
    assert_eq!(response.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("grpc-req-7"));

    // Both halves of the record land under <home>/collected, each naming the request.
    let root = home.path().join("collected");
    let started = std::time::Instant::now();
    let lines = loop {
        let mut lines = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    stack.push(entry.path());
                } else {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    lines.extend(text.lines().map(|l| (entry.path(), l.to_owned())));
                }
            }
        }
        if lines.len() >= 2 || started.elapsed() > std::time::Duration::from_secs(20) {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    for kind in ["inputs", "predictions"] {
        let (path, line) = lines
            .iter()
            .find(|(p, _)| p.components().any(|c| c.as_os_str() == kind))
            .unwrap_or_else(|| panic!("no {kind} collected under {}: {lines:?}", root.display()));
        let record: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(record["request_id"], "grpc-req-7", "{}: {record}", path.display());
    }
}

/// The gRPC listener holds to the front door's limits: a connection that says nothing is closed
/// after `--header-read-timeout-ms`, and past `--max-connections` a new one waits (unserved)
/// until a place frees, while the connections already open keep being served.
#[tokio::test]
async fn the_grpc_listener_closes_silent_connections_and_caps_open_ones() {
    use tokio::io::AsyncReadExt;
    let home = tempfile::tempdir().expect("tempdir");
    let server = Server::start({
        let mut c = sluice(home.path());
        c.args(["serve", "--port", "0", "--grpc-port", "0", "--instances", "1"])
            .args(["--header-read-timeout-ms", "500", "--max-connections", "2"])
            .arg(model_path("mlp-small"));
        c
    });
    let addr = grpc_addr(&server);
    let live = |client: &mut GrpcInferenceServiceClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        async move { client.server_live(ServerLiveRequest {}).await.map(|r| r.into_inner().live) }
    };
    // One served connection, and a silent one beside it: the cap (2) is full.
    let mut served = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await.expect("connects");
    assert!(live(&mut served).await.expect("live"));
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    // A third connection waits in the backlog: its call does not complete while both places are held.
    let third = tokio::spawn({
        let addr = addr.clone();
        async move {
            let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}")).await?;
            client.server_live(ServerLiveRequest {}).await.map(|r| r.into_inner().live).map_err(Into::into)
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!third.is_finished(), "a connection past the cap was served");
    assert!(live(&mut served).await.expect("the open connection is still served"));
    // The silent one is closed after the timeout, which frees its place for the third.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the silent connection was not closed: {closed:?}");
    let third: Result<bool, Box<dyn std::error::Error + Send + Sync>> =
        tokio::time::timeout(std::time::Duration::from_secs(10), third).await.expect("served in time").expect("task");
    assert!(third.expect("the waiting connection is served once a place frees"));
}

/// A gateway with `--tls-cert` serves gRPC over TLS (ALPN h2) with the same certificate: the
/// Triton gRPC client with `ssl=True`, trusting that certificate, authenticates and scores; a
/// cleartext client gets nothing on that port.
#[test]
fn a_tls_gateway_serves_grpc_over_tls() {
    let Some(clients) = grpc_clients() else { return };
    let home = tempfile::tempdir().expect("tempdir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("certificate");
    let (cert, key_file) = (home.path().join("cert.pem"), home.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).expect("write");
    std::fs::write(&key_file, generated.signing_key.serialize_pem()).expect("write");
    let tls =
        [std::ffi::OsStr::new("--tls-cert"), cert.as_os_str(), std::ffi::OsStr::new("--tls-key"), key_file.as_os_str()];
    let (_small, _tab, gateway, key) = platform_with(home.path(), &tls);
    let script = r#"
import sys, numpy as np, tritonclient.grpc as g
addr, key, ca = sys.argv[1:4]
c = g.InferenceServerClient(addr, ssl=True, root_certificates=ca)
assert c.is_server_live(), "not live over TLS"
x = g.InferInput("input", [1, 64], "FP32")
x.set_data_from_numpy(np.ones((1, 64), dtype=np.float32))
out = c.infer("ep", [x], headers={"authorization": f"Bearer {key}"}).as_numpy("output")
assert out.shape == (1, 10), out.shape
print("ok: scored over TLS")
try:
    g.InferenceServerClient(addr).is_server_live()
    raise SystemExit("a cleartext call was answered on the TLS port")
except g.InferenceServerException as e:
    print(f"ok: cleartext refused ({e.status()})")
"#;
    let out = Command::new(python())
        .args(["-c", script, &grpc_addr(&gateway), &key])
        .arg(&cert)
        .env("PYTHONPATH", &clients)
        .output()
        .expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Triton gRPC client over TLS failed:\n{text}");
    assert_eq!(text.matches("ok: ").count(), 2, "{text}");
}
