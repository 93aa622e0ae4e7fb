// Tiny Hugging Face LlamaForCausalLM folders for tests (random weights, written the way
// transformers' save_pretrained lays them out), and an independent forward pass over the HF
// tensors: written from the transformers modelling code (rotate_half, repeat_kv, the
// inv_freq formula), in double, looping over tokens. It shares no code with modlm's model.
#pragma once
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "temp_dir.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "ops/bf16.h"
#include "util/rng.h"

namespace modlm::testing {

struct HfSpec {
  int V = 300, D = 16, L = 2, H = 4, Hkv = 2, F = 24, max_pos = 64;
  bool tied = false;
  int shards = 1;  // > 1: model-0000i-of-0000n.safetensors + model.safetensors.index.json
  io::DType dtype = io::DType::F32;
  double theta = 10000.0, eps = 1e-6;
};

using HfTensors = std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>>;

// A SentencePiece tokenizer.model of `vocab` pieces trained on the shipped corpus, once per
// process (copied into each folder).
inline std::string hf_test_tokenizer(const std::string& corpus_gz) {
  static std::string path;
  if (path.empty()) {
    const std::string dir = std::filesystem::temp_directory_path() / ("modlm_hf_tok_" + std::to_string(::getpid()));
    remove_at_exit(dir);
    io::train_sentencepiece(corpus_gz, 280, dir, 1, 2000);
    path = dir + "/tokenizer.model";
  }
  return path;
}

// Writes the folder; returns the tensors by HF name with the values AS STORED (rounded to the
// dtype), so a reference computed from them is exact for the file.
inline HfTensors write_hf_folder(const std::string& dir, const HfSpec& s, const std::string& tokenizer_model, uint64_t seed = 1) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  HfTensors t;
  Rng r(seed);
  const int Dh = s.D / s.H;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm) {
    size_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(n);
    for (auto& x : v) {
      float f = norm ? float(1.0 + 0.2 * (2 * r.uniform() - 1)) : float(0.25 * r.normal());
      if (s.dtype == io::DType::BF16) f = bf16_to_float(float_to_bf16(f));
      if (s.dtype == io::DType::F16) f = f16_to_float(float_to_f16(f));
      x = f;
    }
    t[name] = {shape, v};
  };
  add("model.embed_tokens.weight", {s.V, s.D}, false);
  for (int l = 0; l < s.L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {s.D}, true);
    add(p + "self_attn.q_proj.weight", {s.H * Dh, s.D}, false);
    add(p + "self_attn.k_proj.weight", {s.Hkv * Dh, s.D}, false);
    add(p + "self_attn.v_proj.weight", {s.Hkv * Dh, s.D}, false);
    add(p + "self_attn.o_proj.weight", {s.D, s.H * Dh}, false);
    add(p + "post_attention_layernorm.weight", {s.D}, true);
    add(p + "mlp.gate_proj.weight", {s.F, s.D}, false);
    add(p + "mlp.up_proj.weight", {s.F, s.D}, false);
    add(p + "mlp.down_proj.weight", {s.D, s.F}, false);
  }
  add("model.norm.weight", {s.D}, true);
  if (!s.tied) add("lm_head.weight", {s.V, s.D}, false);

  // Stored bytes in the dtype.
  std::map<std::string, std::vector<uint16_t>> half;
  std::vector<io::TensorRef> all;
  for (auto& [name, sv] : t) {
    const void* data = sv.second.data();
    if (s.dtype != io::DType::F32) {
      auto& h = half[name];
      for (float f : sv.second) h.push_back(s.dtype == io::DType::BF16 ? float_to_bf16(f) : float_to_f16(f));
      data = h.data();
    }
    all.push_back({name, s.dtype, sv.first, data});
  }
  if (s.shards <= 1) {
    io::write_safetensors(dir + "/model.safetensors", all, {{"format", "pt"}});
  } else {
    json wm = json::object();
    for (int k = 0; k < s.shards; ++k) {
      char file[64];
      std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", k + 1, s.shards);
      std::vector<io::TensorRef> part;
      for (size_t i = k; i < all.size(); i += s.shards) part.push_back(all[i]), wm[all[i].name] = file;
      io::write_safetensors(dir + "/" + file, part, {{"format", "pt"}});
    }
    std::ofstream(dir + "/model.safetensors.index.json") << json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump(2);
  }
  json cfg{{"architectures", {"LlamaForCausalLM"}},
           {"model_type", "llama"},
           {"hidden_size", s.D},
           {"intermediate_size", s.F},
           {"num_hidden_layers", s.L},
           {"num_attention_heads", s.H},
           {"num_key_value_heads", s.Hkv},
           {"hidden_act", "silu"},
           {"max_position_embeddings", s.max_pos},
           {"rms_norm_eps", s.eps},
           {"rope_theta", s.theta},
           {"rope_scaling", nullptr},
           {"attention_bias", false},
           {"tie_word_embeddings", s.tied},
           {"vocab_size", s.V},
           {"bos_token_id", 1},
           {"eos_token_id", 2},
           {"initializer_range", 0.02},
           {"torch_dtype", s.dtype == io::DType::F32 ? "float32" : s.dtype == io::DType::BF16 ? "bfloat16" : "float16"},
           {"transformers_version", "4.45.0"}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  std::ofstream(dir + "/generation_config.json") << R"({"bos_token_id": 1, "eos_token_id": 2})";
  std::filesystem::copy_file(tokenizer_model, dir + "/tokenizer.model", std::filesystem::copy_options::overwrite_existing);
  return t;
}

