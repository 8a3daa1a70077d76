#!/usr/bin/env bash
# What we run on the lent GPU (device tool; H100 earlier, H200 now): sections chosen by
# arguments, logs to $OUT.
#   bash scripts/gpu_run.sh wheels engine b2 b3 b4
# The machine has torch/triton/transformers but none of our packages installed: use the sources.
# "wheels" installs what the server needs from .whl-serve (carry it: fastapi, uvicorn, pydantic,
# pyzmq, msgspec, ...), built here with pip download for cp312 manylinux.
set -o pipefail
export PYTHONPATH=shared/src:phase1_kernels/src:phase2_attention/src:phase3_scheduling/src:phase4_distributed/src:phase5_server/src:.
export LIGHTVLLM_CACHE=${LIGHTVLLM_CACHE:-$PWD/.out/lvc} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-.out}
case " $* " in *" wheels "*) export PYTHONPATH=$PYTHONPATH:/tmp/site ;; esac
mkdir -p "$OUT" "$LIGHTVLLM_CACHE"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python -c "from phase1_kernels.ops import extension as e; print('extension', e.load(), e.why_unavailable('cuda'))" 2>&1 | tee -a "$OUT/log.txt"
bench="python -m lightvllm.cli bench"
dummy8b="--load-format dummy --hf-config llama-3.1-8b --dtype bfloat16"
for section in "$@"; do
  echo "=== $section $(date -u +%H:%M:%S)" | tee -a "$OUT/log.txt"
  case $section in
    wheels) python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
          --target /tmp/site .whl-serve/*.whl && echo "wheels installed in /tmp/site" ;;
    parity) python -m pytest -q -s phase1_kernels/tests/test_hf_parity_gpu.py ;;
    engine) python -m pytest -q -s phase3_scheduling/tests/test_engine_gpu.py ;;
    b2) $bench latency $dummy8b --input-len 128 --output-len 256 --num-iters 3 --max-num-seqs 8 \
          --hf --hf-output-len 32 --workload B2 --out "$OUT/b2.json" ;;
    b3) $bench throughput $dummy8b --num-prompts 256 --input-len 100 1024 --output-len 100 1024 \
          --max-num-batched-tokens 8192 --workload B3 --out "$OUT/b3.json" ;;
    b4) python phase5_server/benchmarks/run_b4.py --preset h200 --out "$OUT/b4.json" \
          --server-log "$OUT/b4_server.log" ;;
    b3hf) $bench throughput $dummy8b --num-prompts 128 --input-len 128 --output-len 128 \
          --max-num-seqs 128 --hf --workload B3-128x128 --out "$OUT/b3hf.json" ;;
    *) echo "unknown section $section" ;;
  esac 2>&1 | grep -v "it/s]" | tee -a "$OUT/log.txt"
done
