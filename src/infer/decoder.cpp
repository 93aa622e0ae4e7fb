#include "infer/decoder.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <string>

#include "infer/attend.h"
#include "infer/matvec.h"
#include "ops/attention.h"
#include "ops/bf16.h"
#include "model/routing.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "util/error.h"
#include "util/parallel.h"

namespace modlm::infer {

using namespace ops;

namespace {
int g_step_prefill_override = -1;  // Decoder::set_step_prefill_rows
std::atomic<bool> g_hold_team{true};  // Decoder::set_hold_team

// The same expression as Model::routed_forward, so the gate is bit for bit the model's.
float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }
}  // namespace

Decoder::Decoder(const Model<float>& model, int max_batch, int max_len, DecodeWeights weights, KvFormat kv)
    : Decoder(InferenceWeights::from_model(model, weights), max_batch, max_len, kv) {}

Decoder::Decoder(std::shared_ptr<const InferenceWeights> weights, int max_batch, int max_len, KvFormat kv)
    : iw_(std::move(weights)), cfg_(iw_->config()), dims_(LayerDims::of(cfg_)), max_batch_(max_batch), max_len_(max_len) {
  if (max_batch < 1) throw bad_input("decoder: batch must be >= 1");
  if (max_len < 1 || max_len > cfg_.max_seq_len)
    throw bad_input("decoder: sequence length " + std::to_string(max_len) + " outside [1, max_seq_len = " +
                    std::to_string(cfg_.max_seq_len) + "]");
  w_ = iw_->small();
  step_prefill_rows_ = step_prefill_rows(iw_->has_float_matrices());
  rope_.build(max_len, cfg_.head_dim(), cfg_.rope_theta);
  routed_index_.assign(cfg_.n_layers, -1);
  for (int l = 0; l < cfg_.n_layers; ++l)
    if (cfg_.routed(l)) routed_index_[l] = (int)routed_.size(), routed_.push_back(l);
  cache_.allocate(cfg_.n_layers, max_batch, max_len, cfg_.kv_heads(), cfg_.head_dim(), kv == KvFormat::BF16);
  length_.assign(max_batch, 0);

  ensure_rows(max_batch);
  sscore_.assign((size_t)omp_get_max_threads() * max_len, 0.f);
  logits_.assign((size_t)max_batch * cfg_.vocab_size, 0.f);
  const size_t B = max_batch;
  ssel_.reserve(B);
  sslot_.reserve(B);
  spos_.reserve(B);
  ssel_pos_.reserve(B);
  routes_.reserve(B * routed_.size());
}

int Decoder::step_prefill_rows(bool float_matrices) {
  if (g_step_prefill_override >= 0) return g_step_prefill_override;
  static const bool narrow_blas = outer_kernel_is_avx512() && !ops::blas_kernels_are_avx512();
  if (!outer_kernel_built()) return float_matrices ? 0 : 288;
  if (narrow_blas) return 2048;
  return float_matrices ? 128 : 288;
}

bool Decoder::set_hold_team(bool hold) {
  return g_hold_team.exchange(hold);
}

int Decoder::set_step_prefill_rows(int rows) {
  const int old = g_step_prefill_override;
  g_step_prefill_override = rows;
  return old;
}

LayerWeights<float> Decoder::prefill_layer(int l) {
  // Allocated on the first long prefill of a stored (non-float) model: short ones never need it.
  if (dequant_.size() < iw_->layer_scratch_floats()) dequant_.resize(iw_->layer_scratch_floats());
  return iw_->float_layer(l, dequant_.data());
}

void Decoder::embed_rows(const int32_t* tokens, int n, float* x) const {
  const Matrix& E = iw_->embeddings();
  const size_t D = cfg_.d_model;
  parallel_for_if(n > 64, n, [&](int i) {
    if (E.f32) std::memcpy(x + (size_t)i * D, E.f32 + (size_t)tokens[i] * D, sizeof(float) * D);
    else E.dequantize_rows(tokens[i], 1, x + (size_t)i * D);
  });
}

// The tensors a folder of that format stores in it (is_decode_matrix, as `modlm quantize` picks
// them), each replaced by the values the format holds.
void round_weights_to(Model<float>& model, MatFormat fmt) {
  if (fmt == MatFormat::F32) return;
  for (const ParamInfo& p : model.layout().params()) {
    if (!is_decode_matrix(p.name)) continue;
    float* x = model.params().data() + p.offset;
    const int rows = (int)p.shape[0], cols = (int)p.shape[1];
    if (fmt == MatFormat::BF16) {
      for (size_t i = 0; i < p.numel; ++i) x[i] = round_to_bf16(x[i]);
    } else if (fmt == MatFormat::F16) {
      for (size_t i = 0; i < p.numel; ++i) x[i] = f16_to_float(float_to_f16(x[i]));
    } else {
      std::vector<int8_t> q(p.numel);
      std::vector<float> sc((size_t)rows * q8_blocks(cols));
      quantize_q8(x, rows, cols, q.data(), sc.data());
      dequantize_q8(q.data(), sc.data(), rows, cols, x);
    }
  }
}

