#include "model/model.h"

#include <cmath>
#include <cstring>

#include "model/routing.h"
#include "ops/copy.h"
#include "ops/cross_entropy.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "util/error.h"
#include "util/profile.h"
#include "util/rng.h"

namespace modlm {

using namespace ops;

namespace {
template <typename T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}
// Binary cross-entropy with logits, stable for large |z|: softplus(z) - y z.
double bce_with_logits(double z, double y) { return std::max(z, 0.0) + std::log1p(std::exp(-std::abs(z))) - y * z; }
}  // namespace

template <typename T>
Model<T>::Model(const ModelConfig& cfg) : cfg_(cfg), layout_(cfg), dims_(LayerDims::of(cfg)) {
  params_.assign(layout_.total(), T(0));
  grads_.assign(layout_.total(), T(0));
  w_ = ModelWeights<T>::bind(layout_, cfg_, params_.data());
  gw_ = ModelWeights<T>::bind(layout_, cfg_, grads_.data());
  rope_.build(cfg.max_seq_len, cfg.head_dim(), cfg.rope_theta);
  acts_.resize(cfg.n_layers);
  route_.resize(cfg.n_layers);
}

template <typename T>
void Model<T>::init_weights(uint64_t seed) {
  const double std_base = 0.02, std_resid = 0.02 / std::sqrt(2.0 * cfg_.n_layers);
  for (const ParamInfo& p : layout_.params()) {
    T* dst = params_.data() + p.offset;
    const std::string& n = p.name;
    auto ends_with = [&](const char* s) { return n.size() >= std::strlen(s) && n.compare(n.size() - std::strlen(s), std::string::npos, s) == 0; };
    if (ends_with("norm.weight")) {
      std::fill(dst, dst + p.numel, T(1));
    } else if (ends_with(".bias")) {
      std::fill(dst, dst + p.numel, T(0));
    } else {
      const bool expert_w2 = n.find(".moe.experts.") != std::string::npos && ends_with(".w2.weight");
      double sd = (ends_with("attn.wo.weight") || ends_with("mlp.w2.weight") || expert_w2) ? std_resid : std_base;
      Rng rng(seed ^ stable_hash(n));
      for (size_t i = 0; i < p.numel; ++i) dst[i] = T(sd * rng.normal());
    }
  }
}

template <typename T>
void Model<T>::zero_grad() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template <typename T>
ForwardResult Model<T>::forward(const int32_t* tokens, const int32_t* targets, int B, int T_len,
                                const ForwardOptions& opt) {
  const int V = cfg_.vocab_size, D = cfg_.d_model, L = cfg_.n_layers;
  if (B < 1 || T_len < 1) throw bad_input("forward: empty batch");
  if (T_len > cfg_.max_seq_len)
    throw bad_input("sequence length " + std::to_string(T_len) + " exceeds the model's max_seq_len " +
                    std::to_string(cfg_.max_seq_len));
  const int n = B * T_len;
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= V)
      throw bad_input("token id " + std::to_string(tokens[i]) + " outside the vocabulary [0, " + std::to_string(V) + ")");
    if (targets && (targets[i] < 0 || targets[i] >= V))
      throw bad_input("target id " + std::to_string(targets[i]) + " outside the vocabulary");
  }
  CountFlops counting(true);
  B_ = B, T_ = T_len, n_ = n;
  tokens_.assign(tokens, tokens + n);
  if (targets) targets_.assign(targets, targets + n); else targets_.clear();
  pos_.resize(n);
  seqs_.resize(B + 1);
  for (int b = 0; b <= B; ++b) seqs_[b] = b * T_len;
  for (int i = 0; i < n; ++i) pos_[i] = i % T_len;

  h_.resize(L + 1);
  for (auto& h : h_) h.resize({n, D});
  T* h0 = h_[0].data();
