#include "io/hf_llama.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "io/bpe_tokenizer.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "ops/bf16.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/json_file.h"
#include "util/strings.h"

namespace modlm::io {

namespace fs = std::filesystem;

namespace {

// HF files an import keeps (under OUT/hf/) and an export writes back: they describe the
// tokenizer's special tokens and the generation defaults, which modlm does not interpret.
const char* const kSideFiles[] = {"tokenizer_config.json", "special_tokens_map.json", "generation_config.json"};
// HF config keys that import turns into modlm fields (export writes them from the model).
const std::set<std::string> kStructuralKeys = {
    "architectures", "model_type",        "hidden_size",      "num_hidden_layers",       "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "rms_norm_eps", "rope_theta",          "tie_word_embeddings",
    "max_position_embeddings", "vocab_size", "hidden_act",       "rope_scaling",            "attention_bias",
    "mlp_bias",      "head_dim",          "torch_dtype"};

DType parse_export_dtype(const std::string& s) {
  const std::string l = ascii_lower(s);
  if (l == "f32" || l == "float32") return DType::F32;
  if (l == "bf16" || l == "bfloat16") return DType::BF16;
  if (l == "f16" || l == "float16") return DType::F16;
  throw usage_error("--dtype must be f32, bf16 or f16, got \"" + s + "\"");
}

const char* torch_dtype_name(DType d) { return d == DType::F32 ? "float32" : d == DType::BF16 ? "bfloat16" : "float16"; }

}  // namespace

std::vector<std::pair<std::string, std::string>> hf_llama_names(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::string>> n;
  n.push_back({"model.embed_tokens.weight", "tok_embeddings.weight"});
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string h = "model.layers." + std::to_string(l) + ".";
    const LayerTensorNames m = LayerTensorNames::of(c, l);
    n.push_back({h + "input_layernorm.weight", m.attn_norm});
    n.push_back({h + "self_attn.q_proj.weight", m.wq});
    n.push_back({h + "self_attn.k_proj.weight", m.wk});
    n.push_back({h + "self_attn.v_proj.weight", m.wv});
    n.push_back({h + "self_attn.o_proj.weight", m.wo});
    n.push_back({h + "post_attention_layernorm.weight", m.mlp_norm});
    n.push_back({h + "mlp.gate_proj.weight", m.w1});
    n.push_back({h + "mlp.up_proj.weight", m.w3});
    n.push_back({h + "mlp.down_proj.weight", m.w2});
  }
  n.push_back({"model.norm.weight", "norm.weight"});
  if (!c.tie_embeddings) n.push_back({"lm_head.weight", "output.weight"});
  return n;
}

