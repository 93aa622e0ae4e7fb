#include "ops/q8.h"

#include <algorithm>
#include <cmath>

namespace modlm {

void quantize_q8(const float* w, int rows, int cols, int8_t* q, float* scales) {
  const int nb = q8_blocks(cols);
#pragma omp parallel for schedule(static) if ((size_t)rows * cols > 65536)
  for (int r = 0; r < rows; ++r)
    for (int b = 0; b < nb; ++b) {
      const int k0 = b * kQ8Block, k1 = std::min(cols, k0 + kQ8Block);
      const float* x = w + (size_t)r * cols;
      float amax = 0;
      for (int k = k0; k < k1; ++k) amax = std::max(amax, std::abs(x[k]));
      const float s = amax / 127.0f;
      scales[(size_t)r * nb + b] = s;
      const float inv = s > 0 ? 1.0f / s : 0.0f;
      for (int k = k0; k < k1; ++k) q[(size_t)r * cols + k] = (int8_t)std::clamp(std::lrint(x[k] * inv), -127L, 127L);
    }
}

void dequantize_q8(const int8_t* q, const float* scales, int rows, int cols, float* dst) {
  const int nb = q8_blocks(cols);
  for (int r = 0; r < rows; ++r) {
    const int8_t* qr = q + (size_t)r * cols;
    const float* sc = scales + (size_t)r * nb;
    float* d = dst + (size_t)r * cols;
    for (int k = 0; k < cols; ++k) d[k] = (float)qr[k] * sc[k / kQ8Block];
  }
}

}  // namespace modlm
