//! JSON tensor decoding and encoding: the per-request CPU cost the server adds around the model.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::value::RawValue;
use sluice_core::{DataType, TensorData};
use sluice_server::json::{FlatData, ShapeTracker, decode_data};
use sluice_server::request::read_request;

fn rows(rows: usize, cols: usize) -> Box<RawValue> {
    let data: Vec<Vec<f32>> =
        (0..rows).map(|r| (0..cols).map(|c| ((r * cols + c) % 997) as f32 / 997.0).collect()).collect();
    RawValue::from_string(serde_json::to_string(&data).expect("json")).expect("raw")
}

fn decode(c: &mut Criterion) {
    for (name, r, cols) in [("mlp-small 1x64", 1, 64), ("mlp-large 1x784", 1, 784), ("mlp-large 64x784", 64, 784)] {
        let raw = rows(r, cols);
        c.bench_function(&format!("decode FP32 {name}"), |b| {
            b.iter(|| decode_data(black_box(&raw), DataType::F32, None).expect("decodes"))
        });
        c.bench_function(&format!("decode FP32 with shape {name}"), |b| {
            b.iter(|| {
                let mut shape = ShapeTracker::default();
                decode_data(black_box(&raw), DataType::F32, Some(&mut shape)).expect("decodes")
            })
        });
    }
}

/// A whole v2 infer request as clients send it: numbers with six decimals, as NumPy's
/// `round(x, 6)` gives and as the shared bench bodies have.
fn request(c: &mut Criterion) {
    for (name, rows, cols) in [("mlp-small 1x64", 1, 64), ("mlp-large 1x784", 1, 784)] {
        let data: Vec<String> =
            (0..rows * cols).map(|i| format!("{:.6}", ((i * 7919) % 1_000_003) as f64 / 1e6)).collect();
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[{rows},{cols}],"datatype":"FP32","data":[{}]}}]}}"#,
            data.join(",")
        );
        c.bench_function(&format!("read v2 request {name}"), |b| {
            b.iter(|| read_request(black_box(body.as_bytes())).expect("reads"))
        });
    }
}

fn encode(c: &mut Criterion) {
    let data = TensorData::F32((0..640).map(|i| i as f32 / 7.0).collect());
    c.bench_function("encode FP32 64x10", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(8192);
            serde_json::to_writer(&mut out, &FlatData(black_box(&data))).expect("encodes");
            out
        })
    });
}

criterion_group!(benches, decode, request, encode);
criterion_main!(benches);
