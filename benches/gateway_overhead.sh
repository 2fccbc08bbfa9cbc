#!/usr/bin/env bash
# Gateway overhead (issue 3): what the Sluice gateway costs on the request path, next to going
# straight to the replica and next to a tuned nginx reverse proxy in front of the same replica.
#
# One control plane (fresh SLUICE_HOME under benches/work/gateway-bench/), mlp-small deployed as
# two one-replica services: mlp-small (key auth, the default) and mlp-open ({"auth_enabled": false}).
# Each comparison hits ONE replica process through three paths:
#   direct        http://REPLICA/v2/models/mlp-small/infer
#   gateway       http://127.0.0.1:GW_PORT/services/SERVICE/v2/models/mlp-small/infer (Bearer key for mlp-small;
#                 the gateway forwards over the replica's Unix socket, as the control plane publishes it)
#   nginx         http://127.0.0.1:NGINX_PORT/v2/models/mlp-small/infer (proxy_pass to REPLICA's TCP port, upstream keep-alive 64,
#                 config from benches/nginx/gateway_bench.conf.in)
# so six targets: {direct, gateway, nginx} x {mlp-small replica (key), mlp-open replica (auth off)}.
# Load: wrk -t1, keep-alive, one batch-1 OIP v2 request per POST, c=1 and c=64, DUR seconds each,
# a WARM-second c=64 warm-up before each target, targets interleaved within each of ROUNDS rounds
# (direct, gateway, nginx, direct, gateway, nginx, ...) so drift on the shared machine hits all alike.
# Reports medians over rounds of p50/p99 latency and requests/s, the CPU the proxy and the replica
# used per 1000 requests, and the issue's targets. Any non-2xx answer or socket error, or a replica
# that changed during the run, makes the run INVALID: the script then prints the report, does not
# append it, and exits 1.
#
#   benches/gateway_overhead.sh                      # full: ~8 min; appends a section to benches/RESULTS.md
#   DUR=3 ROUNDS=1 NO_APPEND=1 benches/gateway_overhead.sh   # quick look, prints only
#   SOURCE=HEAD benches/gateway_overhead.sh          # measure the last commit, not the working tree
#
# Knobs: DUR (s per point, 10) ROUNDS (3) WARM (s of warm-up per target, 2) NO_APPEND=1
#        SOURCE: "tree" (default: cargo build the working tree into target/), a git revision (build a clean
#        `git archive` of it under benches/work/gateway-bench/, target dir there too), or "prebuilt"
#        (use target/release/sluice as it is; SKIP_BUILD=1 means the same)
#        QUIET_WAIT (s to wait before each target for the shared machine to be idle, 300)
#        RETRIES (times a point is measured again when other processes used > 0.25 cores during it, 2)
#        GW_PORT (18400) CONTROL_PORT (18401) NGINX_PORT_A (18402) NGINX_PORT_B (18403) NGINX (/usr/sbin/nginx)
# Everything listens on 127.0.0.1 only. Every process started here is stopped by its pid on exit
# (control plane with SIGTERM, which stops its replicas; gateway and nginx likewise), also on failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-10} ROUNDS=${ROUNDS:-3} WARM=${WARM:-2}
GW_PORT=${GW_PORT:-18400} CONTROL_PORT=${CONTROL_PORT:-18401}
NGINX_PORT_A=${NGINX_PORT_A:-18402} NGINX_PORT_B=${NGINX_PORT_B:-18403}
NGINX=${NGINX:-/usr/sbin/nginx}
STAMP=$(date -u +%Y-%m-%dT%H%M%S)
WORK=$ROOT/benches/work/gateway-bench/$STAMP
H=$WORK/home
SLUICE=$ROOT/target/release/sluice
mkdir -p "$WORK/wrk" "$WORK/tmp"
log() { echo "[gateway_overhead] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in wrk curl python3 /usr/bin/time "$NGINX"; do
  command -v "$tool" > /dev/null || die "$tool not found"
done

# Only this run's settings: no SLUICE_* from the caller's environment (a stray SLUICE_CONTROL_URL or
# SLUICE_PORT would point the commands elsewhere), except the ONNX Runtime library.
for v in $(compgen -e | grep '^SLUICE_' || true); do [ "$v" = SLUICE_ORT_LIB ] || unset "$v"; done
export SLUICE_LOG=warn
# The library the tests provisioned (target/test-runtime), for the version sluice pins.
ORT_VERSION=$(sed -n 's/^pub const ORT_VERSION: &str = "\(.*\)";/\1/p' "$ROOT/crates/backend-ort/src/provision.rs")
ORT_TEST_LIB=$ROOT/target/test-runtime/runtimes/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION
if [ -z "${SLUICE_ORT_LIB:-}" ] && [ -f "$ORT_TEST_LIB" ]; then
  export SLUICE_ORT_LIB=$ORT_TEST_LIB
fi
# Without SLUICE_ORT_LIB the replicas provision ONNX Runtime into the fresh home on first start.

port_free() {
  python3 - "$1" << 'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}
for p in "$GW_PORT" "$CONTROL_PORT" "$NGINX_PORT_A" "$NGINX_PORT_B"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use (set GW_PORT/CONTROL_PORT/NGINX_PORT_A/NGINX_PORT_B)"
done

# ---- cleanup: every pid started here, stopped by pid --------------------------------------------
CONTROL_PID="" GW_PID="" NGINX_PID="" REPLICA_PIDS=""
stop_pid() { # pid name seconds: SIGTERM, wait up to `seconds`, then SIGKILL
  local pid=$1 name=$2 secs=$3
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2> /dev/null || { wait "$pid" 2> /dev/null || true; return 0; }
  kill -TERM "$pid" 2> /dev/null || true
  for _ in $(seq 1 $((secs * 10))); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2> /dev/null; then
    log "$name (pid $pid) did not stop in ${secs}s: SIGKILL"
    kill -KILL "$pid" 2> /dev/null || true
  fi
  wait "$pid" 2> /dev/null || true
}
cleanup() {
  local rc=$?
  set +e
  stop_pid "$NGINX_PID" nginx 10
  stop_pid "$GW_PID" gateway 10
  stop_pid "$CONTROL_PID" "control plane" 30
  # The control plane stops its replicas; make sure, by their pids.
  for pid in $REPLICA_PIDS; do
    if kill -0 "$pid" 2> /dev/null; then
      log "replica pid $pid still running after the control plane stopped: SIGTERM"
      kill -TERM "$pid" 2> /dev/null; sleep 2; kill -0 "$pid" 2> /dev/null && kill -KILL "$pid" 2> /dev/null
    fi
  done
  [ $rc -eq 0 ] || log "failed (exit $rc); logs in $WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build, request body, wrk script ------------------------------------------------------------
SOURCE=${SOURCE:-tree}
[ "${SKIP_BUILD:-0}" != 1 ] || SOURCE=prebuilt
case $SOURCE in
  tree)
    log "building sluice (release) from the working tree"
    (cd "$ROOT" && cargo build --release -q -p sluice-cli)
    dirty=$(cd "$ROOT" && git status --porcelain -- crates Cargo.toml Cargo.lock | wc -l)
    BUILT_FROM="$(cd "$ROOT" && git rev-parse --short HEAD) working tree$([ "$dirty" -gt 0 ] && echo " with $dirty changed paths under crates/ or Cargo.*" || true)"
    ;;
  prebuilt)
    BUILT_FROM="prebuilt target/release/sluice of $(date -u -r "$SLUICE" +%Y-%m-%dT%H:%MZ) (HEAD now $(cd "$ROOT" && git rev-parse --short HEAD))"
    ;;
  *)
    rev=$(cd "$ROOT" && git rev-parse --short "$SOURCE^{commit}") || die "SOURCE=$SOURCE: not a git revision"
    src=$ROOT/benches/work/gateway-bench/src-$rev tgt=$ROOT/benches/work/gateway-bench/target
    if [ ! -f "$src/Cargo.toml" ]; then
      mkdir -p "$src"
      (cd "$ROOT" && git archive "$rev") | tar -x -C "$src"
    fi
    if [ ! -d "$tgt/release" ] && [ -d "$ROOT/target/release" ]; then # reuse the compiled dependencies
      log "seeding $tgt from target/release"
      mkdir -p "$tgt" && cp -a "$ROOT/target/release" "$tgt/"
    fi
    log "building sluice (release) from a clean export of $rev"
    (cd "$src" && CARGO_TARGET_DIR=$tgt cargo build --release -q -p sluice-cli)
    SLUICE=$tgt/release/sluice
    BUILT_FROM="$rev (clean export of the commit)"
    ;;
