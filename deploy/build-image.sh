#!/usr/bin/env bash
# Builds the Sluice container image (see deploy/README-image.md).
#
#   deploy/build-image.sh [--tag TAG] [--binary PATH] [--runtime-image IMAGE]
#   deploy/build-image.sh --from-source [--tag TAG] [--build-image IMAGE] [--runtime-image IMAGE]
#
# Default (prebuilt): the image is made from this checkout's target/release/sluice (built with
# `cargo build --release --locked -p sluice-cli` when missing) and ONNX Runtime provisioned from the
# pinned PyPI wheel into target/test-runtime (the layout sluice and the tests use; reused when
# there), staged in a small context folder (target/image-context), on the runtime base
# sluice-base:bookworm, which deploy/base-image.sh makes from Debian's packages when missing.
# Nothing is pulled from a registry. --binary PATH: that release binary instead of
# target/release/sluice (never built by this script; glibc no newer than Debian 12's).
#
# --from-source: the full multi-stage build (Rust build stage, then the runtime stage) with the
# repository as the context. Its build stage needs an image with a Rust toolchain (default
# rust:1-bookworm, public) and reaches crates.io, PyPI and Debian's mirrors while it builds.
#
# --runtime-image IMAGE: runtime base instead of sluice-base:bookworm (e.g. debian:bookworm-slim,
# the Dockerfile's own default); no base image is made then.
#
# Arguments after `--` go to `docker build` as they are (e.g. -- --build-arg PIP_INDEX_URL=...).
#
# Environment: DOCKER_BUILDKIT (default 0: the legacy builder, which is all some engines have),
# SLUICE_PYTHON (python with pip for the wheel download, default python3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TAG=sluice:dev
MODE=prebuilt
RUNTIME_IMAGE=
BUILD_IMAGE=rust:1-bookworm
BIN=
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; EXTRA=("$@"); break ;;
    --tag|-t) TAG=$2; shift ;;
    --from-source) MODE=source ;;
    --binary) BIN=$2; shift ;;
    --runtime-image) RUNTIME_IMAGE=$2; shift ;;
    --build-image) BUILD_IMAGE=$2; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}

say() { echo "build-image.sh: $*"; }
mb() { awk '{printf "%.1f MB", $1/1e6}'; }
start=$(date +%s)

# The ONNX Runtime release sluice pins, read from the one place it is written.
ORT_VERSION=$(sed -n 's/^pub const ORT_VERSION: &str = "\(.*\)";/\1/p' crates/backend-ort/src/provision.rs)
[ -n "$ORT_VERSION" ] || { echo "build-image.sh: cannot read ORT_VERSION from crates/backend-ort/src/provision.rs" >&2; exit 1; }

if [ -z "$RUNTIME_IMAGE" ]; then
  RUNTIME_IMAGE=${SLUICE_BASE_IMAGE:-sluice-base:bookworm}
  SLUICE_BASE_IMAGE=$RUNTIME_IMAGE "$ROOT/deploy/base-image.sh"
fi

