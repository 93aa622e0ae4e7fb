// Hugging Face Llama import and export: logits against an independent HF forward, bit-exact
// round trips, and malformed folders refused with nothing written.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_helpers.h"
#include "hf_folder.h"
#include "io/hf_llama.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/model.h"

using namespace modlm;
using namespace modlm::testing;
namespace fs = std::filesystem;

namespace {

std::string tokenizer() { return hf_test_tokenizer(project_train_gz()); }

std::vector<int> some_tokens(int V, int T, uint64_t seed) {
  Rng r(seed);
  std::vector<int> t(T);
  for (auto& x : t) x = (int)r.below(V);
  return t;
}

// Bytes of every tensor of a HF folder (single file or shards), by name, with dtype and shape.
std::map<std::string, std::tuple<io::DType, std::vector<int64_t>, std::string>> tensors_of(const std::string& dir) {
  std::map<std::string, std::tuple<io::DType, std::vector<int64_t>, std::string>> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    io::SafetensorsFile f = io::SafetensorsFile::open(e.path().string());
    for (const io::TensorInfo& t : f.tensors())
      out[t.name] = {t.dtype, t.shape, std::string((const char*)f.data(t), t.end - t.begin)};
  }
  return out;
}

struct Case {
  const char* name;
  HfSpec spec;
};

std::vector<Case> cases() {
  std::vector<Case> c;
  HfSpec a;  // GQA 4 on 2, untied, f32, one file
  c.push_back({"gqa_untied_f32", a});
  HfSpec b;
  b.Hkv = 4, b.tied = true, b.dtype = io::DType::BF16, b.shards = 3, b.theta = 500000.0;  // MHA, tied, bf16, sharded
  c.push_back({"mha_tied_bf16_sharded", b});
  HfSpec d;
  d.Hkv = 1, d.dtype = io::DType::F16, d.shards = 2, d.L = 3, d.eps = 1e-5;  // one KV head, f16, sharded
  c.push_back({"mqa_untied_f16_sharded", d});
  return c;
}

}  // namespace

TEST(HfImport, LogitsMatchAnIndependentHfLlamaForwardAndExportRoundTripsBitForBit) {
  const std::string root = temp_dir("hf_import");
  for (const Case& k : cases()) {
    SCOPED_TRACE(k.name);
    const std::string hf = root + "/" + k.name, out = hf + "_modlm", back = hf + "_back";
    HfTensors t = write_hf_folder(hf, k.spec, tokenizer(), 3);
    auto r = run_modlm("import hf " + hf + " " + out + " --json");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("\"tokenizer\":\"tokenizer.model\""), std::string::npos) << r.out;

    Model<float> m = io::load_model(out);
    EXPECT_EQ(m.config().kv_heads(), k.spec.Hkv);
    EXPECT_EQ(m.config().tie_embeddings, k.spec.tied);
    EXPECT_TRUE(fs::exists(out + "/tokenizer.model"));
    EXPECT_TRUE(fs::exists(out + "/hf/generation_config.json"));
    const int T = 19, V = k.spec.V;
    std::vector<int> tok = some_tokens(V, T, 4);
    std::vector<int32_t> tok32(tok.begin(), tok.end());
    m.forward(tok32.data(), nullptr, 1, T, ForwardOptions{});
    auto want = hf_llama_forward(t, k.spec, tok);
    double worst = 0, scale = 0;
    for (int p = 0; p < T; ++p)
      for (int v = 0; v < V; ++v) {
        worst = std::max(worst, std::abs(m.logits()[(size_t)p * V + v] - want[p][v]));
        scale = std::max(scale, std::abs(want[p][v]));
      }
    EXPECT_LT(worst / std::max(1.0, scale), 2e-5) << "max |logit difference| " << worst << " of " << scale;

    // Export writes the same tensors, bit for bit, in the dtype it was imported from.
    r = run_modlm("export hf " + out + " " + back);
    ASSERT_EQ(r.code, 0) << r.out;
    auto a = tensors_of(hf), b = tensors_of(back);
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [name, v] : a) {
      ASSERT_TRUE(b.count(name)) << name;
      EXPECT_EQ(std::get<0>(b[name]), std::get<0>(v)) << name;
      EXPECT_EQ(std::get<1>(b[name]), std::get<1>(v)) << name;
      EXPECT_TRUE(std::get<2>(b[name]) == std::get<2>(v)) << name << ": bytes differ";
    }
    // Every key of the original config.json comes back with its value.
    json ca = json::parse(std::ifstream(hf + "/config.json")), cb = json::parse(std::ifstream(back + "/config.json"));
    for (auto it = ca.begin(); it != ca.end(); ++it) EXPECT_EQ(cb[it.key()], it.value()) << it.key();
    EXPECT_TRUE(fs::exists(back + "/tokenizer.model"));
    EXPECT_TRUE(fs::exists(back + "/generation_config.json"));
    // And the round trip imports again to the same modlm weights.
    ASSERT_EQ(run_modlm("import hf " + back + " " + out + "2").code, 0);
    Model<float> m2 = io::load_model(out + "2");
    ASSERT_EQ(m2.params().size(), m.params().size());
    EXPECT_EQ(0, std::memcmp(m2.params().data(), m.params().data(), sizeof(float) * m.params().size()));
  }
  fs::remove_all(root);
}

