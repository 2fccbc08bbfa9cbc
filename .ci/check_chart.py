#!/usr/bin/env python3
"""Checks the Helm chart deploy/helm/sluice without a cluster (run by .ci/check-chart.sh).

For each scenario (default values, an Ingress, the gateway's gRPC port, values-sidecar.yaml, values-gpu.yaml, both of those,
and a sidecar without auth):
  1. helm lint --strict (Helm's engine through helm-python-sdk) against every Kubernetes version;
  2. render the chart as `helm install sluice -n sluice` would, and write every manifest to a
     temporary directory (kept and printed when something fails);
  3. kubernetes-validate --strict against Kubernetes 1.30 and 1.34: unknown fields, wrong types,
     missing required fields and kinds without a schema all fail;
  4. invariants the schemas cannot express: probes, requests and the restricted security context
     on every container, volumes that exist, Services that select pods, the NetworkPolicies
     around replica pods, the sidecar's shared socket and routing file, the token Secret.

Exits 1 naming every failure, 0 when all pass. `--keep DIR` writes the manifests under DIR.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import helm_python
import yaml
from helm_python import chart as helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "sluice"
KUBE_VERSIONS = ["1.30.0", "1.34.0"]
RELEASE, NAMESPACE = "sluice", "sluice"
FULLNAME = "sluice"  # release "sluice" of chart "sluice"

helm_python.enable_logging(logging.ERROR)


@contextlib.contextmanager
def quiet_fail_logs():
    """Helm's lint ignores the templates' `fail` calls and logs them on stderr (from Go, beyond
    Python's logging); drop those lines (the render step reports the failure) and keep the rest."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if "funcMap fail" not in line:
                    print(line, file=sys.stderr)


# name -> values files (relative to the chart) and inline values, applied in order as `-f`/`--set`.
SCENARIOS: dict[str, list[str | dict]] = {
    "default": [],
    "ingress": [
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": [{"host": "sluice.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "sluice-tls", "hosts": ["sluice.example.com"]}],
            },
            "tokens": {"adminToken": "admin-" + "a" * 40, "gatewayToken": "gateway-" + "g" * 40},
        }
    ],
    "grpc": [{"gateway": {"grpc": {"enabled": True, "port": 9003}, "service": {"grpcPort": 8003}}}],
    "sidecar": ["values-sidecar.yaml"],
    "gpu": ["values-gpu.yaml"],
    "sidecar+gpu": ["values-sidecar.yaml", "values-gpu.yaml", {"sidecar": {"auth": {"primaryKey": "primary-key-0123456789"}}}],
    "sidecar-noauth": ["values-sidecar.yaml", {"sidecar": {"auth": {"enabled": False}}, "ingress": {"enabled": True}}],
}

# Values the chart must refuse, and a part of the message it must give.
REFUSED: list[tuple[dict, str]] = [
    ({"layout": "sidecars"}, 'layout must be "platform" or "sidecar"'),
    ({"tokens": {"adminToken": "too-short"}}, "tokens.adminToken must be 32 to 256"),
    ({"layout": "sidecar", "sidecar": {"auth": {"secondaryKey": "has a space in it 0123"}}}, "sidecar.auth.secondaryKey must be"),
    ({"layout": "sidecar", "sidecar": {"models": []}}, "sidecar.models must name at least one"),
    (
        {"layout": "sidecar", "sidecar": {"deployConfig": {"gpu_cores": 2}, "serve": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}},
        "differs from sidecar.deployConfig.gpu_cores",
    ),
]

