//! Batch assembly and split: the bookkeeping dynamic batching adds per batch.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_core::{Tensor, TensorData};
use sluice_runtime::batch::{concat, split};

fn requests(n: usize, cols: i64) -> Vec<Vec<Tensor>> {
    (0..n)
        .map(|i| {
            let data = TensorData::F32((0..cols).map(|c| (i as i64 * cols + c) as f32).collect());
            vec![Tensor::new("input", vec![1, cols], data).expect("valid")]
        })
        .collect()
}

fn assemble_and_split(c: &mut Criterion) {
    for (n, cols) in [(8, 64), (64, 64), (64, 784)] {
        let reqs = requests(n, cols);
        let parts: Vec<&[Tensor]> = reqs.iter().map(Vec::as_slice).collect();
        c.bench_function(&format!("concat {n} x [1,{cols}]"), |b| b.iter(|| concat(black_box(&parts)).expect("joins")));
        let rows = vec![1usize; n];
        let outputs =
            vec![Tensor::new("output", vec![n as i64, 10], TensorData::F32(vec![0.5; n * 10])).expect("valid")];
        c.bench_function(&format!("split {n} x [1,10]"), |b| {
            b.iter(|| split(black_box(outputs.clone()), &rows).expect("splits"))
        });
    }
}

criterion_group!(benches, assemble_and_split);
criterion_main!(benches);
