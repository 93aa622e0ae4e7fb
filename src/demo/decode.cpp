#include "demo/decode.h"

#include <chrono>

#include "util/error.h"

#if __has_include("infer/decoder.h") && __has_include("infer/sampler.h")
#define MODLM_DEMO_HAS_DECODER 1
#include "infer/decoder.h"
#include "infer/sampler.h"
#endif

namespace modlm::demo {

DecodeResult decode_sample(const Model<float>& model, const io::Tokenizer& tok, const std::vector<int32_t>& prompt,
                           int n_new, double temperature, int top_k, uint64_t seed) {
  DecodeResult r;
  r.prompt = tok.decode(prompt);
  r.prompt_tokens = (int)prompt.size();
#ifdef MODLM_DEMO_HAS_DECODER
  const ModelConfig& cfg = model.config();
  if (prompt.empty()) throw bad_input("decode: empty prompt");
  const int max_len = std::min(cfg.max_seq_len, (int)prompt.size() + n_new);
  n_new = max_len - (int)prompt.size();
  infer::Decoder dec(model, 1, max_len);
  infer::SamplingParams sp;
  sp.temperature = temperature;
  sp.top_k = top_k;
  infer::Sampler sampler(sp, seed);
  dec.prefill({prompt});
  std::vector<int32_t> out;
  using clk = std::chrono::steady_clock;
  auto t0 = clk::now();
  int32_t next = sampler.sample(dec.logits(0), cfg.vocab_size);
  int steps = 0;
  for (int i = 0; i < n_new; ++i) {
    out.push_back(next);
    if (i + 1 == n_new || dec.length(0) >= max_len) break;
    dec.step({0}, {next});  // one token in, the next token's logits out
    ++steps;
    next = sampler.sample(dec.logits(0), cfg.vocab_size);
  }
  r.seconds = std::chrono::duration<double>(clk::now() - t0).count();
  r.available = true;
  r.new_tokens = (int)out.size();
  r.continuation = tok.decode(out);
  r.tokens_per_second = r.seconds > 0 ? steps / r.seconds : 0;
  const auto& cache = dec.cache();
  r.kv_cache_bytes = (int64_t)cache.bytes_used();
  for (int l = 0; l < cache.n_layers(); ++l) r.kv_cache_tokens += cache.count(l, 0);
  r.kv_dense_bytes = (int64_t)dec.length(0) * cache.n_layers() * 2 * cache.heads() * cache.head_dim() * (int64_t)sizeof(float);
#else
  (void)model, (void)n_new, (void)temperature, (void)top_k, (void)seed;
#endif
  return r;
}

}  // namespace modlm::demo
