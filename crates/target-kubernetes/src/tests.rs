//! The target against a mocked API server: every request a round makes is checked (method, path,
//! query, body) and answered by the test, so each test is the exact conversation with the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use sluice_control::model::ServiceState;
use sluice_control::target::{
    GENERATION_LABEL, Observed, Probes, ReplicaModel, ReplicaSpec, ReplicaTarget, Resources, SERVICE_LABEL,
    ServiceDeployment,
};
use tower_test::mock;

use crate::{KubernetesSettings, KubernetesTarget, deployment_for};

const IMAGE: &str = "registry.example/sluice:1.2";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/ml/deployments";
const PODS: &str = "/api/v1/namespaces/ml/pods";
const LIST_QUERY: &str =
    "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsluice-control&resourceVersion=0&resourceVersionMatch=NotOlderThan";
const APPLY_QUERY: &str = "fieldManager=sluice-control&force=true";

fn settings() -> KubernetesSettings {
    KubernetesSettings {
        namespace: "ml".into(),
        image: IMAGE.into(),
        image_pull_policy: "IfNotPresent".into(),
        control_url: "http://sluice-control.ml.svc:8001".into(),
        token_secret: "sluice-tokens".into(),
        extra_labels: BTreeMap::from([("app.kubernetes.io/instance".into(), "prod".into())]),
        image_pull_secrets: vec!["regcred".into()],
    }
}

fn model(name: &str, version: u32) -> ReplicaModel {
    ReplicaModel {
        name: name.into(),
        version,
        format: sluice_registry::ModelFormat::Onnx,
        sha256: format!("{:064x}", version),
        size_bytes: 1234,
        config: None,
        signature: sluice_core::ModelSignature::default(),
    }
}

fn deployment(service: &str, generation: u64, replicas: usize) -> ServiceDeployment {
    ServiceDeployment {
        replicas,
        spec: ReplicaSpec {
            service: service.into(),
            generation,
            models: vec![model("fraud", u32::try_from(generation).unwrap_or(1))],
            deploy_config: json!({"num_replicas": replicas}),
            inference_config: None,
        },
        resources: Resources::default(),
        probes: Probes::default(),
    }
}

// === the mocked API server ===

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reply = mock::SendResponse<Response<Body>>;

/// One request as the API server received it.
#[derive(Debug)]
struct Call {
    method: String,
    path: String,
    query: String,
    content_type: Option<String>,
    body: Value,
}

struct Server {
    handle: Handle,
}

fn target() -> (Arc<KubernetesTarget>, Server) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "ml");
    (KubernetesTarget::idle(client, settings()), Server { handle })
}

/// Query pairs in a stable order, so that a test names them in any order.
fn sorted_query(query: &str) -> Vec<&str> {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs
}

fn respond(reply: Reply, status: u16, body: Vec<u8>) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a valid response");
    reply.send_response(response);
}

