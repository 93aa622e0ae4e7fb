// Whole-model gradients against finite differences (double precision), for the dense model
// and every routing variant, plus exact relations between the routed and the dense layer.
#include <gtest/gtest.h>

#include <cmath>

#include "grad_check.h"
#include "model/flops.h"
#include "model/model.h"
#include "ops/gemm.h"

using namespace modlm;
using modlm::testing::expect_grad_matches;

static ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 13;
  c.d_model = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.d_ff = 12;
  c.max_seq_len = 16;
  return c;
}

static ModelConfig routed(ModelConfig c, const std::string& method, const std::string& gate, const std::string& causal,
                          double capacity = 0.5, const std::string& layers = "every_other") {
  c.routing.present = true;
  c.routing.layers.kind = layers;
  c.routing.capacity = capacity;
  c.routing.method = method;
  c.routing.gate = gate;
  c.routing.causal = causal;
  c.routing.predictor_hidden = 5;
  c.routing.aux_weight = causal == "aux_loss" ? 0.3 : 1.0;
  c.routing.balance_weight = 0.2;
  c.validate("test");
  return c;
}

static void randomize(Model<double>& m, uint64_t seed) {
  Rng r(seed);
  for (const ParamInfo& p : m.layout().params()) {
    double* d = m.params().data() + p.offset;
    bool norm = p.name.find("norm") != std::string::npos;
    for (size_t i = 0; i < p.numel; ++i) d[i] = norm ? 1.0 + 0.2 * (2 * r.uniform() - 1) : 0.4 * (2 * r.uniform() - 1);
  }
}

static void check_model_gradients(const ModelConfig& cfg, uint64_t seed) {
  Model<double> m(cfg);
  randomize(m, seed);
  const int B = 2, T = 7;
  std::vector<int32_t> tok(B * T), tgt(B * T);
  Rng r(seed + 1);
  for (int i = 0; i < B * T; ++i) tok[i] = (int32_t)r.below(cfg.vocab_size), tgt[i] = (int32_t)r.below(cfg.vocab_size);
  ForwardOptions opt;
  opt.train = true;
  opt.noise_seed = 42;
  m.zero_grad();
  m.forward(tok.data(), tgt.data(), B, T, opt);
  m.backward();
  std::vector<double> params(m.params().begin(), m.params().end());
  std::vector<double> grads(m.grads().begin(), m.grads().end());
  ForwardOptions eval = opt;
  eval.train = false;
  // The predictor sees a stopped-gradient stream: the backbone's gradient is that of the loss
  // without the predictor's term, the predictor's that of its own term.
  auto loss_without_predictor = [&] {
    std::copy(params.begin(), params.end(), m.params().begin());
    auto r = m.forward(tok.data(), tgt.data(), B, T, eval);
    return r.loss - r.predictor_loss;
  };
  auto loss = [&] {
    std::copy(params.begin(), params.end(), m.params().begin());
    return m.forward(tok.data(), tgt.data(), B, T, eval).loss;
  };
  std::vector<size_t> backbone, predictor;
  for (const ParamInfo& p : m.layout().params()) {
    auto& idx = p.backbone ? backbone : predictor;
    for (size_t i : {size_t{0}, p.numel / 2, p.numel - 1}) idx.push_back(p.offset + i);
    idx.push_back(p.offset + (size_t)r.below(p.numel));
  }
  expect_grad_matches(params, grads, loss_without_predictor, "backbone param", backbone, 1e-6, 1e-5, 1e-9);
  if (!predictor.empty()) expect_grad_matches(params, grads, loss, "predictor param", predictor, 1e-6, 1e-5, 1e-9);
}

TEST(ModelGrad, DenseUntied) { check_model_gradients(tiny_config(), 1); }

TEST(ModelGrad, DenseTied) {
  auto c = tiny_config();
  c.tie_embeddings = true;
  check_model_gradients(c, 2);
}

TEST(ModelGrad, ExpertChoiceSigmoidPredictor) { check_model_gradients(routed(tiny_config(), "expert_choice", "sigmoid", "predictor"), 3); }
TEST(ModelGrad, ExpertChoiceLinearAuxLoss) { check_model_gradients(routed(tiny_config(), "expert_choice", "linear", "aux_loss"), 4); }
TEST(ModelGrad, StochasticAllLayers) { check_model_gradients(routed(tiny_config(), "stochastic", "sigmoid", "predictor", 0.3, "all"), 5); }
TEST(ModelGrad, TokenChoiceBalanceLoss) { check_model_gradients(routed(tiny_config(), "token_choice", "sigmoid", "aux_loss", 0.6, "all"), 6); }

// Grouped-query attention: 4 query heads on 2 key/value heads (and on 1), dense and routed.
TEST(ModelGrad, GroupedQueryAttention) {
  auto c = tiny_config();
  c.n_heads = 4, c.n_kv_heads = 2;
  c.validate("test");
  check_model_gradients(c, 7);
  c.n_kv_heads = 1;
  check_model_gradients(routed(c, "expert_choice", "sigmoid", "predictor"), 8);
}

