// A naive reference model in double that loops over tokens (SPEC §1-§3), for the model tests:
// each routed layer's selected sub-sequence is built by hand (top-k by (r desc, position asc),
// or the causal decision), each MoE assigns tokens one by one in (rank, position) order under
// the capacity, and attention is causal by ORIGINAL position. Slow and obvious on purpose.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/model.h"
#include "util/rng.h"

namespace modlm::testing {

using Vec = std::vector<double>;

struct ReferenceModel {
  const ModelConfig& c;
  const Model<double>& m;
  // Per MoE layer: sum over sequences of (E + n_noop) sum_i f_i P_i, and the choice counts.
  mutable std::map<int, double> balance_sum = {};
  mutable std::map<int, int64_t> dropped = {}, noop = {}, computed = {};

  const double* P(const std::string& n) const { return m.params().data() + m.layout().get(n).offset; }
  Vec rmsnorm(const Vec& x, const double* w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    double inv = 1 / std::sqrt(ss / x.size() + c.norm_eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
    return y;
  }
  Vec matvec(const double* W, const Vec& x, int out) const {
    Vec y(out, 0.0);
    for (int o = 0; o < out; ++o)
      for (size_t i = 0; i < x.size(); ++i) y[o] += W[o * x.size() + i] * x[i];
    return y;
  }
  Vec swiglu_mlp(const double* w1, const double* w3, const double* w2, const Vec& xn, int F) const {
    Vec h1 = matvec(w1, xn, F), h3 = matvec(w3, xn, F);
    for (int i = 0; i < F; ++i) h1[i] = h1[i] / (1 + std::exp(-h1[i])) * h3[i];
    return matvec(w2, h1, c.d_model);
  }
  void rope(Vec& v, int pos) const {
    int Dh = c.head_dim(), half = Dh / 2;
    for (int h = 0; h < (int)v.size() / Dh; ++h)
      for (int i = 0; i < half; ++i) {
        double ang = pos * std::pow(c.rope_theta, -2.0 * i / Dh);
        double a = v[h * Dh + i], b = v[h * Dh + i + half];
        v[h * Dh + i] = a * std::cos(ang) - b * std::sin(ang);
        v[h * Dh + i + half] = b * std::cos(ang) + a * std::sin(ang);
      }
  }
  // SPEC §3 for the n rows of one sequence that reach the MoE, written out token by token.
  std::vector<Vec> moe(int l, const std::vector<Vec>& xn, bool capacity) const {
    const std::string p = "layers." + std::to_string(l) + ".moe.";
    const int n = (int)xn.size(), E = c.moe.n_experts, G = c.moe.n_gate(), K = c.moe.top_k, D = c.d_model;
    std::vector<Vec> prob(n), out(n, Vec(D, 0.0));
    std::vector<std::vector<int>> ch(n);
    for (int t = 0; t < n; ++t) {
      Vec z = matvec(P(p + "gate.weight"), xn[t], G);
      double mx = *std::max_element(z.begin(), z.end()), s = 0;
      for (double& v : z) s += (v = std::exp(v - mx));
      for (double& v : z) v /= s;
      prob[t] = z;
      std::vector<int> order(G);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
      ch[t].assign(order.begin(), order.begin() + K);
    }
    long C = 1L << 40;
    if (capacity && c.moe.capacity_factor > 0)
      C = std::max(1L, (long)std::ceil(c.moe.capacity_factor * n * K / G - 1e-9));
    std::vector<long> used(E, 0);
    for (int r = 0; r < K; ++r)
      for (int t = 0; t < n; ++t) {
        const int e = ch[t][r];
        if (e >= E) {
          ++noop[l];
          continue;
        }
        if (used[e] >= C) {
          ++dropped[l];
          continue;
        }
        ++used[e];
        ++computed[l];
        const std::string q = p + "experts." + std::to_string(e) + ".";
        Vec y = swiglu_mlp(P(q + "w1.weight"), P(q + "w3.weight"), P(q + "w2.weight"), xn[t], c.moe.d_expert);
        for (int d = 0; d < D; ++d) out[t][d] += prob[t][e] * y[d];
      }
    if (n > 0) {
      double b = 0;
      for (int i = 0; i < G; ++i) {
        double f = 0, Pi = 0;
        for (int t = 0; t < n; ++t) {
          for (int e : ch[t]) f += e == i;
          Pi += prob[t][i];
        }
        b += f / (n * K) * Pi / n;
      }
      balance_sum[l] += G * b;
    }
    return out;
  }
  // The layer of SPEC §1 on a sub-sequence xs with positions pos; its MLP may be an MoE.
  std::vector<Vec> block(int l, const std::vector<Vec>& xs, const std::vector<int>& pos, bool capacity) const {
    const std::string p = "layers." + std::to_string(l) + ".";
    const int D = c.d_model, H = c.n_heads, Dh = c.head_dim(), n = (int)xs.size();
    const int Dkv = c.kv_dim(), group = H / c.kv_heads();  // grouped-query attention
    std::vector<Vec> q(n), k(n), v(n), a(n), xn2(n);
    for (int t = 0; t < n; ++t) {
      Vec xn = rmsnorm(xs[t], P(p + "attn_norm.weight"));
      q[t] = matvec(P(p + "attn.wq.weight"), xn, D), k[t] = matvec(P(p + "attn.wk.weight"), xn, Dkv);
      v[t] = matvec(P(p + "attn.wv.weight"), xn, Dkv);
      rope(q[t], pos[t]), rope(k[t], pos[t]);
    }
    for (int t = 0; t < n; ++t) {
      Vec att(D, 0.0);
      for (int h = 0; h < H; ++h) {
        const int g = h / group;  // query head h reads key/value head g
        std::vector<double> s;
        for (int j = 0; j < n; ++j) {
          if (pos[j] > pos[t]) continue;
          double d = 0;
          for (int e = 0; e < Dh; ++e) d += q[t][h * Dh + e] * k[j][g * Dh + e];
          s.push_back(d / std::sqrt((double)Dh));
        }
        double mx = *std::max_element(s.begin(), s.end()), z = 0;
        for (double& x : s) z += (x = std::exp(x - mx));
        int idx = 0;
        for (int j = 0; j < n; ++j) {
          if (pos[j] > pos[t]) continue;
          for (int e = 0; e < Dh; ++e) att[h * Dh + e] += s[idx] / z * v[j][g * Dh + e];
          ++idx;
        }
      }
      a[t] = xs[t];
      Vec o = matvec(P(p + "attn.wo.weight"), att, D);
      for (int i = 0; i < D; ++i) a[t][i] += o[i];
      xn2[t] = rmsnorm(a[t], P(p + "mlp_norm.weight"));
    }
    std::vector<Vec> mo(n);
    if (c.has_moe(l)) {
      mo = moe(l, xn2, capacity);
    } else {
      for (int t = 0; t < n; ++t)
        mo[t] = swiglu_mlp(P(p + "mlp.w1.weight"), P(p + "mlp.w3.weight"), P(p + "mlp.w2.weight"), xn2[t], c.d_ff);
    }
    for (int t = 0; t < n; ++t)
      for (int i = 0; i < D; ++i) a[t][i] += mo[t][i];
    return a;
  }
  // Logits [T][V] of one sequence; `causal` decides routing as generation would, without capacity.
  std::vector<Vec> forward(const std::vector<int>& tokens, bool causal) const {
    const int T = (int)tokens.size(), D = c.d_model;
    std::vector<Vec> h(T);
    for (int t = 0; t < T; ++t)
      h[t] = Vec(P("tok_embeddings.weight") + tokens[t] * D, P("tok_embeddings.weight") + (tokens[t] + 1) * D);
    for (int l = 0; l < c.n_layers; ++l) {
      if (!c.routed(l)) {
        std::vector<int> pos(T);
        std::iota(pos.begin(), pos.end(), 0);
        h = block(l, h, pos, !causal);
        continue;
      }
      const std::string p = "layers." + std::to_string(l) + ".";
      std::vector<double> r(T), dec(T);
      for (int t = 0; t < T; ++t) {
        r[t] = matvec(P(p + "router.weight"), h[t], 1)[0];
        if (c.routing.causal == "predictor") {
          Vec z = matvec(P(p + "predictor.fc1.weight"), h[t], c.routing.predictor_hidden);
          for (int j = 0; j < (int)z.size(); ++j) z[j] = std::max(0.0, z[j] + P(p + "predictor.fc1.bias")[j]);
          dec[t] = matvec(P(p + "predictor.fc2.weight"), z, 1)[0] + P(p + "predictor.fc2.bias")[0];
        } else {
          dec[t] = r[t];  // aux_loss: the router's own logit decides
        }
      }
      std::vector<int> sel;
      if (causal) {
        for (int t = 0; t < T; ++t)
          if (dec[t] > 0) sel.push_back(t);
      } else {
        std::vector<int> order(T);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return r[a] > r[b]; });
        order.resize(routed_capacity(c.routing.capacity, T));
        std::sort(order.begin(), order.end());
        sel = order;
      }
      std::vector<Vec> xs;
      for (int t : sel) xs.push_back(h[t]);
      std::vector<Vec> ys = block(l, xs, sel, !causal);
      for (size_t i = 0; i < sel.size(); ++i) {
        const double g = c.routing.method == "stochastic" ? 1.0 : c.routing.gate == "sigmoid" ? 1 / (1 + std::exp(-r[sel[i]])) : r[sel[i]];
        for (int d = 0; d < D; ++d) h[sel[i]][d] = xs[i][d] + g * (ys[i][d] - xs[i][d]);
      }
    }
    std::vector<Vec> logits(T);
    for (int t = 0; t < T; ++t)
      logits[t] = matvec(P(c.tie_embeddings ? "tok_embeddings.weight" : "output.weight"), rmsnorm(h[t], P("norm.weight")),
                         c.vocab_size);
    return logits;
  }
};