impl Server {
    /// The next request, which must be `method` on `path` with exactly the query `query`.
    async fn next(&mut self, method: &str, path: &str, query: &str) -> (Call, Reply) {
        let next = tokio::time::timeout(Duration::from_secs(60), self.handle.next_request()).await;
        let (request, reply) = next.expect("a request in time").expect("the client is alive");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a request body");
        let call = Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            content_type: parts.headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned),
            body: if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") },
        };
        assert_eq!(
            (call.method.as_str(), call.path.as_str(), sorted_query(&call.query)),
            (method, path, sorted_query(query)),
            "unexpected request {call:?}"
        );
        (call, reply)
    }

    async fn json(&mut self, method: &str, path: &str, query: &str, status: u16, body: &Value) -> Call {
        let (call, reply) = self.next(method, path, query).await;
        respond(reply, status, serde_json::to_vec(body).expect("JSON"));
        call
    }

    /// A server-side apply of `deployment`'s Deployment, answered with the object.
    async fn apply(&mut self, name: &str) -> Call {
        let (call, reply) = self.next("PATCH", &format!("{DEPLOYMENTS}/{name}"), APPLY_QUERY).await;
        assert_eq!(call.content_type.as_deref(), Some("application/apply-patch+yaml"));
        respond(reply, 200, serde_json::to_vec(&call.body).expect("JSON"));
        call
    }

    /// The round's two lists (the items are copied at once, so a test may pass temporaries).
    fn lists(&mut self, deployments: &[Value], pods: &[Value]) -> impl Future<Output = ()> + '_ {
        let list = |kind: &str, items: &[Value]| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "7"}, "items": items});
        let (deployments, pods) = (list("DeploymentList", deployments), list("PodList", pods));
        async move {
            self.json("GET", DEPLOYMENTS, LIST_QUERY, 200, &deployments).await;
            self.json("GET", PODS, LIST_QUERY, 200, &pods).await;
        }
    }

    /// A failure answer in the API server's form.
    async fn refuse(&mut self, method: &str, path: &str, query: &str, code: u16, reason: &str, message: &str) -> Call {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message});
        self.json(method, path, query, code, &status).await
    }

    /// No request is waiting.
    async fn quiet(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(50), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

// === objects as the API server returns them ===

/// A running pod of `service`'s `generation`, Ready or not.
fn pod(name: &str, service: &str, generation: u64, ip: &str, ready: bool) -> Value {
    let ready_s = if ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {
                SERVICE_LABEL: service,
                GENERATION_LABEL: generation.to_string(),
                "app.kubernetes.io/managed-by": "sluice-control",
            },
        },
        "spec": {"containers": [{"name": "replica", "image": IMAGE}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": ready_s},
            ],
            "containerStatuses": [{
                "name": "replica", "image": IMAGE, "imageID": "", "ready": ready, "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
            }],
        },
    })
}

/// `pod` whose replica container waits with `reason`.
fn waiting(mut pod: Value, reason: &str, message: &str) -> Value {
    pod["status"]["containerStatuses"][0]["state"] = json!({"waiting": {"reason": reason, "message": message}});
    pod
}

/// The Deployment a list returns after `call` applied it, with `status`.
fn applied(call: &Call, status: Value) -> Value {
    let mut d = call.body.clone();
    d["metadata"]["generation"] = json!(1);
    d["status"] = status;
    d
}

fn observed(target: &KubernetesTarget, service: &str) -> Observed {
    target.observe(service)
}

// === the Deployment ===

