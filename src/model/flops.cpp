#include "model/flops.h"

#include <algorithm>

namespace modlm {

FlopBreakdown analytic_forward_flops(const ModelConfig& c, int T) {
  FlopBreakdown f;
  const int64_t D = c.d_model, F = c.d_ff, V = c.vocab_size, H = c.n_heads, Dh = c.head_dim();
  const int64_t Dkv = c.kv_dim();
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
    f.projections += 2 * k * (2 * D * D + 2 * D * Dkv);  // q, o: D x D; k, v: Dkv x D
    if (c.has_moe(l)) {
      const int64_t G = c.moe.n_gate(), E = c.moe.n_experts, K = c.moe.top_k, De = c.moe.d_expert;
      int64_t assignments = k * K;
      if (c.moe.capacity_factor > 0)
        assignments = std::min(assignments, E * moe_capacity(c.moe.capacity_factor, (int)k, (int)K, (int)G));
      f.moe_gate += 2 * k * D * G;
      f.mlp += 2 * assignments * 3 * D * De;
    } else {
      f.mlp += 2 * k * 3 * D * F;
    }
    f.attention += 4 * Dh * H * (k * (k + 1) / 2);
  }
  f.head += 2 * (int64_t)T * D * V;
  return f;
}

double analytic_decode_weight_bytes(const ModelConfig& c, double processed, double matrix_bytes) {
  const double D = c.d_model, F = c.d_ff, V = c.vocab_size, mb = matrix_bytes, Dkv = c.kv_dim();
  double bytes = 4 * (D + D) + mb * V * D;  // embedding row and final norm; LM head
  for (int l = 0; l < c.n_layers; ++l) {
    double block = 4 * 2 * D + mb * (2 * D * D + 2 * D * Dkv);  // two norms; q o, k v
    if (c.has_moe(l)) {
      const double G = c.moe.n_gate(), E = c.moe.n_experts, K = c.moe.top_k, De = c.moe.d_expert;
      const double experts_read = std::min(E, K * E / G);  // expected real experts per token
      block += 4 * G * D + mb * experts_read * 3 * D * De;
    } else {
      block += mb * 3 * D * F;
    }
    if (c.routed(l)) {
      bytes += 4 * D;  // router
      if (c.routing.causal == "predictor") {
        const double Hp = c.routing.predictor_hidden;
        bytes += 4 * (Hp * D + 2 * Hp + 1);
      }
      bytes += processed * block;
    } else {
      bytes += block;
    }
  }
  return bytes;
}

ModelConfig dense_twin(const ModelConfig& cfg) {
  ModelConfig d = cfg;
  d.routing = RoutingConfig{};
  d.moe = MoeConfig{};
  return d;
}

}  // namespace modlm
