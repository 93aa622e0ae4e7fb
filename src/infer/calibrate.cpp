#include "infer/calibrate.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "infer/decoder.h"
#include "util/error.h"

namespace modlm::infer {

std::vector<CalibratedLayer> force_processed_fraction(Model<float>& model, const std::vector<int32_t>& tokens, double fraction) {
  const ModelConfig& c = model.config();
  if (c.n_routed() == 0 || c.routing.causal != "predictor")
    throw bad_input("forcing a processed fraction needs routed layers with causal = \"predictor\" (it moves the predictor's bias)");
  if (!(fraction >= 0 && fraction <= 1)) throw bad_input("processed fraction must be in [0, 1], got " + std::to_string(fraction));
  const int n = (int)tokens.size();
  const int k = (int)std::lround(fraction * n);
  std::vector<CalibratedLayer> out;
  Decoder dec(model, 1, n);  // reads the model's weights in place: bias changes are seen by the next prefill
  std::vector<float> logits(n);
  for (size_t j = 0; j < dec.routed_layers().size(); ++j) {
    dec.prefill({tokens});
    for (int i = 0; i < n; ++i) logits[i] = dec.route(i, (int)j).decision_logit;
    std::sort(logits.begin(), logits.end(), std::greater<float>());
    // A threshold between the k-th and (k+1)-th largest logits: exactly k above it (barring ties).
    double threshold;
    if (k == 0) threshold = logits[0] + 1.0;
    else if (k == n) threshold = logits[n - 1] - 1.0;
    else threshold = 0.5 * ((double)logits[k - 1] + logits[k]);
    const int l = dec.routed_layers()[j];
    float* bias = model.param("layers." + std::to_string(l) + ".predictor.fc2.bias");
    bias[0] = (float)(bias[0] - threshold);
    out.push_back({l, -threshold, 0});
  }
  dec.prefill({tokens});
  for (size_t j = 0; j < out.size(); ++j) {
    int processed = 0;
    for (int i = 0; i < n; ++i) processed += dec.route(i, (int)j).processed;
    out[j].processed = (double)processed / n;
  }
  return out;
}

}  // namespace modlm::infer
