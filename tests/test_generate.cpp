// Generation: the KV-cache decoder against full forward passes (dense and MoD causal routing),
// batching, the routed layers' caches, sampling, streaming text, and `modlm generate` end to end.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <bit>
#include <cstring>
#include <cmath>
#include <limits>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "cli_helpers.h"
#include "infer/attend.h"
#include "infer/calibrate.h"
#include "infer/decoder.h"
#include "infer/matvec.h"
#include "infer/rate_split.h"
#include "infer/sampler.h"
#include "infer/text_stream.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "model/flops.h"
#include "ops/bf16.h"
#include "ops/q8.h"
#include "model/model.h"
#include "util/error.h"
#include "util/parallel.h"

using namespace modlm;
using namespace modlm::infer;
using namespace modlm::testing;

namespace {

struct Variant {
  std::string routing = "none", method = "expert_choice", gate = "sigmoid", causal = "predictor";
  int d_model = 64;
  json moe = nullptr;  // the config's "moe" object (SPEC §3), none if null
  int n_kv_heads = 0;  // grouped-query attention when > 0 (of 4 query heads)
};

ModelConfig tiny_config(const Variant& v, int max_seq_len = 96) {
  json j{{"vocab_size", 256}, {"d_model", v.d_model}, {"n_layers", 4},        {"n_heads", 4},
         {"d_ff", 96},        {"max_seq_len", max_seq_len}, {"tokenizer", "bytes"}};
  if (v.routing != "none")
    j["routing"] = {{"layers", v.routing}, {"capacity", 0.5}, {"method", v.method},
                    {"gate", v.gate},      {"causal", v.causal}, {"predictor_hidden", 32}};
  if (!v.moe.is_null()) j["moe"] = v.moe;
  if (v.n_kv_heads) j["n_kv_heads"] = v.n_kv_heads;
  return ModelConfig::from_json(j, "test");
}

std::vector<int32_t> bytes_of(const std::string& s) { return io::ByteTokenizer().encode(s); }

// A random model whose causal decisions are far from the 0.5 threshold (so float rounding
// between a GEMM and a matrix-vector product cannot flip one), with a mix of processed and
// skipped tokens: the decision weights are scaled up and, for the predictor, its bias moved to
// the middle of the widest gap between the decision logits of a calibration text, layer by layer.
std::unique_ptr<Model<float>> make_model(const Variant& v, uint64_t seed = 1, int max_seq_len = 96) {
  auto m = std::make_unique<Model<float>>(tiny_config(v, max_seq_len));
  m->init_weights(seed);
  const ModelConfig& c = m->config();
  for (int l = 0; l < c.n_layers; ++l) {
    if (c.has_moe(l)) {  // decisive expert choices (no near-ties for rounding to flip), varied per token
      float* g = m->param("layers." + std::to_string(l) + ".moe.gate.weight");
      for (size_t i = 0; i < (size_t)c.moe.n_gate() * c.d_model; ++i) g[i] *= 20.0f;
    }
    if (!c.routed(l)) continue;
    const std::string p = "layers." + std::to_string(l) + ".";
    for (size_t i = 0; i < (size_t)c.d_model; ++i) m->param(p + "router.weight")[i] *= 300.0f;  // r ~ +-1
    if (c.routing.causal == "predictor") {
      float* w2 = m->param(p + "predictor.fc2.weight");
      for (int i = 0; i < c.routing.predictor_hidden; ++i) w2[i] *= 5000.0f;
    }
  }
  if (c.routing.causal != "predictor" || c.n_routed() == 0) return m;
  const std::vector<int32_t> text = bytes_of("Calibration text: the quick brown fox jumps over the lazy dog 0123456789.");
  for (int j = 0; j < c.n_routed(); ++j) {
    Decoder dec(*m, 1, (int)text.size());
    dec.prefill({text});
    std::vector<float> z;
    for (int t = 0; t < dec.token_rows(); ++t) z.push_back(dec.route(t, j).decision_logit);
    std::sort(z.begin(), z.end());
    const size_t n = z.size();
    size_t best = n / 4;
    for (size_t i = n / 4; i + 1 < 3 * n / 4; ++i)
      if (z[i + 1] - z[i] > z[best + 1] - z[best]) best = i;
    m->param("layers." + std::to_string(dec.routed_layers()[j]) + ".predictor.fc2.bias")[0] -= 0.5f * (z[best] + z[best + 1]);
  }
  return m;
}

// max |a - b| relative to max(1, max |b|).
double rel_diff(const float* a, const float* b, int n) {
  double d = 0, m = 0;
  for (int i = 0; i < n; ++i) {
    d = std::max(d, (double)std::abs(a[i] - b[i]));
    m = std::max(m, (double)std::abs(b[i]));
  }
  return d / std::max(1.0, m);
}

// Full-sequence logits [T, V] from Model::forward.
std::vector<float> forward_logits(Model<float>& m, const std::vector<int32_t>& toks, RouteMode mode, ForwardResult* res = nullptr) {
  ForwardOptions fo;
  fo.mode = mode;
  ForwardResult r = m.forward(toks.data(), nullptr, 1, (int)toks.size(), fo);
  if (res) *res = r;
  return std::vector<float>(m.logits(), m.logits() + toks.size() * m.config().vocab_size);
}

// Top-1 minus top-2 of a row: ties this close could legitimately break either way.
double top_gap(const float* x, int V) {
  float a = -INFINITY, b = -INFINITY;
  for (int i = 0; i < V; ++i) {
    if (x[i] > a) b = a, a = x[i];
    else if (x[i] > b) b = x[i];
  }
  return a - b;
}

// Greedy decode of `n` tokens after `prompt` on a batch-1 decoder; logits of every fed token
// (the prefill's last row first) go to *rows.
std::vector<int32_t> greedy_decode(Decoder& dec, const std::vector<int32_t>& prompt, int n, std::vector<std::vector<float>>* rows) {
  const int V = dec.config().vocab_size;
  dec.prefill({prompt});
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    if (rows) rows->emplace_back(dec.logits(0), dec.logits(0) + V);
    out.push_back(argmax(dec.logits(0), V));
    dec.step({0}, {out.back()});
  }
  if (rows) rows->emplace_back(dec.logits(0), dec.logits(0) + V);
  return out;
}

// Greedy decoding of `prompt` for n tokens against Model::forward(Causal) on the final sequence:
// every step's logits within 1e-4 of the forward's, every greedy token the forward's argmax where
// its top two logits are apart. The final sequence and the forward's routing go to seq and res
// (callers check the caches against res.routed); a fatal failure returns early.
void expect_greedy_decode_equals_causal_forward(Model<float>& m, Decoder& dec, const std::vector<int32_t>& prompt, int n,
                                                const std::string& label, std::vector<int32_t>& seq, ForwardResult& res) {
  const int V = m.config().vocab_size;
  std::vector<std::vector<float>> rows;
  const std::vector<int32_t> gen = greedy_decode(dec, prompt, n, &rows);
  seq = prompt;
  seq.insert(seq.end(), gen.begin(), gen.end());
  const std::vector<float> full = forward_logits(m, seq, RouteMode::Causal, &res);
  const size_t np = prompt.size();
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* want = full.data() + (np - 1 + i) * V;
    ASSERT_LT(rel_diff(rows[i].data(), want, V), 1e-4) << label << " row " << i;
    if (i < gen.size() && top_gap(want, V) > 1e-5) {
      ASSERT_EQ(gen[i], argmax(want, V)) << label << " token " << i;
    }
  }
}

const std::vector<Variant> kRouted = {
    {"every_other", "expert_choice", "sigmoid", "predictor", 64},
    {"every_other", "token_choice", "linear", "aux_loss", 48},
    {"all", "stochastic", "sigmoid", "predictor", 48},
    {"every_other", "expert_choice", "sigmoid", "predictor", 64, nullptr, 2},  // GQA: 4 query heads on 2
};
// Dense grouped-query attention (4 query heads on 1 key/value head).
const Variant kDenseGqa{"none", "expert_choice", "sigmoid", "predictor", 64, nullptr, 1};

// Mixture-of-Experts variants (SPEC §3), with a capacity factor of 1.0 so that training-time
// capacity would drop choices: plain MoE, staged MoDE (routed layers whose MLP is an MoE) and
// integrated MoDE (no-op experts among the real ones).
json moe_json(int n_noop) {
  return {{"layers", "all"}, {"n_experts", 4}, {"d_expert", 32}, {"top_k", 2}, {"capacity_factor", 1.0}, {"n_noop", n_noop}};
}
struct MoeVariant {
  std::string name;
  Variant v;
};
const std::vector<MoeVariant> kMoe = {
    {"moe", {"none", "expert_choice", "sigmoid", "predictor", 64, moe_json(0)}},
    {"staged_mode", {"every_other", "expert_choice", "sigmoid", "predictor", 64, moe_json(0)}},
    {"integrated_mode", {"none", "expert_choice", "sigmoid", "predictor", 64, moe_json(2)}},
};

}  // namespace

// ---------------------------------------------------------------------------------------------

// OuterKernelFrom(b) (infer/matvec.h) sends batches of at least b inputs to the outer-product
// kernel while in scope (0: the measured per-format thresholds; 1: every batch; 1 << 30: none).

// Both kernels (row tiles, and the outer-product kernel of large batches: threshold 1 sends
// every size there), around their tile edges: 16-input vectors, 256-column panels, 64-input tiles
// (150: three groups of transposed inputs, the last of 22).
TEST(GenerateKernels, MatvecMatchesReference) {
  Rng r(3);
  for (int outer_from : {0, 1, 1 << 30})
  for (int in : {1, 16, 37, 64, 300}) {
    const OuterKernelFrom guard(outer_from);
    for (int out : {1, 5, 29, 100}) {
      for (int B : {1, 3, 6, 7, 8, 11, 16, 17, 33, 64, 70, 150}) {
        std::vector<float> W((size_t)out * in), X((size_t)B * (in + 2)), Y((size_t)B * (out + 1), 0.5f);
        for (auto& v : W) v = float(r.normal());
        for (auto& v : X) v = float(r.normal());
        for (bool acc : {false, true}) {
          std::vector<float> Y0 = Y;
          matvec(W.data(), out, in, X.data(), in + 2, B, Y.data(), out + 1, acc);
          for (int b = 0; b < B; ++b)
            for (int j = 0; j < out; ++j) {
              double s = acc ? Y0[(size_t)b * (out + 1) + j] : 0;
              for (int k = 0; k < in; ++k) s += (double)W[(size_t)j * in + k] * X[(size_t)b * (in + 2) + k];
              ASSERT_NEAR(Y[(size_t)b * (out + 1) + j], s, 1e-4 * (1 + std::abs(s))) << in << " " << out << " " << B;
            }
        }
      }
    }
  }
}

TEST(GenerateKernels, Bf16MatvecMatchesReference) {
  // bf16 weights (the kernel widens them in registers and packs the inputs in its own order):
  // against a double sum over the bf16 values, for lengths around the 32-wide step; both kernels.
  Rng r(4);
  for (int outer_from : {0, 1, 1 << 30})
  for (int in : {1, 7, 31, 32, 33, 64, 100, 257}) {
    const OuterKernelFrom guard(outer_from);
    for (int out : {1, 5, 29, 100}) {
      for (int B : {1, 2, 5, 6, 8, 11, 16, 20, 64, 65}) {
        std::vector<uint16_t> W((size_t)out * in);
        std::vector<float> X((size_t)B * (in + 2)), Y((size_t)B * (out + 1), 0.5f);
        for (auto& v : W) v = float_to_bf16(float(r.normal()));
        for (auto& v : X) v = float(r.normal());
        for (bool acc : {false, true}) {
          std::vector<float> Y0 = Y;
          matvec(W.data(), out, in, X.data(), in + 2, B, Y.data(), out + 1, acc);
          for (int b = 0; b < B; ++b)
            for (int j = 0; j < out; ++j) {
              double s = acc ? Y0[(size_t)b * (out + 1) + j] : 0;
              for (int k = 0; k < in; ++k) s += (double)bf16_to_float(W[(size_t)j * in + k]) * X[(size_t)b * (in + 2) + k];
              ASSERT_NEAR(Y[(size_t)b * (out + 1) + j], s, 1e-4 * (1 + std::abs(s))) << in << " " << out << " " << B;
            }
        }
      }
    }
  }
}

