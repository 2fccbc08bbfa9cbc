//! What one replica container is: its name, labels, the Engine's create body, and the archive
//! that puts the control plane credential into it.

use serde_json::{Value, json};
use sluice_control::target::{GENERATION_LABEL, REPLICA_PORT, REPLICA_SPEC_ENV, SERVICE_LABEL, ServiceDeployment};

use crate::tar::Tar;

pub use sluice_control::target::{MANAGED_BY, MANAGED_BY_LABEL, REPLICA_LABEL};
/// Where the replica finds the credential it fetches models with.
pub const TOKEN_PATH: &str = "/run/sluice/gateway-token";
/// The image's user (`USER 10001:10001` in the Dockerfile): the credential must be its own.
pub const REPLICA_UID: u32 = 10001;

/// What every replica container is made from, apart from its deployment.
#[derive(Debug, Clone)]
pub struct Template<'a> {
    pub image: &'a str,
    pub network: &'a str,
    pub control_url: &'a str,
}

/// `sluice-<service>-g<generation>-<index>`: unique per slot, so a slot never has two containers,
/// and a control plane that restarts finds its replicas by name and labels.
pub fn container_name(service: &str, generation: u64, index: usize) -> String {
    format!("sluice-{service}-g{generation}-{index}")
}

/// The Engine's create body for slot `index` of `deployment`.
pub fn create_body(t: &Template<'_>, deployment: &ServiceDeployment, index: usize) -> Value {
    let spec = serde_json::to_string(&deployment.spec).unwrap_or_default();
    let env = [
        format!("{REPLICA_SPEC_ENV}={spec}"),
        format!("SLUICE_CONTROL_URL={}", t.control_url),
        format!("SLUICE_CONTROL_TOKEN_FILE={TOKEN_PATH}"),
        "SLUICE_HOST=0.0.0.0".to_owned(),
        format!("SLUICE_PORT={REPLICA_PORT}"),
        "SLUICE_HOME=/data".to_owned(),
    ];
    let mut host = json!({
        "NetworkMode": t.network,
        // The target restarts exited replicas itself, so it sees every exit: it counts restarts,
        // keeps the exit status and output, and stops a crash loop (the Engine would retry forever).
        "RestartPolicy": { "Name": "no" },
    });
    let r = &deployment.resources;
    // Docker has limits, not requests: the limit when one is given, else the request.
    if let Some(cpus) = r.cpu_cores_limit.or(r.cpu_cores).filter(|c| *c > 0.0) {
        host["NanoCpus"] = json!((cpus * 1e9).round() as i64);
    }
    if let Some(gb) = r.memory_gb_limit.or(r.memory_gb).filter(|g| *g > 0.0) {
        host["Memory"] = json!((gb * 1024.0 * 1024.0 * 1024.0).round() as i64);
    }
    if let Some(gpus) = r.gpu_cores.filter(|&n| n > 0) {
        host["DeviceRequests"] = json!([{ "Driver": "nvidia", "Count": gpus, "Capabilities": [["gpu"]] }]);
    }
    json!({
        "Image": t.image,
        "Cmd": ["replica"],
        "Env": env,
        "Labels": {
            SERVICE_LABEL: deployment.service(),
            GENERATION_LABEL: deployment.generation().to_string(),
            REPLICA_LABEL: index.to_string(),
            MANAGED_BY_LABEL: MANAGED_BY,
        },
        "HostConfig": host,
    })
}

