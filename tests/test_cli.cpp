// `modlm init` / `eval` / `flops` as a user runs them, including every bad-input path.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "cli_helpers.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/families.h"
#include "util/error.h"
#include "model/flops.h"
#include "ops/gemm.h"

using namespace modlm;
using namespace modlm::testing;
namespace fs = std::filesystem;

static std::string small_text(const std::string& dir, size_t bytes = 60000) {
  // A slice of real English text: the first bytes of the shipped validation corpus.
  std::string path = dir + "/text.txt";
  EXPECT_TRUE(write_valid_head(path, bytes));
  return path;
}

TEST(Cli, HelpOnEverySubcommand) {
  for (const char* sub : {"", "init", "eval", "flops", "train", "bench train", "bench generate", "generate", "demo", "sweep", "serve", "bench serve", "import hf", "export hf", "tokenizer"}) {
    auto r = run_modlm(std::string(sub) + " --help");
    EXPECT_EQ(r.code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub;
  }
  EXPECT_EQ(run_modlm("no-such-command").code, 2);
  EXPECT_EQ(run_modlm("init").code, 2);  // missing MODEL_DIR
  EXPECT_EQ(run_modlm("import").code, 2);  // needs `hf`
}

TEST(Cli, InitWritesSpecFolder) {
  auto dir = temp_dir("init");
  auto r = run_modlm("init " + dir + "/m --d-model 64 --n-layers 2 --n-heads 4 --d-ff 96 --vocab bytes --seed 1");
  ASSERT_EQ(r.code, 0) << r.out;
  ModelConfig c = ModelConfig::load(dir + "/m/config.json");
  EXPECT_EQ(c.d_model, 64);
  EXPECT_EQ(c.tokenizer, "bytes");
  io::SafetensorsFile f = io::SafetensorsFile::open(dir + "/m/model.safetensors");
  // Exactly the SPEC §6 names and shapes, fp32.
  std::map<std::string, std::vector<int64_t>> want = {{"tok_embeddings.weight", {256, 64}}, {"norm.weight", {64}}, {"output.weight", {256, 64}}};
  for (int l = 0; l < 2; ++l) {
    std::string p = "layers." + std::to_string(l) + ".";
    want[p + "attn_norm.weight"] = {64};
    want[p + "mlp_norm.weight"] = {64};
    for (const char* w : {"wq", "wk", "wv", "wo"}) want[p + "attn." + w + ".weight"] = {64, 64};
    want[p + "mlp.w1.weight"] = {96, 64};
    want[p + "mlp.w3.weight"] = {96, 64};
    want[p + "mlp.w2.weight"] = {64, 96};
  }
  EXPECT_EQ(f.tensors().size(), want.size());
  for (const auto& t : f.tensors()) {
    ASSERT_TRUE(want.count(t.name)) << t.name;
    EXPECT_EQ(t.shape, want[t.name]) << t.name;
    EXPECT_EQ(t.dtype, io::DType::F32);
  }
  // Same seed, same bytes; refuses to overwrite without --force.
  EXPECT_EQ(run_modlm("init " + dir + "/m --d-model 64 --n-layers 2 --n-heads 4 --d-ff 96 --vocab bytes").code, 2);
  ASSERT_EQ(run_modlm("init " + dir + "/m2 --d-model 64 --n-layers 2 --n-heads 4 --d-ff 96 --vocab bytes --seed 1").code, 0);
  auto slurp = [](const std::string& p) { std::ifstream f(p, std::ios::binary); return std::string(std::istreambuf_iterator<char>(f), {}); };
  EXPECT_EQ(slurp(dir + "/m/model.safetensors"), slurp(dir + "/m2/model.safetensors"));
}

TEST(Cli, InitRejectsImpossibleShapes) {
  auto dir = temp_dir("init_bad");
  auto r = run_modlm("init " + dir + "/a --d-model 60 --n-heads 8 --vocab bytes");
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.out.find("divisible"), std::string::npos) << r.out;
  r = run_modlm("init " + dir + "/b --d-model 36 --n-heads 4 --vocab bytes");  // head dim 9
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.out.find("even"), std::string::npos) << r.out;
  r = run_modlm("init " + dir + "/c --d-model 64 --n-heads 4 --vocab bytes --routing all --capacity 1.5");
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.out.find("capacity"), std::string::npos) << r.out;
  EXPECT_EQ(run_modlm("init " + dir + "/d --vocab lots").code, 2);
  EXPECT_FALSE(fs::exists(dir + "/a/model.safetensors"));
}