// The products large enough to wake the thread team split their rows by the threads' measured
// rates (infer/rate_split.h), a split that moves from product to product. Each unit of the split
// is computed the same way whichever thread takes it, so two threads give the one-thread result
// bit for bit, call after call while the split moves, for every format and kernel.
TEST(GenerateKernels, ProductsDoNotDependOnHowTheRowsAreSplit) {
  Rng r(5);
  const int saved_threads = omp_get_max_threads();
  for (int outer_from : {0, 1, 1 << 30})
    for (int out : {97, 301})
      for (int in : {339, 1024})
        for (int B : {1, 2, 3, 8, 9, 20, 64}) {
          const OuterKernelFrom guard(outer_from);
          std::vector<float> W((size_t)out * in), X((size_t)B * in);
          for (auto& v : W) v = float(r.normal());
          for (auto& v : X) v = float(r.normal());
          std::vector<uint16_t> Wb(W.size());
          std::vector<Half> Wh(W.size());
          for (size_t i = 0; i < W.size(); ++i) Wb[i] = float_to_bf16(W[i]), Wh[i].bits = float_to_f16(W[i]);
          std::vector<int8_t> Wq(W.size());
          std::vector<float> sc((size_t)out * ((in + 31) / 32));
          quantize_q8(W.data(), out, in, Wq.data(), sc.data());
          for (int format = 0; format < 4; ++format) {
            auto product = [&](std::vector<float>& Y) {
              if (format == 0) matvec(W.data(), out, in, X.data(), in, B, Y.data(), out);
              if (format == 1) matvec(Wb.data(), out, in, X.data(), in, B, Y.data(), out);
              if (format == 2) matvec(Wh.data(), out, in, X.data(), in, B, Y.data(), out);
              if (format == 3) matvec_q8(Wq.data(), sc.data(), out, in, X.data(), in, B, Y.data(), out);
            };
            std::vector<float> one((size_t)B * out), two((size_t)B * out);
            omp_set_num_threads(1);
            product(one);
            omp_set_num_threads(2);
            for (int call = 0; call < 3; ++call) {
              std::fill(two.begin(), two.end(), 0.0f);
              product(two);
              ASSERT_EQ(0, std::memcmp(one.data(), two.data(), sizeof(float) * one.size()))
                  << "format " << format << " out " << out << " in " << in << " B " << B << " outer from " << outer_from;
            }
            if (format == 0 && B == 1) {  // and it is the product (the other formats: their own tests)
              for (int j = 0; j < out; ++j) {
                double s = 0;
                for (int k = 0; k < in; ++k) s += (double)W[(size_t)j * in + k] * X[k];
                ASSERT_NEAR(two[j], s, 1e-4 * (1 + std::abs(s)));
              }
            }
          }
        }
  omp_set_num_threads(saved_threads);
}

// A RateSplit gives each thread a share of the units in proportion to its measured rate, within
// [1/2, 3/2] of an even share, and its run() hands every unit to exactly one thread.
TEST(RateSplitTest, SharesFollowTheThreadsRatesWithinBounds) {
  RateSplit split;
  int b[4];
  split.bounds(100, 2, b);  // no history: even
  EXPECT_EQ(b[0], 0);
  EXPECT_EQ(b[1], 50);
  EXPECT_EQ(b[2], 100);
  // 200 products where thread 1 takes `slower` times as long as thread 0 for the same units.
  auto learn = [&](double slower) {
    for (int i = 0; i < 200; ++i) {
      split.bounds(1000, 2, b);
      const int units[2] = {b[1] - b[0], b[2] - b[1]};
      const double seconds[2] = {units[0] * 1e-6, units[1] * 1e-6 * slower};
      split.record(2, units, seconds);
    }
  };
  // Thread 1 takes twice as long for the same units: shares go to 2/3 and 1/3.
  learn(2);
  EXPECT_NEAR(split.share(0), 2.0 / 3, 0.01);
  EXPECT_NEAR(split.share(1), 1.0 / 3, 0.01);
  split.bounds(300, 2, b);
  EXPECT_NEAR(b[1], 200, 2);
  EXPECT_EQ(b[2], 300);
  // Ten times slower: the share stops at 3/4 (3/2 of an even share).
  learn(10);
  EXPECT_NEAR(split.share(0), 0.75, 1e-6);
  // A product where a thread had nothing to do, or no time measured, teaches nothing.
  const int empty[2] = {0, 10};
  const double none[2] = {0.0, 1e-3};
  split.record(2, empty, none);
  EXPECT_NEAR(split.share(0), 0.75, 1e-6);
  // Another team size starts even again; bounds always cover [0, units] in order.
  split.bounds(7, 3, b);
  EXPECT_EQ(b[0], 0);
  EXPECT_EQ(b[1], 2);
  EXPECT_EQ(b[2], 5);
  EXPECT_EQ(b[3], 7);
  for (int units : {0, 1, 2, 3, 5, 1000}) {
    split.bounds(units, 2, b);
    EXPECT_EQ(b[0], 0);
    EXPECT_LE(b[0], b[1]);
    EXPECT_LE(b[1], b[2]);
    EXPECT_EQ(b[2], units);
  }
  // run(): each unit exactly once, on the team or on the caller, on new or held teams of 2 and 3,
  // whatever the grain.
  const int saved_threads = omp_get_max_threads();
  for (int threads : {2, 3}) {
    omp_set_num_threads(threads);
    for (bool held : {false, true})
      for (bool parallel : {false, true})
        for (int grain : {0, 1, 3, 50})
          for (int units : {0, 1, 2, 3, 17, 1000}) {
            std::vector<std::atomic<int>> seen(units);
            auto run = [&] {
              split.run(parallel, units, grain, [&](int u0, int u1) {
                ASSERT_LT(u0, u1);
                for (int u = u0; u < u1; ++u) seen[u].fetch_add(1);
              });
            };
            if (held) hold_team(run);
            else run();
            for (int u = 0; u < units; ++u) ASSERT_EQ(seen[u].load(), 1) << units << " " << u << " grain " << grain;
          }
  }
  omp_set_num_threads(saved_threads);
}

// A thread that runs out of units takes the back half of what another has not started: with the
// calling thread slowed down, the other one runs units of the caller's starting range, and both
// finish together instead of the fast one waiting.
TEST(RateSplitTest, AThreadThatRunsOutTakesFromTheOthers) {
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(2);
  RateSplit split;
  const int units = 400;
  int b[3];
  split.bounds(units, 2, b);
  ASSERT_EQ(b[1], 200);
  std::vector<int> who(units, -1);
  const std::thread::id caller = std::this_thread::get_id();
  split.run(true, units, 1, [&](int u0, int u1) {
    const bool slow = std::this_thread::get_id() == caller;
    for (int u = u0; u < u1; ++u) {
      who[u] = slow ? 0 : 1;
      if (slow) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  int taken = 0;  // units of the caller's range [0, 200) the other thread ran
  for (int u = 0; u < units; ++u) {
    ASSERT_NE(who[u], -1) << u;
    if (u < b[1] && who[u] == 1) ++taken;
  }
  EXPECT_GT(taken, 150);  // the caller ran its first chunk (16 units) while the other ran the rest
  // Chunks from the front shrink toward the end of a range: an eighth of what is left, between
  // one grain and 16.
  WorkRange r;
  r.word = WorkRange::pack(0, 1000);
  int u0, u1;
  ASSERT_TRUE(r.take_front(4, u0, u1));
  EXPECT_EQ(u0, 0);
  EXPECT_EQ(u1, 64);  // 1000 / 8 = 125, at most 16 grains
  r.word = WorkRange::pack(100, 140);
  ASSERT_TRUE(r.take_front(4, u0, u1));
  EXPECT_EQ(u1 - u0, 5);  // 40 / 8
  ASSERT_TRUE(r.take_back_half(4, u0, u1));  // [105, 140): the back half
  EXPECT_EQ(u0, 122);
  EXPECT_EQ(u1, 140);
  EXPECT_EQ(r.left(), 17u);
  r.word = WorkRange::pack(10, 17);
  EXPECT_FALSE(r.take_back_half(4, u0, u1));  // less than two grains: the owner finishes it
  ASSERT_TRUE(r.take_front(4, u0, u1));
  EXPECT_EQ(u1 - u0, 4);
  ASSERT_TRUE(r.take_front(4, u0, u1));
  EXPECT_EQ(u1 - u0, 3);  // what is left
  EXPECT_FALSE(r.take_front(4, u0, u1));
  omp_set_num_threads(saved_threads);
}

// Decode attention against a double-precision softmax over the same (widened) cache rows: the
// vector kernels' head sizes (16..128 by 16; 16 positions per reduction with AVX-512, 8 with
// AVX2, so n straddles both block sizes) and the plain loops'.
TEST(GenerateKernels, AttendOneMatchesNaiveSoftmaxAttention) {
  Rng r(5);
  for (int Dh : {8, 16, 32, 48, 64, 80, 96, 100, 128})
    for (int n : {1, 5, 7, 8, 9, 15, 16, 17, 33, 100})
      for (bool bf16 : {false, true}) {
        std::vector<float> q(Dh), K((size_t)n * Dh), V((size_t)n * Dh), s(n), o(Dh);
        std::vector<uint16_t> Kb(K.size()), Vb(V.size());
        for (auto& x : q) x = float(r.normal());
        for (size_t i = 0; i < K.size(); ++i) {
          K[i] = float(r.normal()), V[i] = float(r.normal());
          if (bf16) Kb[i] = float_to_bf16(K[i]), Vb[i] = float_to_bf16(V[i]), K[i] = bf16_to_float(Kb[i]), V[i] = bf16_to_float(Vb[i]);
        }
        const float scale = 1.0f / std::sqrt((float)Dh);
        if (bf16) attend_one(q.data(), Kb.data(), Vb.data(), n, Dh, scale, s.data(), o.data());
        else attend_one(q.data(), K.data(), V.data(), n, Dh, scale, s.data(), o.data());
        std::vector<double> w(n);
        double mx = -1e300, sum = 0;
        for (int t = 0; t < n; ++t) {
          double d = 0;
          for (int k = 0; k < Dh; ++k) d += (double)q[k] * K[(size_t)t * Dh + k];
          mx = std::max(mx, w[t] = d * scale);
        }
        for (int t = 0; t < n; ++t) sum += (w[t] = std::exp(w[t] - mx));
        for (int k = 0; k < Dh; ++k) {
          double want = 0;
          for (int t = 0; t < n; ++t) want += w[t] / sum * V[(size_t)t * Dh + k];
          ASSERT_NEAR(o[k], want, 2e-5 * (1 + std::abs(want))) << "Dh " << Dh << " n " << n << " bf16 " << bf16 << " k " << k;
        }
      }
}

TEST(GenerateKernels, Bf16RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82);  // tie, odd below: up to even
  EXPECT_EQ(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie: up
  EXPECT_EQ(float_to_bf16(-2.5f), 0xc020);
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::max()))));  // rounds up past the largest bf16
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::bit_cast<float>(0x7f800001u)))));  // a NaN whose payload is in the low bits
  for (float f : {0.1f, -3.7f, 1e-30f, 12345.678f}) EXPECT_NEAR(round_to_bf16(f), f, std::abs(f) * 0x1p-8f) << f;
}

