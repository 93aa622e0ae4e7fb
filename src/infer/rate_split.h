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
// A product's threads still finished apart: with the team held for the step (util/parallel.h),
// the last thread of each product of an M batch-1 step ended 0.8-0.9 ms per step after the first
// (bf16, q8; ~10 % of the step), half the time either one: noise around the learned rates that no
// average can follow. So the shares only set where each thread starts: a thread works through its
// range front to back in chunks, and one that runs out takes the back half of what another has
// not started (and that range can be split again), so all finish within about one chunk.
//
// Each unit is computed the same way whichever thread takes it (callers split at unit
// boundaries that do not change a row's kernel tile), so results do not depend on the timing.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "util/parallel.h"

namespace modlm::infer {

class RateSplit {
 public:
  static constexpr int kMaxThreads = 16;  // teams larger than this split evenly

  RateSplit();

  // Runs body(u0, u1) over [0, units) on the team (util/parallel.h's team_run; a plain call when
  // !parallel): each thread starts on a contiguous range sized by its share and takes it in
  // chunks of at least `grain` units (a few microseconds of work: each claim is an atomic
  // operation), then helps the others as above; the shares then follow each thread's units per
  // second. body must be safe to call concurrently on disjoint ranges.
  template <typename Body>
  void run(bool parallel, int units, int grain, Body&& body);

  // Thread t's starting range [bounds[t], bounds[t + 1]) of `units` for a team of T (tests).
  void bounds(int units, int T, int* bounds) const;
  // Updates the shares from the units each thread of a team of T ran, and its seconds (tests).
  void record(int T, const int* units, const double* seconds);
  double share(int t) const { return share_[t].load(std::memory_order_relaxed); }

 private:
  void reset(int T);
  std::atomic<int> team_{0};  // the team size the shares are for (0: none yet)
  std::atomic<float> share_[kMaxThreads];
};

double rate_split_now();  // a steady clock in seconds

// The units one thread has not started yet, [next, end), in one word so that the thread taking
// chunks from the front and a thread taking the back half never both get a unit.
struct alignas(64) WorkRange {
  std::atomic<uint64_t> word{0};
  static uint64_t pack(uint32_t next, uint32_t end) { return (uint64_t)end << 32 | next; }
  static uint32_t next(uint64_t w) { return (uint32_t)w; }
  static uint32_t end(uint64_t w) { return (uint32_t)(w >> 32); }
  uint32_t left() const {
    const uint64_t w = word.load(std::memory_order_relaxed);
    return end(w) > next(w) ? end(w) - next(w) : 0;
  }
  // The next chunk from the front: an eighth of what is left (from one grain up to 16), so
  // chunks shrink toward the end, where a helper may arrive.
  bool take_front(int grain, int& u0, int& u1) {
    uint64_t w = word.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t n = next(w), e = end(w);
      if (n >= e) return false;
      const uint32_t c = std::min(e - n, std::clamp((e - n) / 8, (uint32_t)grain, (uint32_t)grain * 16));
      if (word.compare_exchange_weak(w, pack(n + c, e), std::memory_order_relaxed)) {
        u0 = (int)n, u1 = (int)(n + c);
        return true;
      }
    }
  }
  // The back half of what is left, if that is at least a grain.
  bool take_back_half(int grain, int& u0, int& u1) {
    uint64_t w = word.load(std::memory_order_relaxed);
    for (;;) {
      const uint32_t n = next(w), e = end(w);
      if (n >= e || e - n < 2 * (uint32_t)grain) return false;
      const uint32_t mid = n + (e - n) / 2;
      if (word.compare_exchange_weak(w, pack(n, mid), std::memory_order_relaxed)) {
        u0 = (int)mid, u1 = (int)e;
        return true;
      }
    }
  }
};

template <typename Body>
void RateSplit::run(bool parallel, int units, int grain, Body&& body) {
  const int T = parallel ? team_threads() : 1;
  if (T <= 1 || units <= 1) {
    if (units > 0) body(0, units);
    return;
  }
  if (T > kMaxThreads) {
    team_run(true, [&](int t, int nt) { body((int)((int64_t)units * t / nt), (int)((int64_t)units * (t + 1) / nt)); });
    return;
  }
  grain = std::max(grain, 1);
  int b[kMaxThreads + 1];
  bounds(units, T, b);
  WorkRange ranges[kMaxThreads];
  for (int t = 0; t < T; ++t) ranges[t].word.store(WorkRange::pack(b[t], b[t + 1]), std::memory_order_relaxed);
  double seconds[kMaxThreads];
  int done[kMaxThreads];
  int team = 0;
  team_run(true, [&](int t, int nt) {
    const double t0 = rate_split_now();
    int n = 0, u0, u1;
    // Its own range (a smaller team than asked for, OMP_DYNAMIC or a thread limit, takes the
    // ranges in turn), then the back half of whichever range has most left.
    for (int k = t; k < T; k += nt)
      while (ranges[k].take_front(grain, u0, u1)) body(u0, u1), n += u1 - u0;
    for (;;) {
      int victim = -1;
      uint32_t most = 0;
      for (int k = 0; k < T; ++k)
        if (const uint32_t left = ranges[k].left(); left > most) most = left, victim = k;
      if (victim < 0 || !ranges[victim].take_back_half(grain, u0, u1)) {
        if (victim < 0 || most < 2 * (uint32_t)grain) break;  // nothing worth taking is left
        continue;                                               // lost a race: look again
      }
      ranges[t].word.store(WorkRange::pack(u0, u1), std::memory_order_relaxed);  // others may take from it
      while (ranges[t].take_front(grain, u0, u1)) body(u0, u1), n += u1 - u0;
    }
    seconds[t] = team_part_covered() ? 0.0 : rate_split_now() - t0;  // 0: no rate to learn
    done[t] = n;
    if (t == 0) team = nt;
  });
  if (team == T) record(T, done, seconds);
}

}  // namespace modlm::infer
