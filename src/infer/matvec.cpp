#include "infer/matvec.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <type_traits>

#include "ops/gemm.h"
#include "tensor/tensor.h"
#include "infer/rate_split.h"

#include "ops/bf16.h"

#include "ops/avx512.h"
#if !defined(__AVX512F__) && defined(__AVX2__)
#include <immintrin.h>
#endif

namespace modlm::infer {

namespace {

constexpr int kMaxNB = 8;  // inputs per register tile

// Each kernel's own record of how fast the threads run it (infer/rate_split.h): the one-row q8
// loop, the row tiles and the outer-product kernel each lean on memory and arithmetic
// differently, so the threads' speed ratio differs between them.
enum SplitPath { kSplitOneRow, kSplitRowTiles, kSplitOuter, kSplitPaths };
template <typename WT>
RateSplit& rate_split(SplitPath path) {
  static RateSplit splits[kSplitPaths];
  return splits[path];
}

// The smallest chunk a thread takes of a split product, in units of unit_bytes weight bytes:
// 16 KiB, ~0.5 us of one thread's reads, against ~20-100 ns per claim.
int grain_units(size_t unit_bytes) { return std::max(1, (int)(16384 / std::max<size_t>(unit_bytes, 1))); }

// AMD Zen (GCC tunes Zen 4 and 5 as znver3 or later): some kernel choices below were measured to
// differ there from Intel's (kBf16Wide, one_row_tiles).
#if defined(__znver3__) || defined(__znver4__) || defined(__znver5__)
constexpr bool kZen = true;
#else
constexpr bool kZen = false;
#endif

// How far ahead of the rows being read a tile also prefetches into L2 (T1), in bytes (0: not),
// beside the L1 prefetch of the next tile's rows (prefetch_rows). With 16- and 8-bit weights a
// tile's rows are short (q8: 1 KiB of a 1024-wide row), so that L1 prefetch runs only 2-4 KiB
// ahead; lines already on their way to L2 shorten each L1 miss (the likely reason; the gain is
// what is measured). M batch 1, bench generate, runs alternated (docs/performance.md): q8 best
// step 22.7-22.9 -> 25.4 GB/s (74-76 -> 79-80 % of stream), `generate` wall -10 % at 300 tokens
// (farm-bench); bf16 88-89 -> 90-93 %; 3-24 KiB all gain, 6 KiB most. Float weights (4 KiB
// rows, 4 per tile: 16 KiB ahead already) gain nothing.
template <typename WT>
constexpr int l2_ahead() {
  return sizeof(WT) < sizeof(float) ? 6144 : 0;
}

// q8 scales are a second stream beside the weights ([out, in/32] floats: 128 B per 1024-wide
// row), read by scalar loads that each block's multiply-add waits for. Nothing prefetched them,
// and the hardware prefetcher missed enough of them to stall the rows: at batch 1 the kernel read
// 41-45 GB/s against a 60-70 GB/s stream, 55-70 with the scales taken out of memory altogether.
// A tile therefore prefetches the scales of the rows kScaleRowsAhead rows on (all their lines,
// into L1): 1 row ahead 52-62 GB/s, 2 rows 51-66, 4 rows 47-69 (stand-alone harness over M-sized
// q8 matrices, 2 threads, runs alternated; docs/performance.md).
constexpr int kScaleRowsAhead = 2;
inline void prefetch_scales(const float* SC, int nblk, int row0, int rows) {
  if (!SC) return;
  const char* p = reinterpret_cast<const char*>(SC + (size_t)row0 * nblk);
  const size_t bytes = (size_t)rows * nblk * sizeof(float);
  for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);  // never faults, even past the end
}

#if defined(__AVX512F__)
// The first min(n, 16) lanes (n >= 0): a 16-slice's mask where fewer than 16 values are left.
inline __mmask16 first_lanes(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

// Horizontal sum by a shuffle tree: 4 dependent adds where a sum through memory was a chain of
// 16 at the end of every row tile: a 1024 x 1024 product from L2 at batch 1 ran 40 -> 46 GB/s
// (q8), 93 -> 108 (bf16), 112 -> 121 (f32); 10-15 % at batches 2-8 too.
inline float hsum(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

// A tile's results: Y[b, j0 + r] = (Y[b, j0 + r] +) the sum of s[r][b]'s lanes. 8 to 16
// accumulators are reduced by one shuffle tree (ops::sum_lanes16, 45 instructions for up to 16
// sums against ~8 each one by one): a 1024 x 1024 bf16 product from L2 at 2 inputs ran 80-83 ->
// 90-91 GB/s. (Past 16, two trees, one mostly padding, were no faster than the single sums.)
template <int R, int NB>
inline void store_sums(const __m512 (&s)[R][NB], float* Y, int ldy, int j0, bool acc) {
  constexpr int N = R * NB;
  if constexpr (N >= 8 && N <= 16) {
    __m512 v[16];
    for (int b = 0; b < NB; ++b)
      for (int r = 0; r < R; ++r) v[b * R + r] = s[r][b];
    for (int k = N; k < 16; ++k) v[k] = _mm512_setzero_ps();
    alignas(64) float t[16];
    _mm512_store_ps(t, ops::sum_lanes16(v));
    for (int b = 0; b < NB; ++b)
      for (int r = 0; r < R; ++r) {
        float& y = Y[(size_t)b * ldy + j0 + r];
        y = acc ? y + t[b * R + r] : t[b * R + r];
      }
  } else {
    for (int b = 0; b < NB; ++b)
      for (int r = 0; r < R; ++r) {
        const float v = hsum(s[r][b]);
        float& y = Y[(size_t)b * ldy + j0 + r];
        y = acc ? y + v : v;
      }
  }
}

// 16 weights as floats: a plain load, or 16 bf16 widened (each the top half of a float).
inline __m512 load_w(const float* p) { return ops::load16(p); }
inline __m512 load_w(const uint16_t* p) { return ops::load16(p); }
inline __m512 load_w(const Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
inline __m512 load_w(const int8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p))); }
inline __m512 load_w_masked(const Half* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
inline __m512 load_w_masked(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
inline __m512 load_w_masked(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_w_masked(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// The prefetches a tile issues for column k of its rows w (R rows of `in`), once per 64 bytes
// of a row consumed: the next tile's rows into L1, one line per row (the hardware prefetcher
// alone keeps too few misses in flight for short rows of narrow weights: q8 M decode 13 -> 23
// GB/s, docs/performance.md), and, for 16/8-bit weights, these rows l2_ahead() bytes on into L2.
template <int R, typename WT>
inline void prefetch_rows(const WT* w, int in, int k) {
  for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + (size_t)(R + r) * in + k), _MM_HINT_T0);
  if constexpr (l2_ahead<WT>() > 0)
    for (int r = 0; r < R; ++r)
      _mm_prefetch(reinterpret_cast<const char*>(w + (size_t)r * in + k) + l2_ahead<WT>(), _MM_HINT_T1);
}

// R weight rows j0..j0+R-1 against NB inputs: R*NB accumulators stay in zmm registers, each
// 16-float slice of a weight row is loaded once and used NB times. Xp is the chunk's inputs
// packed as [in/16][NB][16] (zero-padded), so the inputs a slice meets are one contiguous run.
// int8 weights (SC = true) are multiplied by their block's scale right after widening: scales
// SC [out, ceil(in / 32)], so each 16-wide slice lies inside one block.
template <int R, int NB, typename WT>
inline void tile(const WT* W, int in, const float* Xp, float* Y, int ldy, int j0, bool acc, const float* SC = nullptr) {
  __m512 s[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) s[r][b] = _mm512_setzero_ps();
  const WT* w = W + (size_t)j0 * in;
  const int nblk = q8_blocks(in);
  const float* sc = SC ? SC + (size_t)j0 * nblk : nullptr;
  prefetch_scales(SC, nblk, j0 + std::max(R, kScaleRowsAhead), R);
  int k = 0;
  const float* xp = Xp;
  constexpr int kPerLine = 64 / (int)sizeof(WT);  // weights per cache line (one prefetch each)
  if constexpr (std::is_same_v<WT, int8_t> && NB == 1) {
    // One input: a whole 32-weight block at a time, its scale applied once to the block's sum
    // (one multiply per 32 weights and row instead of two).
    for (; k + 32 <= in; k += 32, xp += 32) {
      if (k % kPerLine == 0) prefetch_rows<R>(w, in, k);
      const __m512 x0 = _mm512_load_ps(xp), x1 = _mm512_load_ps(xp + 16);
      for (int r = 0; r < R; ++r) {
        const int8_t* wr = w + (size_t)r * in + k;
        const __m512 blk = _mm512_fmadd_ps(load_w(wr + 16), x1, _mm512_mul_ps(load_w(wr), x0));
        s[r][0] = _mm512_fmadd_ps(blk, _mm512_set1_ps(sc[(size_t)r * nblk + k / kQ8Block]), s[r][0]);
      }
    }
  }
  for (; k + 16 <= in; k += 16, xp += NB * 16) {
    if (k % kPerLine == 0) prefetch_rows<R>(w, in, k);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_w(w + (size_t)r * in + k);
    if constexpr (std::is_same_v<WT, int8_t>)
      for (int r = 0; r < R; ++r) wv[r] = _mm512_mul_ps(wv[r], _mm512_set1_ps(sc[(size_t)r * nblk + k / kQ8Block]));
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_load_ps(xp + b * 16);
      for (int r = 0; r < R; ++r) s[r][b] = _mm512_fmadd_ps(wv[r], xv, s[r][b]);
    }
  }
  if (k < in) {
    const __mmask16 m = (__mmask16)((1u << (in - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_w_masked(w + (size_t)r * in + k, m);
    if constexpr (std::is_same_v<WT, int8_t>)
      for (int r = 0; r < R; ++r) wv[r] = _mm512_mul_ps(wv[r], _mm512_set1_ps(sc[(size_t)r * nblk + k / kQ8Block]));
    for (int b = 0; b < NB; ++b) {
      const __m512 xv = _mm512_load_ps(xp + b * 16);
      for (int r = 0; r < R; ++r) s[r][b] = _mm512_fmadd_ps(wv[r], xv, s[r][b]);
    }
  }
  store_sums<R, NB>(s, Y, ldy, j0, acc);
}

// bf16 weights, 32 per step: one 64-byte load, widened to two float vectors by interleaving
// zero low halves (unpacklo/unpackhi of 16-bit words). That puts, within each 128-bit lane, words
// 0-3 in the first vector and 4-7 in the second, so the inputs are packed in that order
// ([in/32][NB][32], pack_bf16_order); the sum then runs in another order than the float kernel's.
template <int R, int NB>
inline void tile_bf16(const uint16_t* W, int in, const float* Xp, float* Y, int ldy, int j0, bool acc) {
  __m512 s[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) s[r][b] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  const uint16_t* w = W + (size_t)j0 * in;
  const float* xp = Xp;
  for (int k = 0; k < in; k += 32, xp += NB * 32) {
    prefetch_rows<R>(w, in, k);  // 32 bf16 = one line per row
    __m512 lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      const __m512i v = k + 32 <= in ? _mm512_loadu_si512(w + (size_t)r * in + k)
                                     : _mm512_maskz_loadu_epi16((__mmask32)((1ull << (in - k)) - 1), w + (size_t)r * in + k);
      lo[r] = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v));
      hi[r] = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v));
    }
    for (int b = 0; b < NB; ++b) {
      const __m512 xl = _mm512_load_ps(xp + b * 32), xh = _mm512_load_ps(xp + b * 32 + 16);
      for (int r = 0; r < R; ++r) s[r][b] = _mm512_fmadd_ps(hi[r], xh, _mm512_fmadd_ps(lo[r], xl, s[r][b]));
    }
  }
  store_sums<R, NB>(s, Y, ldy, j0, acc);
}