TEST(Generate, Bf16DecoderComputesTheRoundedModel) {
  // After round_weights_to_bf16, a BF16 decoder (bf16 copies streamed by the steps) gives the
  // logits Model::forward gives on the rounded model, token by token: dense, MoD, MoE.
  for (const Variant& v : {Variant{}, Variant{"every_other"}, kMoe[0].v, kMoe[1].v}) {
    auto m = make_model(v, 21);
    const ModelConfig& c = m->config();
    {
      // Unrounded weights: the BF16 steps really stream the rounded copies (logits move a little).
      Decoder f(*m, 1, 64), h(*m, 1, 64, DecodeWeights::BF16);
      f.prefill({bytes_of("Abc")});
      h.prefill({bytes_of("Abc")});
      f.step({0}, {'d'});
      h.step({0}, {'d'});
      const double d = rel_diff(h.logits(0), f.logits(0), c.vocab_size);
      EXPECT_GT(d, 1e-6) << v.routing;
      EXPECT_LT(d, 5e-2) << v.routing;
    }
    std::vector<float> before(m->params().begin(), m->params().end());
    round_weights_to_bf16(*m);
    // Only the streamed matrices and the embeddings (as a bf16 folder stores them) changed, each
    // to a bf16 value.
    size_t changed = 0;
    for (const auto& p : m->layout().params()) {
      const bool matrix = p.name.find("attn.w") != std::string::npos || p.name.find("mlp.w") != std::string::npos ||
                          p.name.find("experts.") != std::string::npos || p.name == "output.weight" ||
                          p.name == "tok_embeddings.weight";
      for (size_t i = 0; i < p.numel; ++i) {
        const float x = m->params()[p.offset + i];
        if (!matrix) ASSERT_EQ(x, before[p.offset + i]) << p.name;
        else ASSERT_EQ(x, round_to_bf16(before[p.offset + i])) << p.name;
        changed += x != before[p.offset + i];
      }
    }
    EXPECT_GT(changed, 0u);
    const std::vector<int32_t> seq = bytes_of("Rounded weights, same answers.");
    const int T = (int)seq.size();
    ForwardOptions fo;
    fo.mode = RouteMode::Causal;
    m->forward(seq.data(), nullptr, 1, T, fo);
    std::vector<float> full(m->logits(), m->logits() + (size_t)T * c.vocab_size);
    Decoder dec(*m, 1, 64, DecodeWeights::BF16);
    dec.prefill({std::vector<int32_t>(seq.begin(), seq.begin() + 3)}, /*all_logits=*/true);
    for (int t = 0; t < 3; ++t) EXPECT_LT(rel_diff(dec.logits(t), full.data() + (size_t)t * c.vocab_size, c.vocab_size), 1e-4);
    for (int t = 3; t < T; ++t) {
      dec.step({0}, {seq[t]});
      EXPECT_LT(rel_diff(dec.logits(0), full.data() + (size_t)t * c.vocab_size, c.vocab_size), 1e-4) << v.routing << " t " << t;
    }
    // A step streams half the bytes of the matrices.
    EXPECT_NEAR(dec.weight_bytes_read(),
                analytic_decode_weight_bytes(c, 0.0, 2.0) + (analytic_decode_weight_bytes(c, 1.0, 2.0) - analytic_decode_weight_bytes(c, 0.0, 2.0)) *
                                                                 [&] {
                                                                   int p = 0;
                                                                   for (int j = 0; j < c.n_routed(); ++j) p += dec.route(0, j).processed;
                                                                   return c.n_routed() ? (double)p / c.n_routed() : 0.0;
                                                                 }(),
                1e-6 * analytic_decode_weight_bytes(c, 1.0))
        << v.routing;
  }
}

TEST(Generate, GreedyWithKvCacheIsArgmaxOfFullForwardAtEveryStep) {
  auto m = make_model(Variant{});
  Decoder dec(*m, 1, 64);
  const int V = 256;
  std::vector<int32_t> seq = bytes_of("The cat ");
  dec.prefill({seq});
  for (int step = 0; step < 24; ++step) {
    // A fresh full forward over the whole sequence so far, every step.
    std::vector<float> full = forward_logits(*m, seq, RouteMode::TopK);
    const float* want = full.data() + (seq.size() - 1) * V;
    ASSERT_LT(rel_diff(dec.logits(0), want, V), 1e-4) << "step " << step;
    const int32_t t = argmax(dec.logits(0), V);
    if (top_gap(want, V) > 1e-5) {
      ASSERT_EQ(t, argmax(want, V)) << "step " << step;
    }
    seq.push_back(t);
    dec.step({0}, {t});
  }
  EXPECT_EQ(dec.length(0), (int)seq.size());
  for (int l = 0; l < 4; ++l) EXPECT_EQ(dec.cache().count(l, 0), (int)seq.size());  // dense: every token
}

TEST(Generate, PrefillPlusDecodeLogitsEqualFullForward) {
  // Dense and MoD (causal routing): prefill k tokens, feed the rest one by one; every row of
  // logits equals the full-sequence forward's.
  std::vector<Variant> variants = {Variant{}, kDenseGqa};
  variants.insert(variants.end(), kRouted.begin(), kRouted.end());
  for (const Variant& v : variants) {
    auto m = make_model(v, 2);
    const int V = 256;
    Rng r(5);
    // 90 tokens: long enough that every step attends over more than one SIMD block of cached keys.
    const int N = 90;
    std::vector<int32_t> toks(N);
    for (auto& t : toks) t = (int32_t)r.below(V);
    std::vector<float> full = forward_logits(*m, toks, RouteMode::Causal);
    // Both prefill paths of float weights: GEMMs (0), the step kernels (1000), and GEMMs for
    // the dense layers with the step kernels for a routed layer's few rows (8).
    for (int step_rows : {0, 8, 1000})
      for (int k : {1, 9, 64, N}) {
        StepPrefillRows scope(step_rows);
        Decoder dec(*m, 1, N);
        dec.prefill({std::vector<int32_t>(toks.begin(), toks.begin() + k)}, /*all_logits=*/true);
        ASSERT_EQ(dec.logit_rows(), k);
        for (int t = 0; t < k; ++t)
          ASSERT_LT(rel_diff(dec.logits(t), full.data() + (size_t)t * V, V), 1e-4) << v.method << " step rows " << step_rows << " prefill row " << t;
        for (int t = k; t < N; ++t) {
          dec.step({0}, {toks[t]});
          ASSERT_LT(rel_diff(dec.logits(0), full.data() + (size_t)t * V, V), 1e-4) << v.method << " k " << k << " step " << t;
        }
      }
  }
}

TEST(Generate, CausalRoutedDecodeEqualsCausalForward) {
  // Token-by-token MoD decoding (decision p > 0.5 per routed layer, processed tokens cached at
  // their original positions) gives the logits and greedy tokens of Model::forward(Causal).
  for (const Variant& v : kRouted) {
    auto m = make_model(v, 3);
    const int R = m->config().n_routed();
    Decoder dec(*m, 1, 80);
    std::vector<int32_t> seq;
    ForwardResult res;
    expect_greedy_decode_equals_causal_forward(*m, dec, bytes_of("Mixture of depths 🌍 "), 30, v.method, seq, res);
    if (HasFatalFailure()) return;
    // Both decisions occur, far from the threshold; each routed layer's cache holds exactly
    // the tokens with p > 0.5, as many as the full forward processed.
    ASSERT_EQ((int)res.routed.size(), R);
    for (int j = 0; j < R; ++j) {
      const int l = dec.routed_layers()[j];
      EXPECT_EQ(res.routed[j].layer, l);
      EXPECT_GT(res.routed[j].processed, 0) << v.method << " layer " << l;
      EXPECT_LT(res.routed[j].processed, (int64_t)seq.size()) << v.method << " layer " << l;
      EXPECT_EQ(dec.cache().count(l, 0), res.routed[j].processed) << v.method << " layer " << l;
    }
  }
}

TEST(GenerateMoe, TokenByTokenDecodeEqualsCausalForwardWithoutCapacity) {
  // MoE, staged and integrated MoDE: prefill k tokens (k = 1: purely token by token), feed the
  // rest one at a time; every row of logits equals Model::forward(Causal), which, like
  // generation, has no MoE capacity, while the capacity of top-k mode does drop choices here.
  for (const MoeVariant& mv : kMoe) {
    auto m = make_model(mv.v, 7);
    const ModelConfig& c = m->config();
    const int V = 256, T = 40;
    Rng r(11);
    std::vector<int32_t> toks(T);
    for (auto& t : toks) t = (int32_t)r.below(V);
    ForwardResult causal, topk;
    std::vector<float> full = forward_logits(*m, toks, RouteMode::Causal, &causal);
    forward_logits(*m, toks, RouteMode::TopK, &topk);
    ASSERT_EQ((int)causal.moe.size(), c.n_layers) << mv.name;
    int64_t dropped_topk = 0, noop = 0;
    for (int l = 0; l < c.n_layers; ++l) {
      EXPECT_EQ(causal.moe[l].dropped, 0) << mv.name << " layer " << l;
      dropped_topk += topk.moe[l].dropped;
      noop += causal.moe[l].noop;
    }
    EXPECT_GT(dropped_topk, 0) << mv.name << ": the capacity should bite in top-k mode";
    if (c.moe.n_noop > 0) {
      EXPECT_GT(noop, 0) << mv.name << ": some tokens should pick a no-op expert";
    }
    for (int step_rows : {0, 1000})  // the prefill's float GEMMs, and the step kernels
    for (int k : {1, 13}) {
      StepPrefillRows scope(step_rows);
      Decoder dec(*m, 1, T);
      dec.prefill({std::vector<int32_t>(toks.begin(), toks.begin() + k)}, /*all_logits=*/true);
      ASSERT_EQ(dec.logit_rows(), k);
      for (int t = 0; t < k; ++t)
        ASSERT_LT(rel_diff(dec.logits(t), full.data() + (size_t)t * V, V), 1e-4) << mv.name << " prefill row " << t;
      for (int t = k; t < T; ++t) {
        dec.step({0}, {toks[t]});
        ASSERT_LT(rel_diff(dec.logits(0), full.data() + (size_t)t * V, V), 1e-4) << mv.name << " k " << k << " step " << t;
      }
    }
  }
}

TEST(GenerateMoe, GreedyDecodeEqualsCausalForward) {
  // Greedy generation gives the logits and tokens of Model::forward(Causal) on the final
  // sequence; in staged MoDE the routed layers' caches hold what that forward processed.
  for (const MoeVariant& mv : kMoe) {
    auto m = make_model(mv.v, 8);
    const ModelConfig& c = m->config();
    Decoder dec(*m, 1, 80);
    std::vector<int32_t> seq;
    ForwardResult res;
    expect_greedy_decode_equals_causal_forward(*m, dec, bytes_of("Mixture of experts 🌍 "), 30, mv.name, seq, res);
    if (HasFatalFailure()) return;
    ASSERT_EQ((int)res.routed.size(), c.n_routed());
    for (int j = 0; j < c.n_routed(); ++j) {
      const int l = dec.routed_layers()[j];
      EXPECT_TRUE(c.has_moe(l));
      EXPECT_GT(res.routed[j].processed, 0) << mv.name << " layer " << l;
      EXPECT_LT(res.routed[j].processed, (int64_t)seq.size()) << mv.name << " layer " << l;
      EXPECT_EQ(dec.cache().count(l, 0), res.routed[j].processed) << mv.name << " layer " << l;
    }
  }
}