TEST(Cli, EvalOfFreshModelIsNearLnV) {
  auto dir = temp_dir("eval");
  auto text = small_text(dir);
  ASSERT_EQ(run_modlm("init " + dir + "/m --d-model 64 --n-layers 2 --n-heads 4 --d-ff 96 --vocab bytes").code, 0);
  auto r = run_modlm("eval " + dir + "/m --data " + text + " --seq-len 64 --max-windows 20 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(j["windows"], 20);
  EXPECT_EQ(j["tokens"], 20 * 64);
  EXPECT_NEAR(j["loss"].get<double>(), std::log(256.0), 0.3);
  EXPECT_EQ(j["flops_executed"], j["flops_analytic"]);
  // Human output names the loss and perplexity.
  r = run_modlm("eval " + dir + "/m --data " + text + " --seq-len 64 --max-windows 2");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("perplexity"), std::string::npos);
}

TEST(Cli, EvalUsesExactlyTheSpecWindows) {
  // A model whose loss is computable by hand would be overkill: instead the loss over windows
  // must equal the mean of per-window losses evaluated one at a time (batch 1 vs batch 3).
  auto dir = temp_dir("eval_windows");
  auto text = small_text(dir);
  ASSERT_EQ(run_modlm("init " + dir + "/m --d-model 32 --n-layers 1 --n-heads 2 --d-ff 48 --vocab bytes").code, 0);
  auto a = json::parse(run_modlm("eval " + dir + "/m --data " + text + " --seq-len 50 --max-windows 7 --batch 1 --json").out);
  auto b = json::parse(run_modlm("eval " + dir + "/m --data " + text + " --seq-len 50 --max-windows 7 --batch 3 --json").out);
  EXPECT_NEAR(a["loss"].get<double>(), b["loss"].get<double>(), 1e-5);
  EXPECT_EQ(a["windows"], 7);
  // Too few tokens for one window.
  std::ofstream(dir + "/tiny.txt") << "short";
  auto r = run_modlm("eval " + dir + "/m --data " + dir + "/tiny.txt --seq-len 50");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("window"), std::string::npos) << r.out;
}