#pragma omp parallel for schedule(static) if (n > 64)
  for (int i = 0; i < n; ++i)
    std::memcpy(h0 + (size_t)i * D, w_.tok_embeddings + (size_t)tokens[i] * D, sizeof(T) * D);

  ForwardResult res;
  res.tokens = n;
  const bool moe_capacity = opt.moe_capacity && opt.mode == RouteMode::TopK;
  for (int l = 0; l < L; ++l) {
    if (cfg_.routed(l))
      routed_forward(l, h_[l].data(), h_[l + 1].data(), opt, res);
    else
      layer_forward<T>(w_.layers[l], dims_, rope_, h_[l].data(), n, pos_.data(), seqs_, acts_[l], h_[l + 1].data(),
                       moe_capacity);
    if (cfg_.has_moe(l)) {  // its balance loss joins the auxiliary losses
      MoeLayerStats& ms = acts_[l].moe.stats;
      ms.layer = l;
      res.aux_loss += ms.balance_loss;
      res.moe.push_back(ms);
    }
  }
  xnf_.resize({n, D});
  invf_.resize({n});
  rmsnorm_forward<T>(h_[L].data(), D, w_.norm, n, D, T(cfg_.norm_eps), xnf_.data(), D, invf_.data());
  logits_.resize({n, V});
  {
    profile::Scope p("fwd.gemm.head");
    linear_forward<T>(xnf_.data(), D, w_.output, n, D, V, logits_.data(), V);
  }
  if (targets) {
    profile::Scope p("fwd.cross_entropy");
    double sum = cross_entropy<T>(logits_.data(), targets, n, V, opt.train ? T(1.0 / n) : T(0));
    res.lm_loss = sum / n;
  }
  res.loss = res.lm_loss + res.aux_loss;
  has_backward_state_ = opt.train && targets;
  return res;
}

template <typename T>
void Model<T>::routed_forward(int l, const T* x, T* y, const ForwardOptions& opt, ForwardResult& res) {
  RoutedState& S = route_[l];
  const LayerWeights<T>& W = w_.layers[l];
  const RoutingConfig& rc = cfg_.routing;
  const int n = n_, D = cfg_.d_model, Tn = T_, B = B_;
  const bool predictor = rc.causal == "predictor";
  const int k = routed_capacity(rc.capacity, Tn);

  // Router logits r_t = w_r . h_t for every token (also for "stochastic": SPEC §4).
  S.r.resize({n});
  linear_forward<T>(x, D, W.router, n, D, 1, S.r.data(), 1);
  // Predictor p_t = sigmoid(fc2(relu(fc1(h_t)))) on the stopped-gradient stream.
  if (predictor) {
    const int Hp = rc.predictor_hidden;
    S.pz1.resize({n, Hp});
    S.plog.resize({n});
    linear_forward<T>(x, D, W.pred_fc1_w, n, D, Hp, S.pz1.data(), Hp);
#pragma omp parallel for schedule(static) if (n > 64)
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < Hp; ++j) {
        T& z = S.pz1[(size_t)i * Hp + j];
        z = std::max(z + W.pred_fc1_b[j], T(0));  // stored post-ReLU
      }
    linear_forward<T>(S.pz1.data(), Hp, W.pred_fc2_w, n, Hp, 1, S.plog.data(), 1);
    for (int i = 0; i < n; ++i) S.plog[i] += W.pred_fc2_b[0];
  }
  const T* decision = predictor ? S.plog.data() : S.r.data();

  // Top-k targets 1[t in P] (the training-time set), then the rows this pass processes.
  std::vector<T> noise;
  if (rc.method == "stochastic") {
    Rng rng(opt.noise_seed ^ stable_hash("stochastic-routing") ^ (uint64_t)l * 0x9E3779B97F4A7C15ull);
    for (int64_t i = 0; i < opt.noise_offset; ++i) rng.uniform();
    noise.resize(n);
    for (auto& v : noise) v = T(rng.uniform());
  }
  S.target.assign(n, 0);
  S.sel.clear();
  S.sel_pos.clear();
  S.sel_offsets.assign(1, 0);
  for (int b = 0; b < B; ++b) {
    const int base = b * Tn;
    std::vector<int> top;
    if (rc.method == "expert_choice") top = select_topk<T>(S.r.data() + base, Tn, k);
    else if (rc.method == "stochastic") top = select_topk<T>(noise.data() + base, Tn, k);
    else top = select_token_choice<T>(S.r.data() + base, Tn, k);
    for (int t : top) S.target[base + t] = 1;
    const std::vector<int>& chosen = opt.mode == RouteMode::TopK ? top : select_causal<T>(decision + base, Tn);
    for (int t : chosen) {
      S.sel.push_back(base + t);
      S.sel_pos.push_back(pos_[base + t]);
    }
    S.sel_offsets.push_back((int)S.sel.size());
  }
  const int m = (int)S.sel.size();

  // Decision quality and auxiliary losses.
  RoutedLayerStats st;
  st.layer = l;
  st.tokens = n;
  st.processed = m;
  double dec_loss = 0, balance = 0;
  for (int i = 0; i < n; ++i) {
    st.decision_correct += (decision[i] > T(0)) == (S.target[i] == 1);
    dec_loss += bce_with_logits((double)decision[i], S.target[i]);
  }
  st.decision_loss = dec_loss / n;
  res.aux_loss += rc.aux_weight * st.decision_loss;  // predictor BCE, or the router's aux BCE
  if (predictor) res.predictor_loss += rc.aux_weight * st.decision_loss;
  if (rc.method == "token_choice") {
    for (int b = 0; b < B; ++b) {
      double mean = 0;
      for (int t = 0; t < Tn; ++t) mean += sigmoid((double)S.r[b * Tn + t]);
      mean /= Tn;
      balance += (mean - rc.capacity) * (mean - rc.capacity);
    }
    res.aux_loss += rc.balance_weight * balance / B;
  }

  // Gather, run the dense layer on the selected rows, scatter x + gate * (Block(x) - x).
  S.gate.resize({m});
  S.xg.resize({m, D});
  S.yg.resize({m, D});
  for (int i = 0; i < m; ++i) {
    const T r = S.r[S.sel[i]];
    S.gate[i] = rc.method == "stochastic" ? T(1) : rc.gate == "sigmoid" ? sigmoid(r) : r;
    st.gate_sum += (double)S.gate[i];
  }
