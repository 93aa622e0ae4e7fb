// The whole model (SPEC §1-§2): embedding, dense and routed (MoD) layers, final norm, LM head,
// forward and backward over a batch of B sequences of T tokens.
#pragma once
#include <cstdint>
#include <string>
#include <functional>
#include <vector>

#include "model/config.h"
#include "model/layer.h"
#include "model/params.h"
#include "ops/rope.h"
#include "tensor/tensor.h"

namespace modlm {

enum class RouteMode {
  TopK,    // training-time routing: top-k per sequence (non-causal)
  Causal,  // as generation decides: decision probability > 0.5, no capacity
};

struct ForwardOptions {
  RouteMode mode = RouteMode::TopK;
  bool train = false;        // keep what backward needs and write dL/dlogits in place
  uint64_t noise_seed = 0;   // random scores of the "stochastic" method
  int64_t noise_offset = 0;  // draws of that stream to skip: the rows before this batch (data parallel)
  bool moe_capacity = true;  // apply the MoE capacity (SPEC §3); never in Causal mode (as generation)
};

// Per routed layer, for one forward pass.
struct RoutedLayerStats {
  int layer = 0;
  int64_t tokens = 0;          // rows that reached the router
  int64_t processed = 0;       // rows the block processed
  double gate_sum = 0;         // sum of gate values over processed rows
  int64_t decision_correct = 0;  // causal decision (predictor or router) == top-k target
  double decision_loss = 0;    // mean BCE of the decision logit against the top-k targets
};

struct ForwardResult {
  double loss = 0;     // total: LM + auxiliary losses (what backward differentiates)
  double lm_loss = 0;  // mean next-token cross-entropy (nats); 0 without targets
  double aux_loss = 0;        // all auxiliary terms (router aux BCE, balance, predictor BCE)
  double predictor_loss = 0;  // the predictor's part of aux_loss: it trains only the predictor
  int64_t tokens = 0;
  std::vector<RoutedLayerStats> routed;
  std::vector<MoeLayerStats> moe;  // per MoE layer, in layer order (balance losses are in aux_loss)
};

template <typename T>
class Model {
 public:
  explicit Model(const ModelConfig& cfg);

  const ModelConfig& config() const { return cfg_; }
  const ParamLayout& layout() const { return layout_; }
  AlignedVector<T>& params() { return params_; }
  const AlignedVector<T>& params() const { return params_; }
  AlignedVector<T>& grads() { return grads_; }
  T* param(const std::string& name) { return params_.data() + layout_.get(name).offset; }
  T* grad(const std::string& name) { return grads_.data() + layout_.get(name).offset; }

  // Normal(0, 0.02) matrices with residual outputs (wo, w2) scaled by 1/sqrt(2 L), norms 1,
  // biases 0; each tensor seeded from (seed, its name), independent of the layout order.
  void init_weights(uint64_t seed);
  void zero_grad();

  // tokens: [B*T]. targets: [B*T] or null (then only logits are produced).
  ForwardResult forward(const int32_t* tokens, const int32_t* targets, int B, int T_len, const ForwardOptions& opt);
  // After forward(..., train=true) with targets: ADDS dLoss/dparams into grads().
  void backward();
  // Called by backward() as soon as a part's gradients are final for this backward pass: the LM
  // head and final norm (part = n_layers), then layer l (part = l, from the last down to 0); the
  // embedding gradients are final when backward() returns. Data-parallel training starts each
  // part's all-reduce there, overlapped with the rest of the backward pass. Empty: nothing.
  std::function<void(int part)> on_grads_ready;
  // [B*T, V] logits of the last forward without targets.
  const T* logits() const { return logits_.data(); }
  // The residual stream entering layer l (l = n_layers: leaving the last layer) in the last
  // forward, [B*T, D] (modlm convert fits routers on it).
  const T* residual(int l) const { return h_[l].data(); }

  // Routing of the last forward, for inspection (modlm demo's routing picture): per routed layer
  // in layer order, one entry per row (sequence after sequence).
  struct RoutingTrace {
    int layer = 0;
    std::vector<float> router_logit;    // r_t
    std::vector<float> decision_logit;  // the causal decision's logit (predictor, or r_t)
    std::vector<uint8_t> processed;     // 1 if the block processed the row in that pass
  };
  std::vector<RoutingTrace> routing_trace() const;

 private:
  struct RoutedState {
    TensorT<T> r;           // router logits [n]
    TensorT<T> pz1, plog;   // predictor hidden pre-activation [n, Hp], decision logits [n]
    std::vector<uint8_t> target;  // 1[t in P] (top-k set) [n]
    std::vector<int> sel;   // selected rows (global row index), sequence after sequence, by position
    std::vector<int32_t> sel_pos;
    std::vector<int> sel_offsets;  // [B+1]
    TensorT<T> gate;        // [m]
    TensorT<T> xg, yg;      // gathered input and block output [m, D]
    TensorT<T> dr;          // scratch for backward [n]
  };
  void routed_forward(int l, const T* x, T* y, const ForwardOptions& opt, ForwardResult& res);
  void routed_backward(int l, const T* x, const T* dy, T* dx);

  ModelConfig cfg_;
  ParamLayout layout_;
  LayerDims dims_;
  AlignedVector<T> params_, grads_;
  ModelWeights<T> w_, gw_;
  ops::RopeTable<T> rope_;

  // State of the last forward pass.
  int B_ = 0, T_ = 0, n_ = 0;
  bool has_backward_state_ = false;
  std::vector<int32_t> tokens_, targets_, pos_;
  std::vector<int> seqs_;
  std::vector<TensorT<T>> h_;  // residual streams h_0..h_L [n, D]
  std::vector<LayerActs<T>> acts_;
  std::vector<RoutedState> route_;
  TensorT<T> xnf_, invf_, logits_;
  LayerGradScratch<T> scratch_;
  TensorT<T> dh_a_, dh_b_, dxg_, dyg_;
};

}  // namespace modlm
