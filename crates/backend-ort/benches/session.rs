//! In-process ONNX Runtime throughput for the bundled MLPs at batch 1 and 64: the ceiling that
//! served rows/s are compared with. Uses `SLUICE_ORT_LIB`, else the library the tests provision
//! into `target/test-runtime` (run `cargo test` once first, or set `SLUICE_ORT_LIB`).

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_backend_ort::{OrtBackend, OrtOptions, init, locate_or_provision};
use sluice_core::{Backend, Tensor, TensorData};

fn library() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let explicit = std::env::var_os("SLUICE_ORT_LIB").map(PathBuf::from);
    locate_or_provision(explicit.as_deref(), &root.join("target/test-runtime")).expect("ONNX Runtime")
}

fn session(c: &mut Criterion) {
    let env = init(&library()).expect("loads");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    for (model, cols) in [("mlp-small", 64i64), ("mlp-large", 784)] {
        let mut backend =
            OrtBackend::load(env, &root.join(format!("{model}.onnx")), &OrtOptions::default()).expect("model");
        let mut group = c.benchmark_group(format!("ort {model} 1 thread"));
        for rows in [1i64, 64] {
            let data = TensorData::F32((0..rows * cols).map(|i| (i % 13) as f32 / 13.0).collect());
            let inputs = vec![Tensor::new("input", vec![rows, cols], data).expect("tensor")];
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_function(format!("batch {rows}"), |b| {
                b.iter(|| backend.infer(black_box(&inputs), &[0]).expect("runs"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, session);
criterion_main!(benches);