void round_weights_to_bf16(Model<float>& model) { round_weights_to(model, MatFormat::BF16); }

void Decoder::ensure_rows(int n) {
  if (n <= row_capacity_) return;
  const size_t B = n, D = cfg_.d_model, F = cfg_.d_ff;
  const size_t Hp = cfg_.routing.predictor_hidden;
  for (auto* v : {&sx_, &sy_, &sxn_, &satt_, &sa_, &sxg_, &syg_}) v->assign(B * D, 0.f);
  sinv_.assign(B, 0.f);
  sqkv_.assign(B * cfg_.qkv_dim(), 0.f);
  sh13_.assign(B * 2 * F, 0.f);
  sg_.assign(B * F, 0.f);
  sr_.assign(B, 0.f);
  sdec_.assign(B, 0.f);
  sz_.assign(B * Hp, 0.f);
  scount_.assign(B, 0);
  row_capacity_ = n;
}

void Decoder::check_ids(const int32_t* ids, size_t n) const {
  for (size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= cfg_.vocab_size)
      throw bad_input("token id " + std::to_string(ids[i]) + " outside the vocabulary [0, " +
                      std::to_string(cfg_.vocab_size) + ")");
}

void Decoder::release(int slot) {
  cache_.clear_slot(slot);
  length_[slot] = 0;
}

// Norms and attention, plus the dense MLP or the MoE's gate (its experts: moe_bytes / moe_step);
// the matrices as stored (what a step streams), or at 4 bytes per weight (the prefill's GEMMs).
double Decoder::block_bytes(int l, bool stored) const {
  const LayerMatrices& L = iw_->layer(l);
  auto bytes = [&](const Matrix& m) { return stored ? m.bytes() : 4.0 * m.rows * m.cols; };
  const double D = cfg_.d_model;
  double b = bytes(L.wqkv) + bytes(L.wo);
  if (cfg_.has_moe(l)) return b + 4.0 * (2 * D + (double)cfg_.moe.n_gate() * D);
  return b + 4.0 * 2 * D + bytes(L.w13) + bytes(L.w2);
}

// The experts an MoE call of the prefill ran (at least one row each): each read once, in float.
double Decoder::moe_bytes(const MoeActs<float>& A) const {
  int used = 0;
  for (size_t e = 0; e + 1 < A.off.size(); ++e) used += A.off[e + 1] > A.off[e];
  return 4.0 * 3.0 * cfg_.d_model * cfg_.moe.d_expert * used;
}

// ---------------------------------------------------------------------------------------------
// Prefill: packed rows through the model's own layer code.

void Decoder::prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits) {
  for (int s = 0; s < max_batch_; ++s) release(s);
  std::vector<int> slots(prompts.size());
  for (size_t i = 0; i < slots.size(); ++i) slots[i] = (int)i;
  prefill(slots, prompts, all_logits);
}

