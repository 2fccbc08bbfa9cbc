//! Official clients against a `sluice serve` process, and through a `sluice gateway` in front of
//! it: the Triton HTTP client from PyPI
//! (`tritonclient[http]`, pinned), installed with pip under `target/` on first use, scores
//! `mlp-small` with gzip and deflate requests and answers (`tests/clients/triton_compression.py`),
//! and the scikit-learn string models, compared with ONNX Runtime in Python
//! (`tests/clients/triton_strings.py`). Skipped, saying why, only when pip cannot install them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_e2e::gateway;
use sluice_e2e::process::{Server, sluice};
use sluice_e2e::python::{installed, python, run_client};
use sluice_e2e::{model_path, workspace};

/// The client, pinned: a version whose wheels install on this project's Python (3.11).
const TRITONCLIENT: &str = "tritonclient[http]==2.73.0";

/// Whether `python` imports the pinned client (and NumPy) from `dir`.
fn has_client(dir: &Path) -> bool {
    let check = "import sys, numpy, tritonclient.http\nfrom importlib.metadata import version\n\
                 sys.exit(version('tritonclient') != sys.argv[1])";
    let pinned = TRITONCLIENT.rsplit("==").next().unwrap_or_default();
    Command::new(python()).args(["-c", check, pinned]).env("PYTHONPATH", dir).output().is_ok_and(|o| o.status.success())
}

/// The folder (for `PYTHONPATH`) that holds the client, installed on first use; `None`, with the
/// reason printed, when pip cannot install it.
fn triton_client() -> Option<PathBuf> {
    let dir = workspace().join(format!("target/tritonclient-{}", TRITONCLIENT.rsplit("==").next().unwrap_or_default()));
    installed(&dir, &[TRITONCLIENT], has_client)
}

/// ONNX Runtime for Python, pinned to the version Sluice serves with, as the reference.
const ONNXRUNTIME: &str = "onnxruntime==1.32.0";

/// The folder (for `PYTHONPATH`) holding ONNX Runtime for Python, installed on first use.
fn onnxruntime_python() -> Option<PathBuf> {
    let version = ONNXRUNTIME.rsplit("==").next().unwrap_or_default();
    let dir = workspace().join(format!("target/onnxruntime-python-{version}"));
    installed(&dir, &[ONNXRUNTIME], |dir| {
        let check = "import sys, onnxruntime\nsys.exit(onnxruntime.__version__ != sys.argv[1])";
        Command::new(python())
            .args(["-c", check, version])
            .env("PYTHONPATH", dir)
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Where a client script is pointed: the scoring server itself, or a gateway in front of it with
/// one endpoint per model, named as the model, and key auth (the key goes to the script last).
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Gateway,
}

/// Runs `sluice serve` on `models` (and a gateway in front when `via` says so), then client
/// script `script` with the URL and `args` (see [`run_client`]); what it printed.
fn serve_and_run(models: &[&str], via: Via, script: &str, args: &[PathBuf], packages: &[PathBuf]) -> String {
    let home = tempfile::tempdir().expect("tempdir");
    let server = Server::start({
        let mut c = sluice(home.path());
        c.args(["serve", "--port", "0", "--instances", "1"]).args(models.iter().map(|m| model_path(m)));
        c
    });
    let key = "k".repeat(43);
    let gateway = (via == Via::Gateway)
        .then(|| gateway::start(home.path(), &gateway::endpoint_per_model(&server.url, models, &key), &[]));
    let url = &gateway.as_ref().unwrap_or(&server).url;
    let mut script_args: Vec<&OsStr> = vec![OsStr::new(url)];
    script_args.extend(args.iter().map(|a| a.as_os_str()));
    if gateway.is_some() {
        script_args.push(OsStr::new(&key));
    }
    run_client(script, &script_args, packages)
}

/// Both string models, sent gzip-compressed with string tensors as JSON and binary, straight to
/// the scoring server and through a gateway with key auth.
#[test]
fn the_triton_http_client_scores_string_models_as_onnx_runtime_does() {
    let (Some(client), Some(reference)) = (triton_client(), onnxruntime_python()) else { return };
    for via in [Via::Direct, Via::Gateway] {
        let text = serve_and_run(
            &["iris-labels", "ticket-router"],
            via,
            "triton_strings.py",
            &[workspace().join("models")],
            &[client.clone(), reference.clone()],
        );
        // Two models, binary and JSON tensors each, and the refusal.
        assert_eq!(text.matches("ok: ").count(), 5, "{text}");
    }
}

/// Requests and answers compressed by the client's own gzip and deflate options, straight to the
/// scoring server and through a gateway (which passes the compressed bodies through).
#[test]
fn the_triton_http_client_sends_and_takes_gzip_and_deflate() {
    let Some(client) = triton_client() else { return };
    let expected = workspace().join("models/expected/mlp-small.json");
    for via in [Via::Direct, Via::Gateway] {
        let text = serve_and_run(
            &["mlp-small"],
            via,
            "triton_compression.py",
            std::slice::from_ref(&expected),
            std::slice::from_ref(&client),
        );
        // Four exchanges: gzip and deflate, binary and JSON tensors.
        assert_eq!(text.matches("ok: ").count(), 4, "{text}");
    }
}