/// The exact object a service with every setting becomes, as the API server receives it.
#[tokio::test(start_paused = true)]
async fn apply_sends_the_exact_deployment() {
    let (target, mut api) = target();
    let mut d = deployment("fraud-model", 3, 2);
    d.spec.models = vec![model("fraud", 4), model("scorer-", 1)];
    d.resources = Resources {
        cpu_cores: Some(0.5),
        memory_gb: Some(1.5),
        cpu_cores_limit: Some(2.0),
        memory_gb_limit: Some(4.0),
        gpu_cores: Some(1),
    };
    d.probes = Probes {
        period_seconds: 5,
        timeout_seconds: 3,
        failure_threshold: 4,
        success_threshold: 2,
        initial_delay_seconds: 120,
    };
    target.apply(d.clone());
    let spec_json = serde_json::to_string(&d.spec).expect("JSON");
    let labels = json!({
        "app.kubernetes.io/component": "replica",
        "app.kubernetes.io/instance": "prod",
        "app.kubernetes.io/managed-by": "sluice-control",
        "app.kubernetes.io/name": "sluice",
        "models.sluice.dev/fraud": "4",
        "sluice.dev/generation": "3",
        "sluice.dev/service": "fraud-model",
    });
    let annotations = json!({"sluice.dev/models": "fraud:4,scorer-:1", "sluice.dev/service": "fraud-model"});
    let expected = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sluice-fraud-model", "namespace": "ml", "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/managed-by": "sluice-control", "sluice.dev/service": "fraud-model"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "progressDeadlineSeconds": 600,
            "revisionHistoryLimit": 2,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 40,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "imagePullSecrets": [{"name": "regcred"}],
                    "containers": [{
                        "name": "replica",
                        "image": IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["replica"],
                        "env": [
                            {"name": "SLUICE_REPLICA_SPEC", "value": spec_json},
                            {"name": "SLUICE_CONTROL_URL", "value": "http://sluice-control.ml.svc:8001"},
                            {"name": "SLUICE_CONTROL_TOKEN_FILE", "value": "/etc/sluice/tokens/gateway-token"},
                            {"name": "SLUICE_HOME", "value": "/data"},
                            {"name": "SLUICE_HOST", "value": "0.0.0.0"},
                            {"name": "SLUICE_PORT", "value": "8000"},
                        ],
                        "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}],
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "1536Mi"},
                            "limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/v2/health/live", "port": 8000, "scheme": "HTTP"},
                            "initialDelaySeconds": 120,
                            "periodSeconds": 5,
                            "timeoutSeconds": 3,
                            "failureThreshold": 4,
                            "successThreshold": 1,
                        },
                        "readinessProbe": {
                            "httpGet": {"path": "/v2/health/ready", "port": 8000, "scheme": "HTTP"},
                            "periodSeconds": 5,
                            "timeoutSeconds": 3,
                            "failureThreshold": 4,
                            "successThreshold": 2,
                        },
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "tmp", "mountPath": "/tmp"},
                            {"name": "tokens", "mountPath": "/etc/sluice/tokens", "readOnly": true},
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "tokens", "secret": {
                            "secretName": "sluice-tokens",
                            "items": [{"key": "gateway-token", "path": "gateway-token"}],
                            "defaultMode": 0o440,
                        }},
                    ],
                },
            },
        },
    });
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-fraud-model").await;
        assert_eq!(call.body, expected, "got {:#}", call.body);
        api.lists(&[applied(&call, json!({}))], &[]).await;
    });
    api.quiet().await;
    // What the replica reads back is the spec it was given.
    let env: ReplicaSpec = serde_json::from_str(&spec_json).expect("the spec parses");
    assert_eq!(env, d.spec);
    let o = observed(&target, "fraud-model");
    assert_eq!((o.state, o.reason.as_deref()), (ServiceState::Transitioning, Some("starting: 0 of 2 replicas ready")));
}

