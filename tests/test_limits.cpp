// Resource limits come before allocation (SPEC §6, issue 16): a file or request that claims a
// huge size gets a clear error naming the value and exit 3, under a 4 GiB address-space limit
// (ulimit -v) that any attempt to allocate the claimed size would break.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"

using json = nlohmann::json;
using namespace modlm::testing;

namespace {

// AddressSanitizer reserves terabytes of address space for its shadow memory, so the sanitizer
// build (scripts/sanitize.sh) runs these without the address-space limit.
#if defined(__SANITIZE_ADDRESS__)
constexpr const char* kLimit = "";
#else
constexpr const char* kLimit = "ulimit -v 4194304; ";
#endif

CmdResult run_limited(const std::string& args) {
  return run_modlm_raw("sh -c '" + std::string(kLimit) + "OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive exec " + std::string(MODLM_BINARY) + " " +
                       args + "' 2>&1");
}

void write(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = char((v >> (8 * i)) & 0xff);
  return s;
}

}  // namespace

TEST(Limits, HugeClaimsAreRefusedBeforeAllocation) {
  const std::string d = temp_dir("limits");
  ASSERT_EQ(run_modlm("init " + d + "/m --d-model 8 --n-layers 2 --n-heads 2 --d-ff 16 --vocab bytes --max-seq-len 32").code, 0);
  const json base = json::parse(std::ifstream(d + "/m/config.json"));
  auto model_with = [&](const std::string& name, const json& cfg, const std::string& weights) {
    const std::string m = d + "/" + name;
    std::filesystem::create_directories(m);
    write(m + "/config.json", cfg.dump());
    if (weights.empty()) std::filesystem::copy_file(d + "/m/model.safetensors", m + "/model.safetensors");
    else write(m + "/model.safetensors", weights);
    return m;
  };
  struct Case {
    std::string dir, must_name;
  };
  std::vector<Case> cases;
  {
    json c = base;
    c["n_layers"] = 1000000000;
    cases.push_back({model_with("layers", c, ""), "1000000000"});
  }
  {
    json c = base;
    c["vocab_size"] = 1000000000000LL;
    cases.push_back({model_with("vocab", c, ""), "1000000000000"});
  }
  {
    json c = base;
    c["max_seq_len"] = 1000000000;
    cases.push_back({model_with("context", c, ""), "max_seq_len"});
  }
  {
    // A header of 10^9 bytes (the file is 10 bytes long).
    cases.push_back({model_with("header", base, le64(1000000000) + "{}"), "1000000000"});
  }
  {
    // One tensor claiming 100 GB.
    const std::string h = R"({"tok_embeddings.weight":{"dtype":"F32","shape":[100000,262144],"data_offsets":[0,104857600000]}})";
    cases.push_back({model_with("tensor", base, le64(h.size()) + h + std::string(64, '\0')), "104857600000"});
  }
  for (const auto& c : cases) {
    auto r = run_limited("generate " + c.dir + " --prompt hi --max-new 1");
    EXPECT_EQ(r.code, 3) << c.dir << ": " << r.out;
    EXPECT_NE(r.out.find(c.must_name), std::string::npos) << c.dir << ": " << r.out;
    EXPECT_EQ(r.out.find("bad_alloc"), std::string::npos) << r.out;
  }
  // A prompt of 10^8 characters (a sparse file: no disk used) is refused by its size, unread.
  const std::string big = d + "/prompt.txt";
  { std::ofstream(big) << "x"; }
  ASSERT_EQ(::truncate(big.c_str(), 100000000), 0);
  auto r = run_limited("generate " + d + "/m --prompt-file " + big + " --max-new 1");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("100000000 bytes"), std::string::npos) << r.out;
  r = run_limited("generate " + d + "/m --max-new 1 < " + big);
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("stdin"), std::string::npos) << r.out;
  std::filesystem::remove_all(d);
}

TEST(Limits, FuzzFindingsStayFixed) {
  // fuzz_config found this: a number too large for a double (1e999) in config.json escaped as
  // an uncaught exception (std::terminate) instead of a bad_input error.
  const std::string d = temp_dir("fuzz_regressions");
  ASSERT_EQ(run_modlm("init " + d + "/m --d-model 8 --n-layers 2 --n-heads 2 --d-ff 16 --vocab bytes --max-seq-len 32").code, 0);
  write(d + "/m/config.json", R"({"format": "modlm-1", "vocab_size": 256, "d_model": 8, "rope_theta": 1e999})");
  auto r = run_modlm("generate " + d + "/m --prompt hi --max-new 1");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("config.json"), std::string::npos) << r.out;
  // The fuzzer's own input, kept in the seed corpus.
  std::filesystem::copy_file(std::string(MODLM_SOURCE_DIR) + "/fuzz/corpus/config/regression_number_out_of_range", d + "/m/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  r = run_modlm("generate " + d + "/m --prompt hi --max-new 1");
  EXPECT_EQ(r.code, 3) << r.out;
  std::filesystem::remove_all(d);
}