ModelConfig config_from_hf(const json& hf, const std::string& src) {
  if (!hf.is_object()) throw bad_input(src + ": a Hugging Face config must be a JSON object");
  auto has = [&](const char* k) { return hf.contains(k) && !hf.at(k).is_null(); };
  auto refuse = [&](const std::string& field, const std::string& why) { throw bad_input(src + ": " + field + " " + why); };
  auto get_int = [&](const char* k, std::optional<int64_t> def) -> int64_t {
    if (!has(k)) {
      if (!def) refuse(k, "is required");
      return *def;
    }
    const json& v = hf.at(k);
    if (!v.is_number_integer()) refuse(k, "must be an integer, got " + v.dump());
    const int64_t x = v.get<int64_t>();
    if (x < 1 || x > (int64_t)1 << 30) refuse(k, "must be in [1, 2^30], got " + std::to_string(x));
    return x;
  };
  auto get_num = [&](const char* k, double def) -> double {
    if (!has(k)) return def;
    const json& v = hf.at(k);
    if (!v.is_number()) refuse(k, "must be a number, got " + v.dump());
    return v.get<double>();
  };
  auto get_bool = [&](const char* k, bool def) -> bool {
    if (!has(k)) return def;
    const json& v = hf.at(k);
    if (!v.is_boolean()) refuse(k, "must be true or false, got " + v.dump());
    return v.get<bool>();
  };
  if (has("architectures")) {
    const json& a = hf.at("architectures");
    bool llama = false;
    if (a.is_array())
      for (const json& x : a) llama = llama || (x.is_string() && x.get<std::string>() == "LlamaForCausalLM");
    if (!llama) refuse("architectures", a.dump() + " is not supported: only LlamaForCausalLM can be imported");
  } else if (!has("model_type")) {
    refuse("architectures", "is missing (and no model_type): cannot tell that this is a LlamaForCausalLM");
  }
  if (has("model_type") && !(hf.at("model_type").is_string() && hf.at("model_type").get<std::string>() == "llama"))
    refuse("model_type", hf.at("model_type").dump() + " is not supported: only \"llama\"");
  if (has("hidden_act") && !(hf.at("hidden_act").is_string() && hf.at("hidden_act").get<std::string>() == "silu"))
    refuse("hidden_act", hf.at("hidden_act").dump() + " is not supported: only \"silu\" (SwiGLU)");
  if (has("rope_scaling")) {
    const json& r = hf.at("rope_scaling");
    std::string type = "?";
    if (r.is_object()) {
      for (const char* k : {"rope_type", "type"})
        if (r.contains(k) && r.at(k).is_string()) type = r.at(k).get<std::string>();
    }
    if (type != "default")
      refuse("rope_scaling", "of type \"" + type + "\" is not implemented (only plain RoPE: rope_scaling null)");
  }
  if (get_bool("attention_bias", false)) refuse("attention_bias", "true is not supported (SPEC §1 has no biases)");
  if (get_bool("mlp_bias", false)) refuse("mlp_bias", "true is not supported (SPEC §1 has no biases)");

  const int64_t D = get_int("hidden_size", std::nullopt), H = get_int("num_attention_heads", std::nullopt);
  if (has("head_dim") && (!hf.at("head_dim").is_number_integer() || hf.at("head_dim").get<int64_t>() * H != D))
    refuse("head_dim", hf.at("head_dim").dump() + " is not supported: it must equal hidden_size / num_attention_heads = " +
                           std::to_string(D / std::max<int64_t>(H, 1)));
  json j;
  j["format"] = "modlm-1";
  j["vocab_size"] = get_int("vocab_size", std::nullopt);
  j["d_model"] = D;
  j["n_layers"] = get_int("num_hidden_layers", std::nullopt);
  j["n_heads"] = H;
  const int64_t Hkv = get_int("num_key_value_heads", H);
  if (Hkv != H) j["n_kv_heads"] = Hkv;
  j["d_ff"] = get_int("intermediate_size", std::nullopt);
  j["max_seq_len"] = get_int("max_position_embeddings", 2048);
  j["rope_theta"] = get_num("rope_theta", 10000.0);
  j["norm_eps"] = get_num("rms_norm_eps", 1e-6);
  j["tie_embeddings"] = get_bool("tie_word_embeddings", false);
  json keep = json::object();
  for (auto it = hf.begin(); it != hf.end(); ++it)
    if (!kStructuralKeys.count(it.key())) keep[it.key()] = it.value();
  j["hf"] = {{"config", keep}};
  try {
    return ModelConfig::from_json(j, src + " (as a modlm config)");
  } catch (const json::exception& e) {
    throw bad_input(src + ": " + e.what());
  }
}

