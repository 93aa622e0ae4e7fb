#include "infer/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "ops/bf16.h"

namespace modlm::infer {

void KvCache::allocate(int n_layers, int slots, int capacity, int H, int Dh, bool bf16) {
  L_ = n_layers, S_ = slots, cap_ = capacity, H_ = H, Dh_ = Dh, bf16_ = bf16;
  const size_t n = (size_t)L_ * S_ * 2 * H_ * cap_ * Dh_;
  data_.clear();
  half_.clear();
  if (bf16) half_.assign(n, 0);
  else data_.assign(n, 0.0f);
  pos_.assign((size_t)L_ * S_ * cap_, 0);
  count_.assign((size_t)L_ * S_, 0);
}

void KvCache::append(int l, int s, int32_t pos, const float* k, const float* v) {
  int& n = count_[idx(l, s)];
  if (n >= cap_)
    throw std::logic_error("KV cache full: layer " + std::to_string(l) + " slot " + std::to_string(s) + " holds " +
                           std::to_string(cap_) + " tokens");
  if (bf16_) {
    uint16_t* K = half_.data() + offset(l, s);
    uint16_t* V = K + (size_t)H_ * cap_ * Dh_;
    for (int h = 0; h < H_; ++h) {
      to_bf16(k + (size_t)h * Dh_, Dh_, K + ((size_t)h * cap_ + n) * Dh_);
      to_bf16(v + (size_t)h * Dh_, Dh_, V + ((size_t)h * cap_ + n) * Dh_);
    }
  } else {
    float* K = base(l, s);
    float* V = K + (size_t)H_ * cap_ * Dh_;
    for (int h = 0; h < H_; ++h) {
      std::memcpy(K + ((size_t)h * cap_ + n) * Dh_, k + (size_t)h * Dh_, sizeof(float) * Dh_);
      std::memcpy(V + ((size_t)h * cap_ + n) * Dh_, v + (size_t)h * Dh_, sizeof(float) * Dh_);
    }
  }
  pos_[idx(l, s) * cap_ + n] = pos;
  ++n;
}

void KvCache::clear_slot(int s) {
  for (int l = 0; l < L_; ++l) count_[idx(l, s)] = 0;
}

void KvCache::clear() { std::fill(count_.begin(), count_.end(), 0); }

size_t KvCache::bytes_used(int l) const {
  size_t tokens = 0;
  for (int s = 0; s < S_; ++s) tokens += count_[idx(l, s)];
  return tokens * 2 * (size_t)H_ * Dh_ * element_bytes();
}

size_t KvCache::bytes_used() const {
  size_t b = 0;
  for (int l = 0; l < L_; ++l) b += bytes_used(l);
  return b;
}

}  // namespace modlm::infer
