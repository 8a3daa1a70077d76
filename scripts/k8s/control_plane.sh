#!/usr/bin/env bash
# Runs the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler on
# free loopback ports) until SIGTERM/Ctrl-C, printing the KUBECONFIG to use. Build it first with
# scripts/k8s/build.sh. Optional argument: the directory for its state and logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m phase4_distributed.k8s.control_plane "$@"
