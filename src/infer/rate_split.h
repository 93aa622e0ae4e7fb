// Work split between the OpenMP team's threads in proportion to how fast each has been running.
//
// The decode kernels used to split a product's rows statically, half to each of the two threads.
// On this VM the two cores do not run equally fast: with q8 weights (whose kernel is compute-bound
// near the per-core memory rate) the second thread ran ~25 % slower for seconds at a time (M batch
// 1, the worker busy 80-82 % of a step against the main thread's 94-95 %), so the first waited at
// the end of every product (docs/performance.md, "Batch 1 inside a real step"). A RateSplit
// remembers each thread's recent rate (units per second, a moving average over the products it
// ran) and gives each thread a share of the next product's units in proportion to it.
//
// Each unit is computed the same way whichever thread takes it (callers split at unit
// boundaries that do not change a row's kernel tile), so results do not depend on the timing.
#pragma once

#include <atomic>
#include <cstdint>

#include "util/parallel.h"

namespace modlm::infer {

class RateSplit {
 public:
  static constexpr int kMaxThreads = 16;  // teams larger than this split evenly

  RateSplit();

  // Runs body(u0, u1) over [0, units) on the team (util/parallel.h's team_run; a plain call when
  // !parallel), each thread a contiguous range sized by its share, then updates the shares from
  // the threads' times.
  // body must be safe to call concurrently on disjoint ranges.
  template <typename Body>
  void run(bool parallel, int units, Body&& body);

  // Thread t's range [bounds[t], bounds[t + 1]) of `units` for a team of T (tests).
  void bounds(int units, int T, int* bounds) const;
  // Updates the shares from each thread's units and seconds in a team of T (tests).
  void record(int T, const int* bounds, const double* seconds);
  double share(int t) const { return share_[t].load(std::memory_order_relaxed); }

 private:
  void reset(int T);
  std::atomic<int> team_{0};  // the team size the shares are for (0: none yet)
  std::atomic<float> share_[kMaxThreads];
};

double rate_split_now();  // a steady clock in seconds

template <typename Body>
void RateSplit::run(bool parallel, int units, Body&& body) {
  const int T = parallel ? team_threads() : 1;
  if (T <= 1 || units <= 1) {
    if (units > 0) body(0, units);
    return;
  }
  if (T > kMaxThreads) {
    team_run(true, [&](int t, int nt) { body((int)((int64_t)units * t / nt), (int)((int64_t)units * (t + 1) / nt)); });
    return;
  }
  int b[kMaxThreads + 1];
  bounds(units, T, b);
  double seconds[kMaxThreads];
  int team = 0;
  team_run(true, [&](int t, int nt) {
    const double t0 = rate_split_now();
    // A smaller team than asked for (OMP_DYNAMIC, a thread limit) takes the ranges in turn.
    for (int k = t; k < T; k += nt) body(b[k], b[k + 1]);
    seconds[t] = rate_split_now() - t0;
    if (t == 0) team = nt;
  });
  if (team == T) record(T, b, seconds);
}

}  // namespace modlm::infer