TEST(HfImport, MalformedFoldersExit3AndWriteNothing) {
  const std::string root = temp_dir("hf_bad");
  HfSpec s;
  s.shards = 2;
  const std::string good = root + "/good";
  write_hf_folder(good, s, tokenizer(), 5);
  int n = 0;
  auto expect_refused = [&](const std::string& what, const std::function<void(const std::string&)>& spoil,
                            const std::vector<std::string>& words) {
    SCOPED_TRACE(what);
    const std::string dir = root + "/case" + std::to_string(n++);
    fs::copy(good, dir, fs::copy_options::recursive);
    spoil(dir);
    auto r = run_modlm("import hf " + dir + " " + dir + "_out");
    EXPECT_EQ(r.code, 3) << r.out;
    for (const auto& w : words) EXPECT_NE(r.out.find(w), std::string::npos) << "missing \"" << w << "\" in: " << r.out;
    EXPECT_FALSE(fs::exists(dir + "_out"));
    for (const auto& e : fs::directory_iterator(root))
      EXPECT_EQ(e.path().string().find(".partial."), std::string::npos) << e.path();
  };
  auto edit_json = [](const std::string& path, const std::function<void(json&)>& f) {
    json j = json::parse(std::ifstream(path));
    f(j);
    std::ofstream(path) << j.dump();
  };
  const std::string index = "/model.safetensors.index.json";
  expect_refused("missing shard", [](const std::string& d) { fs::remove(d + "/model-00002-of-00002.safetensors"); },
                 {"model-00002-of-00002.safetensors", "missing"});
  expect_refused("index names an absent tensor", [&](const std::string& d) {
    edit_json(d + index, [](json& j) { j["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001-of-00002.safetensors"; });
  }, {"model.layers.0.mlp.extra.weight", "does not hold it"});
  expect_refused("index misses a tensor", [&](const std::string& d) {
    edit_json(d + index, [](json& j) { j["weight_map"].erase("model.norm.weight"); });
  }, {"model.norm.weight", "missing tensor"});
  expect_refused("shard path escapes the folder", [&](const std::string& d) {
    edit_json(d + index, [](json& j) { j["weight_map"]["model.norm.weight"] = "../good/model-00001-of-00002.safetensors"; });
  }, {"plain file name"});
  expect_refused("wrong shape", [&](const std::string& d) {
    edit_json(d + "/config.json", [](json& j) { j["intermediate_size"] = 20; });
  }, {"mlp.gate_proj.weight", "[20, 16]", "[24, 16]"});
  expect_refused("unsupported architecture", [&](const std::string& d) {
    edit_json(d + "/config.json", [](json& j) { j["architectures"] = {"GPT2LMHeadModel"}; });
  }, {"architectures", "GPT2LMHeadModel"});
  expect_refused("rope scaling", [&](const std::string& d) {
    edit_json(d + "/config.json", [](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; });
  }, {"rope_scaling", "llama3"});
  expect_refused("biases", [&](const std::string& d) { edit_json(d + "/config.json", [](json& j) { j["attention_bias"] = true; }); },
                 {"attention_bias"});
  expect_refused("GQA heads that do not divide", [&](const std::string& d) {
    edit_json(d + "/config.json", [](json& j) { j["num_key_value_heads"] = 3; });
  }, {"n_kv_heads"});
  expect_refused("no tokenizer", [](const std::string& d) { fs::remove(d + "/tokenizer.model"); }, {"tokenizer"});
  expect_refused("config not JSON", [](const std::string& d) { std::ofstream(d + "/config.json") << "{\"hidden_size\": 16,"; },
                 {"config.json", "JSON"});
  expect_refused("hidden_size missing", [&](const std::string& d) { edit_json(d + "/config.json", [](json& j) { j.erase("hidden_size"); }); },
                 {"hidden_size", "required"});
  expect_refused("tensor not finite", [&](const std::string& d) {
    // Rewrite shard 1 with a NaN in its first tensor.
    const std::string f = d + "/model-00001-of-00002.safetensors";
    io::SafetensorsFile in = io::SafetensorsFile::open(f);
    std::vector<std::vector<float>> vals;
    std::vector<io::TensorRef> refs;
    for (const auto& t : in.tensors()) vals.push_back(in.read_f32(t.name, t.shape));
    vals[0][0] = NAN;
    for (size_t i = 0; i < in.tensors().size(); ++i)
      refs.push_back({in.tensors()[i].name, io::DType::F32, in.tensors()[i].shape, vals[i].data()});
    io::write_safetensors(f + ".new", refs);
    fs::rename(f + ".new", f);
  }, {"finite"});
  // An existing, non-empty OUT_DIR is kept unless --force.
  fs::create_directories(root + "/busy");
  std::ofstream(root + "/busy/keep.txt") << "mine";
  auto r = run_modlm("import hf " + good + " " + root + "/busy");
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_TRUE(fs::exists(root + "/busy/keep.txt"));
  r = run_modlm("import hf " + good + " " + root + "/busy --force");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_FALSE(fs::exists(root + "/busy/keep.txt"));
  EXPECT_TRUE(fs::exists(root + "/busy/model.safetensors"));
  fs::remove_all(root);
}

TEST(HfImport, ImportedModelsGetTheirBosTokenBeforePrompts) {
  const std::string root = temp_dir("hf_bos");
  HfSpec s;
  write_hf_folder(root + "/hf", s, tokenizer(), 7);  // bos_token_id 1
  ASSERT_EQ(run_modlm("import hf " + root + "/hf " + root + "/m").code, 0);
  auto tokens = [&](const std::string& dir, const std::string& bos) {
    auto r = run_modlm("generate " + dir + " --prompt 'The cat' --max-new 2 --greedy --json --bos " + bos);
    EXPECT_EQ(r.code, 0) << r.out;
    return r.code == 0 ? json::parse(r.out)["prompt_tokens"].get<int>() : -1;
  };
  const int plain = tokens(root + "/m", "off");
  EXPECT_EQ(tokens(root + "/m", "auto"), plain + 1);
  EXPECT_EQ(tokens(root + "/m", "on"), plain + 1);
  // The HF tokenizer config can say no.
  std::ofstream(root + "/m/hf/tokenizer_config.json") << R"({"add_bos_token": false})";
  EXPECT_EQ(tokens(root + "/m", "auto"), plain);
  EXPECT_EQ(tokens(root + "/m", "on"), plain + 1);
  // A model that names no BOS token: auto adds none, on is a usage error.
  ASSERT_EQ(run_modlm("init " + root + "/own --vocab bytes --d-model 16 --n-layers 1 --n-heads 2 --d-ff 16").code, 0);
  EXPECT_EQ(tokens(root + "/own", "auto"), 7);
  EXPECT_EQ(run_modlm("generate " + root + "/own --prompt x --bos on").code, 2);
  EXPECT_EQ(run_modlm("generate " + root + "/own --prompt x --bos maybe").code, 2);
  fs::remove_all(root);
}

TEST(HfExport, ModModelsExportTheirBackboneAndMoeModelsAreRefused) {
  const std::string root = temp_dir("hf_export");
  auto r = run_modlm("init " + root + "/mod --vocab bytes --d-model 16 --n-layers 2 --n-heads 4 --n-kv-heads 2 --d-ff 24 --routing every_other");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_modlm("export hf " + root + "/mod " + root + "/mod_hf --dtype bf16 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"dropped\":5"), std::string::npos) << r.out;  // router + 4 predictor tensors
  auto t = tensors_of(root + "/mod_hf");
  EXPECT_EQ(t.size(), 1 + 2 * 9 + 1 + 1u);
  EXPECT_EQ(std::get<0>(t["model.layers.1.self_attn.k_proj.weight"]), io::DType::BF16);
  EXPECT_EQ(std::get<1>(t["model.layers.1.self_attn.k_proj.weight"]), (std::vector<int64_t>{8, 16}));
  json c = json::parse(std::ifstream(root + "/mod_hf/config.json"));
  EXPECT_EQ(c["num_key_value_heads"], 2);
  EXPECT_EQ(c["torch_dtype"], "bfloat16");
  EXPECT_EQ(c["architectures"][0], "LlamaForCausalLM");
  r = run_modlm("init " + root + "/moe --vocab bytes --d-model 16 --n-layers 2 --n-heads 4 --d-ff 24 --n-experts 2 --d-expert 8");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_modlm("export hf " + root + "/moe " + root + "/moe_hf");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("Mixture-of-Experts"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(root + "/moe_hf"));
  r = run_modlm("export hf " + root + "/mod " + root + "/x --dtype f8");
  EXPECT_EQ(r.code, 2) << r.out;
  fs::remove_all(root);
}

TEST(Half, F16ConversionIsExactBothWaysAndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_float((uint16_t)h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f))));
      continue;
    }
    ASSERT_EQ(float_to_f16(f), h) << h;
  }
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-11f), 0x3c00);                 // tie, even below: down
  EXPECT_EQ(float_to_f16(1.0f + 0x1p-10f + 0x1p-11f), 0x3c02);      // tie, odd below: up
  EXPECT_EQ(float_to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_f16(65520.0f), 0x7c00);                          // rounds to infinity
  EXPECT_EQ(float_to_f16(0x1p-25f), 0x0000);                          // tie to even: zero
  EXPECT_EQ(float_to_f16(0x1p-25f + 0x1p-30f), 0x0001);
  EXPECT_EQ(float_to_f16(-0x1p-14f), 0x8400);
}
