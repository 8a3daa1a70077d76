// out[m, n] = sum_k x[m, k] * weight[n, k] for 1-16 rows on the tensor cores, streaming the weight.
//
// Why: at 2-16 rows our one-warp-per-column kernel (small_batch_linear) runs out of ALU before it
// runs out of memory (each weight value is converted and multiplied against every row), and
// cuBLAS's tiles leave the small shapes at 0.7-0.8 of the copy bandwidth (docs/benchmarks.md). A
// decode step of 2-16 sequences is still a weight stream, so here the weight is the *A* operand
// of mma.sync.m16n8k16 (16 weight rows = 16 output columns) and x the *B* operand (8 rows of x
// per MMA, one or two MMAs): the multiply costs one instruction per 2,048 multiply-adds.
//
// The layout trick: an MMA sums over its 16 k positions, so which physical k sits in which
// fragment slot does not matter as long as A and B agree. Each lane (group g = lane / 4, t =
// lane % 4) loads 16 contiguous bytes (8 values) of weight rows g and g + 8 and the same 8 k of
// x's row g, and hands values 0-3 to one MMA and 4-7 to the next: plain 16-byte loads, no shared
// memory, no shuffles. A warp steps 32 k at a time (4 lanes x 8 values) and keeps U steps of
// loads in flight.
//
// A block owns CG tiles of 16 output columns (8 for GLU) and its WARPS warps split K; their fp32
// partial sums meet in shared memory and warp 0 adds them in warp order (deterministic) and
// stores. Split-K inside the block gives a 4,096-column layer 256 blocks x WARPS warps at CG = 1:
// enough loads in flight. CG = 2 halves the x bytes per weight byte (one x load, two tiles).
//
// GLU (gate|up with SiLU·mul, weight [2d, K]): A's rows g are gate rows j and rows g + 8 the
// matching up rows d + j, so both halves of an output land in one lane's accumulators and the
// activation is the epilogue (silu_mul, each half rounded to T first: the two-kernel bits).
#pragma once

#include <type_traits>

#include "device_utils.cuh"