// The bf16 path above (32 per step, permuted packing) where it was measured, on Intel
// (Sapphire/Emerald Rapids). On AMD Zen (GCC tunes AVX-512 Zen 4/5 as znver3 or later) the plain
// tiles, which widen 16 at a time by zero-extend and shift, ran faster: M head [32000, 1024] from
// memory (bench_kernels BM_DecodeMatvec/B/1/0/0, AMD EPYC Zen 5, 3 alternations), batch 8
// 90-117 -> 197-201 GFLOP/s, batch 1 41-46 -> 44-47 GB/s.
constexpr bool kBf16Wide = !kZen;

// One to three inputs, 16- and 8-bit weights, on AMD Zen: one weight row at a time, front to
// back, two accumulator chains per input and no prefetch of the next row (an L2 prefetch
// l2_ahead() on in the row, except for one input of 16-bit weights). Each thread then reads one
// sequential stream, which the hardware prefetcher follows best. One input: the M decode
// matrices (477 MB bf16, 238 MB q8; a stand-alone harness over this file's kernels, 2 threads,
// best of 8, three runs, AMD EPYC Zen 5) bf16 35-36 -> 50-54 GB/s, q8 33-45 -> 43-54, where a
// plain parallel sum of the same matrices reads 48. (Two-row tiles, or a prefetch of the next
// row, interleave two streams per thread; on this machine that costs a third.) Two and three
// inputs (a routed block that few sequences of a batch need; the harness cycling the 16 M
// layers' matrices from memory, best of 5, two alternations against the row tiles): q8 28.5-29.4
// -> 34-38 GB/s (2 inputs) and 27-28 -> 30-33 (3), bf16 38-39 -> 47 and 36-42 -> 44.5, f16 41 ->
// 47 and 38-41 -> 44-45; without the L2 prefetch bf16 gained nothing. At four inputs neither
// gains; float loses at every count (its 4-row tiles stay).
template <int NB, typename WT>
inline void row_inputs(const WT* W, int in, const float* Xp, float* Y, int ldy, int j, bool acc, const float* SC) {
  const WT* w = W + (size_t)j * in;
  __m512 s[2][NB];  // [chain][input]
  for (int h = 0; h < 2; ++h)
    for (int b = 0; b < NB; ++b) s[h][b] = _mm512_setzero_ps();
  // The inputs' 16-slice at column k (a multiple of 16): Xp packed [in/16][NB][16].
  auto x_at = [&](int k, int b) { return _mm512_load_ps(Xp + (size_t)k * NB + b * 16); };
  int k = 0;
  if constexpr (std::is_same_v<WT, int8_t>) {
    // Two 32-weight blocks per step, one per chain; a block's scale multiplies its sum once.
    const float* sc = SC + (size_t)j * q8_blocks(in);
    prefetch_scales(SC, q8_blocks(in), j + kScaleRowsAhead, 1);
    for (; k + 64 <= in; k += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(w + k) + l2_ahead<WT>(), _MM_HINT_T1);
      for (int h = 0; h < 2; ++h) {
        const int kb = k + 32 * h;
        const __m512 w0 = load_w(w + kb), w1 = load_w(w + kb + 16), scale = _mm512_set1_ps(sc[kb / kQ8Block]);
        for (int b = 0; b < NB; ++b)
          s[h][b] = _mm512_fmadd_ps(_mm512_fmadd_ps(w1, x_at(kb + 16, b), _mm512_mul_ps(w0, x_at(kb, b))), scale, s[h][b]);
      }
    }
    for (; k < in; k += 16) {  // the last 16-slices, each inside one block; masked at the end
      const __m512 wv = _mm512_mul_ps(load_w_masked(w + k, first_lanes(in - k)), _mm512_set1_ps(sc[k / kQ8Block]));
      for (int b = 0; b < NB; ++b) s[0][b] = _mm512_fmadd_ps(wv, x_at(k, b), s[0][b]);
    }
  } else {
    for (; k + 32 <= in; k += 32) {
      if constexpr (NB > 1) _mm_prefetch(reinterpret_cast<const char*>(w + k) + l2_ahead<WT>(), _MM_HINT_T1);
      for (int h = 0; h < 2; ++h) {
        const __m512 wv = load_w(w + k + 16 * h);
        for (int b = 0; b < NB; ++b) s[h][b] = _mm512_fmadd_ps(wv, x_at(k + 16 * h, b), s[h][b]);
      }
    }
    for (; k < in; k += 16) {
      const __m512 wv = load_w_masked(w + k, first_lanes(in - k));
      for (int b = 0; b < NB; ++b) s[0][b] = _mm512_fmadd_ps(wv, x_at(k, b), s[0][b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const float v = hsum(_mm512_add_ps(s[0][b], s[1][b]));
    float& y = Y[(size_t)b * ldy + j];
    y = acc ? y + v : v;
  }
}
// One input, q8 weights, on AMD Zen: each thread takes one contiguous range of rows and runs
// them through this loop (no per-row dispatch), four accumulator chains of one 32-weight block
// each, 128 weights a step, with an L2 prefetch 8 KiB on in the row stream. From L2 (one thread,
// a [256, 1024] matrix) it ran 37 GB/s where row_inputs<1> ran 28: the q8 kernel was
// compute-bound near the per-core memory rate. In the decoder (M, batch 1, kernels alternated
// step by step in one process, two runs) the step took 0.95x the time. The same loop for
// float rows gained nothing there (1.0x; 1.05-1.15x slower with a prefetch), bf16 below
// (docs/performance.md, "Batch 1 inside a real step").
constexpr int kQ8RowPrefetch = 8192;

[[maybe_unused]] void rows_q8(const int8_t* W, int in, const float* x, float* Y, int j0, int j1, bool acc, const float* SC) {
  const int nblk = q8_blocks(in);
  for (int j = j0; j < j1; ++j) {
    const int8_t* w = W + (size_t)j * in;
    const float* sc = SC + (size_t)j * nblk;
    prefetch_scales(SC, nblk, j + kScaleRowsAhead, 1);
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int k = 0;
    for (; k + 128 <= in; k += 128) {
      // (__builtin_prefetch: GCC 12 dropped _mm_prefetch calls made through an inline helper
      // here, seen in the assembly.)
      __builtin_prefetch(w + k + kQ8RowPrefetch, 0, 2);
      __builtin_prefetch(w + k + kQ8RowPrefetch + 64, 0, 2);
      for (int h = 0; h < 4; ++h) {
        const int kb = k + 32 * h;
        const __m512 blk =
            _mm512_fmadd_ps(load_w(w + kb + 16), _mm512_load_ps(x + kb + 16), _mm512_mul_ps(load_w(w + kb), _mm512_load_ps(x + kb)));
        s[h] = _mm512_fmadd_ps(blk, _mm512_set1_ps(sc[kb / kQ8Block]), s[h]);
      }
    }
    for (; k < in; k += 16) {  // the last 16-slices, each inside one block; masked at the end
      const __m512 wv = _mm512_mul_ps(load_w_masked(w + k, first_lanes(in - k)), _mm512_set1_ps(sc[k / kQ8Block]));
      s[0] = _mm512_fmadd_ps(wv, _mm512_load_ps(x + k), s[0]);
    }
    const float v = hsum(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
    Y[j] = acc ? Y[j] + v : v;
  }
}
constexpr bool kOneRowLoops = kZen;
// The same loop for bf16 and float rows (bf16 widened 16 at a time, as the Zen row kernels do),
// four chains of 16 weights.
// - bf16: an L2 prefetch 4 KiB on. Decoder harness as above, after the rate split: 0.87-0.95x the
//   step time of row_inputs<1> through the block loop in four runs (no prefetch 0.95-0.96x, 8
//   KiB 0.96x). (Before the split and the teams-of-one fix it measured 1.0x: the imbalance hid it.)
// - float: no prefetch (the hardware's runs far enough ahead of 4 KiB rows). Tried in session g
//   (1.0x; 1.05-1.15x slower with a prefetch) while the threads' ends of each product still
//   drifted apart; with threads that help each other (rate_split.h), decoder harness, M batch 1,
//   five runs in fast minutes (probes 67-82 GB/s): 0.947-0.960x the step time of the row tiles
//   (best steps 86-93 against 80-88 % of the probe; an 8 KiB prefetch 0.98x); S 0.82x.
template <typename WT>
constexpr int row_prefetch() {
  return std::is_same_v<WT, uint16_t> ? 4096 : 0;  // bytes ahead in the row stream; 0: none
}

template <typename WT>
void rows_plain(const WT* W, int in, const float* x, float* Y, int j0, int j1, bool acc) {
  for (int j = j0; j < j1; ++j) {
    const WT* w = W + (size_t)j * in;
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int k = 0;
    for (; k + 64 <= in; k += 64) {
      if constexpr (row_prefetch<WT>() > 0) {  // bf16: 128 bytes a step, two lines prefetched
        __builtin_prefetch(reinterpret_cast<const char*>(w + k) + row_prefetch<WT>(), 0, 2);
        __builtin_prefetch(reinterpret_cast<const char*>(w + k) + row_prefetch<WT>() + 64, 0, 2);
      }
      for (int h = 0; h < 4; ++h) s[h] = _mm512_fmadd_ps(load_w(w + k + 16 * h), _mm512_load_ps(x + k + 16 * h), s[h]);
    }
    for (; k < in; k += 16) s[0] = _mm512_fmadd_ps(load_w_masked(w + k, first_lanes(in - k)), _mm512_load_ps(x + k), s[0]);
    const float v = hsum(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3])));
    Y[j] = acc ? Y[j] + v : v;
  }
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// ---- AVX2 + FMA (Zen 1-3, Intel before Skylake-X and its client parts): 8 floats a vector --------
//
// The same row tiles as above with 16 vector registers instead of 32: the inputs keep the
// [in/16][NB][16] packing and each 16-slice is taken as two 8-wide halves, both into the same
// accumulators (one more order of summation). Without this path an AVX2 build ran the scalar
// loops below: M batch 1 at 2.2 GB/s (q8) and 8.4 (f32) against a 29 GB/s stream (AMD EPYC,
// 2026-12-04, docs/performance.md).
inline float hsum(__m256 v) {
  __m128 b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  b = _mm_add_ps(b, _mm_movehl_ps(b, b));
  b = _mm_add_ss(b, _mm_movehdup_ps(b));
  return _mm_cvtss_f32(b);
}

template <int R, int NB>
inline void store_sums(const __m256 (&s)[R][NB], float* Y, int ldy, int j0, bool acc) {
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < R; ++r) {
      const float v = hsum(s[r][b]);
      float& y = Y[(size_t)b * ldy + j0 + r];
      y = acc ? y + v : v;
    }
}

