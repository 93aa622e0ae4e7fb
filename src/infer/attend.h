// Decode-time attention: one query row against one head's cached keys and values.
#pragma once
#include <cstdint>

namespace modlm::infer {

// o = softmax(q K^T * scale) V over the n cached rows of one head (K, V: [n, Dh], float or bf16
// bit patterns), with s as scratch for the n scores. The softmax uses the forward pass's exp
// (ops/fast_math.h), so decoding and the forward pass compute the same weights.
void attend_one(const float* q, const float* K, const float* V, int n, int Dh, float scale, float* s, float* o);
void attend_one(const float* q, const uint16_t* K, const uint16_t* V, int n, int Dh, float scale, float* s, float* o);

}  // namespace modlm::infer