/// Without resources or GPUs nothing is asked for; the progress deadline leaves room for the
/// liveness delay; a service name that is no object name gets a made-safe one.
#[test]
fn a_plain_service_asks_for_nothing_and_gets_a_safe_name() {
    let mut d = deployment("risk_v2", 1, 1);
    d.probes.initial_delay_seconds = 900;
    let object = serde_json::to_value(deployment_for(&d, &settings())).expect("JSON");
    assert_eq!(object["metadata"]["name"], "sluice-risk-v2-26eb20c9");
    assert_eq!(object["metadata"]["labels"]["sluice.dev/service"], "risk_v2");
    assert_eq!(object["metadata"]["annotations"]["sluice.dev/service"], "risk_v2");
    let pod = &object["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0].get("resources"), None);
    assert_eq!(pod.get("tolerations"), None);
    assert_eq!(object["spec"]["progressDeadlineSeconds"], 1200);
    assert_eq!(pod["containers"][0]["livenessProbe"]["initialDelaySeconds"], 900);
    assert_eq!(pod["containers"][0]["readinessProbe"].get("initialDelaySeconds"), None);
}

// === rolling update ===

/// Generation 2 is applied as a new template on the same Deployment; while its pods are not
/// ready the service is Transitioning and the old ready pods stay in the addresses; it is
/// Healthy once only new pods are left. An older generation arriving late changes nothing.
#[tokio::test(start_paused = true)]
async fn a_rolling_update_keeps_the_old_pods_serving() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 2));
    let old =
        [pod("sluice-iris-a-1", "iris", 1, "10.0.0.1", true), pod("sluice-iris-a-2", "iris", 1, "10.0.0.2", true)];
    let mut v1 = None;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        api.lists(&[applied(&call, json!({}))], &old).await;
        v1 = Some(call);
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Healthy, "{o:?}");
    assert_eq!(o.ready_addresses, ["10.0.0.1:8000", "10.0.0.2:8000"]);

    target.apply(deployment("iris", 2, 2));
    let new_pending = pod("sluice-iris-b-1", "iris", 2, "10.0.0.3", false);
    let mut v2 = None;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        let template = &call.body["spec"]["template"];
        assert_eq!(template["metadata"]["labels"]["sluice.dev/generation"], "2");
        assert_eq!(template["metadata"]["labels"]["models.sluice.dev/fraud"], "2");
        let spec: ReplicaSpec = serde_json::from_str(
            template["spec"]["containers"][0]["env"][0]["value"].as_str().expect("the spec variable"),
        )
        .expect("a spec");
        assert_eq!(spec.generation, 2);
        // The selector does not change with the generation, so the same Deployment rolls over.
        assert_eq!(call.body["spec"]["selector"], v1.as_ref().expect("v1").body["spec"]["selector"]);
        assert_eq!(call.body["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        let mut pods = old.to_vec();
        pods.push(new_pending.clone());
        api.lists(&[applied(&call, json!({}))], &pods).await;
        v2 = Some(call);
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Transitioning, "{o:?}");
    assert_eq!(o.reason.as_deref(), Some("rolling out generation 2: 0 of 2 new replicas ready, 2 old replicas left"));
    assert_eq!(o.ready_addresses, ["10.0.0.1:8000", "10.0.0.2:8000"]);
    // Newest generation first.
    let names: Vec<_> = o.replicas.iter().map(|r| r.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["sluice-iris-b-1", "sluice-iris-a-1", "sluice-iris-a-2"]);
    assert_eq!(o.replicas.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2]);

    // A late apply of generation 1 is ignored: no PATCH in the next round.
    target.apply(deployment("iris", 1, 2));
    let v2 = applied(v2.as_ref().expect("v2"), json!({}));
    let new =
        [pod("sluice-iris-b-1", "iris", 2, "10.0.0.3", true), pod("sluice-iris-b-2", "iris", 2, "10.0.0.4", true)];
    tokio::join!(target.step(), async {
        // Both new pods ready, one old pod still draining: still rolling.
        let mut pods = new.to_vec();
        pods.push(old[1].clone());
        api.lists(std::slice::from_ref(&v2), &pods).await;
    });
    api.quiet().await;
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Transitioning, "{o:?}");
    assert_eq!(o.ready_addresses, ["10.0.0.3:8000", "10.0.0.4:8000", "10.0.0.2:8000"]);

    tokio::join!(target.step(), api.lists(std::slice::from_ref(&v2), &new));
    let o = observed(&target, "iris");
    assert_eq!((o.state, o.reason), (ServiceState::Healthy, None));
    assert_eq!(o.ready_addresses, ["10.0.0.3:8000", "10.0.0.4:8000"]);
}

