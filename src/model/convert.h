// Dense -> MoD conversion (`modlm convert`): the dense model's weights plus routers and causal
// predictors, initialised from the dense model's own residual stream so that the converted
// model starts close to it (docs/convert.md has the derivation and the measured gaps).
//
// For each newly routed layer l, on calibration sequences run through the DENSE model:
//   u_t = ||h_{l+1,t} - h_{l,t}|| / ||h_{l,t}||   how much the block changes token t
//   z_t = (u_t - mean u) / std u
//   w   = argmin sum_t (w . h_{l,t} - z_t)^2 + lambda ||w||^2   (ridge, lambda = 1e-3 trace/D)
// so the router ranks first the tokens the block changes most (those a skipped block would hurt
// most). The router is then scaled so that its (1 - c) quantile on the calibration rows is 3:
// a token routed at the capacity gets gate sigmoid(r) >= 0.95, close to the dense block's 1.
// The causal predictor starts as exactly "router score above that quantile": hidden units 0 and
// 1 are relu(r) and relu(-r) (fc1 rows w and -w), fc2 = [1, -1, 0...], fc2 bias = -3, so its
// decision logit is r - 3 and generation processes about a fraction c of the tokens from the
// first step. Its other hidden units start as init_weights would make them, with fc2 weight 0.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"

namespace modlm {

struct ConvertOptions {
  json layers = "every_other";  // config.json's routing.layers value: a LayerSet kind or a list
  double capacity = 0.125;
  bool predictor = true;               // causal predictor (else aux_loss on the router)
  int predictor_hidden = 128;
  uint64_t seed = 1;
  bool fit = true;  // false: routers and predictors as init_weights makes them (the baseline docs/convert.md compares)
};

struct ConvertLayerReport {
  int layer = 0;
  double fit_r2 = 0;      // R^2 of the ridge fit of z on the calibration rows
  double threshold = 0;   // the router's (1 - c) quantile before scaling
  double scale = 0;       // the factor applied to w
  double processed = 0;   // fraction of calibration rows whose router score passes the threshold
};

// `calibration`: B sequences of T tokens ([B*T], all < vocab_size). Throws bad_input when the
// model is already routed or has experts, or the options are out of range.
Model<float> convert_to_mod(Model<float>& dense, const ConvertOptions& o, const std::vector<int32_t>& calibration,
                            int B, int T, std::vector<ConvertLayerReport>* report = nullptr);

}  // namespace modlm