// 8 weights as floats.
inline __m256 load_w(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load_w(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline __m256 load_w(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
inline __m256 load_w(const int8_t* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))); }

template <int R, typename WT>
inline void prefetch_rows(const WT* w, int in, int k) {
  for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + (size_t)(R + r) * in + k), _MM_HINT_T0);
  if constexpr (l2_ahead<WT>() > 0)
    for (int r = 0; r < R; ++r)
      _mm_prefetch(reinterpret_cast<const char*>(w + (size_t)r * in + k) + l2_ahead<WT>(), _MM_HINT_T1);
}

// One 16-slice (weights w + r * ldw, inputs xp [NB][16]) into the accumulators; q8 rows times
// their block's scale.
template <int R, int NB, typename WT>
inline void tile_slice(const WT* w, size_t ldw, const float* xp, __m256 (&s)[R][NB], const float* scale) {
  for (int h = 0; h < 16; h += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_w(w + (size_t)r * ldw + h);
    if constexpr (std::is_same_v<WT, int8_t>)
      for (int r = 0; r < R; ++r) wv[r] = _mm256_mul_ps(wv[r], _mm256_broadcast_ss(scale + r));
    for (int b = 0; b < NB; ++b) {
      const __m256 xv = _mm256_load_ps(xp + b * 16 + h);
      for (int r = 0; r < R; ++r) s[r][b] = _mm256_fmadd_ps(wv[r], xv, s[r][b]);
    }
  }
}

