// Each op's forward against a closed form or a naive loop, and its backward against finite differences.
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"

using namespace modlm;
using namespace modlm::ops;
using modlm::testing::expect_grad_matches;
using modlm::testing::random_vec;

static double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST(Ops, GemmLinearMatchesLoops) {
  const int n = 3, in = 5, out = 4;
  auto x = random_vec(n * in, 1), W = random_vec(out * in, 2);
  std::vector<double> y(n * out);
  linear_forward<double>(x.data(), in, W.data(), n, in, out, y.data(), out);
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < out; ++o) {
      double s = 0;
      for (int k = 0; k < in; ++k) s += x[i * in + k] * W[o * in + k];
      EXPECT_NEAR(y[i * out + o], s, 1e-12);
    }
}

TEST(Ops, BlasCoreIsReplacedOnlyWhereOpenBlasTookTheCpuForOneOlderThanAvx2) {
  using ops::blas_core_to_pick;
  const ops::CpuVectorLevel sse{0, false}, avx{1, false}, avx2{2, false}, avx512{3, false}, bf16{3, true};
  // A CPU newer than the library: OpenBLAS 0.3.21 took an Emerald Rapids for Prescott.
  EXPECT_EQ(blas_core_to_pick("Prescott", bf16), "Cooperlake");
  EXPECT_EQ(blas_core_to_pick("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(blas_core_to_pick("Core2", avx2), "Haswell");
  EXPECT_EQ(blas_core_to_pick("Nehalem", avx2), "Haswell");
  EXPECT_EQ(blas_core_to_pick("Sandybridge", bf16), "Cooperlake");
  // Picks OpenBLAS made knowing the CPU stand, whatever the case of the name.
  for (const char* core : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "COOPERLAKE", "Excavator"}) {
    EXPECT_EQ(blas_core_to_pick(core, bf16), "") << core;
    EXPECT_EQ(blas_core_to_pick(core, avx2), "") << core;
  }
  // A CPU without AVX2 keeps whatever OpenBLAS picked.
  EXPECT_EQ(blas_core_to_pick("Prescott", sse), "");
  EXPECT_EQ(blas_core_to_pick("Prescott", avx), "");
  EXPECT_EQ(blas_core_to_pick("Sandybridge", avx), "");
}

TEST(Ops, GemmCountsFlopsOnlyWhenEnabled) {
  std::vector<float> a(6, 1), b(6, 1), c(4);
  int64_t before = FlopCounter::total().load();
  gemm<float>(false, true, 2, 2, 3, 1, a.data(), 3, b.data(), 3, 0, c.data(), 2);
  EXPECT_EQ(FlopCounter::total().load(), before);
  {
    CountFlops on;
    gemm<float>(false, true, 2, 2, 3, 1, a.data(), 3, b.data(), 3, 0, c.data(), 2);
  }
  EXPECT_EQ(FlopCounter::total().load(), before + 2 * 2 * 2 * 3);
  EXPECT_FLOAT_EQ(c[0], 3.0f);
}

TEST(Ops, RmsNormForwardAndBackward) {
  const int n = 3, D = 7;
  auto x = random_vec(n * D, 3), w = random_vec(D, 4), wy = random_vec(n * D, 5);
  std::vector<double> y(n * D), inv(n);
  auto loss = [&] {
    rmsnorm_forward<double>(x.data(), D, w.data(), n, D, 1e-5, y.data(), D, inv.data());
    return dot(y, wy);
  };
  loss();
  for (int i = 0; i < n; ++i) {
    double ms = 0;
    for (int j = 0; j < D; ++j) ms += x[i * D + j] * x[i * D + j] / D;
    for (int j = 0; j < D; ++j) EXPECT_NEAR(y[i * D + j], x[i * D + j] / std::sqrt(ms + 1e-5) * w[j], 1e-12);
  }
  std::vector<double> dx(n * D), dw(D, 0.0);
  rmsnorm_backward<double>(wy.data(), D, x.data(), D, w.data(), inv.data(), n, D, dx.data(), D, false, dw.data());
  expect_grad_matches(x, dx, loss, "rmsnorm dx");
  expect_grad_matches(w, dw, loss, "rmsnorm dw");
}

TEST(Ops, RopeMatchesClosedFormAtKnownPositions) {
  const int H = 2, Dh = 8, half = Dh / 2;
  RopeTable<double> table;
  table.build(64, Dh, 10000.0);
  std::vector<int32_t> pos = {0, 1, 7, 63};
  auto x = random_vec(pos.size() * H * Dh, 6);
  auto y = x;
  rope_forward<double>(y.data(), H * Dh, (int)pos.size(), H, Dh, pos.data(), table);
  for (size_t r = 0; r < pos.size(); ++r)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < half; ++i) {
        double ang = pos[r] * std::pow(10000.0, -2.0 * i / Dh);
        size_t a = r * H * Dh + h * Dh + i, b = a + half;
        EXPECT_NEAR(y[a], x[a] * std::cos(ang) - x[b] * std::sin(ang), 1e-12);
        EXPECT_NEAR(y[b], x[b] * std::cos(ang) + x[a] * std::sin(ang), 1e-12);
      }
  // Position 0 is the identity; the backward is the inverse rotation.
  for (int j = 0; j < H * Dh; ++j) EXPECT_EQ(y[j], x[j]);
  rope_backward<double>(y.data(), H * Dh, (int)pos.size(), H, Dh, pos.data(), table);
  for (size_t j = 0; j < x.size(); ++j) EXPECT_NEAR(y[j], x[j], 1e-12);
}

