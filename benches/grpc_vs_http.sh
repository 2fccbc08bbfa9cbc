#!/usr/bin/env bash
# OIP over gRPC against OIP over HTTP, in one run (issue 16): the same release `sluice serve`
# (mlp-small and mlp-large), directly and through a `sluice gateway` (routes file, auth off), each
# point measured three ways back to back, so the machine's drift falls on all three alike:
#   http-json    wrk -t1, the harness's v2 JSON body (../shared/bench/bodies/v2-MODEL.json)
#   http-binary  wrk -t1, the same tensor in the binary tensor extension (JSON header + raw bytes)
#   grpc         grpc_load (crates/grpc/examples), one thread, ModelInfer with raw_input_contents,
#                one HTTP/2 connection per "connection", one call in flight on each
# All on 127.0.0.1, bounded durations, processes stopped by their process-group id.
#
#   benches/grpc_vs_http.sh                                    # ~6 min; appends to benches/RESULTS.md
#   DUR=3 ROUNDS=1 CONCS="1 64" TARGETS=serve benches/grpc_vs_http.sh   # quick look, prints only
#
# Knobs: DUR (s per point, 5) ROUNDS (3) CONCS ("1 8 64") MODELS ("mlp-small mlp-large")
#        TARGETS ("serve gateway") BODIES (folder of v2-MODEL.json) APPEND (1: append to RESULTS.md)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-5} ROUNDS=${ROUNDS:-3} CONCS=${CONCS:-"1 8 64"} MODELS=${MODELS:-"mlp-small mlp-large"}
TARGETS=${TARGETS:-"serve gateway"} BODIES=${BODIES:-$ROOT/../shared/bench/bodies}
APPEND=${APPEND:-1}
WORK=$ROOT/benches/work/grpc
TAG=grpc-$(date -u +%Y-%m-%dT%H%M%S)
RAW=$WORK/raw-$TAG.jsonl
mkdir -p "$WORK"
command -v wrk > /dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }

echo "[grpc_vs_http] building sluice and grpc_load (release)"
(cd "$ROOT" && cargo build --release -q -p sluice-cli && cargo build --release -q -p sluice-grpc --example grpc_load)
SLUICE=$ROOT/target/release/sluice LOAD=$ROOT/target/release/examples/grpc_load
export SLUICE_HOME=$WORK/home SLUICE_LOG=warn
ORT_VERSION=$(sed -n 's/^pub const ORT_VERSION: &str = "\(.*\)";/\1/p' "$ROOT/crates/backend-ort/src/provision.rs")
ORT_TEST_LIB=$ROOT/target/test-runtime/runtimes/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION
if [ -z "${SLUICE_ORT_LIB:-}" ] && [ -f "$ORT_TEST_LIB" ]; then export SLUICE_ORT_LIB=$ORT_TEST_LIB; fi

for m in $MODELS; do
  python3 "$ROOT/benches/grpc/binary_body.py" "$BODIES/v2-$m.json" "$WORK/bin-$m.body" > "$WORK/bin-$m.len"
done

PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2> /dev/null || true; done; wait 2> /dev/null || true; }
trap stop_all EXIT
# start LABEL CMD...: runs CMD in its own session, waits for its banner, sets HTTP and GRPC.
start() {
  local label=$1; shift
  setsid "$@" > "$WORK/$label.out" 2> "$WORK/$label.err" &
  PIDS+=($!)
  for _ in $(seq 1 300); do grep -q "OIP gRPC on" "$WORK/$label.out" 2> /dev/null && break; sleep 0.1; done
  HTTP=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/$label.out" | head -1)
  GRPC=$(grep -o 'OIP gRPC on 127.0.0.1:[0-9]*' "$WORK/$label.out" | head -1 | awk '{print $NF}')
  [ -n "$HTTP" ] && [ -n "$GRPC" ] || { echo "$label did not start:"; cat "$WORK/$label.err"; exit 1; }
}