TEST(Cli, EvalReadsAFolderWrittenByAnotherTool) {
  // Another tool's file: tensors in a different order, bf16/f16 copies, extra config keys.
  auto dir = temp_dir("foreign");
  auto text = small_text(dir);
  ASSERT_EQ(run_modlm("init " + dir + "/m --d-model 32 --n-layers 1 --n-heads 2 --d-ff 48 --vocab bytes").code, 0);
  auto base = json::parse(run_modlm("eval " + dir + "/m --data " + text + " --seq-len 32 --max-windows 4 --json").out);
  fs::create_directories(dir + "/f");
  io::SafetensorsFile src = io::SafetensorsFile::open(dir + "/m/model.safetensors");
  std::vector<io::TensorRef> refs;
  for (auto it = src.tensors().rbegin(); it != src.tensors().rend(); ++it)
    refs.push_back({it->name, it->dtype, it->shape, src.data(*it)});
  io::write_safetensors(dir + "/f/model.safetensors", refs, {{"format", "pt"}});
  json cfg = json::parse(std::ifstream(dir + "/m/config.json"));
  cfg["architectures"] = {"SomethingElse"};
  std::ofstream(dir + "/f/config.json") << cfg.dump();
  auto r = run_modlm("eval " + dir + "/f --data " + text + " --seq-len 32 --max-windows 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["loss"], base["loss"]);
}

TEST(Cli, BrokenModelFilesGiveClearErrors) {
  auto dir = temp_dir("broken");
  auto text = small_text(dir, 5000);
  ASSERT_EQ(run_modlm("init " + dir + "/m --d-model 32 --n-layers 1 --n-heads 2 --d-ff 48 --vocab bytes").code, 0);
  const std::string st = dir + "/m/model.safetensors";
  auto eval = [&] { return run_modlm("eval " + dir + "/m --data " + text + " --seq-len 16 --max-windows 1"); };
  fs::copy_file(st, dir + "/good.safetensors");
  auto restore = [&] { fs::copy_file(dir + "/good.safetensors", st, fs::copy_options::overwrite_existing); };

  fs::resize_file(st, fs::file_size(st) - 100);  // truncated
  auto r = eval();
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("model.safetensors"), std::string::npos) << r.out;

  restore();  // a NaN in the weights
  {
    io::SafetensorsFile f = io::SafetensorsFile::open(st);
    size_t off = 8 + 0;
    uint64_t hlen;
    std::ifstream in(st, std::ios::binary);
    in.read(reinterpret_cast<char*>(&hlen), 8);
    off = 8 + hlen + f.find("norm.weight")->begin;
    in.close();
    std::fstream io(st, std::ios::binary | std::ios::in | std::ios::out);
    io.seekp((std::streamoff)off);
    float nan = std::nanf("");
    io.write(reinterpret_cast<const char*>(&nan), 4);
  }
  r = eval();
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("norm.weight"), std::string::npos) << r.out;

  restore();  // a config that disagrees with the tensors
  json cfg = json::parse(std::ifstream(dir + "/m/config.json"));
  cfg["d_ff"] = 64;
  std::ofstream(dir + "/m/config.json") << cfg.dump();
  r = eval();
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("mlp.w1.weight"), std::string::npos) << r.out;

  cfg["d_ff"] = "wide";
  std::ofstream(dir + "/m/config.json") << cfg.dump();
  r = eval();
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("d_ff"), std::string::npos) << r.out;

  r = run_modlm("eval " + dir + "/nothing --data " + text);
  EXPECT_EQ(r.code, 4) << r.out;
  r = run_modlm("eval " + dir + "/m --data " + dir + "/missing.txt");
  EXPECT_NE(r.code, 0);
}

TEST(Cli, FlopsMatchesHandComputedCounts) {
  auto dir = temp_dir("flops");
  // D=8, L=2 (layer 1 routed at c=0.25), H=2, F=12, V=16, Hp=4, T=8 -> k = 2.
  std::ofstream(dir + "/c.json") << R"({"vocab_size":16,"d_model":8,"n_layers":2,"n_heads":2,"d_ff":12,
    "routing":{"layers":"every_other","capacity":0.25,"predictor_hidden":4}})";
  auto r = run_modlm("flops " + dir + "/c.json --seq-len 8 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = json::parse(r.out);
  // dense layer: 8 tokens; routed: 2 tokens.
  int64_t proj = 2 * 8 * 4 * 64 + 2 * 2 * 4 * 64;
  int64_t mlp = 2 * 8 * 3 * 8 * 12 + 2 * 2 * 3 * 8 * 12;
  int64_t attn = 4 * 4 * 2 * (8 * 9 / 2) + 4 * 4 * 2 * (2 * 3 / 2);
  int64_t router = 2 * 8 * 8 + 2 * 8 * (8 * 4 + 4);
  int64_t head = 2 * 8 * 8 * 16;
  EXPECT_EQ(j["model"]["projections"], proj);
  EXPECT_EQ(j["model"]["mlp"], mlp);
  EXPECT_EQ(j["model"]["attention"], attn);
  EXPECT_EQ(j["model"]["router"], router);
  EXPECT_EQ(j["model"]["head"], head);
  EXPECT_EQ(j["model"]["total"], proj + mlp + attn + router + head);
  int64_t dense = 2 * (2 * 8 * 4 * 64 + 2 * 8 * 3 * 8 * 12 + 4 * 4 * 2 * 36) + head;
  EXPECT_EQ(j["dense_twin"]["total"], dense);
  EXPECT_EQ(run_modlm("flops " + dir + "/c.json --seq-len 0").code, 2);
}

