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

// Mixture-of-Experts (SPEC §3): the MLP of the listed layers is replaced by E SwiGLU experts of
// hidden size d_expert behind a softmax router over E + n_noop outputs (n_noop no-op experts,
// which output 0: integrated MoDE). In a routed (MoD) layer the MoE sees only the routed rows
// (staged MoDE).
struct MoeConfig {
  LayerSet layers;               // default "all" when config.json has a "moe" object
  int n_experts = 0;             // E; required when some layer has an MoE (0 = not given)
  int d_expert = 0;              // experts' hidden size; required likewise
  int top_k = 1;                 // experts per token (token choice)
  double capacity_factor = 0;    // 0 (or null in config.json): no capacity
  int n_noop = 0;                // no-op experts
  double balance_weight = 0.01;  // Switch load-balancing loss weight
  json extra = json::object();   // unknown keys, kept on a round trip
  bool present = false;          // whether config.json had a "moe" object
  int n_gate() const { return n_experts + n_noop; }
};

struct ModelConfig {
  int vocab_size = 256;
  int d_model = 512;
  int n_layers = 8;
  int n_heads = 8;
  int n_kv_heads = 0;  // key/value heads for grouped-query attention (extension); 0 = n_heads
  int d_ff = 1408;
  int max_seq_len = 2048;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  std::string tokenizer;  // "bytes", or empty when the folder carries tokenizer.model
  RoutingConfig routing;
  MoeConfig moe;
  json extra = json::object();  // unknown top-level keys

  int head_dim() const { return d_model / n_heads; }
  int kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  int kv_dim() const { return kv_heads() * head_dim(); }        // columns of wk and of wv
  int qkv_dim() const { return d_model + 2 * kv_dim(); }        // rows of the fused wq|wk|wv
  bool routed(int layer) const { return routing.layers.contains(layer); }
  int n_routed() const;
  bool has_moe(int layer) const { return moe.present && moe.layers.contains(layer); }
  int n_moe() const;

  // Throws modlm::Error (bad input, exit 3) naming `source` and the offending key.
  static ModelConfig from_json(const json& j, const std::string& source);
  static ModelConfig load(const std::string& path);
  json to_json() const;
  void validate(const std::string& source) const;
};

// k = ceil(c * T) computed as ceil(c*T - 1e-9), clamped to [1, T] (SPEC §2).
int routed_capacity(double capacity, int T);

// MoE capacity per expert and sequence (SPEC §3): C = ceil(capacity_factor * n * top_k / n_gate)
// for the n rows of a sequence that reach the MoE, computed with the same 1e-9 guard against
// float rounding as routed_capacity, and at least 1. Only meaningful for capacity_factor > 0.
int moe_capacity(double capacity_factor, int n, int top_k, int n_gate);

}  // namespace modlm