/// The archive that puts `token` at [`TOKEN_PATH`], readable by the image's user only. Extracted
/// at `/` into the created container before it first starts, so the credential is never in the
/// container's configuration (which `docker inspect` shows anyone with access to the Engine).
pub fn token_archive(token: &str) -> Vec<u8> {
    let mut tar = Tar::new();
    let dir = TOKEN_PATH.trim_start_matches('/').rsplit_once('/').map_or("", |(d, _)| d);
    let file = TOKEN_PATH.trim_start_matches('/');
    // `/run` is the image's own: only our directory is in the archive, so its owner and mode stay.
    let built = tar
        .dir(dir, 0o700, REPLICA_UID, REPLICA_UID)
        .and_then(|t| t.file(file, 0o400, REPLICA_UID, REPLICA_UID, token.as_bytes()));
    debug_assert!(built.is_ok(), "TOKEN_PATH is a short relative path; this is a bug");
    tar.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_control::target::{Probes, ReplicaSpec, Resources};

    fn deployment(resources: Resources) -> ServiceDeployment {
        ServiceDeployment {
            replicas: 2,
            spec: ReplicaSpec {
                service: "fraud-v2".into(),
                generation: 7,
                models: Vec::new(),
                deploy_config: json!({ "cpu_cores": 1 }),
                inference_config: None,
            },
            resources,
            probes: Probes::default(),
        }
    }

    const T: Template<'static> =
        Template { image: "sluice:1", network: "sluice-net", control_url: "http://control:8001" };

    #[test]
    fn names_carry_service_generation_and_slot() {
        assert_eq!(container_name("fraud-v2", 7, 1), "sluice-fraud-v2-g7-1");
    }

    #[test]
    fn the_body_runs_the_replica_with_its_spec_labels_and_network() {
        let d = deployment(Resources::default());
        let body = create_body(&T, &d, 1);
        assert_eq!(body["Image"], "sluice:1");
        assert_eq!(body["Cmd"], json!(["replica"]));
        assert_eq!(
            body["Labels"],
            json!({
                "sluice.dev/service": "fraud-v2",
                "sluice.dev/generation": "7",
                "sluice.dev/replica": "1",
                "app.kubernetes.io/managed-by": "sluice-control",
            })
        );
        let env: Vec<&str> = body["Env"].as_array().expect("env").iter().filter_map(Value::as_str).collect();
        let spec = env.iter().find_map(|e| e.strip_prefix("SLUICE_REPLICA_SPEC=")).expect("spec");
        let spec: ReplicaSpec = serde_json::from_str(spec).expect("the spec is JSON the replica reads");
        assert_eq!(spec, d.spec);
        for wanted in [
            "SLUICE_CONTROL_URL=http://control:8001",
            "SLUICE_CONTROL_TOKEN_FILE=/run/sluice/gateway-token",
            "SLUICE_HOST=0.0.0.0",
            "SLUICE_PORT=8000",
            "SLUICE_HOME=/data",
        ] {
            assert!(env.contains(&wanted), "{wanted} in {env:?}");
        }
        assert!(!env.iter().any(|e| e.starts_with("SLUICE_CONTROL_TOKEN=")), "the credential is not in the env");
        assert_eq!(body["HostConfig"]["NetworkMode"], "sluice-net");
        assert_eq!(body["HostConfig"]["RestartPolicy"], json!({ "Name": "no" }));
        for absent in ["NanoCpus", "Memory", "DeviceRequests"] {
            assert!(body["HostConfig"].get(absent).is_none(), "{absent} without resources");
        }
    }

    #[test]
    fn limits_win_over_requests_and_gpus_become_a_device_request() {
        let requests = Resources { cpu_cores: Some(0.5), memory_gb: Some(0.5), ..Resources::default() };
        let host = create_body(&T, &deployment(requests), 0)["HostConfig"].clone();
        assert_eq!(host["NanoCpus"], 500_000_000);
        assert_eq!(host["Memory"], 512 * 1024 * 1024);

        let limits = Resources {
            cpu_cores: Some(0.5),
            memory_gb: Some(0.5),
            cpu_cores_limit: Some(2.0),
            memory_gb_limit: Some(4.0),
            gpu_cores: Some(1),
        };
        let host = create_body(&T, &deployment(limits), 0)["HostConfig"].clone();
        assert_eq!(host["NanoCpus"], 2_000_000_000_i64);
        assert_eq!(host["Memory"], 4_i64 * 1024 * 1024 * 1024);
        assert_eq!(host["DeviceRequests"], json!([{ "Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]] }]));
    }

    #[test]
    fn the_token_archive_holds_the_directory_and_the_file_for_the_image_user() {
        let tar = token_archive("s3cret");
        assert_eq!(tar.len(), 512 * 5);
        assert!(tar.starts_with(b"run/sluice/\0"));
        assert!(tar[512..].starts_with(b"run/sluice/gateway-token\0"));
        assert_eq!(&tar[512 + 100..512 + 108], b"0000400\0");
        assert_eq!(&tar[512 + 108..512 + 116], b"0023421\0", "uid 10001");
        assert_eq!(&tar[1024..1030], b"s3cret");
    }
}