void Decoder::prefill(const std::vector<int>& slots, const std::vector<std::vector<int32_t>>& prompts, bool all_logits) {
  const int P = (int)prompts.size(), D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
  if (P < 1 || (int)slots.size() != P) throw bad_input("prefill: need one slot per prompt and at least one prompt");
  std::vector<bool> used(max_batch_, false);
  for (int s : slots) {
    if (s < 0 || s >= max_batch_ || used[s]) throw bad_input("prefill: slot " + std::to_string(s) + " invalid or repeated");
    used[s] = true;
  }
  for (const auto& p : prompts) {
    if (p.empty()) throw bad_input("prefill: empty prompt");
    if ((int)p.size() > max_len_)
      throw bad_input("prompt of " + std::to_string(p.size()) + " tokens exceeds the sequence limit " + std::to_string(max_len_));
    check_ids(p.data(), p.size());
  }
  for (int s : slots) release(s);

  // Packed rows: prompt after prompt, positions from 0.
  ptok_.clear();
  row_slot_.clear();
  row_pos_.clear();
  pseqs_.assign(1, 0);
  for (int i = 0; i < P; ++i) {
    for (size_t t = 0; t < prompts[i].size(); ++t) {
      ptok_.push_back(prompts[i][t]);
      row_slot_.push_back(slots[i]);
      row_pos_.push_back((int32_t)t);
    }
    pseqs_.push_back((int)ptok_.size());
  }
  const int n = (int)ptok_.size();
  if (prefill_by_steps(n)) {
    // A prompt batch of at most step_prefill_rows(): the step's kernels on the packed rows
    // (each row causal over its slot's cache), instead of GEMM calls that so few rows do not
    // amortise, nor the widening of every layer a 16/8-bit store needs for them (M q8, 4 tokens:
    // 235 -> ~15 ms; docs/quantize.md, docs/performance.md).
    ensure_rows(n);
    const size_t logit_floats = (size_t)(all_logits ? n : P) * V;  // the rows forward_rows gives logits
    if (logit_floats > logits_.size()) logits_.resize(logit_floats);
    head_rows_.clear();
    if (!all_logits)
      for (int i = 0; i < P; ++i) head_rows_.push_back(pseqs_[i + 1] - 1);  // each prompt's last row
    forward_rows(ptok_.data(), n, head_rows_);
    for (int i = 0; i < P; ++i) length_[slots[i]] = (int)prompts[i].size();
    return;
  }
  token_rows_ = n;
  routes_.assign((size_t)n * routed_.size(), RouteRecord{});
  weight_bytes_ = 0;

  px_.resize({n, D});
  py_.resize({n, D});
  float* x = px_.data();
  float* y = py_.data();
  embed_rows(ptok_.data(), n, x);
  weight_bytes_ += 4.0 * n * D;

  for (int l = 0; l < L; ++l) {
    if (cfg_.routed(l)) {
      routed_prefill(l, x, y, n);
    } else {
      // Generation has no MoE capacity (SPEC §3): every token goes to its top_k experts.
      layer_forward<float>(prefill_layer(l), dims_, rope_, x, n, row_pos_.data(), pseqs_, acts_, y, /*moe_capacity=*/false);
      const int Q = cfg_.qkv_dim(), Dkv = cfg_.kv_dim();
      for (int i = 0; i < n; ++i) {
        const float* q = acts_.qkv.data() + (size_t)i * Q;
        cache_.append(l, row_slot_[i], row_pos_[i], q + D, q + D + Dkv);
      }
      weight_bytes_ += block_bytes(l, false);
      if (cfg_.has_moe(l)) weight_bytes_ += moe_bytes(acts_.moe);
    }
    std::swap(x, y);
  }

  // Final norm and LM head on the rows whose logits are wanted.
  const int rows = all_logits ? n : P;
  pxf_.resize({rows, D});
  pinv_.resize({rows});
  if (all_logits) {
    rmsnorm_forward<float>(x, D, w_.norm, n, D, float(cfg_.norm_eps), pxf_.data(), D, pinv_.data());
  } else {
    for (int i = 0; i < P; ++i)
      rmsnorm_forward<float>(x + (size_t)(pseqs_[i + 1] - 1) * D, D, w_.norm, 1, D, float(cfg_.norm_eps),
                             pxf_.data() + (size_t)i * D, D, pinv_.data() + i);
  }
  if ((size_t)rows * V > logits_.size()) logits_.resize((size_t)rows * V);
  if (rows <= 32 || !iw_->head().f32) {
    matvec(iw_->head(), pxf_.data(), D, rows, logits_.data(), V);
    weight_bytes_ += iw_->head().bytes() + 4.0 * D;
  } else {
    linear_forward<float>(pxf_.data(), D, w_.output, rows, D, V, logits_.data(), V);
    weight_bytes_ += 4.0 * ((double)V * D + D);
  }
  logit_rows_ = rows;
  for (int i = 0; i < P; ++i) length_[slots[i]] = (int)prompts[i].size();
}

