// Softmax cross-entropy over the vocabulary (SPEC §4: mean next-token loss in nats).
#pragma once
#include <cstdint>

namespace modlm::ops {

// logits: [n, V]. Returns the SUM of -log softmax(logits_i)[target_i] over rows (as double).
// If dlogits_scale != 0, logits is overwritten in place with dlogits_scale * (softmax - onehot),
// the gradient of (dlogits_scale * sum of losses). Targets must be in [0, V).
template <typename T>
double cross_entropy(T* logits, const int32_t* targets, int n, int V, T dlogits_scale);

}  // namespace modlm::ops
