// Google Benchmark for the hot kernels at the S model's shapes (D=512, H=8, F=1408, 8 x 512
// tokens; a routed layer at 12.5 % capacity sees 8 x 64). Items/s are FLOPs where the kernel
// has matrix FLOPs, rows otherwise.
//   build/bench_kernels --benchmark_filter=Attention
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <vector>

#include "infer/attend.h"
#include "infer/matvec.h"
#include "infer/weights.h"
#include "ops/attention.h"
#include "ops/bf16.h"
#include "ops/cross_entropy.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "tensor/tensor.h"
#include "util/parallel.h"
#include "util/rng.h"

using namespace modlm;

static AlignedVector<float> random_buffer(size_t n, uint64_t seed) {
  AlignedVector<float> v(n);
  Rng r(seed);
  for (auto& x : v) x = (float)(r.uniform() - 0.5);
  return v;
}

// args: batch, seq_len
static void BM_AttentionForward(benchmark::State& st) {
  const int B = st.range(0), T = st.range(1), H = 8, Dh = 64, D = H * Dh, n = B * T;
  auto qkv = random_buffer((size_t)n * 3 * D, 1);
  AlignedVector<float> out((size_t)n * D), lse((size_t)n * H);
  std::vector<int> seqs;
  for (int b = 0; b <= B; ++b) seqs.push_back(b * T);
  for (auto _ : st) ops::attention_forward<float>(qkv.data(), 3 * D, seqs, {H, Dh}, out.data(), D, lse.data());
  st.SetItemsProcessed(st.iterations() * ops::attention_flops(seqs, {H, Dh}));
}
BENCHMARK(BM_AttentionForward)->Args({8, 512})->Args({8, 64})->Unit(benchmark::kMillisecond)->UseRealTime();

static void BM_AttentionBackward(benchmark::State& st) {
  const int B = st.range(0), T = st.range(1), H = 8, Dh = 64, D = H * Dh, n = B * T;
  auto qkv = random_buffer((size_t)n * 3 * D, 1), dout = random_buffer((size_t)n * D, 2);
  AlignedVector<float> out((size_t)n * D), lse((size_t)n * H), dqkv((size_t)n * 3 * D);
  std::vector<int> seqs;
  for (int b = 0; b <= B; ++b) seqs.push_back(b * T);
  ops::attention_forward<float>(qkv.data(), 3 * D, seqs, {H, Dh}, out.data(), D, lse.data());
  for (auto _ : st)
    ops::attention_backward<float>(qkv.data(), 3 * D, out.data(), D, lse.data(), dout.data(), D, seqs, {H, Dh}, dqkv.data());
  st.SetItemsProcessed(st.iterations() * ops::attention_flops(seqs, {H, Dh}));  // forward-equivalent FLOPs
}
BENCHMARK(BM_AttentionBackward)->Args({8, 512})->Args({8, 64})->Unit(benchmark::kMillisecond)->UseRealTime();

// args: rows n, in, out — y = x W^T, the model's forward products.
static void BM_LinearForward(benchmark::State& st) {
  const int n = st.range(0), in = st.range(1), out = st.range(2);
  auto x = random_buffer((size_t)n * in, 1), W = random_buffer((size_t)out * in, 2);
  AlignedVector<float> y((size_t)n * out);
  for (auto _ : st) ops::linear_forward<float>(x.data(), in, W.data(), n, in, out, y.data(), out);
  st.SetItemsProcessed(st.iterations() * 2LL * n * in * out);
}
BENCHMARK(BM_LinearForward)
    ->Args({4096, 512, 1536})->Args({4096, 512, 2816})->Args({4096, 1408, 512})->Args({4096, 512, 8192})
    ->Args({512, 512, 1536})->Args({512, 512, 2816})->Args({512, 1408, 512})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

static void BM_RmsNormForward(benchmark::State& st) {
  const int n = st.range(0), D = 512;
  auto x = random_buffer((size_t)n * D, 1), w = random_buffer(D, 2);
  AlignedVector<float> y((size_t)n * D), inv(n);
  for (auto _ : st) ops::rmsnorm_forward<float>(x.data(), D, w.data(), n, D, 1e-5f, y.data(), D, inv.data());
  st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_RmsNormForward)->Arg(4096)->UseRealTime();

