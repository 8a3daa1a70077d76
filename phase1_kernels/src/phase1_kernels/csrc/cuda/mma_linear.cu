// The ops mma_linear and mma_linear_silu: launches of mma_linear_kernel.cuh's tensor-core weight
// stream for decode batches of 1-16 rows (the kernel, and why, are described there).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "launch_utils.cuh"
#include "mma_linear_kernel.cuh"

namespace lightvllm {
namespace {

// T: the CUDA type (__nv_bfloat16 or __half; the kernel picks its MMA by it), ATenT: torch's.
template <typename T, typename ATenT, bool GLU>
void mma_linear_typed(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                      int64_t warps, int64_t tiles, cudaStream_t stream) {
  const int rows = static_cast<int>(input.size(0));
  const int n = static_cast<int>(GLU ? weight.size(0) / 2 : weight.size(0));
  const int k_steps = static_cast<int>(weight.size(1) / kMmaStepK);
  auto go = [&](auto nt, auto w, auto cg) {
    constexpr int NT = decltype(nt)::value, WARPS = decltype(w)::value, CG = decltype(cg)::value;
    const int outs_per_block = (GLU ? 8 : 16) * CG;
    const dim3 grid(static_cast<unsigned>((n + outs_per_block - 1) / outs_per_block));
    launch(mma_linear_kernel<T, NT, WARPS, CG, GLU>, grid, dim3(WARPS * 32), stream,
           reinterpret_cast<T*>(out.data_ptr<ATenT>()),
           reinterpret_cast<const T*>(input.const_data_ptr<ATenT>()),
           reinterpret_cast<const T*>(weight.const_data_ptr<ATenT>()), rows, n, k_steps,
           input.stride(0), out.stride(0), linear_prefetch_bytes());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  auto with_tiles = [&](auto nt, auto w) {
    if (tiles == 2) return go(nt, w, std::integral_constant<int, 2>{});
    return go(nt, w, std::integral_constant<int, 1>{});
  };
  auto with_warps = [&](auto nt) {
    if (warps == 4) return with_tiles(nt, std::integral_constant<int, 4>{});
    return with_tiles(nt, std::integral_constant<int, 8>{});
  };
  if (rows > 8) return with_warps(std::integral_constant<int, 2>{});
  return with_warps(std::integral_constant<int, 1>{});
}

template <bool GLU>
void mma_linear_dispatch(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                         int64_t warps, int64_t tiles) {
  check_mma_linear(out, input, weight, warps, tiles, GLU);
  if (input.size(0) == 0 || weight.size(0) == 0) return;
  LIGHTVLLM_CHECK(input.stride(0) % 8 == 0 && aligned16(input.const_data_ptr()) &&
                      aligned16(weight.const_data_ptr()),
                  "mma_linear needs the input's row stride to be a multiple of 8 and 16-byte "
                  "aligned input and weight");
  const c10::cuda::OptionalCUDAGuard guard(device_of(input));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_SWITCH(input.scalar_type(), "mma_linear_cuda",
    AT_DISPATCH_CASE(at::ScalarType::Half, [&] {
      mma_linear_typed<__half, at::Half, GLU>(out, input, weight, warps, tiles, stream); })
    AT_DISPATCH_CASE(at::ScalarType::BFloat16, [&] {
      mma_linear_typed<__nv_bfloat16, at::BFloat16, GLU>(out, input, weight, warps, tiles, stream); }));
}

void mma_linear(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, int64_t warps,
                int64_t tiles) {
  mma_linear_dispatch<false>(out, input, weight, warps, tiles);
}

void mma_linear_silu(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                     int64_t warps, int64_t tiles) {
  mma_linear_dispatch<true>(out, input, weight, warps, tiles);
}

}  // namespace

TORCH_LIBRARY_IMPL(lightvllm, CUDA, m) {
  m.impl("mma_linear", &mma_linear);
  m.impl("mma_linear_silu", &mma_linear_silu);
}

}  // namespace lightvllm
