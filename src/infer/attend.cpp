#include "infer/attend.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "ops/fast_math.h"

#include "ops/avx512.h"
#if !defined(__AVX512F__) && defined(__AVX2__)
#include <immintrin.h>
#endif

namespace modlm::infer {

namespace {

inline float widen(float x) { return x; }
inline float widen(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }  // bf16

// s[t] = exp(s[t] - mx) for t < n; returns their sum. The forward pass's exp (ops/fast_math.h),
// so that decode and forward compute the same softmax.
inline float exp_shifted(float* s, int n, float mx) {
  float sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int t = 0; t < n; ++t) sum += (s[t] = ops::vexp<float>(s[t] - mx));
  return sum;
}

// How far ahead of the rows being read the vector kernels prefetch a bf16 cache, in bytes. With
// the hardware prefetcher alone a bf16 cache read from memory (BM_DecodeAttention/4096/1/32) ran at
// 10-14 GB/s against 19-24 for a float one, and at 15.5-18.3 with these prefetches (AVX2 build:
// 9-10 -> 12-14). A float cache is left to the hardware: prefetching it ran no faster.
template <typename KV>
constexpr size_t kCacheAhead = sizeof(KV) == 2 ? 8192 : 0;

// Prefetches the lines of bytes [from, from + len) of `a` (a_bytes long) followed by `b`
// (b_bytes): the keys pass runs on into the values' first lines (that pass comes next), the
// values pass into nothing.
inline void prefetch_ahead(const void* a, size_t a_bytes, const void* b, size_t b_bytes, size_t from, size_t len) {
  const size_t end = std::min(from + len, a_bytes + b_bytes);
  for (size_t i = from; i < end; i += 64)
    __builtin_prefetch(i < a_bytes ? (const char*)a + i : (const char*)b + (i - a_bytes), 0, 3);
}

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats a vector
using ops::load16;
using ops::sum_lanes16;

// s[t] = scale * (the 16-lane vector row_dot(K row t) summed), for t < n, by blocks of 16 rows
// reduced together (sum_lanes16); returns the largest score. K's rows are read once, in order,
// with the bf16 cache's prefetch running on into the values (read next).
template <int Dh, typename KV, typename RowDot>
inline float score_rows(const KV* K, const KV* Vv, int n, float scale, float* s, RowDot row_dot) {
  __m512 mxv = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  constexpr size_t kRow = sizeof(KV) * Dh;
  const size_t bytes = kRow * n;
  for (int t0 = 0; t0 < n; t0 += 16) {
    const int nb = std::min(16, n - t0);
    if constexpr (kCacheAhead<KV> > 0) prefetch_ahead(K, bytes, Vv, bytes, t0 * kRow + kCacheAhead<KV>, 16 * kRow);
    __m512 part[16];
    for (int j = 0; j < 16; ++j) part[j] = j < nb ? row_dot(K + (size_t)(t0 + j) * Dh) : _mm512_setzero_ps();
    const __mmask16 m = nb == 16 ? (__mmask16)0xffff : (__mmask16)((1u << nb) - 1);
    const __m512 sc = _mm512_mul_ps(sum_lanes16(part), _mm512_set1_ps(scale));
    _mm512_mask_storeu_ps(s + t0, m, sc);
    mxv = _mm512_mask_max_ps(mxv, m, mxv, sc);
  }
  return _mm512_reduce_max_ps(mxv);
}

// attend_one for head sizes of DC x 16: q and the output in registers; the scores of 16
// positions reduced together (sum_lanes16); each cached row read once per pass.
template <int DC, typename KV>
void attend_one_vec(const float* q, const KV* K, const KV* Vv, int n, float scale, float* s, float* o) {
  constexpr int Dh = DC * 16;
  __m512 qv[DC];
  for (int c = 0; c < DC; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  const float mx = score_rows<Dh>(K, Vv, n, scale, s, [&](const KV* k) {
    __m512 acc = _mm512_mul_ps(qv[0], load16(k));
    for (int c = 1; c < DC; ++c) acc = _mm512_fmadd_ps(qv[c], load16(k + 16 * c), acc);
    return acc;
  });
  const float sum = exp_shifted(s, n, mx);
  constexpr size_t kRow = sizeof(KV) * Dh;
  const size_t bytes = kRow * n;
  __m512 ov[DC];
  for (int c = 0; c < DC; ++c) ov[c] = _mm512_setzero_ps();
  for (int t = 0; t < n; ++t) {
    if constexpr (kCacheAhead<KV> > 0) prefetch_ahead(Vv, bytes, nullptr, 0, t * kRow + kCacheAhead<KV>, kRow);
    const __m512 p = _mm512_set1_ps(s[t]);
    const KV* v = Vv + (size_t)t * Dh;
    for (int c = 0; c < DC; ++c) ov[c] = _mm512_fmadd_ps(p, load16(v + 16 * c), ov[c]);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (int c = 0; c < DC; ++c) _mm512_storeu_ps(o + 16 * c, _mm512_mul_ps(ov[c], inv));
}

// attend_one_vec for a bf16 cache and head sizes of DC x 16, DC even: each 64-byte load of 32
// bf16 values is widened by two instructions, the even dimensions by a shift and the odd ones by
// a mask (each the top half of a float), against two zero-extensions and two shifts per 32 in
// load16; q and the output are kept in the same even/odd order (reordered once per call).
template <int DC>
void attend_one_bf16_pairs(const float* q, const uint16_t* K, const uint16_t* Vv, int n, float scale, float* s, float* o) {
  static_assert(DC % 2 == 0);
  constexpr int Dh = DC * 16, P = DC / 2;  // P loads of 32 values a row
  const __m512i even_idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_idx = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i high = _mm512_set1_epi32((int)0xFFFF0000u);
  __m512 qe[P], qo[P];
  for (int c = 0; c < P; ++c) {
    const __m512 a = _mm512_loadu_ps(q + 32 * c), b = _mm512_loadu_ps(q + 32 * c + 16);
    qe[c] = _mm512_permutex2var_ps(a, even_idx, b);
    qo[c] = _mm512_permutex2var_ps(a, odd_idx, b);
  }
  auto even = [](__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); };
  auto odd = [&](__m512i v) { return _mm512_castsi512_ps(_mm512_and_si512(v, high)); };
  const float mx = score_rows<Dh>(K, Vv, n, scale, s, [&](const uint16_t* k) {
    const __m512i v0 = _mm512_loadu_si512(k);
    __m512 acc = _mm512_fmadd_ps(qo[0], odd(v0), _mm512_mul_ps(qe[0], even(v0)));
    for (int c = 1; c < P; ++c) {
      const __m512i v = _mm512_loadu_si512(k + 32 * c);
      acc = _mm512_fmadd_ps(qo[c], odd(v), _mm512_fmadd_ps(qe[c], even(v), acc));
    }
    return acc;
  });
  const float sum = exp_shifted(s, n, mx);
  constexpr size_t kRow = sizeof(uint16_t) * Dh;
  const size_t bytes = kRow * n;
  __m512 oe[P], oo[P];
  for (int c = 0; c < P; ++c) oe[c] = oo[c] = _mm512_setzero_ps();
  for (int t = 0; t < n; ++t) {
    if constexpr (kCacheAhead<uint16_t> > 0) prefetch_ahead(Vv, bytes, nullptr, 0, t * kRow + kCacheAhead<uint16_t>, kRow);
    const __m512 p = _mm512_set1_ps(s[t]);
    const uint16_t* v = Vv + (size_t)t * Dh;
    for (int c = 0; c < P; ++c) {
      const __m512i w = _mm512_loadu_si512(v + 32 * c);
      oe[c] = _mm512_fmadd_ps(p, even(w), oe[c]);
      oo[c] = _mm512_fmadd_ps(p, odd(w), oo[c]);
    }
  }
  // Back to dimension order: lanes 0-15 of (oe, oo) interleaved are dims 0-15 and 16-31.
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (int c = 0; c < P; ++c) {
    _mm512_storeu_ps(o + 32 * c, _mm512_mul_ps(_mm512_permutex2var_ps(oe[c], lo_idx, oo[c]), inv));
    _mm512_storeu_ps(o + 32 * c + 16, _mm512_mul_ps(_mm512_permutex2var_ps(oe[c], hi_idx, oo[c]), inv));
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
// The same for AVX2 (8 floats a vector, 16 registers): the scores of 8 positions reduced
// together, q read from L1 (too few registers to hold it), the output accumulated 64 dims at a
// time. Without it an AVX2 build ran the plain loops below.
constexpr int kLanes = 8;  // floats a vector
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
// r[j] = the sum of v[j]'s 8 lanes.
inline __m256 sum_lanes8(const __m256* v) {
  const __m256 a0 = _mm256_hadd_ps(v[0], v[1]), a1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 a2 = _mm256_hadd_ps(v[4], v[5]), a3 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 b = _mm256_hadd_ps(a0, a1), c = _mm256_hadd_ps(a2, a3);  // per 128-bit half: v0..v3, v4..v7
  return _mm256_add_ps(_mm256_permute2f128_ps(b, c, 0x20), _mm256_permute2f128_ps(b, c, 0x31));
}

// o[0 .. 8 CN) = sum_t s[t] V[t, 0 .. 8 CN) (rows of Dh); the first pass over V prefetches it.
template <int CN, bool kFirstPass, typename KV>
inline void weigh_values(const float* s, const KV* Vv, int n, int Dh, float* o, float inv) {
  __m256 ov[CN];
  for (int c = 0; c < CN; ++c) ov[c] = _mm256_setzero_ps();
  const size_t row = sizeof(KV) * Dh;
  for (int t = 0; t < n; ++t) {
    if constexpr (kFirstPass && kCacheAhead<KV> > 0) prefetch_ahead(Vv, row * n, nullptr, 0, t * row + kCacheAhead<KV>, row);
    const __m256 p = _mm256_broadcast_ss(s + t);
    const KV* v = Vv + (size_t)t * Dh;
    for (int c = 0; c < CN; ++c) ov[c] = _mm256_fmadd_ps(p, load8(v + 8 * c), ov[c]);
  }
  for (int c = 0; c < CN; ++c) _mm256_storeu_ps(o + 8 * c, _mm256_mul_ps(ov[c], _mm256_set1_ps(inv)));
}

template <int DC, typename KV>
void attend_one_vec(const float* q, const KV* K, const KV* Vv, int n, float scale, float* s, float* o) {
  constexpr int Dh = DC * 8;
  __m256 mxv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  float mx = -std::numeric_limits<float>::infinity();
  constexpr size_t kRow = sizeof(KV) * Dh;
  const size_t bytes = kRow * n;
  for (int t0 = 0; t0 < n; t0 += 8) {
    const int nb = std::min(8, n - t0);
    if constexpr (kCacheAhead<KV> > 0) prefetch_ahead(K, bytes, Vv, bytes, t0 * kRow + kCacheAhead<KV>, 8 * kRow);
    __m256 part[8];
    for (int j = 0; j < 8; ++j) {
      if (j >= nb) {
        part[j] = _mm256_setzero_ps();
        continue;
      }
      const KV* k = K + (size_t)(t0 + j) * Dh;
      __m256 a0 = _mm256_mul_ps(_mm256_loadu_ps(q), load8(k)), a1 = _mm256_setzero_ps();
      for (int c = 1; c < DC; ++c) {
        __m256& a = c % 2 ? a1 : a0;
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), load8(k + 8 * c), a);
      }
      part[j] = _mm256_add_ps(a0, a1);
    }
    const __m256 sc = _mm256_mul_ps(sum_lanes8(part), _mm256_set1_ps(scale));
    if (nb == 8) {
      _mm256_storeu_ps(s + t0, sc);
      mxv = _mm256_max_ps(mxv, sc);
    } else {
      alignas(32) float t[8];
      _mm256_store_ps(t, sc);
      for (int j = 0; j < nb; ++j) s[t0 + j] = t[j], mx = std::max(mx, t[j]);
    }
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mxv);
  for (int i = 0; i < 8; ++i) mx = std::max(mx, lanes[i]);
  const float inv = 1.0f / exp_shifted(s, n, mx);
  constexpr int C1 = DC > 8 ? 8 : DC;
  weigh_values<C1, true>(s, Vv, n, Dh, o, inv);
  if constexpr (DC > 8) weigh_values<DC - 8, false>(s, Vv + 64, n, Dh, o + 64, inv);
}
#endif

// Any head size: the vector kernel for multiples of 16 up to 128, plain loops otherwise.
template <typename KV>
void attend_any(const float* q, const KV* K, const KV* Vv, int n, int Dh, float scale, float* s, float* o) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<KV, uint16_t>) {
    switch (Dh) {
      case 32: return attend_one_bf16_pairs<2>(q, K, Vv, n, scale, s, o);
      case 64: return attend_one_bf16_pairs<4>(q, K, Vv, n, scale, s, o);
      case 96: return attend_one_bf16_pairs<6>(q, K, Vv, n, scale, s, o);
      case 128: return attend_one_bf16_pairs<8>(q, K, Vv, n, scale, s, o);
      default: break;
    }
  }
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  switch (Dh) {  // the common head sizes (32, 64, 128) and their neighbours, in vectors of kLanes
    case 16: return attend_one_vec<16 / kLanes>(q, K, Vv, n, scale, s, o);
    case 32: return attend_one_vec<32 / kLanes>(q, K, Vv, n, scale, s, o);
    case 48: return attend_one_vec<48 / kLanes>(q, K, Vv, n, scale, s, o);
    case 64: return attend_one_vec<64 / kLanes>(q, K, Vv, n, scale, s, o);
    case 80: return attend_one_vec<80 / kLanes>(q, K, Vv, n, scale, s, o);
    case 96: return attend_one_vec<96 / kLanes>(q, K, Vv, n, scale, s, o);
    case 128: return attend_one_vec<128 / kLanes>(q, K, Vv, n, scale, s, o);
    default: break;
  }
#endif
  float mx = -std::numeric_limits<float>::infinity();
  for (int t = 0; t < n; ++t) {
    const KV* k = K + (size_t)t * Dh;
    float dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int d = 0; d < Dh; ++d) dot += q[d] * widen(k[d]);
    s[t] = dot * scale;
    mx = std::max(mx, s[t]);
  }
  const float sum = exp_shifted(s, n, mx);
  for (int d = 0; d < Dh; ++d) o[d] = 0;
  for (int t = 0; t < n; ++t) {
    const float p = s[t];
    const KV* v = Vv + (size_t)t * Dh;
#pragma omp simd
    for (int d = 0; d < Dh; ++d) o[d] += p * widen(v[d]);
  }
  const float inv = 1.0f / sum;
  for (int d = 0; d < Dh; ++d) o[d] *= inv;
}
}  // namespace

void attend_one(const float* q, const float* K, const float* V, int n, int Dh, float scale, float* s, float* o) {
  attend_any(q, K, V, n, Dh, scale, s, o);
}
void attend_one(const float* q, const uint16_t* K, const uint16_t* V, int n, int Dh, float scale, float* s, float* o) {
  attend_any(q, K, V, n, Dh, scale, s, o);
}

}  // namespace modlm::infer
