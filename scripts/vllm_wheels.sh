#!/usr/bin/env bash
# vLLM 0.26.0 for the GPU machine, as the same-run baseline of B2, B3 and B4 (gpu_session.sh
# sections vb23, vb4, vb4mid, vb4low). The machine has no network and one call carries at most
# 64 MiB, so this downloads vLLM's wheel and what it needs there, slims the wheel and packs it
# into ignored folders of under 60,000,000 bytes each:
#
#   here, once:  bash scripts/vllm_wheels.sh                    # .whl/v1 (needs + part aa), v2, v3
#   calls:       bash scripts/gpu_session.sh stash .whl/vN /tmp/vparts   # carry [".whl/vN"], one
#                call per folder, back to back (each within 30 s of the last), then stage2
#                (a call saved: the last, small folder can ride with stage2's .whl/p2 if p2's FA4
#                part cu13.part-ab is moved out first -- FA4 then stays out, everything else installs)
#
# The slim wheel: vLLM's wheel less three files that a Llama on a Hopper GPU never loads -- FA2's
# kernels (Hopper runs FA3, vllm_flash_attn/flash_attn_interface.py imports each version in its
# own try), the MoE kernels (platforms/cuda.py imports them under contextlib.suppress) and the
# opt-in Rust front end (VLLM_USE_RUST_FRONTEND) -- and the deep_gemm builds for other Pythons:
# 304 MB -> 116 MB. Its RECORD no longer matches, so gpu_session.sh unpacks it (zipfile) instead
# of pip-installing it. The needs: vLLM's Requires-Dist that the machine's image lacks and that its
# serve/LLM import chains load eagerly, checked by importing those chains on the CPU machine (a
# helper session, 2026-12-07); multimodal, quantization, MoE, FA4 and the other structured-output
# backends load lazily and are left out. FlashInfer too, which is why the vb* sections set
# VLLM_USE_FLASHINFER_SAMPLER=0 (vLLM's greedy sampling never calls its top-k/top-p kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM=vllm==0.26.0
NEEDS=(
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-doc==0.0.7 annotated-types==0.8.0
  anyio==4.16.0 apache-tvm-ffi==0.1.10 astor==0.8.1 attrs==26.1.0 blake3==1.0.11 cachetools==8.0.3
  cbor2==6.3.0 cloudpickle==3.1.3 depyf==0.20.0 dill==0.4.1 distro==1.9.0 einops==0.8.2
  fastapi==0.136.3 frozenlist==1.8.0 ijson==3.6.0 jiter==0.19.0 jmespath==1.1.0 llguidance==1.7.6
  model-hosting-container-standards==0.1.16 msgspec==0.23.0 multidict==7.2.1 openai==2.54.0
  openai-harmony==0.0.8 partial-json-parser==0.2.1.1.post7 prometheus-fastapi-instrumentator==8.1.0
  propcache==0.5.4 py-cpuinfo==9.0.0 pybase64==1.5.1 pydantic==2.14.4 pydantic-core==2.50.5
  python-json-logger==4.2.0 python-multipart==0.0.34 pyzmq==27.3.0 setproctitle==1.3.8 sniffio==1.3.1
  starlette==1.10.0 supervisor==4.3.0 typing-extensions==4.16.0 typing-inspection==0.4.5
  uvicorn==0.55.0 watchfiles==1.3.0 xgrammar==0.2.7 yarl==1.25.1
)
SKIP=('vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so' 'vllm/_moe_C_stable_libtorch.abi3.so' 'vllm/vllm-rs'
      'vllm/third_party/deep_gemm/_C.cpython-31[0134]-x86_64-linux-gnu.so')
PART=59990000  # a folder (its files and its own entry) stays under 60,000,000 bytes
DL=.whl/vdl

mkdir -p $DL
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
  -d $DL $VLLM "${NEEDS[@]}"
whl=$(ls $DL/vllm-0.26.0-*.whl)
cp "$whl" $DL/vllm-slim.zip
zip -q -d $DL/vllm-slim.zip "${SKIP[@]}"
rm -rf .whl/v[0-9]* && mkdir -p .whl/v1
mv $DL/*.whl .whl/v1/ && rm .whl/v1/vllm-0.26.0-*.whl  # the needs travel first
sha256sum $DL/vllm-slim.zip | cut -c1-64 > .whl/v1/vllm.sha256
# part aa fills what the needs leave of v1; the rest in folders of one full part each
room=$((PART - $(du -sb .whl/v1 | cut -f1) - 4096))
head -c $room $DL/vllm-slim.zip > .whl/v1/vllm.part-aa
tail -c +$((room + 1)) $DL/vllm-slim.zip | split -b $PART -a 2 --numeric-suffixes=1 - $DL/vllm.part-a
n=1
for part in $DL/vllm.part-a*; do
  n=$((n + 1)) && mkdir -p .whl/v$n
  # parts sort by name: aa (in v1), then a01, a02, ... -> rename to ab, ac, ...
  mv "$part" .whl/v$n/vllm.part-a$(printf "\\x$(printf %x $((97 + n - 1)))")
done
rm -rf $DL
du -sb .whl/v[0-9]* | awk '{printf "%s %d bytes\n", $2, $1}'
for d in .whl/v[0-9]*; do [ "$(du -sb $d | cut -f1)" -lt 60000000 ] || { echo "$d is over 60,000,000 bytes"; exit 1; }; done
cat .whl/v*/vllm.part-* | sha256sum | cut -c1-64 | cmp -s - .whl/v1/vllm.sha256 && echo "parts join to the slim wheel"