TEST(Ops, RopeBackwardMatchesFiniteDifferences) {
  const int H = 2, Dh = 6, n = 3;
  RopeTable<double> table;
  table.build(32, Dh, 500.0);
  std::vector<int32_t> pos = {3, 11, 30};
  auto x = random_vec(n * H * Dh, 7), wy = random_vec(n * H * Dh, 8);
  auto loss = [&] {
    auto y = x;
    rope_forward<double>(y.data(), H * Dh, n, H, Dh, pos.data(), table);
    return dot(y, wy);
  };
  auto dx = wy;
  rope_backward<double>(dx.data(), H * Dh, n, H, Dh, pos.data(), table);
  expect_grad_matches(x, dx, loss, "rope dx");
}

TEST(Ops, SwigluForwardAndBackward) {
  const int n = 2, F = 5;
  auto h = random_vec(n * 2 * F, 9, 3.0), wg = random_vec(n * F, 10);
  std::vector<double> g(n * F);
  auto loss = [&] {
    swiglu_forward<double>(h.data(), n, F, g.data());
    return dot(g, wg);
  };
  loss();
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < F; ++j) {
      double a = h[i * 2 * F + j], b = h[i * 2 * F + F + j];
      EXPECT_NEAR(g[i * F + j], a / (1 + std::exp(-a)) * b, 1e-12);
    }
  std::vector<double> dh(n * 2 * F);
  swiglu_backward<double>(wg.data(), h.data(), n, F, dh.data());
  expect_grad_matches(h, dh, loss, "swiglu");
}

TEST(Ops, CrossEntropyValueAndGradient) {
  const int n = 3, V = 6;
  auto logits = random_vec(n * V, 11, 4.0);
  std::vector<int32_t> tgt = {0, 5, 2};
  auto loss = [&] {
    auto l = logits;
    return cross_entropy<double>(l.data(), tgt.data(), n, V, 0.0);
  };
  double expect = 0;
  for (int i = 0; i < n; ++i) {
    double s = 0;
    for (int j = 0; j < V; ++j) s += std::exp(logits[i * V + j]);
    expect += std::log(s) - logits[i * V + tgt[i]];
  }
  EXPECT_NEAR(loss(), expect, 1e-12);
  auto g = logits;
  cross_entropy<double>(g.data(), tgt.data(), n, V, 1.0);
  expect_grad_matches(logits, g, loss, "cross entropy");
}

// Naive attention: one query at a time over its visible keys, in double. Hkv key/value heads
// (grouped-query attention; 0 = H): query head h reads key/value head h / (H / Hkv).
static std::vector<double> naive_attention(const std::vector<double>& qkv, const std::vector<int>& seqs, int H, int Dh,
                                           int Hkv = 0) {
  if (Hkv == 0) Hkv = H;
  const int D = H * Dh, Dkv = Hkv * Dh, ld = D + 2 * Dkv, n = seqs.back();
  std::vector<double> out(n * D, 0.0);
  for (size_t b = 0; b + 1 < seqs.size(); ++b)
    for (int i = seqs[b]; i < seqs[b + 1]; ++i)
      for (int h = 0; h < H; ++h) {
        const int g = h / (H / Hkv);
        std::vector<double> s;
        double mx = -1e300;
        for (int j = seqs[b]; j <= i; ++j) {
          double d = 0;
          for (int e = 0; e < Dh; ++e) d += qkv[i * ld + h * Dh + e] * qkv[j * ld + D + g * Dh + e];
          s.push_back(d / std::sqrt((double)Dh));
          mx = std::max(mx, s.back());
        }
        double z = 0;
        for (double& v : s) z += (v = std::exp(v - mx));
        for (int j = seqs[b]; j <= i; ++j)
          for (int e = 0; e < Dh; ++e)
            out[i * D + h * Dh + e] += s[j - seqs[b]] / z * qkv[j * ld + D + Dkv + g * Dh + e];
      }
  return out;
}

