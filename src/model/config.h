// Model configuration (SPEC §1-§3, §6): parsing, validation and a lossless round trip.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace modlm {

using json = nlohmann::ordered_json;

// Which layers a feature applies to: "every_other" (1, 3, 5, ...), "all", "none", or a list.
struct LayerSet {
  std::string kind = "none";  // every_other | all | none | list
  std::vector<int> list;
  bool contains(int layer) const;
  json to_json() const;
  static LayerSet parse(const json& j, int n_layers, const std::string& where);
};

struct RoutingConfig {
  LayerSet layers;                      // default none: a dense model
  double capacity = 0.125;
  std::string method = "expert_choice";  // expert_choice | stochastic | token_choice
  std::string gate = "sigmoid";          // sigmoid | linear
  std::string causal = "predictor";      // predictor | aux_loss
  int predictor_hidden = 128;
  double aux_weight = 1.0;               // default 1.0 for predictor, 0.01 for aux_loss
  double balance_weight = 0.01;          // token_choice balancing loss
  json extra = json::object();           // unknown keys, kept on a round trip
  bool present = false;                  // whether config.json had a "routing" object
};

struct ModelConfig {
  int vocab_size = 256;
  int d_model = 512;
  int n_layers = 8;
  int n_heads = 8;
  int d_ff = 1408;
  int max_seq_len = 2048;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  std::string tokenizer;  // "bytes", or empty when the folder carries tokenizer.model
  RoutingConfig routing;
  json extra = json::object();  // unknown top-level keys (including a not-yet-supported "moe")

  int head_dim() const { return d_model / n_heads; }
  bool routed(int layer) const { return routing.layers.contains(layer); }
  int n_routed() const;

  // Throws modlm::Error (bad input, exit 3) naming `source` and the offending key.
  static ModelConfig from_json(const json& j, const std::string& source);
  static ModelConfig load(const std::string& path);
  json to_json() const;
  void validate(const std::string& source) const;
};

// k = ceil(c * T) computed as ceil(c*T - 1e-9), clamped to [1, T] (SPEC §2).
int routed_capacity(double capacity, int T);

}  // namespace modlm
