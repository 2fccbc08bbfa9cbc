#!/usr/bin/env bash
# Two builds of sluice, measured alternately in one run, so a change is quoted as ratios against
# the commit before it (drift on the shared machine falls on both alike).
#
#   benches/ab_compare.sh BASE_REV                 # builds BASE_REV (git archive) and the working tree
#   BASE_BIN=/path/to/sluice NEW_BIN=target/release/sluice benches/ab_compare.sh   # prebuilt binaries
#
# Each round (ROUNDS, 3), for each build in turn (order swapped every round):
#   serve    `sluice serve mlp-small mlp-large`, OIP v2 JSON: mlp-small c=1 and c=64, mlp-large c=64
#   gateway  control plane + gateway + one replica of mlp-small (auth off), through the gateway:
#            c=1 and c=64
# wrk -t1, keep-alive, DUR s per point (8) after a 2 s warm-up. Prints the medians over rounds of
# requests/s and p50, and new/base ratios; NO_APPEND=1 keeps it out of benches/RESULTS.md.
# Ports: PORT (18600) CONTROL_PORT (18601) GW_PORT (18602), 127.0.0.1 only; every process started
# here is stopped by its pid.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-8} ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18600} CONTROL_PORT=${CONTROL_PORT:-18601} GW_PORT=${GW_PORT:-18602}
STAMP=$(date -u +%Y-%m-%dT%H%M%S)
WORK=$ROOT/benches/work/ab/$STAMP
SHARED=$ROOT/../shared/bench
mkdir -p "$WORK"
log() { echo "[ab_compare] $*" >&2; }
command -v wrk > /dev/null || { log "wrk not found (apt-get install wrk)"; exit 1; }

for v in $(compgen -e | grep '^SLUICE_' || true); do [ "$v" = SLUICE_ORT_LIB ] || unset "$v"; done
export SLUICE_LOG=warn
# The library the tests provisioned (target/test-runtime), for the version sluice pins.
ORT_VERSION=$(sed -n 's/^pub const ORT_VERSION: &str = "\(.*\)";/\1/p' "$ROOT/crates/backend-ort/src/provision.rs")
ORT_TEST_LIB=$ROOT/target/test-runtime/runtimes/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION
if [ -z "${SLUICE_ORT_LIB:-}" ] && [ -f "$ORT_TEST_LIB" ]; then
  export SLUICE_ORT_LIB=$ORT_TEST_LIB
fi

if [ -z "${BASE_BIN:-}" ]; then
  BASE_REV=${1:?usage: benches/ab_compare.sh BASE_REV (or set BASE_BIN and NEW_BIN)}
  rev=$(cd "$ROOT" && git rev-parse --short "$BASE_REV^{commit}")
  src=$ROOT/benches/work/ab/src-$rev
  if [ ! -f "$src/Cargo.toml" ]; then mkdir -p "$src" && (cd "$ROOT" && git archive "$rev") | tar -x -C "$src"; fi
  log "building the base ($rev, release)"
  (cd "$src" && CARGO_TARGET_DIR=$ROOT/benches/work/ab/target-base cargo build --release -q -p sluice-cli)
  BASE_BIN=$ROOT/benches/work/ab/target-base/release/sluice
  BASE_NAME=$rev
fi
if [ -z "${NEW_BIN:-}" ]; then
  log "building the working tree (release)"
  (cd "$ROOT" && cargo build --release -q -p sluice-cli)
  NEW_BIN=$ROOT/target/release/sluice
fi
BASE_NAME=${BASE_NAME:-$BASE_BIN} NEW_NAME="$(cd "$ROOT" && git rev-parse --short HEAD) working tree"

BODIES=$WORK/bodies
mkdir -p "$BODIES"
for m in mlp-small mlp-large; do
  if [ -f "$SHARED/bodies/v2-$m.json" ]; then cp "$SHARED/bodies/v2-$m.json" "$BODIES/"; else
    cols=$([ $m = mlp-small ] && echo 64 || echo 784)
    python3 -c "import json; print(json.dumps({'inputs': [{'name': 'input', 'shape': [1, $cols], 'datatype': 'FP32', 'data': [0.5] * $cols}]}))" > "$BODIES/v2-$m.json"
  fi
