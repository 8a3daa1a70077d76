#!/usr/bin/env bash
# Regenerates phase4_distributed/k8s/*.yaml from the Python builders (pass --check to only verify).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m phase4_distributed.k8s.write_manifests "$@"