#pragma omp parallel for schedule(static) if (m > 64)
  for (int i = 0; i < m; ++i) std::memcpy(S.xg.data() + (size_t)i * D, x + (size_t)S.sel[i] * D, sizeof(T) * D);
  layer_forward<T>(W, dims_, rope_, S.xg.data(), m, S.sel_pos.data(), S.sel_offsets, acts_[l], S.yg.data(),
                   opt.moe_capacity && opt.mode == RouteMode::TopK);
  parallel_copy(x, y, (size_t)n * D);
#pragma omp parallel for schedule(static) if (m > 64)
  for (int i = 0; i < m; ++i) {
    T* yr = y + (size_t)S.sel[i] * D;
    const T* xr = S.xg.data() + (size_t)i * D;
    const T* br = S.yg.data() + (size_t)i * D;
    const T g = S.gate[i];
    // x + g (Block(x) - x), written so that g = 1 gives Block(x) bit for bit.
    for (int j = 0; j < D; ++j) yr[j] = g * br[j] + (T(1) - g) * xr[j];
  }
  res.routed.push_back(st);
}

template <typename T>
void Model<T>::backward() {
  if (!has_backward_state_) throw std::logic_error("backward() needs a forward(train=true) with targets");
  CountFlops not_counting(false);
  const int n = n_, D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
  dh_a_.resize({n, D});
  dh_b_.resize({n, D});
  // LM head and final norm; logits_ holds dL/dlogits (written by cross_entropy).
  {
    profile::Scope p("bwd.gemm.head");
    linear_backward_weight<T>(logits_.data(), V, xnf_.data(), D, n, D, V, gw_.output);
    linear_backward_input<T>(logits_.data(), V, w_.output, n, D, V, dh_b_.data(), D, false);
  }
  rmsnorm_backward<T>(dh_b_.data(), D, h_[L].data(), D, w_.norm, invf_.data(), n, D, dh_a_.data(), D, false, gw_.norm);
  if (on_grads_ready) on_grads_ready(L);
  T* dy = dh_a_.data();
  T* dx = dh_b_.data();
  for (int l = L - 1; l >= 0; --l) {
    if (cfg_.routed(l))
      routed_backward(l, h_[l].data(), dy, dx);
    else
      layer_backward<T>(w_.layers[l], gw_.layers[l], dims_, rope_, h_[l].data(), n, pos_.data(), seqs_, acts_[l], dy,
                        scratch_, dx);
    if (on_grads_ready) on_grads_ready(l);
    std::swap(dy, dx);
  }
  // Embedding rows: a scatter-add, serial because tokens repeat.
  for (int i = 0; i < n; ++i) {
    T* g = gw_.tok_embeddings + (size_t)tokens_[i] * D;
    const T* d = dy + (size_t)i * D;
    for (int j = 0; j < D; ++j) g[j] += d[j];
  }
  has_backward_state_ = false;
}

