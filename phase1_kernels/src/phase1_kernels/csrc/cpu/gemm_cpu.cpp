// fp32 GEMM for the decode-sized linears of the CPU engine: out[M, N] = input[M, K] @ W^T with
// the weight W [N, K] packed once, after loading, into panels of 16 output columns.
//
// Packed layout: panel p holds columns 16p .. 16p+15 as [K][16] (zero beyond N), so the kernel
// reads each panel front to back, one 64-byte line per k. The micro-kernel keeps a 6 x 16 tile
// of the output in 12 AVX2 registers; per k it loads the panel's two 8-wide halves, broadcasts
// one input value per row and issues 12 FMAs. Each thread takes a contiguous range of panels
// and runs every 6-row block of the input over one panel before the next, so a panel is read
// from memory once per call and reused from L2 by all rows; while the first row block runs,
// the next panel is prefetched into L2 (a weight is used once per step: it always comes cold
// from DRAM). Rows that are not a multiple of 6 end with a smaller tile.
//
// Why not oneDNN / MKL: at 64 rows (B5's decode batch) their blocking is tuned for larger
// matrices; docs/benchmarks.md has the measured GFLOP/s of each.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common.h"
#include "vec_math.h"

namespace lightvllm {
namespace {

constexpr int64_t kPanel = 16;  // output columns per packed panel
constexpr int64_t kRows = 6;    // input rows per micro-kernel tile

#ifdef LIGHTVLLM_AVX2
// C[r, 0:16] = sum_k A[r, k] * B[k, 0:16] for r < MR; `next` is prefetched one line per k.
template <int MR>
inline void tile(const float* A, int64_t lda, const float* B, float* C, int64_t ldc, int64_t K,
                 const float* next) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  // Named accumulators, not an array: GCC keeps an array of __m256 in memory and stores every
  // accumulator on each k (measured: 30 instead of 88 GFLOP/s on one core).
  const float *a0 = A, *a1 = A + lda, *a2 = A + 2 * lda, *a3 = A + 3 * lda, *a4 = A + 4 * lda,
              *a5 = A + 5 * lda;
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * kPanel), b1 = _mm256_loadu_ps(B + k * kPanel + 8);
    _mm_prefetch(reinterpret_cast<const char*>(next + k * kPanel), _MM_HINT_T1);
    __m256 a;
#define LIGHTVLLM_ROW(r)                                \
  if constexpr (MR > r) {                               \
    a = _mm256_broadcast_ss(a##r + k);                  \
    c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);          \
    c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);          \
  }
    LIGHTVLLM_ROW(0) LIGHTVLLM_ROW(1) LIGHTVLLM_ROW(2) LIGHTVLLM_ROW(3) LIGHTVLLM_ROW(4)
    LIGHTVLLM_ROW(5)
#undef LIGHTVLLM_ROW
  }
#define LIGHTVLLM_STORE(r)                              \
  if constexpr (MR > r) {                               \
    _mm256_storeu_ps(C + r * ldc, c##r##0);             \
    _mm256_storeu_ps(C + r * ldc + 8, c##r##1);         \
  }
  LIGHTVLLM_STORE(0) LIGHTVLLM_STORE(1) LIGHTVLLM_STORE(2) LIGHTVLLM_STORE(3) LIGHTVLLM_STORE(4)
  LIGHTVLLM_STORE(5)
#undef LIGHTVLLM_STORE
}

inline void tile_rows(int64_t rows, const float* A, int64_t lda, const float* B, float* C,
                      int64_t ldc, int64_t K, const float* next) {
  switch (rows) {
    case 6: tile<6>(A, lda, B, C, ldc, K, next); break;
    case 5: tile<5>(A, lda, B, C, ldc, K, next); break;
    case 4: tile<4>(A, lda, B, C, ldc, K, next); break;
    case 3: tile<3>(A, lda, B, C, ldc, K, next); break;
    case 2: tile<2>(A, lda, B, C, ldc, K, next); break;
    default: tile<1>(A, lda, B, C, ldc, K, next); break;
  }
}
#else
// Without AVX2: the same loop order in plain C++ (correct everywhere, not tuned).
inline void tile_rows(int64_t rows, const float* A, int64_t lda, const float* B, float* C,
                      int64_t ldc, int64_t K, const float*) {
  for (int64_t r = 0; r < rows; ++r) {
    float acc[kPanel] = {0.f};
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < kPanel; ++j) acc[j] += A[r * lda + k] * B[k * kPanel + j];
    std::memcpy(C + r * ldc, acc, sizeof(acc));
  }
}
#endif