template <int R, int NB, typename WT>
inline void tile(const WT* W, int in, const float* Xp, float* Y, int ldy, int j0, bool acc, const float* SC = nullptr) {
  __m256 s[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) s[r][b] = _mm256_setzero_ps();
  const WT* w = W + (size_t)j0 * in;
  const int nblk = q8_blocks(in);
  const float* sc = SC ? SC + (size_t)j0 * nblk : nullptr;
  prefetch_scales(SC, nblk, j0 + std::max(R, kScaleRowsAhead), R);
  float scale[R];
  int k = 0;
  const float* xp = Xp;
  constexpr int kPerLine = 64 / (int)sizeof(WT);
  if constexpr (std::is_same_v<WT, int8_t> && NB == 1) {
    // One input: a whole 32-weight block at a time, its scale applied once to the block's sum.
    for (; k + 32 <= in; k += 32, xp += 32) {
      if (k % kPerLine == 0) prefetch_rows<R>(w, in, k);
      const __m256 x0 = _mm256_load_ps(xp), x1 = _mm256_load_ps(xp + 8), x2 = _mm256_load_ps(xp + 16),
                   x3 = _mm256_load_ps(xp + 24);
      for (int r = 0; r < R; ++r) {
        const int8_t* wr = w + (size_t)r * in + k;
        __m256 blk = _mm256_mul_ps(load_w(wr), x0);
        blk = _mm256_fmadd_ps(load_w(wr + 8), x1, blk);
        blk = _mm256_fmadd_ps(load_w(wr + 16), x2, blk);
        blk = _mm256_fmadd_ps(load_w(wr + 24), x3, blk);
        s[r][0] = _mm256_fmadd_ps(blk, _mm256_broadcast_ss(sc + (size_t)r * nblk + k / kQ8Block), s[r][0]);
      }
    }
  }
  for (; k + 16 <= in; k += 16, xp += NB * 16) {
    if (k % kPerLine == 0) prefetch_rows<R>(w, in, k);
    if constexpr (std::is_same_v<WT, int8_t>)
      for (int r = 0; r < R; ++r) scale[r] = sc[(size_t)r * nblk + k / kQ8Block];
    tile_slice<R, NB>(w + k, (size_t)in, xp, s, scale);
  }
  if (k < in) {
    // The last, partial slice: its weights copied after zeros-padding (the inputs are padded).
    WT tail[R][16] = {};
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < in - k; ++i) tail[r][i] = w[(size_t)r * in + k + i];
    if constexpr (std::is_same_v<WT, int8_t>)
      for (int r = 0; r < R; ++r) scale[r] = sc[(size_t)r * nblk + k / kQ8Block];
    tile_slice<R, NB>(&tail[0][0], 16, xp, s, scale);
  }
  store_sums<R, NB>(s, Y, ldy, j0, acc);
}
constexpr bool kBf16Wide = false;
constexpr bool kOneRowLoops = false;
#else
inline float weight_at(const float* w, int i) { return w[i]; }
inline float weight_at(const uint16_t* w, int i) { return bf16_to_float(w[i]); }
inline float weight_at(const Half* w, int i) { return f16_to_float(w[i].bits); }
inline float weight_at(const int8_t* w, int i) { return (float)w[i]; }

template <int R, int NB, typename WT>
inline void tile(const WT* W, int in, const float* Xp, float* Y, int ldy, int j0, bool acc, const float* SC = nullptr) {
  const int nblk = q8_blocks(in);
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) {
      const WT* w = W + (size_t)(j0 + r) * in;
      float s = 0;
      for (int k0 = 0; k0 < in; k0 += 16) {
        const float* x = Xp + (size_t)(k0 / 16) * NB * 16 + b * 16;
        const int n = in - k0 < 16 ? in - k0 : 16;
        const float scale = SC ? SC[(size_t)(j0 + r) * nblk + k0 / kQ8Block] : 1.0f;
#pragma omp simd reduction(+ : s)
        for (int i = 0; i < n; ++i) s += (SC ? weight_at(w, k0 + i) * scale : weight_at(w, k0 + i)) * x[i];
      }
      float& y = Y[(size_t)b * ldy + j0 + r];
      y = acc ? y + s : s;
    }
}
constexpr bool kBf16Wide = false;
constexpr bool kOneRowLoops = false;
#endif

// Rows per tile for nb inputs: R*nb + R + 1 <= 32 vector registers, and few enough weight rows
// (each a separate stream, often 4 KiB apart: the same L1 set) for the cache's associativity.
// AVX2 has 16: R*nb + R + 1 <= 16.
#if !defined(__AVX512F__) && defined(__AVX2__)
constexpr int rows_for(int nb) { return nb <= 2 ? 4 : nb <= 3 ? 3 : nb <= 6 ? 2 : 1; }
#else
constexpr int rows_for(int nb) { return nb <= 4 ? 4 : 3; }
#endif
// The wide bf16 kernel: R*nb accumulators + 2R widened weights + 2 inputs + zero <= 32 registers.
// (One input: 2 rows, see tile_rows.)
constexpr int rows_for_bf16(int nb) { return nb <= 4 ? 4 : nb <= 5 ? 3 : 2; }

