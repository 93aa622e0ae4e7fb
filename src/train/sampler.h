// The seeded data order: epochs over the non-overlapping windows of the training tokens, each
// epoch a fresh permutation. Stateless in the step: sample g of the run is always the same
// window, so a resumed run reads exactly what an uninterrupted one would.
#pragma once
#include <cstdint>
#include <vector>

#include "train/evaluate.h"

namespace modlm {

class WindowSampler {
 public:
  WindowSampler(TokenSpan ids, int T, uint64_t seed);
  int64_t windows() const { return windows_; }
  // Window index of global sample g.
  int64_t window_of(int64_t g);
  // tokens/targets [B*T] for samples g0 .. g0+B-1.
  void fill(int64_t g0, int B, int32_t* tokens, int32_t* targets);

 private:
  TokenSpan ids_;
  int T_;
  uint64_t seed_;
  int64_t windows_;
  int64_t epoch_ = -1;
  std::vector<int64_t> perm_;
  std::vector<int32_t> buf_;
};

}  // namespace modlm
