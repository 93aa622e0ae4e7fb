#include "demo/decode.h"

#include <omp.h>

#include <chrono>

#include "util/error.h"

#if __has_include("infer/decoder.h") && __has_include("infer/sampler.h")
#define MODLM_DEMO_HAS_DECODER 1
#include "infer/decoder.h"
#include "infer/sampler.h"
#endif

namespace modlm::demo {

#ifdef MODLM_DEMO_HAS_DECODER
namespace {

struct Run {
  std::vector<int32_t> out;
  int steps = 0;
  double seconds = 0;
  size_t kv_bytes = 0;
  int64_t kv_tokens = 0, kv_dense_bytes = 0;
};

// Prefill, then n_new tokens one at a time on `threads` threads.
Run decode_once(const Model<float>& model, const std::vector<int32_t>& prompt, int n_new, double temperature, int top_k,
                uint64_t seed, int threads) {
  const ModelConfig& cfg = model.config();
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  Run r;
  try {
    const int max_len = std::min(cfg.max_seq_len, (int)prompt.size() + n_new);
    n_new = max_len - (int)prompt.size();
    infer::Decoder dec(model, 1, max_len);
    infer::SamplingParams sp;
    sp.temperature = temperature;
    sp.top_k = top_k;
    infer::Sampler sampler(sp, seed);
    dec.prefill({prompt});
    auto t0 = std::chrono::steady_clock::now();
    int32_t next = sampler.sample(dec.logits(0), cfg.vocab_size);
    for (int i = 0; i < n_new; ++i) {
      r.out.push_back(next);
      if (i + 1 == n_new || dec.length(0) >= max_len) break;
      dec.step({0}, {next});  // one token in, the next token's logits out
      ++r.steps;
      next = sampler.sample(dec.logits(0), cfg.vocab_size);
    }
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const auto& cache = dec.cache();
    r.kv_bytes = cache.bytes_used();
    for (int l = 0; l < cache.n_layers(); ++l) r.kv_tokens += cache.count(l, 0);
    r.kv_dense_bytes = (int64_t)dec.length(0) * cache.n_layers() * 2 * cache.heads() * cache.head_dim() * (int64_t)sizeof(float);
  } catch (...) {
    omp_set_num_threads(saved);
    throw;
  }
  omp_set_num_threads(saved);
  return r;
}

}  // namespace
#endif

DecodeResult decode_sample(const Model<float>& model, const io::Tokenizer& tok, const std::vector<int32_t>& prompt,
                           int n_new, double temperature, int top_k, uint64_t seed) {
  DecodeResult r;
  r.prompt = tok.decode(prompt);
  r.prompt_tokens = (int)prompt.size();
#ifdef MODLM_DEMO_HAS_DECODER
  if (prompt.empty()) throw bad_input("decode: empty prompt");
  // One decoding stream is small work per token: on a busy machine all threads can be much slower
  // than one. A short probe picks the faster of the two; the sample is then decoded with it.
  const int all = omp_get_max_threads();
  int threads = all;
  if (all > 1) {
    const int probe = std::min(n_new, 12);
    Run a = decode_once(model, prompt, probe, temperature, top_k, seed, all);
    Run b = decode_once(model, prompt, probe, temperature, top_k, seed, 1);
    if (b.steps > 0 && a.steps > 0 && b.seconds < a.seconds) threads = 1;
  }
  // The better of two identical runs (same seed, same tokens): a moment of load elsewhere should
  // not set the rate.
  Run run = decode_once(model, prompt, n_new, temperature, top_k, seed, threads);
  Run again = decode_once(model, prompt, n_new, temperature, top_k, seed, threads);
  if (again.steps == run.steps && again.seconds < run.seconds) run.seconds = again.seconds;
  r.available = true;
  r.threads = threads;
  r.new_tokens = (int)run.out.size();
  r.continuation = tok.decode(run.out);
  r.seconds = run.seconds;
  r.tokens_per_second = run.seconds > 0 ? run.steps / run.seconds : 0;
  r.kv_cache_bytes = (int64_t)run.kv_bytes;
  r.kv_cache_tokens = run.kv_tokens;
  r.kv_dense_bytes = run.kv_dense_bytes;
#else
  (void)model, (void)n_new, (void)temperature, (void)top_k, (void)seed;
#endif
  return r;
}

DecodeRace decode_race(const std::vector<const Model<float>*>& models, const std::vector<int32_t>& prompt, int n_new,
                       double temperature, int top_k, uint64_t seed, int rounds) {
  DecodeRace race;
#ifdef MODLM_DEMO_HAS_DECODER
  if (models.empty() || prompt.empty()) return race;
  const int all = omp_get_max_threads();
  int threads = all;
  if (all > 1) {
    const int probe = std::min(n_new, 12);
    Run a = decode_once(*models[0], prompt, probe, temperature, top_k, seed, all);
    Run b = decode_once(*models[0], prompt, probe, temperature, top_k, seed, 1);
    if (b.steps > 0 && a.steps > 0 && b.seconds < a.seconds) threads = 1;
  }
  race.threads = threads;
  race.rounds = std::max(1, rounds);
  race.new_tokens = n_new;
  race.tokens_per_second.assign(models.size(), 0.0);
  for (int r = 0; r < race.rounds; ++r)
    for (size_t i = 0; i < models.size(); ++i) {
      const Run run = decode_once(*models[i], prompt, n_new, temperature, top_k, seed, threads);
      if (run.seconds > 0) race.tokens_per_second[i] = std::max(race.tokens_per_second[i], run.steps / run.seconds);
    }
#else
  (void)models, (void)prompt, (void)n_new, (void)temperature, (void)top_k, (void)seed, (void)rounds;
#endif
  return race;
}

}  // namespace modlm::demo
