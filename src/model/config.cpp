#include "model/config.h"

#include <cmath>
#include <set>

#include "util/error.h"
#include "util/fs.h"

namespace modlm {

bool LayerSet::contains(int layer) const {
  if (kind == "all") return true;
  if (kind == "every_other") return layer % 2 == 1;
  if (kind == "list") {
    for (int l : list)
      if (l == layer) return true;
  }
  return false;
}

json LayerSet::to_json() const {
  if (kind == "list") return json(list);
  return json(kind);
}

LayerSet LayerSet::parse(const json& j, int n_layers, const std::string& where) {
  LayerSet s;
  if (j.is_string()) {
    std::string k = j.get<std::string>();
    if (k != "every_other" && k != "all" && k != "none")
      throw bad_input(where + ": must be \"every_other\", \"all\", \"none\" or a list of layer indices, got \"" + k +
                      "\"");
    s.kind = k;
    return s;
  }
  if (!j.is_array()) throw bad_input(where + ": must be a string or a list of layer indices");
  s.kind = "list";
  std::set<int> seen;
  for (const auto& e : j) {
    if (!e.is_number_integer()) throw bad_input(where + ": layer indices must be integers");
    int l = e.get<int>();
    if (l < 0 || l >= n_layers)
      throw bad_input(where + ": layer index " + std::to_string(l) + " out of range [0, " + std::to_string(n_layers) +
                      ")");
    if (!seen.insert(l).second) throw bad_input(where + ": layer index " + std::to_string(l) + " repeated");
    s.list.push_back(l);
  }
  std::sort(s.list.begin(), s.list.end());
  return s;
}

int ModelConfig::n_routed() const {
  int n = 0;
  for (int l = 0; l < n_layers; ++l) n += routed(l);
  return n;
}

int ModelConfig::n_moe() const {
  int n = 0;
  for (int l = 0; l < n_layers; ++l) n += has_moe(l);
  return n;
}

int moe_capacity(double capacity_factor, int n, int top_k, int n_gate) {
  double c = std::ceil(capacity_factor * n * top_k / n_gate - 1e-9);
  if (!(c >= 1)) return 1;
  if (c > (double)n * top_k) c = (double)n * top_k;  // no expert can receive more (and no overflow)
  return std::max(1, (int)c);
}

int routed_capacity(double capacity, int T) {
  long k = (long)std::ceil(capacity * T - 1e-9);
  if (k < 1) k = 1;
  if (k > T) k = T;
  return (int)k;
}

namespace {

// Typed field readers: a wrong type is an error naming the key, never a silent default.
int get_int(const json& j, const char* key, int def, const std::string& src) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  if (!v.is_number_integer()) throw bad_input(src + ": \"" + key + "\" must be an integer");
  if (v.is_number_unsigned() ? v.get<unsigned long long>() > (unsigned long long)INT32_MAX
                              : (v.get<long long>() < INT32_MIN || v.get<long long>() > INT32_MAX))
    throw bad_input(src + ": \"" + key + "\" = " + v.dump() + " is out of range (an int32)");
  const long long x = v.get<long long>();
  return (int)x;
}
double get_num(const json& j, const char* key, double def, const std::string& src) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  if (!v.is_number()) throw bad_input(src + ": \"" + key + "\" must be a number");
  return v.get<double>();
}
bool get_bool(const json& j, const char* key, bool def, const std::string& src) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  if (!v.is_boolean()) throw bad_input(src + ": \"" + key + "\" must be true or false");
  return v.get<bool>();
}
std::string get_str(const json& j, const char* key, const std::string& def, const std::string& src) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  if (!v.is_string()) throw bad_input(src + ": \"" + key + "\" must be a string");
  return v.get<std::string>();
}
void check_one_of(const std::string& v, std::initializer_list<const char*> allowed, const std::string& what) {
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return;
    list += std::string(list.empty() ? "" : ", ") + a;
  }
  throw bad_input(what + " must be one of " + list + ", got \"" + v + "\"");
}

const std::set<std::string> kTopKeys = {"format",       "vocab_size", "d_model",  "n_layers",  "n_heads", "n_kv_heads",
                                        "d_ff",         "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings",
                                        "tokenizer",    "routing",    "moe"};
const std::set<std::string> kRoutingKeys = {"layers", "capacity",         "method",     "gate",
                                            "causal", "predictor_hidden", "aux_weight", "balance_weight"};