done
LUA=$WORK/post.lua
cat > "$LUA" << 'EOF'
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('ABJSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
EOF

PIDS=""
stop_all() {
  for pid in $PIDS; do kill -TERM "$pid" 2> /dev/null || true; done
  for pid in $PIDS; do
    for _ in $(seq 1 300); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done
  PIDS=""
}
trap stop_all EXIT

point() { # build target model conc url
  local body=$BODIES/v2-$3.json
  BODY_FILE=$body wrk -t1 -c"$4" -d2s -s "$LUA" "$5" > /dev/null 2>&1
  BODY_FILE=$body wrk -t1 -c"$4" -d"${DUR}"s --timeout 10s -s "$LUA" "$5" > "$WORK/wrk.out" 2>&1
  grep '^ABJSON' "$WORK/wrk.out" | sed "s/^ABJSON {/{\"build\":\"$1\",\"target\":\"$2\",\"model\":\"$3\",\"conc\":$4,/" >> "$WORK/raw.jsonl"
}
wait_ok() { # url body
  for _ in $(seq 1 150); do
    curl -sf -o /dev/null -X POST -H 'content-type: application/json' --data-binary "@$2" "$1" && return 0
    sleep 0.2
  done
  log "no answer from $1"; exit 1
}

measure() { # build-label binary
  local label=$1 bin=$2
  log "$label: serve"
  "$bin" serve "$ROOT/models/mlp-small.onnx" "$ROOT/models/mlp-large.onnx" --port "$PORT" --home "$WORK/home-serve" > "$WORK/serve.log" 2>&1 &
  PIDS=$!
  local base=http://127.0.0.1:$PORT/v2/models
  wait_ok "$base/mlp-small/infer" "$BODIES/v2-mlp-small.json"
  point "$label" serve mlp-small 1 "$base/mlp-small/infer"
  point "$label" serve mlp-small 64 "$base/mlp-small/infer"
  point "$label" serve mlp-large 64 "$base/mlp-large/infer"
  stop_all
  log "$label: gateway"
  local home=$WORK/home-$RANDOM
  "$bin" --home "$home" model register mlp-small "$ROOT/models/mlp-small.onnx" > /dev/null
  "$bin" --home "$home" control --control-port "$CONTROL_PORT" > "$WORK/control.log" 2>&1 &
  PIDS=$!
  for _ in $(seq 1 100); do [ -f "$home/control/url" ] && break; sleep 0.1; done
  echo '{"auth_enabled": false}' > "$WORK/open.json"
  "$bin" --home "$home" service create open --model mlp-small --deploy-config "$WORK/open.json" --wait > /dev/null
  "$bin" --home "$home" gateway --port "$GW_PORT" > "$WORK/gateway.log" 2>&1 &
  PIDS="$! $PIDS" # the gateway stops before the control plane
  local url=http://127.0.0.1:$GW_PORT/services/open/v2/models/mlp-small/infer
  wait_ok "$url" "$BODIES/v2-mlp-small.json"
  point "$label" gateway mlp-small 1 "$url"
  point "$label" gateway mlp-small 64 "$url"
  stop_all
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="base new"; else order="new base"; fi
  for b in $order; do
    if [ "$b" = base ]; then measure base "$BASE_BIN"; else measure new "$NEW_BIN"; fi
  done
done

REPORT=$(python3 - "$WORK/raw.jsonl" "$BASE_NAME" "$NEW_NAME" "$ROUNDS" "$DUR" << 'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base_name, new_name, rounds, dur = sys.argv[2:]
bad = [r for r in rows if r["errors"] or r["non2xx"]]
points = sorted({(r["target"], r["model"], r["conc"]) for r in rows}, key=lambda k: (k[0] != "serve", k[1], k[2]))
out = [f"base {base_name}, new {new_name}; {rounds} alternating rounds, {dur} s per point, medians",
       "", "| path | model | c | base rps | new rps | new/base rps | base p50 ms | new p50 ms | new/base p50 |", "|---|---|---|---|---|---|---|---|---|"]
for t, m, c in points:
    def med(build, f):
        return statistics.median(f(r) for r in rows if (r["build"], r["target"], r["model"], r["conc"]) == (build, t, m, c))
    rps = lambda r: r["requests"] / (r["duration_us"] / 1e6)
    p50 = lambda r: r["p50_us"] / 1000
    b, n, bl, nl = med("base", rps), med("new", rps), med("base", p50), med("new", p50)
    out.append(f"| {t} | {m} | {c} | {b:.0f} | {n:.0f} | {n / b:.2f} | {bl:.3f} | {nl:.3f} | {nl / bl:.2f} |")
out.append("")
out.append("every point: " + ("no errors" if not bad else f"{len(bad)} points with errors or non-2xx answers: INVALID"))
out.append("all rps per point (base; new): " + "; ".join(
    f"{t}/{m}/c{c}: " + ",".join(f"{r['requests'] / (r['duration_us'] / 1e6):.0f}" for r in rows if (r['build'], r['target'], r['model'], r['conc']) == ('base', t, m, c))
    + " vs " + ",".join(f"{r['requests'] / (r['duration_us'] / 1e6):.0f}" for r in rows if (r['build'], r['target'], r['model'], r['conc']) == ('new', t, m, c))
    for t, m, c in points))
print("\n".join(out))
EOF
)
echo "$REPORT"
if [ "${NO_APPEND:-0}" != 1 ]; then
  { echo; echo "## A/B $STAMP (benches/ab_compare.sh)"; echo; echo "$REPORT"; } >> "$ROOT/benches/RESULTS.md"
  log "appended to benches/RESULTS.md"
fi
