// bf16 as the host sees it: the upper 16 bits of an IEEE fp32, stored in a uint16_t. Host code
// converts with these two functions; device code uses __nv_bfloat16, which has the same bits.
#pragma once
#include <cstdint>
#include <cstring>

namespace deit::kernels {

using bf16_bits = uint16_t;

inline bf16_bits float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16_bits>((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<bf16_bits>(u >> 16);
}

inline float bf16_to_float(bf16_bits h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace deit::kernels