TEST(Ops, GroupedQueryAttentionMatchesNaiveLoopAndFiniteDifferences) {
  // 4 query heads on 2 and on 1 key/value heads; lengths straddle the 64-row query block.
  for (int Hkv : {2, 1}) {
    const int H = 4, Dh = 4, D = H * Dh, ld = D + 2 * Hkv * Dh;
    std::vector<int> seqs = {0, 70, 73, 80};
    const int n = seqs.back();
    auto qkv = random_vec(n * ld, 21 + Hkv, 1.5), wo = random_vec(n * D, 23);
    std::vector<double> out(n * D), lse(n * H), dqkv(n * ld);
    ops::AttnShape shape{H, Dh, Hkv};
    attention_forward<double>(qkv.data(), ld, seqs, shape, out.data(), D, lse.data());
    auto ref = naive_attention(qkv, seqs, H, Dh, Hkv);
    for (int i = 0; i < n * D; ++i) ASSERT_NEAR(out[i], ref[i], 1e-12) << "Hkv " << Hkv << " " << i;
    auto loss = [&] {
      attention_forward<double>(qkv.data(), ld, seqs, shape, out.data(), D, lse.data());
      return dot(out, wo);
    };
    loss();
    attention_backward<double>(qkv.data(), ld, out.data(), D, lse.data(), wo.data(), D, seqs, shape, dqkv.data());
    std::vector<size_t> idx;
    for (size_t i = 0; i < qkv.size(); i += 5) idx.push_back(i);
    expect_grad_matches(qkv, dqkv, loss, "GQA attention dqkv", idx, 1e-6, 1e-5, 1e-7);
  }
}

TEST(Ops, AttentionMatchesNaiveLoopAcrossBlocks) {
  // Lengths straddle the 64-row query block, and one sequence is empty (a routed layer may pick none).
  const int H = 2, Dh = 4, D = H * Dh;
  std::vector<int> seqs = {0, 70, 70, 75, 205};
  const int n = seqs.back();
  auto qkv = random_vec(n * 3 * D, 12, 2.0);
  std::vector<double> out(n * D), lse(n * H);
  attention_forward<double>(qkv.data(), 3 * D, seqs, {H, Dh}, out.data(), D, lse.data());
  auto ref = naive_attention(qkv, seqs, H, Dh);
  for (int i = 0; i < n * D; ++i) ASSERT_NEAR(out[i], ref[i], 1e-12) << i;
  // float path agrees to float precision
  std::vector<float> qf(qkv.begin(), qkv.end()), of(n * D), lf(n * H);
  attention_forward<float>(qf.data(), 3 * D, seqs, {H, Dh}, of.data(), D, lf.data());
  for (int i = 0; i < n * D; ++i) ASSERT_NEAR(of[i], ref[i], 1e-5) << i;
}

TEST(Ops, AttentionBackwardMatchesFiniteDifferences) {
  const int H = 2, Dh = 4, D = H * Dh;
  std::vector<int> seqs = {0, 5, 12, 80};  // the last one spans two query blocks
  const int n = seqs.back();
  auto qkv = random_vec(n * 3 * D, 13, 1.5), wo = random_vec(n * D, 14);
  std::vector<double> out(n * D), lse(n * H), dqkv(n * 3 * D);
  auto loss = [&] {
    attention_forward<double>(qkv.data(), 3 * D, seqs, {H, Dh}, out.data(), D, lse.data());
    return dot(out, wo);
  };
  loss();
  attention_backward<double>(qkv.data(), 3 * D, out.data(), D, lse.data(), wo.data(), D, seqs, {H, Dh}, dqkv.data());
  std::vector<size_t> idx;
  for (size_t i = 0; i < qkv.size(); i += 7) idx.push_back(i);
  expect_grad_matches(qkv, dqkv, loss, "attention dqkv", idx, 1e-6, 1e-5, 1e-7);
}

TEST(Ops, AttentionCountsCausalPairs) {
  std::vector<int> seqs = {0, 4, 4, 7};
  // 4*5/2 + 0 + 3*4/2 = 16 pairs; 4 * Dh * H per pair.
  EXPECT_EQ(attention_flops(seqs, {3, 8}), 16 * 4 * 8 * 3);
}
