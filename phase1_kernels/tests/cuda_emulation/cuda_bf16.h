// Stands in for CUDA's cuda_bf16.h in the CPU emulation (cuda_emulation.h): the type as its bits
// and the two conversions the kernels use, round to nearest even.
#pragma once
#include "cuda_emulation.h"

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t wide = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &wide, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fff + ((u >> 16) & 1);
  return {static_cast<uint16_t>(u >> 16)};
}

template <>
inline float emu_element<__nv_bfloat16>(uint32_t pair, int half) {
  return __bfloat162float({static_cast<uint16_t>(pair >> (16 * half))});
}
