#!/usr/bin/env bash
# Provisions the slim libtorch that the `torch` feature builds against (tch 0.26 needs PyTorch
# 2.13.0 exactly) from PyPI wheels only: torch itself, plus the two CUDA runtime libraries that
# even libtorch_cpu.so links to. About 540 MB to download and 490 MB on disk, once; later runs
# return at once. Nothing is installed into Python.
#
#   scripts/provision-libtorch.sh [DIR]     # default DIR: target/libtorch; prints DIR on stdout
#   export LIBTORCH=$(scripts/provision-libtorch.sh)
#   cargo build --release --features torch
#
# SLUICE_PYTHON picks the python3 that runs pip (default: python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/target/libtorch}
if [ -f "$DIR/lib/libtorch_cpu.so" ] && [ -f "$DIR/lib/libcudart.so.13" ]; then
  echo "$DIR"
  exit 0
fi
PY=${SLUICE_PYTHON:-python3}
"$PY" -m pip --version > /dev/null 2>&1 || { echo "provision-libtorch: needs $PY with pip (apt-get install python3-pip)" >&2; exit 1; }
work=$(mktemp -d "${DIR%/*}/.libtorch-XXXXXX" 2> /dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "provision-libtorch: downloading torch 2.13.0 and two CUDA runtime wheels from PyPI (~540 MB)" >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$work/dl" \
  torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 >&2
"$PY" - "$work" <<'PYEOF'
import glob, os, shutil, sys, zipfile
work = sys.argv[1]
out = os.path.join(work, "libtorch")
os.makedirs(os.path.join(out, "lib"), exist_ok=True)
def wheel(pattern):
    found = glob.glob(os.path.join(work, "dl", pattern))
    if len(found) != 1:
        sys.exit(f"provision-libtorch: expected one {pattern}, found {found}")
    return zipfile.ZipFile(found[0])
with wheel("torch-2.13.0-*.whl") as z:
    libs = {"torch/lib/libtorch_cpu.so", "torch/lib/libc10.so", "torch/lib/libtorch.so", "torch/lib/libgomp.so.1"}
    for name in z.namelist():
        if name.startswith("torch/include/"):
            target = os.path.join(out, "include", name[len("torch/include/"):])
        elif name in libs:
            target = os.path.join(out, "lib", os.path.basename(name))
        else:
            continue
        if name.endswith("/"):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
for pattern, lib in [("nvidia_cuda_runtime-*.whl", "libcudart.so.13"), ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")]:
    with wheel(pattern) as z:
        name = next(n for n in z.namelist() if n.endswith("/" + lib))
        with z.open(name) as src, open(os.path.join(out, "lib", lib), "wb") as dst:
            shutil.copyfileobj(src, dst)
PYEOF
rm -rf "$DIR"
mkdir -p "$(dirname "$DIR")"
mv "$work/libtorch" "$DIR"
echo "provision-libtorch: libtorch in $DIR" >&2
echo "$DIR"