TEST(Cli, TokenizerTrainThenInitAndEvalWithIt) {
  auto dir = temp_dir("spm");
  auto text = small_text(dir, 200000);
  auto r = run_modlm("tokenizer train --input " + text + " --vocab-size 400 --out " + dir + "/tok");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_modlm("init " + dir + "/m --tokenizer " + dir + "/tok/tokenizer.model --d-model 32 --n-layers 1 --n-heads 2 --d-ff 48");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(ModelConfig::load(dir + "/m/config.json").vocab_size, 400);
  EXPECT_TRUE(fs::exists(dir + "/m/tokenizer.model"));
  r = run_modlm("eval " + dir + "/m --data " + text + " --seq-len 32 --max-windows 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NEAR(json::parse(r.out)["loss"].get<double>(), std::log(400.0), 0.3);
  // A vocabulary smaller than the tokenizer's is refused; bad vocab sizes for training too.
  EXPECT_EQ(run_modlm("init " + dir + "/m2 --tokenizer " + dir + "/tok/tokenizer.model --vocab 300 --d-model 32 --n-heads 2").code, 2);
  EXPECT_EQ(run_modlm("tokenizer train --input " + text + " --vocab-size 10 --out " + dir + "/tok2").code, 3);
  EXPECT_NE(run_modlm("tokenizer train --input " + dir + "/nope.txt --vocab-size 400 --out " + dir + "/tok3").code, 0);
}

TEST(Families, EachFamilyIsTheDenseShapePlusItsRoutingOrExperts) {
  ModelConfig dense = ModelConfig::from_json(json{{"vocab_size", 300}, {"d_model", 32}, {"n_layers", 4}, {"n_heads", 2}, {"d_ff", 64}}, "test");
  RoutingConfig r;
  r.layers.kind = "every_other";
  r.capacity = 0.25;
  MoeConfig e;
  e.n_experts = 4;
  e.d_expert = 64;
  e.capacity_factor = 1.25;
  e.n_noop = 0;
  for (const auto& f : model_families()) {
    const ModelConfig c = family_config(dense, f, r, e);
    const bool routed = f == "mod" || f == "mode_staged", moe = f == "moe" || f == "mode_staged" || f == "mode_integrated";
    EXPECT_EQ(c.n_routed(), routed ? 2 : 0) << f;
    EXPECT_EQ(c.n_moe(), moe ? 4 : 0) << f;
    EXPECT_EQ(c.moe.n_noop, f == "mode_integrated" ? 4 : 0) << f;  // 0 = as many no-op experts as real ones
    EXPECT_EQ(c.d_model, 32);
    EXPECT_EQ(c.d_ff, 64);
    if (routed) {
      EXPECT_DOUBLE_EQ(c.routing.capacity, 0.25);
    }
  }
  // A model a family cannot make is bad input; unknown names too.
  ModelConfig one = dense;
  one.n_layers = 1;
  EXPECT_THROW(family_config(one, "mod", r, e), Error);
  MoeConfig none = e;
  none.n_experts = 0;
  EXPECT_THROW(family_config(dense, "moe", r, none), Error);
  EXPECT_THROW(family_config(dense, "mixture", r, e), Error);
  EXPECT_EQ(family_label("mode_integrated"), "integrated MoDE");
}

TEST(Cli, BenchTrainTimesEveryFamilyAgainstDenseInOneRun) {
  const std::string shape = "bench train --d-model 32 --n-layers 4 --n-heads 2 --d-ff 64 --vocab 300 --batch 2 --seq-len 32 --steps 1 --no-peak ";
  auto r = run_modlm(shape + "--families moe,mode_staged,mode_integrated,mod --n-experts 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const json j = json::parse(r.out);
  ModelConfig dense = ModelConfig::from_json(json{{"vocab_size", 300}, {"d_model", 32}, {"n_layers", 4}, {"n_heads", 2}, {"d_ff", 64}}, "test");
  RoutingConfig rc;
  rc.layers.kind = "every_other";
  MoeConfig mc;
  mc.n_experts = 4;
  mc.d_expert = 64;
  mc.capacity_factor = 1.25;
  const double dense_flops = 3.0 * 2 * analytic_forward_flops(dense, 32).total();
  EXPECT_EQ(j["dense"]["train_flops_per_step"].get<double>(), dense_flops);
  for (const char* f : {"moe", "mode_staged", "mode_integrated", "mod"}) {
    ASSERT_TRUE(j["ratios"].contains(f)) << f;
    const ModelConfig c = family_config(dense, f, rc, mc);
    const double flops = 3.0 * 2 * analytic_forward_flops(c, 32).total();
    EXPECT_EQ(j[f]["train_flops_per_step"].get<double>(), flops) << f;
    // Executed == analytic where every routed block runs exactly k tokens; an MoE's analytic count is
    // the capacity bound (SPEC §5), which the experts reach only when no expert is under-loaded.
    if (std::string(f) == "mod") EXPECT_EQ(j[f]["train_flops_executed_per_step"].get<double>(), flops) << f;
    else EXPECT_LE(j[f]["train_flops_executed_per_step"].get<double>(), flops) << f;
    EXPECT_DOUBLE_EQ(j["ratios"][f]["flop_ratio"].get<double>(), flops / dense_flops) << f;
    EXPECT_GT(j["ratios"][f]["time_ratio"].get<double>(), 0) << f;
    EXPECT_DOUBLE_EQ(j["ratios"][f]["executed_flop_ratio"].get<double>(),
                     j[f]["train_flops_executed_per_step"].get<double>() / j["dense"]["train_flops_executed_per_step"].get<double>()) << f;
  }
  EXPECT_EQ(run_modlm(shape + "--families moe,foo").code, 2);
  EXPECT_EQ(run_modlm(shape + "--families mod --n-layers 1").code, 2);
}

TEST(Cli, BenchTrainNamesTheBlasKernelsAndAnEnvironmentThatPicksThem) {
  // OPENBLAS_CORETYPE (read by OpenBLAS at load) can pin kernels narrower than the CPU's, which
  // halves every GEMM; a benchmark says which ran and whether the environment chose them.
  const std::string args = "bench train --d-model 32 --n-layers 1 --n-heads 2 --d-ff 64 --vocab 300 --batch 1 --seq-len 16 --steps 1 --no-peak --json";
  auto pinned = run_modlm_env("OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=Haswell", args);
  ASSERT_EQ(pinned.code, 0) << pinned.out;
  const std::string p = json::parse(pinned.out)["blas"].get<std::string>();
  EXPECT_EQ(p.rfind("OpenBLAS ", 0), 0u) << p;
  EXPECT_NE(p.find(" kernels (OPENBLAS_CORETYPE=Haswell in the environment)"), std::string::npos) << p;
  auto chosen = run_modlm_env("OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=", args);
  ASSERT_EQ(chosen.code, 0) << chosen.out;
  const std::string b = json::parse(chosen.out)["blas"].get<std::string>();
  EXPECT_EQ(b.rfind("OpenBLAS ", 0), 0u) << b;
  EXPECT_EQ(b.find("OPENBLAS_CORETYPE"), std::string::npos) << b;
}

TEST(Cli, NeverLeavesOpenBlasOnKernelsOlderThanAvx2OnAnAvx2Cpu) {
  // OpenBLAS 0.3.21 takes CPUs newer than itself for Prescott (SSE3); unless the user chose a core,
  // modlm asks for the one the CPU runs and says so. A core the user sets stays, Prescott too.
  const std::string args = "bench train --d-model 32 --n-layers 1 --n-heads 2 --d-ff 64 --vocab 300 --batch 1 --seq-len 16 --steps 1 --no-peak --json";
  auto chosen = run_modlm_env("-u OPENBLAS_CORETYPE -u " + std::string(ops::kBlasCorePickedEnv) + " OMP_WAIT_POLICY=passive", args);
  ASSERT_EQ(chosen.code, 0) << chosen.out;
  const std::string b = json::parse(chosen.out)["blas"].get<std::string>();
  ASSERT_EQ(b.rfind("OpenBLAS ", 0), 0u) << b;
  const std::string core = b.substr(9, b.find(' ', 9) - 9);
  EXPECT_EQ(ops::blas_core_to_pick(core, ops::cpu_vector_level()), "") << b;
  const size_t by_modlm = b.find(" (chosen by modlm: OpenBLAS took this CPU for ");
  if (by_modlm != std::string::npos) {
    const std::string picked = b.substr(by_modlm + 46, b.size() - 1 - (by_modlm + 46));
    EXPECT_EQ(ops::blas_core_to_pick(picked, ops::cpu_vector_level()), core) << b;
  } else {
    EXPECT_EQ(b.find('('), std::string::npos) << b;
  }
  auto pinned = run_modlm_env("OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=Prescott", args);
  ASSERT_EQ(pinned.code, 0) << pinned.out;
  EXPECT_EQ(json::parse(pinned.out)["blas"].get<std::string>(), "OpenBLAS Prescott kernels (OPENBLAS_CORETYPE=Prescott in the environment)");
}

TEST(Cli, BenchGeneratePrefillsThroughTheStepKernelsFurtherWhenBlasIsPinnedNarrow) {
  // Decoder::step_prefill_rows: float matrices prefill up to 128 rows through the step kernels;
  // up to 2048 where modlm's kernels are AVX-512 and OpenBLAS runs narrower ones (Haswell).
  const std::string args =
      "bench generate --d-model 32 --n-layers 1 --n-heads 2 --d-ff 64 --vocab 300 --batch 1 --prompt-len 4 --new 2 --no-stream --json";
  auto pinned = run_modlm_env("OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=Haswell", args);
  ASSERT_EQ(pinned.code, 0) << pinned.out;
#if defined(__AVX512F__)
  EXPECT_EQ(json::parse(pinned.out)["prefill_step_rows"].get<int>(), 2048);
#else
  EXPECT_EQ(json::parse(pinned.out)["prefill_step_rows"].get<int>(), 128);
#endif
  auto chosen = run_modlm_env("OMP_WAIT_POLICY=passive OPENBLAS_CORETYPE=", args);
  ASSERT_EQ(chosen.code, 0) << chosen.out;
  const json c = json::parse(chosen.out);
  const std::string core = c["blas"].get<std::string>();
  if (core.find("Cooperlake") != std::string::npos || core.find("SkylakeX") != std::string::npos) {
    EXPECT_EQ(c["prefill_step_rows"].get<int>(), 128) << core;
  }
}

TEST(Cli, BenchServeRoundsAlternateAndReportTheMedianRatio) {
  // Both models in every round; the level's ratio is the median round's (the lower middle of an
  // even count), and its per-model figures are that round's.
  const std::string shape = "bench serve --d-model 32 --n-layers 4 --n-heads 2 --d-ff 48 --vocab 300 --clients 2 --requests 1 "
                            "--prompt-len 4 --new 4 ";
  auto r = run_modlm(shape + "--rounds 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const json lv = json::parse(r.out)["levels"][0];
  ASSERT_EQ(lv["rounds"].size(), 4u);
  std::vector<double> ratios;
  for (const auto& round : lv["rounds"]) {
    ASSERT_TRUE(round.contains("mod") && round.contains("dense")) << round.dump();
    EXPECT_EQ(round["mod"]["tokens"].get<int>(), 2 * 4);
    EXPECT_EQ(round["dense"]["tokens"].get<int>(), 2 * 4);
    EXPECT_DOUBLE_EQ(round["speedup"].get<double>(),
                     round["mod"]["tokens_per_second"].get<double>() / round["dense"]["tokens_per_second"].get<double>());
    ratios.push_back(round["speedup"].get<double>());
  }
  std::sort(ratios.begin(), ratios.end());
  EXPECT_DOUBLE_EQ(lv["speedup"].get<double>(), ratios[1]);
  EXPECT_DOUBLE_EQ(lv["mod"]["tokens_per_second"].get<double>() / lv["dense"]["tokens_per_second"].get<double>(), ratios[1]);
  // Rounds listed in the level's JSON (0: no per-round list), or -1 where the run failed.
  auto rounds_listed = [&](const std::string& args) -> int {
    const auto run = run_modlm(shape + args + " --json");
    if (run.code != 0) {
      ADD_FAILURE() << args << ": exit " << run.code << "\n" << run.out;
      return -1;
    }
    const json level = json::parse(run.out)["levels"][0];
    return level.contains("rounds") ? (int)level["rounds"].size() : 0;
  };
  EXPECT_EQ(rounds_listed("--rounds 1"), 0);  // one round: no per-round list
  EXPECT_EQ(rounds_listed(""), 3);            // the default
  // No twin, no ratio to steady: one round unless --rounds says otherwise.
  EXPECT_EQ(rounds_listed("--no-dense"), 0);
  EXPECT_EQ(rounds_listed("--no-dense --rounds 2"), 2);
  EXPECT_EQ(run_modlm(shape + "--rounds 0").code, 2);
}
