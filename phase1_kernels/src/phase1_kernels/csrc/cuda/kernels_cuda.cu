// CUDA kernels of the lightvllm ops.
//
// All four LLaMA ops are memory-bound: each element is touched once or twice and needs a handful
// of flops, so speed is bytes per second. The habits that get near the H100's ~3 TB/s:
//   * coalescing: consecutive threads touch consecutive 16-byte chunks, so a warp reads 512
//     contiguous bytes per instruction;
//   * 16-byte vector accesses (8 bf16/fp16 or 4 fp32 per load), falling back to scalar ones when
//     the size or the alignment does not allow them (template parameter VEC == 1);
//   * fp32 arithmetic on values loaded once into registers, one rounding on the way out.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "../common.h"
#include "device_utils.cuh"
#include "launch_utils.cuh"

namespace lightvllm {
namespace {

// Sum of `v` over the whole block (blockDim.x a multiple of 32): shuffle within each warp, then
// one shared-memory slot per warp, then shuffle again in warp 0. Every thread gets the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x >> 5;
    v = warp_sum(lane < num_warps ? partial[lane] : 0.f);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// Threads per block of the norms: a 1024-thread block leaves each thread 64 registers, too few
// to hold four 16-byte vectors of x, the residual and the weight in bf16 (ptxas spills), so the
// CACHE == 4 variants run at most 512 threads and get 128.
__host__ __device__ constexpr int norm_max_threads(int cache) { return cache == 4 ? 512 : 1024; }

// ------------------------------------------------------------------ rms_norm
// One block per token. CACHE > 0: each thread keeps its CACHE vectors of the row in registers
// between the two phases (sum of squares, then scale), so the row is read from memory once.
// CACHE == 0 (very wide rows): the second phase reads the row again.
template <typename T, int VEC, int CACHE>
__global__ void __launch_bounds__(norm_max_threads(CACHE)) rms_norm_kernel(T* __restrict__ out, const T* __restrict__ in,
                                const T* __restrict__ weight, int64_t row_stride, int hidden,
                                float eps) {
  pdl_wait();
  pdl_launch_dependents();
  using V = Vec<T, VEC>;
  const int nvec = hidden / VEC;
  const V* x = reinterpret_cast<const V*>(in + blockIdx.x * row_stride);
  const V* w = reinterpret_cast<const V*>(weight);
  V* y = reinterpret_cast<V*>(out + blockIdx.x * static_cast<int64_t>(hidden));
  float ss = 0.f;
  if constexpr (CACHE > 0) {
    V regs[CACHE], wr[CACHE];
#pragma unroll
    for (int j = 0; j < CACHE; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < nvec) {
        regs[j] = x[i];
        wr[j] = w[i];  // loaded before the reduction, so its latency hides behind it
      }
    }
#pragma unroll
    for (int j = 0; j < CACHE; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < nvec) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float f = static_cast<float>(regs[j].v[k]);
          ss += f * f;
        }
      }
    }
    const float inv_rms = rsqrtf(block_sum(ss) / hidden + eps);
#pragma unroll
    for (int j = 0; j < CACHE; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < nvec) {
        V o;
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          o.v[k] = static_cast<T>(static_cast<float>(regs[j].v[k]) * inv_rms *
                                  static_cast<float>(wr[j].v[k]));
        y[i] = o;
      }
    }
  } else {
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      const V xv = x[i];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float f = static_cast<float>(xv.v[k]);
        ss += f * f;
      }
    }
    const float inv_rms = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      const V xv = x[i], wv = w[i];
      V o;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        o.v[k] = static_cast<T>(static_cast<float>(xv.v[k]) * inv_rms * static_cast<float>(wv.v[k]));
      y[i] = o;
    }
  }
}

