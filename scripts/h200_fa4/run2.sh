#!/bin/bash
# Device run 2 for issue 13: B2 and B3 with the engine on triton_paged and flash_attn (FA4).
# Ran from .fa4/_dev/ of a checkout (the worktree copied to .fa4/), with the cu13 wheel split
# (split -b 60000000) into .whl/p1/cu13.part-aa, carried in a first call and copied to /tmp/w,
# and .whl/p2/ = cu13.part-ab + the other wheels of docs/phase2.md, carried in the next call.
cd "$(dirname "$0")/.."
S=/tmp/site; mkdir -p $S; t0=$(date +%s)
CU13=/tmp/w/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
[ -f /tmp/w/cu13.part-aa ] || { echo "part aa missing: machine was not warm"; exit 3; }
cat /tmp/w/cu13.part-aa ../.whl/p2/cu13.part-ab > $CU13
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S $CU13 ../.whl/p2/*.whl || exit 3
W=$PWD
export PYTHONPATH=$S:$S/nvidia_cutlass_dsl/dsl_packages:$W/shared/src:$W/phase1_kernels/src:$W/phase2_attention/src:$W/phase3_scheduling/src:$W/phase4_distributed/src:$W/phase5_server/src:$W
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4cache PYTHONUNBUFFERED=1
b2() { timeout 45 python3 -c 'from lightvllm.cli import main; main()' bench latency --load-format dummy --hf-config llama-3.1-8b --dtype bfloat16 --input-len 128 --output-len 256 --num-iters 3 --max-num-seqs 8 --attention-backend $1 --block-size $2 --out $OUT/b2_$1_$2.json 2>&1 | grep -v capturing; }
b3() { timeout 60 python3 -c 'from lightvllm.cli import main; main()' bench throughput --load-format dummy --hf-config llama-3.1-8b --dtype bfloat16 --num-prompts 256 --input-len 100 1024 --output-len 100 1024 --max-num-batched-tokens 8192 --attention-backend $1 --block-size $2 --out $OUT/b3_$1_$2.json 2>&1 | grep -v -E "capturing|it/s\]"; }
echo "== B2 triton_paged 16"; b2 triton_paged 16
echo "== B2 flash_attn 128"; b2 flash_attn 128
echo "== B3 triton_paged 16"; b3 triton_paged 16
echo "== B3 flash_attn 128"; b3 flash_attn 128
echo "== B2 flash_attn 16"; b2 flash_attn 16
echo "total $(( $(date +%s) - t0 ))s"
