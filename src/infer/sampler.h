// Choosing the next token from a row of logits: greedy, temperature, top-k, top-p (nucleus).
//
// Definitions (also in `modlm generate --help`):
//  - greedy = argmax of the logits; ties go to the lower token id; NaN counts as -infinity.
//  - temperature T > 0: p_i ∝ exp(logit_i / T). T = 0 means greedy.
//  - top-k K > 0: only the K largest logits (ties: lower id first) can be drawn; K = 0 is off.
//    K = 1 is greedy.
//  - top-p P in (0, 1]: after top-k, candidates are taken in order of decreasing logit (ties:
//    lower id first) until their probability (at temperature T, renormalised over the top-k
//    set) sums to >= P; at least one is always kept, so a tiny P is greedy. P = 1 is off.
//  - The draw: one uniform u in [0, 1) from modlm::Rng per token, and the first candidate (in
//    the order above, or id order when neither top-k nor top-p is active) whose cumulative
//    probability exceeds u * total. Same seed, same logits -> same token, on every platform.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "util/rng.h"

namespace modlm::infer {

struct SamplingParams {
  bool greedy = false;
  double temperature = 1.0;
  int top_k = 0;
  double top_p = 1.0;
  // True when the settings reduce to argmax (greedy, T = 0 or top-k = 1).
  bool is_greedy() const { return greedy || temperature == 0.0 || top_k == 1; }
};

// Throws modlm::usage_error (exit 2) naming the flag: temperature < 0 or not finite, top-k < 0,
// top-p outside (0, 1].
void validate(const SamplingParams& p);

// Index of the largest logit; ties go to the lower index; NaN is never chosen unless all are NaN.
int32_t argmax(const float* logits, int V);

// Per-sequence sampler: owns its Rng and scratch (no allocation per token after the first).
class Sampler {
 public:
  Sampler(const SamplingParams& p, uint64_t seed) : p_(p), rng_(seed) {}
  int32_t sample(const float* logits, int V);
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  Rng rng_;
  std::vector<int32_t> idx_;
  std::vector<double> prob_;
};

}  // namespace modlm::infer
