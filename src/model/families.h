// The model families the paper compares, built from one dense shape (SPEC §2-§3):
//   dense            the shape as it is
//   mod              + Mixture-of-Depths routing
//   moe              every listed MLP replaced by experts
//   mode_staged      MoD routing around MoE layers (a routed layer's MLP is an MoE)
//   mode_integrated  MoE with no-op experts among the real ones (a token sent to a no-op skips the MLP)
// `modlm demo --family` and `modlm bench train --families` share these, so that a comparison
// means the same models everywhere.
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace modlm {

// In report order.
const std::vector<std::string>& model_families();
// dense, MoD, MoE, staged MoDE, integrated MoDE (the name itself for an unknown one).
std::string family_label(const std::string& family);
// "dense,moe" -> {"dense", "moe"} in the order given; usage_error naming `flag` on an unknown
// name, a repeat, or an empty list or item.
std::vector<std::string> parse_families(const std::string& list, const std::string& flag);

// `dense` with routing and/or experts for `family`: `routing` for mod and mode_staged (its
// `present` is set), `moe` for the three MoE families (layers "none" becomes "all"; n_noop is
// used by mode_integrated only, where 0 means as many no-op experts as real ones, and is 0 for
// the others). Validated: bad_input on settings that make no model (e.g. no routed layer).
ModelConfig family_config(const ModelConfig& dense, const std::string& family, RoutingConfig routing, MoeConfig moe);

// The few settings `modlm demo` and `modlm sweep` expose for the non-dense families.
struct FamilySettings {
  // MoD (mod, mode_staged): routed layers at this capacity; expert choice, sigmoid gate, causal
  // predictor of 128, aux weight 1.
  double capacity = 0.125;
  std::string routed_layers = "every_other";
  // MoE (moe, mode_staged, mode_integrated): every layer's MLP becomes n_experts experts of
  // d_expert (0: the dense d_ff, so top-1 costs what the dense MLP costs), top-k token choice at
  // this capacity factor; integrated MoDE adds n_noop no-op experts (0: as many as real ones).
  int n_experts = 4, d_expert = 0, moe_top_k = 1, n_noop = 0;
  double capacity_factor = 1.25, balance_weight = 0.01;
};
// family_config with routing and experts made from `settings` (bad_input naming `what` on a bad
// routed-layer list).
ModelConfig family_config(const ModelConfig& dense, const std::string& family, const FamilySettings& settings,
                          const std::string& what);

// Whether evaluating as generation decides (RouteMode::Causal: the causal decision in routed
// layers, no MoE capacity) can differ from top-k evaluation: routed layers, or an MoE capacity.
bool has_causal_mode(const ModelConfig& cfg);

}  // namespace modlm
