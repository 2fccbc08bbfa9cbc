#!/usr/bin/env bash
# Checks the Helm chart deploy/helm/sluice offline: helm lint --strict, render with the default
# values, an Ingress, values-sidecar.yaml and values-gpu.yaml, kubernetes-validate --strict against
# Kubernetes 1.30 and 1.34, and the chart's invariants (.ci/check_chart.py says which). Installs
# the two pinned PyPI packages it needs when they are missing (helm-python-sdk is a 75 MB wheel
# with Helm's engine; no helm binary, no cluster). About 10 s after that.
#
#   .ci/check-chart.sh [--keep DIR]    # --keep: leave the rendered manifests in DIR
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
HELM_SDK=helm-python-sdk==0.2.2
KUBE_VALIDATE=kubernetes-validate==1.37.0

pinned() {
  "$PY" - "$HELM_SDK" "$KUBE_VALIDATE" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PYEOF
}

if ! pinned; then
  echo "check-chart: installing $HELM_SDK $KUBE_VALIDATE" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check "$HELM_SDK" "$KUBE_VALIDATE"
fi

exec "$PY" .ci/check_chart.py "$@"