/// Healthy, then a pod stops being ready: Unhealthy. Scaling up at the same generation is
/// Transitioning, not Unhealthy; a terminating pod is never an address.
#[tokio::test(start_paused = true)]
async fn unhealthy_after_healthy_and_scaling_is_transitioning() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 2));
    let a = pod("sluice-iris-a", "iris", 1, "10.0.0.1", true);
    let b = pod("sluice-iris-b", "iris", 1, "10.0.0.2", true);
    let mut d = None;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        api.lists(&[applied(&call, json!({}))], &[a.clone(), b.clone()]).await;
        d = Some(applied(&call, json!({})));
    });
    let d = d.expect("the deployment");
    assert_eq!(observed(&target, "iris").state, ServiceState::Healthy);

    let b_down = waiting(pod("sluice-iris-b", "iris", 1, "10.0.0.2", false), "ContainerCreating", "");
    tokio::join!(target.step(), api.lists(std::slice::from_ref(&d), &[a.clone(), b_down]));
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Unhealthy, "{o:?}");
    assert_eq!(o.reason.as_deref(), Some("1 of 2 replicas ready; not ready: sluice-iris-b (ContainerCreating)"));
    assert_eq!(o.ready_addresses, ["10.0.0.1:8000"]);

    // Scaled to 3 (same generation): a PATCH, then Transitioning while the third starts.
    target.apply(deployment("iris", 1, 3));
    let mut terminating = b.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        assert_eq!(call.body["spec"]["replicas"], 3);
        api.lists(&[applied(&call, json!({}))], &[a.clone(), terminating]).await;
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Transitioning, "{o:?}");
    assert_eq!(o.ready_addresses, ["10.0.0.1:8000"], "a terminating pod is no address");
    assert!(!o.replicas[1].ready);
}

// === failures ===

/// A crash-looping replica of the newest generation fails the service with its exit and the
/// previous container's last lines, read once per crash.
#[tokio::test(start_paused = true)]
async fn a_crash_loop_fails_the_service_with_its_last_lines() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 1));
    let mut crashing = waiting(
        pod("sluice-iris-x", "iris", 1, "10.0.0.1", false),
        "CrashLoopBackOff",
        "back-off 40s restarting failed container=replica pod=sluice-iris-x",
    );
    crashing["status"]["containerStatuses"][0]["restartCount"] = json!(3);
    crashing["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {"exitCode": 1, "reason": "Error"}});
    let log_path = format!("{PODS}/sluice-iris-x/log");
    let log_query = "container=replica&previous=true&tailLines=10";
    let mut d = None;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        api.lists(&[applied(&call, json!({}))], std::slice::from_ref(&crashing)).await;
        let (_, reply) = api.next("GET", &log_path, log_query).await;
        respond(reply, 200, b"loading model fraud\nerror: artifact sha256 mismatch\n".to_vec());
        d = Some(applied(&call, json!({})));
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed, "{o:?}");
    assert_eq!(
        o.reason.as_deref(),
        Some(
            "replica sluice-iris-x keeps crashing (exit 1, 3 restarts); last output:\n\
             loading model fraud\nerror: artifact sha256 mismatch"
        )
    );
    assert_eq!((o.replicas[0].restarts, o.replicas[0].last_exit.as_deref()), (3, Some("exit 1")));

    // The same crash: its log is not read again.
    let d = d.expect("the deployment");
    tokio::join!(target.step(), api.lists(std::slice::from_ref(&d), std::slice::from_ref(&crashing)));
    api.quiet().await;
    assert_eq!(observed(&target, "iris").state, ServiceState::Failed);

    // The next crash is.
    crashing["status"]["containerStatuses"][0]["restartCount"] = json!(4);
    crashing["status"]["containerStatuses"][0]["lastState"] =
        json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
    tokio::join!(target.step(), async {
        api.lists(std::slice::from_ref(&d), std::slice::from_ref(&crashing)).await;
        let (_, reply) = api.next("GET", &log_path, log_query).await;
        respond(reply, 200, Vec::new());
    });
    let o = observed(&target, "iris");
    assert_eq!(
        o.reason.as_deref(),
        Some("replica sluice-iris-x keeps crashing (OOMKilled (exit 137), 4 restarts); no output")
    );
}