build_args=(--build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" --build-arg "ORT_VERSION=$ORT_VERSION")

if [ "$MODE" = source ]; then
  say "multi-stage build from source: BUILD_IMAGE=$BUILD_IMAGE RUNTIME_IMAGE=$RUNTIME_IMAGE"
  docker build --target runtime "${build_args[@]}" --build-arg "BUILD_IMAGE=$BUILD_IMAGE" ${EXTRA[@]+"${EXTRA[@]}"} -t "$TAG" .
else
  # 1. The release binary.
  if [ -n "$BIN" ]; then
    [ -x "$BIN" ] || { echo "build-image.sh: --binary $BIN is not an executable file" >&2; exit 1; }
  else
    BIN=target/release/sluice
  fi
  if [ ! -x "$BIN" ]; then
    say "$BIN is missing; building it (cargo build --release --locked -p sluice-cli)"
    t=$(date +%s)
    cargo build --release --locked -p sluice-cli
    say "release build took $(( $(date +%s) - t )) s"
  fi
  say "binary: $BIN ($("$BIN" --version), built $(date -r "$BIN" '+%F %T'))"

  # 2. ONNX Runtime, as sluice itself provisions it: the two files of the pinned wheel.
  ORT_DIR=target/test-runtime/runtimes/onnxruntime-$ORT_VERSION
  if [ ! -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ] || [ ! -f "$ORT_DIR/libonnxruntime_providers_shared.so" ]; then
    say "provisioning ONNX Runtime $ORT_VERSION from PyPI into $ORT_DIR"
    PY=${SLUICE_PYTHON:-python3}
    mkdir -p "$(dirname "$ORT_DIR")"
    scratch=$(mktemp -d "$(dirname "$ORT_DIR")/.onnxruntime-XXXXXX")
    trap 'rm -rf "$scratch"' EXIT
    "$PY" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check -q \
      -d "$scratch/wheel" "onnxruntime==$ORT_VERSION"
    mkdir -p "$scratch/lib"
    "$PY" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); [open(sys.argv[2] + "/" + n, "wb").write(z.read("onnxruntime/capi/" + n)) for n in sys.argv[3:]]' \
      "$scratch"/wheel/onnxruntime-*.whl "$scratch/lib" "libonnxruntime.so.$ORT_VERSION" libonnxruntime_providers_shared.so
    rm -rf "$ORT_DIR"
    mv "$scratch/lib" "$ORT_DIR"
  fi
  say "ONNX Runtime: $ORT_DIR"

  # 3. A context of just what the prebuilt stage copies (hard links where possible).
  CTX=target/image-context
  rm -rf "$CTX"
  mkdir -p "$CTX/models" "$CTX/target/release" "$CTX/$ORT_DIR"
  link() { ln -f "$1" "$2" 2>/dev/null || cp -f "$1" "$2"; }
  cp -f Dockerfile .dockerignore "$CTX/"
  for m in models/*.onnx; do link "$m" "$CTX/models/"; done
  # Without the release profile's line tables (about 100 of the binary's 130 MB): symbols stay,
  # so a panic's backtrace still names its functions.
  if command -v strip >/dev/null; then
    strip --strip-debug -o "$CTX/target/release/sluice" "$BIN"
  else
    say "warning: no strip (binutils): the image carries the binary's debug line tables"
    link "$BIN" "$CTX/target/release/sluice"
  fi
  link "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" "$CTX/$ORT_DIR/"
  link "$ORT_DIR/libonnxruntime_providers_shared.so" "$CTX/$ORT_DIR/"
  say "context: $CTX ($(du -sbL "$CTX" | cut -f1 | mb))"

  say "docker build --target prebuilt, RUNTIME_IMAGE=$RUNTIME_IMAGE"
  docker build --target prebuilt "${build_args[@]}" ${EXTRA[@]+"${EXTRA[@]}"} -t "$TAG" "$CTX"
fi

# The image starts and finds its ONNX Runtime (the prebuilt stage cannot check it itself: the
# legacy builder also runs that stage for the default target, where the files may be absent).
docker run --rm --entrypoint sh "$TAG" -c 'set -e; sluice --version; test -f "$SLUICE_ORT_LIB" || { echo "$SLUICE_ORT_LIB is missing" >&2; exit 1; }; ! ldd /usr/local/bin/sluice "$SLUICE_ORT_LIB" | grep "not found"' \
  || { echo "build-image.sh: $TAG is incomplete (see above)" >&2; exit 1; }

size=$(docker image inspect -f '{{.Size}}' "$TAG")
say "built $TAG: $(echo "$size" | mb) in $(( $(date +%s) - start )) s"
if [ "$size" -gt 200000000 ]; then
  say "warning: $TAG is over the 200 MB target"
fi
