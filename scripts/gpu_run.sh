#!/usr/bin/env bash
# Folded into scripts/gpu_session.sh, which holds the one copy of every section (parity engine b2 b3
# b4 b3hf, and tests b1 fa4 profile): `bash scripts/gpu_run.sh SECTIONS` runs them there. Its old
# `wheels` section is gone: gpu_session.sh installs .whl/p2 (carry it) into /tmp/site by itself.
exec bash "$(dirname "$0")/gpu_session.sh" run "$@"
