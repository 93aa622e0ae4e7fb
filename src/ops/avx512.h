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

// r[j] = the sum of v[j]'s 16 lanes, for 16 vectors at once: a tree of pairwise shuffles and adds
// (45 instructions for 16 sums, where one horizontal sum each would take ~8).
inline __m512 sum_lanes16(const __m512* v) {
  __m512 a[8], b[4], c[2];
  for (int j = 0; j < 8; ++j)  // per 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3]
    a[j] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * j], v[2 * j + 1]), _mm512_unpackhi_ps(v[2 * j], v[2 * j + 1]));
  for (int j = 0; j < 4; ++j) {  // per 128-bit lane: the lane's quad sum of v[4j .. 4j+3]
    const __m512d x = _mm512_castps_pd(a[2 * j]), y = _mm512_castps_pd(a[2 * j + 1]);
    b[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int j = 0; j < 2; ++j)
    c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

}  // namespace modlm::ops
#endif
