//! The pinned ONNX Runtime, provisioned the way `sluice serve` provisions it, and what it loads.
//!
//! `tests/data/abs-ir14-opset28.onnx` is one Abs node stamped with ONNX IR version 14 and opset 28
//! (ONNX 1.23), which ONNX Runtime 1.31 refuses and the pinned 1.32 loads. Made with onnx 1.23.2:
//! `helper.make_model(helper.make_graph([helper.make_node("Abs", ["x"], ["y"])], "abs",
//! [make_tensor_value_info("x", FLOAT, ["batch", 4])], [make_tensor_value_info("y", FLOAT,
//! ["batch", 4])]), opset_imports=[make_opsetid("", 28)], ir_version=14)`.

use std::path::{Path, PathBuf};

use sluice_backend_ort::{ORT_VERSION, OrtBackend, OrtOptions, init, locate_or_provision};
use sluice_core::{Backend, Tensor, TensorData};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `SLUICE_ORT_LIB` when set, else the pinned version provisioned into `target/test-runtime`.
fn library() -> (PathBuf, bool) {
    let explicit = std::env::var_os("SLUICE_ORT_LIB").map(PathBuf::from);
    let lib = locate_or_provision(explicit.as_deref(), &workspace().join("target/test-runtime")).expect("ONNX Runtime");
    (lib, explicit.is_none())
}

#[test]
fn provisions_the_pinned_version_by_version() {
    let (lib, provisioned) = library();
    if !provisioned {
        eprintln!("SLUICE_ORT_LIB is set: the provisioned layout is not checked");
        return;
    }
    assert_eq!(lib.file_name().and_then(|n| n.to_str()), Some(format!("libonnxruntime.so.{ORT_VERSION}").as_str()));
    let dir = lib.parent().expect("folder");
    assert_eq!(dir.file_name().and_then(|n| n.to_str()), Some(format!("onnxruntime-{ORT_VERSION}").as_str()));
    assert!(dir.join("libonnxruntime_providers_shared.so").is_file(), "the shared providers library is unpacked too");
}

#[test]
fn loads_and_runs_an_ir14_opset28_model() {
    let (lib, provisioned) = library();
    let env = init(&lib).expect("the library loads");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/abs-ir14-opset28.onnx");
    let loaded = OrtBackend::load(env, &model, &OrtOptions::default());
    if !provisioned && loaded.is_err() {
        // An explicit library older than the pinned one may refuse it; that is what it is for.
        eprintln!("SLUICE_ORT_LIB ({}) refuses IR 14 / opset 28: {}", lib.display(), loaded.err().expect("error"));
        return;
    }
    let mut backend = loaded.expect("ONNX Runtime 1.32 loads IR version 14 and opset 28");
    let x = Tensor::new("x", vec![2, 4], TensorData::F32(vec![-1.0, 2.0, -3.5, 0.0, 5.0, -0.25, 7.0, -8.0]))
        .expect("tensor");
    let y = backend.infer(&[x], &[0]).expect("runs");
    assert_eq!(y[0].shape, vec![2, 4]);
    assert_eq!(y[0].data, TensorData::F32(vec![1.0, 2.0, 3.5, 0.0, 5.0, 0.25, 7.0, 8.0]));
}