template <typename T>
void Model<T>::routed_backward(int l, const T* x, const T* dy, T* dx) {
  RoutedState& S = route_[l];
  const LayerWeights<T>& W = w_.layers[l];
  const LayerWeights<T>& GW = gw_.layers[l];
  const RoutingConfig& rc = cfg_.routing;
  const int n = n_, D = cfg_.d_model, m = (int)S.sel.size(), Tn = T_, B = B_;
  parallel_copy(dy, dx, (size_t)n * D);  // skipped rows: identity
  S.dr.resize({n});
  S.dr.zero();
  if (m > 0) {
    dyg_.resize({m, D});
    dxg_.resize({m, D});
#pragma omp parallel for schedule(static) if (m > 64)
    for (int i = 0; i < m; ++i) {
      const T* src = dy + (size_t)S.sel[i] * D;
      T* dst = dyg_.data() + (size_t)i * D;
      for (int j = 0; j < D; ++j) dst[j] = S.gate[i] * src[j];
    }
    layer_backward<T>(W, GW, dims_, rope_, S.xg.data(), m, S.sel_pos.data(), S.sel_offsets, acts_[l], dyg_.data(),
                      scratch_, dxg_.data());
#pragma omp parallel for schedule(static) if (m > 64)
    for (int i = 0; i < m; ++i) {  // rows are distinct: no two iterations touch the same dx or dr
      const int row = S.sel[i];
      const T* dyr = dy + (size_t)row * D;
      const T* xr = S.xg.data() + (size_t)i * D;
      const T* br = S.yg.data() + (size_t)i * D;
      const T* dxr_block = dxg_.data() + (size_t)i * D;
      T* dxr = dx + (size_t)row * D;
      const T g = S.gate[i];
      T dgate = 0;
      for (int j = 0; j < D; ++j) {
        dgate += dyr[j] * (br[j] - xr[j]);
        dxr[j] = dyr[j] * (T(1) - g) + dxr_block[j];
      }
      if (rc.method != "stochastic") {
        S.dr[row] += dgate * (rc.gate == "sigmoid" ? g * (T(1) - g) : T(1));
      }
    }
  }
  if (rc.causal == "aux_loss") {
    const T scale = T(rc.aux_weight / n);
    for (int i = 0; i < n; ++i) S.dr[i] += scale * (sigmoid(S.r[i]) - T(S.target[i]));
  }
  if (rc.method == "token_choice") {
    for (int b = 0; b < B; ++b) {
      double mean = 0;
      for (int t = 0; t < Tn; ++t) mean += sigmoid((double)S.r[b * Tn + t]);
      mean /= Tn;
      const T c = T(rc.balance_weight / B * 2.0 * (mean - rc.capacity) / Tn);
      for (int t = 0; t < Tn; ++t) {
        const T s = sigmoid(S.r[b * Tn + t]);
        S.dr[b * Tn + t] += c * s * (T(1) - s);
      }
    }
  }
  // r = x w_r^T: dw_r += dr^T x, dx += dr w_r.
  linear_backward_weight<T>(S.dr.data(), 1, x, D, n, D, 1, GW.router);
  linear_backward_input<T>(S.dr.data(), 1, W.router, n, D, 1, dx, D, true);

  // Predictor: its own BCE; the stop-gradient means nothing flows into dx.
  if (rc.causal == "predictor") {
    const int Hp = rc.predictor_hidden;
    TensorT<T> dplog({n}), dz1({n, Hp});
    const T scale = T(rc.aux_weight / n);
    for (int i = 0; i < n; ++i) dplog[i] = scale * (sigmoid(S.plog[i]) - T(S.target[i]));
    linear_backward_weight<T>(dplog.data(), 1, S.pz1.data(), Hp, n, Hp, 1, GW.pred_fc2_w);
    for (int i = 0; i < n; ++i) GW.pred_fc2_b[0] += dplog[i];
#pragma omp parallel for schedule(static) if (n > 256)
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < Hp; ++j) {
        const T a = S.pz1[(size_t)i * Hp + j];
        dz1[(size_t)i * Hp + j] = a > T(0) ? dplog[i] * W.pred_fc2_w[j] : T(0);
      }
    for (int i = 0; i < n; ++i)  // bias: a fixed-order sum, deterministic
      for (int j = 0; j < Hp; ++j) GW.pred_fc1_b[j] += dz1[(size_t)i * Hp + j];
    linear_backward_weight<T>(dz1.data(), Hp, x, D, n, D, Hp, GW.pred_fc1_w);
  }
}

template <typename T>
std::vector<typename Model<T>::RoutingTrace> Model<T>::routing_trace() const {
  std::vector<RoutingTrace> out;
  const bool predictor = cfg_.routing.causal == "predictor";
  for (int l = 0; l < cfg_.n_layers && n_ > 0; ++l) {
    if (!cfg_.routed(l)) continue;
    const RoutedState& S = route_[l];
    RoutingTrace tr;
    tr.layer = l;
    tr.router_logit.resize(n_);
    tr.decision_logit.resize(n_);
    tr.processed.assign(n_, 0);
    for (int i = 0; i < n_; ++i) {
      tr.router_logit[i] = (float)S.r[i];
      tr.decision_logit[i] = (float)(predictor ? S.plog[i] : S.r[i]);
    }
    for (int i : S.sel) tr.processed[i] = 1;
    out.push_back(std::move(tr));
  }
  return out;
}

template class Model<float>;
template class Model<double>;

}  // namespace modlm
