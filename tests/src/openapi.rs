//! Checking the OpenAPI documents Sluice serves with the PyPI package `openapi-spec-validator`
//! (pinned), installed with pip under `target/` on first use, and the requests built from them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::python::python;
use crate::workspace;

/// The validators, pinned: the spec validator checks the document, the schema validator (its own
/// dependency, named so its version cannot drift) checks requests and answers against it.
pub const PACKAGES: [&str; 2] = ["openapi-spec-validator==0.9.0", "openapi-schema-validator==0.9.0"];

/// Whether `python` imports the pinned validators from `dir`.
fn has_validators(dir: &Path) -> bool {
    let check = "import sys\nfrom importlib.metadata import version\nimport openapi_spec_validator, openapi_schema_validator\n\
                 sys.exit(any(version(p.split('==')[0]) != p.split('==')[1] for p in sys.argv[1:]))";
    Command::new(python())
        .args(["-c", check])
        .args(PACKAGES)
        .env("PYTHONPATH", dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The folder (for `PYTHONPATH`) that holds the pinned validators, installed on first use;
/// `None`, with the reason printed, when pip cannot install them.
pub fn validators() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        crate::python::installed(&workspace().join("target/openapi-validator-0.9.0"), &PACKAGES, has_validators)
    })
    .clone()
}

/// One request made with a document and its answer, as `tests/openapi/check.py` reads them.
pub fn exchange(path: &str, method: &str, request: Option<&Value>, status: u16, response: &Value) -> Value {
    json!({ "path": path, "method": method, "request": request, "status": status, "response": response })
}

/// Asserts that `doc` is a valid OpenAPI document and that every exchange's request fits its
/// operation's request schema and its answer the schema of its status. Skips, saying why, only
/// when pip cannot install the validator.
pub fn check(doc: &Value, exchanges: &[Value]) {
    let Some(validators) = validators() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let doc_path = dir.path().join("openapi.json");
    let exchanges_path = dir.path().join("exchanges.json");
    std::fs::write(&doc_path, serde_json::to_vec_pretty(doc).expect("serializes")).expect("write");
    std::fs::write(&exchanges_path, serde_json::to_vec(exchanges).expect("serializes")).expect("write");
    let out = Command::new(python())
        .arg(workspace().join("tests/openapi/check.py"))
        .args([&doc_path, &exchanges_path])
        .env("PYTHONPATH", validators)
        .output()
        .expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the OpenAPI check failed:\n{text}");
    eprint!("{text}");
}

/// Every operation of `doc` as (path, method), in the document's order.
pub fn operations(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().expect("path item").keys().map(move |method| (path.clone(), method.clone()))
        })
        .collect()
}

/// The `example` of an operation's JSON request body, if it has one.
pub fn example<'a>(doc: &'a Value, path: &str, method: &str) -> Option<&'a Value> {
    doc["paths"][path][method]["requestBody"]["content"]["application/json"].get("example")
}
