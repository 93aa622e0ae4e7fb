// AVX-512 intrinsics for the hand-written kernels (infer/matvec, infer/attend) and the loads
// they share. Include it last among a kernel file's includes: GCC 12's AVX-512 headers build
// shuffles and conversions on _mm512_undefined_*(), which -W(maybe-)uninitialized reports once
// inlined (a false positive: every lane is written), so those warnings are off from here on.
#pragma once
#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace modlm::ops {

// 16 floats, or 16 bf16 bit patterns widened to floats (each the top half of a float).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

}  // namespace modlm::ops
#endif