TEST(GenerateMoe, BatchDecodingEqualsOneByOne) {
  // Several rows per step: rows are grouped by expert; each sequence still gets its own logits.
  for (const MoeVariant& mv : kMoe) {
    auto m = make_model(mv.v, 9);
    const int V = 256, steps = 12;
    const std::vector<std::vector<int32_t>> prompts = {bytes_of("a"), bytes_of("Experts of different lengths"),
                                                       bytes_of("and positions."), bytes_of("xyz")};
    Decoder batch(*m, 4, 48);
    batch.prefill(prompts);
    std::vector<std::vector<int32_t>> got(4);
    std::vector<std::vector<std::vector<float>>> logits(4);
    for (int s = 0; s < steps; ++s) {
      std::vector<int32_t> toks;
      for (int i = 0; i < 4; ++i) {
        logits[i].emplace_back(batch.logits(i), batch.logits(i) + V);
        toks.push_back(argmax(batch.logits(i), V));
        got[i].push_back(toks.back());
      }
      batch.step({0, 1, 2, 3}, toks);
    }
    for (int i = 0; i < 4; ++i) {
      Decoder one(*m, 1, 48);
      std::vector<std::vector<float>> rows;
      EXPECT_EQ(greedy_decode(one, prompts[i], steps, &rows), got[i]) << mv.name << " prompt " << i;
      for (int s = 0; s < steps; ++s) EXPECT_LT(rel_diff(logits[i][s].data(), rows[s].data(), V), 1e-5) << mv.name;
    }
  }
}

TEST(KvCache, RoutedLayerHoldsExactlyTheProcessedTokensAtTheirPositions) {
  auto m = make_model(kRouted[0], 4);
  const ModelConfig& c = m->config();
  const int R = c.n_routed();
  Decoder dec(*m, 1, 64);
  const std::vector<int32_t> prompt = bytes_of("routing decides, layer by layer");
  dec.prefill({prompt});
  // Decisions of every token, prompt and generated, per routed layer.
  std::vector<std::vector<int32_t>> processed_pos(R);
  std::vector<int> skipped(R, 0);
  double min_margin = 1e9;
  auto collect = [&](int rows, int32_t first_pos) {
    for (int t = 0; t < rows; ++t)
      for (int j = 0; j < R; ++j) {
        const RouteRecord& rr = dec.route(t, j);
        EXPECT_EQ(rr.processed, rr.decision_prob() > 0.5);
        min_margin = std::min(min_margin, (double)std::abs(rr.decision_logit));
        if (rr.processed) processed_pos[j].push_back(first_pos + t);
        else ++skipped[j];
      }
  };
  collect(dec.token_rows(), 0);
  for (int i = 0; i < 20; ++i) {
    const int32_t pos = dec.length(0);
    dec.step({0}, {argmax(dec.logits(0), c.vocab_size)});
    collect(1, pos);
  }
  EXPECT_GT(min_margin, 1e-5);  // no decision sits on the threshold
  const int T = dec.length(0);
  for (int l = 0; l < c.n_layers; ++l) {
    if (!c.routed(l)) {
      EXPECT_EQ(dec.cache().count(l, 0), T);
      EXPECT_EQ(dec.cache().bytes_used(l), (size_t)T * 2 * c.d_model * sizeof(float));
      continue;
    }
    int j = 0;
    while (dec.routed_layers()[j] != l) ++j;
    EXPECT_GT(processed_pos[j].size(), 0u);
    EXPECT_GT(skipped[j], 0);
    ASSERT_EQ(dec.cache().count(l, 0), (int)processed_pos[j].size()) << "layer " << l;
    const int32_t* pos = dec.cache().positions(l, 0);
    for (size_t k = 0; k < processed_pos[j].size(); ++k) EXPECT_EQ(pos[k], processed_pos[j][k]);
    EXPECT_EQ(dec.cache().bytes_used(l), processed_pos[j].size() * 2 * c.d_model * sizeof(float));
  }
}

// The batch decodes with the outer-product kernel forced (as large batches run it) and with the
// row tiles, and each sequence alone (batch 1: the row tiles) must agree with it.
TEST(Generate, BatchDecodingEqualsOneByOne) {
  // Both prefill paths for the packed prompts: GEMMs (0) and the step kernels (1000).
  for (int step_rows : {0, 1000})
  for (int outer_from : {1 << 30, 1})
  for (const Variant& v : {Variant{}, kRouted[0], kRouted[1], kDenseGqa, kRouted[3]}) {
    const StepPrefillRows prefill_path(step_rows);
    auto m = make_model(v, 6);
    const int V = 256, steps = 15;
    const std::vector<std::vector<int32_t>> prompts = {bytes_of("a"), bytes_of("Sequences of different lengths"),
                                                       bytes_of("and positions.")};
    std::optional<OuterKernelFrom> kernel(std::in_place, outer_from);
    Decoder batch(*m, 3, 48);
    batch.prefill(prompts);
    std::vector<std::vector<int32_t>> got(3);
    std::vector<std::vector<std::vector<float>>> logits(3);
    for (int s = 0; s < steps; ++s) {
      std::vector<int32_t> toks;
      for (int i = 0; i < 3; ++i) {
        logits[i].emplace_back(batch.logits(i), batch.logits(i) + V);
        toks.push_back(argmax(batch.logits(i), V));
        got[i].push_back(toks.back());
      }
      batch.step({0, 1, 2}, toks);
    }
    kernel.reset();
    for (int i = 0; i < 3; ++i) {
      Decoder one(*m, 1, 48);
      std::vector<std::vector<float>> rows;
      EXPECT_EQ(greedy_decode(one, prompts[i], steps, &rows), got[i]) << v.method << " prompt " << i;
      for (int s = 0; s < steps; ++s) EXPECT_LT(rel_diff(logits[i][s].data(), rows[s].data(), V), 1e-5);
      for (int l = 0; l < 4; ++l) EXPECT_EQ(one.cache().count(l, 0), batch.cache().count(l, i));
    }
    // A slot restarted with a new prompt while the others go on (a server's pattern) leaves
    // the others untouched, and a subset of slots can step.
    Decoder d2(*m, 3, 48);
    d2.prefill(prompts);
    d2.step({0, 1, 2}, {got[0][0], got[1][0], got[2][0]});
    d2.prefill({1}, {bytes_of("new")});
    d2.step({2, 0}, {got[2][1], got[0][1]});
    EXPECT_LT(rel_diff(d2.logits(0), logits[2][2].data(), V), 1e-5);
    EXPECT_LT(rel_diff(d2.logits(1), logits[0][2].data(), V), 1e-5);
    EXPECT_EQ(d2.length(1), 3);
  }
}

// Decoder::step holds one team for the whole step (util/parallel.h), handing it every product
// and attention large enough to split: the same logits, bit for bit, as when each piece starts its
// own OpenMP team, for each weight format, batch 1 and a batch of three, dense and MoD (d_model
// 256: products past the size that wakes the team).
TEST(Generate, StepsOnAHeldTeamEqualStepsOnNewTeams) {
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(2);
  for (const Variant& v : {Variant{"none", "expert_choice", "sigmoid", "predictor", 256},
                           Variant{"every_other", "expert_choice", "sigmoid", "predictor", 256}}) {
    auto m = make_model(v, 8);
    const int V = 256, steps = 12;
    const std::vector<std::vector<int32_t>> prompts = {bytes_of("Held teams and new teams"), bytes_of("b"),
                                                       bytes_of("decode alike, step after step.")};
    for (DecodeWeights w : {DecodeWeights::F32, DecodeWeights::BF16, DecodeWeights::Q8})
      for (int B : {1, 3}) {
        std::vector<std::vector<float>> logits[2];
        for (int held : {1, 0}) {
          const bool saved = Decoder::set_hold_team(held);
          const long long pieces = held_team_pieces();
          Decoder dec(*m, B, 64, w);
          dec.prefill(std::vector<std::vector<int32_t>>(prompts.begin(), prompts.begin() + B));
          std::vector<int> slots;
          for (int i = 0; i < B; ++i) slots.push_back(i);
          for (int s = 0; s < steps; ++s) {
            std::vector<int32_t> toks;
            for (int i = 0; i < B; ++i) {
              logits[held].emplace_back(dec.logits(i), dec.logits(i) + V);
              toks.push_back(argmax(dec.logits(i), V));
            }
            dec.step(slots, toks);
          }
          for (int i = 0; i < B; ++i) logits[held].emplace_back(dec.logits(i), dec.logits(i) + V);
          // Held: every step hands the team its products (4 per dense layer at least).
          if (held && held_teams_enabled()) EXPECT_GE(held_team_pieces() - pieces, (long long)steps * 4 * 2);
          else EXPECT_EQ(held_team_pieces(), pieces);
          Decoder::set_hold_team(saved);
        }
        ASSERT_EQ(logits[0].size(), logits[1].size());
        for (size_t r = 0; r < logits[0].size(); ++r)
          ASSERT_EQ(0, std::memcmp(logits[0][r].data(), logits[1][r].data(), sizeof(float) * V))
              << v.routing << " " << format_name(w) << " B " << B << " row " << r;
      }
  }
  omp_set_num_threads(saved_threads);
}

// 40 sequences at once: the default kernel choice sends the dense layers' products (and the
// head) to the outer-product kernel; every sequence must decode as it does alone.
TEST(Generate, LargeBatchDecodingEqualsOneByOne) {
  for (const Variant& v : {Variant{}, kRouted[0]}) {
    auto m = make_model(v, 6);
    const int V = 256, steps = 6, B = 40;
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < B; ++i) prompts.push_back(bytes_of(std::string("prompt ") + std::to_string(i * 7919) + std::string(i % 5, '!')));
    Decoder batch(*m, B, 32);
    batch.prefill(prompts);
    std::vector<std::vector<int32_t>> got(B);
    for (int s = 0; s < steps; ++s) {
      std::vector<int32_t> toks;
      std::vector<int> slots;
      for (int i = 0; i < B; ++i) toks.push_back(argmax(batch.logits(i), V)), got[i].push_back(toks.back()), slots.push_back(i);
      batch.step(slots, toks);
    }
    for (int i = 0; i < B; ++i) {
      Decoder one(*m, 1, 32);
      EXPECT_EQ(greedy_decode(one, prompts[i], steps, nullptr), got[i]) << v.method << " prompt " << i;
    }
  }
}

