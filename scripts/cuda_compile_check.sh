#!/usr/bin/env bash
# Compile every CUDA source of the extension on this GPU-less machine, so a syntax or type error
# shows here instead of as "ninja: build stopped" on the GPU machine (where a failed build leaves
# every GPU section running on the native fallbacks). The CPU torch wheel has no c10/cuda headers,
# so the three the sources include are stubbed (just what they use: the CUDA error checks, the
# device guard, the current stream); everything else, ATen included, is the real header, and the
# flags are torch's own for extensions (no implicit half/bfloat16 conversions). Object code is
# thrown away: this checks that the sources compile for sm_90, nothing more.
#
#   bash scripts/cuda_compile_check.sh            # every csrc/cuda/*.cu
#   bash scripts/cuda_compile_check.sh FILE.cu    # one of them
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CSRC=$ROOT/phase1_kernels/src/phase1_kernels/csrc
PY=${PY:-$ROOT/.venv/bin/python}
command -v nvcc > /dev/null || { echo "cuda_compile_check: no nvcc on this machine, skipped"; exit 0; }
TI=$("$PY" -c "import torch.utils.cpp_extension as c; print(c.include_paths()[0])")
STD=$("$PY" -c "import torch; print('c++20' if tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 13) else 'c++17')")
STUB=$(mktemp -d)
trap 'rm -rf "$STUB"' EXIT
mkdir -p "$STUB/c10/cuda"
cat > "$STUB/c10/cuda/CUDAException.h" <<'EOF'
#pragma once
#include <cuda_runtime.h>
#include <c10/util/Exception.h>
#define C10_CUDA_CHECK(x) do { cudaError_t e_ = (x); TORCH_CHECK(e_ == cudaSuccess, cudaGetErrorString(e_)); } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
EOF
cat > "$STUB/c10/cuda/CUDAGuard.h" <<'EOF'
#pragma once
#include <c10/core/Device.h>
#include <optional>
namespace c10::cuda {
struct OptionalCUDAGuard { explicit OptionalCUDAGuard(std::optional<c10::Device>) {} };
}
EOF
cat > "$STUB/c10/cuda/CUDAStream.h" <<'EOF'
#pragma once
#include <cuda_runtime.h>
namespace c10::cuda {
struct CUDAStream { operator cudaStream_t() const { return nullptr; } };
inline CUDAStream getCurrentCUDAStream() { return {}; }
}
EOF
FILES=("$@")
[ ${#FILES[@]} -gt 0 ] || FILES=("$CSRC"/cuda/*.cu)
status=0
for f in "${FILES[@]}"; do
  t0=$SECONDS
  if nvcc -O1 -std=$STD -arch=sm_90 -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr \
      -I"$STUB" -I"$TI" -I"$TI/torch/csrc/api/include" -I"$CSRC" -c "$f" -o "$STUB/out.o"; then
    echo "ok     $(basename "$f") ($((SECONDS - t0)) s)"
  else
    echo "FAILED $(basename "$f")"
    status=1
  fi
done
exit $status
