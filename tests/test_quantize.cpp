// 16-bit and 8-bit weights: the kernels against float products over the stored values, the
// quantized folder format, decoding from it directly, and what a hostile quantized file gets.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "cli_helpers.h"
#include "infer/decoder.h"
#include "infer/matvec.h"
#include "infer/sampler.h"
#include "infer/weights.h"
#include "io/model_dir.h"
#include "io/safetensors.h"
#include "io/tokenizer.h"
#include "ops/bf16.h"
#include "util/error.h"

using namespace modlm;
using namespace modlm::infer;
using namespace modlm::testing;
namespace fs = std::filesystem;

namespace {

double max_rel(const float* a, const float* b, size_t n) {
  double d = 0, m = 0;
  for (size_t i = 0; i < n; ++i) d = std::max(d, (double)std::abs(a[i] - b[i])), m = std::max(m, (double)std::abs(b[i]));
  return d / std::max(1.0, m);
}

// Y = X W^T in double over the given (already widened) weights: the kernels' reference.
std::vector<float> reference_product(const std::vector<float>& W, int out, int in, const std::vector<float>& X, int B) {
  std::vector<float> Y((size_t)B * out);
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < out; ++j) {
      double s = 0;
      for (int k = 0; k < in; ++k) s += (double)W[(size_t)j * in + k] * X[(size_t)b * in + k];
      Y[(size_t)b * out + j] = (float)s;
    }
  return Y;
}

std::vector<float> logits_of(Decoder& dec, const std::vector<int32_t>& prompt, const std::vector<int32_t>& feed) {
  const int V = dec.config().vocab_size;
  std::vector<float> out;
  dec.prefill({prompt});
  out.insert(out.end(), dec.logits(0), dec.logits(0) + V);
  for (int32_t t : feed) {
    dec.step({0}, {t});
    out.insert(out.end(), dec.logits(0), dec.logits(0) + V);
  }
  return out;
}

}  // namespace

TEST(Quantize, Q8BlocksRoundToNearestWithinHalfAScale) {
  Rng r(1);
  const int rows = 5, cols = 77;  // a partial last block
  std::vector<float> w(rows * cols);
  for (auto& x : w) x = (float)r.normal();
  for (int k = 32; k < 64; ++k) w[2 * cols + k] = 0;  // an all-zero block
  std::vector<int8_t> q(w.size());
  std::vector<float> s(rows * 3);
  quantize_q8(w.data(), rows, cols, q.data(), s.data());
  EXPECT_EQ(s[2 * 3 + 1], 0.0f);
  for (int i = 0; i < rows; ++i)
    for (int k = 0; k < cols; ++k) {
      const float sc = s[i * 3 + k / 32];
      ASSERT_LE(std::abs((int)q[i * cols + k]), 127);
      ASSERT_LE(std::abs(w[i * cols + k] - q[i * cols + k] * sc), 0.5f * sc * (1 + 1e-5f) + 1e-30f) << i << " " << k;
    }
}

TEST(Quantize, HalfAndQ8KernelsEqualTheFloatProductOverTheStoredValues) {
  // Both kernels: row tiles (small batches by default) and the outer-product kernel (from
  // set_outer_min_batch inputs; 1 sends every batch there).
  // 29 rows stay below the size that wakes the thread team; 97 x 300 and up are split between
  // the threads (unevenly: 97 is odd), as a decode step's matrices are.
  Rng r(2);
  for (int outer_from : {0, 1, 1 << 30})
  for (int out : {29, 97})
  for (int in : {1, 15, 16, 17, 31, 32, 33, 100, 300, 1024})
    for (int B : {1, 2, 3, 8, 9, 16, 33, 64, 65}) {
      const OuterKernelFrom kernel(outer_from);
      std::vector<float> W((size_t)out * in), X((size_t)B * in);
      for (auto& x : W) x = (float)r.normal();
      for (auto& x : X) x = (float)r.normal();
      // f16
      std::vector<Half> H(W.size());
      std::vector<float> Wh(W.size());
      for (size_t i = 0; i < W.size(); ++i) H[i].bits = float_to_f16(W[i]), Wh[i] = f16_to_float(H[i].bits);
      std::vector<float> want((size_t)B * out), got((size_t)B * out);
      want = reference_product(Wh, out, in, X, B);
      matvec(H.data(), out, in, X.data(), in, B, got.data(), out);
      ASSERT_LT(max_rel(got.data(), want.data(), got.size()), 1e-5) << "f16 out " << out << " in " << in << " B " << B;
      // q8
      const int nb = (in + 31) / 32;
      std::vector<int8_t> q(W.size());
      std::vector<float> sc((size_t)out * nb), Wq(W.size());
      quantize_q8(W.data(), out, in, q.data(), sc.data());
      for (int j = 0; j < out; ++j)
        for (int k = 0; k < in; ++k) Wq[(size_t)j * in + k] = q[(size_t)j * in + k] * sc[(size_t)j * nb + k / 32];
      want = reference_product(Wq, out, in, X, B);
      matvec_q8(q.data(), sc.data(), out, in, X.data(), in, B, got.data(), out);
      ASSERT_LT(max_rel(got.data(), want.data(), got.size()), 1e-5) << "q8 out " << out << " in " << in << " B " << B;
      // accumulate adds
      std::vector<float> acc = want;
      matvec_q8(q.data(), sc.data(), out, in, X.data(), in, B, acc.data(), out, true);
      for (size_t i = 0; i < acc.size(); ++i) ASSERT_NEAR(acc[i], 2 * want[i], 1e-4 * (1 + std::abs(want[i])));
    }
}