HfImport read_hf_llama(const std::string& dir, std::unique_ptr<Model<float>>& model) {
  if (!fs::is_directory(dir)) throw io_error(dir + ": not a folder");
  HfImport rep;
  const std::string cfg_path = dir + "/config.json";
  if (!file_exists(cfg_path)) throw bad_input(dir + ": no config.json (not a Hugging Face model folder)");
  rep.config = config_from_hf(parse_json_file(cfg_path), cfg_path);
  const ModelConfig& c = rep.config;

  // The tokenizer: SentencePiece when the folder has it.
  if (file_exists(dir + "/tokenizer.model")) {
    SentencePieceTokenizer tok(dir + "/tokenizer.model");
    if (tok.vocab_size() > c.vocab_size)
      throw bad_input(dir + "/tokenizer.model: " + std::to_string(tok.vocab_size()) + " pieces, more than vocab_size " +
                      std::to_string(c.vocab_size) + " in config.json");
    rep.tokenizer = "tokenizer.model";
  } else if (file_exists(dir + "/tokenizer.json")) {
    BpeTokenizer tok(dir + "/tokenizer.json");  // byte-level BPE (Llama 3 and kin): refused here if unsupported
    if (tok.vocab_size() > c.vocab_size)
      throw bad_input(dir + "/tokenizer.json: " + std::to_string(tok.vocab_size()) + " ids, more than vocab_size " +
                      std::to_string(c.vocab_size) + " in config.json");
    rep.tokenizer = "tokenizer.json";
  } else {
    throw bad_input(dir + ": no tokenizer (tokenizer.model or tokenizer.json)");
  }

  // Where each tensor lives: one file, or the shards an index names.
  std::vector<SafetensorsFile> files;
  std::map<std::string, size_t> where;  // HF name -> index into files
  const std::string index_path = dir + "/model.safetensors.index.json";
  if (file_exists(index_path)) {
    const json idx = parse_json_file(index_path);
    if (!idx.is_object() || !idx.contains("weight_map") || !idx.at("weight_map").is_object())
      throw bad_input(index_path + ": needs a \"weight_map\" object (tensor name -> shard file)");
    std::map<std::string, size_t> shard_of_file;
    for (auto it = idx.at("weight_map").begin(); it != idx.at("weight_map").end(); ++it) {
      if (!it.value().is_string()) throw bad_input(index_path + ": weight_map[\"" + it.key() + "\"] must be a file name");
      const std::string file = it.value().get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
        throw bad_input(index_path + ": shard \"" + file + "\" for '" + it.key() + "' must be a plain file name in the folder");
      auto f = shard_of_file.find(file);
      if (f == shard_of_file.end()) {
        if (!file_exists(dir + "/" + file))
          throw bad_input(index_path + ": names shard " + file + " (for '" + it.key() + "'), which is missing from " + dir);
        files.push_back(SafetensorsFile::open(dir + "/" + file));
        rep.shards.push_back(file);
        f = shard_of_file.emplace(file, files.size() - 1).first;
      }
      if (!files[f->second].find(it.key()))
        throw bad_input(index_path + ": names tensor '" + it.key() + "' in " + file + ", which does not hold it");
      where[it.key()] = f->second;
    }
  } else if (file_exists(dir + "/model.safetensors")) {
    files.push_back(SafetensorsFile::open(dir + "/model.safetensors"));
    rep.shards.push_back("model.safetensors");
    for (const TensorInfo& t : files[0].tensors()) where[t.name] = 0;
  } else {
    throw bad_input(dir + ": no model.safetensors or model.safetensors.index.json" +
                    std::string(file_exists(dir + "/pytorch_model.bin") ? " (pytorch_model.bin is not read: save with safe_serialization)" : ""));
  }

  const auto names = hf_llama_names(c);
  std::set<std::string> expected;
  for (const auto& n : names) expected.insert(n.first);
  for (const auto& [name, f] : where) {
    if (expected.count(name)) continue;
    const bool ignorable = (name.size() > 20 && name.ends_with(".rotary_emb.inv_freq")) ||  // older checkpoints
                           (c.tie_embeddings && name == "lm_head.weight");                   // a tied head saved anyway
    if (!ignorable)
      throw bad_input(files[f].path() + ": unexpected tensor '" + name + "' (not part of a LlamaForCausalLM with this config.json)");
  }
  std::set<std::string> dtypes;
  for (const auto& [hf, mine] : names) {
    auto it = where.find(hf);
    if (it == where.end())
      throw bad_input(dir + ": missing tensor '" + hf + "' that config.json implies" +
                      (hf == "lm_head.weight" ? " (or set tie_word_embeddings)" : ""));
    dtypes.insert(dtype_name(files[it->second].find(hf)->dtype));
  }
  rep.dtype = dtypes.size() == 1 ? *dtypes.begin() : "mixed";
  rep.config.extra["hf"]["dtype"] = rep.dtype;  // export's default
  model = std::make_unique<Model<float>>(rep.config);
  for (const auto& [hf, mine] : names) {
    const ParamInfo& p = model->layout().get(mine);
    files[where.at(hf)].read_f32_into(hf, p.shape, model->params().data() + p.offset);
    ++rep.tensors;
  }
  return rep;
}

void import_hf_llama(const std::string& dir, const std::string& out_dir, bool replace, HfImport* report) {
  std::unique_ptr<Model<float>> model;
  HfImport rep = read_hf_llama(dir, model);
  write_folder_atomically(out_dir, replace, [&](const std::string& tmp) {
    save_model(tmp, *model);
    copy_tokenizer_files(dir, tmp);  // both when both are there: modlm reads tokenizer.model, export writes both
    bool any = false;
    for (const char* f : kSideFiles)
      if (file_exists(dir + "/" + f)) {
        if (!any) fs::create_directories(tmp + "/hf");
        any = true;
        copy_file_checked(dir + "/" + f, tmp + "/hf/" + f);
      }
  });
  if (report) *report = rep;
}