void Decoder::routed_prefill(int l, const float* x, float* y, int n) {
  const LayerWeights<float>& W = w_.layers[l];
  const RoutingConfig& rc = cfg_.routing;
  const int D = cfg_.d_model, j = routed_index_[l], R = (int)routed_.size();
  const bool predictor = rc.causal == "predictor";
  // Router logits and the causal decision, as Model::routed_forward computes them.
  pr_.resize({n});
  linear_forward<float>(x, D, W.router, n, D, 1, pr_.data(), 1);
  weight_bytes_ += 4.0 * D;
  const float* decision = pr_.data();
  if (predictor) {
    const int Hp = rc.predictor_hidden;
    pz_.resize({n, Hp});
    pdec_.resize({n});
    linear_forward<float>(x, D, W.pred_fc1_w, n, D, Hp, pz_.data(), Hp);
#pragma omp parallel for schedule(static) if (n > 64)
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < Hp; ++k) {
        float& z = pz_[(size_t)i * Hp + k];
        z = std::max(z + W.pred_fc1_b[k], 0.0f);
      }
    linear_forward<float>(pz_.data(), Hp, W.pred_fc2_w, n, Hp, 1, pdec_.data(), 1);
    for (int i = 0; i < n; ++i) pdec_[i] += W.pred_fc2_b[0];
    decision = pdec_.data();
    weight_bytes_ += 4.0 * ((double)Hp * D + 2 * Hp + 1);
  }
  psel_.clear();
  psel_pos_.clear();
  psel_off_.assign(1, 0);
  const int P = (int)pseqs_.size() - 1;
  for (int b = 0; b < P; ++b) {
    const int base = pseqs_[b];
    for (int t : select_causal<float>(decision + base, pseqs_[b + 1] - base)) {
      psel_.push_back(base + t);
      psel_pos_.push_back(row_pos_[base + t]);
    }
    psel_off_.push_back((int)psel_.size());
  }
  const int m = (int)psel_.size();
  auto gate_of = [&](float r) { return rc.method == "stochastic" ? 1.0f : rc.gate == "sigmoid" ? sigmoid(r) : r; };
  for (int i = 0; i < n; ++i) {
    RouteRecord& rec = routes_[(size_t)i * R + j];
    rec.router_logit = pr_[i];
    rec.gate = gate_of(pr_[i]);
    rec.decision_logit = decision[i];
  }
  std::memcpy(y, x, sizeof(float) * (size_t)n * D);
  if (m == 0) return;
  pxg_.resize({m, D});
  pyg_.resize({m, D});
  for (int i = 0; i < m; ++i) std::memcpy(pxg_.data() + (size_t)i * D, x + (size_t)psel_[i] * D, sizeof(float) * D);
  // Few selected rows (at most step_prefill_rows()): the step's kernels (as a short prompt batch
  // takes, prefill()), which append the rows' keys and values themselves, instead of GEMMs (and,
  // for a 16/8-bit store, widening the whole layer) on the capacity's share of the rows. (A
  // routed layer of a 256-token chunk at c = 0.125 processes ~32 rows.)
  const bool step_kernels = prefill_by_steps(m);
  if (step_kernels) {
    ensure_rows(m);
    pslot_.resize(m);
    for (int i = 0; i < m; ++i) pslot_[i] = row_slot_[psel_[i]];
    block_step(l, m, pxg_.data(), pslot_.data(), psel_pos_.data(), pyg_.data());
    weight_bytes_ += block_bytes(l, true);
  } else {
    layer_forward<float>(prefill_layer(l), dims_, rope_, pxg_.data(), m, psel_pos_.data(), psel_off_, acts_, pyg_.data(),
                         /*moe_capacity=*/false);
    weight_bytes_ += block_bytes(l, false);
    if (cfg_.has_moe(l)) weight_bytes_ += moe_bytes(acts_.moe);
  }
  for (int i = 0; i < m; ++i) {
    const int row = psel_[i];
    RouteRecord& rec = routes_[(size_t)row * R + j];
    rec.processed = true;
    const float g = rec.gate;
    float* yr = y + (size_t)row * D;
    const float* xr = pxg_.data() + (size_t)i * D;
    const float* br = pyg_.data() + (size_t)i * D;
    for (int k = 0; k < D; ++k) yr[k] = g * br[k] + (1.0f - g) * xr[k];
    if (step_kernels) continue;  // block_step cached the row
    const float* q = acts_.qkv.data() + (size_t)i * cfg_.qkv_dim();
    cache_.append(l, row_slot_[row], row_pos_[row], q + D, q + D + cfg_.kv_dim());
  }
}

// ---------------------------------------------------------------------------------------------
// Decode step: one token per sequence, matrix-vector products, attention over the cache.