namespace lightvllm {
namespace {

constexpr int kMmaStepK = 32;  // k values a warp consumes per step: 4 lanes x 8 values

// d += a (16 x 16, row-major) * b (16 x 8, column-major), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                             uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#elif defined(LIGHTVLLM_WARP_EMULATION)
  // The CPU's emulation of a warp (phase1_kernels/tests/cuda_emulation): PTX's fragment tables
  // computed by the 32 lanes' threads, so this file's own code is tested on a GPU-less machine.
  emulated_mma_m16n8k16<T>(d, a0, a1, a2, a3, b0, b1);
#else
  __trap();  // built for sm_90 only (extension.py); kept honest for other targets
#endif
}

// Both MMAs of one 32-k step for one group of 8 rows of x: the lane's weight vectors `wa` (row g)
// and `wb` (row g + 8) against its x vector `xv`, values 0-3 then 4-7.
template <typename T>
__device__ __forceinline__ void mma_step(float (&acc)[4], const uint4& wa, const uint4& wb,
                                         const uint4& xv) {
  mma_m16n8k16<T>(acc, wa.x, wb.x, wa.y, wb.y, xv.x, xv.y);
  mma_m16n8k16<T>(acc, wa.z, wb.z, wa.w, wb.w, xv.z, xv.w);
}

// The weight rows of tile c (0 <= c < CG) of a block whose first output column is `first`: A's
// row g (the returned .x) and row g + 8 (.y). Past the end: the last row, re-read, never stored.
template <int CG, bool GLU>
__device__ __forceinline__ int2 tile_rows(int first, int c, int g, int n_outputs) {
  constexpr int TILE = GLU ? 8 : 16;  // output columns of one 16-row A tile
  const int a = min(first + c * TILE + g, n_outputs - 1);
  const int b = GLU ? n_outputs + a : min(first + c * TILE + g + 8, n_outputs - 1);
  return make_int2(a, b);
}

// NT: groups of 8 rows of x (1: rows <= 8, 2: rows <= 16). WARPS: warps splitting K in a block.
// CG: 16-row weight tiles per warp (each x load then feeds CG tiles' MMAs: at CG = 1 and 16 rows
// of x the lanes read as many bytes of x, from L1/L2, as of the weight from memory).
template <typename T, int NT, int WARPS, int CG, bool GLU>
__global__ void __launch_bounds__(WARPS * 32) mma_linear_kernel(
    T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ weight, int rows,
    int n_outputs, int k_steps, int64_t x_stride, int64_t out_stride, int64_t prefetch_bytes) {
  constexpr int U = CG == 1 ? 4 : 2;   // steps of loads in flight per warp (8 weight vectors)
  constexpr int TILE = GLU ? 8 : 16;   // output columns per tile
  constexpr int VECS = kMmaStepK / 8;  // 16-byte vectors per row and step (one per lane t)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int first = blockIdx.x * TILE * CG;
  const int64_t k = static_cast<int64_t>(k_steps) * kMmaStepK;
  // This warp's share of K, in steps.
  const int s_begin = static_cast<int>(static_cast<int64_t>(k_steps) * warp / WARPS);
  const int s_end = static_cast<int>(static_cast<int64_t>(k_steps) * (warp + 1) / WARPS);
  const uint4* wa[CG];
  const uint4* wb[CG];
#pragma unroll
  for (int c = 0; c < CG; ++c) {
    const int2 r = tile_rows<CG, GLU>(first, c, g, n_outputs);
    wa[c] = reinterpret_cast<const uint4*>(weight + r.x * k) + t;
    wb[c] = reinterpret_cast<const uint4*>(weight + r.y * k) + t;
    if (static_cast<int64_t>(r.x) * k * static_cast<int64_t>(sizeof(T)) < prefetch_bytes) {
      // Weights do not depend on the kernel before: ask L2 for this lane's share before the wait.
      const int64_t span = static_cast<int64_t>(s_end - s_begin) * kMmaStepK * sizeof(T);
      const char* pa = reinterpret_cast<const char*>(weight + r.x * k + s_begin * kMmaStepK);
      const char* pb = reinterpret_cast<const char*>(weight + r.y * k + s_begin * kMmaStepK);
      for (int64_t off = t * 128; off < span; off += 4 * 128) {
        prefetch_l2_line(pa + off);
        prefetch_l2_line(pb + off);
      }
    }
  }
  // x's rows g and g + 8 (B's columns); rows past the end read the last row: their outputs are
  // columns of D that nobody stores.
  const uint4* x0 = reinterpret_cast<const uint4*>(x + min(g, rows - 1) * x_stride) + t;
  const uint4* x1 = reinterpret_cast<const uint4*>(x + min(g + 8, rows - 1) * x_stride) + t;
  pdl_wait();
  pdl_launch_dependents();

  float acc[CG][NT][4] = {};
  for (int s0 = s_begin; s0 < s_end; s0 += U) {
    uint4 va[U][CG], vb[U][CG], vx[U][NT];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (s0 + u < s_end) {
        const int at = (s0 + u) * VECS;
#pragma unroll
        for (int c = 0; c < CG; ++c) {
          va[u][c] = __ldcs(wa[c] + at);
          vb[u][c] = __ldcs(wb[c] + at);
        }
        vx[u][0] = x0[at];  // plain loads, as small_batch_linear's: x is the last kernel's output
        if constexpr (NT > 1) vx[u][NT - 1] = x1[at];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (s0 + u < s_end) {
#pragma unroll
        for (int c = 0; c < CG; ++c)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) mma_step<T>(acc[c][nt], va[u][c], vb[u][c], vx[u][nt]);
      }
    }
  }

  // acc[c][nt][0|1]: tile c's column of A row g for x rows nt*8 + 2t, +1; [2|3]: row g + 8.
  constexpr int PER_LANE = CG * NT * 4;
  __shared__ float partial[WARPS][PER_LANE][32];
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) partial[warp][i][lane] = acc[i / (NT * 4)][(i / 4) % NT][i % 4];
  __syncthreads();
  if (warp != 0) return;
#pragma unroll
  for (int i = 0; i < PER_LANE; ++i) {
    float sum = partial[0][i][lane];
#pragma unroll
    for (int w = 1; w < WARPS; ++w) sum += partial[w][i][lane];  // in warp order: deterministic
    acc[i / (NT * 4)][(i / 4) % NT][i % 4] = sum;
  }
#pragma unroll
  for (int c = 0; c < CG; ++c) {
    const int col = first + c * TILE + g;  // A row g's output column (GLU: the output itself)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int m = nt * 8 + 2 * t + e;
        if (m >= rows) continue;
        T* o = out + m * out_stride;
        if constexpr (GLU) {
          if (col < n_outputs) o[col] = silu_mul<T>(acc[c][nt][e], acc[c][nt][2 + e]);
        } else {
          if (col < n_outputs) o[col] = from_float<T>(acc[c][nt][e]);
          if (col + 8 < n_outputs) o[col + 8] = from_float<T>(acc[c][nt][2 + e]);
        }
      }
    }
  }
}

}  // namespace
}  // namespace lightvllm
