//! Times one ONNX Runtime session in-process: `session_timing LIB MODEL ROWS ITERS`.
//! The floor that the server's per-request overhead is measured against.

use std::path::Path;
use std::time::Instant;

use sluice_backend_ort::{OrtBackend, OrtOptions, init};
use sluice_core::{Backend, Tensor, TensorData};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, lib, model, rows, iters] = &args[..] else {
        eprintln!("usage: session_timing LIB MODEL ROWS ITERS");
        std::process::exit(2);
    };
    let rows: i64 = rows.parse().expect("rows");
    let iters: usize = iters.parse().expect("iters");
    let env = init(Path::new(lib)).expect("onnxruntime");
    let mut backend = OrtBackend::load(env, Path::new(model), &OrtOptions::default()).expect("model");
    let spec = backend.signature().inputs[0].clone();
    let cols = spec.shape[1];
    let data = TensorData::F32((0..rows * cols).map(|i| (i % 13) as f32 / 13.0).collect());
    let inputs = vec![Tensor::new(spec.name, vec![rows, cols], data).expect("tensor")];
    for _ in 0..10 {
        backend.infer(&inputs, &[0]).expect("infer");
    }
    // POLLUTE_KB > 0 touches that much memory between runs, as a server's other work does.
    let pollute: usize = std::env::var("POLLUTE_KB").ok().and_then(|v| v.parse().ok()).unwrap_or(0) * 1024;
    let mut scratch = vec![0u8; pollute];
    let mut times: Vec<f64> = (0..iters)
        .map(|i| {
            scratch.iter_mut().step_by(64).for_each(|b| *b = b.wrapping_add(i as u8));
            let t = Instant::now();
            backend.infer(&inputs, &[0]).expect("infer");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!("rows={rows} p50={:.1}us p99={:.1}us", times[iters / 2], times[iters * 99 / 100]);
}
