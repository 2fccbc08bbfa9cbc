//! The binary tensor data extension and every datatype, through the `dtype-echo` model (one
//! Identity per datatype) and the MLPs.

use half::f16;
use serde_json::{Value, json};
use sluice_e2e::*;

/// Sample values per datatype: the JSON form and the little-endian bytes of the same 4 elements.
fn samples() -> Vec<(&'static str, Value, Vec<u8>)> {
    fn le<T: Copy, const N: usize>(v: [T; 4], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    vec![
        ("BOOL", json!([true, false, false, true]), vec![1, 0, 0, 1]),
        ("UINT8", json!([0, 1, 128, 255]), vec![0, 1, 128, 255]),
        ("UINT16", json!([0, 1, 300, 65535]), le([0u16, 1, 300, 65535], u16::to_le_bytes)),
        ("UINT32", json!([0, 1, 70000, 4294967295u32]), le([0u32, 1, 70000, u32::MAX], u32::to_le_bytes)),
        ("UINT64", json!([0, 1, 5_000_000_000u64, u64::MAX]), le([0u64, 1, 5_000_000_000, u64::MAX], u64::to_le_bytes)),
        ("INT8", json!([-128, -1, 0, 127]), le([-128i8, -1, 0, 127], i8::to_le_bytes)),
        ("INT16", json!([-32768, -1, 300, 32767]), le([i16::MIN, -1, 300, i16::MAX], i16::to_le_bytes)),
        ("INT32", json!([i32::MIN, -1, 70000, i32::MAX]), le([i32::MIN, -1, 70000, i32::MAX], i32::to_le_bytes)),
        (
            "INT64",
            json!([i64::MIN, -1, 5_000_000_000i64, i64::MAX]),
            le([i64::MIN, -1, 5_000_000_000, i64::MAX], i64::to_le_bytes),
        ),
        (
            "FP16",
            json!([0.5, -1.25, 2.0, 1024.0]),
            le([0.5f32, -1.25, 2.0, 1024.0].map(f16::from_f32), f16::to_le_bytes),
        ),
        ("FP32", json!([0.5, -1.25, 3.0e-5, 1.0e10]), le([0.5f32, -1.25, 3.0e-5, 1.0e10], f32::to_le_bytes)),
        ("FP64", json!([0.1, -1.25, 1.0e-300, 1.0e300]), le([0.1f64, -1.25, 1.0e-300, 1.0e300], f64::to_le_bytes)),
    ]
}

type Headers = Vec<(&'static str, String)>;

/// Builds a binary-extension body: JSON header, then the binary parts in order.
fn binary_body(header: &Value, parts: &[&[u8]]) -> (Vec<u8>, Headers) {
    let mut body = serde_json::to_vec(header).expect("json");
    let json_len = body.len();
    for p in parts {
        body.extend_from_slice(p);
    }
    (body, vec![("inference-header-content-length", json_len.to_string())])
}

/// Splits a binary-extension response into its JSON header and binary part.
async fn split_response(r: reqwest::Response) -> (u16, Value, Vec<u8>) {
    let status = r.status().as_u16();
    let json_len: Option<usize> =
        r.headers().get("inference-header-content-length").map(|v| v.to_str().expect("ascii").parse().expect("number"));
    let bytes = r.bytes().await.expect("body").to_vec();
    let json_len = json_len.unwrap_or(bytes.len());
    let header = serde_json::from_slice(&bytes[..json_len]).expect("json header");
    (status, header, bytes[json_len..].to_vec())
}

#[tokio::test]
async fn every_datatype_round_trips_as_json() {
    let server = TestServer::bundled(&["dtype-echo"]).await;
    let samples = samples();
    let inputs: Vec<Value> = samples
        .iter()
        .map(|(dt, data, _)| json!({ "name": format!("in_{dt}"), "shape": [2, 2], "datatype": dt, "data": data }))
        .collect();
    let (status, got) = server.post_json("/v2/models/dtype-echo/infer", &json!({ "inputs": inputs })).await;
    assert_eq!(status, 200, "{got}");
    for (dt, data, _) in &samples {
        let out = got["outputs"]
            .as_array()
            .expect("outputs")
            .iter()
            .find(|o| o["name"] == format!("out_{dt}"))
            .expect("output");
        assert_eq!(out["datatype"], *dt);
        assert_eq!(out["shape"], json!([2, 2]));
        if *dt == "FP32" {
            assert_close(&numbers(&out["data"]), &numbers(data), 1e-3, dt);
        } else {
            assert_eq!(out["data"], *data, "{dt}");
        }
    }
}

#[tokio::test]
async fn every_datatype_round_trips_as_binary() {
    let server = TestServer::bundled(&["dtype-echo"]).await;
    let samples = samples();
    let inputs: Vec<Value> = samples
        .iter()
        .map(|(dt, _, bytes)| {
            json!({ "name": format!("in_{dt}"), "shape": [2, 2], "datatype": dt, "parameters": { "binary_data_size": bytes.len() } })
        })
        .collect();
    let parts: Vec<&[u8]> = samples.iter().map(|(_, _, b)| b.as_slice()).collect();
    let header = json!({ "inputs": inputs, "parameters": { "binary_data_output": true } });
    let (body, headers) = binary_body(&header, &parts);
    let mut req = server.client.post(server.url("/v2/models/dtype-echo/infer")).body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let (status, got, blob) = split_response(req.send().await.expect("request")).await;
    assert_eq!(status, 200, "{got}");
    let mut offset = 0;
    for out in got["outputs"].as_array().expect("outputs") {
        let size = out["parameters"]["binary_data_size"].as_u64().expect("binary size") as usize;
        assert!(out.get("data").is_none(), "binary outputs carry no JSON data");
        let dt = out["datatype"].as_str().expect("datatype");
        let (_, _, want) = samples.iter().find(|(d, _, _)| *d == dt).expect("sample");
        assert_eq!(&blob[offset..offset + size], want.as_slice(), "{dt}");
        offset += size;
    }
    assert_eq!(offset, blob.len(), "binary part holds exactly the outputs");
}

#[tokio::test]
async fn binary_input_json_output_and_per_output_choice() {
    let server = TestServer::bundled(&["tabular-mixed"]).await;
    let want = expected("tabular-mixed");
    let features: Vec<u8> =
        numbers(&want["inputs"][0]["data"]).iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
    let category: Vec<u8> =
        numbers(&want["inputs"][1]["data"]).iter().flat_map(|&x| (x as i64).to_le_bytes()).collect();
    let header = json!({
        "inputs": [
            { "name": "features", "shape": [4, 8], "datatype": "FP32", "parameters": { "binary_data_size": features.len() } },
            { "name": "category", "shape": [4], "datatype": "INT64", "parameters": { "binary_data_size": category.len() } },
        ],
        "outputs": [{ "name": "score", "parameters": { "binary_data": true } }, { "name": "flag" }],
    });
    let (body, headers) = binary_body(&header, &[&features, &category]);
    let mut req = server.client.post(server.url("/v2/models/tabular-mixed/infer")).body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let (status, got, blob) = split_response(req.send().await.expect("request")).await;
    assert_eq!(status, 200, "{got}");
    let score = &got["outputs"][0];
    assert_eq!(score["name"], "score");
    assert_eq!(score["parameters"]["binary_data_size"], 16);
    let scores: Vec<f64> =
        blob.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4")))).collect();
    assert_close(&scores, &numbers(&want["outputs"][0]["data"]), 1e-4, "score");
    let flag = &got["outputs"][1];
    assert_eq!(flag["data"], want["outputs"][1]["data"], "flag stays JSON");

    // JSON input, binary output for the MLP.
    let small = expected("mlp-small");
    let body = json!({ "inputs": small["inputs"], "parameters": { "binary_data_output": true } });
    let r = server.client.post(server.url("/v2/models/tabular-mixed/infer")).json(&body).send().await.expect("request");
    assert_eq!(r.status(), 400, "mlp input on the wrong model is refused");
    drop(server);
    let server = TestServer::bundled(&["mlp-small"]).await;
    let r = server.client.post(server.url("/v2/models/mlp-small/infer")).json(&body).send().await.expect("request");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let (status, got, blob) = split_response(r).await;
    assert_eq!(status, 200);
    assert_eq!(got["outputs"][0]["parameters"]["binary_data_size"], 3 * 10 * 4);
    let out: Vec<f64> = blob.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().expect("4")))).collect();
    assert_close(&out, &numbers(&small["outputs"][0]["data"]), 1e-4, "mlp-small binary output");
}

