// exp(x) for fp32, scalar and 8-wide AVX2, shared by the CPU kernels (SiLU, attention softmax).
//
// x = k ln2 + r with |r| <= ln2 / 2 (ln2 split in two constants so k ln2 is exact enough),
// exp(r) by Cephes' degree-6 polynomial, 2^k built in the exponent bits. Inputs are clamped to
// [-87, 88]: below, the result is ~1e-38 instead of 0; above, ~1.65e38 instead of inf. Relative
// error ~2e-7 (a few fp32 ulps), against std::exp's correctly rounded result.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LIGHTVLLM_AVX2 1
#endif

namespace lightvllm {

constexpr float kExpLo = -87.0f, kExpHi = 88.0f;

inline float exp_approx(float x) {
  x = std::min(std::max(x, kExpLo), kExpHi);
  const float k = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#ifdef LIGHTVLLM_AVX2
inline __m256 exp_approx(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(kExpLo)), _mm256_set1_ps(kExpHi));
  const __m256 k = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), x);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, x), x, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
#endif

}  // namespace lightvllm