template <typename WT>
constexpr bool is_wide() {
  return std::is_same_v<WT, uint16_t> && kBf16Wide;
}
// One input, 16- and 8-bit weights: 2 rows, fewer streams in flight per thread (bench generate
// M batch 1, matrices converted in memory, runs alternated, 4 -> 2 rows: bf16 50.4-51.4 ->
// 55.9-57.1 tok/s, f16 49.6-50.0 -> 53.2-53.4, q8 77.1-78.7 -> 82.3-84.1; a mapped bf16 folder
// ran equally fast either way, farm-bench wall ratio 0.990). Float stays at 4 rows (2 rows:
// 26.8-27.4 tok/s against 28.0-28.2).
// On AMD Zen with AVX-512 they take one row at a time instead, up to three inputs (row_inputs).
template <typename WT>
constexpr bool one_row_tiles(int nb) {
#if defined(__AVX512F__)
  return kZen && nb <= 3 && sizeof(WT) < sizeof(float);
#else
  return false;
#endif
}
// Six to eight inputs, float weights, on AMD Zen with AVX-512: 2 rows instead of 3. A 2-row
// tile loads 10 vectors per 16 multiply-adds against 11 per 24, yet ran faster: at 8 inputs the
// 16 M layers' matrices cycled from memory (stand-alone harness, best of 4, alternated twice)
// 23.9-25.3 -> 27.6-28.6 GB/s; `bench generate` M f32 batch 8, 4 runs against 6 interleaved,
// 170-198 (median 186) -> 189-254 (median 225) tok/s; at 6 and 7 inputs fastest steps
// 27.7-31.4 -> 26.8-27.0 and 32.9-33.9 -> 28.2-32.5 ms, at 5 no difference (kept at 3).
// 16/8-bit weights: no clear difference.
template <typename WT>
constexpr bool two_row_float_tiles(int nb) {
#if defined(__AVX512F__)
  return kZen && nb >= 6 && std::is_same_v<WT, float>;
#else
  return false;
#endif
}
template <typename WT>
constexpr int tile_rows(int nb) {
  if (one_row_tiles<WT>(nb)) return 1;
  if (two_row_float_tiles<WT>(nb)) return 2;
  if (nb == 1 && sizeof(WT) < sizeof(float)) return 2;
  return is_wide<WT>() ? rows_for_bf16(nb) : rows_for(nb);
}

// `rows` (<= tile_rows) weight rows from j0 against NB inputs: one full tile, or row by row.
template <int NB, typename WT>
inline void rows_tile(const WT* W, int in, const float* Xp, float* Y, int ldy, int j0, int rows, bool acc, const float* SC) {
  constexpr int R = tile_rows<WT>(NB);
#if defined(__AVX512F__)
  if constexpr (one_row_tiles<WT>(NB)) {
    for (int r = 0; r < rows; ++r) row_inputs<NB>(W, in, Xp, Y, ldy, j0 + r, acc, SC);
  } else if constexpr (is_wide<WT>()) {
    if (rows == R) tile_bf16<R, NB>(W, in, Xp, Y, ldy, j0, acc);
    else
      for (int r = 0; r < rows; ++r) tile_bf16<1, NB>(W, in, Xp, Y, ldy, j0 + r, acc);
  } else
#endif
  {
    if (rows == R) tile<R, NB>(W, in, Xp, Y, ldy, j0, acc, SC);
    else
      for (int r = 0; r < rows; ++r) tile<1, NB>(W, in, Xp, Y, ldy, j0 + r, acc, SC);
  }
}

template <typename WT>
inline void rows_tile_nb(int nb, const WT* W, int in, const float* Xp, float* Y, int ldy, int j0, int rows, bool acc,
                         const float* SC) {
  switch (nb) {
    case 1: rows_tile<1>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    case 2: rows_tile<2>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    case 3: rows_tile<3>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    case 4: rows_tile<4>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    case 5: rows_tile<5>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    case 6: rows_tile<6>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    case 7: rows_tile<7>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
    default: rows_tile<8>(W, in, Xp, Y, ldy, j0, rows, acc, SC); break;
  }
}

// One row's inputs k0 .. k0 + S - 1 into the S slots at d, zeros past `in`. Slot i holds input
// k0 + i, or in bf16 order (lane l = (i % 16) / 4, word w = i % 4, half h = i / 16) input
// k0 + 8 l + 4 h + w.
inline void pack_group(const float* src, int k0, int in, int S, bool bf16_order, float* d) {
#if defined(__AVX512F__)
  // By vector permutes (the scalar loop cost ~2 % of a batch-1 step); masked loads give the zeros.
  const int n_left = in - k0;
  const __mmask16 m0 = first_lanes(n_left);
  const __m512 a = _mm512_maskz_loadu_ps(m0, src + k0);
  if (S == 16) {
    _mm512_store_ps(d, a);
    return;
  }
  const __mmask16 m1 = first_lanes(std::max(0, n_left - 16));
  const __m512 c = _mm512_maskz_loadu_ps(m1, src + k0 + 16);
  if (!bf16_order) {
    _mm512_store_ps(d, a), _mm512_store_ps(d + 16, c);
    return;
  }
  // Slot i (< 16) takes k0 + 8 (i / 4) + i % 4, slot 16 + i takes k0 + 8 (i / 4) + 4 + i % 4.
  const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
  const __m512i hi = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  _mm512_store_ps(d, _mm512_permutex2var_ps(a, lo, c));
  _mm512_store_ps(d + 16, _mm512_permutex2var_ps(a, hi, c));
#else
#if defined(__AVX2__)
  if (!bf16_order && k0 + S <= in) {
    for (int i = 0; i < S; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(src + k0 + i));
    return;
  }
#endif
  for (int i = 0; i < S; ++i) {
    const int k = k0 + (bf16_order ? 8 * ((i % 16) / 4) + 4 * (i / 16) + i % 4 : i);
    d[i] = k < in ? src[k] : 0.0f;
  }
#endif
}

// Packs the inputs: chunk c of up to kMaxNB rows (starting at row b0) at Xp + b0 * kpad, laid out
// [kpad/S][nb][S] for S inputs per kernel step (16, or 32 for the wide bf16 kernel, whose 32 are
// in the order its widening produces: in each group of 8, the first 4 go to the first 16 slots).
// A few KiB, reused by every weight row.
const float* pack_inputs(const float* X, int ldx, int B, int in, int S, bool bf16_order, int& kpad) {
  kpad = (in + S - 1) / S * S;
  thread_local AlignedVector<float> pack;
  if (pack.size() < (size_t)B * kpad) pack.resize((size_t)B * kpad);
  float* Xp = pack.data();
  for (int b0 = 0; b0 < B; b0 += kMaxNB) {
    const int nb = std::min(kMaxNB, B - b0);
    float* dst = Xp + (size_t)b0 * kpad;
    for (int kb = 0; kb < kpad / S; ++kb)
      for (int b = 0; b < nb; ++b) {
        const float* src = X + (size_t)(b0 + b) * ldx;
        float* d = dst + ((size_t)kb * nb + b) * S;
        pack_group(src, kb * S, in, S, bf16_order, d);
      }
  }
  return Xp;
}

