#include "infer/matvec.h"

#include <algorithm>

#include "ops/gemm.h"
#include "tensor/tensor.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace modlm::infer {

namespace {

constexpr int kMaxNB = 8;  // inputs per register tile

#if defined(__AVX512F__)
// Horizontal sum (via memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized).
inline float hsum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0;
  for (int i = 0; i < 16; ++i) s += t[i];
  return s;
}

// R weight rows j0..j0+R-1 against NB inputs: R*NB accumulators stay in zmm registers, each
// 16-float slice of a weight row is loaded once and used NB times. Xp is the chunk's inputs
// packed as [in/16][NB][16] (zero-padded), so the inputs a slice meets are one contiguous run.
template <int R, int NB>
inline void tile(const float* W, int in, const float* Xp, float* Y, int ldy, int j0, bool acc) {
  __m512 s[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) s[r][b] = _mm512_setzero_ps();
  const float* w = W + (size_t)j0 * in;
  int k = 0;
  const float* xp = Xp;
  for (; k + 16 <= in; k += 16, xp += NB * 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_ps(w + (size_t)r * in + k);
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_load_ps(xp + b * 16);
      for (int r = 0; r < R; ++r) s[r][b] = _mm512_fmadd_ps(wv[r], xv, s[r][b]);
    }
  }
  if (k < in) {
    const __mmask16 m = (__mmask16)((1u << (in - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_mask_loadu_ps(_mm512_setzero_ps(), m, w + (size_t)r * in + k);
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_load_ps(xp + b * 16);
      for (int r = 0; r < R; ++r) s[r][b] = _mm512_fmadd_ps(wv[r], xv, s[r][b]);
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) {
      float v = hsum(s[r][b]);
      float& y = Y[(size_t)b * ldy + j0 + r];
      y = acc ? y + v : v;
    }
}
#else
template <int R, int NB>
inline void tile(const float* W, int in, const float* Xp, float* Y, int ldy, int j0, bool acc) {
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      const float* w = W + (size_t)(j0 + r) * in;
      float s = 0;
      for (int k0 = 0; k0 < in; k0 += 16) {
        const float* x = Xp + (size_t)(k0 / 16) * NB * 16 + b * 16;
        const int n = in - k0 < 16 ? in - k0 : 16;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < n; ++i) s += w[k0 + i] * x[i];
      }
      float& y = Y[(size_t)b * ldy + j0 + r];
      y = acc ? y + s : s;
    }
}
#endif

// Rows per tile for NB inputs: R*NB + R + 1 <= 32 vector registers, and few enough weight rows
// (each a separate stream, often 4 KiB apart: the same L1 set) for the cache's associativity.
template <int NB>
constexpr int rows_for() {
  return NB <= 4 ? 4 : 3;
}

template <int NB>
inline void rows_tile(const float* W, int in, const float* Xp, float* Y, int ldy, int j0, int rows, bool acc) {
  constexpr int R = rows_for<NB>();
  if (rows == R) tile<R, NB>(W, in, Xp, Y, ldy, j0, acc);
  else
    for (int r = 0; r < rows; ++r) tile<1, NB>(W, in, Xp, Y, ldy, j0 + r, acc);
}

inline void rows_tile_nb(int nb, const float* W, int in, const float* Xp, float* Y, int ldy, int j0, int rows, bool acc) {
  switch (nb) {
    case 1: rows_tile<1>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    case 2: rows_tile<2>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    case 3: rows_tile<3>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    case 4: rows_tile<4>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    case 5: rows_tile<5>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    case 6: rows_tile<6>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    case 7: rows_tile<7>(W, in, Xp, Y, ldy, j0, rows, acc); break;
    default: rows_tile<8>(W, in, Xp, Y, ldy, j0, rows, acc); break;
  }
}

}  // namespace

void matvec(const float* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate) {
  if (out <= 0 || B <= 0) return;
  ops::FlopCounter::add(2LL * B * out * in);
  // Pack the inputs: chunk c of up to kMaxNB rows (starting at row b0) at Xp + b0 * kpad, laid
  // out [kpad/16][nb][16]. A few KiB, reused by every weight row.
  const int kpad = (in + 15) / 16 * 16;
  thread_local AlignedVector<float> pack;
  if (pack.size() < (size_t)B * kpad) pack.resize((size_t)B * kpad);
  float* Xp = pack.data();
  for (int b0 = 0; b0 < B; b0 += kMaxNB) {
    const int nb = std::min(kMaxNB, B - b0);
    float* dst = Xp + (size_t)b0 * kpad;
    for (int kb = 0; kb < kpad / 16; ++kb)
      for (int b = 0; b < nb; ++b) {
        const float* src = X + (size_t)(b0 + b) * ldx + kb * 16;
        float* d = dst + ((size_t)kb * nb + b) * 16;
        const int n = std::min(16, in - kb * 16);
        for (int i = 0; i < n; ++i) d[i] = src[i];
        for (int i = n; i < 16; ++i) d[i] = 0.0f;
      }
  }
  // Work unit: a block of 24 weight rows (divisible by every tile height), all B inputs. The
  // batch loop is inside, so a block's rows are fetched from memory once and reused from cache.
  constexpr int kBlock = 24;
  const int blocks = (out + kBlock - 1) / kBlock;
  // Small products (a router, a tiny test model) are not worth waking the thread team for.
  const bool parallel = (size_t)out * in >= 32768;
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < blocks; ++blk) {
    const int j_begin = blk * kBlock, j_end = std::min(out, j_begin + kBlock);
    for (int b0 = 0; b0 < B; b0 += kMaxNB) {
      const int nb = std::min(kMaxNB, B - b0);
      const int R = nb <= 4 ? 4 : 3;
      for (int j = j_begin; j < j_end; j += R)
        rows_tile_nb(nb, W, in, Xp + (size_t)b0 * kpad, Y + (size_t)b0 * ldy, ldy, j, std::min(R, j_end - j), accumulate);
    }
  }
}

}  // namespace modlm::infer