const std::set<std::string> kMoeKeys = {"layers",          "n_experts", "d_expert",      "top_k",
                                        "capacity_factor", "n_noop",    "balance_weight"};

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& src) {
  if (!j.is_object()) throw bad_input(src + ": config must be a JSON object");
  ModelConfig c;
  if (j.contains("format")) {
    std::string f = get_str(j, "format", "", src);
    if (f != "modlm-1") throw bad_input(src + ": unsupported \"format\" \"" + f + "\" (expected \"modlm-1\")");
  }
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, src);
  c.d_model = get_int(j, "d_model", c.d_model, src);
  c.n_layers = get_int(j, "n_layers", c.n_layers, src);
  c.n_heads = get_int(j, "n_heads", c.n_heads, src);
  c.n_kv_heads = get_int(j, "n_kv_heads", 0, src);
  if (j.contains("n_kv_heads") && c.n_kv_heads < 1)
    throw bad_input(src + ": n_kv_heads must be >= 1, got " + std::to_string(c.n_kv_heads));
  c.d_ff = get_int(j, "d_ff", c.d_ff, src);
  c.max_seq_len = get_int(j, "max_seq_len", c.max_seq_len, src);
  c.rope_theta = get_num(j, "rope_theta", c.rope_theta, src);
  c.norm_eps = get_num(j, "norm_eps", c.norm_eps, src);
  c.tie_embeddings = get_bool(j, "tie_embeddings", c.tie_embeddings, src);
  c.tokenizer = get_str(j, "tokenizer", "", src);
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!kTopKeys.count(it.key())) c.extra[it.key()] = it.value();

  if (j.contains("routing") && !j.at("routing").is_null()) {
    const json& r = j.at("routing");
    const std::string rs = src + ": routing";
    if (!r.is_object()) throw bad_input(rs + " must be an object");
    RoutingConfig& rc = c.routing;
    rc.present = true;
    rc.layers = LayerSet::parse(r.contains("layers") ? r.at("layers") : json("every_other"),
                                std::max(c.n_layers, 0), rs + ".layers");
    rc.capacity = get_num(r, "capacity", rc.capacity, rs);
    rc.method = get_str(r, "method", rc.method, rs);
    rc.gate = get_str(r, "gate", rc.gate, rs);
    rc.causal = get_str(r, "causal", rc.causal, rs);
    rc.predictor_hidden = get_int(r, "predictor_hidden", rc.predictor_hidden, rs);
    rc.aux_weight = get_num(r, "aux_weight", rc.causal == "aux_loss" ? 0.01 : 1.0, rs);
    rc.balance_weight = get_num(r, "balance_weight", rc.balance_weight, rs);
    for (auto it = r.begin(); it != r.end(); ++it)
      if (!kRoutingKeys.count(it.key())) rc.extra[it.key()] = it.value();
  }
  if (j.contains("moe") && !j.at("moe").is_null()) {
    const json& m = j.at("moe");
    const std::string ms = src + ": moe";
    if (!m.is_object()) throw bad_input(ms + " must be an object");
    MoeConfig& mc = c.moe;
    mc.present = true;
    mc.layers = LayerSet::parse(m.contains("layers") ? m.at("layers") : json("all"), std::max(c.n_layers, 0),
                                ms + ".layers");
    mc.n_experts = get_int(m, "n_experts", mc.n_experts, ms);
    mc.d_expert = get_int(m, "d_expert", mc.d_expert, ms);
    mc.top_k = get_int(m, "top_k", mc.top_k, ms);
    if (m.contains("capacity_factor") && !m.at("capacity_factor").is_null())
      mc.capacity_factor = get_num(m, "capacity_factor", mc.capacity_factor, ms);
    mc.n_noop = get_int(m, "n_noop", mc.n_noop, ms);
    mc.balance_weight = get_num(m, "balance_weight", mc.balance_weight, ms);
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!kMoeKeys.count(it.key())) mc.extra[it.key()] = it.value();
  }
  c.validate(src);
  return c;
}