TEST(ModelGrad, PredictorGradientNeverReachesBackbone) {
  // Same backbone, with and without the predictor's loss: identical backbone gradients.
  auto with = routed(tiny_config(), "expert_choice", "sigmoid", "predictor");
  auto without = with;
  without.routing.aux_weight = 0.0;
  Model<double> a(with), b(without);
  randomize(a, 9);
  b.params() = a.params();
  std::vector<int32_t> tok = {1, 2, 3, 4, 5, 6, 7, 8}, tgt = {2, 3, 4, 5, 6, 7, 8, 9};
  ForwardOptions opt;
  opt.train = true;
  a.zero_grad(), b.zero_grad();
  a.forward(tok.data(), tgt.data(), 1, 8, opt);
  b.forward(tok.data(), tgt.data(), 1, 8, opt);
  a.backward(), b.backward();
  bool predictor_grad_nonzero = false;
  for (const ParamInfo& p : a.layout().params())
    for (size_t i = 0; i < p.numel; ++i) {
      if (p.backbone) ASSERT_EQ(a.grads()[p.offset + i], b.grads()[p.offset + i]) << p.name;
      else predictor_grad_nonzero |= a.grads()[p.offset + i] != 0;
    }
  EXPECT_TRUE(predictor_grad_nonzero);
}

TEST(ModelGrad, AuxLossReachesRouter) {
  auto with = routed(tiny_config(), "stochastic", "sigmoid", "aux_loss");  // stochastic: only the aux loss trains r
  auto without = with;
  without.routing.aux_weight = 0.0;
  Model<double> a(with), b(without);
  randomize(a, 10);
  b.params() = a.params();
  std::vector<int32_t> tok = {1, 2, 3, 4, 5, 6, 7, 8}, tgt = {2, 3, 4, 5, 6, 7, 8, 9};
  ForwardOptions opt;
  opt.train = true;
  for (auto* m : {&a, &b}) {
    m->zero_grad();
    m->forward(tok.data(), tgt.data(), 1, 8, opt);
    m->backward();
  }
  double ga = 0, gb = 0;
  for (int j = 0; j < 8; ++j) ga += std::abs(a.grad("layers.1.router.weight")[j]), gb += std::abs(b.grad("layers.1.router.weight")[j]);
  EXPECT_GT(ga, 1e-6);
  EXPECT_EQ(gb, 0.0);
}

// A routed layer with capacity 1 and gate forced to 1 (stochastic) is exactly the dense layer.
TEST(ModelFlops, GroupedQueryAttentionCountsSmallerKeyValueProjections) {
  // SPEC §5 extension: k and v are [Dkv, D] with Dkv = n_kv_heads * Dh; attention still counts
  // 4 * Dh * H per pair (every query head scores every visible key).
  auto c = tiny_config();  // D 8, H 2 -> 4 heads of 2
  c.n_heads = 4;
  auto mha = analytic_forward_flops(c, 10);
  c.n_kv_heads = 1;  // Dkv = 2
  auto gqa = analytic_forward_flops(c, 10);
  EXPECT_EQ(mha.projections - gqa.projections, (int64_t)c.n_layers * 2 * 10 * 2 * 8 * (8 - 2));
  EXPECT_EQ(mha.attention, gqa.attention);
  EXPECT_EQ(Model<float>(c).layout().get("layers.0.attn.wk.weight").shape, (std::vector<int64_t>{2, 8}));
}

TEST(ModelRouted, CapacityOneGateOneEqualsDense) {
  auto dense = tiny_config();
  auto mod = routed(dense, "stochastic", "sigmoid", "aux_loss", 1.0, "all");
  Model<float> a(dense), b(mod);
  a.init_weights(7);
  b.init_weights(7);  // same names -> same values; router weights extra
  std::vector<int32_t> tok = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
  ForwardOptions opt;
  a.forward(tok.data(), nullptr, 2, 5, opt);
  b.forward(tok.data(), nullptr, 2, 5, opt);
  for (int i = 0; i < 10 * 13; ++i) ASSERT_EQ(a.logits()[i], b.logits()[i]) << i;
}

TEST(ModelFlops, ExecutedEqualsAnalyticForEveryPattern) {
  for (std::string layers : {"none", "every_other", "all"})
    for (double cap : {0.125, 0.3, 1.0})
    for (int kv : {0, 1}) {  // and grouped-query attention (k, v projections of 1 head of 4)
      auto c = tiny_config();
      c.n_layers = 3;
      if (kv) c.n_heads = 4, c.n_kv_heads = kv;
      if (layers != "none") c = routed(c, "expert_choice", "sigmoid", "predictor", cap, layers);
      Model<float> m(c);
      m.init_weights(1);
      std::vector<int32_t> tok(3 * 11, 2);
      int64_t before = ops::FlopCounter::total().load();
      m.forward(tok.data(), tok.data(), 3, 11, ForwardOptions{});
      int64_t executed = ops::FlopCounter::total().load() - before;
      EXPECT_EQ(executed, 3 * analytic_forward_flops(c, 11).total()) << layers << " " << cap << " kv " << kv;
    }
}
