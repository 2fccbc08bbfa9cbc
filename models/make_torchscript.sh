#!/usr/bin/env bash
# Writes models/mlp-small.pt, the TorchScript twin of models/mlp-small.onnx (same weights), for the
# libtorch backend's tests. Needs the models venv (numpy, onnx; see make_models.py) and libtorch:
#
#   python3 -m venv .venv-models && .venv-models/bin/pip install -r models/requirements.txt
#   export LIBTORCH=$(scripts/provision-libtorch.sh)
#   models/make_torchscript.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv-models/bin/python}
: "${LIBTORCH:?set LIBTORCH (scripts/provision-libtorch.sh prints it)}"
weights=$(mktemp)
trap 'rm -f "$weights"' EXIT
"$PY" - "$ROOT/models/mlp-small.onnx" > "$weights" <<'PYEOF'
import json, sys
import onnx
from onnx import numpy_helper
model = onnx.load(sys.argv[1])
json.dump({i.name: {"shape": list(i.dims), "data": numpy_helper.to_array(i).astype("float32").ravel().tolist()}
           for i in model.graph.initializer}, sys.stdout)
PYEOF
cd "$ROOT"
LD_LIBRARY_PATH="$LIBTORCH/lib" cargo run -q -p sluice-backend-torch --features torch --example make_torchscript -- \
  "$weights" models/mlp-small.pt softmax
