// Stands in for CUDA's cuda_fp16.h in the CPU emulation (cuda_emulation.h): the type as its bits
// and the two conversions the kernels use, through the compiler's _Float16 (round to nearest even).
#pragma once
#include "cuda_emulation.h"

struct __half {
  uint16_t bits;
};

inline float __half2float(__half v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, 2);
  return static_cast<float>(h);
}

inline __half __float2half_rn(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}

template <>
inline float emu_element<__half>(uint32_t pair, int half) {
  return __half2float({static_cast<uint16_t>(pair >> (16 * half))});
}