// Random weights in [-0.5, 0.5) with every bias 0 (unbiased routing decisions: some tokens each
// way), and B * T random token ids: the inputs the model-vs-reference tests share.
inline std::vector<int32_t> randomize_for_reference(Model<double>& m, Rng& r, int B, int T) {
  for (auto& v : m.params()) v = 0.5 * (2 * r.uniform() - 1);
  for (const ParamInfo& p : m.layout().params())
    if (p.name.find(".bias") != std::string::npos) std::fill_n(m.params().data() + p.offset, p.numel, 0.0);
  std::vector<int32_t> tok((size_t)B * T);
  for (auto& t : tok) t = (int32_t)r.below(m.config().vocab_size);
  return tok;
}

// m's logits after its forward of the B sequences of T tokens in tok (m.logits()) against the
// reference's, sequence by sequence, to 1e-10; the first miss is a fatal failure named by label.
inline void expect_logits_match_reference(const Model<double>& m, const ReferenceModel& ref, const std::vector<int32_t>& tok,
                                          int B, int T, bool causal, const std::string& label) {
  const int V = m.config().vocab_size;
  for (int b = 0; b < B; ++b) {
    const std::vector<int> seq(tok.begin() + b * T, tok.begin() + (b + 1) * T);
    const std::vector<Vec> want = ref.forward(seq, causal);
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < V; ++v)
        ASSERT_NEAR(m.logits()[((size_t)b * T + t) * V + v], want[t][v], 1e-10) << label << " b " << b << " t " << t;
  }
}

}  // namespace modlm::testing