// ------------------------------------------------------------------ fused_add_rms_norm
// residual += x; x = rms_norm(residual). Unfused this is two kernels: the add reads x and
// residual and writes residual, then the norm reads residual again and writes x (5 passes over
// a row). Fused, x and residual are read once and written once (4 passes), and the norm uses the
// fp32 sum held in registers instead of its rounded copy.
template <typename T, int VEC, int CACHE>
__global__ void __launch_bounds__(norm_max_threads(CACHE)) fused_add_rms_norm_kernel(T* __restrict__ in, T* __restrict__ residual,
                                          const T* __restrict__ weight, int64_t row_stride,
                                          int hidden, float eps) {
  pdl_wait();
  pdl_launch_dependents();
  using V = Vec<T, VEC>;
  const int nvec = hidden / VEC;
  V* x = reinterpret_cast<V*>(in + blockIdx.x * row_stride);
  V* r = reinterpret_cast<V*>(residual + blockIdx.x * static_cast<int64_t>(hidden));
  const V* w = reinterpret_cast<const V*>(weight);
  float ss = 0.f;
  if constexpr (CACHE > 0) {
    V xr[CACHE], rr[CACHE], wr[CACHE];  // the fp32 sums are recomputed (bit-identical) below
#pragma unroll
    for (int j = 0; j < CACHE; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < nvec) {
        xr[j] = x[i];
        rr[j] = r[i];
        wr[j] = w[i];  // before the reduction, as in rms_norm
      }
    }
#pragma unroll
    for (int j = 0; j < CACHE; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < nvec) {
        V h;
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float s = static_cast<float>(xr[j].v[k]) + static_cast<float>(rr[j].v[k]);
          ss += s * s;
          h.v[k] = static_cast<T>(s);
        }
        r[i] = h;
      }
    }
    const float inv_rms = rsqrtf(block_sum(ss) / hidden + eps);
#pragma unroll
    for (int j = 0; j < CACHE; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      if (i < nvec) {
        V o;
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          o.v[k] = static_cast<T>((static_cast<float>(xr[j].v[k]) + static_cast<float>(rr[j].v[k])) *
                                  inv_rms * static_cast<float>(wr[j].v[k]));
        x[i] = o;
      }
    }
  } else {
    // Wide rows: phase 1 only reads (so the fp32 sum can be recomputed from the untouched
    // inputs); phase 2 re-reads, then writes both. Each element belongs to one thread, so no race.
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      const V xv = x[i], rv = r[i];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float s = static_cast<float>(xv.v[k]) + static_cast<float>(rv.v[k]);
        ss += s * s;
      }
    }
    const float inv_rms = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
      const V xv = x[i], rv = r[i], wv = w[i];
      V o, h;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float s = static_cast<float>(xv.v[k]) + static_cast<float>(rv.v[k]);
        h.v[k] = static_cast<T>(s);
        o.v[k] = static_cast<T>(s * inv_rms * static_cast<float>(wv.v[k]));
      }
      r[i] = h;
      x[i] = o;
    }
  }
}

// Launch shape for the norms: VEC-wide accesses when the row allows them, enough threads that
// each holds norm_vectors_per_thread() vectors (up to 1024 threads), CACHE = vectors per thread
// rounded up to 2 or 4 (4 only within norm_max_threads); wider rows re-read (CACHE = 0).
struct NormLaunch {
  int vec, threads, cache;
};

// Vectors each thread holds (1, 2 or 4; env LIGHTVLLM_NORM_VPT, read once, default 2): fewer
// threads per row means fewer to synchronise in the block reduction and more loads in flight per
// thread; more means more threads to hide latency. B1 measures the choice (docs/benchmarks.md).
int norm_vectors_per_thread() {
  static const int per = [] {
    const char* env = std::getenv("LIGHTVLLM_NORM_VPT");
    const int v = env == nullptr ? 2 : std::atoi(env);
    return v == 1 || v == 4 ? v : 2;
  }();
  return per;
}

