#!/usr/bin/env bash
# GPU check: ONNX Runtime's CUDA execution provider and libtorch on CUDA, against the CPU.
#
#   scripts/gpu-check.sh prepare [KIT]   # with network: wheels and vendored crates into KIT
#   scripts/gpu-check.sh run [KIT]       # on a machine with an NVIDIA GPU, offline
#
# KIT defaults to target/gpu-kit. `prepare` downloads onnxruntime-gpu ORT_GPU_VERSION and torch
# 2.13.0 with their nvidia-* CUDA wheels (several GB) and vendors every crate, so `run` needs no
# network. ORT_GPU_VERSION defaults to 1.31.1: the CPU library sluice pins is 1.32.0
# (crates/backend-ort/src/provision.rs), but PyPI has no onnxruntime-gpu 1.32.0 yet (1.31.1 is the
# newest there); 1.31.x serves the ONNX Runtime API sluice is built for (ort's api-31). Set it to
# the pinned version once that GPU wheel exists.
# `run` unpacks the libraries, builds sluice with --features cuda,torch offline, serves the
# bundled models (mlp-small, mlp-large as ONNX; mlp-small as TorchScript) on cpu and on cuda:0,
# compares the outputs of the same inputs, measures rows/s at batch 1 and 64 over keep-alive HTTP,
# prints a table and appends it to benches/RESULTS.md. Every process it starts is stopped by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-}
KIT=${2:-$ROOT/target/gpu-kit}
PY=${SLUICE_PYTHON:-python3}
ITERS=${ITERS:-200}
ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}

prepare() {
  mkdir -p "$KIT/wheels"
  "$PY" -m pip download --only-binary=:all: -d "$KIT/wheels" "onnxruntime-gpu==$ORT_GPU_VERSION" torch==2.13.0
  (cd "$ROOT" && cargo vendor --locked "$KIT/vendor" > "$KIT/cargo-config.toml")
  echo "gpu-check: kit ready in $KIT (copy it with the checkout to the GPU machine)"
}

unpack() {
  # ONNX Runtime GPU library, libtorch with CUDA, and every CUDA library the nvidia-* wheels carry.
  "$PY" - "$KIT" <<'PYEOF'
import glob, os, shutil, sys, zipfile
kit = sys.argv[1]
ort, torch = os.path.join(kit, "ort"), os.path.join(kit, "libtorch")
for d in (ort, os.path.join(torch, "lib")):
    os.makedirs(d, exist_ok=True)
for wheel in glob.glob(os.path.join(kit, "wheels", "*.whl")):
    base = os.path.basename(wheel)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.endswith("/"):
                continue
            if base.startswith("onnxruntime_gpu") and "/capi/libonnxruntime" in name:
                target = os.path.join(ort, os.path.basename(name))
            elif base.startswith("torch-") and name.startswith("torch/include/"):
                target = os.path.join(torch, "include", name[len("torch/include/"):])
            elif base.startswith("torch-") and name.startswith("torch/lib/") and ".so" in name:
                target = os.path.join(torch, "lib", os.path.basename(name))
            elif base.startswith("nvidia_") and "/lib/" in name and ".so" in name:
                # Both ONNX Runtime and libtorch find the CUDA libraries next to libtorch's.
                target = os.path.join(torch, "lib", os.path.basename(name))
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
PYEOF
}

run() {
  command -v nvidia-smi > /dev/null && nvidia-smi -L || { echo "gpu-check: no NVIDIA GPU (nvidia-smi not found)" >&2; exit 1; }
  [ -d "$KIT/wheels" ] || { echo "gpu-check: no kit in $KIT; run '$0 prepare' where there is network" >&2; exit 1; }
  unpack
  export LIBTORCH=$KIT/libtorch LD_LIBRARY_PATH=$KIT/libtorch/lib:$KIT/ort${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  local ort_lib
  ort_lib=$(ls "$KIT"/ort/libonnxruntime.so.* | head -1)
  (cd "$ROOT" && cargo build --release --offline --config "$KIT/cargo-config.toml" -p sluice-cli --features cuda,torch)
  local work=$ROOT/target/gpu-check
  rm -rf "$work"
  mkdir -p "$work"
  export SLUICE_HOME=$work/home SLUICE_LOG=warn SLUICE_ORT_LIB=$ort_lib
  local sluice=$ROOT/target/release/sluice
  $sluice model register mlp-small "$ROOT/models/mlp-small.onnx" > /dev/null
  $sluice model register mlp-large "$ROOT/models/mlp-large.onnx" > /dev/null
  $sluice model register mlp-small-ts "$ROOT/models/mlp-small.pt" --config "$ROOT/models/mlp-small.pt.json" > /dev/null
  echo '{}' > "$work/cpu.json"
  echo '{"mlp-small": {"device": "cuda:0"}, "mlp-large": {"device": "cuda:0"}, "mlp-small-ts": {"device": "cuda:0"}}' > "$work/gpu.json"
  local pids=()
  trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2> /dev/null || true; done' EXIT
  for device in cpu gpu; do
    local port=$((18700 + ${#pids[@]}))
    $sluice serve mlp-small mlp-large mlp-small-ts --port $port --instances 1 --model-config "$work/$device.json" \
      > "$work/$device.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 300); do curl -sf -o /dev/null "http://127.0.0.1:$port/v2/health/ready" && break; sleep 0.2; done
  done
  "$PY" - "$ITERS" "$ROOT/benches/RESULTS.md" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" <<'PYEOF'
import http.client, json, random, sys, time
iters, results, gpu = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ports = {"cpu": 18700, "gpu": 18701}
models = {"mlp-small": 64, "mlp-large": 784, "mlp-small-ts": 64}
def post(conn, model, body):
    conn.request("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    r = conn.getresponse(); data = r.read()
    if r.status != 200:
        sys.exit(f"{model}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)
rows = ["| model | batch | max abs diff gpu vs cpu | cpu rows/s | gpu rows/s |", "|---|---|---|---|---|"]
rng = random.Random(7)
for model, width in models.items():
    for batch in (1, 64):
        x = [rng.uniform(-1, 1) for _ in range(batch * width)]
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [batch, width], "data": x}]})
        out, rate = {}, {}
        for dev, port in ports.items():
            conn = http.client.HTTPConnection("127.0.0.1", port)
            out[dev] = post(conn, model, body)["outputs"][0]["data"]
            for _ in range(10):
                post(conn, model, body)
            start = time.perf_counter()
            for _ in range(iters):
                post(conn, model, body)
            rate[dev] = iters * batch / (time.perf_counter() - start)
        diff = max(abs(a - b) for a, b in zip(out["cpu"], out["gpu"]))
        rows.append(f"| {model} | {batch} | {diff:.2e} | {rate['cpu']:.0f} | {rate['gpu']:.0f} |")
table = "\n".join(rows)
print(table)
with open(results, "a") as f:
    f.write(f"\n## GPU check ({gpu}) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            "scripts/gpu-check.sh: the same inputs through `sluice serve` on cpu and on cuda:0 "
            "(one instance each, HTTP keep-alive, sequential requests, JSON bodies).\n\n" + table + "\n")
PYEOF
}

case "$MODE" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run [KIT]" >&2; exit 64 ;;
esac
