#include "model/flops.h"

namespace modlm {

FlopBreakdown analytic_forward_flops(const ModelConfig& c, int T) {
  FlopBreakdown f;
  const int64_t D = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.n_heads, Dh = c.head_dim();
  for (int l = 0; l < c.n_layers; ++l) {
    int64_t k = T;
    if (c.routed(l)) {
      k = routed_capacity(c.routing.capacity, T);
      f.router += 2 * T * D;
      if (c.routing.causal == "predictor") {
        const int64_t Hp = c.routing.predictor_hidden;
        f.router += 2 * T * (D * Hp + Hp);
      }
    }
    f.projections += 2 * k * 4 * D * D;
    f.mlp += 2 * k * 3 * D * F;
    f.attention += 4 * Dh * H * (k * (k + 1) / 2);
  }
  f.head += 2 * (int64_t)T * D * V;
  return f;
}

ModelConfig dense_twin(const ModelConfig& cfg) {
  ModelConfig d = cfg;
  d.routing = RoutingConfig{};
  return d;
}

}  // namespace modlm
