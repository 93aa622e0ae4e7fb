// Keys and values of past tokens, per layer and per sequence slot (SPEC §2 "KV cache"), in float
// or (allocate(..., bf16 = true)) in bfloat16: half the bytes a decode step reads per past token,
// each key and value rounded to 8 significant bits.
//
// A dense layer holds every token of a sequence; a routed (MoD) layer holds only the tokens it
// processed, each with its ORIGINAL position, so its cache is about c of a dense one. Storage is
// preallocated for `capacity` tokens per (layer, slot), head-major ([H, capacity, Dh] for K and
// for V) so that one head's keys are contiguous for the decode-time attention loop.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace modlm::infer {

class KvCache {
 public:
  KvCache() = default;
  // Zero-filled storage for n_layers x slots x capacity tokens of width H * Dh (H: the KEY/VALUE
  // heads, fewer than the query heads under grouped-query attention).
  void allocate(int n_layers, int slots, int capacity, int H, int Dh, bool bf16 = false);
  bool bf16() const { return bf16_; }
  size_t element_bytes() const { return bf16_ ? 2 : 4; }

  int n_layers() const { return L_; }
  int slots() const { return S_; }
  int capacity() const { return cap_; }
  int heads() const { return H_; }
  int head_dim() const { return Dh_; }

  // Tokens held by layer l for slot s, and their positions (increasing).
  int count(int l, int s) const { return count_[idx(l, s)]; }
  const int32_t* positions(int l, int s) const { return pos_.data() + idx(l, s) * cap_; }
  // Keys / values of head h: [count, Dh] contiguous; the float ones of a float cache, the bf16
  // ones of a bf16 cache.
  const float* keys(int l, int s, int h) const { return base(l, s) + (size_t)h * cap_ * Dh_; }
  const float* values(int l, int s, int h) const { return base(l, s) + ((size_t)H_ + h) * cap_ * Dh_; }
  const uint16_t* keys_bf16(int l, int s, int h) const { return half_.data() + offset(l, s) + (size_t)h * cap_ * Dh_; }
  const uint16_t* values_bf16(int l, int s, int h) const { return half_.data() + offset(l, s) + ((size_t)H_ + h) * cap_ * Dh_; }

  // Appends one token: k and v are [H * Dh] rows (heads side by side, as the projections give
  // them). Throws std::logic_error when the slot is full (callers check lengths first).
  void append(int l, int s, int32_t pos, const float* k, const float* v);

  void clear_slot(int s);
  void clear();

  // Bytes of K and V the cache holds (count * 2 * H * Dh * element_bytes()) for layer l, or all.
  size_t bytes_used(int l) const;
  size_t bytes_used() const;
  size_t bytes_allocated() const { return data_.size() * sizeof(float) + half_.size() * sizeof(uint16_t); }

 private:
  size_t idx(int l, int s) const { return (size_t)l * S_ + s; }
  size_t offset(int l, int s) const { return idx(l, s) * 2 * (size_t)H_ * cap_ * Dh_; }
  float* base(int l, int s) { return data_.data() + offset(l, s); }
  const float* base(int l, int s) const { return data_.data() + offset(l, s); }

  int L_ = 0, S_ = 0, cap_ = 0, H_ = 0, Dh_ = 0;
  bool bf16_ = false;
  AlignedVector<float> data_;    // [L, S, 2, H, cap, Dh] (float cache)
  std::vector<uint16_t> half_;   // the same layout (bf16 cache)
  std::vector<int32_t> pos_;     // [L, S, cap]
  std::vector<int> count_;       // [L, S]
};

}  // namespace modlm::infer