TEST(Quantize, FoldersDecodeAsStoredAndMatchTheirDequantizedModel) {
  const std::string d = temp_dir("quantize");
  auto r = run_modlm("init " + d + "/f32 --vocab bytes --d-model 64 --n-layers 4 --n-heads 4 --n-kv-heads 2 --d-ff 96 --routing every_other "
                     "--capacity 0.5 --seed 3");
  ASSERT_EQ(r.code, 0) << r.out;
  Model<float> base = io::load_model(d + "/f32");
  const std::vector<int32_t> prompt = io::ByteTokenizer().encode("Quantized weights, same model.");
  std::vector<int32_t> feed;
  for (int i = 0; i < 12; ++i) feed.push_back((int32_t)(37 * i % 256));
  Decoder f32(base, 1, 64);
  const std::vector<float> ref = logits_of(f32, prompt, feed);
  const double tol[] = {0, 3e-2, 5e-3, 6e-2};  // vs f32 logits: bf16, f16, q8 (stated in docs/quantize.md)
  for (MatFormat fmt : {MatFormat::BF16, MatFormat::F16, MatFormat::Q8}) {
    const std::string name = format_name(fmt), dir = d + "/" + name;
    SCOPED_TRACE(name);
    r = run_modlm("quantize " + d + "/f32 " + dir + " --dtype " + name + " --json");
    ASSERT_EQ(r.code, 0) << r.out;
    // The file: matrices in the format (+ scales), small tensors float, fused groups adjacent.
    io::SafetensorsFile f = io::SafetensorsFile::open(dir + "/model.safetensors");
    const io::DType want = fmt == MatFormat::Q8 ? io::DType::I8 : fmt == MatFormat::BF16 ? io::DType::BF16 : io::DType::F16;
    EXPECT_EQ(f.find("layers.1.attn.wk.weight")->dtype, want);
    EXPECT_EQ(f.find("tok_embeddings.weight")->dtype, want);
    EXPECT_EQ(f.find("layers.1.router.weight")->dtype, io::DType::F32);
    EXPECT_EQ(f.find("layers.0.attn_norm.weight")->dtype, io::DType::F32);
    EXPECT_EQ(f.find("layers.0.attn.wk.weight")->begin, f.find("layers.0.attn.wq.weight")->end);
    for (const char* m : {"tok_embeddings.weight", "layers.1.attn.wq.weight", "layers.3.mlp.w2.weight", "output.weight"})
      EXPECT_EQ((uintptr_t)f.data(*f.find(m)) % 64, 0u) << m;  // mapped matrices start on cache lines
    EXPECT_EQ(f.find("layers.0.mlp.w3.weight")->begin, f.find("layers.0.mlp.w1.weight")->end);
    if (fmt == MatFormat::Q8) {
      EXPECT_EQ(f.find("layers.0.attn.wv.weight.scales")->shape, (std::vector<int64_t>{32, 2}));
      EXPECT_EQ(f.find("layers.0.attn.wk.weight.scales")->begin, f.find("layers.0.attn.wq.weight.scales")->end);
    }
    auto w = InferenceWeights::load(dir);
    EXPECT_EQ(w->format(), fmt);
    EXPECT_FALSE(w->has_float_matrices());
    // Decoding the folder as stored = decoding the dequantized float model (eval's model).
    Model<float> deq = io::load_model(dir);
    Decoder stored(w, 1, 64), widened(deq, 1, 64);
    const std::vector<float> a = logits_of(stored, prompt, feed), b = logits_of(widened, prompt, feed);
    EXPECT_LT(max_rel(a.data(), b.data(), a.size()), 2e-5);
    // Both prefill paths of a stored format: the step kernels for short prompt batches (two
    // prompts at once, last rows), widened GEMMs beyond kBound rows (all rows). The bound is
    // set here (the measured one depends on the BLAS kernels, Decoder::step_prefill_rows), and
    // both decoders, stored and float, switch paths at it.
    {
      const int kBound = 288;
      const StepPrefillRows bound(kBound);
      const std::vector<int32_t> p1 = io::ByteTokenizer().encode("two"), p2 = io::ByteTokenizer().encode("prompts at once");
      Decoder s2(w, 3, 320), f2(deq, 3, 320);
      s2.prefill({p1, p2});
      f2.prefill({p1, p2});
      for (int i = 0; i < 2; ++i) EXPECT_LT(max_rel(s2.logits(i), f2.logits(i), 256), 2e-5) << i;
      // Up to kBound rows in all: three prompts of 90 (each prompt's last row gets
      // logits), and one of 100 with every row's logits.
      std::vector<std::vector<int32_t>> three(3, std::vector<int32_t>(90));
      for (int i = 0; i < 3; ++i)
        for (int t = 0; t < 90; ++t) three[i][t] = (int32_t)((t * 11 + 29 * i) % 256);
      s2.prefill(three);
      f2.prefill(three);
      ASSERT_EQ(s2.logit_rows(), 3);
      for (int i = 0; i < 3; ++i) EXPECT_LT(max_rel(s2.logits(i), f2.logits(i), 256), 2e-5) << i;
      std::vector<int32_t> mid(100);
      for (int t = 0; t < 100; ++t) mid[t] = (int32_t)((t * 3 + 1) % 256);
      s2.prefill({mid}, /*all_logits=*/true);
      f2.prefill({mid}, /*all_logits=*/true);
      ASSERT_EQ(s2.logit_rows(), 100);
      EXPECT_LT(max_rel(s2.logits(0), f2.logits(0), 100 * 256), 2e-5);
      std::vector<int32_t> longp(kBound + 9);
      for (size_t t = 0; t < longp.size(); ++t) longp[t] = (int32_t)(t * 7 % 256);
      s2.prefill({longp}, /*all_logits=*/true);
      f2.prefill({longp}, /*all_logits=*/true);
      ASSERT_EQ(s2.logit_rows(), (int)longp.size());
      EXPECT_LT(max_rel(s2.logits(0), f2.logits(0), longp.size() * 256), 2e-5);
      // A long prompt's routed layers take the step kernels when they process at most
      // kBound rows, widened GEMMs beyond: prompts of kBound + 9 and 700
      // tokens (capacity 0.5) reach both (checked on the processed counts), each matching the
      // float model.
      auto processed_in = [](const Decoder& d, int j) {
        int c = 0;
        for (int t = 0; t < d.token_rows(); ++t) c += d.route(t, j).processed;
        return c;
      };
      int fewest = 1 << 30, most = 0;
      for (int len : {(int)longp.size(), 700}) {
        std::vector<int32_t> p(len);
        for (int t = 0; t < len; ++t) p[t] = (int32_t)((t * 13 + 5) % 256);
        Decoder s3(w, 1, 701), f3(deq, 1, 701);
        s3.prefill({p}, /*all_logits=*/true);
        f3.prefill({p}, /*all_logits=*/true);
        EXPECT_LT(max_rel(s3.logits(0), f3.logits(0), (size_t)len * 256), 2e-5) << len;
        ASSERT_EQ(s3.token_rows(), len);
        for (int j = 0; j < 2; ++j) {
          const int processed = processed_in(s3, j);
          EXPECT_EQ(processed, processed_in(f3, j));
          fewest = std::min(fewest, processed), most = std::max(most, processed);
        }
        // The steps after such a prefill read the caches it left (processed tokens only).
        s3.step({0}, {7});
        f3.step({0}, {7});
        EXPECT_LT(max_rel(s3.logits(0), f3.logits(0), 256), 2e-5) << len;
      }
      EXPECT_GT(fewest, 0);
      EXPECT_LE(fewest, kBound);
      EXPECT_GT(most, kBound);
    }
    // ... and the rounded in-memory model the benchmark times.
    Model<float> m2(base.config());
    std::copy(base.params().begin(), base.params().end(), m2.params().begin());
    round_weights_to(m2, fmt);
    Decoder mem(InferenceWeights::from_model(m2, fmt), 1, 64);
    const std::vector<float> c = logits_of(mem, prompt, feed);
    EXPECT_LT(max_rel(c.data(), b.data(), c.size()), 2e-5);
    // Against the float model: the format's rounding, within the stated tolerance.
    const double err = max_rel(a.data(), ref.data(), a.size());
    EXPECT_GT(err, 0.0);
    EXPECT_LT(err, tol[(int)fmt]) << "max relative logit difference " << err;
    std::printf("%s: max |logit - f32 logit| / max(1, max |f32 logit|) = %.2e over %zu logits\n", name.c_str(), err, a.size());
    // The CLI decodes it as stored, and refuses another format for it.
    r = run_modlm("generate " + dir + " --prompt 'abc' --max-new 5 --greedy --json");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("\"weights\":\"" + name + "\""), std::string::npos) << r.out;
    EXPECT_EQ(run_modlm("generate " + dir + " --prompt 'abc' --max-new 5 --weights f32").code, 2);
    // eval reads it too (its weights dequantized).
    EXPECT_EQ(run_modlm("eval " + dir + " --data " + project_valid_gz() + " --seq-len 32 --max-windows 2").code, 0);
  }
  // A float folder converted in memory decodes as the q8 folder does.
  auto g1 = run_modlm("generate " + d + "/f32 --prompt 'abc' --max-new 8 --greedy --weights q8 --json");
  auto g2 = run_modlm("generate " + d + "/q8 --prompt 'abc' --max-new 8 --greedy --json");
  ASSERT_EQ(g1.code, 0) << g1.out;
  ASSERT_EQ(g2.code, 0) << g2.out;
  EXPECT_EQ(json::parse(g1.out)["ids"], json::parse(g2.out)["ids"]) << g1.out << "\n" << g2.out;
  EXPECT_EQ(run_modlm("quantize " + d + "/f32 " + d + "/x --dtype q4").code, 2);
  EXPECT_EQ(run_modlm("quantize " + d + "/f32 " + d + "/x --dtype f32").code, 2);
  EXPECT_FALSE(fs::exists(d + "/x"));
  fs::remove_all(d);
}

