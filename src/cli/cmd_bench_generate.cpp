// `modlm bench generate`: KV-cache decoding speed of a random-weight model built in memory (no
// tokenizer: random prompt ids), at several batch sizes, with the weight bandwidth it achieves
// next to the machine's streaming read bandwidth measured the same way (an OpenMP sum).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "infer/calibrate.h"
#include "infer/decoder.h"
#include "infer/matvec.h"
#include "infer/sampler.h"
#include "model/flops.h"
#include "model/model.h"
#include "ops/gemm.h"
#include "tensor/tensor.h"
#include "util/error.h"
#include "util/rng.h"

namespace modlm::cli {

namespace {

using clk = std::chrono::steady_clock;
double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

// Read bandwidth of an OpenMP sum over a buffer of floats (GB/s, 1e9 bytes): the best of the
// passes run so far, so passes can be interleaved with other timings.
class StreamProbe {
 public:
  explicit StreamProbe(size_t bytes) : buf_(bytes / sizeof(float)) {
    float* a = buf_.data();  // a raw pointer: through the vector GCC emits gathers here
    const size_t n = buf_.size();
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) a[i] = 1.0f;
  }
  void pass() {
    const float* a = buf_.data();
    const size_t n = buf_.size();
    auto t0 = clk::now();
    float s = 0;
#pragma omp parallel for simd schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; ++i) s += a[i];
    best_s_ = std::min(best_s_, seconds_since(t0));
    if (s < 0) std::printf(" ");  // keep the sum alive
  }
  double best_gbps() const { return (double)buf_.size() * sizeof(float) / best_s_ / 1e9; }
  void forget() { best_s_ = 1e30; }  // a new timing: only its own passes count

