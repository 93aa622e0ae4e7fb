#include "model/params.h"

#include <stdexcept>

namespace modlm {

ParamLayout::ParamLayout(const ModelConfig& c) {
  const int64_t V = c.vocab_size, D = c.d_model, F = c.d_ff, Dkv = c.kv_dim();
  add("tok_embeddings.weight", {V, D}, true);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {D}, false);
    // wq, wk, wv adjacent: one fused [D + 2 Dkv, D] product (Dkv = D without GQA)
    add(p + "attn.wq.weight", {D, D}, true, true, /*pad=*/false);
    add(p + "attn.wk.weight", {Dkv, D}, true, true, /*pad=*/false);
    add(p + "attn.wv.weight", {Dkv, D}, true);
    add(p + "attn.wo.weight", {D, D}, true);
    add(p + "mlp_norm.weight", {D}, false);
    if (c.has_moe(l)) {
      // The experts replace the MLP; each expert's w1, w3 adjacent: one fused [2 d_expert, D] product.
      const int64_t G = c.moe.n_gate(), De = c.moe.d_expert;
      add(p + "moe.gate.weight", {G, D}, false);
      for (int e = 0; e < c.moe.n_experts; ++e) {
        const std::string q = p + "moe.experts." + std::to_string(e) + ".";
        add(q + "w1.weight", {De, D}, true, true, /*pad=*/false);
        add(q + "w3.weight", {De, D}, true);
        add(q + "w2.weight", {D, De}, true);
      }
    } else {
      add(p + "mlp.w1.weight", {F, D}, true, true, /*pad=*/false);  // w1, w3 adjacent: one fused [2F, D] product
      add(p + "mlp.w3.weight", {F, D}, true);
      add(p + "mlp.w2.weight", {D, F}, true);
    }
    if (c.routed(l)) {
      add(p + "router.weight", {1, D}, false);
      if (c.routing.causal == "predictor") {
        const int64_t Hp = c.routing.predictor_hidden;
        add(p + "predictor.fc1.weight", {Hp, D}, true, false);
        add(p + "predictor.fc1.bias", {Hp}, false, false);
        add(p + "predictor.fc2.weight", {1, Hp}, true, false);
        add(p + "predictor.fc2.bias", {1}, false, false);
      }
    }
  }
  add("norm.weight", {D}, false);
  if (!c.tie_embeddings) add("output.weight", {V, D}, true);
}

void ParamLayout::add(const std::string& name, std::vector<int64_t> shape, bool decay, bool backbone, bool pad) {
  ParamInfo p;
  p.name = name;
  p.numel = (size_t)shape_numel(shape);
  p.shape = std::move(shape);
  p.offset = total_;
  p.decay = decay;
  p.backbone = backbone;
  // Keep tensors 64-byte aligned (16 floats) for the vector units, except inside a fused group
  // (wq|wk|wv, w1|w3), which must stay contiguous.
  total_ += pad ? (p.numel + 15) / 16 * 16 : p.numel;
  params_.push_back(std::move(p));
}

const ParamInfo* ParamLayout::find(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

const ParamInfo& ParamLayout::get(const std::string& name) const {
  const ParamInfo* p = find(name);
  if (!p) throw std::logic_error("no parameter " + name);
  return *p;
}

template <typename T>
ModelWeights<T> ModelWeights<T>::bind(const ParamLayout& L, const ModelConfig& c, T* base) {
  ModelWeights<T> w;
  auto at = [&](const std::string& n) { return base + L.get(n).offset; };
  w.tok_embeddings = at("tok_embeddings.weight");
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights<T> lw;
    lw.attn_norm = at(p + "attn_norm.weight");
    lw.wqkv = at(p + "attn.wq.weight");
    lw.wo = at(p + "attn.wo.weight");
    lw.mlp_norm = at(p + "mlp_norm.weight");
    if (c.has_moe(l)) {
      lw.moe_gate = at(p + "moe.gate.weight");
      for (int e = 0; e < c.moe.n_experts; ++e) {
        const std::string q = p + "moe.experts." + std::to_string(e) + ".";
        lw.expert_w13.push_back(at(q + "w1.weight"));
        lw.expert_w2.push_back(at(q + "w2.weight"));
      }
    } else {
      lw.w13 = at(p + "mlp.w1.weight");
      lw.w2 = at(p + "mlp.w2.weight");
    }
    if (c.routed(l)) {
      lw.router = at(p + "router.weight");
      if (c.routing.causal == "predictor") {
        lw.pred_fc1_w = at(p + "predictor.fc1.weight");
        lw.pred_fc1_b = at(p + "predictor.fc1.bias");
        lw.pred_fc2_w = at(p + "predictor.fc2.weight");
        lw.pred_fc2_b = at(p + "predictor.fc2.bias");
      }
    }
    w.layers.push_back(lw);
  }
  w.norm = at("norm.weight");
  w.output = c.tie_embeddings ? w.tok_embeddings : at("output.weight");
  return w;
}

template struct ModelWeights<float>;
template struct ModelWeights<double>;

}  // namespace modlm