REPLICA_LABELS = {"app.kubernetes.io/managed-by": "sluice-control", "app.kubernetes.io/component": "replica"}
CONTROL_RULES = {
    # The calls crates/target-kubernetes makes: apply (PATCH, authorized as create when it
    # creates), list and delete Deployments; list Pods; read a pod's log.
    ("apps", "deployments"): {"list", "create", "patch", "delete"},
    ("", "pods"): {"list"},
    ("", "pods/log"): {"get"},
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (a template bug the API server would hide)."""


def _mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def merge(base: dict, over: dict) -> dict:
    """Helm's merge of several -f files: maps merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def scenario_values(parts: list[str | dict]) -> dict:
    values: dict = {}
    for part in parts:
        if isinstance(part, str):
            part = yaml.safe_load((CHART / part).read_text()) or {}
        values = merge(values, part)
    return values


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.scenario = ""

    def add(self, message: str) -> None:
        self.items.append(f"[{self.scenario}] {message}")

    def check(self, condition: bool, message: str) -> bool:
        if not condition:
            self.add(message)
        return condition


# --- lint, render, validate -----------------------------------------------------------------


def lint(values: dict, fail: Failures) -> None:
    for version in KUBE_VERSIONS:
        with quiet_fail_logs():
            report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=version)
        # Severity: 1 info, 2 warning, 3 error; strict makes warnings fatal as `helm lint --strict`.
        for m in report.get("messages") or []:
            if m.get("severity", 0) >= 2:
                fail.add(f"helm lint (k8s {version}): {m.get('path')}: {m.get('error')}")
        for e in report.get("errors") or []:
            fail.add(f"helm lint (k8s {version}): {e}")


def render(values: dict, out: Path, fail: Failures) -> list[tuple[str, dict]] | None:
    """Renders the chart into `out` (one file per template); returns (file, object) pairs."""
    try:
        chart = helm.Chart.load(CHART)
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except Exception as e:  # HelmRenderError, HelmValuesError: the message names the template
        fail.add(f"render failed: {type(e).__name__}: {e}")
        return None
    out.mkdir(parents=True, exist_ok=True)
    objects: list[tuple[str, dict]] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            fail.check(bool(text.strip()), f"{template} renders empty")
            continue
        if template.endswith(".tpl") or not text.strip():
            continue
        path = out / Path(template).name
        path.write_text(text)
        try:
            docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]
        except yaml.YAMLError as e:
            fail.add(f"{template}: not valid YAML: {e}")
            continue
        if not docs:
            path.unlink()
        for doc in docs:
            if not fail.check(isinstance(doc, dict) and "kind" in doc, f"{template}: a document without kind"):
                continue
            fail.check(
                doc.get("metadata", {}).get("namespace") == NAMESPACE,
                f"{template}: {doc['kind']} {doc.get('metadata', {}).get('name')} is not in the release namespace",
            )
            objects.append((path.name, doc))
    return objects


def validate(out: Path, fail: Failures) -> None:
    files = sorted(str(p) for p in out.glob("*.yaml"))
    if not files:
        fail.add("nothing rendered to validate")
        return
    for version in KUBE_VERSIONS:
        run = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", version, *files],
            capture_output=True,
            text=True,
        )
        # --quiet prints only warnings (e.g. a kind without a schema) and errors; both fail.
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        for line in lines:
            fail.add(f"kubernetes-validate --strict -k {version}: {line}")
        if run.returncode != 0 and not lines:
            fail.add(f"kubernetes-validate --strict -k {version} exited {run.returncode}")


# --- invariants -----------------------------------------------------------------------------


def by_kind(objects: list[tuple[str, dict]], kind: str) -> list[dict]:
    return [o for _, o in objects if o["kind"] == kind]


def find(objects: list[tuple[str, dict]], kind: str, name: str) -> dict | None:
    return next((o for o in by_kind(objects, kind) if o["metadata"]["name"] == name), None)


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def arg_after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def mount_for(container: dict, path: str) -> dict | None:
    """The volumeMount whose directory holds `path` (the longest matching mountPath)."""
    best = None
    for m in container.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and (best is None or len(mp) > len(best["mountPath"])):
            best = m
    return best


