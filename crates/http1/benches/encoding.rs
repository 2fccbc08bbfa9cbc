//! Content codings: what a request without them pays (the header checks the scoring server now
//! makes on every request), and the cost and ratio of compressing an answer at levels 1, 2 and 6,
//! which chose the level answers are compressed at (2).

use std::hint::black_box;
use std::io::Write;

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use flate2::Compression;
use sluice_http1::encoding::{Coding, compress_for, content_coding, decode, encode, negotiate};
use sluice_http1::parse_request;

/// The head a typical client sends (Triton's Python client, through a gateway).
const HEAD: &[u8] = b"POST /v2/models/mlp-small/infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\
    User-Agent: python/gevent-http-client-2.3\r\nContent-Type: application/json\r\n\
    Inference-Header-Content-Length: 131\r\nContent-Length: 900\r\nx-request-id: 0123456789abcdef\r\n\r\n";

/// An OIP v2 answer of `rows` x 10 FP32 outputs, as the server writes it.
fn answer(rows: usize) -> Vec<u8> {
    let data: Vec<String> =
        (0..rows * 10).map(|i| format!("{}", ((i * 7919) % 1_000_003) as f32 / 1e6 - 0.5)).collect();
    format!(
        r#"{{"model_name":"mlp-small","model_version":"1","outputs":[{{"name":"output","datatype":"FP32","shape":[{rows},10],"data":[{}]}}]}}"#,
        data.join(",")
    )
    .into_bytes()
}

fn gzip_at(level: u32, body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::new(level));
    e.write_all(body).expect("write");
    e.finish().expect("finish")
}

fn fast_path(c: &mut Criterion) {
    let head = parse_request(&mut BytesMut::from(HEAD)).expect("parses").expect("whole");
    let small = answer(1);
    c.bench_function("no coding: checks per request", |b| {
        b.iter(|| {
            let coding = content_coding(black_box(&head)).expect("none");
            let accept = black_box(&head).header("accept-encoding");
            (coding, compress_for(accept, black_box(&small)).is_none())
        })
    });
    c.bench_function("header lookups the server made before (request id, binary header length)", |b| {
        b.iter(|| {
            let head = black_box(&head);
            (head.header("x-request-id").is_some(), head.header("inference-header-content-length").is_some())
        })
    });
    c.bench_function("negotiate 'gzip, deflate, br, zstd'", |b| {
        b.iter(|| negotiate(Some(black_box(b"gzip, deflate, br, zstd"))))
    });
}

fn compress(c: &mut Criterion) {
    for rows in [64, 1024] {
        let body = answer(rows);
        for level in [1, 2, 6] {
            let size = gzip_at(level, &body).len();
            eprintln!("gzip level {level}, {rows}x10 answer: {} -> {size} bytes", body.len());
            c.bench_function(&format!("gzip level {level} {rows}x10 answer ({} bytes)", body.len()), |b| {
                b.iter(|| gzip_at(level, black_box(&body)))
            });
        }
        let gz = encode(Coding::Gzip, &body);
        c.bench_function(&format!("gunzip {rows}x10 answer"), |b| {
            b.iter(|| decode(Coding::Gzip, black_box(&gz), 64 << 20).expect("decodes"))
        });
    }
}

criterion_group!(benches, fast_path, compress);
criterion_main!(benches);
