"""Markdown section for one benches/grpc_vs_http.sh run: per target, model and connection count,
the median over rounds of each transport's requests/s and latency, and gRPC's ratio to each HTTP
form. Usage: report.py RAW.jsonl SETTINGS"""
import datetime
import json
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r["round"] != "0"]
points = defaultdict(list)
for r in rows:
    rps = r.get("rps") or r["requests"] / (r["duration_us"] / 1e6)
    cpu_us = float(r.get("server_cpu_s", "nan")) * 1e6 / max(r["requests"], 1)
    points[(r["target"], r["model"], int(r["conc"]), r["transport"])].append(
        (rps, r["lat_p50_us"] / 1000, r["lat_p99_us"] / 1000, r["errors"], cpu_us)
    )


def med(key, i):
    return statistics.median(v[i] for v in points[key])


cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True)
wrk = subprocess.run(["sh", "-c", "wrk -v 2>&1 | head -1"], capture_output=True, text=True).stdout.strip()
loads = sorted(float(r["load1"]) for r in rows)
out = [
    f"## OIP over gRPC against HTTP (benches/grpc_vs_http.sh), {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
    "",
    f"- host: {platform.system()} {platform.release()}; {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cpus;{cpu.stdout.rstrip()}",
    f"- settings: {sys.argv[2]}; load generators: {wrk} (-t1, keep-alive) for HTTP, "
    "`grpc_load` (crates/grpc/examples, tonic, one runtime thread, one HTTP/2 connection per connection) for gRPC",
    f"- load average (1 min) before each point: median {statistics.median(loads):.2f}, min {loads[0]:.2f}, max {loads[-1]:.2f}",
    "- `sluice serve mlp-small.onnx mlp-large.onnx --grpc-port` (defaults); `gateway` = the same server behind "
    "`sluice gateway --grpc-port` (routes file, auth off, access log off). The three transports of each point ran back to back.",
    "",
    "Medians over rounds; rps = requests/s; latency in ms (as each load generator measures it); server CPU = user + "
    "system CPU of the server processes (the replica, plus the gateway for `gateway` rows) per request, in microseconds. "
    "The transports differ in more than the server: wrk replays one fixed byte buffer per request, while grpc_load "
    "encodes each call (protobuf, HPACK, HTTP/2 framing) in a tonic client that shares the 2 cores with the servers, so "
    "requests/s and latency bound gRPC's cost from above; server CPU per request is the fairer comparison.",
    "",
    "| target | model | conc | http-json rps | http-binary rps | grpc rps | grpc / json | grpc / binary | p50 json / binary / grpc | p99 json / binary / grpc | server CPU us/req json / binary / grpc | errors |",
    "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|",
]
for target in ("serve", "gateway"):
    for model in sorted({k[1] for k in points}):
        for conc in sorted({k[2] for k in points}):
            keys = [(target, model, conc, t) for t in ("http-json", "http-binary", "grpc")]
            if not all(k in points for k in keys):
                continue
            rps = [med(k, 0) for k in keys]
            p50 = " / ".join(f"{med(k, 1):.3f}" for k in keys)
            p99 = " / ".join(f"{med(k, 2):.3f}" for k in keys)
            errors = sum(v[3] for k in keys for v in points[k])
            cpu = " / ".join(f"{med(k, 4):.0f}" for k in keys)
            out.append(
                f"| {target} | {model} | {conc} | {rps[0]:.0f} | {rps[1]:.0f} | {rps[2]:.0f} | "
                f"{rps[2] / rps[0]:.2f}x | {rps[2] / rps[1]:.2f}x | {p50} | {p99} | {cpu} | {errors} |"
            )
print("\n".join(out))