def check_pod(where: str, pod_spec: dict, claims: list[str], objects, fail: Failures) -> None:
    pod_sc = pod_spec.get("securityContext") or {}
    fail.check(pod_sc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot is not true")
    fail.check(
        (pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
        f"{where}: pod seccompProfile is not RuntimeDefault",
    )
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    containers = (pod_spec.get("initContainers") or []) + pod_spec.get("containers", [])
    for c in containers:
        cw = f"{where} container {c['name']}"
        for probe in ("readinessProbe", "livenessProbe"):
            fail.check(bool(c.get(probe)), f"{cw}: no {probe}")
        requests = (c.get("resources") or {}).get("requests") or {}
        fail.check("cpu" in requests and "memory" in requests, f"{cw}: resources.requests needs cpu and memory")
        sc = c.get("securityContext") or {}
        restricted = {
            "runAsNonRoot": sc.get("runAsNonRoot") is True,
            "runAsUser 10001": sc.get("runAsUser") == 10001,
            "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation false": sc.get("allowPrivilegeEscalation") is False,
            "capabilities drop ALL": "ALL" in ((sc.get("capabilities") or {}).get("drop") or []),
            "seccompProfile RuntimeDefault": (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
        }
        for what, ok in restricted.items():
            fail.check(ok, f"{cw}: securityContext lacks {what}")
        for m in c.get("volumeMounts") or []:
            fail.check(m["name"] in volumes or m["name"] in claims, f"{cw}: mounts volume {m['name']!r} that the pod does not define")
        tmp = mount_for(c, "/tmp")
        fail.check(
            tmp is not None and tmp["mountPath"] == "/tmp" and "emptyDir" in volumes.get(tmp["name"], {}),
            f"{cw}: /tmp is not a writable emptyDir (the root filesystem is read-only)",
        )
        # A probe on a named port resolves among this container's own ports only.
        ports = {p.get("name") for p in c.get("ports") or []}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str):
                fail.check(port in ports, f"{cw}: {probe} uses port {port!r}, not one of this container's ports")
    # The Secrets and ConfigMaps the pod mounts are rendered, with the keys it picks.
    for v in volumes.values():
        if "secret" in v:
            name = v["secret"]["secretName"]
            fail.check(find(objects, "Secret", name) is not None, f"{where}: volume {v['name']} needs Secret {name}")
        if "configMap" in v:
            name = v["configMap"]["name"]
            cm = find(objects, "ConfigMap", name)
            if fail.check(cm is not None, f"{where}: volume {v['name']} needs ConfigMap {name}"):
                for item in v["configMap"].get("items") or []:
                    fail.check(item["key"] in (cm.get("data") or {}), f"{where}: ConfigMap {name} has no key {item['key']}")


def pod_templates(objects) -> list[tuple[str, dict, dict]]:
    """(description, pod spec, pod labels) of every workload."""
    out = []
    for _, o in objects:
        if o["kind"] in WORKLOADS:
            t = o["spec"]["template"]
            out.append((f"{o['kind']} {o['metadata']['name']}", t["spec"], t["metadata"].get("labels") or {}))
    return out


def claim_names(objects, where: str) -> list[str]:
    """A StatefulSet's volumeClaimTemplates, which its containers mount like volumes."""
    for _, o in objects:
        if f"{o['kind']} {o['metadata']['name']}" == where and o["kind"] == "StatefulSet":
            return [c["metadata"]["name"] for c in o["spec"].get("volumeClaimTemplates") or []]
    return []


def container(pod_spec: dict, name: str) -> dict | None:
    return next((c for c in pod_spec["containers"] if c["name"] == name), None)


def check_services(objects, fail: Failures) -> None:
    pods = pod_templates(objects)
    for svc in by_kind(objects, "Service"):
        matched = [(w, spec) for w, spec, labels in pods if selects(svc["spec"].get("selector") or {}, labels)]
        if not fail.check(bool(matched), f"Service {svc['metadata']['name']} selects no pod of the chart"):
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for w, spec in matched:
                names = {p.get("name") for c in spec["containers"] for p in c.get("ports") or []}
                numbers = {p["containerPort"] for c in spec["containers"] for p in c.get("ports") or []}
                fail.check(
                    target in names or target in numbers,
                    f"Service {svc['metadata']['name']} targets port {target!r} that {w} does not expose",
                )
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        sel = pdb["spec"]["selector"]["matchLabels"]
        fail.check(any(selects(sel, labels) for _, _, labels in pods), f"PDB {pdb['metadata']['name']} selects no pod")
    for ing in by_kind(objects, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                backend = p["backend"]["service"]
                svc = find(objects, "Service", backend["name"])
                ok = svc is not None and backend["port"].get("number") in {sp["port"] for sp in svc["spec"]["ports"]}
                fail.check(ok, f"Ingress {ing['metadata']['name']} routes to {backend}, which no Service offers")


def check_platform(objects, values: dict, fail: Failures) -> None:
    fail.check(not any(o["metadata"]["name"].endswith("-sidecar") for _, o in objects), "sidecar objects rendered")
    control_name, gateway_name = f"{FULLNAME}-control", f"{FULLNAME}-gateway"
    sts = find(objects, "StatefulSet", control_name)
    gw = find(objects, "Deployment", gateway_name)
    if not (fail.check(sts is not None, f"no StatefulSet {control_name}") and fail.check(gw is not None, f"no Deployment {gateway_name}")):
        return
    control_labels = sts["spec"]["template"]["metadata"]["labels"]
    gateway_labels = gw["spec"]["template"]["metadata"]["labels"]
    fail.check(sts["spec"].get("replicas") == 1, "the control plane StatefulSet must have exactly one replica")
    claims = sts["spec"].get("volumeClaimTemplates") or []
    fail.check([c["metadata"]["name"] for c in claims] == ["data"], "the control plane has no PVC template 'data'")
    control = container(sts["spec"]["template"]["spec"], "control")
    gateway = container(gw["spec"]["template"]["spec"], "gateway")
    if not (fail.check(control is not None, "no container 'control'") and fail.check(gateway is not None, "no container 'gateway'")):
        return
    data = mount_for(control, "/data")
    fail.check(data is not None and data["name"] == "data" and data["mountPath"] == "/data", "the store (/data) is not on the PVC")

    # Command lines: the flags sluice control / sluice gateway take, pointing at each other.
    control_url = f"http://{control_name}.{NAMESPACE}.svc:8001"
    tokens = f"{FULLNAME}-tokens"
    cargs, gargs = control["args"], gateway["args"]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image_values = values.get("image") or {}
    image = f"{image_values.get('repository', 'sluice')}:{image_values.get('tag') or app_version}"
    fail.check(control["image"] == gateway["image"] == image, f"control/gateway image is not {image}")
    expect_control = {
        "--target": "kubernetes",
        "--control-host": "0.0.0.0",
        "--control-port": "8001",
        "--namespace": NAMESPACE,
        "--replica-image": (values.get("control") or {}).get("replicaImage") or image,
        "--image-pull-policy": "IfNotPresent",
        "--advertise-url": control_url,
        "--admin-token-file": "/etc/sluice/tokens/admin-token",
        "--gateway-token-file": "/etc/sluice/tokens/gateway-token",
        "--replica-token-secret": tokens,
        # The label the replica NetworkPolicy selects this release's replicas by.
        "--replica-label": f"app.kubernetes.io/instance={RELEASE}",
    }
    fail.check(cargs[:1] == ["control"], f"control container args start {cargs[:1]}, not ['control']")
    for flag, want in expect_control.items():
        got = arg_after(cargs, flag)
        fail.check(got == want, f"control: {flag} is {got!r}, want {want!r}")
    for what, c, probes in (
        ("control", control, {"readinessProbe": "/v1/health", "livenessProbe": "/v1/health"}),
        ("gateway", gateway, {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}),
    ):
        for probe, path in probes.items():
            got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
            fail.check(got == path, f"{what}: {probe} GETs {got!r}, want {path!r}")
    expect_gateway = {
        "--host": "0.0.0.0",
        "--port": "8000",
        "--control-url": control_url,
        "--control-token-file": "/etc/sluice/tokens/gateway-token",
        "--access-log": "true",
    }
    fail.check(gargs[:1] == ["gateway"], f"gateway container args start {gargs[:1]}, not ['gateway']")
    for flag, want in expect_gateway.items():
        got = arg_after(gargs, flag)
        fail.check(got == want, f"gateway: {flag} is {got!r}, want {want!r}")
    check_gateway_grpc(objects, values, gateway, gateway_labels, fail)
    for what, c, spec, flag in (
        ("control", control, sts["spec"]["template"]["spec"], "--admin-token-file"),
        ("control", control, sts["spec"]["template"]["spec"], "--gateway-token-file"),
        ("gateway", gateway, gw["spec"]["template"]["spec"], "--control-token-file"),
    ):
        path = arg_after(c["args"], flag) or ""
        m = mount_for(c, path)
        vol = next((v for v in spec.get("volumes") or [] if m and v["name"] == m["name"]), {})
        items = {i["path"]: i["key"] for i in (vol.get("secret") or {}).get("items") or []}
        rel = path[len(m["mountPath"]) :].lstrip("/") if m else ""
        fail.check(
            (vol.get("secret") or {}).get("secretName") == tokens and rel in items,
            f"{what}: {flag} {path} is not a key of Secret {tokens} mounted there",
        )
    gw_vol_keys = {i["key"] for v in gw["spec"]["template"]["spec"].get("volumes") or [] for i in (v.get("secret") or {}).get("items") or []}
    fail.check("admin-token" not in gw_vol_keys, "gateways must not get the admin token")

    # Tokens: both keys, random and long enough.
    secret = find(objects, "Secret", tokens)
    if fail.check(secret is not None, f"no Secret {tokens}"):
        for key, value in (("admin-token", "adminToken"), ("gateway-token", "gatewayToken")):
            raw = base64.b64decode((secret.get("data") or {}).get(key, ""))
            explicit = (values.get("tokens") or {}).get(value)
            if explicit:
                fail.check(raw == explicit.encode(), f"Secret {tokens}: {key} is not tokens.{value}")
            else:
                fail.check(len(raw) >= 43, f"Secret {tokens}: {key} has {len(raw)} characters, want at least 43")

    # RBAC: exactly what the Kubernetes target needs, namespaced, bound to the pod's account.
    fail.check(not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding"), "cluster-wide RBAC rendered")
    role = find(objects, "Role", control_name)
    if fail.check(role is not None, f"no Role {control_name}"):
        got: dict[tuple[str, str], set[str]] = {}
        for rule in role["rules"]:
            for group in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    got.setdefault((group, res), set()).update(rule.get("verbs") or [])
        for key in sorted(set(got) | set(CONTROL_RULES)):
            extra, missing = got.get(key, set()) - CONTROL_RULES.get(key, set()), CONTROL_RULES.get(key, set()) - got.get(key, set())
            what = f"{key[0] or 'core'}/{key[1]}"
            fail.check(not extra, f"Role {control_name} grants more than the target needs on {what}: {sorted(extra)}")
            fail.check(not missing, f"Role {control_name} lacks {sorted(missing)} on {what}")
    binding = find(objects, "RoleBinding", control_name)
    sa = sts["spec"]["template"]["spec"].get("serviceAccountName")
    if fail.check(binding is not None, f"no RoleBinding {control_name}"):
        fail.check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": control_name}, "RoleBinding binds another role")
        fail.check(any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in binding["subjects"]), "RoleBinding does not bind the control plane's ServiceAccount")
    fail.check(find(objects, "ServiceAccount", sa or "") is not None, f"ServiceAccount {sa} is not rendered")
    fail.check(sts["spec"]["template"]["spec"].get("automountServiceAccountToken") is True, "the control plane needs its API token mounted")
    fail.check(gw["spec"]["template"]["spec"].get("automountServiceAccountToken") is False, "gateways should not mount an API token")

    # Services and the gateway PDB.
    csvc = find(objects, "Service", control_name)
    fail.check(csvc is not None and [p["port"] for p in csvc["spec"]["ports"]] == [8001], f"Service {control_name} must offer 8001")
    fail.check(find(objects, "Service", gateway_name) is not None, f"no Service {gateway_name}")
    fail.check(
        any(selects(p["spec"]["selector"]["matchLabels"], gateway_labels) for p in by_kind(objects, "PodDisruptionBudget")),
        "no PodDisruptionBudget for the gateways",
    )

    # NetworkPolicies: replica pods reachable on 8000 only from gateways and the control plane;
    # the control plane from gateways and replicas.
    policies = by_kind(objects, "NetworkPolicy")

    def ingress_of(target_labels: dict) -> list[dict] | None:
        pol = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels") or {}, target_labels)]
        if not pol:
            return None
        return [rule for p in pol for rule in p["spec"].get("ingress") or []]

    replica_pod = {**REPLICA_LABELS, "sluice.dev/service": "any", "app.kubernetes.io/instance": RELEASE}
    other_release = {**replica_pod, "app.kubernetes.io/instance": "another-release"}
    fail.check(ingress_of(other_release) is None, "the replica NetworkPolicy also selects another release's replicas")
    rules = ingress_of(replica_pod)
    if fail.check(rules is not None, f"no NetworkPolicy selects replica pods ({REPLICA_LABELS})"):
        for rule in rules:
            peers = rule.get("from") or []
            fail.check(bool(peers), "a replica NetworkPolicy rule admits every source")
            ports = [p.get("port") for p in rule.get("ports") or []]
            fail.check(ports == [8000], f"a replica NetworkPolicy rule opens ports {ports}, want [8000]")
            for peer in peers:
                sel = (peer.get("podSelector") or {}).get("matchLabels") or {}
                fail.check(
                    "namespaceSelector" not in peer and "ipBlock" not in peer and (selects(sel, gateway_labels) or selects(sel, control_labels)),
                    f"replica NetworkPolicy admits {peer}, which is neither the gateways nor the control plane",
                )
        admitted = [(p.get("podSelector") or {}).get("matchLabels") or {} for r in rules for p in r.get("from") or []]
        fail.check(any(selects(s, gateway_labels) for s in admitted), "the replica NetworkPolicy does not admit the gateways")
        fail.check(any(selects(s, control_labels) for s in admitted), "the replica NetworkPolicy does not admit the control plane")
    rules = ingress_of(control_labels)
    if fail.check(rules is not None, "no NetworkPolicy selects the control plane"):
        admitted = [(p.get("podSelector") or {}).get("matchLabels") or {} for r in rules for p in r.get("from") or []]
        fail.check(any(selects(s, gateway_labels) for s in admitted), "the control plane NetworkPolicy does not admit the gateways")
        fail.check(any(selects(s, replica_pod) for s in admitted), "the control plane NetworkPolicy does not admit replicas (artifact downloads)")
        fail.check(all(r.get("from") for r in rules), "a control plane NetworkPolicy rule admits every source")


def check_gateway_grpc(objects, values: dict, gateway: dict, gateway_labels: dict, fail: Failures) -> None:
    """gateway.grpc.enabled: the gateway serves gRPC on the port its container names `grpc`, the
    Service forwards to it and the NetworkPolicy lets callers reach it; otherwise none of that."""
    grpc = (values.get("gateway") or {}).get("grpc") or {}
    flag = arg_after(gateway["args"], "--grpc-port")
    named = next((p for p in gateway.get("ports") or [] if p.get("name") == "grpc"), None)
    svc = find(objects, "Service", f"{FULLNAME}-gateway") or {"spec": {}}
    svc_port = next((p for p in svc["spec"].get("ports") or [] if p.get("name") == "grpc"), None)
    policies = [p for p in by_kind(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"].get("matchLabels") or {}, gateway_labels)]
    allowed = {port.get("port") for p in policies for rule in p["spec"].get("ingress") or [] for port in rule.get("ports") or []}
    if not grpc.get("enabled"):
        fail.check(flag is None and named is None and svc_port is None, "gRPC rendered while gateway.grpc.enabled is off")
        return
    port = grpc.get("port", 8003)
    fail.check(flag == str(port), f"gateway: --grpc-port is {flag!r}, want {str(port)!r}")
    fail.check(named is not None and named.get("containerPort") == port, f"gateway: no container port 'grpc' {port}")
    want_svc = (values.get("gateway") or {}).get("service", {}).get("grpcPort", 8003)
    fail.check(svc_port is not None and svc_port.get("port") == want_svc and svc_port.get("targetPort") == "grpc", f"gateway Service: no port 'grpc' {want_svc} -> grpc")
    fail.check(bool(policies) and port in allowed, f"the gateway NetworkPolicy does not admit gRPC port {port}")


def check_sidecar(objects, values: dict, fail: Failures) -> None:
    for kind in ("StatefulSet", "Role", "RoleBinding", "ServiceAccount"):
        fail.check(not by_kind(objects, kind), f"sidecar layout renders a {kind}")
    fail.check(find(objects, "Deployment", f"{FULLNAME}-gateway") is None, "sidecar layout renders the gateway tier")
    fail.check(find(objects, "Secret", f"{FULLNAME}-tokens") is None, "sidecar layout renders the control plane's tokens")
    name = f"{FULLNAME}-sidecar"
    dep = find(objects, "Deployment", name)
    if not fail.check(dep is not None, f"no Deployment {name}"):
        return
    spec = dep["spec"]["template"]["spec"]
    fail.check([c["name"] for c in spec["containers"]] == ["serve", "gateway"], "the sidecar pod must run containers serve and gateway")
    serve, gateway = container(spec, "serve"), container(spec, "gateway")
    if serve is None or gateway is None:
        return
    volumes = {v["name"]: v for v in spec.get("volumes") or []}

    # One emptyDir, mounted in both, holds the socket serve listens on.
    socket = arg_after(serve["args"], "--unix-socket") or ""
    fail.check(socket == "/var/run/sluice/serve.sock", f"serve --unix-socket is {socket!r}")
    sm, gm = mount_for(serve, socket), mount_for(gateway, socket)
    shared = sm is not None and gm is not None and sm["name"] == gm["name"] and sm["mountPath"] == gm["mountPath"] == "/var/run/sluice"
    fail.check(shared, "serve and gateway do not share /var/run/sluice")
    fail.check(sm is not None and "emptyDir" in volumes.get(sm["name"], {}), "the socket directory is not an emptyDir")
    fail.check(arg_after(serve["args"], "--host") == "127.0.0.1", "serve must listen on loopback only")
    fail.check(arg_after(gateway["args"], "--host") == "0.0.0.0", "the sidecar gateway must listen on all addresses")
    fail.check("--control-url" not in gateway["args"], "the sidecar gateway must not follow a control plane")

    # The routing file: mounted from the ConfigMap, routing to the socket, with the models served.
    routes_path = arg_after(gateway["args"], "--routes-file") or ""
    m = mount_for(gateway, routes_path)
    vol = volumes.get(m["name"], {}) if m else {}
    cm_name = (vol.get("configMap") or {}).get("name")
    item = next((i["key"] for i in (vol.get("configMap") or {}).get("items") or [] if i["path"] == routes_path[len(m["mountPath"]) :].lstrip("/")), None) if m else None
    cm = find(objects, "ConfigMap", cm_name or "")
    if not fail.check(cm is not None and item in (cm.get("data") or {}), f"--routes-file {routes_path!r} is not a key of a rendered ConfigMap"):
        return
    try:
        routes = json.loads(cm["data"][item])
    except json.JSONDecodeError as e:
        fail.add(f"ConfigMap {cm_name} {item} is not JSON: {e}")
        return
    fail.check(set(routes) == {"generation", "services", "endpoints", "jwks"}, f"routes.json has fields {sorted(routes)}")
    fail.check(routes.get("jwks") == {"keys": []} and routes.get("endpoints") == [], "routes.json: endpoints/jwks")
    services = routes.get("services") or []
    if not fail.check(len(services) == 1, "routes.json must hold one service"):
        return
    svc = services[0]
    want_service = (values.get("sidecar") or {}).get("serviceName", "model")
    fail.check(svc.get("name") == want_service, f"routes.json service is {svc.get('name')!r}, want {want_service!r}")
    fail.check(svc.get("replicas") == [f"unix:{socket}"], f"routes.json replicas {svc.get('replicas')} are not the socket")
    model_args = [a for a in serve["args"][1 : serve["args"].index("--host")]]
    fail.check(serve["args"][0] == "serve" and bool(model_args), "serve has no models")
    stems = [Path(a).name.rsplit(".", 1)[0] for a in model_args]
    fail.check(svc.get("models") == stems, f"routes.json models {svc.get('models')} are not what serve loads ({stems})")

    auth = svc.get("auth") or {}
    secret = find(objects, "Secret", f"{FULLNAME}-keys")
    if ((values.get("sidecar") or {}).get("auth") or {}).get("enabled", True):
        fail.check(auth.get("mode") == "keys", f"routes.json auth is {auth}, want keys")
        if fail.check(secret is not None, f"no Secret {FULLNAME}-keys"):
            for key, field in (("primary-key", "primary"), ("secondary-key", "secondary")):
                raw = base64.b64decode((secret.get("data") or {}).get(key, ""))
                explicit = ((values.get("sidecar") or {}).get("auth") or {}).get(field + "Key")
                if explicit:
                    fail.check(raw == explicit.encode(), f"{key} is not sidecar.auth.{field}Key")
                else:
                    fail.check(len(raw) >= 43, f"{key} has {len(raw)} characters")
                fail.check(auth.get(field) == hashlib.sha256(raw).hexdigest(), f"routes.json {field} is not the SHA-256 of {key}")
            fail.check(b"" not in [base64.b64decode(v) for v in secret["data"].values()], "an empty key")
    else:
        fail.check(auth == {"mode": "none"}, f"routes.json auth is {auth}, want none")
        fail.check(secret is None, "keys Secret rendered with auth disabled")
    fail.check(
        all(raw not in cm["data"][item] for raw in (base64.b64decode(v).decode() for v in ((secret or {}).get("data") or {}).values())),
        "a key itself (not its digest) is in the ConfigMap",
    )

    # GPU: gpu_cores in the deployment config means a GPU limit on serve.
    gpus = ((values.get("sidecar") or {}).get("deployConfig") or {}).get("gpu_cores", 0)
    limit = ((serve.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu")
    fail.check((int(limit) if limit is not None else 0) == gpus, f"serve nvidia.com/gpu limit {limit}, gpu_cores {gpus}")
    fail.check("nvidia.com/gpu" not in ((gateway.get("resources") or {}).get("limits") or {}), "the gateway must not ask for a GPU")


def run_scenario(name: str, parts, root: Path, fail: Failures, renders: dict) -> None:
    fail.scenario = name
    values = scenario_values(parts)
    before = len(fail.items)
    lint(values, fail)
    objects = render(values, root / name.replace("+", "-"), fail)
    if objects is not None:
        try:
            check_objects(objects, values, root / name.replace("+", "-"), fail)
        except Exception as e:  # a manifest shaped unlike any the checks expect
            where = traceback.extract_tb(e.__traceback__)[-1]
            fail.add(f"invariant checks crashed on the rendered objects: {type(e).__name__}: {e} (check_chart.py:{where.lineno})")
        renders[name] = objects
    status = "ok  " if len(fail.items) == before else "FAIL"
    print(f"{status} {name:15} {len(objects or []):2} objects: lint, render, kubernetes-validate {'/'.join(KUBE_VERSIONS)}, invariants")


def check_objects(objects, values: dict, out: Path, fail: Failures) -> None:
    validate(out, fail)
    for where, spec, _ in pod_templates(objects):
        check_pod(where, spec, claim_names(objects, where), objects, fail)
    check_services(objects, fail)
    layout = values.get("layout", "platform")
    if layout == "sidecar":
        check_sidecar(objects, values, fail)
    else:
        check_platform(objects, values, fail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the rendered manifests here and keep them")
    args = parser.parse_args()
    start = time.monotonic()
    root = args.keep or Path(tempfile.mkdtemp(prefix="sluice-chart-"))
    fail = Failures()
    renders: dict = {}
    for name, parts in SCENARIOS.items():
        run_scenario(name, parts, root, fail, renders)
    fail.scenario = "refused values"
    for values, message in REFUSED:
        try:
            helm.Chart.load(CHART).render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            fail.add(f"renders {values}; it should fail with {message!r}")
        except Exception as e:
            fail.check(message in str(e), f"{values} fails with {e}, not {message!r}")
    print(f"{'ok  ' if not any(i.startswith('[refused') for i in fail.items) else 'FAIL'} refused values  {len(REFUSED)} cases render with the chart's own error")
    # values-gpu.yaml leaves the platform tier as it is: same control plane and gateways.
    fail.scenario = "gpu"
    if "default" in renders and "gpu" in renders:
        for kind, obj in (("StatefulSet", f"{FULLNAME}-control"), ("Deployment", f"{FULLNAME}-gateway")):
            fail.check(find(renders["default"], kind, obj) == find(renders["gpu"], kind, obj), f"values-gpu.yaml changes {kind} {obj}")
    if fail.items:
        print(f"\nchart check failed ({len(fail.items)}); manifests in {root}:", file=sys.stderr)
        for item in fail.items:
            print(f"  {item}", file=sys.stderr)
        return 1
    if not args.keep:
        for p in sorted(root.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        root.rmdir()
    print(f"chart ok: {len(SCENARIOS)} scenarios in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
