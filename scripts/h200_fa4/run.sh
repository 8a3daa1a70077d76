#!/bin/bash
# Device run for issue 13: unpack FA4's stack, smoke, GPU tests, benchmark, engine test.
# Ran from .fa4/_dev/ of a checkout (the worktree copied to .fa4/), with the cu13 wheel split
# (split -b 60000000) into .whl/p1/cu13.part-aa, carried in a first call and copied to /tmp/w,
# and .whl/p2/ = cu13.part-ab + the other wheels of docs/phase2.md, carried in the next call.
cd "$(dirname "$0")/.."
S=/tmp/site; mkdir -p $S
t0=$(date +%s)
CU13=/tmp/w/nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
[ -f /tmp/w/cu13.part-aa ] || { echo "part aa missing: machine was not warm"; exit 3; }
cat /tmp/w/cu13.part-aa ../.whl/p2/cu13.part-ab > $CU13 && sha256sum $CU13
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S $CU13 ../.whl/p2/*.whl || exit 3
echo "installed in $(( $(date +%s) - t0 ))s"
W=$PWD
export PYTHONPATH=$S:$S/nvidia_cutlass_dsl/dsl_packages:$W/shared/src:$W/phase1_kernels/src:$W/phase2_attention/src:$W/phase3_scheduling/src:$W/phase4_distributed/src:$W/phase5_server/src:$W
export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4cache PYTHONUNBUFFERED=1
nvidia-smi -L
timeout ${SMOKE_S:-90} python3 _dev/smoke.py 2>&1 | tee $OUT/smoke.log
grep -q "version: 4" $OUT/smoke.log || exit 4
[ -n "$SMOKE_ONLY" ] && exit 0
timeout ${TEST_S:-110} python3 -m pytest -q -rA -p no:cacheprovider phase2_attention/tests/test_flash_attn_gpu.py -s 2>&1 | tee $OUT/tests.log
timeout ${BENCH_S:-80} python3 phase2_attention/benchmarks/bench_attention.py --decode-shapes 64x4096,8x32768 --prefill-shapes 1x4096,1x16384 --out $OUT/bench.json 2>&1 | tee $OUT/bench.log
timeout ${ENGINE_S:-80} python3 -m pytest -q -rA -p no:cacheprovider phase3_scheduling/tests/test_flash_attn_engine_gpu.py 2>&1 | tee $OUT/engine.log
echo "total $(( $(date +%s) - t0 ))s"