static void BM_SwigluForward(benchmark::State& st) {
  const int n = st.range(0), F = 1408;
  auto h = random_buffer((size_t)n * 2 * F, 1);
  AlignedVector<float> g((size_t)n * F);
  for (auto _ : st) ops::swiglu_forward<float>(h.data(), n, F, g.data());
  st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_SwigluForward)->Arg(4096)->UseRealTime();

static void BM_CrossEntropy(benchmark::State& st) {
  const int n = st.range(0), V = st.range(1);
  auto logits = random_buffer((size_t)n * V, 1);
  std::vector<int32_t> tgt(n, 3);
  auto work = logits;
  for (auto _ : st) {
    st.PauseTiming();
    work = logits;
    st.ResumeTiming();
    benchmark::DoNotOptimize(ops::cross_entropy<float>(work.data(), tgt.data(), n, V, 1.0f / n));
  }
  st.SetItemsProcessed(st.iterations() * n);
}
BENCHMARK(BM_CrossEntropy)->Args({4096, 8192})->Unit(benchmark::kMillisecond)->UseRealTime();

// The decode kernels on the M head shape [32000, 1024] (131 MB in float, more than the caches):
// range(0) = batch, range(1) = format (0 f32, 1 bf16, 2 f16, 3 q8), range(2) = kernel (0 as the
// library picks, 1 row tiles, 2 the outer-product kernel). Bytes processed = the matrix as stored.
static void BM_DecodeMatvec(benchmark::State& st) {
  // range(3): 1 = the M MLP's down projection [1024, 2816] (long rows) instead; 2 = [1024, 1024],
  // which stays in L2 between iterations: the kernel's arithmetic rate apart from memory.
  const int shape = (int)st.range(3);
  const int out = shape == 0 ? 32000 : 1024, in = shape == 1 ? 2816 : 1024, B = (int)st.range(0), fmt = (int)st.range(1),
            kernel = (int)st.range(2);
  const infer::OuterKernelFrom choice(kernel == 1 ? 1 << 30 : kernel == 2 ? 1 : 0);
  auto W = random_buffer((size_t)out * in, 7);
  std::vector<uint16_t> Wh((size_t)out * in);
  std::vector<infer::Half> Wf((size_t)out * in);
  std::vector<int8_t> Wq((size_t)out * in);
  std::vector<float> Sq((size_t)out * q8_blocks(in));
  if (fmt == 1) to_bf16(W.data(), W.size(), Wh.data());
  if (fmt == 2)
    for (size_t i = 0; i < W.size(); ++i) Wf[i].bits = float_to_f16(W[i]);
  if (fmt == 3) quantize_q8(W.data(), out, in, Wq.data(), Sq.data());
  auto X = random_buffer((size_t)B * in, 8);
  AlignedVector<float> Y((size_t)B * out);
  for (auto _ : st) {
    if (fmt == 1) infer::matvec(Wh.data(), out, in, X.data(), in, B, Y.data(), out);
    else if (fmt == 2) infer::matvec(Wf.data(), out, in, X.data(), in, B, Y.data(), out);
    else if (fmt == 3) infer::matvec_q8(Wq.data(), Sq.data(), out, in, X.data(), in, B, Y.data(), out);
    else infer::matvec(W.data(), out, in, X.data(), in, B, Y.data(), out);
    benchmark::DoNotOptimize(Y.data());
  }
  const double bytes = fmt == 0 ? 4.0 : fmt == 3 ? 1.125 : 2.0;
  st.SetBytesProcessed((int64_t)(st.iterations() * (double)out * in * bytes));
  st.counters["GFLOPs"] = benchmark::Counter(2.0 * B * out * in * st.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DecodeMatvec)
    ->ArgsProduct({{1, 8}, {0, 1, 2, 3}, {0}, {0}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// From L2 (bench_kernels --benchmark_filter=DecodeMatvecL2): batch 1-8, each format.
BENCHMARK(BM_DecodeMatvec)
    ->Name("BM_DecodeMatvecL2")
    ->ArgsProduct({{1, 2, 4, 8}, {0, 1, 2, 3}, {0}, {2}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
// Row tiles against the outer-product kernel where the choice is made (bench_kernels
// --benchmark_filter=DecodeMatvecKernels): batch, format, kernel.
BENCHMARK(BM_DecodeMatvec)
    ->Name("BM_DecodeMatvecKernels")
    ->ArgsProduct({{4, 8, 12, 16, 24, 32, 64}, {0, 1, 2, 3}, {1, 2}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Decode attention over the cache, one step of one M layer: 16 heads of 64 dims, each head's
// keys and values contiguous (as the decoder's cache keeps them), heads spread over the threads as
// in Decoder::layer_step. range(0) = cached positions, range(1) = cache (0 f32, 1 bf16),
// range(2) = layers whose caches the iterations cycle through: 1 keeps the cache in L2/L3, 32
// (537 MB of bf16 at 4096 positions) reads it from memory as a long-context decode step does.
// Bytes processed = the keys and values read.
static void BM_DecodeAttention(benchmark::State& st) {
  constexpr int H = 16, Dh = 64;
  const int n = (int)st.range(0), layers = (int)st.range(2);
  const bool bf16 = st.range(1) == 1;
  const size_t per_head = (size_t)n * Dh, per_layer = per_head * H;
  AlignedVector<float> K, V;
  std::vector<uint16_t> Kb, Vb;
  {
    auto k1 = random_buffer(per_layer, 11), v1 = random_buffer(per_layer, 12);
    if (bf16) {
      Kb.resize(per_layer * layers), Vb.resize(per_layer * layers);
      for (int l = 0; l < layers; ++l)
        to_bf16(k1.data(), per_layer, Kb.data() + l * per_layer), to_bf16(v1.data(), per_layer, Vb.data() + l * per_layer);
    } else {
      K.resize(per_layer * layers), V.resize(per_layer * layers);
      for (int l = 0; l < layers; ++l)
        std::copy(k1.begin(), k1.end(), K.begin() + l * per_layer), std::copy(v1.begin(), v1.end(), V.begin() + l * per_layer);
    }
  }
  auto q = random_buffer((size_t)H * Dh, 13);
  AlignedVector<float> out((size_t)H * Dh), scores((size_t)H * n);
  const float scale = 0.125f;
  int l = 0;
  for (auto _ : st) {
    const size_t base = (size_t)l * per_layer;
    l = (l + 1) % layers;
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; ++h) {
      float* s = scores.data() + (size_t)h * n;
      const size_t at = base + h * per_head;
      if (bf16)
        infer::attend_one(q.data() + h * Dh, Kb.data() + at, Vb.data() + at, n, Dh, scale, s, out.data() + h * Dh);
      else
        infer::attend_one(q.data() + h * Dh, K.data() + at, V.data() + at, n, Dh, scale, s, out.data() + h * Dh);
    }
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed((int64_t)(st.iterations() * 2.0 * per_layer * (bf16 ? 2 : 4)));
}
BENCHMARK(BM_DecodeAttention)
    ->ArgsProduct({{512, 4096}, {0, 1}, {1, 32}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// One parallel piece of a decode step, empty: what a step pays per product and attention to hand
// work to the threads. arg 0: a new OpenMP region per piece; 1: team_run on a team held across
// the pieces (hold_team, as Decoder::step does). ~3 us against ~0.2 us here (docs/performance.md,
// "One team per decode step").
static void BM_TeamRun(benchmark::State& st) {
  const bool held = st.range(0);
  std::vector<int> touched(64);
  auto pieces = [&] {
    for (auto _ : st) team_run(true, [&](int t, int) { touched[t * 16 % 64]++; });
  };
  if (held) hold_team(pieces);
  else pieces();
  benchmark::DoNotOptimize(touched.data());
}
BENCHMARK(BM_TeamRun)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();

// As modlm's main: where OpenBLAS took this CPU for a core older than AVX2, re-execute with the
// kernels it runs, so that the BLAS baselines here are the library's real speed.
int main(int argc, char** argv) {
  if (modlm::ops::set_blas_core_for_reexec()) execv("/proc/self/exe", argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