#if defined(__AVX512F__)
// ---- Large batches: the outer-product kernel --------------------------------------------------
//
// Past a dozen inputs the products are compute-bound, and the tile above spends a visible share
// of its time in the horizontal sums that end every (row, input) pair. This kernel runs the
// vectors along the batch instead: the inputs are transposed to Xt [in][ldxt] (16 inputs per
// vector), each weight is broadcast and multiplied into MR x NV accumulators (MR rows, 16*NV
// inputs), and a tile ends with one scattered store per accumulator: no reductions at all.
// The weights are copied (bf16, f16, q8: widened, and scaled) into a float panel of
// MR x kPanelK that stays in L1 while all the inputs pass over it.
constexpr int kPanelK = 256;
constexpr int kOuterMaxNV = 4;  // 64 inputs per tile: 24 accumulators + 4 inputs + 1 broadcast

// Rows per tile: MR x NV accumulators + NV inputs + 1 broadcast <= 32 registers. (One vector of
// inputs: 12 rows measured 5-10 % faster than 8 on the M head at 8 and 16 inputs; 24 spill.)
constexpr int outer_rows(int nv) { return nv == 1 ? 12 : nv == 2 ? 12 : nv == 3 ? 8 : 6; }

// Widens rows j0..j0+MR-1, columns k0..k0+kn-1 into panel [MR][kPanelK] (q8: times the scales).
template <int MR, typename WT>
inline void widen_panel(const WT* W, int in, int j0, int k0, int kn, const float* SC, float* panel) {
  const int nblk = q8_blocks(in);
  for (int r = 0; r < MR; ++r) {
    const WT* w = W + (size_t)(j0 + r) * in + k0;
    float* p = panel + r * kPanelK;
    for (int k = 0; k < kn; k += 16) {
      __m512 v = k + 16 <= kn ? load_w(w + k) : load_w_masked(w + k, (__mmask16)((1u << (kn - k)) - 1));
      if constexpr (std::is_same_v<WT, int8_t>)
        v = _mm512_mul_ps(v, _mm512_set1_ps(SC[(size_t)(j0 + r) * nblk + (k0 + k) / kQ8Block]));
      _mm512_store_ps(p + k, v);
    }
  }
}

// Y[b, j0 + r] (+)= sum_k W[j0 + r, k] Xt[k, b] for r < MR and b < nb (<= 16 NV).
template <int MR, int NV, typename WT>
inline void tile_outer(const WT* W, int in, const float* Xt, int ldxt, float* Y, int ldy, int j0, int nb, bool acc,
                       const float* SC) {
  __m512 s[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = _mm512_setzero_ps();
  alignas(64) float panel[MR * kPanelK];
  for (int k0 = 0; k0 < in; k0 += kPanelK) {
    const int kn = std::min(kPanelK, in - k0);
    widen_panel<MR>(W, in, j0, k0, kn, SC, panel);
    // While this panel is multiplied, fetch the next one (these rows' next columns, or the next
    // tile's first), spread over the multiplication: one line per row for every 64 bytes of a
    // row the panel holds, as tile() does, so memory and compute overlap instead of taking turns.
    const int nk0 = k0 + kPanelK < in ? k0 + kPanelK : 0, nj0 = k0 + kPanelK < in ? j0 : j0 + MR;
    const int nbytes = std::min(kPanelK, in - nk0) * (int)sizeof(WT);
    const char* next = reinterpret_cast<const char*>(W + (size_t)nj0 * in + nk0);
    constexpr int kPerLine = 64 / (int)sizeof(WT);  // weights per cache line
    const float* x = Xt + (size_t)k0 * ldxt;
    for (int k = 0; k < kn; ++k, x += ldxt) {
      if (k % kPerLine == 0 && k * (int)sizeof(WT) < nbytes)
        for (int r = 0; r < MR; ++r) _mm_prefetch(next + (size_t)r * in * sizeof(WT) + (size_t)k * sizeof(WT), _MM_HINT_T0);
      __m512 xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = _mm512_load_ps(x + 16 * v);
      for (int r = 0; r < MR; ++r) {
        const __m512 w = _mm512_set1_ps(panel[r * kPanelK + k]);
        for (int v = 0; v < NV; ++v) s[r][v] = _mm512_fmadd_ps(w, xv[v], s[r][v]);
      }
    }
  }
  // Lane i of s[r][v] is Y[16 v + i, j0 + r]: a strided (scattered) store per accumulator.
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(ldy));
  for (int v = 0; v < NV; ++v) {
    const int left = nb - 16 * v;
    const __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
    for (int r = 0; r < MR; ++r) {
      float* base = Y + (size_t)16 * v * ldy + j0 + r;
      __m512 val = s[r][v];
      if (acc) val = _mm512_add_ps(val, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, base, 4));
      _mm512_mask_i32scatter_ps(base, m, idx, val, 4);
    }
  }
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// ---- Large batches on AVX2: the outer-product kernel with 8-wide vectors ----------------------
//
// As above (weights widened into an L1 panel, each broadcast into MR x NV accumulators of 8
// inputs each, no horizontal sums), sized for 16 registers: the classic 6 x 16 tile (6 rows,
// 2 vectors of inputs: 12 accumulators + 2 inputs + 1 broadcast), or 12 x 8 for the last 8.
constexpr int kPanelK = 256;
constexpr int kVW = 8;          // floats per vector
constexpr int kOuterMaxNV = 2;  // 16 inputs per tile
constexpr int outer_rows(int nv) { return nv == 1 ? 12 : 6; }

template <int MR, typename WT>
inline void widen_panel(const WT* W, int in, int j0, int k0, int kn, const float* SC, float* panel) {
  const int nblk = q8_blocks(in);
  for (int r = 0; r < MR; ++r) {
    const WT* w = W + (size_t)(j0 + r) * in + k0;
    float* p = panel + r * kPanelK;
    int k = 0;
    for (; k + kVW <= kn; k += kVW) {
      __m256 v = load_w(w + k);
      if constexpr (std::is_same_v<WT, int8_t>)
        v = _mm256_mul_ps(v, _mm256_broadcast_ss(SC + (size_t)(j0 + r) * nblk + (k0 + k) / kQ8Block));
      _mm256_store_ps(p + k, v);
    }
    for (; k < kn; ++k) {
      float v;
      if constexpr (std::is_same_v<WT, int8_t>) v = (float)w[k] * SC[(size_t)(j0 + r) * nblk + (k0 + k) / kQ8Block];
      else if constexpr (std::is_same_v<WT, uint16_t>) v = bf16_to_float(w[k]);
      else if constexpr (std::is_same_v<WT, Half>) v = f16_to_float(w[k].bits);
      else v = w[k];
      p[k] = v;
    }
  }
}

