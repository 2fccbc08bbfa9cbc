//! Compressed bodies end to end: gzip and deflate requests decoded by the scoring server (OIP v2
//! JSON, the binary tensor data extension, `/score`) within `--max-body-bytes` of decoded size,
//! answers compressed as `Accept-Encoding` asks once they are large enough, a bomb, a corrupt
//! stream and an unsupported coding refused with JSON errors; then the same through a gateway
//! (`sluice gateway --routes-file` in front of a `sluice serve` process), which passes
//! compressed bodies through to the replica.

use std::io::Write;

use flate2::Compression;
use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sluice_e2e::process::{Server, sluice};
use sluice_e2e::{TestServer, assert_close, expected, load, model_path, numbers, test_config};
use sluice_server::ServerConfig;

/// The limit on (decoded) request bodies in these tests.
const LIMIT: usize = 1 << 20;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

/// `deflate` as RFC 9110 means it: the zlib format.
fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).expect("write");
    e.finish().expect("finish")
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end_into(&mut out);
    out
}

fn unzlib(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(data).read_to_end_into(&mut out);
    out
}

trait ReadAll {
    fn read_to_end_into(self, out: &mut Vec<u8>);
}

impl<R: std::io::Read> ReadAll for R {
    fn read_to_end_into(mut self, out: &mut Vec<u8>) {
        self.read_to_end(out).expect("a valid stream");
    }
}

/// 64 MiB of zeros in about 64 KiB of gzip, compressed a mebibyte at a time.
fn bomb() -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).expect("write");
    }
    e.finish().expect("finish")
}

/// `mlp-small`'s expected inputs and outputs, the 3 rows repeated `times` times: a batch whose
/// answer is large enough to be compressed.
fn batch(times: usize) -> (Value, Vec<f64>, f64) {
    let want = expected("mlp-small");
    let input = &want["inputs"][0];
    let rows = input["shape"][0].as_u64().expect("rows") as usize;
    let data: Vec<f64> = numbers(&input["data"]).repeat(times);
    let request = json!({
        "inputs": [{ "name": "input", "shape": [rows * times, 64], "datatype": "FP32", "data": data }]
    });
    let outputs = numbers(&want["outputs"][0]["data"]).repeat(times);
    (request, outputs, want["tolerance"].as_f64().expect("tolerance"))
}

/// A POST's answer: status, headers and the body as it came (reqwest here decodes nothing).
async fn post(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().post(url).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.expect("answered");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.expect("body").to_vec())
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn error_of(body: &[u8]) -> String {
    json(body)["error"].as_str().expect("a JSON error").to_owned()
}

