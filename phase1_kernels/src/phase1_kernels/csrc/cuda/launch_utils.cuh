// Host-side launch helpers shared by the CUDA kernels: whether programmatic dependent launch is
// on, the launch with its attribute, and how much weight the small-batch GEMMs prefetch.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

namespace lightvllm {
namespace {

bool pdl_requested() {
  const char* env = std::getenv("LIGHTVLLM_PDL");
  if (env != nullptr && std::string(env) == "0") return false;
  static int major_of[64] = {};  // compute capability per device, 0 = not asked yet
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 64) return false;
  if (major_of[device] == 0)
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major_of[device], cudaDevAttrComputeCapabilityMajor, device));
  return major_of[device] >= 9;
}

// kernel<<<grid, block, 0, stream>>>(args...), with the programmatic-serialisation attribute
// when PDL is requested.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream,
            Args&&... args) {
#if defined(CUDART_VERSION) && CUDART_VERSION >= 12000
  if (!pdl_requested()) {
    kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
    return;
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
#else  // no launch attributes before CUDA 12: always the plain launch
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

// How much of a small-batch GEMM's weight its warps prefetch into L2 before waiting for the
// kernel before (env LIGHTVLLM_GEMV_PREFETCH_MB, default 16; 0 turns it off, the baseline). The
// window is that kernel's few microseconds, and L2 (50 MB) must not be flooded: lm_head is 1 GB.
int64_t linear_prefetch_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("LIGHTVLLM_GEMV_PREFETCH_MB");
    const int64_t mb = env != nullptr && *env != '\0' ? std::max<int64_t>(0, std::atoll(env)) : 16;
    return mb << 20;
  }();
  return bytes;
}

}  // namespace
}  // namespace lightvllm