// Y[b, j0 + r] (+)= sum_k W[j0 + r, k] Xt[k, b] for r < MR and b < nb (<= 8 NV).
template <int MR, int NV, typename WT>
inline void tile_outer(const WT* W, int in, const float* Xt, int ldxt, float* Y, int ldy, int j0, int nb, bool acc,
                       const float* SC) {
  __m256 s[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) s[r][v] = _mm256_setzero_ps();
  alignas(32) float panel[MR * kPanelK];
  for (int k0 = 0; k0 < in; k0 += kPanelK) {
    const int kn = std::min(kPanelK, in - k0);
    widen_panel<MR>(W, in, j0, k0, kn, SC, panel);
    // The next panel's lines fetched while this one is multiplied (as the AVX-512 kernel does).
    const int nk0 = k0 + kPanelK < in ? k0 + kPanelK : 0, nj0 = k0 + kPanelK < in ? j0 : j0 + MR;
    const int nbytes = std::min(kPanelK, in - nk0) * (int)sizeof(WT);
    const char* next = reinterpret_cast<const char*>(W + (size_t)nj0 * in + nk0);
    constexpr int kPerLine = 64 / (int)sizeof(WT);
    const float* x = Xt + (size_t)k0 * ldxt;
    // The prefetches once per line, outside the multiply loop: a branch inside it made GCC 12
    // store every accumulator to the stack on each step (the f32 MLP-down at 64 inputs ran 59
    // GFLOP/s).
    __m256 a[MR][NV];
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) a[r][v] = s[r][v];
    for (int kl = 0; kl < kn; kl += kPerLine) {
      if (kl * (int)sizeof(WT) < nbytes)
        for (int r = 0; r < MR; ++r) _mm_prefetch(next + (size_t)r * in * sizeof(WT) + (size_t)kl * sizeof(WT), _MM_HINT_T0);
      const int ke = std::min(kn, kl + kPerLine);
      for (int k = kl; k < ke; ++k, x += ldxt) {
        __m256 xv[NV];
        for (int v = 0; v < NV; ++v) xv[v] = _mm256_load_ps(x + kVW * v);
        for (int r = 0; r < MR; ++r) {
          const __m256 w = _mm256_broadcast_ss(panel + r * kPanelK + k);
          for (int v = 0; v < NV; ++v) a[r][v] = _mm256_fmadd_ps(w, xv[v], a[r][v]);
        }
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) s[r][v] = a[r][v];
  }
  // Lane i of s[r][v] is Y[8 v + i, j0 + r].
  alignas(32) float t[kVW];
  for (int v = 0; v < NV; ++v) {
    const int left = std::min(kVW, nb - kVW * v);
    for (int r = 0; r < MR; ++r) {
      _mm256_store_ps(t, s[r][v]);
      float* base = Y + (size_t)kVW * v * ldy + j0 + r;
      for (int i = 0; i < left; ++i) base[(size_t)i * ldy] = acc ? base[(size_t)i * ldy] + t[i] : t[i];
    }
  }
}
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#if defined(__AVX512F__)
constexpr int kOuterVW = 16;  // inputs per vector of the outer kernel
#else
constexpr int kOuterVW = kVW;
#endif

template <int NV, typename WT>
inline void outer_rows_tile(const WT* W, int in, const float* Xt, int ldxt, float* Y, int ldy, int j0, int rows, int nb,
                            bool acc, const float* SC) {
  constexpr int MR = outer_rows(NV);
  if (rows == MR) tile_outer<MR, NV>(W, in, Xt, ldxt, Y, ldy, j0, nb, acc, SC);
  else
    for (int r = 0; r < rows; ++r) tile_outer<1, NV>(W, in, Xt, ldxt, Y, ldy, j0 + r, nb, acc, SC);
}

// The inputs a tile multiplies, transposed: group g holds inputs [G g, G g + G) as
// Xt_g [in][ldxt_g] (G = the inputs of one tile, 64 with AVX-512; ldxt_g = the group's inputs
// rounded up to a vector, zero-padded), the groups one after another. A tile then streams its
// group as one contiguous block. (One [in][B] transpose, as before 2026-12-08, put 256 inputs a
// row 1 KB apart: every k of a tile fell into the same quarter of L1's sets, and prompts of
// 256, 512 and 1024 rows through the step kernels ran 20-25 % slower than 240 or 272.)
constexpr int kOuterGroup = kOuterVW * kOuterMaxNV;

int group_width(int B, int b0) { return std::min(kOuterGroup, (B - b0 + kOuterVW - 1) / kOuterVW * kOuterVW); }

const float* transpose_inputs(const float* X, int ldx, int B, int in) {
  const int groups = (B + kOuterGroup - 1) / kOuterGroup;
  thread_local AlignedVector<float> xt;
  if (xt.size() < (size_t)in * kOuterGroup * groups) xt.resize((size_t)in * kOuterGroup * groups);
  constexpr int kB = 16, kK = 64;  // blocked so that reads and writes stay within a few hundred lines
  for (int g = 0; g < groups; ++g) {
    const int b0 = g * kOuterGroup, ld = group_width(B, b0);
    float* T = xt.data() + (size_t)g * in * kOuterGroup;
    for (int k0 = 0; k0 < in; k0 += kK) {
      const int k1 = std::min(in, k0 + kK);
      for (int c0 = 0; c0 < ld; c0 += kB)
        for (int c = c0; c < std::min(ld, c0 + kB); ++c) {
          if (b0 + c < B) {
            const float* src = X + (size_t)(b0 + c) * ldx;
            for (int k = k0; k < k1; ++k) T[(size_t)k * ld + c] = src[k];
          } else {
            for (int k = k0; k < k1; ++k) T[(size_t)k * ld + c] = 0.0f;
          }
        }
    }
  }
  return xt.data();
}

template <typename WT>
void matvec_outer(const WT* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate,
                  const float* SC) {
  const float* Xt = transpose_inputs(X, ldx, B, in);
  constexpr int kBlock = 24;  // divisible by every outer_rows()
  const int blocks = (out + kBlock - 1) / kBlock;
  const bool parallel = (size_t)out * in >= 32768;  // as in matvec_impl
  rate_split<WT>(kSplitOuter).run(parallel, blocks, grain_units(sizeof(WT) * kBlock * in), [&](int blk0, int blk1) {
    for (int blk = blk0; blk < blk1; ++blk) {
      const int j_begin = blk * kBlock, j_end = std::min(out, j_begin + kBlock);
      for (int b0 = 0; b0 < B; b0 += kOuterGroup) {
        const int nb = std::min(kOuterGroup, B - b0), nv = (nb + kOuterVW - 1) / kOuterVW, ldxt = group_width(B, b0);
        const float* xt = Xt + (size_t)(b0 / kOuterGroup) * in * kOuterGroup;
        float* y = Y + (size_t)b0 * ldy;
        const int R = outer_rows(nv);
        for (int j = j_begin; j < j_end; j += R) {
          const int rows = std::min(R, j_end - j);
          if constexpr (kOuterMaxNV == 4) {
            switch (nv) {
              case 1: outer_rows_tile<1>(W, in, xt, ldxt, y, ldy, j, rows, nb, accumulate, SC); break;
              case 2: outer_rows_tile<2>(W, in, xt, ldxt, y, ldy, j, rows, nb, accumulate, SC); break;
              case 3: outer_rows_tile<3>(W, in, xt, ldxt, y, ldy, j, rows, nb, accumulate, SC); break;
              default: outer_rows_tile<4>(W, in, xt, ldxt, y, ldy, j, rows, nb, accumulate, SC); break;
            }
          } else {
            if (nv == 1) outer_rows_tile<1>(W, in, xt, ldxt, y, ldy, j, rows, nb, accumulate, SC);
            else outer_rows_tile<2>(W, in, xt, ldxt, y, ldy, j, rows, nb, accumulate, SC);
          }
        }
      }
    }
  });
}