// All rows of `input` against panel p; a partial last panel goes through a 6 x 16 scratch tile.
void run_panel(int64_t p, int64_t num_panels, const float* A, int64_t lda, int64_t M,
               const float* packed, float* C, int64_t N, int64_t K) {
  const float* B = packed + p * K * kPanel;
  const float* next = p + 1 < num_panels ? B + K * kPanel : B;
  const int64_t cols = std::min(kPanel, N - p * kPanel);
  alignas(32) float scratch[kRows * kPanel];
  for (int64_t m = 0; m < M; m += kRows) {
    const int64_t rows = std::min(kRows, M - m);
    const float* pf = m == 0 ? next : B;  // the next panel once, during the first row block
    if (cols == kPanel) {
      tile_rows(rows, A + m * lda, lda, B, C + m * N + p * kPanel, N, K, pf);
    } else {
      tile_rows(rows, A + m * lda, lda, B, scratch, kPanel, K, pf);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(C + (m + r) * N + p * kPanel, scratch + r * kPanel, cols * sizeof(float));
    }
  }
}

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  LIGHTVLLM_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat,
              "pack_linear_weight takes a float32 [N, K] weight, got ", weight.scalar_type(), " ",
              weight.sizes());
  const at::Tensor w = weight.contiguous();
  const int64_t N = w.size(0), K = w.size(1), panels = (N + kPanel - 1) / kPanel;
  at::Tensor packed = at::zeros({panels, K, kPanel}, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      for (int64_t j = 0; j < std::min(kPanel, N - p * kPanel); ++j)
        for (int64_t k = 0; k < K; ++k) dst[(p * K + k) * kPanel + j] = src[(p * kPanel + j) * K + k];
  });
  return packed;
}

void packed_linear(at::Tensor& out, const at::Tensor& input, const at::Tensor& packed) {
  LIGHTVLLM_CHECK(input.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat &&
                  packed.scalar_type() == at::kFloat,
              "packed_linear is float32 only");
  LIGHTVLLM_CHECK(input.dim() == 2 && input.stride(1) == 1, "input must be [M, K] with contiguous "
              "rows, got ", input.sizes(), " strides ", input.strides());
  LIGHTVLLM_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && packed.is_contiguous() &&
                  packed.size(1) == input.size(1),
              "packed must come from pack_linear_weight for K = ", input.size(1), ", got ",
              packed.sizes());
  const int64_t M = input.size(0), K = input.size(1), N = out.size(1);
  LIGHTVLLM_CHECK(out.dim() == 2 && out.is_contiguous() && out.size(0) == M &&
                  (N + kPanel - 1) / kPanel == packed.size(0),
              "out must be a contiguous [", M, ", N] with N in the packed weight's ",
              packed.size(0), " panels of ", kPanel, ", got ", out.sizes());
  check_same_device(input, out, "input", "out");
  check_same_device(input, packed, "input", "packed");
  if (M == 0 || N == 0) return;
  const int64_t panels = packed.size(0), lda = M > 1 ? input.stride(0) : K;
  const float* A = input.const_data_ptr<float>();
  const float* B = packed.const_data_ptr<float>();
  float* C = out.data_ptr<float>();
  if (K == 0) {
    out.zero_();
    return;
  }
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) run_panel(p, panels, A, lda, M, B, C, N, K);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lightvllm, CPU, m) {
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("packed_linear", &packed_linear);
}

}  // namespace lightvllm
