#include "ops/attention.h"

#include <algorithm>
#include <cmath>

#include "ops/fast_math.h"
#include <limits>

#include "ops/gemm.h"
#include "tensor/tensor.h"

namespace modlm::ops {

// Query rows are processed in blocks: each block scores itself against the keys up to its last
// row with one small GEMM. The upper half of the diagonal tile is computed and masked (the only
// wasted work; it shrinks with the block size), everything above the diagonal is never touched.
static constexpr int kQueryBlock = 64;

static int longest_sequence(const std::vector<int>& seq_offsets) {
  int m = 0;
  for (size_t b = 0; b + 1 < seq_offsets.size(); ++b) m = std::max(m, seq_offsets[b + 1] - seq_offsets[b]);
  return m;
}

int64_t attention_flops(const std::vector<int>& seq_offsets, AttnShape s) {
  int64_t pairs = 0;
  for (size_t b = 0; b + 1 < seq_offsets.size(); ++b) {
    int64_t len = seq_offsets[b + 1] - seq_offsets[b];
    pairs += len * (len + 1) / 2;
  }
  return pairs * 4 * s.Dh * s.H;
}

namespace {

// One query's row of `keys` scores, of which the first `valid` are visible (causal): softmax over
// those, zeros after them; returns their log-sum-exp.
template <typename T>
T causal_softmax_row(T* row, int valid, int keys) {
  T mx = row[0];
#pragma omp simd reduction(max : mx)
  for (int j = 1; j < valid; ++j) mx = row[j] > mx ? row[j] : mx;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < valid; ++j) {
    row[j] = vexp<T>(row[j] - mx);
    sum += row[j];
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int j = 0; j < valid; ++j) row[j] *= inv;
  for (int j = valid; j < keys; ++j) row[j] = T(0);
  return mx + std::log(sum);
}

}  // namespace

template <typename T>
void causal_attention_tile(const T* Q, int ldq, const T* K, const T* V, int ldkv, int m, int key_offset, int Dh, T scale,
                           T* S, T* out, int ldo, T* lse, int lse_stride) {
  const int keys = key_offset + m;
  gemm_uncounted<T>(false, true, m, keys, Dh, scale, Q, ldq, K, ldkv, T(0), S, keys);
  for (int r = 0; r < m; ++r) {
    const T l = causal_softmax_row<T>(S + (size_t)r * keys, key_offset + r + 1, keys);
    if (lse) lse[(size_t)r * lse_stride] = l;
  }
  gemm_uncounted<T>(false, false, m, Dh, keys, T(1), S, keys, V, ldkv, T(0), out, ldo);
}

template <typename T>
void attention_forward(const T* qkv, int ld, const std::vector<int>& seq_offsets, AttnShape s, T* out,
                       int ldo, T* lse) {
  const int B = (int)seq_offsets.size() - 1, H = s.H, Dh = s.Dh, D = H * Dh, Dkv = s.kv_heads() * Dh, G = s.group();
  const T scale = T(1.0 / std::sqrt((double)Dh));
  const int max_len = longest_sequence(seq_offsets);
  FlopCounter::add(attention_flops(seq_offsets, s));
#pragma omp parallel
  {
    AlignedVector<T> S((size_t)kQueryBlock * std::max(max_len, 1));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const int base = seq_offsets[b], len = seq_offsets[b + 1] - base;
        const T* Q = qkv + (size_t)base * ld + h * Dh;
        const T* K = qkv + (size_t)base * ld + D + (h / G) * Dh;
        const T* V = K + Dkv;
        for (int i0 = 0; i0 < len; i0 += kQueryBlock)  // keys 0..i are visible to query i
          causal_attention_tile<T>(Q + (size_t)i0 * ld, ld, K, V, ld, std::min(kQueryBlock, len - i0), i0, Dh, scale, S.data(),
                                   out + (size_t)(base + i0) * ldo + h * Dh, ldo, lse + (size_t)(base + i0) * H + h, H);
      }
  }
}

