// bfloat16: the upper 16 bits of an IEEE float32 (8-bit exponent, 7-bit mantissa), the BF16
// dtype of safetensors (SPEC §6). Decoding can keep its weight matrices in bf16: half the bytes
// per step for a bandwidth-bound decode, at 2^-9 relative precision per weight.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>

namespace modlm {

inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Round to nearest, ties to even; NaN stays a (quiet) NaN, infinities stay infinite, and a
// finite value too large for bf16 rounds to infinity as float rounding would.
inline uint16_t float_to_bf16(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(rounded >> 16);
}

// The float nearest to f that bf16 can hold (float_to_bf16 and back).
inline float round_to_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

inline void to_bf16(const float* src, size_t n, uint16_t* dst) {
  for (size_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i]);
}

}  // namespace modlm