#endif
int g_outer_min_batch = 0;  // set_outer_min_batch's override; 0 = by weight format:

// From how many inputs the outer-product kernel is faster, by measurement: row-tile time /
// outer time, best of 6 alternating, on the M head [32000, 1024] and 8 M MLP-down matrices
// [8192, 2816] (/tmp harness over this file's kernels, 2026-12-03; > 1: outer faster):
//   inputs  8     12    16    20    24    28    32
//   f32     0.96  1.23  1.34  1.05  1.16  1.28  1.35
//   bf16    0.72  0.97  1.22  1.18  1.14  1.36  1.46
//   f16     0.64  0.86  1.03  0.80  0.92  1.06  1.18
//   q8      0.44  0.74  0.86  0.72  0.80  1.01  1.10
// (From 17 inputs the outer kernel's second vector of 16 runs partly empty: the dip at 20.)
// AVX2 (6 x 16 tiles, 16 registers), the M MLP-down [1024, 2816] by bench_kernels
// --benchmark_filter=DecodeMatvecKernels, ms row tiles / outer (AMD EPYC, 2026-12-04):
//   inputs  4            8            12           16           64
//   f32     -            0.61 / 0.85  0.90 / 0.60  1.26 / 0.64  5.01 / 2.76
//   bf16    0.23 / 0.45  0.55 / 0.41  0.77 / 0.64  1.16 / 0.65  4.48 / 3.24
//   f16     0.41 / 0.47  0.56 / 0.44  0.78 / 0.59
//   q8      0.27 / 0.48  0.54 / 0.46  0.80 / 0.69  1.07 / 0.66  4.92 / 3.28
// (the row tiles hold one weight row per 7-8 inputs there: too few registers for more).
template <typename WT>
int outer_min_batch() {
  if (g_outer_min_batch > 0) return g_outer_min_batch;
#if !defined(__AVX512F__)
  return std::is_same_v<WT, float> ? 12 : 8;
#endif
  if constexpr (std::is_same_v<WT, float>) return 12;
  else if constexpr (std::is_same_v<WT, uint16_t>) return 16;
  else return 28;  // f16, q8: their row tiles widen cheaply and stay ahead longer
}

template <typename WT>
void matvec_kernels(const WT* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate,
                    const float* SC) {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
  if (B >= outer_min_batch<WT>()) return matvec_outer(W, out, in, X, ldx, B, Y, ldy, accumulate, SC);
#endif
  constexpr bool wide = is_wide<WT>();
  int kpad = 0;
  const float* Xp = pack_inputs(X, ldx, B, in, wide ? 32 : 16, wide, kpad);
  // Work unit: a block of 24 weight rows (divisible by every tile height), all B inputs. The
  // batch loop is inside, so a block's rows are fetched from memory once and reused from cache.
  // With one chunk of inputs there is no reuse, and a block of one tile splits the rows between
  // the threads evenly (1024 rows: 128 tiles each, where 24-row blocks give 22 and 21).
  const int kBlock = B <= kMaxNB ? tile_rows<WT>(B) : 24;
  const int blocks = (out + kBlock - 1) / kBlock;
  // Small products (a router, a tiny test model) are not worth waking the thread team for.
  const bool parallel = (size_t)out * in >= 32768;
#if defined(__AVX512F__)
  // One input of q8, bf16 or float weights on Zen: the row loops, rows split one by one.
  if constexpr (kOneRowLoops && (std::is_same_v<WT, int8_t> || std::is_same_v<WT, uint16_t> || std::is_same_v<WT, float>)) {
    if (B == 1) {
      rate_split<WT>(kSplitOneRow).run(parallel, out, grain_units(sizeof(WT) * in), [&](int j0, int j1) {
        if constexpr (std::is_same_v<WT, int8_t>) rows_q8(W, in, Xp, Y, j0, j1, accumulate, SC);
        else rows_plain(W, in, Xp, Y, j0, j1, accumulate);
      });
      return;
    }
  }
#endif
  rate_split<WT>(kSplitRowTiles).run(parallel, blocks, grain_units(sizeof(WT) * kBlock * in), [&](int blk0, int blk1) {
    for (int blk = blk0; blk < blk1; ++blk) {
      const int j_begin = blk * kBlock, j_end = std::min(out, j_begin + kBlock);
      for (int b0 = 0; b0 < B; b0 += kMaxNB) {
        const int nb = std::min(kMaxNB, B - b0);
        const float* xp = Xp + (size_t)b0 * kpad;
        float* y = Y + (size_t)b0 * ldy;
        const int R = tile_rows<WT>(nb);
        for (int j = j_begin; j < j_end; j += R) rows_tile_nb(nb, W, in, xp, y, ldy, j, std::min(R, j_end - j), accumulate, SC);
      }
    }
  });
}

std::atomic<bool> g_clock_on{false};
std::atomic<int64_t> g_clock_ns{0}, g_clock_flops{0};

template <typename WT>
void matvec_impl(const WT* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate,
                 const float* SC = nullptr) {
  if (out <= 0 || B <= 0) return;
  const int64_t flops = 2LL * B * out * in;
  ops::FlopCounter::add(flops);
  if (!g_clock_on.load(std::memory_order_relaxed)) return matvec_kernels(W, out, in, X, ldx, B, Y, ldy, accumulate, SC);
  const auto t0 = std::chrono::steady_clock::now();
  matvec_kernels(W, out, in, X, ldx, B, Y, ldy, accumulate, SC);
  g_clock_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  g_clock_flops += flops;
}

}  // namespace

void MatvecClock::enable(bool on) { g_clock_on = on; }
void MatvecClock::reset() { g_clock_ns = 0, g_clock_flops = 0; }
double MatvecClock::seconds() { return (double)g_clock_ns.load() * 1e-9; }
int64_t MatvecClock::flops() { return g_clock_flops.load(); }

bool outer_kernel_built() {
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
  return true;
#else
  return false;
#endif
}

bool outer_kernel_is_avx512() {
#if defined(__AVX512F__)
  return true;
#else
  return false;
#endif
}

int set_outer_min_batch(int b) {
  const int old = g_outer_min_batch;
  g_outer_min_batch = b;
  return old;
}

void matvec(const float* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate) {
  matvec_impl(W, out, in, X, ldx, B, Y, ldy, accumulate);
}

void matvec(const uint16_t* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate) {
  matvec_impl(W, out, in, X, ldx, B, Y, ldy, accumulate);
}

void matvec(const Half* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate) {
  matvec_impl(W, out, in, X, ldx, B, Y, ldy, accumulate);
}

void matvec_q8(const int8_t* W, const float* scales, int out, int in, const float* X, int ldx, int B, float* Y, int ldy,
               bool accumulate) {
  matvec_impl(W, out, in, X, ldx, B, Y, ldy, accumulate, scales);
}

}  // namespace modlm::infer