esac
[ -x "$SLUICE" ] || die "$SLUICE missing"

BODY=$WORK/v2-mlp-small.json
for cand in "$ROOT/benches/work/peer-bench/bodies/v2-mlp-small.json" "$ROOT/../shared/bench/bodies/v2-mlp-small.json"; do
  if [ -f "$cand" ]; then cp "$cand" "$BODY"; break; fi
done
if [ ! -f "$BODY" ]; then # same shape as the peer harness's body: one FP32 [1, 64] input named "input"
  python3 -c 'import json,random; r=random.Random(0); print(json.dumps({"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[round(r.random(),6) for _ in range(64)]}]},separators=(",",":")))' > "$BODY"
fi
LUA=$WORK/post.lua
cat > "$LUA" << 'EOF'
-- POST the JSON body in env BODY_FILE; extra headers (Authorization) come from wrk -H.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
EOF

# ---- control plane, services, gateway -----------------------------------------------------------
wait_log() { # file pattern seconds pid
  for _ in $(seq 1 $(($3 * 10))); do
    grep -q "$2" "$1" 2> /dev/null && return 0
    kill -0 "$4" 2> /dev/null || die "process $4 exited; see $1"
    sleep 0.1
  done
  die "no '$2' in $1 after $3 s"
}

log "work dir $WORK"
"$SLUICE" --home "$H" model register mlp-small "$ROOT/models/mlp-small.onnx" > "$WORK/register.log" 2>&1
"$SLUICE" --home "$H" model show mlp-small >> "$WORK/register.log" 2>&1
"$SLUICE" --home "$H" control --control-port "$CONTROL_PORT" --stop-grace-seconds 5 > "$WORK/control.log" 2>&1 &
CONTROL_PID=$!
wait_log "$WORK/control.log" "control plane on http://127.0.0.1:$CONTROL_PORT" 30 "$CONTROL_PID"