 private:
  AlignedVector<float> buf_;
  double best_s_ = 1e30;
};

double stream_read_gbps(size_t bytes) {
  StreamProbe p(bytes);
  for (int rep = 0; rep < 5; ++rep) p.pass();
  return p.best_gbps();
}

// Best-of-5 SGEMM rate (GFLOP/s) of the model's largest prefill product shape: [512, D] x [D, 4D]
// through the same BLAS call the prefill makes (ops/gemm.h).
double sgemm_gflops(int D) {
  const int M = 512, K = D, N = 4 * D;
  AlignedVector<float> x((size_t)M * K, 0.01f), w((size_t)N * K, 0.02f), y((size_t)M * N);
  double best = 1e30;
  for (int rep = 0; rep < 6; ++rep) {
    auto t0 = clk::now();
    ops::linear_forward<float>(x.data(), K, w.data(), M, K, N, y.data(), N);
    if (rep > 0) best = std::min(best, seconds_since(t0));  // the first call warms up
  }
  return 2.0 * M * K * N / best / 1e9;
}

constexpr uint64_t kPromptSeed = 11;  // the timed prompts: infer::random_prompts(B, len, V, kPromptSeed)

struct DecodeTiming {
  int batch = 0;
  double prefill_flops = 0, step_flops = 0;  // executed FLOPs (ops::FlopCounter) of the prefill / a median step
  double prefill_s = 0, step_median_s = 0, step_mean_s = 0, step_min_s = 0, weight_bytes_per_step = 0;
  double products_s = 0, products_flops = 0;  // a mean step's matrix products (infer::MatvecClock)
  double best_step_gbps = 0;            // the fastest step's weight bytes / its time (best of n_new)
  double kv_bytes = 0;                  // K and V the cache holds at the end (prompt + new tokens)
  std::vector<double> processed;        // per routed layer: fraction of the decoded tokens it processed
  std::vector<double> prefill_processed;  // per routed layer: fraction of the prompt tokens it processed
};

// `stream` (if any) runs one pass after every 4th timed step (at least 5 in all), outside the
// steps' timings: the bandwidth it reports is of the same minutes as the steps.
DecodeTiming time_decode(std::shared_ptr<const infer::InferenceWeights> w, int B, int prompt_len, int n_new, infer::KvFormat kv,
                         StreamProbe* stream) {
  const int V = w->config().vocab_size;
  ops::CountFlops counting;  // the executed FLOPs of prefill and steps, for the GFLOP/s figures
  infer::Decoder dec(w, B, prompt_len + n_new, kv);
  const std::vector<std::vector<int32_t>> prompts = infer::random_prompts(B, prompt_len, V, kPromptSeed);
  std::vector<int> slots(B);
  for (int i = 0; i < B; ++i) slots[i] = i;
  DecodeTiming t;
  t.batch = B;
  for (int pass = 0; pass < 2; ++pass) {  // the first pass warms up (page faults, thread team)
    const int64_t f0 = ops::FlopCounter::total().load();
    auto t0 = clk::now();
    dec.prefill(prompts);
    const double prefill = seconds_since(t0);
    const double prefill_flops = (double)(ops::FlopCounter::total().load() - f0);
    std::vector<double> prefill_processed(dec.routed_layers().size(), 0.0);
    for (size_t j = 0; j < prefill_processed.size(); ++j) {
      for (int i = 0; i < B * prompt_len; ++i) prefill_processed[j] += dec.route(i, (int)j).processed;
      prefill_processed[j] /= (double)B * prompt_len;
    }
    const int64_t f1 = ops::FlopCounter::total().load();
    std::vector<double> steps;
    double bytes = 0, best_gbps = 0;
    int stream_passes = 0;
    std::vector<int64_t> processed(dec.routed_layers().size(), 0);
    std::vector<int32_t> toks(B);
    const int n = pass == 0 ? std::min(n_new, 4) : n_new;
    infer::MatvecClock::reset();
    infer::MatvecClock::enable(true);
    for (int s = 0; s < n; ++s) {
      auto ts = clk::now();
      for (int i = 0; i < B; ++i) toks[i] = infer::argmax(dec.logits(i), V);
      dec.step(slots, toks);
      steps.push_back(seconds_since(ts));
      bytes += dec.weight_bytes_read();
      best_gbps = std::max(best_gbps, dec.weight_bytes_read() / steps.back() / 1e9);
      if (stream && pass == 1 && s % 4 == 3) stream->pass(), ++stream_passes;
      for (size_t j = 0; j < processed.size(); ++j)
        for (int i = 0; i < B; ++i) processed[j] += dec.route(i, (int)j).processed;
    }
    infer::MatvecClock::enable(false);
    if (pass == 0) continue;
    for (; stream && stream_passes < 5; ++stream_passes) stream->pass();
    t.products_s = infer::MatvecClock::seconds() / n;
    t.products_flops = (double)infer::MatvecClock::flops() / n;
    t.prefill_s = prefill;
    t.prefill_flops = prefill_flops;
    t.prefill_processed = prefill_processed;
    t.step_flops = (double)(ops::FlopCounter::total().load() - f1) / n;
    double sum = 0;
    for (double x : steps) sum += x;
    t.step_mean_s = sum / steps.size();
    std::sort(steps.begin(), steps.end());
    t.step_median_s = steps[steps.size() / 2];
    t.step_min_s = steps.front();
    t.weight_bytes_per_step = bytes / n;
    t.best_step_gbps = best_gbps;
    t.kv_bytes = (double)dec.cache().bytes_used();
    for (int64_t p : processed) t.processed.push_back((double)p / ((double)n * B));
  }
  return t;
}


// Batch-1 decode at two context lengths with their steps alternated (short, long, short, ...), so
// both meet the same memory phase (this machine's bandwidth moves within minutes: two separate
// runs measured the same binary's 4096-token step at 21 and 37 ms). Each decoder feeds its own
// greedy continuation of a random prompt.
struct ContextTiming {
  double short_median_s = 0, long_median_s = 0, short_min_s = 0, long_min_s = 0;
  double short_kv_bytes = 0, long_kv_bytes = 0;  // K and V cached at the end
};

ContextTiming time_contexts(std::shared_ptr<const infer::InferenceWeights> w, int short_len, int long_len, int n_new,
                            infer::KvFormat kv) {
  const int V = w->config().vocab_size;
  infer::Decoder dec[2] = {infer::Decoder(w, 1, short_len + n_new, kv), infer::Decoder(w, 1, long_len + n_new, kv)};
  dec[0].prefill(infer::random_prompts(1, short_len, V, kPromptSeed));
  dec[1].prefill(infer::random_prompts(1, long_len, V, kPromptSeed));
  std::vector<double> steps[2];
  for (int s = 0; s < n_new; ++s)
    for (int i = 0; i < 2; ++i) {
      const int32_t tok = infer::argmax(dec[i].logits(0), V);
      auto t0 = clk::now();
      dec[i].step({0}, {tok});
      steps[i].push_back(seconds_since(t0));
    }
  for (auto& v : steps) std::sort(v.begin(), v.end());
  ContextTiming t;
  t.short_median_s = steps[0][steps[0].size() / 2], t.long_median_s = steps[1][steps[1].size() / 2];
  t.short_min_s = steps[0].front(), t.long_min_s = steps[1].front();
  t.short_kv_bytes = (double)dec[0].cache().bytes_used(), t.long_kv_bytes = (double)dec[1].cache().bytes_used();
  return t;
}

// MoD against its dense twin, side by side: measured decode speed, weight bytes and KV-cache
// bytes next to the analytic per-token FLOP ratio (SPEC §5 count of the decoded tokens: FLOPs of
// a sequence of prompt + new tokens minus those of the prompt, routed layers at capacity) and the
// analytic weight-read ratio of a batch-1 step (routed blocks read with probability = capacity).
void add_comparison(const ModelConfig& cfg, const std::string& kind, const std::string& mod_key, const std::string& dense_key,
                    int prompt_len, int n_new, double matrix_bytes, bool print, json& out) {
  const ModelConfig dense = dense_twin(cfg);
  const int T0 = prompt_len, T1 = prompt_len + n_new;
  auto per_token = [&](const ModelConfig& c) {
    return (double)(analytic_forward_flops(c, T1).total() - analytic_forward_flops(c, T0).total()) / (T1 - T0);
  };
  const double flops_mod = per_token(cfg), flops_dense = per_token(dense);
  const double bytes_mod = analytic_decode_weight_bytes(cfg, cfg.n_routed() ? cfg.routing.capacity : 1.0, matrix_bytes);
  const double bytes_dense = analytic_decode_weight_bytes(dense, 1.0, matrix_bytes);
  json cmp{{"model", kind},
           {"analytic_flops_per_token", {{kind, flops_mod}, {"dense", flops_dense}, {"ratio", flops_mod / flops_dense}}},
           {"analytic_weight_bytes_per_token", {{kind, bytes_mod}, {"dense", bytes_dense}, {"ratio", bytes_mod / bytes_dense}}}};
  if (print) {
    std::printf("\n%s vs %s (one run, same prompts; analytic at capacity %.3f, tokens %d..%d):\n", mod_key.c_str(), dense_key.c_str(),
                cfg.n_routed() ? cfg.routing.capacity : 1.0, T0, T1);
    std::printf("  analytic FLOPs per decoded token   %8.1f M vs %8.1f M  ratio %.3f\n", flops_mod / 1e6, flops_dense / 1e6, flops_mod / flops_dense);
    std::printf("  analytic weight bytes per token    %8.1f MB vs %7.1f MB  ratio %.3f (batch 1)\n", bytes_mod / 1e6, bytes_dense / 1e6,
                bytes_mod / bytes_dense);
  }
  json per_batch = json::array();
  const json& rm = out[mod_key]["runs"];
  const json& rd = out[dense_key]["runs"];
  for (size_t i = 0; i < rm.size() && i < rd.size(); ++i) {
    const double speed = rm[i]["decode_tokens_per_second"].get<double>() / rd[i]["decode_tokens_per_second"].get<double>();
    const double time = rm[i]["step_ms"].get<double>() / rd[i]["step_ms"].get<double>();
    const double bytes = rm[i]["weight_bytes_per_step"].get<double>() / rd[i]["weight_bytes_per_step"].get<double>();
    const double kv = rm[i]["kv_cache_bytes"].get<double>() / rd[i]["kv_cache_bytes"].get<double>();
    per_batch.push_back({{"batch", rm[i]["batch"]}, {"decode_speedup", speed}, {"step_time_ratio", time},
                         {"weight_bytes_ratio", bytes}, {"kv_cache_bytes_ratio", kv}});
    if (print)
      std::printf("  batch %-3d decode speed %.2fx (step time ratio %.3f) | measured weight bytes ratio %.3f | KV bytes %.1f vs %.1f MB, ratio %.3f\n",
                  rm[i]["batch"].get<int>(), speed, time, bytes, rm[i]["kv_cache_bytes"].get<double>() / 1e6,
                  rd[i]["kv_cache_bytes"].get<double>() / 1e6, kv);
    // The prefill: its time ratio against the FLOP ratio it executed (FlopCounter; the routed
    // layers process the share of prompt tokens the predictor picks, which a forced
    // --processed-fraction fits to the continuations, not the prompts) and the analytic one at
    // capacity (SPEC §5, the prompt of T0 tokens).
    const double pf_time = rd[i]["prefill_tokens_per_second"].get<double>() / rm[i]["prefill_tokens_per_second"].get<double>();
    const double pf_flops = rm[i]["prefill_flops"].get<double>() / rd[i]["prefill_flops"].get<double>();
    const double pf_analytic = (double)analytic_forward_flops(cfg, T0).total() / (double)analytic_forward_flops(dense, T0).total();
    per_batch.back()["prefill_time_ratio"] = pf_time;
    per_batch.back()["prefill_executed_flop_ratio"] = pf_flops;
    per_batch.back()["prefill_analytic_flop_ratio"] = pf_analytic;
    if (print) {
      std::printf("  batch %-3d prefill time ratio %.3f | executed FLOP ratio %.3f", rm[i]["batch"].get<int>(), pf_time, pf_flops);
      if (rm[i].contains("prefill_processed_fraction_mean"))
        std::printf(" (prompt tokens processed %.3f)", rm[i]["prefill_processed_fraction_mean"].get<double>());
      std::printf(" | analytic at capacity %.3f | time / executed FLOPs %.2f\n", pf_analytic, pf_time / pf_flops);
    }
  }
  cmp["runs"] = per_batch;
  if (mod_key == kind) out["comparison"] = cmp;
  else out["comparison/" + mod_key.substr(mod_key.find('/') + 1)] = cmp;
}

}  // namespace