TEST(Quantize, HostileQuantizedFilesAreRefusedWithTheTensorNamed) {
  const std::string d = temp_dir("quantize_bad");
  ASSERT_EQ(run_modlm("init " + d + "/f32 --vocab bytes --d-model 32 --n-layers 2 --n-heads 2 --d-ff 64").code, 0);
  ASSERT_EQ(run_modlm("quantize " + d + "/f32 " + d + "/q8 --dtype q8").code, 0);
  // Rewrite the q8 file with one change each.
  auto rewrite = [&](const std::string& out, const std::function<void(std::vector<io::TensorRef>&, std::vector<std::vector<uint8_t>>&)>& spoil) {
    fs::copy(d + "/q8", out, fs::copy_options::recursive);
    io::SafetensorsFile f = io::SafetensorsFile::open(d + "/q8/model.safetensors");
    std::vector<std::vector<uint8_t>> bytes;
    std::vector<io::TensorRef> refs;
    for (const auto& t : f.tensors()) bytes.emplace_back(f.data(t), f.data(t) + (t.end - t.begin));
    for (size_t i = 0; i < f.tensors().size(); ++i) refs.push_back({f.tensors()[i].name, f.tensors()[i].dtype, f.tensors()[i].shape, bytes[i].data()});
    spoil(refs, bytes);
    io::write_safetensors(out + "/model.safetensors", refs);
  };
  auto index = [](std::vector<io::TensorRef>& refs, const std::string& n) {
    for (size_t i = 0; i < refs.size(); ++i)
      if (refs[i].name == n) return i;
    return refs.size();
  };
  rewrite(d + "/no_scales", [&](auto& refs, auto&) { refs.erase(refs.begin() + index(refs, "layers.0.mlp.w2.weight.scales")); });
  rewrite(d + "/neg_scale", [&](auto& refs, auto& bytes) { reinterpret_cast<float*>(bytes[index(refs, "layers.1.attn.wo.weight.scales")].data())[3] = -1; });
  rewrite(d + "/nan_scale", [&](auto& refs, auto& bytes) { reinterpret_cast<float*>(bytes[index(refs, "output.weight.scales")].data())[0] = NAN; });
  rewrite(d + "/bad_shape", [&](auto& refs, auto&) { refs[index(refs, "layers.0.attn.wq.weight.scales")].shape = {16, 2}; });  // same bytes, wrong shape
  rewrite(d + "/bad_dtype", [&](auto& refs, auto&) { refs[index(refs, "layers.0.attn.wq.weight")].dtype = io::DType::U8; });
  const std::vector<std::pair<std::string, std::string>> cases = {{"no_scales", "layers.0.mlp.w2.weight.scales"},
                                                                  {"neg_scale", "layers.1.attn.wo.weight.scales"},
                                                                  {"nan_scale", "output.weight.scales"},
                                                                  {"bad_shape", "layers.0.attn.wq.weight.scales"},
                                                                  {"bad_dtype", "layers.0.attn.wq.weight"}};
  for (const auto& [name, tensor] : cases) {
    auto r = run_modlm("generate " + d + "/" + name + " --prompt abc --max-new 2");
    EXPECT_EQ(r.code, 3) << name << ": " << r.out;
    EXPECT_NE(r.out.find(tensor), std::string::npos) << name << ": " << r.out;
  }
  fs::remove_all(d);
}