template <typename T>
void attention_backward(const T* qkv, int ld, const T* out, int ldo, const T* lse, const T* dout, int lddo,
                        const std::vector<int>& seq_offsets, AttnShape s, T* dqkv) {
  const int B = (int)seq_offsets.size() - 1, H = s.H, Dh = s.Dh, D = H * Dh;
  const int Hkv = s.kv_heads(), Dkv = Hkv * Dh, G = s.group();
  const T scale = T(1.0 / std::sqrt((double)Dh));
  const int max_len = longest_sequence(seq_offsets);
#pragma omp parallel
  {
    AlignedVector<T> P((size_t)kQueryBlock * std::max(max_len, 1));
    AlignedVector<T> dP((size_t)kQueryBlock * std::max(max_len, 1));
    // One task per (sequence, key/value head): the G query heads sharing that head add into its
    // dK and dV, so they run in the same task (no two threads write the same rows).
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < B; ++b)
      for (int g = 0; g < Hkv; ++g) {
        const int base = seq_offsets[b], len = seq_offsets[b + 1] - base;
        const T* K = qkv + (size_t)base * ld + D + g * Dh;
        const T* V = K + Dkv;
        T* dK = dqkv + (size_t)base * ld + D + g * Dh;
        T* dV = dK + Dkv;
        for (int i = 0; i < len; ++i) {
          std::fill(dK + (size_t)i * ld, dK + (size_t)i * ld + Dh, T(0));
          std::fill(dV + (size_t)i * ld, dV + (size_t)i * ld + Dh, T(0));
        }
        for (int h = g * G; h < (g + 1) * G; ++h) {
          const T* Q = qkv + (size_t)base * ld + h * Dh;
          T* dQ = dqkv + (size_t)base * ld + h * Dh;
          for (int i0 = 0; i0 < len; i0 += kQueryBlock) {
            const int m = std::min(kQueryBlock, len - i0), keys = i0 + m;
            const T* Qb = Q + (size_t)i0 * ld;
            const T* dOb = dout + (size_t)(base + i0) * lddo + h * Dh;
            const T* Ob = out + (size_t)(base + i0) * ldo + h * Dh;
            // Recompute the probabilities from the saved log-sum-exp.
            gemm_uncounted<T>(false, true, m, keys, Dh, scale, Qb, ld, K, ld, T(0), P.data(), keys);
            gemm_uncounted<T>(false, true, m, keys, Dh, T(1), dOb, lddo, V, ld, T(0), dP.data(), keys);
            for (int r = 0; r < m; ++r) {
              T* p = P.data() + (size_t)r * keys;
              T* dp = dP.data() + (size_t)r * keys;
              const int valid = i0 + r + 1;
              const T l = lse[(size_t)(base + i0 + r) * H + h];
              // delta_i = sum_j p_ij dp_ij = dO_i . O_i
              T dlt = 0;
#pragma omp simd reduction(+ : dlt)
              for (int d = 0; d < Dh; ++d) dlt += dOb[(size_t)r * lddo + d] * Ob[(size_t)r * ldo + d];
#pragma omp simd
              for (int j = 0; j < valid; ++j) {
                p[j] = vexp<T>(p[j] - l);
                dp[j] = p[j] * (dp[j] - dlt) * scale;  // dS, already scaled for dQ and dK
              }
              for (int j = valid; j < keys; ++j) p[j] = dp[j] = T(0);
            }
            gemm_uncounted<T>(false, false, m, Dh, keys, T(1), dP.data(), keys, K, ld, T(0),
                              dQ + (size_t)i0 * ld, ld);
            gemm_uncounted<T>(true, false, keys, Dh, m, T(1), dP.data(), keys, Qb, ld, T(1), dK, ld);
            gemm_uncounted<T>(true, false, keys, Dh, m, T(1), P.data(), keys, dOb, lddo, T(1), dV, ld);
          }
        }
      }
  }
}

template void causal_attention_tile<float>(const float*, int, const float*, const float*, int, int, int, int, float, float*,
                                           float*, int, float*, int);
template void causal_attention_tile<double>(const double*, int, const double*, const double*, int, int, int, int, double,
                                            double*, double*, int, double*, int);
template void attention_forward<float>(const float*, int, const std::vector<int>&, AttnShape, float*, int,
                                       float*);
template void attention_forward<double>(const double*, int, const std::vector<int>&, AttnShape, double*, int,
                                        double*);
template void attention_backward<float>(const float*, int, const float*, int, const float*, const float*, int,
                                        const std::vector<int>&, AttnShape, float*);
template void attention_backward<double>(const double*, int, const double*, int, const double*, const double*,
                                         int, const std::vector<int>&, AttnShape, double*);

}  // namespace modlm::ops