void Decoder::step(const std::vector<int>& slots, const std::vector<int32_t>& tokens) {
  const int B = (int)slots.size();
  if (B < 1 || B > max_batch_ || (int)tokens.size() != B) throw bad_input("step: need 1..max_batch slots, one token each");
  check_ids(tokens.data(), tokens.size());
  row_slot_.assign(slots.begin(), slots.end());
  row_pos_.resize(B);
  for (int i = 0; i < B; ++i) {
    const int s = slots[i];
    if (s < 0 || s >= max_batch_ || length_[s] == 0) throw bad_input("step: slot " + std::to_string(s) + " holds no sequence");
    for (int k = 0; k < i; ++k)
      if (slots[k] == s) throw bad_input("step: slot " + std::to_string(s) + " given twice");
    if (length_[s] >= max_len_)
      throw bad_input("sequence in slot " + std::to_string(s) + " reached the length limit of " + std::to_string(max_len_) +
                      " tokens");
    row_pos_[i] = length_[s];
  }
  // One team for the step's ~5 parallel pieces per layer (util/parallel.h). Not where products
  // go to BLAS (gemm_rows): OpenBLAS runs on OpenMP's threads, beside which the held team's
  // workers would spin.
  if (g_hold_team.load(std::memory_order_relaxed) && !gemm_rows(B))
    hold_team([&] { forward_rows(tokens.data(), B); });
  else
    forward_rows(tokens.data(), B);
  for (int i = 0; i < B; ++i) ++length_[slots[i]];
}

void Decoder::extend(int slot, const std::vector<int32_t>& tokens) {
  const int n = (int)tokens.size();
  if (slot < 0 || slot >= max_batch_ || length_[slot] == 0) throw bad_input("extend: slot " + std::to_string(slot) + " holds no sequence");
  if (n < 1) throw bad_input("extend: no tokens");
  if (length_[slot] + n > max_len_)
    throw bad_input("extend: " + std::to_string(length_[slot]) + " + " + std::to_string(n) + " tokens exceed the sequence limit of " +
                    std::to_string(max_len_));
  check_ids(tokens.data(), tokens.size());
  ensure_rows(n);
  row_slot_.assign(n, slot);
  row_pos_.resize(n);
  for (int i = 0; i < n; ++i) row_pos_[i] = length_[slot] + i;
  head_rows_.assign(1, n - 1);
  forward_rows(tokens.data(), n, head_rows_);
  length_[slot] += n;
}

void Decoder::forward_rows(const int32_t* tokens, int B, const std::vector<int>& head_rows) {
  const int D = cfg_.d_model, V = cfg_.vocab_size, L = cfg_.n_layers;
  token_rows_ = B;
  routes_.assign((size_t)B * routed_.size(), RouteRecord{});
  weight_bytes_ = 4.0 * B * D;

  float* x = sx_.data();
  float* y = sy_.data();
  embed_rows(tokens, B, x);
  for (int l = 0; l < L; ++l) {
    if (cfg_.routed(l)) {
      routed_step(l, B, x, y);
    } else {
      block_step(l, B, x, row_slot_.data(), row_pos_.data(), y);
      weight_bytes_ += block_bytes(l, !gemm_rows(B));
    }
    std::swap(x, y);
  }
  const int rows = head_rows.empty() ? B : (int)head_rows.size();
  if (head_rows.empty()) {
    rmsnorm_forward<float>(x, D, w_.norm, B, D, float(cfg_.norm_eps), sxn_.data(), D, sinv_.data());
  } else {
    for (int i = 0; i < rows; ++i)
      rmsnorm_forward<float>(x + (size_t)head_rows[i] * D, D, w_.norm, 1, D, float(cfg_.norm_eps), sxn_.data() + (size_t)i * D, D,
                             sinv_.data() + i);
  }
  matvec(iw_->head(), sxn_.data(), D, rows, logits_.data(), V);
  weight_bytes_ += iw_->head().bytes() + 4.0 * D;
  logit_rows_ = rows;
}