Command add_bench_generate(CLI::App& app) {
  struct Opts {
    int prompt_len = 32, n_new = 64, long_context = 0;
    double processed_fraction = -1;
    std::string weights = "f32", kv = "f32";
    std::string batches = "1,8";
    bool json_out = false, no_dense = false, no_stream = false;
    ModelFlags flags;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* bench = app.get_subcommand("bench");
  CLI::App* sub = bench->add_subcommand("generate", "KV-cache decode tok/s and effective weight bandwidth (random weights)");
  sub->add_option("--prompt-len", o->prompt_len, "prompt tokens per sequence (random ids)")->capture_default_str();
  sub->add_option("--new", o->n_new, "decode steps timed")->capture_default_str();
  sub->add_option("--batch", o->batches, "comma list of batch sizes")->capture_default_str();
  CLI::Option* fraction_opt = sub->add_option("--processed-fraction", o->processed_fraction,
                  "force the fraction of tokens each routed layer processes (moves the random predictor's bias on a "
                  "calibration text; default: the random predictor decides, ~0.5)");
  sub->add_option("--weights", o->weights,
                  "matrix format(s) the steps stream: f32, bf16, f16 or q8, or a comma list timed side by side (f32,q8)")
      ->capture_default_str();
  sub->add_option("--kv", o->kv, "f32, or bf16: the KV cache in bfloat16")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  sub->add_option("--long-context", o->long_context,
                  "also time batch-1 steps after this many prompt tokens against --prompt-len, steps alternated (the "
                  "long-context loss in one run; needs --max-seq-len >= it + --new)");
  sub->add_flag("--no-dense", o->no_dense, "do not time the dense twin of a routed model");
  sub->add_flag("--no-stream", o->no_stream, "do not measure the streaming read bandwidth");
  sub->add_flag("--json", o->json_out, "print JSON");
  o->flags.add_to(*sub);
  sub->footer(
      "Default shape: D=512 L=8 H=8 F=1408 V=8192. Decode tok/s = batch / median step time (a step = one token\n"
      "for every sequence, greedy argmax included); effective bandwidth = weight bytes a step reads / step time\n"
      "(a routed block no token processes is not read); \"% of stream\" compares the fastest step's with the\n"
      "stream. Stream = best of 5 OpenMP sums over 1 GiB at the start; the ratios' stream is the best of the\n"
      "sums run between the timed steps (after every 4th), over as many bytes as a dense step reads (so both\n"
      "meet the same caches). SGEMM = best of 5 [512, D] x [D, 4D] products, probed before each timing.\n"
      "Products = the step's matrix products timed call by call: their GFLOP/s, its share of SGEMM and their\n"
      "share of the step. --long-context N: batch-1 steps after N prompt tokens and after --prompt-len, alternated\n"
      "step by step; \"slower\" = 1 - (short median step / long median step).\n"
      "Example: modlm bench generate --d-model 1024 --n-layers 16 --n-heads 16 --d-ff 2816 --vocab 32000 --batch 1,8\n"
      "Long context: ... --max-seq-len 4160 --prompt-len 512 --long-context 4096 --new 16 --kv bf16");
  return {sub, [o, fraction_opt]() -> int {
            json base{{"vocab_size", 8192}, {"d_model", 512}, {"n_layers", 8}, {"n_heads", 8}, {"d_ff", 1408}};
            ModelConfig cfg = o->flags.apply(base, "flags");
            if (o->prompt_len < 1 || o->n_new < 1) throw usage_error("--prompt-len and --new must be >= 1");
            if (o->prompt_len + o->n_new > cfg.max_seq_len) throw usage_error("--prompt-len + --new exceeds max_seq_len");
            if (o->long_context != 0) {
              if (o->long_context <= o->prompt_len) throw usage_error("--long-context must exceed --prompt-len");
              if (o->long_context + o->n_new > cfg.max_seq_len)
                throw usage_error("--long-context + --new exceeds max_seq_len (" + std::to_string(cfg.max_seq_len) +
                                  "): raise --max-seq-len");
            }
            const std::vector<int> batches = parse_int_list(o->batches, "--batch");
            const bool forced = fraction_opt->count() > 0;
            if (forced) {
              if (!(o->processed_fraction >= 0 && o->processed_fraction <= 1))
                throw usage_error("--processed-fraction must be in [0, 1]");
              if (!cfg.n_routed() || cfg.routing.causal != "predictor")
                throw usage_error("--processed-fraction needs routed layers with --causal predictor");
            }
            std::vector<infer::MatFormat> formats;
            {
              std::stringstream ss(o->weights);
              for (std::string f; std::getline(ss, f, ',');) formats.push_back(infer::parse_format(f, "--weights"));
              if (formats.empty()) throw usage_error("--weights needs at least one format");
            }
            const bool many = formats.size() > 1;
            const infer::KvFormat kv_format = o->kv == "bf16" ? infer::KvFormat::BF16 : infer::KvFormat::F32;
            const char* spin = std::getenv("GOMP_SPINCOUNT");
            const char* wait = std::getenv("OMP_WAIT_POLICY");
            json out{{"omp_wait_policy", wait ? wait : ""}, {"gomp_spincount", spin ? spin : ""}, {"weights", o->weights}, {"kv", o->kv}, {"prompt_len", o->prompt_len}, {"new", o->n_new}, {"threads", omp_get_max_threads()}, {"blas", ops::blas_kernels()},
                     {"prefill_step_rows", infer::Decoder::step_prefill_rows(/*float_matrices=*/true)}, {"config", cfg.to_json()}};
            // The models here are converted in memory and keep their float matrices: their prefill
            // takes the step kernels up to the float bound, GEMMs beyond.
            if (!o->json_out)
              std::printf("SGEMM probe and prefill: %s; prefills of up to %d rows run the step kernels, longer ones GEMMs\n",
                          out["blas"].get<std::string>().c_str(), out["prefill_step_rows"].get<int>());
            double stream = 0;
            if (!o->no_stream) {
              stream = stream_read_gbps((size_t)1 << 30);
              out["stream_read_gbps"] = stream;
              if (!o->json_out) std::printf("stream read bandwidth: %.1f GB/s (OpenMP sum over 1 GiB, %d threads)\n", stream, omp_get_max_threads());
            }
            // The model, then its dense twin (a routed or MoE model's comparison).
            const std::string kind = model_kind(cfg);
            std::vector<std::pair<std::string, ModelConfig>> models = {{kind, cfg}};
            if (kind != "dense" && !o->no_dense) models.push_back({"dense", dense_twin(cfg)});
            for (const auto& [model_name, c] : models) {
              Model<float> m(c);
              m.init_weights(1);
              const AlignedVector<float> pristine = m.params();
              for (infer::MatFormat fmt : formats) {
              const std::string name = many ? model_name + "/" + infer::format_name(fmt) : model_name;
              std::copy(pristine.begin(), pristine.end(), m.params().begin());
              infer::round_weights_to(m, fmt);  // prefill and steps compute the same model
              json cal_info;
              if (forced && c.n_routed()) {
                // Calibrate the model as this format rounds it (rounding moves the decisions), on
                // the timed prompts' continuations (the first few of them), counting the
                // continuation tokens the steps decide (infer/calibrate.h says why).
                const int n_seqs = std::min(*std::max_element(batches.begin(), batches.end()),
                                            infer::calibration_sequences(o->prompt_len, o->n_new));
                json cal = json::array();
                bool converged = false;
                for (const auto& layer : infer::force_processed_fraction_on_continuations(
                         m, o->processed_fraction, infer::random_prompts(n_seqs, o->prompt_len, c.vocab_size, kPromptSeed),
                         o->n_new + 1, 4, &converged))  // the timed steps feed --new tokens
                  cal.push_back({{"layer", layer.layer}, {"bias_shift", layer.bias_shift}, {"processed", layer.processed}});
                cal_info = {{"fraction", o->processed_fraction}, {"sequences", n_seqs}, {"converged", converged}, {"layers", cal}};
                if (!out.contains("calibration")) out["calibration"] = cal_info;  // the first format's; each run's below
                if (!o->json_out)
                  std::printf("forced processed fraction %.3f: predictor biases moved on the greedy continuations of the first %d timed prompts%s\n",
                              o->processed_fraction, n_seqs, converged ? " (a fixed point: they decode exactly that share)" : "");
              }
              const auto iw = infer::InferenceWeights::from_model(m, fmt);
              const double weight_bytes = (double)iw->matrix_bytes();
              if (!o->json_out)
                std::printf("%s: D=%d L=%d H=%d (kv %d) F=%d V=%d, %d routed layers, %.1f MB of %s matrices\n", name.c_str(), c.d_model,
                            c.n_layers, c.n_heads, c.kv_heads(), c.d_ff, c.vocab_size, c.n_routed(), weight_bytes / 1e6,
                            infer::format_name(fmt));
              const size_t stream_probe_bytes = std::max<size_t>(
                  (size_t)64 << 20, (size_t)analytic_decode_weight_bytes(dense_twin(c), 1.0, infer::bytes_per_weight(fmt)) / 4096 * 4096);
              // One buffer for every batch's timing (filling it is a write of the whole size).
              std::unique_ptr<StreamProbe> stream_probe;
              if (!o->no_stream) stream_probe = std::make_unique<StreamProbe>(stream_probe_bytes);
              json runs = json::array();
              for (int B : batches) {
                // The stream probe runs between the timed steps (time_decode): the machine's
                // bandwidth moves between phases within minutes (a probe right before the timing
                // has read 21 GB/s where the steps after it read 26), so the ratio compares numbers
                // of the same minutes. It reads as many bytes as a dense step of this model does,
                // so both meet the same caches (here 32 MB streams at 50-58 GB/s, 128 MB and more
                // at 26-36), and both sides are a best of several (the "best of N"): the
                // fastest step against the fastest sum.
                if (stream_probe) stream_probe->forget();
                const double sgemm_now = sgemm_gflops(c.d_model);
                DecodeTiming t = time_decode(iw, B, o->prompt_len, o->n_new, kv_format, stream_probe.get());
                const double stream_now = stream_probe ? stream_probe->best_gbps() : 0.0;
                const double gbps = t.weight_bytes_per_step / t.step_median_s / 1e9;
                json j{{"batch", B},
                       {"prefill_tokens_per_second", B * o->prompt_len / t.prefill_s},
                       {"decode_tokens_per_second", B / t.step_median_s},
                       {"decode_tokens_per_second_mean", B / t.step_mean_s},
                       {"step_ms", t.step_median_s * 1e3},
                       {"step_ms_min", t.step_min_s * 1e3},
                       {"weight_bytes_per_step", t.weight_bytes_per_step},
                       {"effective_weight_gbps", gbps},
                       {"best_step_weight_gbps", t.best_step_gbps},
                       {"kv_cache_bytes", t.kv_bytes},
                       {"context_tokens", o->prompt_len + o->n_new}};
                // Per routed layer and their mean, under `key` (none for a model without routed layers).
                auto add_processed = [&](const char* key, const std::vector<double>& per_layer) {
                  double mean = 0;
                  for (double p : per_layer) mean += p / per_layer.size();
                  if (!per_layer.empty()) j[key] = per_layer, j[std::string(key) + "_mean"] = mean;
                  return mean;
                };
                const double mean_processed = add_processed("processed_fraction", t.processed);
                const double mean_prefill_processed = add_processed("prefill_processed_fraction", t.prefill_processed);
                j["prefill_flops"] = t.prefill_flops;
                if (stream_now > 0) {
                  j["fraction_of_stream"] = t.best_step_gbps / stream_now;
                  j["median_fraction_of_stream"] = gbps / stream_now;
                  j["stream_read_gbps"] = stream_now;
                  j["stream_probe_bytes"] = stream_probe_bytes;
                }
                const double prefill_gf = t.prefill_flops / t.prefill_s / 1e9, step_gf = t.step_flops / t.step_median_s / 1e9;
                j["sgemm_gflops"] = sgemm_now;
                j["prefill_gflops"] = prefill_gf;
                j["prefill_fraction_of_sgemm"] = prefill_gf / sgemm_now;
                j["decode_gflops"] = step_gf;
                j["decode_fraction_of_sgemm"] = step_gf / sgemm_now;
                // The step's matrix products alone (decode kernels, timed call by call).
                const double products_gf = t.products_s > 0 ? t.products_flops / t.products_s / 1e9 : 0.0;
                j["products_gflops"] = products_gf;
                j["products_fraction_of_sgemm"] = products_gf / sgemm_now;
                j["products_share_of_step"] = t.products_s / t.step_mean_s;
                runs.push_back(j);
                if (!o->json_out) {
                  std::printf("  batch %-3d prefill %8.0f tok/s | decode %8.1f tok/s (%.2f ms/step, min %.2f) | %.1f MB weights/step -> %.1f GB/s",
                              B, B * o->prompt_len / t.prefill_s, B / t.step_median_s, t.step_median_s * 1e3, t.step_min_s * 1e3,
                              t.weight_bytes_per_step / 1e6, gbps);
                  if (stream_now > 0)
                    std::printf(" (best step %.1f = %.0f%% of stream %.1f over %.0f MB)", t.best_step_gbps, 100 * t.best_step_gbps / stream_now,
                                stream_now, stream_probe_bytes / 1e6);
                  std::printf(" | prefill %.1f, decode %.1f GFLOP/s = %.0f%%, %.0f%% of SGEMM %.0f", prefill_gf, step_gf, 100 * prefill_gf / sgemm_now,
                              100 * step_gf / sgemm_now, sgemm_now);
                  std::printf(" (products %.1f GFLOP/s = %.0f%%, %.0f%% of the step)", products_gf, 100 * products_gf / sgemm_now,
                              100 * t.products_s / t.step_mean_s);
                  std::printf(" | KV %.1f MB at %d tokens", t.kv_bytes / 1e6, o->prompt_len + o->n_new);
                  if (!t.processed.empty()) std::printf(" | processed %.3f (prompts %.3f)", mean_processed, mean_prefill_processed);
                  std::printf("\n");
                  std::fflush(stdout);
                }
              }
              out[name] = {{"weight_bytes", weight_bytes}, {"format", infer::format_name(fmt)}, {"runs", runs}};
              if (o->long_context > 0) {
                const ContextTiming ct = time_contexts(iw, o->prompt_len, o->long_context, o->n_new, kv_format);
                const double loss = 1.0 - ct.short_median_s / ct.long_median_s, loss_best = 1.0 - ct.short_min_s / ct.long_min_s;
                out[name]["long_context"] = {{"short_context_tokens", o->prompt_len + o->n_new},
                                             {"long_context_tokens", o->long_context + o->n_new},
                                             {"short_tokens_per_second", 1.0 / ct.short_median_s},
                                             {"long_tokens_per_second", 1.0 / ct.long_median_s},
                                             {"short_step_ms_min", ct.short_min_s * 1e3},
                                             {"long_step_ms_min", ct.long_min_s * 1e3},
                                             {"loss", loss},
                                             {"loss_best_steps", loss_best},
                                             {"short_kv_cache_bytes", ct.short_kv_bytes},
                                             {"long_kv_cache_bytes", ct.long_kv_bytes}};
                if (!o->json_out) {
                  std::printf("  long context, batch 1, steps alternated: %d tokens %.1f tok/s vs %d tokens %.1f tok/s -> %.0f%% slower "
                              "(best steps %.2f vs %.2f ms: %.0f%%) | KV %.1f vs %.1f MB\n",
                              o->long_context + o->n_new, 1.0 / ct.long_median_s, o->prompt_len + o->n_new, 1.0 / ct.short_median_s,
                              100 * loss, ct.long_min_s * 1e3, ct.short_min_s * 1e3, 100 * loss_best, ct.long_kv_bytes / 1e6,
                              ct.short_kv_bytes / 1e6);
                  std::fflush(stdout);
                }
              }
              if (!cal_info.is_null()) out[name]["calibration"] = cal_info;
              }
            }
            for (infer::MatFormat fmt : formats) {
              const std::string suffix = many ? std::string("/") + infer::format_name(fmt) : "";
              if (out.contains(kind + suffix) && out.contains("dense" + suffix) && kind != "dense")
                add_comparison(cfg, kind, kind + suffix, "dense" + suffix, o->prompt_len, o->n_new, infer::bytes_per_weight(fmt), !o->json_out, out);
            }
            if (many) {
              // Each format against the first, model by model, batch by batch (same run).
              json fr = json::array();
              if (!o->json_out) std::printf("\nformats against %s (decode tok/s ratio):\n", infer::format_name(formats[0]));
              for (const auto& [model_name, c] : models)
                for (size_t f = 1; f < formats.size(); ++f) {
                  const json& a = out[model_name + "/" + infer::format_name(formats[f])]["runs"];
                  const json& b = out[model_name + "/" + infer::format_name(formats[0])]["runs"];
                  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
                    const double r = a[i]["decode_tokens_per_second"].get<double>() / b[i]["decode_tokens_per_second"].get<double>();
                    fr.push_back({{"model", model_name}, {"format", infer::format_name(formats[f])}, {"batch", a[i]["batch"]}, {"speedup", r}});
                    if (!o->json_out)
                      std::printf("  %-6s %-5s batch %-3d %.2fx\n", model_name.c_str(), infer::format_name(formats[f]), a[i]["batch"].get<int>(), r);
                  }
                }
              out["format_speedups"] = fr;
            }
            if (o->json_out) std::printf("%s\n", out.dump().c_str());
            return 0;
          }};
}

}  // namespace modlm::cli