void ModelConfig::validate(const std::string& src) const {
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) throw bad_input(src + ": " + msg);
  };
  need(vocab_size >= 2 && vocab_size <= (1 << 24), "vocab_size must be in [2, 16777216], got " + std::to_string(vocab_size));
  need(d_model >= 2 && d_model <= 65536, "d_model must be in [2, 65536], got " + std::to_string(d_model));
  need(n_layers >= 1 && n_layers <= 1024, "n_layers must be in [1, 1024], got " + std::to_string(n_layers));
  need(n_heads >= 1 && n_heads <= d_model, "n_heads must be in [1, d_model], got " + std::to_string(n_heads));
  need(d_model % n_heads == 0, "d_model (" + std::to_string(d_model) + ") must be divisible by n_heads (" +
                                   std::to_string(n_heads) + ")");
  need(n_kv_heads >= 0 && n_kv_heads <= n_heads && n_heads % kv_heads() == 0,
       "n_kv_heads must divide n_heads (" + std::to_string(n_heads) + "), got " + std::to_string(n_kv_heads));
  need(head_dim() % 2 == 0, "head dim d_model/n_heads = " + std::to_string(head_dim()) + " must be even (RoPE)");
  need(d_ff >= 1 && d_ff <= 1 << 20, "d_ff must be in [1, 1048576], got " + std::to_string(d_ff));
  need(max_seq_len >= 1 && max_seq_len <= 1 << 20, "max_seq_len must be in [1, 1048576], got " + std::to_string(max_seq_len));
  need(std::isfinite(rope_theta) && rope_theta > 1.0, "rope_theta must be a finite number > 1");
  need(std::isfinite(norm_eps) && norm_eps > 0 && norm_eps < 1, "norm_eps must be in (0, 1), got " + std::to_string(norm_eps));
  need(tokenizer.empty() || tokenizer == "bytes", "\"tokenizer\" must be \"bytes\" (or absent with tokenizer.model or tokenizer.json)");
  need(tokenizer != "bytes" || vocab_size >= 256, "the byte tokenizer needs vocab_size >= 256");
  if (routing.present) {
    const RoutingConfig& r = routing;
    need(std::isfinite(r.capacity) && r.capacity > 0 && r.capacity <= 1, "routing.capacity must be in (0, 1], got " + std::to_string(r.capacity));
    check_one_of(r.method, {"expert_choice", "stochastic", "token_choice"}, src + ": routing.method");
    check_one_of(r.gate, {"sigmoid", "linear"}, src + ": routing.gate");
    check_one_of(r.causal, {"predictor", "aux_loss"}, src + ": routing.causal");
    need(r.predictor_hidden >= 1 && r.predictor_hidden <= 65536, "routing.predictor_hidden must be in [1, 65536], got " + std::to_string(r.predictor_hidden));
    need(std::isfinite(r.aux_weight) && r.aux_weight >= 0, "routing.aux_weight must be >= 0");
    need(std::isfinite(r.balance_weight) && r.balance_weight >= 0, "routing.balance_weight must be >= 0");
    for (int l : r.layers.list)
      need(l >= 0 && l < n_layers, "routing.layers index " + std::to_string(l) + " out of range");
  }
  if (moe.present) {
    const MoeConfig& m = moe;
    const bool used = n_moe() > 0;
    need(!used || m.n_experts >= 1, "moe.n_experts (the number of experts E) must be given and >= 1");
    need(!used || m.d_expert >= 1, "moe.d_expert (the experts' hidden size) must be given and >= 1");
    need(m.n_experts >= 0 && m.n_experts <= 65536, "moe.n_experts must be in [1, 65536], got " + std::to_string(m.n_experts));
    need(m.d_expert >= 0 && m.d_expert <= 1 << 20, "moe.d_expert must be in [1, 1048576], got " + std::to_string(m.d_expert));
    need(m.n_noop >= 0 && m.n_noop <= 65536, "moe.n_noop must be in [0, 65536], got " + std::to_string(m.n_noop));
    need(m.top_k >= 1 && m.top_k <= std::max(1, m.n_experts + m.n_noop),
         "moe.top_k must be in [1, n_experts + n_noop = " + std::to_string(m.n_experts + m.n_noop) + "], got " +
             std::to_string(m.top_k));
    need(std::isfinite(m.capacity_factor) && m.capacity_factor >= 0,
         "moe.capacity_factor must be a finite number >= 0 (0 or null: no capacity)");
    need(std::isfinite(m.balance_weight) && m.balance_weight >= 0, "moe.balance_weight must be >= 0");
    for (int l : m.layers.list) need(l >= 0 && l < n_layers, "moe.layers index " + std::to_string(l) + " out of range");
  }
}

json ModelConfig::to_json() const {
  json j;
  j["format"] = "modlm-1";
  j["vocab_size"] = vocab_size;
  j["d_model"] = d_model;
  j["n_layers"] = n_layers;
  j["n_heads"] = n_heads;
  if (kv_heads() != n_heads) j["n_kv_heads"] = n_kv_heads;  // only for GQA: MHA files stay SPEC §6 plain
  j["d_ff"] = d_ff;
  j["max_seq_len"] = max_seq_len;
  j["rope_theta"] = rope_theta;
  j["norm_eps"] = norm_eps;
  j["tie_embeddings"] = tie_embeddings;
  if (!tokenizer.empty()) j["tokenizer"] = tokenizer;
  if (routing.present) {
    json r;
    r["layers"] = routing.layers.to_json();
    r["capacity"] = routing.capacity;
    r["method"] = routing.method;
    r["gate"] = routing.gate;
    r["causal"] = routing.causal;
    r["predictor_hidden"] = routing.predictor_hidden;
    r["aux_weight"] = routing.aux_weight;
    if (routing.method == "token_choice" || routing.balance_weight != 0.01) r["balance_weight"] = routing.balance_weight;
    for (auto it = routing.extra.begin(); it != routing.extra.end(); ++it) r[it.key()] = it.value();
    j["routing"] = r;
  }
  if (moe.present) {
    json m;
    m["layers"] = moe.layers.to_json();
    if (moe.n_experts) m["n_experts"] = moe.n_experts;
    if (moe.d_expert) m["d_expert"] = moe.d_expert;
    m["top_k"] = moe.top_k;
    m["capacity_factor"] = moe.capacity_factor > 0 ? json(moe.capacity_factor) : json(nullptr);
    m["n_noop"] = moe.n_noop;
    m["balance_weight"] = moe.balance_weight;
    for (auto it = moe.extra.begin(); it != moe.extra.end(); ++it) m[it.key()] = it.value();
    j["moe"] = m;
  }
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::string text = read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse errors, and numbers out of range (1e999)
    throw bad_input(path + ": not valid JSON: " + e.what());
  }
  try {
    return from_json(j, path);
  } catch (const json::exception& e) {  // a shape from_json's own checks did not foresee
    throw bad_input(path + ": " + e.what());
  }
}

}  // namespace modlm
