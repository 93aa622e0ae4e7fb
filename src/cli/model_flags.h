// Model-shape flags shared by `init` and `train`: each overrides the config value it names,
// and only when given.
#pragma once
#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/families.h"

namespace modlm::cli {

struct ModelFlags {
  std::optional<int> d_model, n_layers, n_heads, n_kv_heads, d_ff, max_seq_len, predictor_hidden;
  std::optional<double> rope_theta, norm_eps, capacity, aux_weight, balance_weight;
  std::optional<std::string> vocab, routing, method, gate, causal;
  bool tie = false, untie = false;
  // Mixture-of-Experts (SPEC §3): written into the config's "moe" object.
  std::optional<std::string> moe_layers;
  std::optional<int> n_experts, d_expert, moe_top_k, n_noop;
  std::optional<double> capacity_factor, moe_balance_weight;

  void add_to(CLI::App& app);
  // Applies the given flags onto cfg (json form, so unknown keys survive) and validates.
  ModelConfig apply(json base, const std::string& source) const;
};

// The short name benchmarks give a model in their output: dense, mod, moe, or mode (routed layers
// and experts).
std::string model_kind(const ModelConfig& cfg);

// --capacity --routed-layers (MoD) and --n-experts --d-expert --moe-top-k --capacity-factor --n-noop
// --moe-balance-weight (MoE), the settings that make the other families from a dense shape, as
// `modlm demo` and `modlm sweep` take them; `group` "" hides them from --help.
void add_family_flags(CLI::App& app, FamilySettings& f, const std::string& group);

// "all" | "every_other" | "none" | "1,3,5" as config.json's layer-set value (usage_error naming
// `flag` otherwise); the indices are checked against the model when the config is read.
json layer_set_flag(const std::string& s, const char* flag);

// "1,4,16" -> {1, 4, 16}: each an integer in [1, 256] (batch sizes, client counts); usage_error
// naming `flag` otherwise.
std::vector<int> parse_int_list(const std::string& s, const char* flag);

}  // namespace modlm::cli
