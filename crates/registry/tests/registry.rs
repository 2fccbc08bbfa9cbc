//! Registry round trip on real files and a real SQLite database.

use std::path::{Path, PathBuf};

use sluice_core::DataType;
use sluice_registry::{ModelRef, RegisterOptions, Registry, RegistryError};

fn model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(format!("{name}.onnx"))
}

fn artifacts(home: &Path) -> usize {
    std::fs::read_dir(home.join("artifacts/sha256")).expect("artifact dir").count()
}

#[test]
fn versions_count_up_and_identical_bytes_are_stored_once() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut reg = Registry::open(home.path()).expect("open");
    let opts = RegisterOptions {
        description: "small mlp".into(),
        tags: [("team".to_owned(), "search".to_owned())].into(),
        ..Default::default()
    };
    let v1 = reg.register("mlp", &model("mlp-small"), opts.clone()).expect("register");
    let v2 = reg.register("mlp", &model("mlp-small"), RegisterOptions::default()).expect("register");
    let v3 = reg.register("mlp", &model("mlp-large"), RegisterOptions::default()).expect("register");
    assert_eq!((v1.version, v2.version, v3.version), (1, 2, 3));
    assert_eq!(v1.sha256, v2.sha256);
    assert_ne!(v1.sha256, v3.sha256);
    assert_eq!(artifacts(home.path()), 2, "identical bytes are stored once");
    assert_eq!(v1.description, "small mlp");
    assert_eq!(v1.tags.get("team").map(String::as_str), Some("search"));
    assert_eq!(v1.size_bytes, std::fs::metadata(model("mlp-small")).expect("file").len());

    let input = &v1.signature.inputs[0];
    assert_eq!((input.name.as_str(), input.datatype, input.shape.clone()), ("input", DataType::F32, vec![-1, 64]));
    assert_eq!(v1.signature.outputs[0].shape, vec![-1, 10]);

    assert_eq!(reg.get("mlp", None).expect("latest").version, 3);
    assert_eq!(reg.resolve(&"mlp:2".parse().expect("ref")).expect("v2").version, 2);
    assert_eq!(reg.list().expect("list").len(), 3);

    // Delete v1: the bytes stay (v2 shares them); delete v2: they go.
    reg.delete("mlp", 1).expect("delete v1");
    assert_eq!(artifacts(home.path()), 2);
    reg.delete("mlp", 2).expect("delete v2");
    assert_eq!(artifacts(home.path()), 1);
    assert!(matches!(reg.get("mlp", Some(1)), Err(RegistryError::UnknownVersion { version: 1, .. })));
    assert!(matches!(reg.delete("mlp", 2), Err(RegistryError::UnknownVersion { .. })));
    // A deleted version number is never handed out again.
    assert_eq!(reg.register("mlp", &model("mlp-small"), RegisterOptions::default()).expect("register").version, 4);

    // Everything survives reopening the store.
    drop(reg);
    let reg = Registry::open(home.path()).expect("reopen");
    let versions: Vec<u32> = reg.list().expect("list").iter().map(|m| m.version).collect();
    assert_eq!(versions, vec![3, 4]);
}

#[test]
fn multi_input_signature_is_read_from_the_graph() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut reg = Registry::open(home.path()).expect("open");
    let mv = reg.register("tab", &model("tabular-mixed"), RegisterOptions::default()).expect("register");
    let inputs: Vec<_> = mv.signature.inputs.iter().map(|s| (s.name.as_str(), s.datatype)).collect();
    assert_eq!(inputs, vec![("features", DataType::F32), ("category", DataType::I64)]);
    let outputs: Vec<_> = mv.signature.outputs.iter().map(|s| (s.name.as_str(), s.datatype)).collect();
    assert_eq!(outputs, vec![("score", DataType::F32), ("flag", DataType::Bool)]);
}

#[test]
fn corrupt_and_non_onnx_files_are_refused_and_nothing_is_stored() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut reg = Registry::open(home.path()).expect("open");
    let bytes = std::fs::read(model("mlp-small")).expect("model");
    let truncated = home.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let text = home.path().join("notes.onnx");
    std::fs::write(&text, "this is not a model\n").expect("write");
    let empty = home.path().join("empty.onnx");
    std::fs::write(&empty, b"").expect("write");
    for path in [&truncated, &text, &empty] {
        let err = reg.register("bad", path, RegisterOptions::default()).expect_err("refused");
        assert!(matches!(err, RegistryError::NotAModel { .. }), "{err}");
        assert!(err.to_string().contains("not a valid ONNX model"), "{err}");
    }
    let missing = reg.register("bad", &home.path().join("nope.onnx"), RegisterOptions::default()).expect_err("missing");
    assert!(missing.to_string().contains("cannot read"), "{missing}");
    assert!(reg.list().expect("list").is_empty());
    assert_eq!(artifacts(home.path()), 0);
    assert!(matches!(reg.get("bad", None), Err(RegistryError::UnknownModel(_))));
}

#[test]
fn names_references_and_tags_are_validated() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut reg = Registry::open(home.path()).expect("open");
    for name in ["", "-lead", "has space", "slash/name", &"x".repeat(65)] {
        let err = reg.register(name, &model("mlp-small"), RegisterOptions::default()).expect_err("bad name");
        assert!(matches!(err, RegistryError::InvalidName(_)), "{name}: {err}");
    }
    assert_eq!("a:3".parse::<ModelRef>().expect("ref"), ModelRef { name: "a".into(), version: Some(3) });
    assert_eq!("a".parse::<ModelRef>().expect("ref").version, None);
    for bad in ["a:0", "a:x", "a:-1", ":1"] {
        assert!(bad.parse::<ModelRef>().is_err(), "{bad}");
    }
    assert!(sluice_registry::parse_tag("k=v").is_ok());
    assert!(sluice_registry::parse_tag("novalue").is_err());
}

#[test]
fn register_if_changed_is_idempotent() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut reg = Registry::open(home.path()).expect("open");
    let (a, new_a) = reg.register_if_changed("m", &model("mlp-small"), RegisterOptions::default()).expect("first");
    let (b, new_b) = reg.register_if_changed("m", &model("mlp-small"), RegisterOptions::default()).expect("again");
    assert!(new_a && !new_b);
    assert_eq!(a.version, b.version);
    let (c, new_c) = reg.register_if_changed("m", &model("mlp-large"), RegisterOptions::default()).expect("changed");
    assert!(new_c);
    assert_eq!(c.version, 2);
}

#[test]
fn a_delete_with_users_is_refused_and_changes_nothing() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut reg = Registry::open(home.path()).expect("open");
    reg.register("mlp", &model("mlp-small"), RegisterOptions::default()).expect("register");
    let err = reg
        .delete_unless_used("mlp", 1, |conn| {
            // The check runs on the delete's own transaction: it sees the version.
            assert!(sluice_registry::has_version(conn, "mlp", 1).expect("query"));
            Ok(vec!["service 'a'".into(), "service 'b'".into()])
        })
        .expect_err("in use");
    assert_eq!(
        err.to_string(),
        "model 'mlp:1' is in use by service 'a', service 'b'; delete them or move them to another version first"
    );
    assert!(!err.is_internal());
    assert_eq!(reg.get("mlp", Some(1)).expect("still there").version, 1);
    assert_eq!(artifacts(home.path()), 1);
    reg.delete_unless_used("mlp", 1, |_| Ok(Vec::new())).expect("unused");
    assert_eq!(artifacts(home.path()), 0);
}
