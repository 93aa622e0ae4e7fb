// Forcing a model's causal routing to a chosen processed fraction, for benchmarks.
//
// A random-weight MoD model's predictor says "process" for about half of the tokens, so its decode
// speed says nothing about a trained model, whose predictor follows the top-k targets and
// processes about `capacity` of them. This moves each routed layer's predictor output bias
// (predictor.fc2.bias, SPEC §2) so that on a calibration text exactly round(fraction * n) of its n
// tokens have a decision logit > 0, i.e. are processed. Layers are calibrated in order, each on
// the hidden states the already-calibrated layers below it give. Only the bias moves: the
// decisions stay a function of the hidden state, as in a trained model.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace modlm::infer {

struct CalibratedLayer {
  int layer = 0;              // model layer index
  double bias_shift = 0;      // added to predictor.fc2.bias
  double processed = 0;       // fraction of the calibration tokens processed afterwards
};

// Needs routing with causal = "predictor" (bad_input otherwise), 0 <= fraction <= 1 and 1..max_seq_len
// calibration tokens inside the vocabulary.
std::vector<CalibratedLayer> force_processed_fraction(Model<float>& model, const std::vector<int32_t>& tokens, double fraction);

// The same on several sequences, each from position 0 (as served or generated sequences start),
// counting only the tokens at positions >= count_from of each: a server's decode steps see the
// continuations, not the prompts, so bench serve calibrates on those. At least one counted token.
std::vector<CalibratedLayer> force_processed_fraction(Model<float>& model, const std::vector<std::vector<int32_t>>& sequences,
                                                     double fraction, int count_from);

// Each prompt followed by its greedy continuation as a server or `bench generate` decodes it:
// the prompt + the first n_new - 1 generated tokens (the tokens its decode steps are fed).
std::vector<std::vector<int32_t>> greedy_continuations(Model<float>& model, const std::vector<std::vector<int32_t>>& prompts, int n_new);

// n prompts of len random ids below vocab, drawn one after another from Rng(seed): the
// benchmarks' prompts, so they can calibrate on the sequences they time.
std::vector<std::vector<int32_t>> random_prompts(int n, int len, int vocab, uint64_t seed);

// How many sequences the benchmarks calibrate on: 8, fewer for long ones (about 1024 tokens in
// all: each routed layer's calibration is one prefill of them all).
inline int calibration_sequences(int prompt_len, int n_new) {
  const int n = 1024 / std::max(1, prompt_len + n_new);
  return n < 1 ? 1 : n > 8 ? 8 : n;
}

// force_processed_fraction on the prompts' greedy continuations (prompts of one length; only
// the continuation tokens counted), repeated while the continuations move with the biases, at
// most `rounds` times: it stops at a fixed point, where the greedy continuations under the new
// biases are the ones they were fitted on, so decode steps on those prompts process exactly
// round(fraction * n) of their n continuation tokens in every routed layer (*converged = true);
// otherwise about that share. A random-weight model's continuations often repeat a token,
// which makes a sequence's decisions nearly all-or-nothing: a fraction forced on other
// sequences lands far off (0.15-0.26 against 0.125), so the benchmarks calibrate on the
// prompts they time.
std::vector<CalibratedLayer> force_processed_fraction_on_continuations(Model<float>& model, double fraction,
                                                                       const std::vector<std::vector<int32_t>>& prompts, int n_new,
                                                                       int rounds = 4, bool* converged = nullptr);

}  // namespace modlm::infer