echo '{"auth_enabled": false}' > "$WORK/open.json"
"$SLUICE" --home "$H" service create mlp-small --model mlp-small --wait > "$WORK/service-mlp-small.log" 2>&1 \
  || die "service create mlp-small failed; see $WORK/service-mlp-small.log"
"$SLUICE" --home "$H" service create mlp-open --model mlp-small --deploy-config "$WORK/open.json" --wait \
  > "$WORK/service-mlp-open.log" 2>&1 || die "service create mlp-open failed; see $WORK/service-mlp-open.log"

replica() { # service -> "address pid restarts" of its only replica
  "$SLUICE" --home "$H" service show "$1" --output json | python3 -c '
import json, sys
d = json.load(sys.stdin)
r = d["replicas"]
assert d["state"] == "Healthy" and len(r) == 1 and r[0]["ready"], d
print(r[0]["address"], r[0]["pid"], r[0]["restarts"])'
}
read -r ADDR_A PID_A RESTARTS_A < <(replica mlp-small)
read -r ADDR_B PID_B RESTARTS_B < <(replica mlp-open)
REPLICA_PIDS="$PID_A $PID_B"
[ -n "$ADDR_A" ] && [ -n "$ADDR_B" ] && [ "$ADDR_A" != "$ADDR_B" ] || die "bad replica addresses '$ADDR_A' '$ADDR_B'"
KEY=$("$SLUICE" --home "$H" keys get mlp-small --key primary)
[ -n "$KEY" ] || die "no primary key for mlp-small"
log "replicas: mlp-small $ADDR_A (pid $PID_A, key auth), mlp-open $ADDR_B (pid $PID_B, auth off)"

"$SLUICE" --home "$H" gateway --port "$GW_PORT" > "$WORK/gateway.log" 2>&1 &
GW_PID=$!
wait_log "$WORK/gateway.log" "gateway on http://127.0.0.1:$GW_PORT" 30 "$GW_PID"

# ---- nginx ---------------------------------------------------------------------------------------
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT_A@|$NGINX_PORT_A|g" -e "s|@UPSTREAM_A@|$ADDR_A|g" \
  -e "s|@PORT_B@|$NGINX_PORT_B|g" -e "s|@UPSTREAM_B@|$ADDR_B|g" \
  "$ROOT/benches/nginx/gateway_bench.conf.in" > "$WORK/nginx.conf"
"$NGINX" -t -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" > "$WORK/nginx-t.log" 2>&1 \
  || { cat "$WORK/nginx-t.log" >&2; die "nginx config test failed"; }
"$NGINX" -p "$WORK" -e "$WORK/nginx-error.log" -c "$WORK/nginx.conf" > "$WORK/nginx.log" 2>&1 &
NGINX_PID=$!

