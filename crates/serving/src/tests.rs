//! Loading without a process: settings merge, refusals before anything starts, and real ONNX
//! Runtime sessions for the bundled models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model(name: &str) -> String {
    workspace().join("models").join(format!("{name}.onnx")).display().to_string()
}

/// The test ONNX Runtime: `SLUICE_ORT_LIB`, or the copy the end-to-end tests provision.
fn ort_lib() -> PathBuf {
    let explicit = std::env::var_os("SLUICE_ORT_LIB").map(PathBuf::from);
    ort_library(explicit.as_deref(), &workspace().join("target/test-runtime")).expect("ONNX Runtime for tests")
}

fn config(models: &[&str]) -> ServeConfig {
    ServeConfig {
        home: workspace().join("target/test-runtime"),
        models: models.iter().map(|m| model(m)).collect(),
        defaults: Defaults { instances: Some(1), ..Defaults::default() },
        ort_lib: Some(ort_lib()),
        ..ServeConfig::default()
    }
}

#[test]
fn per_model_settings_win_over_the_deployment_config_which_wins_over_the_flags() {
    let defaults = Defaults { instances: Some(3), max_batch_size: 16, scoring_timeout_ms: 1000, ..Defaults::default() };
    let deploy = ModelOverrides { instance_count: Some(2), scoring_timeout_ms: Some(2000), ..Default::default() };
    let mine = ModelOverrides { scoring_timeout_ms: Some(3000), max_batch_size: Some(1), ..Default::default() };
    let merged = plan(&defaults, &mine.or(&deploy)).expect("valid");
    assert_eq!(merged.config.instance_count, 2, "deployment config over the flag");
    assert_eq!(merged.config.scoring_timeout.as_millis(), 3000, "per-model over the deployment config");
    assert!(merged.config.batching.is_none(), "max_batch_size 1 turns batching off");
    let flags_only = plan(&defaults, &ModelOverrides::default()).expect("valid");
    assert_eq!((flags_only.config.instance_count, flags_only.config.batching.map(|b| b.max_batch_size)), (3, Some(16)));
    assert_eq!(flags_only.engine.device, Device::Cpu);
}

#[test]
fn bad_settings_are_refused_by_name_before_anything_loads() {
    let cases = [
        (ModelOverrides { scoring_timeout_ms: Some(0), ..Default::default() }, "scoring_timeout_ms"),
        (ModelOverrides { instance_count: Some(0), ..Default::default() }, "instance_count"),
        (ModelOverrides { replica_max_concurrent_requests: Some(0), ..Default::default() }, "replica_max_concurrent"),
        (ModelOverrides { intra_op_threads: Some(0), ..Default::default() }, "intra_op_threads"),
        (ModelOverrides { execution: Some("fibers".into()), ..Default::default() }, "fibers"),
        (ModelOverrides { device: Some("tpu:0".into()), ..Default::default() }, "tpu"),
    ];
    for (overrides, named) in cases {
        let e = plan(&Defaults::default(), &overrides).expect_err("refused");
        assert!(e.contains(named), "{e:?} should name {named}");
    }
    // Through prepare, the model is named too, and no engine is touched (no ort_lib needed).
    let mut c = ServeConfig { models: vec![model("mlp-small")], ..ServeConfig::default() };
    c.per_model.insert("mlp-small".into(), ModelOverrides { instance_count: Some(0), ..Default::default() });
    let e = prepare(c).expect_err("refused").to_string();
    assert!(e.starts_with("model mlp-small: instance_count"), "{e}");
    let mut c = ServeConfig { models: vec![model("mlp-small")], ..ServeConfig::default() };
    c.per_model.insert("mlp-large".into(), ModelOverrides::default());
    assert!(matches!(prepare(c), Err(ServingError::UnknownModelInConfig(n)) if n == "mlp-large"));
    let c = ServeConfig { models: vec!["nowhere/missing.onnx".into()], ..ServeConfig::default() };
    assert!(matches!(prepare(c), Err(ServingError::MissingFile(_))));
}

#[test]
fn an_unregistered_model_is_a_typed_registry_error() {
    let home = tempfile::tempdir().expect("tempdir");
    let c = ServeConfig { home: home.path().into(), models: vec!["fraud:2".into()], ..ServeConfig::default() };
    match prepare(c) {
        Err(ServingError::Registry { spec, source }) => {
            assert_eq!(spec, "fraud:2");
            assert!(matches!(source, RegistryError::UnknownModel(_)), "{source:?}");
        }
        other => panic!("expected a registry error, got {other:?}"),
    }
}

#[test]
fn models_load_with_their_merged_settings() {
    let mut c = config(&["mlp-small", "tabular-mixed"]);
    c.deploy = ModelOverrides { scoring_timeout_ms: Some(5000), ..Default::default() };
    c.per_model =
        BTreeMap::from([("tabular-mixed".into(), ModelOverrides { instance_count: Some(2), ..Default::default() })]);
    let repository = load(c).expect("loads");
    let small = repository.get("mlp-small", None).expect("served");
    let tabular = repository.get("tabular-mixed", Some("1")).expect("served");
    assert_eq!((small.config().instance_count, tabular.config().instance_count), (1, 2));
    assert_eq!(small.config().scoring_timeout.as_millis(), 5000);
    assert_eq!(small.signature().inputs[0].name, "input");
}

#[test]
fn a_missing_gpu_fails_the_model_unless_it_may_fall_back_to_the_cpu() {
    // These machines have no GPU (and the default build no CUDA provider): cuda:0 cannot load.
    let gpu = |fallback: &str| ModelOverrides {
        device: Some("cuda:0".into()),
        device_fallback: Some(fallback.into()),
        ..Default::default()
    };
    let mut c = config(&["mlp-small", "mlp-large"]);
    c.per_model = BTreeMap::from([("mlp-large".into(), gpu("fail"))]);
    let repository = load(c).expect("mlp-small still serves");
    assert!(repository.get("mlp-small", None).is_ok());
    let refused = repository.get("mlp-large", None).expect_err("mlp-large failed to load").to_string();
    assert!(refused.contains("cuda"), "the reason names the device: {refused}");

    let mut c = config(&["mlp-large"]);
    c.per_model = BTreeMap::from([("mlp-large".into(), gpu("cpu"))]);
    let repository = load(c).expect("falls back");
    assert_eq!(repository.get("mlp-large", None).expect("serves").info().device, Device::Cpu);

    let mut c = config(&["mlp-large"]);
    c.per_model = BTreeMap::from([("mlp-large".into(), gpu("fail"))]);
    assert!(matches!(load(c), Err(ServingError::NothingLoaded(reasons)) if reasons.len() == 1));
}

/// `haystack` names `needle` exactly once.
fn once(haystack: &str, needle: &str) -> bool {
    haystack.matches(needle).count() == 1
}

#[test]
fn a_model_that_fails_to_load_names_each_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"not a protobuf").expect("write the corrupt model");
    let mut c = config(&["mlp-small"]);
    c.models.push(corrupt.display().to_string());
    let repository = load(c).expect("mlp-small still serves");
    let refused = repository.get("corrupt", None).expect_err("the corrupt model failed to load").to_string();
    assert!(once(&refused, "failed to load"), "{refused}");
    assert!(once(&refused, "corrupt.onnx"), "{refused}");
    assert!(once(&refused, "'corrupt'"), "{refused}");
}