/// The checks every scoring URL base passes, the server's own or a gateway's (`v2` is the OIP
/// model URL, `score` the `/score` one).
async fn compressed_requests_and_answers(v2: &str, score: &str) {
    let (request, outputs, tolerance) = batch(22);
    let body = serde_json::to_vec(&request).expect("json");
    let infer = format!("{v2}/infer");

    // gzip in, gzip out: 66 rows of 10 outputs is several KiB of JSON.
    let (status, headers, answer) =
        post(&infer, &[("content-encoding", "gzip"), ("accept-encoding", "gzip")], gzip(&body)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert_eq!(header(&headers, "vary"), Some("accept-encoding"));
    assert_eq!(header(&headers, "content-length"), Some(answer.len().to_string().as_str()));
    let decoded = gunzip(&answer);
    assert!(answer.len() < decoded.len() / 2, "{} bytes for {}", answer.len(), decoded.len());
    assert_close(&numbers(&json(&decoded)["outputs"][0]["data"]), &outputs, tolerance, "gzip answer");

    // deflate (zlib) in and out; raw deflate in too. The weights pick deflate over gzip.
    for encoded in [zlib(&body), raw_deflate(&body)] {
        let accept = [("content-encoding", "deflate"), ("accept-encoding", "gzip;q=0.4, deflate;q=0.9")];
        let (status, headers, answer) = post(&infer, &accept, encoded).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        assert_eq!(header(&headers, "content-encoding"), Some("deflate"));
        let decoded = unzlib(&answer);
        assert_close(&numbers(&json(&decoded)["outputs"][0]["data"]), &outputs, tolerance, "deflate answer");
    }

    // No Accept-Encoding (or only identity, or a coding Sluice does not make): identity, still
    // marked as varying.
    for accept in [None, Some("identity"), Some("br, zstd"), Some("gzip;q=0")] {
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept-encoding", *a)).collect();
        let (status, got, answer) = post(&infer, &headers, body.clone()).await;
        assert_eq!(status, 200, "{accept:?}");
        assert_eq!(header(&got, "content-encoding"), None, "{accept:?}");
        assert_eq!(header(&got, "vary"), Some("accept-encoding"), "{accept:?}");
        assert_close(&numbers(&json(&answer)["outputs"][0]["data"]), &outputs, tolerance, "identity answer");
    }

    // A small answer is not worth compressing: as it is, and no Vary.
    let want = expected("mlp-small");
    let small = serde_json::to_vec(&sluice_e2e::v2_request(&want)).expect("json");
    let (status, headers, answer) =
        post(&infer, &[("content-encoding", "gzip"), ("accept-encoding", "gzip")], gzip(&small)).await;
    assert_eq!(status, 200);
    assert_eq!((header(&headers, "content-encoding"), header(&headers, "vary")), (None, None));
    sluice_e2e::assert_outputs_match(&json(&answer), &want);

    // The binary extension: Inference-Header-Content-Length counts the JSON header of the decoded
    // body, in the request and in the answer.
    let rows = outputs.len() / 10;
    let floats: Vec<f32> = numbers(&request["inputs"][0]["data"]).iter().map(|&v| v as f32).collect();
    let header_json = serde_json::to_vec(&json!({
        "inputs": [{ "name": "input", "shape": [rows, 64], "datatype": "FP32",
                     "parameters": { "binary_data_size": floats.len() * 4 } }],
        "outputs": [{ "name": "output", "parameters": { "binary_data": true } }],
    }))
    .expect("json");
    let mut binary = header_json.clone();
    binary.extend(floats.iter().flat_map(|f| f.to_le_bytes()));
    let length = header_json.len().to_string();
    let headers =
        [("content-encoding", "gzip"), ("accept-encoding", "gzip"), ("inference-header-content-length", &length)];
    let (status, got, answer) = post(&infer, &headers, gzip(&binary)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(header(&got, "content-encoding"), Some("gzip"));
    let decoded = gunzip(&answer);
    let json_len: usize = header(&got, "inference-header-content-length").expect("binary answer").parse().expect("n");
    let meta = json(&decoded[..json_len]);
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], rows * 10 * 4);
    let got: Vec<f64> =
        decoded[json_len..].chunks_exact(4).map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4")))).collect();
    assert_close(&got, &outputs, tolerance, "binary answer");

    // /score.
    let score_body = serde_json::to_vec(&json!({ "data": request["inputs"][0]["data"].as_array().map(|d| {
        d.chunks(64).map(|row| Value::Array(row.to_vec())).collect::<Vec<_>>()
    }) }))
    .expect("json");
    let (status, headers, answer) =
        post(score, &[("content-encoding", "gzip"), ("accept-encoding", "gzip")], gzip(&score_body)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert_close(&numbers(&json(&gunzip(&answer))["outputs"]["output"]), &outputs, tolerance, "/score answer");
}

/// The refusals every scoring URL base gives, as JSON errors.
async fn refusals(v2: &str) {
    let infer = format!("{v2}/infer");
    // 64 MiB of zeros in 64 KiB: refused at the 1 MiB limit on the decoded body.
    let (status, _, answer) = post(&infer, &[("content-encoding", "gzip")], bomb()).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        error_of(&answer),
        format!("request body is larger than the limit of {LIMIT} bytes once decoded from gzip")
    );

    // Corrupt and truncated streams name the problem.
    let (status, _, answer) = post(&infer, &[("content-encoding", "gzip")], b"{\"inputs\": []}".to_vec()).await;
    assert_eq!(status, 400);
    let error = error_of(&answer);
    assert!(error.starts_with("cannot decode the gzip request body: ") && error.contains("header"), "{error}");
    let whole = zlib(br#"{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": []}]}"#);
    let (status, _, answer) = post(&infer, &[("content-encoding", "deflate")], whole[..whole.len() / 2].to_vec()).await;
    assert_eq!(status, 400);
    assert_eq!(error_of(&answer), "cannot decode the deflate request body: the compressed stream is truncated");

    // An unsupported coding: 415, naming the supported ones, in the body and in Accept-Encoding.
    let (status, headers, answer) = post(&infer, &[("content-encoding", "br")], b"\x1b\x03\x00".to_vec()).await;
    assert_eq!(status, 415);
    assert_eq!(header(&headers, "accept-encoding"), Some("gzip, deflate"));
    let error = error_of(&answer);
    assert!(error.contains("'br'") && error.contains("gzip and deflate"), "{error}");
}

#[tokio::test]
async fn the_scoring_server_decodes_requests_and_compresses_answers() {
    let model = load("mlp-small", "1", &model_path("mlp-small"), test_config());
    let server =
        TestServer::start(vec![model], ServerConfig { max_body_bytes: LIMIT, ..ServerConfig::default() }).await;
    compressed_requests_and_answers(&server.url("/v2/models/mlp-small"), &server.url("/score")).await;
    refusals(&server.url("/v2/models/mlp-small")).await;

    // A refused coding leaves the connection usable: the next request on it is answered.
    let client = reqwest::Client::new();
    let url = server.url("/v2/health/ready");
    for coding in ["br", "identity"] {
        let r = client.post(server.url("/score")).header("content-encoding", coding).body("{}").send().await;
        assert!(r.expect("answered").status().is_client_error());
        assert_eq!(client.get(&url).send().await.expect("answered").status(), 200);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_gateway_passes_compressed_bodies_through_to_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = LIMIT.to_string();
    let replica = Server::start({
        let mut c = sluice(dir.path());
        c.args(["serve", "--port", "0", "--instances", "1", "--max-body-bytes", &limit]).arg(model_path("mlp-small"));
        c
    });
    let routes = json!({
        "generation": 1,
        "services": [{
            "name": "model", "models": ["mlp-small"],
            "replicas": [replica.url.trim_start_matches("http://")],
            "auth": { "mode": "none" },
        }],
        "endpoints": [],
        "jwks": { "keys": [] },
    });
    let routes_file = dir.path().join("routes.json");
    std::fs::write(&routes_file, routes.to_string()).expect("write");
    // The gateway's own limit counts the bytes as they arrive: the bomb (64 KiB) passes it, and
    // the replica's limit on the decoded size stops it.
    let gateway = Server::start({
        let mut c = sluice(dir.path());
        c.args(["gateway", "--port", "0", "--gateway-max-body-bytes", "262144", "--routes-file"]).arg(&routes_file);
        c
    });
    let base = format!("{}/services/model", gateway.url);
    compressed_requests_and_answers(&format!("{base}/v2/models/mlp-small"), &format!("{base}/score")).await;
    refusals(&format!("{base}/v2/models/mlp-small")).await;
    // More than the gateway's limit as it arrives is refused there.
    let (status, _, answer) = post(&format!("{base}/score"), &[("content-encoding", "gzip")], vec![0u8; 262_145]).await;
    assert_eq!(status, 413);
    assert!(error_of(&answer).contains("262144 bytes"));
}