/// A pod the scheduler cannot place fails the service with the scheduler's message; so does an
/// image that cannot be pulled, a rollout past its deadline, a quota refusing pods and a
/// container that cannot be created.
#[tokio::test(start_paused = true)]
async fn unschedulable_image_pull_quota_and_deadline_failures_carry_the_clusters_reason() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 1));
    let mut pending = pod("sluice-iris-x", "iris", 1, "", false);
    pending["status"] = json!({
        "phase": "Pending",
        "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
        }],
    });
    let mut d = None;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        api.lists(&[applied(&call, json!({}))], std::slice::from_ref(&pending)).await;
        d = Some(applied(&call, json!({})));
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed);
    assert_eq!(
        o.reason.as_deref(),
        Some(
            "replica sluice-iris-x cannot be scheduled: 0/3 nodes are available: 3 Insufficient cpu. preemption: \
             0/3 nodes are available: 3 No preemption victims found for incoming pod."
        )
    );
    assert_eq!(o.replicas[0].address, None);
    assert!(o.ready_addresses.is_empty());

    let pulling = waiting(
        pod("sluice-iris-x", "iris", 1, "10.0.0.1", false),
        "ImagePullBackOff",
        "Back-off pulling image \"registry.example/sluice:1.2\": ErrImagePull: not found",
    );
    let d = d.expect("the deployment");
    tokio::join!(target.step(), api.lists(std::slice::from_ref(&d), &[pulling]));
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed);
    assert_eq!(
        o.reason.as_deref(),
        Some(
            "replica sluice-iris-x cannot pull image registry.example/sluice:1.2: ImagePullBackOff: \
             Back-off pulling image \"registry.example/sluice:1.2\": ErrImagePull: not found"
        )
    );

    let mut stuck = d.clone();
    stuck["status"] = json!({
        "observedGeneration": 1,
        "conditions": [{
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"sluice-iris-5d8f\" has timed out progressing.",
        }],
    });
    let starting = pod("sluice-iris-x", "iris", 1, "10.0.0.1", false);
    tokio::join!(target.step(), api.lists(&[stuck], &[starting]));
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed);
    assert_eq!(
        o.reason.as_deref(),
        Some(
            "the rollout of generation 1 stopped making progress: ReplicaSet \"sluice-iris-5d8f\" has timed out progressing."
        )
    );

    // A quota that leaves no room: no pod at all, only the Deployment's condition says why.
    let mut refused = d.clone();
    let quota = "pods \"sluice-iris-5d8f-x\" is forbidden: exceeded quota: compute, requested: requests.cpu=2, used: requests.cpu=7, limited: requests.cpu=8";
    refused["status"] = json!({
        "observedGeneration": 1,
        "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": quota}],
    });
    tokio::join!(target.step(), api.lists(&[refused], &[]));
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed);
    assert_eq!(o.reason, Some(format!("kubernetes cannot create replicas: {quota}")));

    // A container the kubelet cannot create.
    let broken = waiting(
        pod("sluice-iris-x", "iris", 1, "10.0.0.1", false),
        "CreateContainerConfigError",
        "secret \"sluice-tokens\" not found",
    );
    tokio::join!(target.step(), api.lists(std::slice::from_ref(&d), &[broken]));
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed);
    assert_eq!(
        o.reason.as_deref(),
        Some("replica sluice-iris-x cannot start: CreateContainerConfigError: secret \"sluice-tokens\" not found")
    );

    // Once the pod starts, the service is starting again: the rules are read anew each round.
    let starting = pod("sluice-iris-x", "iris", 1, "10.0.0.1", false);
    tokio::join!(target.step(), api.lists(std::slice::from_ref(&d), &[starting]));
    assert_eq!(observed(&target, "iris").state, ServiceState::Transitioning);
}

