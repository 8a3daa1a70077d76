// CPU kernels of the lightvllm ops: plain C++ loops the compiler can vectorize, one row (token)
// per task with at::parallel_for, every sum accumulated in fp32 whatever the storage dtype.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../common.h"
#include "vec_math.h"

namespace lightvllm {
namespace {

constexpr int kLanes = 16;  // independent partial sums: lets the compiler use SIMD for the reduction

template <typename T>
inline float sum_of_squares(const T* x, int64_t n) {
  float acc[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const float v = static_cast<float>(x[i + l]);
      acc[l] += v * v;
    }
  }
  float total = 0.f;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  for (; i < n; ++i) {
    const float v = static_cast<float>(x[i]);
    total += v * v;
  }
  return total;
}

template <typename T>
void rms_norm_impl(T* out, const T* in, const T* w, const Rows& r, float eps) {
  at::parallel_for(0, r.num_rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* x = in + row * r.row_stride;
      T* y = out + row * r.hidden;
      const float inv_rms = 1.f / std::sqrt(sum_of_squares(x, r.hidden) / r.hidden + eps);
      for (int64_t i = 0; i < r.hidden; ++i)
        y[i] = static_cast<T>(static_cast<float>(x[i]) * inv_rms * static_cast<float>(w[i]));
    }
  });
}

template <typename T>
void fused_add_rms_norm_impl(T* in, T* res, const T* w, const Rows& r, float eps) {
  at::parallel_for(0, r.num_rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(r.hidden);  // the fp32 sum, kept so the norm uses it, not its rounding
    for (int64_t row = begin; row < end; ++row) {
      T* x = in + row * r.row_stride;
      T* h = res + row * r.hidden;
      for (int64_t i = 0; i < r.hidden; ++i) {
        const float s = static_cast<float>(x[i]) + static_cast<float>(h[i]);
        sum[i] = s;
        h[i] = static_cast<T>(s);
      }
      const float inv_rms = 1.f / std::sqrt(sum_of_squares(sum.data(), r.hidden) / r.hidden + eps);
      for (int64_t i = 0; i < r.hidden; ++i)
        x[i] = static_cast<T>(sum[i] * inv_rms * static_cast<float>(w[i]));
    }
  });
}