template <typename T>
NormLaunch norm_launch(int64_t hidden, int64_t row_stride, std::initializer_list<const void*> ptrs) {
  int vec = vec_width<T>();
  bool ok = hidden % vec == 0 && row_stride % vec == 0;
  for (const void* p : ptrs) ok = ok && aligned16(p);
  if (!ok) vec = 1;
  const int64_t nvec = hidden / vec;
  const int per = norm_vectors_per_thread();
  const int64_t want = (nvec + per - 1) / per;
  const int threads = static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (want + 31) / 32 * 32)));
  const int64_t per_thread = (nvec + threads - 1) / threads;
  int cache = per_thread <= 2 ? 2 : per_thread <= 4 ? 4 : 0;
  if (threads > norm_max_threads(cache)) cache = 0;  // very wide rows: re-read rather than spill
  return {vec, threads, cache};
}

// Calls f(std::integral_constant<int, VEC>, std::integral_constant<int, CACHE>) with the chosen
// compile-time pair, so each kernel is instantiated for the combinations it can meet.
template <typename T, typename F>
void with_norm_config(const NormLaunch& l, F&& f) {
  constexpr int W = vec_width<T>();
  auto by_cache = [&](auto vec) {
    switch (l.cache) {
      case 2: return f(vec, std::integral_constant<int, 2>{});
      case 4: return f(vec, std::integral_constant<int, 4>{});
      default: return f(vec, std::integral_constant<int, 0>{});
    }
  };
  if (l.vec == W)
    by_cache(std::integral_constant<int, W>{});
  else
    by_cache(std::integral_constant<int, 1>{});
}

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_rms_norm(out, input, weight);
  const Rows r = as_rows(input, "input");
  if (r.num_rows == 0 || r.hidden == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(device_of(input));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rms_norm_cuda", [&] {
    using T = scalar_t;
    const NormLaunch l = norm_launch<T>(r.hidden, r.row_stride,
                                        {input.const_data_ptr(), out.const_data_ptr(), weight.const_data_ptr()});
    with_norm_config<T>(l, [&](auto vec, auto cache) {
      launch(rms_norm_kernel<T, decltype(vec)::value, decltype(cache)::value>,
             dim3(static_cast<unsigned>(r.num_rows)), dim3(l.threads), stream, out.data_ptr<T>(),
             input.const_data_ptr<T>(), weight.const_data_ptr<T>(), r.row_stride,
             static_cast<int>(r.hidden), static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void fused_add_rms_norm(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight,
                        double eps) {
  check_fused_add_rms_norm(input, residual, weight);
  const Rows r = as_rows(input, "input");
  if (r.num_rows == 0 || r.hidden == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(device_of(input));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fused_add_rms_norm_cuda", [&] {
    using T = scalar_t;
    const NormLaunch l = norm_launch<T>(
        r.hidden, r.row_stride,
        {input.const_data_ptr(), residual.const_data_ptr(), weight.const_data_ptr()});
    with_norm_config<T>(l, [&](auto vec, auto cache) {
      launch(fused_add_rms_norm_kernel<T, decltype(vec)::value, decltype(cache)::value>,
             dim3(static_cast<unsigned>(r.num_rows)), dim3(l.threads), stream,
             input.data_ptr<T>(), residual.data_ptr<T>(),
             weight.const_data_ptr<T>(), r.row_stride, static_cast<int>(r.hidden),
             static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// ------------------------------------------------------------------ rotary_embedding
// One block per token; its threads walk over (head, chunk) items of both query and key heads.
// An item is P rotation pairs. NeoX pairs channel i with i + rot_dim/2: an item is P consecutive
// channels from each half (two P-wide accesses). GPT-J pairs 2i with 2i+1: an item is 2P
// consecutive channels (one access). cos/sin for the token's position are read from the cache
// row, in whatever dtype the cache has (often fp32 while q/k are bf16).
template <typename T, int N, bool VECTORIZED>
__device__ __forceinline__ void load_n(const T* p, float* f) {
  if constexpr (VECTORIZED) {
    const Vec<T, N> v = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
    for (int k = 0; k < N; ++k) f[k] = static_cast<float>(v.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) f[k] = static_cast<float>(p[k]);
  }
}

template <typename T, int N, bool VECTORIZED>
__device__ __forceinline__ void store_n(T* p, const float* f) {
  if constexpr (VECTORIZED) {
    Vec<T, N> v;
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = static_cast<T>(f[k]);
    *reinterpret_cast<Vec<T, N>*>(p) = v;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) p[k] = static_cast<T>(f[k]);
  }
}

template <typename T, typename C, int P, bool NEOX, bool VECTORIZED>
__global__ void rotary_embedding_kernel(const int64_t* __restrict__ positions, T* __restrict__ query,
                                        T* __restrict__ key, const C* __restrict__ cache,
                                        int rot_dim, int head_size, int q_heads, int k_heads,
                                        int64_t q_stride, int64_t k_stride) {
  const int64_t token = blockIdx.x;
  const C* cos = cache + positions[token] * rot_dim;
  const int half = rot_dim / 2;
  const C* sin = cos + half;
  const int items = half / P;  // per head
  const int total = (q_heads + k_heads) * items;
  for (int it = threadIdx.x; it < total; it += blockDim.x) {
    const int head = it / items, chunk = it - head * items;
    T* base = head < q_heads ? query + token * q_stride + head * head_size
                             : key + token * k_stride + (head - q_heads) * head_size;
    const int i0 = chunk * P;  // first pair index
    float c[P], s[P], x1[P], x2[P];
#pragma unroll
    for (int k = 0; k < P; ++k) {
      c[k] = static_cast<float>(cos[i0 + k]);
      s[k] = static_cast<float>(sin[i0 + k]);
    }
    if constexpr (NEOX) {
      load_n<T, P, VECTORIZED>(base + i0, x1);
      load_n<T, P, VECTORIZED>(base + half + i0, x2);
      float o1[P], o2[P];
#pragma unroll
      for (int k = 0; k < P; ++k) {
        o1[k] = x1[k] * c[k] - x2[k] * s[k];
        o2[k] = x2[k] * c[k] + x1[k] * s[k];
      }
      store_n<T, P, VECTORIZED>(base + i0, o1);
      store_n<T, P, VECTORIZED>(base + half + i0, o2);
    } else {
      float xy[2 * P];
      load_n<T, 2 * P, VECTORIZED>(base + 2 * i0, xy);
#pragma unroll
      for (int k = 0; k < P; ++k) {
        const float a = xy[2 * k], b = xy[2 * k + 1];
        xy[2 * k] = a * c[k] - b * s[k];
        xy[2 * k + 1] = b * c[k] + a * s[k];
      }
      store_n<T, 2 * P, VECTORIZED>(base + 2 * i0, xy);
    }
  }
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cache, bool is_neox) {
  check_rope(positions, query, key, head_size, cache);
  const int64_t num_tokens = positions.numel();
  const auto q_layout = rope_layout(query, num_tokens, head_size, "query");
  const auto k_layout = rope_layout(key, num_tokens, head_size, "key");
  const int64_t q_heads = q_layout.first, q_stride = q_layout.second;
  const int64_t k_heads = k_layout.first, k_stride = k_layout.second;
  if (num_tokens == 0) return;
  const c10::cuda::OptionalCUDAGuard guard(device_of(query));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor pos = positions.reshape(-1).to(at::kLong).contiguous();
  const int rot_dim = static_cast<int>(cache.size(1)), half = rot_dim / 2;
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(query.scalar_type(), "rope_cuda", [&] {
    using T = scalar_t;
    LIGHTVLLM_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "rope_cache", [&] {
      using C = scalar_t;
      constexpr int W = vec_width<T>();  // elements per 16-byte access
      // NeoX: P = W pairs per item (two W-wide accesses); GPT-J: P = W/2 (one W-wide access).
      const int p_vec = is_neox ? W : W / 2;
      const bool vec_ok = half % p_vec == 0 && head_size % W == 0 && q_stride % W == 0 &&
                          k_stride % W == 0 && aligned16(query.const_data_ptr()) &&
                          aligned16(key.const_data_ptr());
      const int p = vec_ok ? p_vec : 1;
      const int items = static_cast<int>((q_heads + k_heads) * (half / p));
      const int threads = std::min(512, std::max(32, (items + 31) / 32 * 32));
      auto launch = [&](auto kernel) {
        kernel<<<num_tokens, threads, 0, stream>>>(
            pos.const_data_ptr<int64_t>(), query.data_ptr<T>(), key.data_ptr<T>(),
            cache.const_data_ptr<C>(), rot_dim, static_cast<int>(head_size),
            static_cast<int>(q_heads), static_cast<int>(k_heads), q_stride, k_stride);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (is_neox)
        vec_ok ? launch(rotary_embedding_kernel<T, C, W, true, true>)
               : launch(rotary_embedding_kernel<T, C, 1, true, false>);
      else
        vec_ok ? launch(rotary_embedding_kernel<T, C, W / 2, false, true>)
               : launch(rotary_embedding_kernel<T, C, 1, false, false>);
    });
  });
}

// ------------------------------------------------------------------ silu_and_mul
// Elementwise: thread (x, y) handles one VEC-wide chunk of output row y; blocks stride over
// rows when there are more rows than grid.y allows. No integer division in the hot loop.
template <typename T, int VEC>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t rows,
                                    int64_t d) {
  pdl_wait();
  pdl_launch_dependents();
  using V = Vec<T, VEC>;
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (c >= d) return;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const T* g = in + row * 2 * d + c;
    const V gv = *reinterpret_cast<const V*>(g);
    const V uv = *reinterpret_cast<const V*>(g + d);
    V o;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float a = static_cast<float>(gv.v[k]);
      o.v[k] = static_cast<T>(a / (1.f + __expf(-a)) * static_cast<float>(uv.v[k]));
    }
    *reinterpret_cast<V*>(out + row * d + c) = o;
  }
}

void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  check_silu_and_mul(out, input);
  const int64_t d = input.size(-1) / 2;
  if (d == 0 || out.numel() == 0) return;
  const int64_t rows = out.numel() / d;
  const c10::cuda::OptionalCUDAGuard guard(device_of(input));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(input.scalar_type(), "silu_and_mul_cuda", [&] {
    using T = scalar_t;
    constexpr int W = vec_width<T>();
    const bool vec_ok = d % W == 0 && aligned16(input.const_data_ptr()) && aligned16(out.const_data_ptr());
    const int vec = vec_ok ? W : 1;
    const int threads = static_cast<int>(std::min<int64_t>(256, ((d / vec) + 31) / 32 * 32));
    const dim3 grid(static_cast<unsigned>((d / vec + threads - 1) / threads),
                    static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
    if (vec_ok)
      launch(silu_and_mul_kernel<T, W>, grid, dim3(threads), stream, out.data_ptr<T>(),
             input.const_data_ptr<T>(), rows, d);
    else
      launch(silu_and_mul_kernel<T, 1>, grid, dim3(threads), stream, out.data_ptr<T>(),
             input.const_data_ptr<T>(), rows, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// ------------------------------------------------------------------ small_batch_linear
// out[m, n] = sum_k x[m, k] * weight[n, k] for M <= 8 rows (decode steps of 1-8 sequences).
// At so few rows a linear layer is a weight stream: each byte of the weight is read once and
// feeds M multiply-adds, so the kernel is a memory copy with arithmetic on the side. cuBLAS's
// tiles for some shapes (Llama-8B's 4096 x 4096 o_proj, 6144 x 4096 qkv) leave it at 70-80% of
// the copy bandwidth (docs/benchmarks.md). Here one warp owns COLS output columns: its lanes walk
// those weight rows 16 bytes at a time (a warp reads 512 contiguous bytes per instruction),
// keep U * COLS loads in flight per lane (U unrolled steps), multiply each against the M rows of
// x (small, from L1), and sum the lanes with shuffles at the end: no shared memory, no split-K
// partials, no second kernel. The weight loads are marked streaming (evict first): read once,
// they should not push x out of the caches.
constexpr int kLinearWarps = 4;

// GLU (gate_up with SiLU·mul, weight [2d, K] = gate rows then up rows, out [M, d]): a warp owns
// COLS / 2 outputs j and reads the gate row j and the up row d + j of each, so both halves of an
// output meet in one warp and the activation is its epilogue: the [M, 2d] intermediate, its
// round trip through memory and the silu_and_mul kernel's launch go away. Each half is rounded to
// T before the activation, as the two-kernel path rounds gate_up's output: the same bits.
template <bool GLU, int COLS>
__device__ __forceinline__ int weight_row(int first, int c, int outputs) {
  if constexpr (GLU) {
    constexpr int HALF = COLS / 2;
    const int j = min(first + c % HALF, outputs - 1);  // past the end: re-read, never stored
    return c < HALF ? j : outputs + j;
  } else {
    return min(first + c, outputs - 1);
  }
}

template <typename T, int ROWS, int COLS, bool GLU>
__global__ void __launch_bounds__(kLinearWarps * 32) small_batch_linear_kernel(
    T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ weight, int n_outputs,
    int k_vecs, int64_t x_stride, int64_t out_stride, int64_t prefetch_bytes) {
  constexpr int VEC = vec_width<T>();
  constexpr int U = COLS >= 8 ? 1 : 8 / COLS;  // 8 loads of 16 bytes in flight per lane
  constexpr int OUTS = GLU ? COLS / 2 : COLS;  // outputs per warp
  static_assert(!GLU || COLS % 2 == 0, "a GLU warp reads gate and up rows in pairs");
  using V = Vec<T, VEC>;
  const int lane = threadIdx.x & 31;
  const int first = (blockIdx.x * kLinearWarps + (threadIdx.x >> 5)) * OUTS;
  const int64_t row_bytes = static_cast<int64_t>(k_vecs) * 16;
  if (first < n_outputs) {  // this warp's rows: one contiguous range (two for GLU: gate, up)
    const int64_t own = static_cast<int64_t>(min(OUTS, n_outputs - first)) * row_bytes;
    const int64_t budget = GLU ? prefetch_bytes / 2 : prefetch_bytes, at = first * row_bytes;
    const char* base = reinterpret_cast<const char*>(weight);
    if (at < budget) {
      prefetch_to_l2(base + at, min(own, budget - at), lane);
      if (GLU) prefetch_to_l2(base + n_outputs * row_bytes + at, min(own, budget - at), lane);
    }
  }
  pdl_wait();
  pdl_launch_dependents();
  if (first >= n_outputs) return;  // no block-wide synchronisation below: a warp may leave
  const V* w[COLS];
#pragma unroll
  for (int c = 0; c < COLS; ++c)
    w[c] = reinterpret_cast<const V*>(weight) +
           static_cast<int64_t>(weight_row<GLU, COLS>(first, c, n_outputs)) * k_vecs;
  float acc[ROWS][COLS] = {};
  for (int base = lane; base < k_vecs; base += 32 * U) {
    V wv[U][COLS];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int c = 0; c < COLS; ++c)
        if (base + u * 32 < k_vecs) wv[u][c] = load_streaming(w[c] + base + u * 32);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * 32 >= k_vecs) break;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const V xv = reinterpret_cast<const V*>(x + r * x_stride)[base + u * 32];
#pragma unroll
        for (int c = 0; c < COLS; ++c)
#pragma unroll
          for (int k = 0; k < VEC; ++k)
            acc[r][c] += static_cast<float>(xv.v[k]) * static_cast<float>(wv[u][c].v[k]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < COLS; ++c) acc[r][c] = warp_sum(acc[r][c]);  // every lane has the sums
  if (lane < OUTS * ROWS) {  // lane (r, c) writes one output
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int c = 0; c < OUTS; ++c)
        if (lane == r * OUTS + c && first + c < n_outputs) {
          if constexpr (GLU)
            out[r * out_stride + first + c] = silu_mul<T>(acc[r][c], acc[r][c + OUTS]);
          else
            out[r * out_stride + first + c] = static_cast<T>(acc[r][c]);
        }
  }
}

// Calls f(std::integral_constant<int, ROWS>{}) for ROWS = rows (1..8).
template <typename F>
void with_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 7: return f(std::integral_constant<int, 7>{});
    default: return f(std::integral_constant<int, 8>{});
  }
}


template <typename T, bool GLU>
void small_batch_linear_typed(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                              int64_t cols_per_warp, cudaStream_t stream) {
  const int64_t rows = input.size(0), n = GLU ? weight.size(0) / 2 : weight.size(0), k = weight.size(1);
  const int k_vecs = static_cast<int>(k / vec_width<T>());
  with_rows(rows, [&](auto r) {
    constexpr int ROWS = decltype(r)::value;
    auto go = [&](auto cols) {
      constexpr int COLS = decltype(cols)::value;
      const int64_t per_block = kLinearWarps * (GLU ? COLS / 2 : COLS);
      launch(small_batch_linear_kernel<T, ROWS, COLS, GLU>,
             dim3(static_cast<unsigned>((n + per_block - 1) / per_block)), dim3(kLinearWarps * 32),
             stream, out.data_ptr<T>(), input.const_data_ptr<T>(), weight.const_data_ptr<T>(),
             static_cast<int>(n), k_vecs, input.stride(0), out.stride(0), linear_prefetch_bytes());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if constexpr (GLU) {  // weight rows in gate/up pairs: 2 (one output) or 4 (two) per warp
      if (cols_per_warp == 4) return go(std::integral_constant<int, 4>{});
      return go(std::integral_constant<int, 2>{});
    } else {
      switch (cols_per_warp) {
        case 1: return go(std::integral_constant<int, 1>{});
        case 2: return go(std::integral_constant<int, 2>{});
        default: return go(std::integral_constant<int, 4>{});
      }
    }
  });
}

template <bool GLU>
void small_batch_linear_dispatch(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                                 int64_t cols_per_warp) {
  const int64_t rows = input.size(0), n = weight.size(0), k = weight.size(1);
  if (rows == 0 || n == 0) return;
  LIGHTVLLM_CHECK(k % 8 == 0 && input.stride(0) % 8 == 0 && aligned16(input.const_data_ptr()) && aligned16(weight.const_data_ptr()),
              "small_batch_linear needs K and the input's row stride to be multiples of 8 and "
              "16-byte aligned input and weight");
  const c10::cuda::OptionalCUDAGuard guard(device_of(input));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_SWITCH(input.scalar_type(), "small_batch_linear_cuda",
    AT_DISPATCH_CASE(at::ScalarType::Half, [&] { small_batch_linear_typed<scalar_t, GLU>(out, input, weight, cols_per_warp, stream); })
    AT_DISPATCH_CASE(at::ScalarType::BFloat16, [&] { small_batch_linear_typed<scalar_t, GLU>(out, input, weight, cols_per_warp, stream); }));
}

void small_batch_linear(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                        int64_t cols_per_warp) {
  check_small_batch_linear(out, input, weight, cols_per_warp, false);
  small_batch_linear_dispatch<false>(out, input, weight, cols_per_warp);
}

void small_batch_linear_silu(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                             int64_t cols_per_warp) {
  check_small_batch_linear(out, input, weight, cols_per_warp, true);
  small_batch_linear_dispatch<true>(out, input, weight, cols_per_warp);
}

// ------------------------------------------------------------------ prefetch_l2
// Asks L2 for the first `bytes` of a tensor, and nothing else: launched by the small-batch linear
// layers right after their GEMM for the *next* GEMM's weight (gpu_linear), so that weight streams
// in while the short kernels between the two (RoPE and the K/V store, attention, a norm) leave the
// memory idle. It lets its dependents start at once (the next kernel does not read what it
// touches) and waits for the kernel before it only at the end, so that waiting on this kernel
// still means waiting on that one: the chain of programmatic dependent launch stays intact.
__global__ void prefetch_l2_kernel(const char* __restrict__ p, int64_t bytes) {
  pdl_launch_dependents();
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * 128;
  for (int64_t off = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 128; off < bytes;
       off += step)
    prefetch_l2_line(p + off);
  pdl_wait();
}

void prefetch_l2(const at::Tensor& tensor, int64_t max_bytes) {
  LIGHTVLLM_CHECK(tensor.is_cuda() && tensor.is_contiguous(), "prefetch_l2 takes a contiguous CUDA tensor");
  const int64_t bytes = std::min<int64_t>(max_bytes, tensor.numel() * tensor.element_size());
  if (bytes <= 0) return;
  const c10::cuda::OptionalCUDAGuard guard(device_of(tensor));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  constexpr int threads = 256;
  const int64_t lines = (bytes + 127) / 128;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(64, (lines + threads - 1) / threads));
  launch(prefetch_l2_kernel, dim3(blocks), dim3(threads), stream,
         static_cast<const char*>(tensor.const_data_ptr()), bytes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------ vector_add
// The first CUDA exercise: c[i] = a[i] + b[i], grid-stride loop over 16-byte chunks plus a
// scalar tail.
template <typename T, int VEC>
__global__ void vector_add_kernel(T* __restrict__ c, const T* __restrict__ a,
                                  const T* __restrict__ b, int64_t n) {
  using V = Vec<T, VEC>;
  const int64_t nvec = n / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t i = tid; i < nvec; i += stride) {
    const V av = reinterpret_cast<const V*>(a)[i], bv = reinterpret_cast<const V*>(b)[i];
    V cv;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      cv.v[k] = static_cast<T>(static_cast<float>(av.v[k]) + static_cast<float>(bv.v[k]));
    reinterpret_cast<V*>(c)[i] = cv;
  }
  for (int64_t i = nvec * VEC + tid; i < n; i += stride)
    c[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

at::Tensor vector_add(const at::Tensor& a, const at::Tensor& b) {
  check_vector_add(a, b);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor c = at::empty_like(ac);
  const int64_t n = ac.numel();
  if (n == 0) return c;
  const c10::cuda::OptionalCUDAGuard guard(device_of(a));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, a.get_device()));
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(a.scalar_type(), "vector_add_cuda", [&] {
    using T = scalar_t;
    constexpr int W = vec_width<T>();
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((n / W + threads - 1) / threads + 1, sms * 8);
    if (aligned16(ac.const_data_ptr()) && aligned16(bc.const_data_ptr()) && aligned16(c.const_data_ptr()))
      vector_add_kernel<T, W><<<blocks, threads, 0, stream>>>(c.data_ptr<T>(), ac.const_data_ptr<T>(), bc.const_data_ptr<T>(), n);
    else
      vector_add_kernel<T, 1><<<blocks, threads, 0, stream>>>(c.data_ptr<T>(), ac.const_data_ptr<T>(), bc.const_data_ptr<T>(), n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightvllm, CUDA, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("small_batch_linear", &small_batch_linear);
  m.impl("small_batch_linear_silu", &small_batch_linear_silu);
  m.impl("prefetch_l2", &prefetch_l2);
  m.impl("vector_add", &vector_add);
}

}  // namespace lightvllm