/// An apply the cluster refuses fails the service (and is tried again later, RBAC gets fixed);
/// one that fails to connect is retried with back-off while the service is Transitioning.
#[tokio::test(start_paused = true)]
async fn refused_applies_fail_and_unreachable_ones_are_retried() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 1));
    tokio::join!(target.step(), async {
        let path = format!("{DEPLOYMENTS}/sluice-iris");
        let message = "deployments.apps \"sluice-iris\" is forbidden: User \"system:serviceaccount:ml:sluice\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"ml\"";
        api.refuse("PATCH", &path, APPLY_QUERY, 403, "Forbidden", message).await;
        api.lists(&[], &[]).await;
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Failed, "{o:?}");
    let reason = o.reason.expect("a reason");
    assert!(
        reason.starts_with(
            "kubernetes refused the deployment of generation 1: deployments.apps \"sluice-iris\" is forbidden"
        ),
        "{reason}"
    );
    assert!(reason.ends_with("(403 Forbidden)"), "{reason}");

    // Not before the back-off (1 s) has passed.
    tokio::join!(target.step(), api.lists(&[], &[]));
    api.quiet().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::join!(target.step(), async {
        let (_, reply) = api.next("PATCH", &format!("{DEPLOYMENTS}/sluice-iris"), APPLY_QUERY).await;
        reply.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        api.lists(&[], &[]).await;
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Transitioning, "{o:?}");
    let reason = o.reason.expect("a reason");
    assert!(reason.starts_with("retrying: ") && reason.contains("connection refused"), "{reason}");

    // Second failure: 2 s of back-off.
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::join!(target.step(), api.lists(&[], &[]));
    api.quiet().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        api.lists(&[applied(&call, json!({}))], &[]).await;
    });
    let o = observed(&target, "iris");
    assert_eq!(o.reason.as_deref(), Some("starting: 0 of 1 replicas ready"));
}

/// A list that fails keeps what was last seen (the pods most likely still serve) and says so.
#[tokio::test(start_paused = true)]
async fn a_failed_read_keeps_the_last_addresses() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 1));
    let mut d = Value::Null;
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        d = applied(&call, json!({}));
        api.lists(std::slice::from_ref(&d), &[pod("p", "iris", 1, "10.0.0.9", true)]).await;
    });
    tokio::join!(target.step(), async {
        api.refuse("GET", DEPLOYMENTS, LIST_QUERY, 503, "ServiceUnavailable", "etcdserver: leader changed").await;
    });
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Healthy);
    assert_eq!(o.ready_addresses, ["10.0.0.9:8000"]);
    assert_eq!(
        o.reason.as_deref(),
        Some("as last seen; reading the cluster fails, retrying: etcdserver: leader changed (503 ServiceUnavailable)")
    );
    // The next good read clears it.
    tokio::join!(target.step(), api.lists(std::slice::from_ref(&d), &[pod("p", "iris", 1, "10.0.0.9", true)]));
    assert_eq!(observed(&target, "iris").reason, None);
}

// === remove ===

/// Removing deletes the Deployment with background propagation (its ReplicaSets and pods go
/// with it), retried until it succeeds or the Deployment is gone.
#[tokio::test(start_paused = true)]
async fn remove_deletes_the_deployment_until_it_is_gone() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 1));
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        api.lists(&[applied(&call, json!({}))], &[]).await;
    });
    let mut changes = target.changes();
    changes.mark_unchanged();
    target.remove("iris");
    assert!(changes.has_changed().expect("open"), "remove changes what observe reports");
    assert_eq!(observed(&target, "iris"), Observed::starting(0));
    let path = format!("{DEPLOYMENTS}/sluice-iris");
    tokio::join!(target.step(), async {
        let call = api.refuse("DELETE", &path, "", 500, "InternalError", "etcd timeout").await;
        assert_eq!(call.body, json!({"propagationPolicy": "Background"}));
        api.lists(&[], &[]).await;
    });
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::join!(target.step(), async {
        let call = api.refuse("DELETE", &path, "", 404, "NotFound", "deployments.apps \"sluice-iris\" not found").await;
        assert_eq!(call.body, json!({"propagationPolicy": "Background"}));
        api.lists(&[], &[]).await;
    });
    tokio::time::advance(Duration::from_secs(60)).await;
    tokio::join!(target.step(), api.lists(&[], &[]));
    api.quiet().await;
}

