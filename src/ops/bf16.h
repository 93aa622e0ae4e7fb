// bfloat16: the upper 16 bits of an IEEE float32 (8-bit exponent, 7-bit mantissa), the BF16
// dtype of safetensors (SPEC §6). Decoding can keep its weight matrices in bf16: half the bytes
// per step for a bandwidth-bound decode, at 2^-9 relative precision per weight.
#pragma once
#include <bit>
#include <cstddef>
#include <cmath>
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

// IEEE binary16 (the F16 dtype of safetensors): 5-bit exponent, 10-bit mantissa.
// f16 -> float is exact for every input (subnormals, infinities and NaNs included).
inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    const float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    bits = std::bit_cast<uint32_t>(f) | sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

// float -> f16, round to nearest, ties to even; beyond 65504 (from the halfway point 65520 on)
// it is infinity, as float rounding would give; NaN stays a quiet NaN.
inline uint16_t float_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u);
  if (a >= 0x477ff000u) return sign | 0x7c00u;
  if (a < 0x38800000u) {  // below 2^-14: a subnormal f16, mant = round(|f| * 2^24) (exact scaling)
    const float v = std::bit_cast<float>(a) * 16777216.0f;
    return sign | static_cast<uint16_t>(std::nearbyint(v));  // 1024 = the smallest normal, as it should
  }
  const uint32_t mant = a & 0x7fffffu;
  uint32_t h = (((a >> 23) - 127 + 15) << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves into the exponent
  return sign | static_cast<uint16_t>(h);
}

// n floats to bf16 (f16 = false) or f16 (true); returns the index of the first finite value f16
// cannot hold (it became infinity), or n when there is none (always n for bf16).
inline size_t to_16bit(const float* src, size_t n, uint16_t* dst, bool f16) {
  size_t first_overflow = n;
  for (size_t i = 0; i < n; ++i) {
    dst[i] = f16 ? float_to_f16(src[i]) : float_to_bf16(src[i]);
    if (f16 && first_overflow == n && (dst[i] & 0x7c00u) == 0x7c00u && std::isfinite(src[i])) first_overflow = i;
  }
  return first_overflow;
}

}  // namespace modlm