#[tokio::test]
async fn inconsistent_binary_bodies_are_400() {
    let server = TestServer::bundled(&["mlp-small"]).await;
    let data = vec![0u8; 64 * 4];
    let header = |size: usize| json!({ "inputs": [{ "name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": { "binary_data_size": size } }] });
    let cases: Vec<(Vec<u8>, Headers, &str)> = vec![
        {
            let (b, _) = binary_body(&header(256), &[&data]);
            (b, vec![("inference-header-content-length", "999999".into())], "body has only")
        },
        {
            let (b, h) = binary_body(&header(512), &[&data]);
            (b, h, "only 256 bytes of binary data remain")
        },
        {
            let (b, h) = binary_body(&header(256), &[&data, &[0u8; 8]]);
            (b, h, "8 bytes of binary data are not claimed")
        },
        {
            let (b, h) = binary_body(&header(254), &[&data[..254]]);
            (b, h, "not a whole number")
        },
        {
            let (b, _) = binary_body(&header(256), &[&data]);
            (b, vec![("inference-header-content-length", "abc".into())], "must be a byte count")
        },
    ];
    for (body, headers, needle) in cases {
        let (status, err) = server.post_bytes("/v2/models/mlp-small/infer", body, &headers).await;
        assert_eq!(status, 400, "{needle}: {err}");
        assert!(err["error"].as_str().expect("error").contains(needle), "{needle}: {err}");
    }
    let (body, headers) = binary_body(&header(256), &[&data]);
    assert_eq!(server.post_bytes("/v2/models/mlp-small/infer", body, &headers).await.0, 200, "still serving");
}
