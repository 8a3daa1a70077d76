// Device-side helpers shared by the CUDA kernels (kernels_cuda.cu, mma_linear.cu): 16-byte
// vectors, programmatic dependent launch, streaming loads and L2 prefetches of weights, and the
// SiLU·mul epilogue of the gate|up GEMMs. Plain CUDA: no torch headers, so a kernel that needs
// only these can be compiled on its own (nvcc -arch=sm_90) to check it and its register use.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace lightvllm {
namespace {

// N elements of T moved as one access of N * sizeof(T) bytes (16 for the vector paths).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
__host__ __device__ constexpr int vec_width() {
  return 16 / sizeof(T);
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Programmatic dependent launch (Hopper; on by default, env LIGHTVLLM_PDL=0 turns it off; B2 on
// an H100 +1.3%, docs/benchmarks.md): a kernel launched
// with it may start while the kernel before it (a GEMM, say) drains its last blocks; it waits in
// griddepcontrol.wait until that kernel has finished and its writes are visible, so it must call
// pdl_wait() before it reads anything. Without the launch attribute the wait returns at once.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The other half of PDL: from here on the next kernel in the stream (if launched with PDL) may be
// scheduled onto free SMs while this one runs; it still waits in its own pdl_wait() for this
// kernel's completion before reading. Our kernels call it right after their wait, so a GEMM of
// ours that follows a one-row norm is resident, and fetching its weights, while the norm runs.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

template <typename V>
__device__ __forceinline__ V load_streaming(const V* p) {
  static_assert(sizeof(V) == 16, "16-byte vectors");
  const uint4 u = __ldcs(reinterpret_cast<const uint4*>(p));
  return *reinterpret_cast<const V*>(&u);
}

// The weights do not depend on the kernel before (only x does), so a warp may ask L2 for its
// weight rows before pdl_wait(): while a one-row norm or the attention merge before it runs, the
// first `prefetch_bytes` of the matrix are already on their way from HBM. A prefetch is a hint
// (L2 is where every write becomes visible), so it can never return stale data.
__device__ __forceinline__ void prefetch_l2_line(const char* p) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

__device__ __forceinline__ void prefetch_to_l2(const char* p, int64_t bytes, int lane) {
  for (int64_t off = static_cast<int64_t>(lane) * 128; off < bytes; off += 32 * 128)
    prefetch_l2_line(p + off);
}

// float <-> T for torch's types (c10::Half, c10::BFloat16: their own conversions) and CUDA's
// (__half, __nv_bfloat16: the intrinsics, since torch builds extensions with CUDA's implicit
// conversions switched off, -D__CUDA_NO_BFLOAT16_CONVERSIONS__ and friends). Round to nearest even
// both ways, so the two spellings of a type give the same bits.
template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// SiLU(gate) * up with each half rounded to T first (what silu_and_mul computes from a stored
// gate_up output), rounded to T.
template <typename T>
__device__ __forceinline__ T silu_mul(float gate, float up) {
  const float a = to_float(from_float<T>(gate));
  return from_float<T>(a / (1.f + __expf(-a)) * to_float(from_float<T>(up)));
}

}  // namespace
}  // namespace lightvllm