TEST(Generate, ExtendInChunksEqualsStepByStep) {
  // A prompt fed in chunks (the server's chunked prefill), while another slot steps between the
  // chunks, gives the step-by-step logits (to float rounding: the kernels block several rows
  // differently), routing decisions and caches: each row attends over its slot's cache up to
  // itself. Chunks of 1, 3, 7, ..., 127 and the rest: those of 8 rows or more attend by tiles of
  // GEMMs over the cache (attend_run, two tiles at 127), with a float and a bf16 cache; with the
  // step-kernel bound at 4, chunks past it run their products as GEMMs on the float weights.
  std::vector<Variant> variants = {Variant{}};
  variants.insert(variants.end(), kRouted.begin(), kRouted.end());
  variants.push_back(kMoe[0].v);
  variants.push_back(kMoe[1].v);
  for (const KvFormat kv : {KvFormat::F32, KvFormat::BF16})
    for (const int step_rows : {-1, 4})
      for (const Variant& v : variants) {
        const StepPrefillRows bound(step_rows);
        auto m = make_model(v, 4, /*max_seq_len=*/256);
        const int V = 256, N = 230;
        Rng r(11);
        std::vector<int32_t> toks(N);
        for (auto& t : toks) t = (int32_t)r.below(V);
        Decoder one(*m, 1, N + 1, DecodeWeights::F32, kv);
        one.prefill({std::vector<int32_t>(toks.begin(), toks.begin() + 2)});
        std::vector<std::vector<RouteRecord>> want_routes;
        for (int t = 2; t < N; ++t) {
          one.step({0}, {toks[t]});
          std::vector<RouteRecord> rr;
          for (int j = 0; j < (int)one.routed_layers().size(); ++j) rr.push_back(one.route(0, j));
          want_routes.push_back(rr);
        }

        Decoder dec(*m, 2, N + 1, DecodeWeights::F32, kv);
        dec.prefill({0, 1}, {std::vector<int32_t>(toks.begin(), toks.begin() + 2), bytes_of("other")});
        int t = 2, chunk = 1;
        while (t < N) {
          const int n = std::min(chunk, N - t);
          dec.extend(0, std::vector<int32_t>(toks.begin() + t, toks.begin() + t + n));
          ASSERT_EQ(dec.logit_rows(), 1);
          ASSERT_EQ(dec.token_rows(), n);
          for (int i = 0; i < n; ++i)
            for (int j = 0; j < (int)dec.routed_layers().size(); ++j) {
              EXPECT_EQ(dec.route(i, j).processed, want_routes[t - 2 + i][j].processed) << v.method << " token " << t + i;
              EXPECT_NEAR(dec.route(i, j).decision_logit, want_routes[t - 2 + i][j].decision_logit, 1e-4);
            }
          t += n;
          chunk = chunk * 2 + 1;
          dec.step({1}, {(int32_t)'x'});  // the other sequence goes on between the chunks
        }
        EXPECT_EQ(dec.length(0), N);
        dec.step({1}, {(int32_t)'y'});
        // One more step from both decoders: the chunked slot's cache holds what the steps cached.
        one.step({0}, {5});
        dec.step({0}, {5});
        EXPECT_LT(rel_diff(dec.logits(0), one.logits(0), V), 1e-5) << v.method << " kv bf16 " << (kv == KvFormat::BF16) << " bound " << step_rows;
        for (int l = 0; l < 4; ++l) EXPECT_EQ(dec.cache().count(l, 0), one.cache().count(l, 0)) << v.method << " layer " << l;
      }
  auto m = make_model(Variant{}, 1);
  Decoder dec(*m, 2, 16);
  EXPECT_THROW(dec.extend(0, {1, 2}), Error);  // nothing started in the slot
  dec.prefill({0}, {{1, 2, 3}});
  EXPECT_THROW(dec.extend(0, std::vector<int32_t>(14, 1)), Error);  // past max_len
  EXPECT_THROW(dec.extend(0, {}), Error);
  EXPECT_THROW(dec.extend(0, {1, 999}), Error);  // outside the vocabulary
  dec.extend(0, std::vector<int32_t>(13, 1));
  EXPECT_EQ(dec.length(0), 16);
}

TEST(Generate, DecoderRejectsWhatItCannotDo) {
  auto m = make_model(Variant{}, 1, 16);
  EXPECT_THROW(Decoder(*m, 1, 17), Error);  // beyond max_seq_len
  Decoder dec(*m, 2, 16);
  EXPECT_THROW(dec.prefill({std::vector<int32_t>{}}), Error);
  EXPECT_THROW(dec.prefill({std::vector<int32_t>(17, 1)}), Error);
  EXPECT_THROW(dec.prefill({{1, 2, 300}}), Error);  // outside the vocabulary
  dec.prefill({std::vector<int32_t>(15, 1)});
  dec.step({0}, {2});
  EXPECT_EQ(dec.length(0), 16);
  EXPECT_THROW(dec.step({0}, {2}), Error);  // no wrap-around at the length limit
  EXPECT_THROW(dec.step({1}, {2}), Error);  // empty slot
}

// ---------------------------------------------------------------------------------------------

TEST(Sampler, ArgmaxTiesGoToTheLowerId) {
  std::vector<float> x = {0.f, 3.f, 1.f, 3.f, NAN};
  EXPECT_EQ(argmax(x.data(), 5), 1);
  x[0] = NAN;
  EXPECT_EQ(argmax(x.data(), 5), 1);
  SamplingParams p;
  p.greedy = true;
  EXPECT_EQ(Sampler(p, 1).sample(x.data(), 5), 1);
}

TEST(Sampler, GreedyEquivalents) {
  Rng r(11);
  std::vector<float> x(1000);
  for (int trial = 0; trial < 50; ++trial) {
    for (auto& v : x) v = float(3 * r.normal());
    const int32_t best = argmax(x.data(), (int)x.size());
    SamplingParams t0, k1, ptiny;
    t0.temperature = 0;
    k1.top_k = 1;
    k1.temperature = 1.7;
    ptiny.top_p = 1e-9;
    ptiny.temperature = 1.7;
    EXPECT_EQ(Sampler(t0, trial).sample(x.data(), 1000), best);
    EXPECT_EQ(Sampler(k1, trial).sample(x.data(), 1000), best);
    EXPECT_EQ(Sampler(ptiny, trial).sample(x.data(), 1000), best);
  }
}

TEST(Sampler, FixedSeedGivesTheSameSamples) {
  Rng r(2);
  std::vector<float> x(300);
  for (auto& v : x) v = float(r.normal());
  SamplingParams p;
  p.temperature = 0.9;
  p.top_k = 50;
  p.top_p = 0.9;
  Sampler a(p, 42), b(p, 42), c(p, 43);
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t sa = a.sample(x.data(), 300), sb = b.sample(x.data(), 300), sc = c.sample(x.data(), 300);
    EXPECT_EQ(sa, sb);
    differ += sa != sc;
  }
  EXPECT_GT(differ, 20);
}

TEST(Sampler, TemperatureTopKTopPGiveTheirDistributions) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.0f, 1.5f, -1.0f};
  const int V = 5, N = 200000;
  auto freqs = [&](const SamplingParams& p) {
    Sampler s(p, 7);
    std::vector<double> f(V, 0);
    for (int i = 0; i < N; ++i) f[s.sample(logits.data(), V)] += 1.0 / N;
    return f;
  };
  auto expect = [&](const SamplingParams& p, const std::vector<int>& allowed) {
    std::vector<double> want(V, 0);
    double z = 0;
    for (int i : allowed) z += (want[i] = std::exp(logits[i] / p.temperature));
    for (auto& w : want) w /= z;
    std::vector<double> got = freqs(p);
    for (int i = 0; i < V; ++i)  // 5 standard deviations of a binomial frequency
      EXPECT_NEAR(got[i], want[i], 5 * std::sqrt(want[i] * (1 - want[i]) / N) + 1e-12)
          << "T " << p.temperature << " k " << p.top_k << " p " << p.top_p << " id " << i;
  };
  for (double T : {0.5, 1.0, 2.5}) {
    SamplingParams p;
    p.temperature = T;
    expect(p, {0, 1, 2, 3, 4});
  }
  SamplingParams k2;
  k2.top_k = 2;
  expect(k2, {1, 3});
  // At T = 1 the probabilities are .463 (id 1), .281 (id 3), .170 (id 0), .063, .023: top-p 0.55
  // keeps ids 1 and 3 (.463 < .55 <= .744); top-p 0.8 adds id 0 (.744 < .8 <= .914).
  SamplingParams p55;
  p55.top_p = 0.55;
  expect(p55, {1, 3});
  SamplingParams p80;
  p80.top_p = 0.8;
  expect(p80, {1, 3, 0});
  // Lower temperature concentrates the mass.
  SamplingParams cold;
  cold.temperature = 0.1;
  EXPECT_GT(freqs(cold)[1], 0.99);
}

TEST(Sampler, BadValuesAreUsageErrors) {
  auto code = [](SamplingParams p) {
    try {
      validate(p);
      return 0;
    } catch (const Error& e) {
      return e.exit_code();
    }
  };
  SamplingParams p;
  EXPECT_EQ(code(p), 0);
  p.temperature = -0.1;
  EXPECT_EQ(code(p), 2);
  p = {};
  p.temperature = NAN;
  EXPECT_EQ(code(p), 2);
  p = {};
  p.top_k = -1;
  EXPECT_EQ(code(p), 2);
  p = {};
  p.top_p = 0;
  EXPECT_EQ(code(p), 2);
  p.top_p = 1.01;
  EXPECT_EQ(code(p), 2);
}

// ---------------------------------------------------------------------------------------------

TEST(Generate, TextStreamNeverSplitsACharacter) {
  io::ByteTokenizer tok;
  const std::string text = "héllo 🌍 wörld ✓ \xFF end";  // includes an invalid byte, passed through
  std::vector<int32_t> ids = tok.encode(text);
  TextStream ts(tok);
  std::string out;
  for (int32_t id : ids) {
    std::string piece = ts.push(id);
    EXPECT_EQ(utf8_complete_prefix(piece), piece.size());
    out += piece;
  }
  out += ts.finish();
  EXPECT_EQ(out, text);
  // An incomplete tail is held back until finish().
  TextStream t2(tok);
  EXPECT_EQ(t2.push(0xF0), "");
  EXPECT_EQ(t2.push(0x9F), "");
  EXPECT_EQ(t2.finish(), "\xF0\x9F");
}

// ---------------------------------------------------------------------------------------------
// `modlm generate` end to end.

namespace {

json parse_json_out(const std::string& out) {
  const size_t a = out.find('{'), b = out.rfind('}');
  if (a == std::string::npos || b == std::string::npos) return json();
  return json::parse(out.substr(a, b - a + 1));
}

class GenerateCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(temp_dir("generate_cli"));
    ASSERT_EQ(run_modlm("init " + *dir_ + "/m --d-model 64 --n-layers 4 --n-heads 4 --d-ff 96 --vocab bytes "
                        "--max-seq-len 40 --routing every_other --capacity 0.5 --predictor-hidden 32 --seed 3")
                  .code,
              0);
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  static std::string model() { return *dir_ + "/m"; }
  static std::string file(const std::string& name, const std::string& body) {
    std::string p = *dir_ + "/" + name;
    std::ofstream(p, std::ios::binary) << body;
    return p;
  }
  static std::string* dir_;
};
std::string* GenerateCli::dir_ = nullptr;

}  // namespace

