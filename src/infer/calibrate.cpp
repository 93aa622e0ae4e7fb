#include "infer/calibrate.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "infer/decoder.h"
#include "infer/sampler.h"
#include "util/error.h"
#include "util/rng.h"

namespace modlm::infer {

std::vector<CalibratedLayer> force_processed_fraction(Model<float>& model, const std::vector<std::vector<int32_t>>& sequences,
                                                     double fraction, int count_from) {
  const ModelConfig& c = model.config();
  if (c.n_routed() == 0 || c.routing.causal != "predictor")
    throw bad_input("forcing a processed fraction needs routed layers with causal = \"predictor\" (it moves the predictor's bias)");
  if (!(fraction >= 0 && fraction <= 1)) throw bad_input("processed fraction must be in [0, 1], got " + std::to_string(fraction));
  if (sequences.empty()) throw bad_input("forcing a processed fraction needs at least one calibration sequence");
  if (count_from < 0) throw bad_input("calibration count_from must be >= 0");
  int longest = 0, n = 0;
  for (const auto& s : sequences) {
    longest = std::max(longest, (int)s.size());
    n += std::max(0, (int)s.size() - count_from);
  }
  if (n == 0) throw bad_input("no calibration tokens at or after position " + std::to_string(count_from));
  const int k = (int)std::lround(fraction * n);
  std::vector<CalibratedLayer> out;
  // Reads the model's weights in place: bias changes are seen by the next prefill. One slot per
  // sequence, so each starts at position 0 as a served or generated sequence does.
  Decoder dec(model, (int)sequences.size(), longest);
  // The decision logits of the counted tokens (each sequence's positions >= count_from) in
  // routed layer j after one prefill of all the sequences.
  auto counted = [&](size_t j, auto&& each) {
    int row = 0;
    for (const auto& s : sequences)
      for (int p = 0; p < (int)s.size(); ++p, ++row)
        if (p >= count_from) each(dec.route(row, (int)j));
  };
  std::vector<float> logits;
  for (size_t j = 0; j < dec.routed_layers().size(); ++j) {
    dec.prefill(sequences);
    logits.clear();
    counted(j, [&](const RouteRecord& r) { logits.push_back(r.decision_logit); });
    std::sort(logits.begin(), logits.end(), std::greater<float>());
    // A threshold between the k-th and (k+1)-th largest logits: exactly k above it (barring ties).
    double threshold;
    if (k == 0) threshold = logits[0] + 1.0;
    else if (k == n) threshold = logits[n - 1] - 1.0;
    else threshold = 0.5 * ((double)logits[k - 1] + logits[k]);
    const int l = dec.routed_layers()[j];
    float* bias = model.param(LayerTensorNames::of(c, l).pred_fc2_b);
    bias[0] = (float)(bias[0] - threshold);
    out.push_back({l, -threshold, 0});
  }
  dec.prefill(sequences);
  for (size_t j = 0; j < out.size(); ++j) {
    int processed = 0;
    counted(j, [&](const RouteRecord& r) { processed += r.processed; });
    out[j].processed = (double)processed / n;
  }
  return out;
}

std::vector<CalibratedLayer> force_processed_fraction(Model<float>& model, const std::vector<int32_t>& tokens, double fraction) {
  return force_processed_fraction(model, std::vector<std::vector<int32_t>>{tokens}, fraction, 0);
}

std::vector<std::vector<int32_t>> greedy_continuations(Model<float>& model, const std::vector<std::vector<int32_t>>& prompts, int n_new) {
  const int V = model.config().vocab_size;
  if (prompts.empty() || n_new < 1) throw bad_input("greedy_continuations: need prompts and n_new >= 1");
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  const int n = (int)prompts.size();
  std::vector<std::vector<int32_t>> seqs = prompts;
  Decoder dec(model, n, (int)longest + n_new - 1);  // what is fed: the prompt and n_new - 1 tokens
  dec.prefill(seqs);
  std::vector<int> slots(n);
  std::vector<int32_t> toks(n);
  for (int i = 0; i < n; ++i) slots[i] = i;
  for (int k = 0; k + 1 < n_new; ++k) {  // the last generated token is never fed back
    for (int i = 0; i < n; ++i) seqs[i].push_back(toks[i] = argmax(dec.logits(i), V));
    dec.step(slots, toks);
  }
  return seqs;
}

std::vector<std::vector<int32_t>> random_prompts(int n, int len, int vocab, uint64_t seed) {
  Rng r(seed);
  std::vector<std::vector<int32_t>> out(n, std::vector<int32_t>(len));
  for (auto& p : out)
    for (auto& t : p) t = (int32_t)r.below(vocab);
  return out;
}

std::vector<CalibratedLayer> force_processed_fraction_on_continuations(Model<float>& model, double fraction,
                                                                       const std::vector<std::vector<int32_t>>& prompts, int n_new,
                                                                       int rounds, bool* converged) {
  if (prompts.empty()) throw bad_input("calibration needs at least one prompt");
  if (rounds < 1) throw bad_input("calibration needs at least one round");
  const size_t P = prompts[0].size();
  for (const auto& p : prompts)
    if (p.size() != P) throw bad_input("calibration prompts must have one length (the counted tokens follow it)");
  std::vector<CalibratedLayer> out;
  std::vector<std::vector<int32_t>> seqs = greedy_continuations(model, prompts, n_new);
  bool fixed = false;
  for (int it = 0; it < rounds && !fixed; ++it) {
    out = force_processed_fraction(model, seqs, fraction, (int)P);
    std::vector<std::vector<int32_t>> next = greedy_continuations(model, prompts, n_new);
    fixed = next == seqs;  // the new biases decode what they were fitted on: exactly the share
    seqs = std::move(next);
  }
  if (converged) *converged = fixed;
  return out;
}

}  // namespace modlm::infer