template <typename T, typename C>
inline void rotate_heads(T* base, int64_t heads, int64_t head_size, const C* cos, const C* sin,
                         int64_t half, bool is_neox) {
  for (int64_t h = 0; h < heads; ++h) {
    T* x = base + h * head_size;
    if (is_neox) {  // pairs (i, i + half): rotate the two halves
      for (int64_t i = 0; i < half; ++i) {
        const float c = static_cast<float>(cos[i]), s = static_cast<float>(sin[i]);
        const float x1 = static_cast<float>(x[i]), x2 = static_cast<float>(x[i + half]);
        x[i] = static_cast<T>(x1 * c - x2 * s);
        x[i + half] = static_cast<T>(x2 * c + x1 * s);
      }
    } else {  // GPT-J: pairs (2i, 2i + 1): rotate interleaved neighbours
      for (int64_t i = 0; i < half; ++i) {
        const float c = static_cast<float>(cos[i]), s = static_cast<float>(sin[i]);
        const float x1 = static_cast<float>(x[2 * i]), x2 = static_cast<float>(x[2 * i + 1]);
        x[2 * i] = static_cast<T>(x1 * c - x2 * s);
        x[2 * i + 1] = static_cast<T>(x2 * c + x1 * s);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps) {
  check_rms_norm(out, input, weight);
  const Rows r = as_rows(input, "input");
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rms_norm_cpu", [&] {
    rms_norm_impl<scalar_t>(out.data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                            weight.const_data_ptr<scalar_t>(), r, static_cast<float>(eps));
  });
}

void fused_add_rms_norm(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight,
                        double eps) {
  check_fused_add_rms_norm(input, residual, weight);
  const Rows r = as_rows(input, "input");
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fused_add_rms_norm_cpu", [&] {
    fused_add_rms_norm_impl<scalar_t>(input.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(),
                                      weight.const_data_ptr<scalar_t>(), r, static_cast<float>(eps));
  });
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cache, bool is_neox) {
  check_rope(positions, query, key, head_size, cache);
  const int64_t num_tokens = positions.numel();
  const auto q_layout = rope_layout(query, num_tokens, head_size, "query");
  const auto k_layout = rope_layout(key, num_tokens, head_size, "key");
  const int64_t q_heads = q_layout.first, q_stride = q_layout.second;
  const int64_t k_heads = k_layout.first, k_stride = k_layout.second;
  const at::Tensor pos = positions.reshape(-1).to(at::kLong).contiguous();
  const int64_t* p = pos.const_data_ptr<int64_t>();
  const int64_t rot_dim = cache.size(1), half = rot_dim / 2, max_pos = cache.size(0);
  for (int64_t t = 0; t < num_tokens; ++t)
    LIGHTVLLM_CHECK(p[t] >= 0 && p[t] < max_pos, "position ", p[t], " outside cos_sin_cache of ",
                max_pos, " rows");
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(query.scalar_type(), "rope_cpu", [&] {
    using T = scalar_t;
    LIGHTVLLM_DISPATCH_FLOATING_TYPES(cache.scalar_type(), "rope_cache", [&] {
      using C = scalar_t;
      T* q = query.data_ptr<T>();
      T* k = key.data_ptr<T>();
      const C* cs = cache.const_data_ptr<C>();
      at::parallel_for(0, num_tokens, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const C* cos = cs + p[t] * rot_dim;
          rotate_heads(q + t * q_stride, q_heads, head_size, cos, cos + half, half, is_neox);
          rotate_heads(k + t * k_stride, k_heads, head_size, cos, cos + half, half, is_neox);
        }
      });
    });
  });
}

// silu(gate) * up for the first multiple of 8 elements with AVX2 (fp32 only); returns how many
// it did (the caller's scalar loop does the rest, and everything for other dtypes).
template <typename T>
inline int64_t silu_and_mul_simd(const T*, const T*, T*, int64_t) {
  return 0;
}

#ifdef LIGHTVLLM_AVX2
template <>
inline int64_t silu_and_mul_simd<float>(const float* gate, const float* up, float* o, int64_t d) {
  const __m256 one = _mm256_set1_ps(1.f);
  int64_t i = 0;
  for (; i + 8 <= d; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_approx(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)),
                                          _mm256_loadu_ps(up + i)));
  }
  return i;
}
#endif

void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  check_silu_and_mul(out, input);
  const int64_t d = input.size(-1) / 2;
  const int64_t rows = d == 0 ? 0 : out.numel() / d;
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(input.scalar_type(), "silu_and_mul_cpu", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* gate = x + r * 2 * d;
        const scalar_t* up = gate + d;
        scalar_t* o = y + r * d;
        for (int64_t i = silu_and_mul_simd(gate, up, o, d); i < d; ++i) {
          const float g = static_cast<float>(gate[i]);
          o[i] = static_cast<scalar_t>(g / (1.f + exp_approx(-g)) * static_cast<float>(up[i]));
        }
      }
    });
  });
}

at::Tensor vector_add(const at::Tensor& a, const at::Tensor& b) {
  check_vector_add(a, b);
  const at::Tensor ac = a.contiguous(), bc = b.contiguous();
  at::Tensor c = at::empty_like(ac);
  LIGHTVLLM_DISPATCH_FLOATING_TYPES(a.scalar_type(), "vector_add_cpu", [&] {
    const scalar_t* x = ac.const_data_ptr<scalar_t>();
    const scalar_t* y = bc.const_data_ptr<scalar_t>();
    scalar_t* z = c.data_ptr<scalar_t>();
    at::parallel_for(0, ac.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        z[i] = static_cast<scalar_t>(static_cast<float>(x[i]) + static_cast<float>(y[i]));
    });
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightvllm, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("vector_add", &vector_add);
}

}  // namespace lightvllm
