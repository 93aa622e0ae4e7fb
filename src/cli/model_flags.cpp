#include "cli/model_flags.h"

#include <sstream>

#include "util/error.h"

namespace modlm::cli {

void ModelFlags::add_to(CLI::App& app) {
  app.add_option("--d-model", d_model, "model width D");
  app.add_option("--n-layers", n_layers, "number of layers L");
  app.add_option("--n-heads", n_heads, "attention heads H (D/H must be even)");
  app.add_option("--n-kv-heads", n_kv_heads, "key/value heads for grouped-query attention (must divide H; default H)");
  app.add_option("--d-ff", d_ff, "MLP hidden size F");
  app.add_option("--max-seq-len", max_seq_len, "longest sequence the model accepts");
  app.add_option("--rope-theta", rope_theta, "RoPE base");
  app.add_option("--norm-eps", norm_eps, "RMSNorm epsilon");
  app.add_option("--vocab", vocab, "\"bytes\" (byte tokenizer, V=256) or a vocabulary size");
  app.add_flag("--tie-embeddings", tie, "share the embedding and output matrices");
  app.add_flag("--untie-embeddings", untie, "separate embedding and output matrices (default)");
  app.add_option("--routing", routing, "routed (MoD) layers: every_other, all, none, or a list like 1,3,5");
  app.add_option("--capacity", capacity, "fraction of tokens a routed block processes, in (0, 1]");
  app.add_option("--method", method, "expert_choice, stochastic or token_choice");
  app.add_option("--gate", gate, "sigmoid or linear");
  app.add_option("--causal", causal, "predictor or aux_loss");
  app.add_option("--predictor-hidden", predictor_hidden, "hidden size of the causal predictor");
  app.add_option("--aux-weight", aux_weight, "weight of the predictor / aux BCE loss");
  app.add_option("--balance-weight", balance_weight, "weight of token_choice's balancing loss");
  app.add_option("--moe-layers", moe_layers, "Mixture-of-Experts layers: all, every_other, none, or a list like 1,3,5");
  app.add_option("--n-experts", n_experts, "MoE: number of experts E");
  app.add_option("--d-expert", d_expert, "MoE: experts' hidden size");
  app.add_option("--moe-top-k", moe_top_k, "MoE: experts per token (default 1)");
  app.add_option("--capacity-factor", capacity_factor, "MoE: capacity factor (0 = no capacity, the default)");
  app.add_option("--n-noop", n_noop, "MoE: no-op experts (integrated MoDE)");
  app.add_option("--moe-balance-weight", moe_balance_weight, "MoE: weight of the Switch load-balancing loss (default 0.01)");
}

json layer_set_flag(const std::string& s, const char* flag) {
  if (s == "every_other" || s == "all" || s == "none") return s;
  json list = json::array();
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    try {
      size_t used = 0;
      int v = std::stoi(item, &used);
      if (used != item.size()) throw std::invalid_argument("");
      list.push_back(v);
    } catch (const std::exception&) {
      throw usage_error(std::string(flag) + " must be every_other, all, none or a comma list of layer indices, got \"" +
                        s + "\"");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return list;
}

ModelConfig ModelFlags::apply(json j, const std::string& source) const {
  if (!j.is_object()) j = json::object();
  auto set = [&](const char* key, const auto& v) {
    if (v) j[key] = *v;
  };
  set("d_model", d_model);
  set("n_layers", n_layers);
  set("n_heads", n_heads);
  set("n_kv_heads", n_kv_heads);
  set("d_ff", d_ff);
  set("max_seq_len", max_seq_len);
  set("rope_theta", rope_theta);
  set("norm_eps", norm_eps);
  if (tie && untie) throw usage_error("--tie-embeddings and --untie-embeddings contradict each other");
  if (tie) j["tie_embeddings"] = true;
  if (untie) j["tie_embeddings"] = false;
  if (vocab) {
    if (*vocab == "bytes") {
      j["tokenizer"] = "bytes";
      j["vocab_size"] = 256;
    } else {
      try {
        size_t used = 0;
        long v = std::stol(*vocab, &used);
        if (used != vocab->size()) throw std::invalid_argument("");
        j["vocab_size"] = v;
        j.erase("tokenizer");
      } catch (const std::exception&) {
        throw usage_error("--vocab must be \"bytes\" or an integer, got \"" + *vocab + "\"");
      }
    }
  }
  bool any_routing = routing || capacity || method || gate || causal || predictor_hidden || aux_weight || balance_weight;
  if (any_routing) {
    json r = j.contains("routing") && j["routing"].is_object() ? j["routing"] : json::object();
    if (routing) r["layers"] = layer_set_flag(*routing, "--routing");
    if (capacity) r["capacity"] = *capacity;
    if (method) r["method"] = *method;
    if (gate) r["gate"] = *gate;
    if (causal) r["causal"] = *causal;
    if (predictor_hidden) r["predictor_hidden"] = *predictor_hidden;
    if (aux_weight) r["aux_weight"] = *aux_weight;
    if (balance_weight) r["balance_weight"] = *balance_weight;
    j["routing"] = r;
  }
  if (moe_layers || n_experts || d_expert || moe_top_k || capacity_factor || n_noop || moe_balance_weight) {
    json m = j.contains("moe") && j["moe"].is_object() ? j["moe"] : json::object();
    if (moe_layers) m["layers"] = layer_set_flag(*moe_layers, "--moe-layers");
    if (n_experts) m["n_experts"] = *n_experts;
    if (d_expert) m["d_expert"] = *d_expert;
    if (moe_top_k) m["top_k"] = *moe_top_k;
    if (capacity_factor) m["capacity_factor"] = *capacity_factor;
    if (n_noop) m["n_noop"] = *n_noop;
    if (moe_balance_weight) m["balance_weight"] = *moe_balance_weight;
    j["moe"] = m;
  }
  return ModelConfig::from_json(j, source);
}

std::string model_kind(const ModelConfig& cfg) {
  return cfg.n_routed() ? (cfg.n_moe() ? "mode" : "mod") : (cfg.n_moe() ? "moe" : "dense");
}

void add_family_flags(CLI::App& app, FamilySettings& f, const std::string& group) {
  app.add_option("--capacity", f.capacity, "MoD families: fraction of tokens a routed layer processes")->capture_default_str()->group(group);
  app.add_option("--routed-layers", f.routed_layers, "MoD families: every_other, all or none")->capture_default_str()->group(group);
  app.add_option("--n-experts", f.n_experts, "MoE families: experts per layer")->capture_default_str()->group(group);
  app.add_option("--d-expert", f.d_expert, "MoE families: expert width (0 = the dense d_ff)")->capture_default_str()->group(group);
  app.add_option("--moe-top-k", f.moe_top_k, "MoE families: experts per token")->capture_default_str()->group(group);
  app.add_option("--capacity-factor", f.capacity_factor, "MoE families: expert capacity factor")->capture_default_str()->group(group);
  app.add_option("--n-noop", f.n_noop, "integrated MoDE: no-op experts (0 = as many as real ones)")->capture_default_str()->group(group);
  app.add_option("--moe-balance-weight", f.balance_weight, "MoE families: load-balancing loss weight")->capture_default_str()->group(group);
}

std::vector<int> parse_int_list(const std::string& s, const char* flag) {
  std::vector<int> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      size_t used = 0;
      int v = std::stoi(item, &used);
      if (used != item.size() || v < 1 || v > 256) throw std::invalid_argument("");
      out.push_back(v);
    } catch (const std::exception&) {
      throw usage_error(std::string(flag) + " must be a comma list of integers in [1, 256], got \"" + s + "\"");
    }
  }
  if (out.empty()) throw usage_error(std::string(flag) + " is empty");
  return out;
}

}  // namespace modlm::cli