# ---- targets, checked before any load ------------------------------------------------------------
# name pair url auth(yes/no) replica-pid
TARGETS=(
  "direct key http://$ADDR_A/v2/models/mlp-small/infer no $PID_A"
  "gateway key http://127.0.0.1:$GW_PORT/services/mlp-small/v2/models/mlp-small/infer yes $PID_A"
  "nginx key http://127.0.0.1:$NGINX_PORT_A/v2/models/mlp-small/infer no $PID_A"
  "direct open http://$ADDR_B/v2/models/mlp-small/infer no $PID_B"
  "gateway open http://127.0.0.1:$GW_PORT/services/mlp-open/v2/models/mlp-small/infer no $PID_B"
  "nginx open http://127.0.0.1:$NGINX_PORT_B/v2/models/mlp-small/infer no $PID_B"
)
status_of() { # url [auth] -> http status; the answer goes to $WORK/check.out
  local args=(-s -o "$WORK/check.out" -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' --data-binary "@$BODY")
  [ "${2:-}" = yes ] && args+=(-H "Authorization: Bearer $KEY")
  curl "${args[@]}" "$1" || true
}
for t in "${TARGETS[@]}"; do
  read -r name pair url auth _ <<< "$t"
  code=000
  for _ in $(seq 1 50); do # the gateway picks up services from the control plane; nginx starts
    code=$(status_of "$url" "$auth")
    [ "$code" = 200 ] && break
    sleep 0.2
  done
  [ "$code" = 200 ] || die "$name/$pair: $url answered $code: $(head -c 300 "$WORK/check.out")"
  grep -q '"outputs"' "$WORK/check.out" || die "$name/$pair: no outputs in $(head -c 300 "$WORK/check.out")"
done
code=$(status_of "http://127.0.0.1:$GW_PORT/services/mlp-small/v2/models/mlp-small/infer" no)
[ "$code" = 401 ] || die "gateway without key for mlp-small answered $code, expected 401 (is key auth on?)"
log "all six targets answer 200; mlp-small without key: 401"

# ---- load ------------------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # utime+stime (clock ticks) summed over the given pids; missing pids count 0
  local sum=0 pid f
  for pid in "$@"; do
    f=$(cut -d')' -f2- "/proc/$pid/stat" 2> /dev/null) || continue
    sum=$((sum + $(echo "$f" | awk '{print $12 + $13}')))
  done
  echo "$sum"
}
nginx_pids() { echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true); } # master and its workers
proxy_pids() { case $1 in gateway) echo "$GW_PID" ;; nginx) nginx_pids ;; *) echo "" ;; esac; }
sys_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; } # busy total

QUIET_WAIT=${QUIET_WAIT:-300} RETRIES=${RETRIES:-2}
wait_quiet() { # before each target: wait (at most QUIET_WAIT s) until the machine is < 15% busy over 1 s
  local deadline=$((SECONDS + QUIET_WAIT)) a b said=""
  while :; do
    a=$(sys_ticks); sleep 1; b=$(sys_ticks)
    echo "$a $b" | awk '{exit !(($3 - $1) / ($4 - $2 + 1e-9) < 0.15)}' && return 0
    [ $SECONDS -lt $deadline ] || { log "machine still busy after ${QUIET_WAIT}s; measuring anyway (see 'other' in the report)"; return 0; }
    [ -n "$said" ] || { log "machine busy (another process?): waiting up to ${QUIET_WAIT}s for it to be idle"; said=1; }
  done
}

