// Routing: top-k selection exactly (k, ties, capacity rounding), and the whole routed model
// against a naive reference that loops over tokens and builds each selected sub-sequence by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "model/config.h"
#include "model/model.h"
#include "model/routing.h"
#include "reference_model.h"
#include "util/error.h"
#include "util/rng.h"

using namespace modlm;

TEST(Routing, CapacityRounding) {
  EXPECT_EQ(routed_capacity(0.1, 30), 3);  // 0.1 * 30 = 3.0000000000000004 must not become 4
  EXPECT_EQ(routed_capacity(0.125, 512), 64);
  EXPECT_EQ(routed_capacity(0.125, 513), 65);
  EXPECT_EQ(routed_capacity(0.125, 1), 1);  // at least 1
  EXPECT_EQ(routed_capacity(0.001, 10), 1);
  EXPECT_EQ(routed_capacity(1.0, 7), 7);
  EXPECT_EQ(routed_capacity(0.5, 7), 4);
  EXPECT_EQ(routed_capacity(0.3, 10), 3);  // 0.3*10 = 3.0000000000000004
  EXPECT_EQ(routed_capacity(0.7, 10), 7);  // 0.7*10 = 7.000000000000001
}

TEST(Routing, TopKExactAndTiesToLowerPosition) {
  std::vector<float> s = {0.5f, 2.f, 2.f, -1.f, 2.f, 0.7f};
  EXPECT_EQ(select_topk(s.data(), 6, 2), (std::vector<int>{1, 2}));
  EXPECT_EQ(select_topk(s.data(), 6, 3), (std::vector<int>{1, 2, 4}));
  EXPECT_EQ(select_topk(s.data(), 6, 4), (std::vector<int>{1, 2, 4, 5}));
  EXPECT_EQ(select_topk(s.data(), 6, 6), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  std::vector<float> flat(9, 1.f);
  EXPECT_EQ(select_topk(flat.data(), 9, 3), (std::vector<int>{0, 1, 2}));
  std::vector<float> nan = {std::nanf(""), 0.f, -5.f};
  EXPECT_EQ(select_topk(nan.data(), 3, 2), (std::vector<int>{1, 2}));
  // Random: equals a full stable sort, for many sizes.
  Rng r(3);
  for (int T = 1; T < 200; T += 7)
    for (int k : {1, T / 3 + 1, T}) {
      std::vector<float> v(T);
      for (auto& x : v) x = (float)(int)(r.uniform() * 10);  // many ties
      std::vector<int> idx(T);
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[a] > v[b]; });
      idx.resize(k);
      std::sort(idx.begin(), idx.end());
      ASSERT_EQ(select_topk(v.data(), T, k), idx) << T << " " << k;
    }
}

TEST(Routing, TokenChoiceFirstComeFirstServed) {
  std::vector<float> s = {-1.f, 0.3f, 0.f, 2.f, 0.1f, 5.f};
  EXPECT_EQ(select_token_choice(s.data(), 6, 2), (std::vector<int>{1, 3}));
  EXPECT_EQ(select_token_choice(s.data(), 6, 10), (std::vector<int>{1, 3, 4, 5}));
  EXPECT_EQ(select_causal(s.data(), 6), (std::vector<int>{1, 3, 4, 5}));
}

