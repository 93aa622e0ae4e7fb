// exp for the hot loops. glibc's vectorised expf is only declared under -ffast-math (which would
// also break our NaN checks), so float uses this branch-free Cephes-style expf that GCC vectorises
// inside `omp simd` loops: relative error < 2e-7 over the clamped range. double keeps std::exp
// (the finite-difference tests run in double).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace modlm::ops {

inline float fast_expf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);  // floor would not vectorise
  float r = x - n * 0.693359375f;  // ln 2 split in two for precision
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;  // 2^n; memcpy (not std::bit_cast) so that GCC 12 still vectorises the loop
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

template <typename T>
inline T vexp(T x) {
  if constexpr (sizeof(T) == 4) return fast_expf(x);
  else return std::exp(x);
}

}  // namespace modlm::ops
