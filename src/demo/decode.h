// Single-stream decoding for the demo: a sample continuation and the decode rate, with the
// KV-cache decoder of src/infer (when this build has it).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"
#include "model/model.h"

namespace modlm::demo {

struct DecodeResult {
  bool available = false;       // false: this build has no KV-cache decoder (fields below unset)
  std::string prompt, continuation;
  int prompt_tokens = 0, new_tokens = 0;
  double seconds = 0;            // of the token-by-token steps (the prompt's prefill excluded)
  double tokens_per_second = 0;  // new_tokens / seconds, one sequence
  int64_t kv_cache_bytes = 0;    // K and V held after prompt + continuation
  int64_t kv_cache_tokens = 0;   // token entries held over all layers
  int64_t kv_dense_bytes = 0;    // what a dense cache of the same layers would hold
  int threads = 0;               // OpenMP threads used (the faster of all and one, by a short probe)
};

// Feeds `prompt` (ids), then samples `n_new` tokens (temperature / top-k, seeded) one at a time.
DecodeResult decode_sample(const Model<float>& model, const io::Tokenizer& tok, const std::vector<int32_t>& prompt,
                           int n_new, double temperature, int top_k, uint64_t seed);

// Single-stream decode rates of several models measured side by side, so that their ratios mean
// something on a machine whose speed drifts: one thread count for all (the faster of all threads
// and one, probed on the first model), then `rounds` rounds of model after model on the same
// prompt, each model's best round. Empty rates where this build has no KV-cache decoder.
struct DecodeRace {
  int threads = 0, rounds = 0, new_tokens = 0;
  std::vector<double> tokens_per_second;  // per model, in the order given
};
DecodeRace decode_race(const std::vector<const Model<float>*>& models, const std::vector<int32_t>& prompt, int n_new,
                       double temperature, int top_k, uint64_t seed, int rounds);

}  // namespace modlm::demo