TEST(Routing, LayerPatterns) {
  ModelConfig c;
  c.n_layers = 6;
  auto routed_layers = [&](const json& layers) {
    json j = c.to_json();
    j["routing"] = {{"layers", layers}};
    ModelConfig m = ModelConfig::from_json(j, "test");
    std::vector<int> out;
    for (int l = 0; l < 6; ++l)
      if (m.routed(l)) out.push_back(l);
    return out;
  };
  EXPECT_EQ(routed_layers("every_other"), (std::vector<int>{1, 3, 5}));
  EXPECT_EQ(routed_layers("all"), (std::vector<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(routed_layers("none"), (std::vector<int>{}));
  EXPECT_EQ(routed_layers(json::array({4, 0})), (std::vector<int>{0, 4}));
  json bad = c.to_json();
  bad["routing"] = {{"layers", json::array({6})}};
  EXPECT_THROW(ModelConfig::from_json(bad, "t"), Error);
  bad["routing"] = {{"layers", "odd"}};
  EXPECT_THROW(ModelConfig::from_json(bad, "t"), Error);
  bad["routing"] = {{"capacity", 0}};
  EXPECT_THROW(ModelConfig::from_json(bad, "t"), Error);
  bad["routing"] = {{"method", "random"}};
  EXPECT_THROW(ModelConfig::from_json(bad, "t"), Error);
}

namespace {
using Vec = modlm::testing::Vec;
using Ref = modlm::testing::ReferenceModel;

ModelConfig small_routed(const std::string& gate, const std::string& causal, const std::string& layers, int kv_heads = 0) {
  json j = {{"vocab_size", 17}, {"d_model", 8}, {"n_layers", 3}, {"n_heads", 2}, {"d_ff", 12}, {"max_seq_len", 32},
            {"routing", {{"layers", layers}, {"capacity", 0.3}, {"gate", gate}, {"causal", causal}, {"predictor_hidden", 6}}}};
  if (kv_heads) j["n_heads"] = 4, j["n_kv_heads"] = kv_heads;  // grouped-query attention
  return ModelConfig::from_json(j, "test");
}
}  // namespace

class RoutedVsNaive : public ::testing::TestWithParam<std::tuple<std::string, std::string, std::string, int>> {};

TEST_P(RoutedVsNaive, LogitsMatchNaiveTokenLoop) {
  auto [gate, causal, layers, kv_heads] = GetParam();
  ModelConfig c = small_routed(gate, causal, layers, kv_heads);
  Model<double> m(c);
  Rng r(11);
  const int B = 3, T = 13;
  const std::vector<int32_t> tok = modlm::testing::randomize_for_reference(m, r, B, T);
  Ref ref{c, m};
  for (RouteMode mode : {RouteMode::TopK, RouteMode::Causal}) {
    ForwardOptions o;
    o.mode = mode;
    auto res = m.forward(tok.data(), nullptr, B, T, o);
    for (const auto& s : res.routed) {
      if (mode == RouteMode::TopK) EXPECT_EQ(s.processed, B * routed_capacity(0.3, T));
      else EXPECT_TRUE(s.processed > 0 && s.processed < s.tokens) << "the causal case must both process and skip";
    }
    modlm::testing::expect_logits_match_reference(m, ref, tok, B, T, mode == RouteMode::Causal, "mode " + std::to_string((int)mode));
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, RoutedVsNaive,
                         ::testing::Values(std::make_tuple("sigmoid", "predictor", "every_other", 0),
                                           std::make_tuple("linear", "aux_loss", "every_other", 0),
                                           std::make_tuple("sigmoid", "aux_loss", "all", 0),
                                           std::make_tuple("sigmoid", "predictor", "none", 0),
                                           std::make_tuple("sigmoid", "predictor", "every_other", 2),
                                           std::make_tuple("sigmoid", "predictor", "none", 1)));

TEST(Config, GroupedQueryAttentionHeadsAreCheckedAndRoundTrip) {
  json j = {{"vocab_size", 17}, {"d_model", 16}, {"n_layers", 2}, {"n_heads", 4}, {"d_ff", 12}, {"n_kv_heads", 2}};
  ModelConfig c = ModelConfig::from_json(j, "t");
  EXPECT_EQ(c.kv_heads(), 2);
  EXPECT_EQ(c.kv_dim(), 8);
  EXPECT_EQ(c.qkv_dim(), 32);
  EXPECT_EQ(c.to_json().at("n_kv_heads"), 2);
  EXPECT_EQ(ModelConfig::from_json(c.to_json(), "t").to_json(), c.to_json());
  // Plain multi-head attention keeps SPEC §6's keys only.
  j["n_kv_heads"] = 4;
  EXPECT_FALSE(ModelConfig::from_json(j, "t").to_json().contains("n_kv_heads"));
  for (json bad : {json(3), json(0), json(8), json(-1), json("2"), json(2.5)}) {
    j["n_kv_heads"] = bad;
    try {
      ModelConfig::from_json(j, "t");
      ADD_FAILURE() << "accepted n_kv_heads " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("n_kv_heads"), std::string::npos) << e.what();
    }
  }
}
