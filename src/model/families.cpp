#include "model/families.h"

#include <algorithm>

#include "model/flops.h"
#include "util/error.h"

namespace modlm {

const std::vector<std::string>& model_families() {
  static const std::vector<std::string> f = {"dense", "mod", "moe", "mode_staged", "mode_integrated"};
  return f;
}

std::string family_label(const std::string& family) {
  if (family == "dense") return "dense";
  if (family == "mod") return "MoD";
  if (family == "moe") return "MoE";
  if (family == "mode_staged") return "staged MoDE";
  if (family == "mode_integrated") return "integrated MoDE";
  return family;
}

std::vector<std::string> parse_families(const std::string& list, const std::string& flag) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = list.find(',', start);
    std::string f = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    while (!f.empty() && f.front() == ' ') f.erase(f.begin());
    while (!f.empty() && f.back() == ' ') f.pop_back();
    const auto& known = model_families();
    if (std::find(known.begin(), known.end(), f) == known.end())
      throw usage_error(flag + ": \"" + f + "\" is not one of dense, mod, moe, mode_staged, mode_integrated");
    if (std::find(out.begin(), out.end(), f) != out.end()) throw usage_error(flag + ": \"" + f + "\" is named twice");
    out.push_back(f);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

ModelConfig family_config(const ModelConfig& dense, const std::string& family, RoutingConfig routing, MoeConfig moe) {
  const auto& known = model_families();
  if (std::find(known.begin(), known.end(), family) == known.end()) throw bad_input("unknown model family \"" + family + "\"");
  ModelConfig c = dense_twin(dense);
  const bool routed = family == "mod" || family == "mode_staged";
  const bool experts = family == "moe" || family == "mode_staged" || family == "mode_integrated";
  const std::string what = family_label(family) + " model";
  if (routed) {
    routing.present = true;
    c.routing = routing;
    if (c.n_routed() == 0) throw bad_input(what + ": no routed layer (routing layers \"" + routing.layers.kind + "\" of " +
                                           std::to_string(c.n_layers) + ")");
  }
  if (experts) {
    moe.present = true;
    if (moe.layers.kind == "none") moe.layers.kind = "all";
    moe.n_noop = family == "mode_integrated" ? (moe.n_noop > 0 ? moe.n_noop : moe.n_experts) : 0;
    c.moe = moe;
  }
  c.validate(what);
  return c;
}

ModelConfig family_config(const ModelConfig& dense, const std::string& family, const FamilySettings& f, const std::string& what) {
  RoutingConfig r;
  r.layers = LayerSet::parse(f.routed_layers, dense.n_layers, what + ": routed layers");
  r.capacity = f.capacity;
  r.aux_weight = 1.0;
  MoeConfig e;
  e.n_experts = f.n_experts;
  e.d_expert = f.d_expert > 0 ? f.d_expert : dense.d_ff;
  e.top_k = f.moe_top_k;
  e.capacity_factor = f.capacity_factor;
  e.n_noop = f.n_noop;
  e.balance_weight = f.balance_weight;
  return family_config(dense, family, r, e);
}

bool has_causal_mode(const ModelConfig& c) {
  if (c.n_routed() > 0) return true;
  for (int l = 0; l < c.n_layers; ++l)
    if (c.has_moe(l) && c.moe.capacity_factor > 0) return true;
  return false;
}

}  // namespace modlm
