//! A `sluice gateway` process configured from a routes file (`--routes-file`, no control plane)
//! in front of scoring servers a test started itself.

use std::ffi::OsStr;
use std::path::Path;

use serde_json::{Value, json};

use crate::process::{Server, sluice};

/// A gateway with its HTTP and OIP gRPC fronts on free ports (one gateway thread, as a small
/// machine's tests want), serving `routes` (written to `dir/routes.json`), started with `extra`
/// arguments.
pub fn start(dir: &Path, routes: &Value, extra: &[&OsStr]) -> Server {
    let routes_file = dir.join("routes.json");
    std::fs::write(&routes_file, routes.to_string()).expect("write the routes file");
    Server::start({
        let mut c = sluice(dir);
        c.args(["gateway", "--port", "0", "--grpc-port", "0", "--gateway-threads", "1", "--routes-file"])
            .arg(&routes_file)
            .args(extra);
        c
    })
}

/// Routes in which each of `models`, served by the scoring server at `replica_url`, is a service
/// of its own behind an endpoint of the same name (one version, the default) with key auth by
/// `key`: a client that names the model reaches it through the gateway with the key.
pub fn endpoint_per_model(replica_url: &str, models: &[&str], key: &str) -> Value {
    let digest = sluice_auth::KeyDigest::of(key).to_hex();
    let replica = replica_url.trim_start_matches("http://");
    let services: Vec<Value> = models
        .iter()
        .map(|m| json!({ "name": m, "models": [m], "replicas": [replica], "auth": { "mode": "none" } }))
        .collect();
    let endpoints: Vec<Value> = models
        .iter()
        .map(|m| {
            json!({
                "name": m,
                "auth": { "mode": "keys", "primary": digest, "secondary": digest },
                "versions": [{ "name": "v1", "service": m, "traffic_percentile": 0.0, "is_default": true,
                               "is_control": false, "shadow_percent": null }],
            })
        })
        .collect();
    json!({ "generation": 1, "services": services, "endpoints": endpoints, "jwks": { "keys": [] } })
}
