#include "model/params.h"

#include <stdexcept>

namespace modlm {

ParamLayout::ParamLayout(const ModelConfig& c) {
  const int64_t V = c.vocab_size, D = c.d_model, F = c.d_ff, Dkv = c.kv_dim();
  add("tok_embeddings.weight", {V, D}, true);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerTensorNames n = LayerTensorNames::of(c, l);
    add(n.attn_norm, {D}, false);
    // wq, wk, wv adjacent: one fused [D + 2 Dkv, D] product (Dkv = D without GQA)
    add(n.wq, {D, D}, true, true, /*pad=*/false);
    add(n.wk, {Dkv, D}, true, true, /*pad=*/false);
    add(n.wv, {Dkv, D}, true);
    add(n.wo, {D, D}, true);
    add(n.mlp_norm, {D}, false);
    if (c.has_moe(l)) {
      // The experts replace the MLP; each expert's w1, w3 adjacent: one fused [2 d_expert, D] product.
      const int64_t G = c.moe.n_gate(), De = c.moe.d_expert;
      add(n.moe_gate, {G, D}, false);
      for (const auto& e : n.experts) {
        add(e.w1, {De, D}, true, true, /*pad=*/false);
        add(e.w3, {De, D}, true);
        add(e.w2, {D, De}, true);
      }
    } else {
      add(n.w1, {F, D}, true, true, /*pad=*/false);  // w1, w3 adjacent: one fused [2F, D] product
      add(n.w3, {F, D}, true);
      add(n.w2, {D, F}, true);
    }
    if (c.routed(l)) {
      add(n.router, {1, D}, false);
      if (!n.pred_fc1_w.empty()) {
        const int64_t Hp = c.routing.predictor_hidden;
        add(n.pred_fc1_w, {Hp, D}, true, false);
        add(n.pred_fc1_b, {Hp}, false, false);
        add(n.pred_fc2_w, {1, Hp}, true, false);
        add(n.pred_fc2_b, {1}, false, false);
      }
    }
  }
  add("norm.weight", {D}, false);
  if (!c.tie_embeddings) add("output.weight", {V, D}, true);
}

LayerTensorNames LayerTensorNames::of(const ModelConfig& c, int l) {
  const std::string p = "layers." + std::to_string(l) + ".";
  LayerTensorNames n;
  n.attn_norm = p + "attn_norm.weight";
  n.wq = p + "attn.wq.weight", n.wk = p + "attn.wk.weight", n.wv = p + "attn.wv.weight", n.wo = p + "attn.wo.weight";
  n.mlp_norm = p + "mlp_norm.weight";
  if (c.has_moe(l)) {
    n.moe_gate = p + "moe.gate.weight";
    for (int e = 0; e < c.moe.n_experts; ++e) {
      const std::string q = p + "moe.experts." + std::to_string(e) + ".";
      n.experts.push_back({q + "w1.weight", q + "w3.weight", q + "w2.weight"});
    }
  } else {
    n.w1 = p + "mlp.w1.weight", n.w3 = p + "mlp.w3.weight", n.w2 = p + "mlp.w2.weight";
  }
  if (c.routed(l)) {
    n.router = p + "router.weight";
    if (c.routing.causal == "predictor") {
      n.pred_fc1_w = p + "predictor.fc1.weight", n.pred_fc1_b = p + "predictor.fc1.bias";
      n.pred_fc2_w = p + "predictor.fc2.weight", n.pred_fc2_b = p + "predictor.fc2.bias";
    }
  }
  return n;
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
    const LayerTensorNames n = LayerTensorNames::of(c, l);
    LayerWeights<T> lw;
    lw.attn_norm = at(n.attn_norm);
    lw.wqkv = at(n.wq);  // the fused q|k|v group starts at wq
    lw.wo = at(n.wo);
    lw.mlp_norm = at(n.mlp_norm);
    if (c.has_moe(l)) {
      lw.moe_gate = at(n.moe_gate);
      for (const auto& e : n.experts) {
        lw.expert_w13.push_back(at(e.w1));  // w1|w3 fused, from w1
        lw.expert_w2.push_back(at(e.w2));
      }
    } else {
      lw.w13 = at(n.w1);
      lw.w2 = at(n.w2);
    }
    if (c.routed(l)) {
      lw.router = at(n.router);
      if (!n.pred_fc1_w.empty()) {
        lw.pred_fc1_w = at(n.pred_fc1_w);
        lw.pred_fc1_b = at(n.pred_fc1_b);
        lw.pred_fc2_w = at(n.pred_fc2_w);
        lw.pred_fc2_b = at(n.pred_fc2_b);
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
