// Analytic forward FLOPs (SPEC §5): 2 per multiply-add of every matrix product.
#pragma once
#include <cstdint>

#include "model/config.h"

namespace modlm {

struct FlopBreakdown {
  int64_t projections = 0;  // q, k, v, o of the tokens that run attention
  int64_t mlp = 0;          // w1, w3, w2 of the tokens that run the MLP (or of the MoE experts' rows)
  int64_t attention = 0;    // 4 * Dh * H per causal (query, key) pair
  int64_t router = 0;       // router and predictor
  int64_t head = 0;         // LM head
  int64_t moe_gate = 0;     // MoE router W_g over E + n_noop outputs
  int64_t total() const { return projections + mlp + attention + router + head + moe_gate; }
};

// Static count for one sequence of T tokens: k = capacity tokens in every routed layer; an MoE
// layer reached by n rows counts its router (2 n D (E + n_noop)) and 2 * 3 D d_expert for each of
// min(n * top_k, E * C) assignments (n * top_k without capacity): the SPEC's capacity bound.
FlopBreakdown analytic_forward_flops(const ModelConfig& cfg, int T);

// Expected bytes of fp32 weights one single-stream decode step reads (what bounds batch-1
// decoding): one embedding row, every block of a dense layer, the router (and predictor) of a
// routed layer plus its block with probability `processed` (the fraction of tokens it processes),
// of an MoE only the experts a token is sent to (top_k of the n_gate gate outputs, routing assumed
// uniform, no-op experts read nothing), the final norm and the LM head ([V, D], tied or not).
// The matrices (q k v o, MLP or experts, LM head) at `matrix_bytes` per weight (4 for float, 2
// for a bf16 decoder), everything else (norms, embedding row, router, predictor, gate) at 4.
double analytic_decode_weight_bytes(const ModelConfig& cfg, double processed, double matrix_bytes = 4.0);

// The same config with routing "none" and no MoE: the dense twin.
ModelConfig dense_twin(const ModelConfig& cfg);

}  // namespace modlm