void Decoder::routed_step(int l, int B, const float* x, float* y) {
  const LayerWeights<float>& W = w_.layers[l];
  const RoutingConfig& rc = cfg_.routing;
  const int D = cfg_.d_model, j = routed_index_[l], R = (int)routed_.size();
  matvec(W.router, 1, D, x, D, B, sr_.data(), 1);
  weight_bytes_ += 4.0 * D;
  const float* decision = sr_.data();
  if (rc.causal == "predictor") {
    const int Hp = rc.predictor_hidden;
    matvec(W.pred_fc1_w, Hp, D, x, D, B, sz_.data(), Hp);
    for (int i = 0; i < B; ++i)
      for (int k = 0; k < Hp; ++k) {
        float& z = sz_[(size_t)i * Hp + k];
        z = std::max(z + W.pred_fc1_b[k], 0.0f);
      }
    matvec(W.pred_fc2_w, 1, Hp, sz_.data(), Hp, B, sdec_.data(), 1);
    for (int i = 0; i < B; ++i) sdec_[i] += W.pred_fc2_b[0];
    decision = sdec_.data();
    weight_bytes_ += 4.0 * ((double)Hp * D + 2 * Hp + 1);
  }
  std::memcpy(y, x, sizeof(float) * (size_t)B * D);
  ssel_.clear();
  sslot_.clear();
  ssel_pos_.clear();
  for (int i = 0; i < B; ++i) {
    RouteRecord& rec = routes_[(size_t)i * R + j];
    const float r = sr_[i];
    rec.router_logit = r;
    rec.gate = rc.method == "stochastic" ? 1.0f : rc.gate == "sigmoid" ? sigmoid(r) : r;
    rec.decision_logit = decision[i];
    if (decision[i] > 0.0f) {  // p > 0.5
      rec.processed = true;
      std::memcpy(sxg_.data() + ssel_.size() * D, x + (size_t)i * D, sizeof(float) * D);
      ssel_.push_back(i);
      sslot_.push_back(row_slot_[i]);
      ssel_pos_.push_back(row_pos_[i]);
    }
  }
  const int m = (int)ssel_.size();
  if (m == 0) return;  // nobody processes this block: its weights are not read at all
  block_step(l, m, sxg_.data(), sslot_.data(), ssel_pos_.data(), syg_.data());
  weight_bytes_ += block_bytes(l, !gemm_rows(m));
  for (int i = 0; i < m; ++i) {
    const float g = routes_[(size_t)ssel_[i] * R + j].gate;
    float* yr = y + (size_t)ssel_[i] * D;
    const float* xr = sxg_.data() + (size_t)i * D;
    const float* br = syg_.data() + (size_t)i * D;
    for (int k = 0; k < D; ++k) yr[k] = g * br[k] + (1.0f - g) * xr[k];
  }
}

// att [m, D] = each row's attention over its slot's cache of layer l (which holds the row).
void Decoder::attend_rows(int l, int m, const int* slots, const float* qkv, float* att) {
  const int D = cfg_.d_model, H = cfg_.n_heads, Dh = cfg_.head_dim(), Q = cfg_.qkv_dim(), G = H / cfg_.kv_heads();
  int64_t pairs = 0;
  for (int i = 0; i < m; ++i) pairs += scount_[i];
  const float scale = float(1.0 / std::sqrt((double)Dh));
  FlopCounter::add(pairs * 4 * Dh * H);
  const int cap = max_len_;
  const bool parallel = pairs * H * Dh >= 8192;  // else not worth waking the team
  const int T = parallel ? team_threads() : 1;
  if ((size_t)T * cap > sscore_.size()) sscore_.resize((size_t)T * cap);
  // (row, head) pairs dealt round-robin: the rows of a prompt through the step kernels attend
  // over 1, 2, ..., m positions, and contiguous halves gave the second thread three times the
  // first's work.
  team_run(parallel, [&](int t, int nt) {
    float* s = sscore_.data() + (size_t)t * cap;
    for (int p = t; p < m * H; p += nt) {
      const int i = p / H, h = p % H;
      const int n = scount_[i];
      const float* q = qkv + (size_t)i * Q + h * Dh;
      float* o = att + (size_t)i * D + h * Dh;
      const int g = h / G;  // the key/value head this query head reads (GQA)
      if (cache_.bf16())
        attend_one(q, cache_.keys_bf16(l, slots[i], g), cache_.values_bf16(l, slots[i], g), n, Dh, scale, s, o);
      else
        attend_one(q, cache_.keys(l, slots[i], g), cache_.values(l, slots[i], g), n, Dh, scale, s, o);
    }
  });
}

// Rows per query tile of attend_run, and the shortest run of one slot's rows block_step gives
// it (shorter runs, decode steps above all, attend row by row: a tile of a few queries saves
// little of the cache reads and pays the GEMM calls).
constexpr int kRunTile = 64;
constexpr int kTiledRunRows = 8;

