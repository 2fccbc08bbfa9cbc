//! Writes the TorchScript twin of an ONNX MLP (Gemm layers with ReLU between them and an optional
//! softmax, as `models/make_models.py` builds them) from the ONNX file's weights, traced with
//! libtorch. `models/make_torchscript.sh` runs it; see there.
//!
//!   make_torchscript WEIGHTS.json OUT.pt [softmax]

use std::collections::BTreeMap;

use tch::{CModule, Device, Kind, Tensor};

/// One ONNX initializer, as the weights dump writes it.
#[derive(serde::Deserialize)]
struct Initializer {
    shape: Vec<i64>,
    data: Vec<f32>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, weights, out, rest @ ..] = args.as_slice() else {
        return Err("usage: make_torchscript WEIGHTS.json OUT.pt [softmax]".into());
    };
    let softmax = rest.first().is_some_and(|s| s == "softmax");
    let inits: BTreeMap<String, Initializer> = serde_json::from_str(&std::fs::read_to_string(weights)?)?;
    let mut layers = Vec::new();
    while let (Some(w), Some(b)) = (inits.get(&format!("W{}", layers.len())), inits.get(&format!("B{}", layers.len())))
    {
        layers.push((Tensor::from_slice(&w.data).reshape(&w.shape), Tensor::from_slice(&b.data).reshape(&b.shape)));
    }
    let Some((first, _)) = layers.first() else { return Err("no W0/B0 weights found".into()) };
    // Two rows, so the traced graph carries no batch-size-1 special case.
    let example = Tensor::zeros([2, first.size()[0]], (Kind::Float, Device::Cpu));
    let n = layers.len();
    let module = CModule::create_by_tracing("Mlp", "forward", &[example], &mut |inputs| {
        let mut h = inputs[0].shallow_clone();
        for (i, (w, b)) in layers.iter().enumerate() {
            h = h.matmul(w) + b;
            if i + 1 < n {
                h = h.relu();
            }
        }
        if softmax {
            h = h.softmax(-1, Kind::Float);
        }
        vec![h]
    })?;
    module.save(out)?;
    println!("wrote {out} ({n} layers{})", if softmax { ", softmax" } else { "" });
    Ok(())
}