RAW=$WORK/raw.jsonl
: > "$RAW"
TOTAL=$((ROUNDS * ${#TARGETS[@]}))
i=0
for round in $(seq 1 "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    read -r name pair url auth rpid <<< "$t"
    i=$((i + 1))
    hdr=()
    [ "$auth" = yes ] && hdr=(-H "Authorization: Bearer $KEY")
    wait_quiet
    log "round $round/$ROUNDS: $name ($pair) [$i/$TOTAL]"
    warm_up() { BODY_FILE=$BODY wrk -t1 -c64 -d"${WARM}"s --timeout 10s -s "$LUA" "${hdr[@]}" "$url" >> "$WORK/wrk/warm-r$round-$name-$pair.out" 2>&1; }
    warm_up
    for c in 1 64; do
      attempt=0
      while :; do
        out=$WORK/wrk/r$round-$name-$pair-c$c-a$attempt.out
        load1=$(cut -d' ' -f1 /proc/loadavg)
        # shellcheck disable=SC2046
        p0=$(proc_ticks $(proxy_pids "$name")) r0=$(proc_ticks "$rpid") s0=$(sys_ticks)
        BODY_FILE=$BODY /usr/bin/time -f 'WRKCPU %U %S' -o "$out.time" \
          wrk -t1 -c"$c" -d"${DUR}"s --timeout 10s --latency -s "$LUA" "${hdr[@]}" "$url" > "$out" 2>&1 \
          || die "wrk failed on $url; see $out"
        # shellcheck disable=SC2046
        p1=$(proc_ticks $(proxy_pids "$name")) r1=$(proc_ticks "$rpid") s1=$(sys_ticks)
        rc=0
        row=$(python3 "$ROOT/benches/report_gateway.py" row "$out" "$out.time" round="$round" target="$name" \
          pair="$pair" conc="$c" attempt="$attempt" load1="$load1" clk_tck="$CLK_TCK" proxy_ticks=$((p1 - p0)) \
          replica_ticks=$((r1 - r0)) sys_before="$s0" sys_after="$s1") || rc=$?
        [ $rc -eq 0 ] || [ $rc -eq 3 ] || die "could not parse $out"
        # rc 3: other work on the shared machine used more CPU than the limit during this run: redo it.
        if [ $rc -eq 3 ] && [ "$attempt" -lt "$RETRIES" ]; then
          echo "$row" >> "$WORK/disturbed.jsonl"
          attempt=$((attempt + 1))
          log "  c=$c disturbed by other work on the machine; measuring it again (attempt $((attempt + 1)))"
          wait_quiet
          warm_up
          continue
        fi
        echo "$row" >> "$RAW"
        break
      done
    done
  done
done
[ ! -s "$WORK/disturbed.jsonl" ] || log "points measured again after a disturbance: $(wc -l < "$WORK/disturbed.jsonl") (first tries in disturbed.jsonl)"

# ---- the same replicas throughout? -----------------------------------------------------------------
INVALID=""
read -r ADDR_A2 PID_A2 RESTARTS_A2 < <(replica mlp-small) || INVALID="mlp-small not Healthy after the run"
read -r ADDR_B2 PID_B2 RESTARTS_B2 < <(replica mlp-open) || INVALID="${INVALID:+$INVALID; }mlp-open not Healthy after the run"
[ "$ADDR_A $PID_A $RESTARTS_A" = "${ADDR_A2:-} ${PID_A2:-} ${RESTARTS_A2:-}" ] || INVALID="${INVALID:+$INVALID; }mlp-small replica changed during the run"
[ "$ADDR_B $PID_B $RESTARTS_B" = "${ADDR_B2:-} ${PID_B2:-} ${RESTARTS_B2:-}" ] || INVALID="${INVALID:+$INVALID; }mlp-open replica changed during the run"
warm_bad=$(grep -l -e 'Non-2xx' -e 'Socket errors' "$WORK"/wrk/warm-*.out || true)
[ -z "$warm_bad" ] || INVALID="${INVALID:+$INVALID; }errors during warm-up: $(basename -a $warm_bad | tr '\n' ' ')"
kill -0 "$GW_PID" 2> /dev/null || INVALID="${INVALID:+$INVALID; }gateway exited"
kill -0 "$NGINX_PID" 2> /dev/null || INVALID="${INVALID:+$INVALID; }nginx exited"

# ---- report ----------------------------------------------------------------------------------------
cat > "$WORK/meta.env" << EOF
date=$(date -u +%Y-%m-%d)
stamp=$STAMP
dur=$DUR
rounds=$ROUNDS
warm=$WARM
cpus=$(nproc)
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
sluice=$("$SLUICE" --version)
git=$BUILT_FROM
nginx=$("$NGINX" -v 2>&1 | sed 's/^nginx version: nginx\///')
wrk=$(wrk -v 2>&1 | head -1 | awk '{print $2}')
ort=${SLUICE_ORT_LIB:-provisioned}
replica_key=$ADDR_A, pid $PID_A
replica_open=$ADDR_B, pid $PID_B
invalid=$INVALID
EOF
python3 "$ROOT/benches/report_gateway.py" report "$RAW" "$WORK/meta.env" > "$WORK/report.md"
cat "$WORK/report.md"
if [ -n "$INVALID" ] || grep -q '^\*\*INVALID' "$WORK/report.md"; then
  die "run INVALID (see the report above); not appended to benches/RESULTS.md; raw results in $RAW"
fi
if [ "${NO_APPEND:-0}" != 1 ]; then
  { echo; cat "$WORK/report.md"; } >> "$ROOT/benches/RESULTS.md"
  log "appended to benches/RESULTS.md (raw results and logs in $WORK)"
else
  log "NO_APPEND=1: not appended (raw results and logs in $WORK)"
fi