start serve "$SLUICE" serve "$ROOT/models/mlp-small.onnx" "$ROOT/models/mlp-large.onnx" --port 0 --grpc-port 0
SERVE_HTTP=$HTTP SERVE_GRPC=$GRPC SERVE_PID=${PIDS[-1]}
if [[ " $TARGETS " == *" gateway "* ]]; then
  cat > "$WORK/routes.json" << JSON
{"generation": 1, "endpoints": [], "jwks": {"keys": []}, "services": [
  {"name": "mlp-small", "models": ["mlp-small"], "replicas": ["${SERVE_HTTP#http://}"], "auth": {"mode": "none"}},
  {"name": "mlp-large", "models": ["mlp-large"], "replicas": ["${SERVE_HTTP#http://}"], "auth": {"mode": "none"}}]}
JSON
  start gateway "$SLUICE" gateway --port 0 --grpc-port 0 --routes-file "$WORK/routes.json" --access-log false
  GATEWAY_HTTP=$HTTP GATEWAY_GRPC=$GRPC GATEWAY_PID=${PIDS[-1]}
fi

# CPU seconds (user + system, all threads) the given processes have used so far.
cpu_of() {
  local ticks=0 p
  for p in "$@"; do ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  python3 -c "print($ticks / $(getconf CLK_TCK))"
}

# point TARGET MODEL CONC ROUND TRANSPORT: one measurement, appended to $RAW.
point() {
  local target=$1 m=$2 c=$3 round=$4 transport=$5 http grpc line pids cpu_before
  if [ "$target" = serve ]; then
    http=$SERVE_HTTP grpc=$SERVE_GRPC pids="$SERVE_PID"
  else
    http=$GATEWAY_HTTP grpc=$GATEWAY_GRPC pids="$SERVE_PID $GATEWAY_PID"
  fi
  # The server side's CPU (the replica, and the gateway in front of it) per point: what each
  # transport costs the servers, apart from what its load generator costs.
  cpu_before=$(cpu_of $pids)
  local url=$http/v2/models/$m/infer
  case $transport in
    http-json) line=$(BODY_FILE=$BODIES/v2-$m.json wrk -t1 -c"$c" -d"${DUR}"s --timeout 10s \
        -s "$ROOT/benches/grpc/post.lua" "$url" | sed -n 's/^WRKJSON //p') ;;
    http-binary) line=$(BODY_FILE=$WORK/bin-$m.body HEADER_LENGTH=$(cat "$WORK/bin-$m.len") wrk -t1 -c"$c" \
        -d"${DUR}"s --timeout 10s -s "$ROOT/benches/grpc/post.lua" "$url" | sed -n 's/^WRKJSON //p') ;;
    grpc) line=$("$LOAD" --addr "$grpc" --model "$m" --body "$BODIES/v2-$m.json" -c "$c" -d "$DUR" \
        | sed -n 's/^GRPCJSON //p') ;;
  esac
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(zip(["target","model","conc","round","transport","load1","server_cpu_s"], sys.argv[2:])); print(json.dumps(d))' \
    "$line" "$target" "$m" "$c" "$round" "$transport" "$(cut -d' ' -f1 /proc/loadavg)" \
    "$(python3 -c "print($(cpu_of $pids) - $cpu_before)")" >> "$RAW"
}

echo "[grpc_vs_http] warm-up"
for target in $TARGETS; do for m in $MODELS; do for t in http-json http-binary grpc; do
  DUR=2 point "$target" "$m" 8 0 "$t"
done; done; done
echo "[grpc_vs_http] measuring (tag $TAG): targets '$TARGETS', models '$MODELS', conc '$CONCS', $ROUNDS rounds of ${DUR}s"
for round in $(seq 1 "$ROUNDS"); do
  for target in $TARGETS; do for m in $MODELS; do for c in $CONCS; do
    for t in http-json http-binary grpc; do point "$target" "$m" "$c" "$round" "$t"; done
  done; done; done
done
stop_all
trap - EXIT

REPORT=$(python3 "$ROOT/benches/grpc/report.py" "$RAW" "DUR=$DUR ROUNDS=$ROUNDS CONCS='$CONCS'")
echo "$REPORT"
if [ "$APPEND" = 1 ]; then printf '\n%s\n' "$REPORT" >> "$ROOT/benches/RESULTS.md"; echo "[grpc_vs_http] appended to benches/RESULTS.md"; fi
