#!/usr/bin/env bash
# Validates the Kubernetes examples against the API schemas (kubernetes-validate, from PyPI, in
# a virtualenv of its own), strictly: a misspelt field fails. The oldest version checked is the
# oldest Kubernetes the examples claim to run on.
#
#   scripts/validate-kubernetes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REMOTEINGRESS_KUBERNETES_VALIDATE_VENV:-$HOME/.cache/remoteingress-kubernetes-validate}
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
for version in 1.29.0 1.37.0; do
  "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$version" examples/kubernetes/*.yaml
done
echo "examples/kubernetes: valid for Kubernetes 1.29 and 1.37"