TEST_F(GenerateCli, GreedyJsonMatchesTheDecoderAndReportsCacheAndRouting) {
  auto r = run_modlm("generate " + model() + " --prompt 'Hi 🌍!' --max-new 12 --greedy --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json j = parse_json_out(r.out);
  const std::vector<int32_t> ids = j["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.size(), 12u);
  EXPECT_EQ(j["generated_tokens"], 12);
  EXPECT_EQ(j["prompt_tokens"], (int)std::string("Hi 🌍!").size());  // bytes: the emoji is 4 ids
  EXPECT_EQ(j["stop_reason"], "max_new");
  EXPECT_GT(j["prompt_tokens_per_second"].get<double>(), 0);
  EXPECT_GT(j["generated_tokens_per_second"].get<double>(), 0);
  // The same tokens as the in-process decoder on the saved model.
  Model<float> m = io::load_model(model());
  Decoder dec(m, 1, 40);
  EXPECT_EQ(greedy_decode(dec, bytes_of("Hi 🌍!"), 12, nullptr), ids);
  // KV cache: per layer, dense layers hold every token, routed ones what they processed.
  const int T = 8 + 12;
  ASSERT_EQ(j["kv_cache"]["layers"].size(), 4u);
  int64_t total = 0;
  for (const auto& l : j["kv_cache"]["layers"]) {
    const int layer = l["layer"];
    total += l["bytes"].get<int64_t>();
    EXPECT_EQ(l["tokens"].get<int>(), dec.cache().count(layer, 0));
    if (layer % 2 == 0) {
      EXPECT_EQ(l["tokens"].get<int>(), T);
    }
    EXPECT_EQ(l["bytes"].get<int64_t>(), l["tokens"].get<int64_t>() * 2 * 64 * 4);
  }
  EXPECT_EQ(j["kv_cache"]["bytes"].get<int64_t>(), total);
  ASSERT_EQ(j["routed_layers"].size(), 2u);
  EXPECT_EQ(j["routed_layers"][0]["layer"], 1);
  const double f = j["routed_layers"][0]["processed_fraction"];
  EXPECT_GE(f, 0.0);
  EXPECT_LE(f, 1.0);
}

TEST_F(GenerateCli, SamplingFlagsBehave) {
  auto ids = [&](const std::string& flags) {
    auto r = run_modlm("generate " + model() + " --prompt 'Once upon' --max-new 10 --json " + flags);
    EXPECT_EQ(r.code, 0) << r.out;
    return parse_json_out(r.out)["ids"];
  };
  const json greedy = ids("--greedy");
  EXPECT_EQ(ids("--top-k 1 --temperature 2"), greedy);
  EXPECT_EQ(ids("--temperature 0"), greedy);
  EXPECT_EQ(ids("--top-p 0.000001"), greedy);
  EXPECT_EQ(ids("--seed 5 --temperature 1.2"), ids("--seed 5 --temperature 1.2"));
  EXPECT_NE(ids("--seed 5 --temperature 3"), ids("--seed 6 --temperature 3"));
}

TEST_F(GenerateCli, PromptSources) {
  const std::string p = "a prompt\nwith a newline ✓";
  const std::string f = file("prompt.txt", p);
  auto run = [&](const std::string& args) {
    auto r = run_modlm("generate " + model() + " --max-new 5 --greedy --json " + args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.out;
    json j = parse_json_out(r.out);
    EXPECT_EQ(j["sequences"][0]["prompt"], p) << args;
    return j["ids"];
  };
  const json a = run("--prompt-file " + f);
  EXPECT_EQ(run("--prompt - < " + f), a);
  EXPECT_EQ(run("< " + f), a);  // no prompt flag, stdin not a terminal
  // Human mode streams the text to stdout and the rates to stderr.
  auto r = run_modlm("generate " + model() + " --max-new 5 --greedy --prompt-file " + f);
  ASSERT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("tok/s"), std::string::npos) << r.out;
}

TEST_F(GenerateCli, PromptsFileDecodesAsABatch) {
  const std::vector<std::string> ps = {"first", "the second prompt", "3rd 🌍"};
  const std::string f = file("prompts.txt", ps[0] + "\n" + ps[1] + "\n\n" + ps[2] + "\n");
  for (const char* batch : {"8", "2"}) {
    auto r = run_modlm("generate " + model() + " --prompts-file " + f + " --max-new 6 --seed 9 --temperature 0.8 --json --batch " + batch);
    ASSERT_EQ(r.code, 0) << r.out;
    json j = parse_json_out(r.out);
    ASSERT_EQ(j["sequences"].size(), 3u);
    EXPECT_EQ(j["generated_tokens"], 18);
    EXPECT_GT(j["generated_tokens_per_second"].get<double>(), 0);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(j["sequences"][i]["prompt"], ps[i]);
      // Prompt i of a batch samples with seed + i: the same as decoding it alone.
      auto one = run_modlm("generate " + model() + " --prompt '" + ps[i] + "' --max-new 6 --temperature 0.8 --json --seed " +
                           std::to_string(9 + i));
      EXPECT_EQ(parse_json_out(one.out)["ids"], j["sequences"][i]["ids"]) << "batch " << batch << " prompt " << i;
    }
  }
}

TEST_F(GenerateCli, StopsAtMaxSeqLenAndRejectsLongPrompts) {
  auto r = run_modlm("generate " + model() + " --prompt '" + std::string(30, 'x') + "' --max-new 50 --greedy --json");
  ASSERT_EQ(r.code, 0) << r.out;
  json j = parse_json_out(r.out);
  EXPECT_EQ(j["generated_tokens"], 10);  // max_seq_len 40
  EXPECT_EQ(j["stop_reason"], "max_seq_len");
  EXPECT_NE(r.out.find("max_seq_len"), std::string::npos);
  r = run_modlm("generate " + model() + " --prompt '" + std::string(41, 'x') + "' --max-new 5");
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("max_seq_len"), std::string::npos) << r.out;
}

