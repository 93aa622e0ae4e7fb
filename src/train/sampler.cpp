#include "train/sampler.h"

#include "util/error.h"
#include "util/rng.h"

namespace modlm {

WindowSampler::WindowSampler(TokenSpan ids, int T, uint64_t seed)
    : ids_(std::move(ids)), T_(T), seed_(seed), windows_(count_windows(ids_.size, T)), buf_(T + 1) {
  if (windows_ < 1)
    throw bad_input("the training data has " + std::to_string(ids_.size) +
                    " tokens, fewer than one sequence of seq_len + 1 = " + std::to_string(T + 1));
}

int64_t WindowSampler::window_of(int64_t g) {
  int64_t epoch = g / windows_;
  if (epoch != epoch_) {
    perm_.resize(windows_);
    for (int64_t i = 0; i < windows_; ++i) perm_[i] = i;
    Rng rng(seed_ * 0x9E3779B97F4A7C15ull + (uint64_t)epoch + 1);
    for (int64_t i = windows_ - 1; i > 0; --i) std::swap(perm_[i], perm_[(int64_t)rng.below(i + 1)]);
    epoch_ = epoch;
  }
  return perm_[g % windows_];
}

void WindowSampler::fill(int64_t g0, int B, int32_t* tokens, int32_t* targets) {
  for (int b = 0; b < B; ++b) {
    int64_t w = window_of(g0 + b);
    ids_.copy((size_t)w * (T_ + 1), T_ + 1, buf_.data());
    for (int t = 0; t < T_; ++t) {
      tokens[(size_t)b * T_ + t] = buf_[t];
      targets[(size_t)b * T_ + t] = buf_[t + 1];
    }
  }
}

}  // namespace modlm
