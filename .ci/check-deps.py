#!/usr/bin/env python3
"""Fails when a crate depends on what the architecture keeps away from it (ARCHITECTURE.md):

- the control plane on the gateway, the HTTP/1.1 layer or any engine;
- the gateway on the model side (core, runtime, a backend) or any engine;
- the routing crate on anything with I/O;
- the gRPC translation layer (sluice-grpc) on the model side or the gateway, which both use it;
- the control plane on a deploy target's client (kube, the Docker target): targets plug in from
  the binary through `sluice_control::target::ReplicaTarget`;
- a deploy target on the model side, the gateway or any engine.

Edges are read from `cargo metadata` (normal dependencies, followed transitively, all features on)
so an indirect path through another crate counts too.
"""
import json
import subprocess
import sys

ENGINES = {"sluice-backend-ort", "sluice-backend-torch", "sluice-backend-plugin", "ort", "tch", "libloading"}
FORBIDDEN = {
    "sluice-control": ENGINES
    | {"sluice-gateway", "sluice-http1", "sluice-server", "sluice-runtime", "sluice-serving"}
    | {"kube", "k8s-openapi", "sluice-target-kubernetes", "sluice-target-docker"},
    "sluice-gateway": ENGINES | {"sluice-core", "sluice-runtime", "sluice-server", "sluice-serving", "sluice-control"},
    "sluice-routing": ENGINES | {"tokio", "reqwest", "sluice-http1", "sluice-gateway", "sluice-control"},
    # The OIP gRPC translation layer: both the scoring server and the gateway plug into it.
    "sluice-grpc": ENGINES
    | {"sluice-core", "sluice-runtime", "sluice-server", "sluice-serving", "sluice-gateway", "sluice-control"},
}
for target in ("sluice-target-kubernetes", "sluice-target-docker"):
    FORBIDDEN[target] = ENGINES | {"sluice-gateway", "sluice-server", "sluice-runtime", "sluice-serving"}

meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
names = {p["id"]: p["name"] for p in meta["packages"]}
normal = {}
for node in meta["resolve"]["nodes"]:
    normal[node["id"]] = [
        d["pkg"] for d in node["deps"] if any(k["kind"] is None for k in d["dep_kinds"])
    ]


def path_to(start, banned):
    """A dependency path from `start` to a banned crate, or None."""
    seen, stack = {start}, [(start, [names[start]])]
    while stack:
        node, path = stack.pop()
        for dep in normal.get(node, []):
            if dep in seen:
                continue
            seen.add(dep)
            route = path + [names[dep]]
            if names[dep] in banned:
                return route
            stack.append((dep, route))
    return None


failed = False
for crate, banned in FORBIDDEN.items():
    ids = [i for i, n in names.items() if n == crate and i in normal]
    if not ids:
        print(f"check-deps: crate {crate} not found in the workspace", file=sys.stderr)
        failed = True
        continue
    route = path_to(ids[0], banned)
    if route:
        print(f"check-deps: {crate} must not depend on {route[-1]}: {' -> '.join(route)}", file=sys.stderr)
        failed = True
if failed:
    sys.exit(1)
print(f"check-deps: ok ({', '.join(FORBIDDEN)} keep their walls)")
