#include "model/moe.h"

#include <cmath>
#include <cstring>

#include "ops/gemm.h"
#include "ops/swiglu.h"
#include "util/profile.h"

namespace modlm {

using namespace ops;

MoeDims MoeDims::of(const ModelConfig& c) {
  MoeDims d;
  d.D = c.d_model;
  d.E = c.moe.n_experts;
  d.n_noop = c.moe.n_noop;
  d.d_expert = c.moe.d_expert;
  d.top_k = c.moe.top_k;
  d.capacity_factor = c.moe.capacity_factor;
  d.balance_weight = c.moe.balance_weight;
  return d;
}

void MoeLayerStats::merge(const MoeLayerStats& o) {
  layer = o.layer;
  if (load.size() < o.load.size()) load.resize(o.load.size(), 0);
  for (size_t i = 0; i < o.load.size(); ++i) load[i] += o.load[i];
  tokens += o.tokens;
  assignments += o.assignments;
  dropped += o.dropped;
  noop += o.noop;
  computed += o.computed;
  const double w0 = (double)sequences, w1 = (double)o.sequences;
  if (w0 + w1 > 0) {
    balance = (balance * w0 + o.balance * w1) / (w0 + w1);
    balance_loss = (balance_loss * w0 + o.balance_loss * w1) / (w0 + w1);
  }
  sequences += o.sequences;
}

json moe_stats_json(const std::vector<MoeLayerStats>& stats) {
  json a = json::array();
  for (const auto& s : stats) {
    const double A = s.assignments > 0 ? (double)s.assignments : 1.0;
    json load = json::array();
    for (int64_t c : s.load) load.push_back(c / A);
    a.push_back({{"layer", s.layer},
                 {"tokens", s.tokens},
                 {"load", load},
                 {"dropped_fraction", s.dropped / A},
                 {"noop_fraction", s.noop / A},
                 {"balance", s.balance},
                 {"balance_loss", s.balance_loss}});
  }
  return a;
}

template <typename T>
void moe_select(const T* p, int G, int k, int* out) {
  for (int r = 0; r < k; ++r) {
    int best = -1;
    for (int j = 0; j < G; ++j) {
      bool taken = false;
      for (int q = 0; q < r; ++q) taken |= out[q] == j;
      if (taken) continue;
      // Strictly larger wins, so equal probabilities go to the lower index; NaN loses to all.
      if (best < 0 || (!std::isnan(p[j]) && (std::isnan(p[best]) || p[j] > p[best]))) best = j;
    }
    out[r] = best;
  }
}

void moe_capacity_keep(const int* choice, int n, int K, int E, int C, uint8_t* kept) {
  std::vector<int> count(E, 0);
  for (int r = 0; r < K; ++r)
    for (int t = 0; t < n; ++t) {
      const int i = t * K + r, e = choice[i];
      if (e >= E) {
        kept[i] = 0;  // a no-op: nothing to compute
      } else if (C < 0 || count[e] < C) {
        kept[i] = 1;
        ++count[e];
      } else {
        kept[i] = 0;  // over capacity: dropped
      }
    }
}

namespace {

constexpr int kTileRows = 256;  // rows per expert tile
constexpr int kTileCols = 128;  // output rows per weight-gradient tile

struct RowTile {
  int e, r0, r1;  // packed rows [r0, r1), all of expert e
};

std::vector<RowTile> row_tiles(const std::vector<int>& off) {
  std::vector<RowTile> t;
  for (int e = 0; e + 1 < (int)off.size(); ++e)
    for (int r = off[e]; r < off[e + 1]; r += kTileRows) t.push_back({e, r, std::min(r + kTileRows, off[e + 1])});
  return t;
}

}  // namespace

template <typename T>
void moe_forward(const LayerWeights<T>& w, const MoeDims& d, const T* x, int n, const std::vector<int>& seqs,
                 bool capacity, MoeActs<T>& A, T* y) {
  const int D = d.D, E = d.E, G = d.n_gate(), K = d.top_k, De = d.d_expert;
  const int B = (int)seqs.size() - 1;
  A.n = n;
  // Router: softmax over the E + n_noop logits of each row, then the top_k choices.
  A.probs.resize({n, G});
  A.choice.resize((size_t)n * K);
  {
    profile::Scope p("fwd.moe.gate");
    linear_forward<T>(x, D, w.moe_gate, n, D, G, A.probs.data(), G);
#pragma omp parallel for schedule(static) if (n > 64)
    for (int i = 0; i < n; ++i) {
      T* z = A.probs.data() + (size_t)i * G;
      T mx = z[0];
      for (int j = 1; j < G; ++j) mx = std::max(mx, z[j]);
      T sum = 0;
      for (int j = 0; j < G; ++j) sum += (z[j] = std::exp(z[j] - mx));
      const T inv = T(1) / sum;
      for (int j = 0; j < G; ++j) z[j] *= inv;
      moe_select<T>(z, G, K, A.choice.data() + (size_t)i * K);
    }
  }
  // Capacity per sequence, shares f_i and the balance loss.
  MoeLayerStats& st = A.stats;
  st = MoeLayerStats{};
  st.tokens = n;
  st.assignments = (int64_t)n * K;
  st.load.assign(G, 0);
  st.sequences = B;
  A.kept.resize((size_t)n * K);
  A.frac.assign((size_t)B * G, 0.0);
  double balance = 0;
  std::vector<int64_t> cnt(G);
  std::vector<double> P(G);
  for (int b = 0; b < B; ++b) {
    const int r0 = seqs[b], ns = seqs[b + 1] - r0;
    if (ns <= 0) continue;
    const int C = capacity && d.capacity_factor > 0 ? moe_capacity(d.capacity_factor, ns, K, G) : -1;
    moe_capacity_keep(A.choice.data() + (size_t)r0 * K, ns, K, E, C, A.kept.data() + (size_t)r0 * K);
    std::fill(cnt.begin(), cnt.end(), 0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int t = r0; t < r0 + ns; ++t) {
      for (int r = 0; r < K; ++r) ++cnt[A.choice[(size_t)t * K + r]];
      for (int j = 0; j < G; ++j) P[j] += (double)A.probs[(size_t)t * G + j];
    }
    double s = 0;
    for (int j = 0; j < G; ++j) {
      const double f = (double)cnt[j] / ((double)ns * K);
      A.frac[(size_t)b * G + j] = f;
      s += f * P[j] / ns;
      st.load[j] += cnt[j];
    }
    balance += G * s;
  }
  st.balance = B > 0 ? balance / B : 0;
  st.balance_loss = d.balance_weight * st.balance;
  for (int j = E; j < G; ++j) st.noop += st.load[j];

  // Group the kept choices by expert (rows ascending within an expert).
  A.off.assign(E + 1, 0);
  for (size_t i = 0; i < (size_t)n * K; ++i)
    if (A.kept[i]) ++A.off[A.choice[i] + 1];
  for (int e = 0; e < E; ++e) A.off[e + 1] += A.off[e];
  const int M = A.off[E];
  st.computed = M;
  st.dropped = st.assignments - st.noop - M;
  A.rows.resize(M);
  A.pe.resize({M});
  A.slot.assign((size_t)n * K, -1);
  {
    std::vector<int> cur(A.off.begin(), A.off.end() - 1);
    for (int t = 0; t < n; ++t)
      for (int r = 0; r < K; ++r) {
        const size_t i = (size_t)t * K + r;
        if (!A.kept[i]) continue;
        const int e = A.choice[i], slot = cur[e]++;
        A.rows[slot] = t;
        A.pe[slot] = A.probs[(size_t)t * G + e];
        A.slot[i] = slot;
      }
  }
  A.xg.resize({M, D});
  A.h13.resize({M, 2 * De});
  A.g.resize({M, De});
  A.out.resize({M, D});
  if (M == 0) return;
  {
    profile::Scope p("fwd.moe.gather");
#pragma omp parallel for schedule(static) if (M > 64)
    for (int i = 0; i < M; ++i) std::memcpy(A.xg.data() + (size_t)i * D, x + (size_t)A.rows[i] * D, sizeof(T) * D);
  }
  {
    // Tiles of at most kTileRows rows of one expert, run in parallel with single-threaded
    // products: balanced however the rows split between experts, and the same sums whatever
    // the thread count.
    profile::Scope p("fwd.moe.experts");
    const std::vector<RowTile> tiles = row_tiles(A.off);
#pragma omp parallel for schedule(dynamic, 1) if (tiles.size() > 1)
    for (size_t i = 0; i < tiles.size(); ++i) {
      const int e = tiles[i].e, o = tiles[i].r0, m = tiles[i].r1 - tiles[i].r0;
      linear_forward<T>(A.xg.data() + (size_t)o * D, D, w.expert_w13[e], m, D, 2 * De,
                        A.h13.data() + (size_t)o * 2 * De, 2 * De);
      swiglu_forward<T>(A.h13.data() + (size_t)o * 2 * De, m, De, A.g.data() + (size_t)o * De);
      linear_forward<T>(A.g.data() + (size_t)o * De, De, w.expert_w2[e], m, De, D, A.out.data() + (size_t)o * D, D);
    }
  }
  // y += p * Expert(x), row by row (a row's choices in rank order).
  profile::Scope p("fwd.moe.scatter");
#pragma omp parallel for schedule(static) if (n > 64)
  for (int t = 0; t < n; ++t) {
    T* yr = y + (size_t)t * D;
    for (int r = 0; r < K; ++r) {
      const int sl = A.slot[(size_t)t * K + r];
      if (sl < 0) continue;
      const T* orow = A.out.data() + (size_t)sl * D;
      const T pe = A.pe[sl];
      for (int j = 0; j < D; ++j) yr[j] += pe * orow[j];
    }
  }
}

template <typename T>
void moe_backward(const LayerWeights<T>& w, const LayerWeights<T>& gw, const MoeDims& d, const T* x, int n,
                  const std::vector<int>& seqs, const MoeActs<T>& A, const T* dy, MoeGradScratch<T>& s, T* dx) {
  const int D = d.D, E = d.E, G = d.n_gate(), De = d.d_expert;
  const int B = (int)seqs.size() - 1;
  const int M = A.off.empty() ? 0 : A.off[E];
  profile::Scope p_all("bwd.moe");
  // dz first holds dL/dp (router probabilities), then dL/dlogits.
  s.dz.resize({n, G});
  s.dz.zero();
  if (M > 0) {
    s.dyg.resize({M, D});
    s.dg.resize({M, De});
    s.dh13.resize({M, 2 * De});
    s.dxg.resize({M, D});
    // Row tiles: u = dy W2 (unscaled), dL/dp = dy . Expert(x) = u . g, then p-scaled gradients
    // through swiglu and W13 back to the expert's inputs. Every tile writes only its own rows
    // (and dz[row, e], unique per row and expert).
    profile::Scope p("bwd.moe.experts");
    const std::vector<RowTile> tiles = row_tiles(A.off);
#pragma omp parallel for schedule(dynamic, 1) if (tiles.size() > 1)
    for (size_t ti = 0; ti < tiles.size(); ++ti) {
      const int e = tiles[ti].e, o = tiles[ti].r0, m = tiles[ti].r1 - tiles[ti].r0;
      T* dyg = s.dyg.data() + (size_t)o * D;
      T* dg = s.dg.data() + (size_t)o * De;
      T* dh13 = s.dh13.data() + (size_t)o * 2 * De;
      const T* g = A.g.data() + (size_t)o * De;
      for (int i = 0; i < m; ++i) std::memcpy(dyg + (size_t)i * D, dy + (size_t)A.rows[o + i] * D, sizeof(T) * D);
      linear_backward_input<T>(dyg, D, w.expert_w2[e], m, De, D, dg, De, false);
      for (int i = 0; i < m; ++i) {
        T* dgr = dg + (size_t)i * De;
        const T* gr = g + (size_t)i * De;
        T dot = 0;
        for (int j = 0; j < De; ++j) dot += dgr[j] * gr[j];
        s.dz[(size_t)A.rows[o + i] * G + e] = dot;
        const T pe = A.pe[o + i];
        for (int j = 0; j < De; ++j) dgr[j] *= pe;
        T* dyr = dyg + (size_t)i * D;
        for (int j = 0; j < D; ++j) dyr[j] *= pe;
      }
      swiglu_backward<T>(dg, A.h13.data() + (size_t)o * 2 * De, m, De, dh13);
      linear_backward_input<T>(dh13, 2 * De, w.expert_w13[e], m, D, 2 * De, s.dxg.data() + (size_t)o * D, D, false);
    }
    // Weight gradients, tiled over their output rows: dW2 += (p dy)^T g, dW13 += dh13^T x.
    struct WTile {
      int e, w13, j0, j1;
    };
    profile::Scope pw("bwd.moe.wgrad");
    std::vector<WTile> wt;
    for (int e = 0; e < E; ++e) {
      if (A.off[e + 1] == A.off[e]) continue;
      for (int j = 0; j < D; j += kTileCols) wt.push_back({e, 0, j, std::min(j + kTileCols, D)});
      for (int j = 0; j < 2 * De; j += kTileCols) wt.push_back({e, 1, j, std::min(j + kTileCols, 2 * De)});
    }
#pragma omp parallel for schedule(dynamic, 1) if (wt.size() > 1)
    for (size_t ti = 0; ti < wt.size(); ++ti) {
      const WTile& t = wt[ti];
      const int o = A.off[t.e], m = A.off[t.e + 1] - o, cols = t.j1 - t.j0;
      if (t.w13)
        linear_backward_weight<T>(s.dh13.data() + (size_t)o * 2 * De + t.j0, 2 * De, A.xg.data() + (size_t)o * D, D, m,
                                  D, cols, gw.expert_w13[t.e] + (size_t)t.j0 * D);
      else
        linear_backward_weight<T>(s.dyg.data() + (size_t)o * D + t.j0, D, A.g.data() + (size_t)o * De, De, m, De, cols,
                                  gw.expert_w2[t.e] + (size_t)t.j0 * De);
    }
  }
  // Balance loss: d/dp_{t,i} of balance_weight * G / B * sum_s sum_i f_{s,i} mean_t p_{t,i}.
  if (d.balance_weight > 0 && B > 0) {
    for (int b = 0; b < B; ++b) {
      const int r0 = seqs[b], ns = seqs[b + 1] - r0;
      if (ns <= 0) continue;
      const double c = d.balance_weight * G / B / ns;
      for (int t = r0; t < r0 + ns; ++t)
        for (int j = 0; j < G; ++j) s.dz[(size_t)t * G + j] += T(c * A.frac[(size_t)b * G + j]);
    }
  }
  // Softmax backward: dz = p (dp - p . dp).
#pragma omp parallel for schedule(static) if (n > 64)
  for (int t = 0; t < n; ++t) {
    T* dz = s.dz.data() + (size_t)t * G;
    const T* pr = A.probs.data() + (size_t)t * G;
    T dot = 0;
    for (int j = 0; j < G; ++j) dot += pr[j] * dz[j];
    for (int j = 0; j < G; ++j) dz[j] = pr[j] * (dz[j] - dot);
  }
  linear_backward_weight<T>(s.dz.data(), G, x, D, n, D, G, gw.moe_gate);
  linear_backward_input<T>(s.dz.data(), G, w.moe_gate, n, D, G, dx, D, false);
  // Experts' input gradients, row by row.
  if (M > 0) {
#pragma omp parallel for schedule(static) if (n > 64)
    for (int t = 0; t < n; ++t) {
      T* dxr = dx + (size_t)t * D;
      for (int r = 0; r < d.top_k; ++r) {
        const int sl = A.slot[(size_t)t * d.top_k + r];
        if (sl < 0) continue;
        const T* src = s.dxg.data() + (size_t)sl * D;
        for (int j = 0; j < D; ++j) dxr[j] += src[j];
      }
    }
  }
}

template void moe_select<float>(const float*, int, int, int*);
template void moe_select<double>(const double*, int, int, int*);
template struct MoeActs<float>;
template struct MoeActs<double>;
template struct MoeGradScratch<float>;
template struct MoeGradScratch<double>;
template void moe_forward<float>(const LayerWeights<float>&, const MoeDims&, const float*, int, const std::vector<int>&,
                                 bool, MoeActs<float>&, float*);
template void moe_forward<double>(const LayerWeights<double>&, const MoeDims&, const double*, int,
                                  const std::vector<int>&, bool, MoeActs<double>&, double*);
template void moe_backward<float>(const LayerWeights<float>&, const LayerWeights<float>&, const MoeDims&, const float*,
                                  int, const std::vector<int>&, const MoeActs<float>&, const float*,
                                  MoeGradScratch<float>&, float*);
template void moe_backward<double>(const LayerWeights<double>&, const LayerWeights<double>&, const MoeDims&,
                                   const double*, int, const std::vector<int>&, const MoeActs<double>&, const double*,
                                   MoeGradScratch<double>&, double*);

}  // namespace modlm