int32_t bos_to_prepend(const std::string& dir, const ModelConfig& c, const std::string& mode) {
  if (mode != "auto" && mode != "on" && mode != "off") throw usage_error("--bos must be auto, on or off, got \"" + mode + "\"");
  if (mode == "off") return -1;
  int64_t id = -1;
  if (c.extra.contains("hf") && c.extra.at("hf").is_object() && c.extra.at("hf").contains("config")) {
    const json& hc = c.extra.at("hf").at("config");
    if (hc.is_object() && hc.contains("bos_token_id") && hc.at("bos_token_id").is_number_integer())
      id = hc.at("bos_token_id").get<int64_t>();
  }
  if (id < 0 || id >= c.vocab_size) {
    if (mode == "on") throw usage_error("--bos on: " + dir + " names no beginning-of-sequence token (bos_token_id of an imported model)");
    return -1;
  }
  if (mode == "auto" && file_exists(dir + "/hf/tokenizer_config.json")) {
    try {
      const json tc = parse_json_file(dir + "/hf/tokenizer_config.json");
      if (tc.is_object() && tc.contains("add_bos_token") && tc.at("add_bos_token") == false) return -1;
    } catch (const Error&) {  // an unreadable side file does not decide
    }
  }
  return (int32_t)id;
}

HfExport export_hf_llama(const std::string& dir, const std::string& out_dir, const std::string& dtype_flag, bool replace) {
  Model<float> m = load_model(dir);
  const ModelConfig& c = m.config();
  if (c.n_moe() > 0)
    throw bad_input(dir + ": a Mixture-of-Experts model cannot be written as LlamaForCausalLM (its MLPs are experts)");
  const json hf = c.extra.contains("hf") && c.extra.at("hf").is_object() ? c.extra.at("hf") : json::object();
  std::string dtype_str = dtype_flag;
  if (dtype_str.empty())
    dtype_str = hf.contains("dtype") && hf.at("dtype").is_string() && hf.at("dtype") != "mixed" ? hf.at("dtype").get<std::string>() : "f32";
  const DType dt = parse_export_dtype(dtype_str);
  HfExport rep;
  rep.dtype = dtype_name(dt);

  json out = hf.contains("config") && hf.at("config").is_object() ? hf.at("config") : json::object();
  json cfg;
  cfg["architectures"] = {"LlamaForCausalLM"};
  cfg["model_type"] = "llama";
  cfg["hidden_size"] = c.d_model;
  cfg["intermediate_size"] = c.d_ff;
  cfg["num_hidden_layers"] = c.n_layers;
  cfg["num_attention_heads"] = c.n_heads;
  cfg["num_key_value_heads"] = c.kv_heads();
  cfg["head_dim"] = c.head_dim();
  cfg["hidden_act"] = "silu";
  cfg["max_position_embeddings"] = c.max_seq_len;
  cfg["rms_norm_eps"] = c.norm_eps;
  cfg["rope_theta"] = c.rope_theta;
  cfg["rope_scaling"] = nullptr;
  cfg["attention_bias"] = false;
  cfg["mlp_bias"] = false;
  cfg["tie_word_embeddings"] = c.tie_embeddings;
  cfg["vocab_size"] = c.vocab_size;
  cfg["torch_dtype"] = torch_dtype_name(dt);
  for (auto it = out.begin(); it != out.end(); ++it) cfg[it.key()] = it.value();

  // Tensors in HF names and the chosen dtype.
  const auto names = hf_llama_names(c);
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<TensorRef> refs;
  std::set<std::string> dense;
  for (const auto& [hfname, mine] : names) {
    dense.insert(mine);
    const ParamInfo& p = m.layout().get(mine);
    const float* src = m.params().data() + p.offset;
    const void* data = src;
    if (dt != DType::F32) {
      bufs.emplace_back(p.numel * 2);
      const size_t bad = to_16bit(src, p.numel, reinterpret_cast<uint16_t*>(bufs.back().data()), dt == DType::F16);
      if (bad < p.numel)
        throw bad_input(dir + ": tensor '" + mine + "' holds " + std::to_string(src[bad]) + ", beyond the f16 range (use --dtype bf16 or f32)");
      data = bufs.back().data();
    }
    refs.push_back({hfname, dt, p.shape, data});
  }
  for (const ParamInfo& p : m.layout().params()) rep.dropped += !dense.count(p.name);
  rep.tensors = refs.size();
  const std::string text = cfg.dump(2) + "\n";
  write_folder_atomically(out_dir, replace, [&](const std::string& tmp) {
    write_safetensors(tmp + "/model.safetensors", refs, {{"format", "pt"}});
    atomic_write_file(tmp + "/config.json", [&](std::FILE* f) { fwrite_checked(f, text.data(), text.size(), tmp + "/config.json"); });
    copy_tokenizer_files(dir, tmp);
    for (const char* f : kSideFiles)
      if (file_exists(dir + "/hf/" + f)) copy_file_checked(dir + "/hf/" + f, tmp + "/" + f);
  });
  return rep;
}

}  // namespace modlm::io