// === addresses, changes, logs ===

/// Ready pods' addresses are reported (IPv6 in brackets) and `changes` is bumped exactly when
/// what `observe` reports changes; the background loop does this on its own.
#[tokio::test(start_paused = true)]
async fn addresses_are_reported_and_changes_bumped() {
    let (target, mut api) = target();
    let mut changes = target.changes();
    target.apply(deployment("iris", 1, 2));
    assert!(changes.has_changed().expect("open"), "a new service is reported at once");
    assert_eq!(observed(&target, "iris"), Observed::starting(2));
    changes.mark_unchanged();

    target.spawn_loop(Duration::from_secs(1));
    let call = api.apply("sluice-iris").await;
    let d = applied(&call, json!({}));
    let starting = [pod("a", "iris", 1, "10.1.0.1", false), pod("b", "iris", 1, "fd00::7", false)];
    api.lists(std::slice::from_ref(&d), &starting).await;
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("bumped").expect("open");
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Transitioning);
    assert!(o.ready_addresses.is_empty());
    assert_eq!(o.replicas[1].address.as_deref(), Some("[fd00::7]:8000"));
    changes.mark_unchanged();

    // The same lists again a second later: nothing changed, no bump.
    api.lists(std::slice::from_ref(&d), &starting).await;
    let ready = [pod("a", "iris", 1, "10.1.0.1", true), pod("b", "iris", 1, "fd00::7", true)];
    api.lists(std::slice::from_ref(&d), &ready).await;
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("bumped").expect("open");
    assert_eq!(*changes.borrow_and_update(), 3, "one bump for the new service, one per change of state");
    let o = observed(&target, "iris");
    assert_eq!(o.state, ServiceState::Healthy);
    assert_eq!(o.ready_addresses, ["10.1.0.1:8000", "[fd00::7]:8000"]);
}

/// `service logs` reads each pod's tail, numbered as `observe` numbers the replicas.
#[tokio::test(start_paused = true)]
async fn logs_are_read_per_pod() {
    let (target, mut api) = target();
    target.apply(deployment("iris", 1, 2));
    tokio::join!(target.step(), async {
        let call = api.apply("sluice-iris").await;
        let pods =
            [pod("sluice-iris-a", "iris", 1, "10.0.0.1", true), pod("sluice-iris-b", "iris", 1, "10.0.0.2", true)];
        api.lists(&[applied(&call, json!({}))], &pods).await;
    });
    let (chunks, ()) = tokio::join!(target.logs("iris", Some(1), None), async {
        let (_, reply) = api.next("GET", &format!("{PODS}/sluice-iris-b/log"), "container=replica&tailLines=500").await;
        respond(reply, 200, b"listening on 0.0.0.0:8000\n".to_vec());
    });
    let chunks = chunks.expect("logs");
    assert_eq!(chunks.len(), 1);
    assert_eq!((chunks[0].replica, chunks[0].text.as_str()), (1, "listening on 0.0.0.0:8000\n"));
    // A follower passes the offset back and gets what came since (at least the last second).
    let since = chunks[0].offset;
    let (more, ()) = tokio::join!(target.logs("iris", Some(1), Some(since)), async {
        let (_, reply) =
            api.next("GET", &format!("{PODS}/sluice-iris-b/log"), "container=replica&sinceSeconds=1").await;
        respond(reply, 200, b"next line\n".to_vec());
    });
    assert_eq!(more.expect("logs since")[0].text, "next line\n");
    let err = target.logs("iris", Some(2), None).await.expect_err("no replica 2");
    assert_eq!(err.to_string(), "service 'iris' has replicas 0 to 1");
}