// transformers' LlamaForCausalLM forward for one sequence, in double: logits [T][V].
inline std::vector<std::vector<double>> hf_llama_forward(const HfTensors& t, const HfSpec& s, const std::vector<int>& tokens) {
  using Vec = std::vector<double>;
  const int D = s.D, H = s.H, Hkv = s.Hkv, Dh = D / H, n_rep = H / Hkv, T = (int)tokens.size();
  auto W = [&](const std::string& n) -> const std::vector<float>& { return t.at(n).second; };
  auto linear = [](const std::vector<float>& w, const Vec& x, int out) {  // x @ w.T, w [out, in]
    Vec y(out, 0.0);
    const size_t in = x.size();
    for (int o = 0; o < out; ++o)
      for (size_t i = 0; i < in; ++i) y[o] += (double)w[o * in + i] * x[i];
    return y;
  };
  auto rmsnorm = [&](const Vec& x, const std::vector<float>& w) {
    double var = 0;
    for (double v : x) var += v * v;
    var /= x.size();
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = w[i] * (x[i] / std::sqrt(var + s.eps));
    return y;
  };
  // LlamaRotaryEmbedding: inv_freq = 1 / base^(arange(0, dim, 2) / dim); emb = cat(freqs, freqs).
  auto rope = [&](Vec& x, int heads, int pos) {
    for (int h = 0; h < heads; ++h) {
      Vec head(x.begin() + h * Dh, x.begin() + (h + 1) * Dh), rot(Dh), cos(Dh), sin(Dh);
      for (int j = 0; j < Dh; ++j) {
        const int i = j % (Dh / 2);
        const double inv_freq = 1.0 / std::pow(s.theta, (2.0 * i) / Dh);
        cos[j] = std::cos(pos * inv_freq), sin[j] = std::sin(pos * inv_freq);
      }
      for (int j = 0; j < Dh / 2; ++j) rot[j] = -head[j + Dh / 2], rot[j + Dh / 2] = head[j];  // rotate_half
      for (int j = 0; j < Dh; ++j) x[h * Dh + j] = head[j] * cos[j] + rot[j] * sin[j];
    }
  };
  std::vector<Vec> hs(T);
  const auto& E = W("model.embed_tokens.weight");
  for (int p = 0; p < T; ++p) hs[p] = Vec(E.begin() + (size_t)tokens[p] * D, E.begin() + (size_t)(tokens[p] + 1) * D);
  for (int l = 0; l < s.L; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    std::vector<Vec> q(T), k(T), v(T);
    for (int p = 0; p < T; ++p) {
      Vec xn = rmsnorm(hs[p], W(pre + "input_layernorm.weight"));
      q[p] = linear(W(pre + "self_attn.q_proj.weight"), xn, H * Dh);
      k[p] = linear(W(pre + "self_attn.k_proj.weight"), xn, Hkv * Dh);
      v[p] = linear(W(pre + "self_attn.v_proj.weight"), xn, Hkv * Dh);
      rope(q[p], H, p), rope(k[p], Hkv, p);
    }
    for (int p = 0; p < T; ++p) {
      Vec att(H * Dh, 0.0);
      for (int h = 0; h < H; ++h) {
        const int kvh = h / n_rep;  // repeat_kv
        Vec w(p + 1);
        double mx = -1e300;
        for (int j = 0; j <= p; ++j) {
          double d = 0;
          for (int e = 0; e < Dh; ++e) d += q[p][h * Dh + e] * k[j][kvh * Dh + e];
          w[j] = d / std::sqrt((double)Dh);
          mx = std::max(mx, w[j]);
        }
        double z = 0;
        for (double& x : w) z += (x = std::exp(x - mx));
        for (int j = 0; j <= p; ++j)
          for (int e = 0; e < Dh; ++e) att[h * Dh + e] += w[j] / z * v[j][kvh * Dh + e];
      }
      Vec o = linear(W(pre + "self_attn.o_proj.weight"), att, D);
      for (int i = 0; i < D; ++i) hs[p][i] += o[i];
      Vec xn = rmsnorm(hs[p], W(pre + "post_attention_layernorm.weight"));
      Vec g = linear(W(pre + "mlp.gate_proj.weight"), xn, s.F), u = linear(W(pre + "mlp.up_proj.weight"), xn, s.F);
      for (int i = 0; i < s.F; ++i) g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      Vec d = linear(W(pre + "mlp.down_proj.weight"), g, D);
      for (int i = 0; i < D; ++i) hs[p][i] += d[i];
    }
  }
  std::vector<Vec> logits(T);
  const auto& head = s.tied ? E : W("lm_head.weight");
  for (int p = 0; p < T; ++p) logits[p] = linear(head, rmsnorm(hs[p], W("model.norm.weight")), s.V);
  return logits;
}

}  // namespace modlm::testing
