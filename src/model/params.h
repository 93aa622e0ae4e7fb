// The parameter layout: every tensor of SPEC §6 by name and shape, placed in one flat buffer.
// One flat buffer makes the optimiser a single loop and lets adjacent weights fuse: wq|wk|wv
// form one [D + 2 Dkv, D] matrix and w1|w3 one [2F, D] matrix, so each is a single GEMM.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "tensor/tensor.h"

namespace modlm {

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in elements, into the flat buffer
  size_t numel = 0;
  bool decay = false;  // AdamW weight decay applies (matrices; not norms, biases)
  bool backbone = true;  // false for the causal predictor, whose gradient never reaches the backbone
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& cfg);
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& get(const std::string& name) const;
  const ParamInfo* find(const std::string& name) const;
  size_t total() const { return total_; }

 private:
  void add(const std::string& name, std::vector<int64_t> shape, bool decay, bool backbone = true, bool pad = true);
  std::vector<ParamInfo> params_;
  size_t total_ = 0;
};

// Pointers into a flat buffer (weights or their gradients) for one layer.
template <typename T>
struct LayerWeights {
  T* attn_norm = nullptr;
  T* wqkv = nullptr;  // [D + 2 Dkv, D]: wq, wk, wv (Dkv = kv heads x head dim)
  T* wo = nullptr;    // [D, D]
  T* mlp_norm = nullptr;
  T* w13 = nullptr;  // [2F, D]: w1, w3 (null in an MoE layer)
  T* w2 = nullptr;   // [D, F] (null in an MoE layer)
  T* moe_gate = nullptr;        // [E + n_noop, D], MoE layers only
  std::vector<T*> expert_w13;   // E x [2 d_expert, D]: each expert's w1, w3 (one fused product)
  std::vector<T*> expert_w2;    // E x [D, d_expert]
  T* router = nullptr;  // [1, D], routed layers only
  T* pred_fc1_w = nullptr, *pred_fc1_b = nullptr, *pred_fc2_w = nullptr, *pred_fc2_b = nullptr;
};

// The SPEC §6 names of layer l's tensors: one spelling for the layout (ParamLayout), the
// binders (ModelWeights::bind, infer::InferenceWeights::load) and whoever else walks a layer.
// Names a layer does not have are empty: w1/w3/w2 in an MoE layer, the MoE's in a dense one,
// router and predictor outside routed layers (predictor: causal = "predictor" only).
struct LayerTensorNames {
  std::string attn_norm, wq, wk, wv, wo, mlp_norm;
  std::string w1, w3, w2;
  std::string moe_gate;
  struct Expert {
    std::string w1, w3, w2;
  };
  std::vector<Expert> experts;
  std::string router, pred_fc1_w, pred_fc1_b, pred_fc2_w, pred_fc2_b;
  static LayerTensorNames of(const ModelConfig& c, int l);
};

template <typename T>
struct ModelWeights {
  T* tok_embeddings = nullptr;  // [V, D]
  std::vector<LayerWeights<T>> layers;
  T* norm = nullptr;    // [D]
  T* output = nullptr;  // [V, D] (== tok_embeddings when tied)
  static ModelWeights bind(const ParamLayout& layout, const ModelConfig& cfg, T* base);
};

}  // namespace modlm
