// Causal multi-head attention over a packed batch of sequences (DESIGN: packed rows + positions).
//
// Rows seq_offsets[b]..seq_offsets[b+1] form sequence b. Within a sequence, rows are ordered by
// strictly increasing position, so "key j may be seen by query i" (pos_j <= pos_i) is j <= i:
// a routed layer's gathered rows keep their original positions (RoPE was applied with them
// already) and their causal order. Only the causal pairs are scored and counted (SPEC §5).
#pragma once
#include <cstdint>
#include <vector>

namespace modlm::ops {

// Grouped-query attention (GQA): Hkv key/value heads, each shared by H / Hkv consecutive query
// heads (query head h reads key/value head h / (H / Hkv), as Hugging Face's repeat_kv). Hkv = 0
// or H is plain multi-head attention.
struct AttnShape {
  int H = 0, Dh = 0;  // query heads, head dim; D = H * Dh
  int Hkv = 0;        // key/value heads (0: H)
  int kv_heads() const { return Hkv > 0 ? Hkv : H; }
  int group() const { return H / kv_heads(); }  // query heads per key/value head
};

// qkv: [n, ld] with q at columns [0, D), k at [D, D + Dkv), v at [D + Dkv, D + 2 Dkv), where
// Dkv = Hkv * Dh (post-RoPE q and k).
// out: [n, D] (row stride ldo). lse: [n, H], the log-sum-exp of each query's scores (for backward).
template <typename T>
void attention_forward(const T* qkv, int ld, const std::vector<int>& seq_offsets, AttnShape s, T* out,
                       int ldo, T* lse);

// Gradients: dout [n, D] -> dqkv [n, ld] (dq, dk, dv in the same column layout; overwritten).
template <typename T>
void attention_backward(const T* qkv, int ld, const T* out, int ldo, const T* lse, const T* dout,
                        int lddo, const std::vector<int>& seq_offsets, AttnShape s, T* dqkv);

// One tile of one head's causal attention, the step both the forward pass and the decoder's
// tiles over its cache (infer/decoder.cpp) take: queries Q [m, Dh] (row stride ldq) against keys
// K and values V [key_offset + m, Dh] (row stride ldkv), query r seeing keys 0 .. key_offset + r.
// S: scratch for m * (key_offset + m) scores; out [m, Dh] (row stride ldo); each row's
// log-sum-exp to lse[r * lse_stride] where lse is given. Its FLOPs are not counted (callers count
// theirs).
template <typename T>
void causal_attention_tile(const T* Q, int ldq, const T* K, const T* V, int ldkv, int m, int key_offset, int Dh, T scale,
                           T* S, T* out, int ldo, T* lse = nullptr, int lse_stride = 0);

// FLOPs of attention for sequences of the given lengths (SPEC §5: 4 * Dh * H per causal pair).
int64_t attention_flops(const std::vector<int>& seq_offsets, AttnShape s);

}  // namespace modlm::ops
