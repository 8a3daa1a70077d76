// A CUDA block run by CPU threads, to test a kernel's own source on a machine without a GPU.
//
// Every thread of a block is a std::thread with its own threadIdx; __syncthreads() is a barrier
// of the block's threads; __shared__ arrays are function statics (blocks run one after another);
// and the warp-wide instructions the kernels use are computed from what the warp's 32 threads
// hand in: mma.sync.m16n8k16 by PTX's fragment tables ("Matrix Fragments for mma.m16n8k16 with
// floating point type"), written here from the table, not from the kernel. Used by
// test_mma_emulation.py with cuda_fp16.h / cuda_bf16.h beside this file standing in for CUDA's.
// Memory is plain host memory: built with AddressSanitizer, a read or write past a buffer fails.
#pragma once

#include <algorithm>
#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct EmuDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 blockDim, gridDim;

struct int2 {
  int x, y;
};
inline int2 make_int2(int x, int y) { return {x, y}; }
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};

using std::max;
using std::min;

inline float __expf(float v) { return std::exp(v); }
[[noreturn]] inline void __trap() { std::abort(); }
template <typename V>
inline V __ldcs(const V* p) { return *p; }

// The block a thread belongs to, and its warp's exchange slots (set by the launcher).
struct EmuWarp {
  std::array<std::array<uint32_t, 4>, 32> a{};
  std::array<std::array<uint32_t, 2>, 32> b{};
  std::barrier<> sync{32};
};
struct EmuBlock {
  explicit EmuBlock(int threads) : sync(threads) {}
  std::barrier<> sync;
};
inline thread_local EmuBlock* emu_block = nullptr;
inline thread_local EmuWarp* emu_warp = nullptr;

inline void __syncthreads() { emu_block->sync.arrive_and_wait(); }

// The 16-bit value at `half` (0: low bits, the lower index) of a packed pair, as a float.
template <typename T>
float emu_element(uint32_t pair, int half);

// d (16 x 8, fp32) += A (16 x 16, row-major) * B (16 x 8, column-major). Lane = 4 * group + t.
// A: reg 0 rows g, k 2t..2t+1; reg 1 rows g + 8, same k; regs 2 and 3 the same at k + 8.
// B: reg 0 k 2t..2t+1 of column g; reg 1 k + 8. D: [0], [1] row g, columns 2t, 2t+1; [2], [3]
// row g + 8.
template <typename T>
void emulated_mma_m16n8k16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                           uint32_t b0, uint32_t b1) {
  EmuWarp& warp = *emu_warp;
  const int lane = threadIdx.x & 31;
  warp.a[lane] = {a0, a1, a2, a3};
  warp.b[lane] = {b0, b1};
  warp.sync.arrive_and_wait();
  auto a_at = [&](int row, int k) {
    const int owner = (row % 8) * 4 + (k % 8) / 2, reg = (row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return emu_element<T>(warp.a[owner][reg], k % 2);
  };
  auto b_at = [&](int k, int col) {
    const int owner = col * 4 + (k % 8) / 2, reg = k >= 8 ? 1 : 0;
    return emu_element<T>(warp.b[owner][reg], k % 2);
  };
  const int g = lane / 4, t = lane % 4;
  float sums[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    sums[i] = sum;
  }
  warp.sync.arrive_and_wait();  // every lane has read the slots before any lane writes again
  for (int i = 0; i < 4; ++i) d[i] += sums[i];
}