void Decoder::attend_run(int l, int slot, int r0, int n, const float* qkv, float* att) {
  const int D = cfg_.d_model, H = cfg_.n_heads, Dh = cfg_.head_dim(), Q = cfg_.qkv_dim(), G = H / cfg_.kv_heads();
  // The run's rows sit at cache indices c0 .. c0 + n - 1 (appended in order by block_step, which
  // noted each row's count right after its append); keys up to a row's own index are visible.
  const int c0 = scount_[r0] - 1, total = c0 + n;
  const float scale = float(1.0 / std::sqrt((double)Dh));
  FlopCounter::add(((int64_t)n * c0 + (int64_t)n * (n + 1) / 2) * 4 * Dh * H);
  const int tiles = (n + kRunTile - 1) / kRunTile;
  const bool bf16 = cache_.bf16();
#pragma omp parallel
  {
    // Scores of one tile, and (bf16 cache) the keys and values it reads, widened to float.
    AlignedVector<float> S((size_t)kRunTile * total), KV(bf16 ? (size_t)2 * total * Dh : 0);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int h = 0; h < H; ++h)
      for (int t = 0; t < tiles; ++t) {
        const int i0 = t * kRunTile, rows = std::min(kRunTile, n - i0), keys = c0 + i0 + rows;
        const int g = h / G;
        const float *K, *V;
        if (bf16) {
          const uint16_t* kb = cache_.keys_bf16(l, slot, g);
          const uint16_t* vb = cache_.values_bf16(l, slot, g);
          float* kf = KV.data();
          float* vf = kf + (size_t)total * Dh;
          for (size_t e = 0; e < (size_t)keys * Dh; ++e) kf[e] = bf16_to_float(kb[e]), vf[e] = bf16_to_float(vb[e]);
          K = kf, V = vf;
        } else {
          K = cache_.keys(l, slot, g), V = cache_.values(l, slot, g);
        }
        // The row's own key and those before it are visible.
        causal_attention_tile<float>(qkv + (size_t)(r0 + i0) * Q + h * Dh, Q, K, V, Dh, rows, c0 + i0, Dh, scale, S.data(),
                                     att + (size_t)(r0 + i0) * D + h * Dh, D);
      }
  }
}

// The dense layer of SPEC §1 for m single-token rows (x [m, D] -> y [m, D]); each row's key and
// value are appended to layer l's cache of its slot before attending over that cache.
void Decoder::block_step(int l, int m, const float* x, const int* slots, const int32_t* pos, float* y) {
  const LayerWeights<float>& W = w_.layers[l];
  const LayerMatrices& M = iw_->layer(l);
  const int D = cfg_.d_model, F = cfg_.d_ff, H = cfg_.n_heads, Dh = cfg_.head_dim();
  const int Q = cfg_.qkv_dim(), Dkv = cfg_.kv_dim();
  const float eps = float(cfg_.norm_eps);
  float* xn = sxn_.data();
  float* qkv = sqkv_.data();
  float* att = satt_.data();
  float* a = sa_.data();
  // Attention half.
  rmsnorm_forward<float>(x, D, W.attn_norm, m, D, eps, xn, D, sinv_.data());
  product(M.wqkv, xn, D, m, qkv, Q);
  rope_forward<float>(qkv, Q, m, H, Dh, pos, rope_);
  rope_forward<float>(qkv + D, Q, m, cfg_.kv_heads(), Dh, pos, rope_);
  // Each row attends over its slot's cache up to and including itself: rows of one slot (an
  // extend chunk) come in position order, so a row sees the chunk's earlier rows, not later ones.
  // Runs of one slot's rows (soff_), and whether each slot's cache holds its run alone (a
  // prefill: fresh prompts, or the rows a routed layer processes of them).
  soff_.assign(1, 0);
  bool runs_alone = true;
  for (int i = 0; i < m; ++i) {
    cache_.append(l, slots[i], pos[i], qkv + (size_t)i * Q + D, qkv + (size_t)i * Q + D + Dkv);
    scount_[i] = cache_.count(l, slots[i]);
    if (i > 0 && slots[i] != slots[i - 1]) soff_.push_back(i);
    runs_alone = runs_alone && scount_[i] == i - soff_.back() + 1;
  }
  soff_.push_back(m);
  int shortest_run = m;
  for (size_t r = 0; r + 1 < soff_.size(); ++r) shortest_run = std::min(shortest_run, soff_[r + 1] - soff_[r]);
  if (runs_alone) {
    // Every row's keys are its run's earlier rows, so the forward pass's causal attention over
    // the packed rows (tiles of GEMMs) computes what a row-by-row pass over the cache would,
    // reading each key block once per tile of queries instead of once per query (prompts of
    // 512-1024 rows: docs/performance.md).
    if (slse_.size() < (size_t)m * H) slse_.resize((size_t)m * H);
    attention_forward<float>(qkv, Q, soff_, AttnShape{H, Dh, cfg_.kv_heads()}, att, D, slse_.data());
  } else if (shortest_run >= kTiledRunRows) {
    // Runs that continue a cached sequence (an extend chunk; the rows a routed layer processes
    // of one): tiles of GEMMs over the cache, each key block read once per tile of queries.
    for (size_t r = 0; r + 1 < soff_.size(); ++r) attend_run(l, slots[soff_[r]], soff_[r], soff_[r + 1] - soff_[r], qkv, att);
  } else {
    attend_rows(l, m, slots, qkv, att);
  }
  std::memcpy(a, x, sizeof(float) * (size_t)m * D);
  product(M.wo, att, D, m, a, D, /*accumulate=*/true);
  // MLP half.
  rmsnorm_forward<float>(a, D, W.mlp_norm, m, D, eps, xn, D, sinv_.data());
  if (W.moe_gate) {
    std::memcpy(y, a, sizeof(float) * (size_t)m * D);
    moe_step(l, W, xn, m, y);
    return;
  }
  product(M.w13, xn, D, m, sh13_.data(), 2 * F);
  swiglu_forward<float>(sh13_.data(), m, F, sg_.data());
  std::memcpy(y, a, sizeof(float) * (size_t)m * D);
  product(M.w2, sg_.data(), F, m, y, D, /*accumulate=*/true);
}

