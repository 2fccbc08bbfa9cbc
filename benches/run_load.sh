#!/usr/bin/env bash
# Load harness: Sluice against the FastAPI peer and a bare hyper server, in one run, on the
# same machine, with the same load generator and request bodies (the shared peer harness in
# ../shared/bench: wrk -t1, keep-alive, batch 1 per request, 127.0.0.1 only, bounded durations).
#
#   benches/run_load.sh                          # full: ~20 min; appends a section to benches/RESULTS.md
#   DUR=3 RUNS=1 CONCS="1 64" benches/run_load.sh   # quick look
#
# Knobs: DUR (s per point, 10) RUNS (passes, 3) CONCS ("1 8 64") MODELS ("mlp-small mlp-large")
#        PEERS ("fastapi-1w fastapi-2w pytriton") SHARED_BENCH (path of shared/bench) SKIP_INSTALL=1
# Every server runs in its own session and is stopped by its process-group id by the peer harness.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -x "$SHARED/run_peers.sh" ] || { echo "peer harness not found at $SHARED (set SHARED_BENCH)" >&2; exit 1; }
export DUR=${DUR:-10} RUNS=${RUNS:-3} CONCS=${CONCS:-"1 8 64"} MODELS=${MODELS:-"mlp-small mlp-large"}
export TAG=${TAG:-sluice-$(date -u +%Y-%m-%dT%H%M)}
PEERS=${PEERS:-"fastapi-1w fastapi-2w pytriton"}
WORK=$ROOT/benches/work
# The peer harness keeps venvs, logs and results beside itself: run it from a writable copy.
export BENCH_DIR=$WORK/peer-bench
mkdir -p "$WORK"

echo "[run_load] building sluice (release)"
(cd "$ROOT" && cargo build --release -q)
export SLUICE_HOME=$WORK/home SLUICE_LOG=warn
# The library the tests provisioned (target/test-runtime), for the version sluice pins.
ORT_VERSION=$(sed -n 's/^pub const ORT_VERSION: &str = "\(.*\)";/\1/p' "$ROOT/crates/backend-ort/src/provision.rs")
ORT_TEST_LIB=$ROOT/target/test-runtime/runtimes/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION
if [ -z "${SLUICE_ORT_LIB:-}" ] && [ -f "$ORT_TEST_LIB" ]; then
  export SLUICE_ORT_LIB=$ORT_TEST_LIB
fi
# `sluice serve` fetches ONNX Runtime into SLUICE_HOME on first use when SLUICE_ORT_LIB is unset.
SLUICE_CMD="$ROOT/target/release/sluice serve $ROOT/models/mlp-small.onnx $ROOT/models/mlp-large.onnx"

echo "[run_load] peers + sluice (tag $TAG)"
SERVERS="$PEERS custom" CUSTOM_CMD="$SLUICE_CMD --port 8150" CUSTOM_PORT=8150 CUSTOM_PROTO=v2 "$SHARED/run_peers.sh"

# Batching on and off compared by the same method in alternating passes (on, off, on, off, ...),
# so that the machine's drift over the run falls on both alike; the c=1 latency target is judged
# on these pairs rather than against the peer harness's sluice row, measured minutes apart.
echo "[run_load] sluice with batching on (sluice-batch) and off (sluice-nobatch, --max-batch-size 1), alternating"
AB_PORT=8151
ab_pass() { # server-label run extra-flags...
  local label=$1 run=$2; shift 2
  setsid $SLUICE_CMD --port $AB_PORT "$@" > "$WORK/$label.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$AB_PORT/v2/health/ready" && break; sleep 0.2; done
  for m in $MODELS; do
    body=$BENCH_DIR/bodies/v2-$m.json url=http://127.0.0.1:$AB_PORT/v2/models/$m/infer
    BODY_FILE=$body wrk -t1 -c8 -d3s --timeout 10s -s "$BENCH_DIR/post.lua" "$url" > /dev/null 2>&1
    for c in $CONCS; do
      BODY_FILE=$body wrk -t1 -c"$c" -d"${DUR}"s --timeout 10s --latency -s "$BENCH_DIR/post.lua" "$url" > "$WORK/wrk.out" 2>&1
      (cd "$BENCH_DIR" && python3 benchlib.py wrkline "$WORK/wrk.out" server="$label" model="$m" conc="$c" run="$run" \
        cpu_s=0 load1_before="$(cut -d' ' -f1 /proc/loadavg)") >> "$BENCH_DIR/results/raw-$TAG.jsonl"
    done
  done
  kill -TERM -- "-$pid" 2> /dev/null || kill -TERM "$pid"; wait "$pid" 2> /dev/null || true
}
for run in $(seq 1 "$RUNS"); do
  ab_pass sluice-batch "$run"
  ab_pass sluice-nobatch "$run" --max-batch-size 1
done

echo "[run_load] bare hyper floor (same bodies, same answers, no model)"
CONFIGS="hyper-bare" "$BENCH_DIR/floor/run_floor.sh"

python3 "$ROOT/benches/report.py" \
  "$BENCH_DIR/results/raw-$TAG.jsonl" "$BENCH_DIR/floor/results/raw-floor-$TAG.jsonl" \
  "$BENCH_DIR/results/versions-$TAG.txt" "$BENCH_DIR/results/native-$TAG.jsonl" >> "$ROOT/benches/RESULTS.md"
echo "[run_load] appended to benches/RESULTS.md"
