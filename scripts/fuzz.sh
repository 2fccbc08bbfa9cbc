#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) from their seed corpora; fails on the
# first crash, panic, hang or memory blow-up, and prints the input that caused it.
#
#   scripts/fuzz.sh                        # every target, 300 s each
#   scripts/fuzz.sh http1_request 3600     # one target for an hour
#   scripts/fuzz.sh all 30                 # what CI runs (.ci/run)
#   scripts/fuzz.sh --list                 # the targets
#
# Targets: http1_request, http1_response, oip_request, jwt (fuzz/fuzz_targets/*.rs says what each
# reads and checks). The corpus each run grows is kept in FUZZ_CORPUS_DIR/<target> (default
# fuzz/corpus, git-ignored) so later runs start where earlier ones stopped; only fuzz/seeds is
# committed. A crashing input is written to FUZZ_CORPUS_DIR/artifacts/; reproduce it with
#   fuzz/target/<host>/release/<target> <file>
# and add it to fuzz/seeds/<target>/ with the fix.
#
# Toolchain: only stable Rust is installed, and libFuzzer needs nightly flags (-Zsanitizer,
# sanitizer coverage), so the build runs with RUSTC_BOOTSTRAP=1. The default sanitizer is none:
# the code under test forbids `unsafe`, so out-of-bounds access and overflow already panic (the
# build keeps debug assertions and overflow checks), and without ASan a target runs about 2.5x
# more inputs in the same time. SANITIZER=address (builds in fuzz/target/asan) also checks the
# `unsafe` inside dependencies (httparse, bytes, serde_json); it works with this stable
# toolchain too, and is worth it for long runs.
#
# fuzz/ is a workspace of its own with its own Cargo.lock (committed). The build does not pass
# --locked: when a fuzzed crate gains a dependency, cargo adds it to fuzz/Cargo.lock (keeping every
# version already there); commit the change. `cp Cargo.lock fuzz/` before a build brings the fuzz
# lock back to the root workspace's versions.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ=$ROOT/fuzz
TARGETS=(http1_request http1_response oip_request jwt)
CARGO_FUZZ_VERSION=0.13.2

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${TARGETS[@]}"
  exit 0
fi
which=${1:-all}
seconds=${2:-300}
if [ "$which" = all ]; then
  run=("${TARGETS[@]}")
elif [ -f "$FUZZ/fuzz_targets/$which.rs" ]; then
  run=("$which")
else
  echo "fuzz.sh: unknown target '$which' (targets: ${TARGETS[*]})" >&2
  exit 2
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

sanitizer=${SANITIZER:-none}
target_dir=$FUZZ/target
[ "$sanitizer" = none ] || target_dir=$FUZZ/target/$sanitizer
host=$(rustc -vV | sed -n 's/^host: //p')
# Builds every target at once (they share their dependencies); release optimizations with debug
# assertions, cargo-fuzz's default.
(cd "$FUZZ" && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer "$sanitizer" --target-dir "$target_dir")
bin=$target_dir/$host/release

corpus_root=${FUZZ_CORPUS_DIR:-$FUZZ/corpus}
artifacts=$corpus_root/artifacts
mkdir -p "$artifacts"
for t in "${run[@]}"; do
  corpus=$corpus_root/$t
  mkdir -p "$corpus"
  cp "$FUZZ/seeds/$t"/* "$corpus"/
  echo "fuzz.sh: $t for ${seconds}s" >&2
  # -timeout: one input running over 10 s is a hang. -max_len: inputs up to 16 KiB, so lines and
  # heads past the parsers' 4 KiB limits are reachable. -print_final_stats: a line of counts for
  # the log.
  if ! "$bin/$t" "$corpus" -max_total_time="$seconds" -timeout=10 -max_len=16384 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/$t-" -print_final_stats=1 2> "$corpus_root/$t.log"; then
    tail -n 60 "$corpus_root/$t.log" >&2
    for f in "$artifacts/$t"-*; do
      [ -f "$f" ] || continue
      echo "fuzz.sh: $t failed on $f; the input, base64:" >&2
      base64 -w 0 "$f" >&2
      echo >&2
    done
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$corpus_root/$t.log" | tr '\n' ' ' >&2 || true
  echo >&2
done