// Past step_prefill_rows() rows the matrix-vector kernels lose to GEMMs where OpenBLAS runs
// kernels as wide as ours (f32 M, unpinned: 256-row chunks 0.61-0.67x, docs/performance.md), and
// an extend chunk (serve's later chunks of a long prompt) had no other path.
void Decoder::product(const Matrix& W, const float* X, int ldx, int m, float* Y, int ldy, bool accumulate) {
  if (gemm_rows(m) && W.f32)
    linear_forward<float>(X, ldx, W.f32, m, W.cols, W.rows, Y, ldy, accumulate);
  else
    matvec(W, X, ldx, m, Y, ldy, accumulate);
}

void Decoder::moe_step(int l, const LayerWeights<float>& W, const float* xn, int m, float* y) {
  const LayerMatrices& M = iw_->layer(l);
  const MoeDims& d = dims_.moe;
  const int D = d.D, E = d.E, G = d.n_gate(), K = d.top_k, De = d.d_expert;
  // Gate probabilities and the top_k choices of each row, with moe_forward's own expressions.
  sgate_.resize((size_t)m * G);
  matvec(W.moe_gate, G, D, xn, D, m, sgate_.data(), G);
  schoice_.resize((size_t)m * K);
  for (int i = 0; i < m; ++i) {
    float* z = sgate_.data() + (size_t)i * G;
    float mx = z[0];
    for (int j = 1; j < G; ++j) mx = std::max(mx, z[j]);
    float sum = 0;
    for (int j = 0; j < G; ++j) sum += (z[j] = std::exp(z[j] - mx));
    const float inv = 1.0f / sum;
    for (int j = 0; j < G; ++j) z[j] *= inv;
    moe_select<float>(z, G, K, schoice_.data() + (size_t)i * K);
  }
  // Each real expert with at least one choice: its rows gathered, then w13, SwiGLU and w2 as
  // matrix-vector products that read the expert's weights once for all of its rows.
  sexp_out_.resize((size_t)m * K * D);
  sexp_x_.resize((size_t)m * D);
  sexp_h13_.resize((size_t)m * 2 * De);
  sexp_g_.resize((size_t)m * De);
  sexp_y_.resize((size_t)m * D);
  int used = 0;
  for (int e = 0; e < E; ++e) {
    sexp_slots_.clear();
    for (int i = 0; i < m * K; ++i)
      if (schoice_[i] == e) sexp_slots_.push_back(i);
    const int n = (int)sexp_slots_.size();
    if (n == 0) continue;
    ++used;
    for (int r = 0; r < n; ++r) std::memcpy(sexp_x_.data() + (size_t)r * D, xn + (size_t)(sexp_slots_[r] / K) * D, sizeof(float) * D);
    matvec(M.expert_w13[e], sexp_x_.data(), D, n, sexp_h13_.data(), 2 * De);
    swiglu_forward<float>(sexp_h13_.data(), n, De, sexp_g_.data());
    matvec(M.expert_w2[e], sexp_g_.data(), De, n, sexp_y_.data(), D);
    weight_bytes_ += M.expert_w13[e].bytes() + M.expert_w2[e].bytes();
    for (int r = 0; r < n; ++r) std::memcpy(sexp_out_.data() + (size_t)sexp_slots_[r] * D, sexp_y_.data() + (size_t)r * D, sizeof(float) * D);
  }
  // y += p * Expert(x), each row's choices in rank order (as moe_forward adds them); a no-op
  // choice adds 0.
  for (int i = 0; i < m; ++i) {
    float* yr = y + (size_t)i * D;
    for (int r = 0; r < K; ++r) {
      const int e = schoice_[(size_t)i * K + r];
      if (e >= E) continue;
      const float pe = sgate_[(size_t)i * G + e];
      const float* o = sexp_out_.data() + ((size_t)i * K + r) * D;
      for (int j = 0; j < D; ++j) yr[j] += pe * o[j];
    }
  }
  (void)used;
}

}  // namespace modlm::infer