TEST_F(GenerateCli, BadValuesAreUsageErrors) {
  const std::string g = "generate " + model() + " ";
  const std::map<std::string, std::string> cases = {
      {"--prompt hi --temperature -1", "--temperature"},
      {"--prompt hi --top-p 0", "--top-p"},
      {"--prompt hi --top-p 1.5", "--top-p"},
      {"--prompt hi --top-k -1", "--top-k"},
      {"--prompt hi --max-new -1", "--max-new"},
      {"--prompt hi --max-new 2000000", "--max-new"},
      {"--prompt ''", "empty"},
      {"< /dev/null", "empty"},
      {"--prompt hi --prompt-file x", "only one"},
      {"--prompt hi --batch 0", "--batch"},
      {"--prompt hi --weights fp8", "--weights"},
  };
  for (const auto& [args, needle] : cases) {
    auto r = run_modlm(g + args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out;
    EXPECT_NE(r.out.find(needle), std::string::npos) << args << "\n" << r.out;
  }
  EXPECT_EQ(run_modlm("generate " + *dir_ + "/missing --prompt hi").code, 4);
}

TEST_F(GenerateCli, TraceRecordsEveryTokenAndRoutingDecision) {
  const std::string trace = *dir_ + "/trace.json";
  auto r = run_modlm("generate " + model() + " --prompt 'trace me ✓' --max-new 8 --greedy --json --trace " + trace);
  ASSERT_EQ(r.code, 0) << r.out;
  json out = parse_json_out(r.out);
  json t = json::parse(std::ifstream(trace));
  EXPECT_EQ(t["routed_layers"], json({1, 3}));
  const json& toks = t["sequences"][0]["tokens"];
  const size_t np = std::string("trace me ✓").size();
  ASSERT_EQ(toks.size(), np + 8);
  std::vector<int> processed(2, 0);
  for (size_t k = 0; k < toks.size(); ++k) {
    EXPECT_EQ(toks[k]["position"], k);
    EXPECT_EQ(toks[k]["generated"], k >= np);
    if (k >= np) {
      EXPECT_EQ(toks[k]["id"], out["ids"][k - np]);
    }
    ASSERT_EQ(toks[k]["routing"].size(), 2u);
    for (int j = 0; j < 2; ++j) {
      const json& rr = toks[k]["routing"][j];
      EXPECT_EQ(rr["processed"].get<bool>(), rr["decision_prob"].get<double>() > 0.5);
      EXPECT_NEAR(rr["gate"].get<double>(), 1 / (1 + std::exp(-rr["router_logit"].get<double>())), 1e-6);
      processed[j] += rr["processed"].get<bool>();
    }
  }
  // The routed layers' caches hold exactly the processed tokens.
  for (int j = 0; j < 2; ++j) EXPECT_EQ(out["kv_cache"]["layers"][1 + 2 * j]["tokens"], processed[j]);
}

TEST_F(GenerateCli, SentencePieceModelStreamsEmojiPromptsExactly) {
  // A SentencePiece tokenizer (byte fallback) trained on a little text: a prompt with
  // characters it never saw works, and the streamed stdout equals decode(generated ids).
  const std::string d = *dir_ + "/spm";
  std::filesystem::create_directories(d);
  {
    const std::vector<std::string> words = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then",
                                            "runs", "away", "from", "a", "big", "red", "house", "near", "river", "bank"};
    Rng r(1);
    std::string text;
    for (int i = 0; i < 6000; ++i) text += words[r.below(words.size())] + (i % 12 == 11 ? ".\n" : " ");
    file("spm/t.txt", text);
  }
  ASSERT_EQ(run_modlm("tokenizer train --input " + d + "/t.txt --vocab-size 400 --out " + d + "/tok").code, 0);
  ASSERT_EQ(run_modlm("init " + d + "/m --tokenizer " + d + "/tok/tokenizer.model --vocab 400 --d-model 32 --n-layers 2 "
                      "--n-heads 2 --d-ff 48 --routing every_other")
                .code,
            0);
  const std::string args = "generate " + d + "/m --prompt 'Hello 🌍 wörld ✓' --max-new 40 --seed 4 --temperature 1.5";
  auto js = run_modlm(args + " --json");
  ASSERT_EQ(js.code, 0) << js.out;
  const std::vector<int32_t> ids = parse_json_out(js.out)["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.size(), 40u);
  io::SentencePieceTokenizer tok(d + "/tok/tokenizer.model");
  EXPECT_GT(parse_json_out(js.out)["prompt_tokens"].get<int>(), 10);  // the emoji and ✓ fall back to bytes
  auto streamed = run_modlm(args + " 2>/dev/null | cat");  // stdout only
  ASSERT_EQ(streamed.code, 0);
  EXPECT_EQ(streamed.out, tok.decode(ids));
}

TEST(GenerateMoeCli, GeneratesTextAndJson) {
  // An MoE byte model from `modlm init`: `modlm generate` streams text and --json reports the
  // ids the in-process decoder gives.
  const std::string d = temp_dir("generate_moe_cli");
  ASSERT_EQ(run_modlm("init " + d + "/m --vocab bytes --d-model 32 --n-layers 2 --n-heads 2 --d-ff 48 --max-seq-len 40 "
                      "--moe-layers all --n-experts 4 --d-expert 16 --moe-top-k 1 --seed 2")
                .code,
            0);
  const std::string args = "generate " + d + "/m --prompt 'Hello MoE' --max-new 10 --greedy";
  auto js = run_modlm(args + " --json");
  ASSERT_EQ(js.code, 0) << js.out;
  const json j = parse_json_out(js.out);
  const std::vector<int32_t> ids = j["ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(ids.size(), 10u);
  EXPECT_EQ(j["generated_tokens"], 10);
  EXPECT_EQ(j["prompt_tokens"], 9);
  Model<float> m = io::load_model(d + "/m");
  Decoder dec(m, 1, 40);
  EXPECT_EQ(greedy_decode(dec, bytes_of("Hello MoE"), 10, nullptr), ids);
  auto text = run_modlm(args + " 2>/dev/null | cat");  // stdout only: the generated text
  ASSERT_EQ(text.code, 0) << text.out;
  EXPECT_FALSE(text.out.empty());
  EXPECT_EQ(text.out, io::ByteTokenizer().decode(ids));
  std::filesystem::remove_all(d);
}

TEST(ForceProcessedFraction, EachRoutedLayerProcessesExactlyTheAskedShareOfTheCalibrationText) {
  // A plain random model (no hand-made decision gaps): the random predictor processes ~half.
  Model<float> m(tiny_config(Variant{"every_other"}));
  m.init_weights(5);
  const std::vector<int32_t> text = bytes_of("Calibration: forty-eight bytes of text, routed!!");
  ASSERT_EQ(text.size(), 48u);
  for (double f : {0.0, 0.125, 0.25, 0.5, 1.0}) {
    const auto layers = force_processed_fraction(m, text, f);
    ASSERT_EQ(layers.size(), 2u);
    EXPECT_EQ(layers[0].layer, 1);
    EXPECT_EQ(layers[1].layer, 3);
    Decoder dec(m, 1, 48);
    dec.prefill({text});
    for (int j = 0; j < 2; ++j) {
      int processed = 0;
      for (int t = 0; t < 48; ++t) processed += dec.route(t, j).processed;
      EXPECT_EQ(processed, (int)std::lround(f * 48)) << "fraction " << f << " routed layer " << j;
      EXPECT_DOUBLE_EQ(layers[j].processed, processed / 48.0);
    }
  }
  // Only the predictor biases moved: every other tensor is as initialised.
  Model<float> fresh(tiny_config(Variant{"every_other"}));
  fresh.init_weights(5);
  for (const auto& p : m.layout().params()) {
    const bool bias = p.name.find("predictor.fc2.bias") != std::string::npos;
    const bool same = std::equal(m.params().data() + p.offset, m.params().data() + p.offset + p.numel, fresh.params().data() + p.offset);
    EXPECT_EQ(same, !bias) << p.name;
  }
}

// Several sequences, counting only their continuations: the decode steps that feed those
// tokens one by one process exactly the asked share; the prompts do not count.
TEST(ForceProcessedFraction, OnContinuationsTheDecodeStepsProcessTheAskedShare) {
  Model<float> m(tiny_config(Variant{"every_other"}));
  m.init_weights(7);
  const int P = 10, N = 7, S = 4;
  const auto prompts = random_prompts(S, P, 256, 99);
  ASSERT_EQ(prompts, random_prompts(S, P, 256, 99));
  const auto seqs = greedy_continuations(m, prompts, N);
  ASSERT_EQ(seqs.size(), (size_t)S);
  for (const auto& q : seqs) {
    ASSERT_EQ(q.size(), (size_t)(P + N - 1));
    // Each is its prompt's greedy continuation, as one sequence alone decodes it.
    Decoder one(m, 1, P + N);
    EXPECT_EQ(greedy_decode(one, std::vector<int32_t>(q.begin(), q.begin() + P), N - 1, nullptr),
              std::vector<int32_t>(q.begin() + P, q.end()));
  }
  for (double f : {0.0, 0.25, 0.5}) {
    const auto layers = force_processed_fraction(m, seqs, f, P);
    const int counted = S * (N - 1), want = (int)std::lround(f * counted);
    std::vector<int> processed(2, 0);
    for (const auto& q : seqs) {
      Decoder dec(m, 1, P + N);
      dec.prefill({std::vector<int32_t>(q.begin(), q.begin() + P)});
      for (int t = P; t < (int)q.size(); ++t) {
        dec.step({0}, {q[t]});
        for (int j = 0; j < 2; ++j) processed[j] += dec.route(0, j).processed;
      }
    }
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(processed[j], want) << "fraction " << f << " routed layer " << j;
      EXPECT_DOUBLE_EQ(layers[j].processed, (double)want / counted);
    }
  }
  // The convenience: rounds of calibration on the prompts' own continuations; after the last
  // the steps process about the fraction (the continuations move with the biases, so not exactly).
  bool converged = false;
  const auto last = force_processed_fraction_on_continuations(m, 0.25, prompts, N, 6, &converged);
  const int want = (int)std::lround(0.25 * S * (N - 1));
  for (const auto& l : last) EXPECT_DOUBLE_EQ(l.processed, (double)want / (S * (N - 1)));
  // A fixed point: greedy decoding of the prompts now feeds exactly the calibrated tokens, so
  // its steps process exactly the share.
  EXPECT_TRUE(converged);
  if (converged) {
    std::vector<int> processed(2, 0);
    for (const auto& p : prompts) {
      Decoder dec(m, 1, P + N);
      dec.prefill({p});
      for (int k = 0; k + 1 < N; ++k) {
        dec.step({0}, {argmax(dec.logits(0), 256)});
        for (int j = 0; j < 2; ++j) processed[j] += dec.route(0, j).processed;
      }
    }
    for (int j = 0; j < 2; ++j) EXPECT_EQ(processed[j], want) << "routed layer " << j;
  }
  EXPECT_THROW(force_processed_fraction_on_continuations(m, 0.25, prompts, N, 0), Error);
  EXPECT_THROW(force_processed_fraction_on_continuations(m, 0.25, {bytes_of("ab"), bytes_of("abc")}, N), Error);
  EXPECT_THROW(force_processed_fraction(m, seqs, 0.5, P + N), Error);  // nothing counted
  EXPECT_THROW(force_processed_fraction(m, std::vector<std::vector<int32_t>>{}, 0.5, 0), Error);
  EXPECT_EQ(calibration_sequences(32, 64), 8);
  EXPECT_EQ(calibration_sequences(512, 16), 1);
  EXPECT_EQ(calibration_sequences(200, 56), 4);
}

TEST(ForceProcessedFraction, RejectsWhatItCannotForce) {
  Model<float> dense(tiny_config(Variant{}));
  dense.init_weights(1);
  EXPECT_THROW(force_processed_fraction(dense, bytes_of("abc"), 0.5), Error);
  Variant aux{"every_other"};
  aux.causal = "aux_loss";
  Model<float> a(tiny_config(aux));
  a.init_weights(1);
  EXPECT_THROW(force_processed_fraction(a, bytes_of("abc"), 0.5), Error);
  Model<float> r(tiny_config(Variant{"every_other"}));
  r.init_weights(1);
  EXPECT_THROW(force_processed_fraction(r, bytes_of("abc"), 1.5), Error);
  EXPECT_THROW(force_processed_fraction(r, bytes_of("abc"), std::nan("")), Error);
  EXPECT_THROW(force_processed_fraction(r, {}, 0.5), Error);
}

TEST(DecodeWeightBytes, AnalyticCountIsWhatABatchOneStepReads) {
  // Dense: exactly the bytes the decoder reports for a step. MoD: the bytes for processed = 0
  // plus one routed block for every routed layer that processed the token.
  for (const Variant& v : {Variant{}, Variant{"every_other"}, Variant{"all"}}) {
    auto m = make_model(v, 12);
    const ModelConfig& c = m->config();
    Decoder dec(*m, 1, 64);
    dec.prefill({bytes_of("Some prompt text")});
    const double base = analytic_decode_weight_bytes(c, 0.0), full = analytic_decode_weight_bytes(c, 1.0);
    const double block = c.n_routed() ? (full - base) / c.n_routed() : 0.0;
    int seen_processed = 0, seen_skipped = 0;
    int32_t tok = 'x';
    for (int s = 0; s < 12; ++s) {
      dec.step({0}, {tok});
      int processed = 0;
      for (int j = 0; j < c.n_routed(); ++j) processed += dec.route(0, j).processed;
      seen_processed += processed;
      seen_skipped += c.n_routed() - processed;
      EXPECT_NEAR(dec.weight_bytes_read(), base + processed * block, 1e-9 * full) << v.routing << " step " << s;
      tok = argmax(dec.logits(0), c.vocab_size);
    }
    if (c.n_routed()) {
      EXPECT_GT(seen_processed, 0) << v.routing;
      EXPECT_GT(seen_skipped, 0) << v.routing;
      // A routed layer at processed = 1 costs its dense twin's layer plus router and predictor.
      const double Hp = c.routing.predictor_hidden, D = c.d_model;
      EXPECT_NEAR(full, analytic_decode_weight_bytes(dense_twin(c), 1.0) + 4.0 * c.n_routed() * (D + Hp * D + 2 * Hp + 1), 1e-6);
    }
  }
}

TEST(BenchGenerateCli, ForcedFractionComparesModWithItsDenseTwin) {
  const std::string shape = "bench generate --d-model 32 --n-layers 4 --n-heads 2 --d-ff 48 --vocab 300 --max-seq-len 96 --no-stream ";
  auto r = run_modlm(shape + "--routing every_other --capacity 0.25 --processed-fraction 0.25 --batch 1,2 --prompt-len 40 --new 8 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const json j = json::parse(r.out);
  ASSERT_TRUE(j.contains("calibration"));
  // Calibrated on the first 2 timed prompts (the largest batch; 1024 / 48 tokens would allow 8),
  // the 8 continuation tokens the timed steps feed counted: round(0.25 * 16) = 4 processed in
  // every routed layer.
  EXPECT_EQ(j["calibration"]["sequences"], 2);
  for (const auto& l : j["calibration"]["layers"]) EXPECT_DOUBLE_EQ(l["processed"].get<double>(), 4.0 / 16);
  // One timed step still has a token to calibrate on.
  EXPECT_EQ(run_modlm(shape + "--routing every_other --capacity 0.25 --processed-fraction 0.25 --batch 1 --prompt-len 40 --new 1 --json").code, 0);
  ASSERT_EQ(j["mod"]["runs"].size(), 2u);
  ASSERT_EQ(j["dense"]["runs"].size(), 2u);
  for (const auto& run : j["mod"]["runs"]) {
    EXPECT_EQ(run["processed_fraction"].size(), 2u);
    EXPECT_EQ(run["context_tokens"], 48);
    // The prompts' share per routed layer: whole tokens of the batch's 40-token prompts.
    ASSERT_EQ(run["prefill_processed_fraction"].size(), 2u);
    const double rows = 40.0 * run["batch"].get<int>();
    for (const auto& f : run["prefill_processed_fraction"]) {
      EXPECT_GE(f.get<double>(), 0.0);
      EXPECT_LE(f.get<double>(), 1.0);
      EXPECT_NEAR(f.get<double>() * rows, std::round(f.get<double>() * rows), 1e-9);
    }
  }
  EXPECT_FALSE(j["dense"]["runs"][0].contains("prefill_processed_fraction"));
  // Dense KV cache at batch 1: 4 layers x 48 tokens x K and V x 32 floats.
  EXPECT_DOUBLE_EQ(j["dense"]["runs"][0]["kv_cache_bytes"].get<double>(), 4.0 * 48 * 2 * 32 * 4);
  const json& cmp = j["comparison"];
  EXPECT_LT(cmp["analytic_flops_per_token"]["ratio"].get<double>(), 1.0);
  EXPECT_LT(cmp["analytic_weight_bytes_per_token"]["ratio"].get<double>(), 1.0);
  EXPECT_LT(cmp["runs"][0]["kv_cache_bytes_ratio"].get<double>(), 1.0);
  // The prefill side by side: time ratio, the FLOPs each executed, the analytic ratio at capacity.
  for (const auto& run : cmp["runs"]) {
    EXPECT_GT(run["prefill_time_ratio"].get<double>(), 0.0);
    EXPECT_LT(run["prefill_analytic_flop_ratio"].get<double>(), 1.0);
    const double executed = run["prefill_executed_flop_ratio"].get<double>();
    EXPECT_GT(executed, 0.0);
    EXPECT_LT(executed, 1.1);  // a routed layer costs its dense twin's plus the router and predictor at most
  }
  for (const char* bad : {"--processed-fraction 1.5", "--processed-fraction -0.5", "--processed-fraction nan"})
    EXPECT_EQ(run_modlm(shape + "--routing every_other " + bad).code, 2) << bad;
  EXPECT_EQ(run_modlm(shape + "--processed-fraction 0.5").code, 2);  // nothing routed
  EXPECT_EQ(run_modlm(shape + "--routing every_other --causal aux_loss --processed-fraction 0.5").code, 2);
}

TEST(DecodeWeightBytes, AnMoeStepReadsOnlyTheChosenExperts) {
  // Top-1 over 4 experts and no no-op: one expert per layer per token, exactly the analytic count.
  Variant v;
  v.moe = {{"layers", "all"}, {"n_experts", 4}, {"d_expert", 32}, {"top_k", 1}, {"capacity_factor", 1.0}};
  auto m = make_model(v, 13);
  const ModelConfig& c = m->config();
  Decoder dec(*m, 2, 64);
  dec.prefill({bytes_of("An MoE prompt"), bytes_of("Another one")});
  int32_t tok = 'a';
  for (int s = 0; s < 8; ++s) {
    dec.step({0}, {tok});
    EXPECT_NEAR(dec.weight_bytes_read(), analytic_decode_weight_bytes(c, 1.0), 1e-6) << "step " << s;
    tok = argmax(dec.logits(0), c.vocab_size);
    // Two rows: one or two distinct experts per layer, never more.
    dec.step({0, 1}, {tok, (int32_t)'b'});
    const double one_expert = 4.0 * 3 * c.d_model * c.moe.d_expert;
    const double base = analytic_decode_weight_bytes(c, 1.0) - c.n_layers * one_expert + 4.0 * c.d_model;  // 2 embedding rows
    const double experts = (dec.weight_bytes_read() - base) / one_expert;
    EXPECT_NEAR(experts, std::round(experts), 1e-9);
    EXPECT_GE(experts, c.n_layers);
    EXPECT_LE(experts, 2 * c.n_layers);
    tok = argmax(dec.logits(0), c.vocab_size);
  }
}

TEST_F(GenerateCli, Bf16WeightsDecodeTheRoundedModel) {
  // --weights bf16: the in-process BF16 decoder on the rounded model gives the same greedy ids.
  auto r = run_modlm("generate " + model() + " --prompt 'Hello there' --max-new 12 --greedy --weights bf16 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  const json j = parse_json_out(r.out);
  EXPECT_EQ(j["weights"], "bf16");
  Model<float> m = io::load_model(model());
  round_weights_to_bf16(m);
  Decoder dec(m, 1, 40, DecodeWeights::BF16);
  EXPECT_EQ(greedy_decode(dec, bytes_of("Hello there"), 12, nullptr), j["ids"].get<std::vector<int32_t>>());
}

TEST(BenchGenerateCli, Bf16StreamsHalfTheMatrixBytes) {
  const std::string shape = "bench generate --d-model 32 --n-layers 2 --n-heads 2 --d-ff 48 --vocab 300 --max-seq-len 64 --no-stream --batch 1 --prompt-len 8 --new 4 --json ";
  auto a = run_modlm(shape + "--weights f32"), b = run_modlm(shape + "--weights bf16");
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  ModelConfig c = ModelConfig::from_json(json{{"vocab_size", 300}, {"d_model", 32}, {"n_layers", 2}, {"n_heads", 2}, {"d_ff", 48}}, "t");
  EXPECT_DOUBLE_EQ(json::parse(a.out)["dense"]["runs"][0]["weight_bytes_per_step"].get<double>(), analytic_decode_weight_bytes(c, 1.0, 4.0));
  EXPECT_DOUBLE_EQ(json::parse(b.out)["dense"]["runs"][0]["weight_bytes_per_step"].get<double>(), analytic_decode_weight_bytes(c, 1.0, 2.0));
  EXPECT_EQ(run_modlm(shape + "--weights half").code, 2);
}

TEST(BenchGenerateCli, LongContextTimesBothContextsInOneRun) {
  const std::string shape =
      "bench generate --d-model 32 --n-layers 2 --n-heads 2 --d-ff 48 --vocab 300 --max-seq-len 96 --no-stream --batch 1 "
      "--prompt-len 8 --new 4 --json ";
  for (const char* kv : {"f32", "bf16"}) {
    auto r = run_modlm(shape + "--long-context 80 --kv " + kv);
    ASSERT_EQ(r.code, 0) << r.out;
    const json lc = json::parse(r.out)["dense"]["long_context"];
    EXPECT_EQ(lc["short_context_tokens"], 12);
    EXPECT_EQ(lc["long_context_tokens"], 84);
    // Both decoders' caches hold their whole sequences: 2 layers x tokens x K and V x 32 values.
    const double value_bytes = std::string(kv) == "bf16" ? 2.0 : 4.0;
    EXPECT_DOUBLE_EQ(lc["short_kv_cache_bytes"].get<double>(), 2.0 * 12 * 2 * 32 * value_bytes) << kv;
    EXPECT_DOUBLE_EQ(lc["long_kv_cache_bytes"].get<double>(), 2.0 * 84 * 2 * 32 * value_bytes) << kv;
    const double loss = lc["loss"].get<double>(), s = lc["short_tokens_per_second"].get<double>(),
                 l = lc["long_tokens_per_second"].get<double>();
    EXPECT_GT(s, 0);
    EXPECT_GT(l, 0);
    EXPECT_NEAR(loss, 1.0 - l / s, 1e-9);
  }
  // Without the option there is no long-context entry; bad values are usage errors.
  EXPECT_FALSE(json::parse(run_modlm(shape).out)["dense"].contains("long_context"));
  for (const char* bad : {"--long-context 8", "--long-context 4", "--long-context 93", "--long-context x"})
    EXPECT_EQ(run_modlm(shape + bad).code, 2) << bad;
}

TEST(KvCache, Bf16CacheHoldsRoundedKeysAtHalfTheBytes) {
  KvCache f, h;
  f.allocate(2, 1, 8, 2, 4);
  h.allocate(2, 1, 8, 2, 4, /*bf16=*/true);
  EXPECT_FALSE(f.bf16());
  EXPECT_TRUE(h.bf16());
  Rng r(5);
  std::vector<float> k(8), v(8);
  for (int t = 0; t < 3; ++t) {
    for (auto& x : k) x = float(r.normal());
    for (auto& x : v) x = float(r.normal());
    f.append(1, 0, 10 + t, k.data(), v.data());
    h.append(1, 0, 10 + t, k.data(), v.data());
    for (int hh = 0; hh < 2; ++hh)
      for (int d = 0; d < 4; ++d) {
        EXPECT_EQ(bf16_to_float(h.keys_bf16(1, 0, hh)[t * 4 + d]), round_to_bf16(k[hh * 4 + d]));
        EXPECT_EQ(bf16_to_float(h.values_bf16(1, 0, hh)[t * 4 + d]), round_to_bf16(v[hh * 4 + d]));
        EXPECT_EQ(f.keys(1, 0, hh)[t * 4 + d], k[hh * 4 + d]);
        EXPECT_EQ(f.values(1, 0, hh)[t * 4 + d], v[hh * 4 + d]);
      }
  }
  EXPECT_EQ(h.count(1, 0), 3);
  EXPECT_EQ(h.positions(1, 0)[2], 12);
  EXPECT_EQ(f.bytes_used(), 3u * 2 * 8 * 4);
  EXPECT_EQ(h.bytes_used(), 3u * 2 * 8 * 2);
}

TEST(Generate, Bf16KvCacheStaysCloseToTheFloatCache) {
  // Dense and MoD: the same tokens fed to a float-cache and a bf16-cache decoder give logits within
  // the rounding of the cached keys and values, and the caches hold the same tokens.
  for (const Variant& v : {Variant{}, Variant{"every_other"}}) {
    auto m = make_model(v, 31);
    const ModelConfig& c = m->config();
    Decoder f(*m, 1, 64), h(*m, 1, 64, DecodeWeights::F32, KvFormat::BF16);
    const std::vector<int32_t> seq = bytes_of("Half the bytes for every past token.");
    f.prefill({std::vector<int32_t>(seq.begin(), seq.begin() + 4)});
    h.prefill({std::vector<int32_t>(seq.begin(), seq.begin() + 4)});
    double worst = 0;
    for (size_t t = 4; t < seq.size(); ++t) {
      f.step({0}, {seq[t]});
      h.step({0}, {seq[t]});
      worst = std::max(worst, rel_diff(h.logits(0), f.logits(0), c.vocab_size));
    }
    EXPECT_GT(worst, 0.0) << v.routing;  // the bf16 cache is really read
    EXPECT_LT(worst, 2e-2) << v.routing;
    for (int l = 0; l < c.n_layers; ++l) {
      EXPECT_EQ(h.cache().count(l, 0), f.cache().count(l, 0)) << l;
      EXPECT_EQ(2 * h.cache().bytes_used(l), f.cache().bytes_used(l)) << l;
    }
  }
}

TEST(KvCache, GroupedQueryAttentionCachesOnlyTheKeyValueHeads) {
  // 4 query heads on 1 key/value head: a cached token costs 2 * Dkv floats, a quarter of MHA's.
  for (const Variant& v : {kDenseGqa, Variant{}}) {
    auto m = make_model(v, 32);
    const ModelConfig& c = m->config();
    Decoder dec(*m, 1, 32);
    dec.prefill({bytes_of("grouped")});
    dec.step({0}, {'!'});
    EXPECT_EQ(dec.cache().heads(), c.kv_heads());
    EXPECT_EQ(dec.cache().bytes_used(0), 8u * 2 * c.kv_dim() * sizeof(float));
  }
  EXPECT_EQ(tiny_config(kDenseGqa).kv_dim() * 4, tiny_config(Variant{}).kv_dim());
}

TEST_F(GenerateCli, Bf16KvCacheHalvesTheReportedCacheBytes) {
  const std::string g = "generate " + model() + " --prompt 'Cache me' --max-new 8 --greedy --json";
  auto a = run_modlm(g), b = run_modlm(g + " --kv bf16");
  ASSERT_EQ(a.code, 0) << a.out;
  ASSERT_EQ(b.code, 0) << b.out;
  const json ja = parse_json_out(a.out), jb = parse_json_out(b.out);
  EXPECT_EQ(jb["kv"], "bf16");
  EXPECT_EQ(2 * jb["kv_cache"]["bytes"].get<int64_t>(), ja["kv_cache"]["bytes"].get<int64_t>());
  EXPECT_EQ(2 * jb["kv_cache"]["dense_bytes"].get<int64_t>(), ja["kv_cache"]["dense_bytes"].get<int64_t>());
  EXPECT_EQ(run_modlm(g + " --kv int8").code, 2);
}

TEST(BenchGenerate, OpenMpSpinIsBoundedUnlessTheUserChose) {
  // Without OMP_WAIT_POLICY or GOMP_SPINCOUNT, modlm re-executes itself with GOMP_SPINCOUNT=3000
  // (spinning threads collapse under load: docs/performance.md); a user's choice is kept.
  const std::string args =
      "bench generate --d-model 32 --n-layers 2 --n-heads 2 --d-ff 48 --vocab 300 --max-seq-len 64 --no-stream "
      "--batch 1 --prompt-len 8 --new 2 --no-dense --json";
  auto r = run_modlm_env("-u OMP_WAIT_POLICY -u GOMP_SPINCOUNT", args);
  ASSERT_EQ(r.code, 0) << r.out;
  json j = parse_json_out(r.out);
  EXPECT_EQ(j["gomp_spincount"], "3000");
  EXPECT_EQ(j["omp_wait_policy"], "");
  r = run_modlm_env("-u GOMP_SPINCOUNT OMP_WAIT_POLICY=active", args);
  j = parse_json_out(r.out);
  EXPECT_EQ(j["gomp_spincount"], "");
  EXPECT_EQ(j["omp_wait_policy"], "active");
}
