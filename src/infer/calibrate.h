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

}  // namespace modlm::infer
