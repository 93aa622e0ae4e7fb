#include "infer/rate_split.h"

#include <algorithm>
#include <chrono>

namespace modlm::infer {

namespace {
// The moving average's weight of one product: ~20 products (a third of an M step) to follow a
// change in the threads' speeds, enough of them that one slow product barely moves it.
constexpr double kAlpha = 0.1;
}  // namespace

double rate_split_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

RateSplit::RateSplit() {
  for (auto& s : share_) s.store(0.0f, std::memory_order_relaxed);
}

void RateSplit::reset(int T) {
  for (int t = 0; t < kMaxThreads; ++t) share_[t].store(t < T ? 1.0f / T : 0.0f, std::memory_order_relaxed);
  team_.store(T, std::memory_order_relaxed);
}

void RateSplit::bounds(int units, int T, int* b) const {
  const bool known = team_.load(std::memory_order_relaxed) == T;
  double cum = 0;
  b[0] = 0;
  for (int t = 0; t < T; ++t) {
    cum += known ? share_[t].load(std::memory_order_relaxed) : 1.0 / T;
    b[t + 1] = t + 1 == T ? units : std::clamp((int)(units * cum + 0.5), b[t], units);
  }
}

void RateSplit::record(int T, const int* units, const double* seconds) {
  if (team_.load(std::memory_order_relaxed) != T) reset(T);
  double rate[kMaxThreads], total = 0;
  for (int t = 0; t < T; ++t) {
    if (units[t] <= 0 || !(seconds[t] > 0)) return;  // nothing to learn from this product
    rate[t] = units[t] / seconds[t];
    total += rate[t];
  }
  // Each share moves toward the thread's part of the team's rate, kept within [1/2, 3/2] of an
  // even share (a thread stalled once by the OS must not be starved of work afterwards).
  double next[kMaxThreads], sum = 0;
  for (int t = 0; t < T; ++t) {
    const double s = share_[t].load(std::memory_order_relaxed);
    next[t] = std::clamp((1 - kAlpha) * s + kAlpha * rate[t] / total, 0.5 / T, 1.5 / T);
    sum += next[t];
  }
  for (int t = 0; t < T; ++t) share_[t].store((float)(next[t] / sum), std::memory_order_relaxed);
}

}  // namespace modlm::infer
