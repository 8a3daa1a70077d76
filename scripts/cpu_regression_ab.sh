#!/usr/bin/env bash
# Issue 8's "CPU B4 and B5 do not regress": this checkout's code against BASE (a commit), each
# from its own `git worktree` (so both run from the same kind of place), alternating, ROUNDS
# rounds. Writes JSON and logs into OUT. Servers are stopped by their PID.
#   bash scripts/cpu_regression_ab.sh BASE OUT [b4|b5|both] [ROUNDS]
set -euo pipefail
BASE=$1; OUT=$2; WHAT=${3:-both}; ROUNDS=${4:-2}
REPO=$(git rev-parse --show-toplevel)
PY="$REPO/.venv/bin/python"
mkdir -p "$OUT"
TREES=$(mktemp -d)
git -C "$REPO" worktree add -q "$TREES/new" HEAD
git -C "$REPO" worktree add -q "$TREES/old" "$BASE"
trap 'git -C "$REPO" worktree remove --force "$TREES/new"; git -C "$REPO" worktree remove --force "$TREES/old"' EXIT
path_of() { echo "$TREES/$1:$(ls -d "$TREES/$1"/*/src | tr '\n' ':')"; }

b5() {  # offline throughput, SmolLM2 fp32
  PYTHONPATH=$(path_of "$1") "$PY" -m lightvllm.cli bench throughput --num-prompts 64 \
    --input-len 128 --output-len 128 --workload B5 --out "$OUT/b5_$1_$2.json" | grep -E "^\| B5"
}

b4() {  # the server of side $1, driven by this checkout's client
  local port=8790 pid
  PYTHONPATH=$(path_of "$1") "$PY" -m lightvllm.cli serve --port $port --dtype float32 \
    --max-num-seqs 64 --max-model-len 1024 > "$OUT/server_$1_$2.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:$port/health > /dev/null && break; sleep 1; done
  PYTHONPATH=$(path_of new) "$PY" -m lightvllm.cli bench serve --base-url http://127.0.0.1:$port \
    --num-prompts 64 --input-len 128 --output-len 32 --request-rate 1 4 inf \
    --workload B4-cpu-small --out "$OUT/b4_$1_$2.json" | grep -E "^rate|engine steps"
  kill -INT $pid; wait $pid || true
}

for round in $(seq 1 "$ROUNDS"); do
  for side in new old; do
    echo "== $side ($([ $side = new ] && git -C "$REPO" rev-parse --short HEAD || echo "$BASE")) round $round"
    if [ "$WHAT" != b4 ]; then b5 $side $round; fi
    if [ "$WHAT" != b5 ]; then b4 $side $round; fi
  done
done
