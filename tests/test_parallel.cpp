// util/parallel.h: loops on the team, and a team held across many parallel pieces.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "util/parallel.h"

using namespace modlm;

namespace {

// Sets the team size for a scope.
struct Threads {
  explicit Threads(int n) : saved(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved); }
  int saved;
};

// team_run(true, body) calls body(t, T) once for each t < T, each on a distinct thread, and
// returns after all of them: the count of calls, the threads seen and the writes are checked.
void expect_one_call_per_thread(int want_T) {
  std::vector<std::atomic<int>> calls(16);
  std::vector<std::thread::id> ids(16);
  std::atomic<int> seen_T{-1};
  team_run(true, [&](int t, int T) {
    seen_T = T;
    calls[t].fetch_add(1);
    ids[t] = std::this_thread::get_id();
  });
  ASSERT_EQ(seen_T.load(), want_T);
  for (int t = 0; t < 16; ++t) ASSERT_EQ(calls[t].load(), t < want_T ? 1 : 0) << t;
  for (int t = 1; t < want_T; ++t)
    for (int u = 0; u < t; ++u) ASSERT_NE(ids[t], ids[u]) << t << " " << u;
  ASSERT_EQ(ids[0], std::this_thread::get_id());  // the caller takes part 0
}

}  // namespace

TEST(Parallel, TeamRunCallsEachThreadOnceOnANewOrAHeldTeam) {
  for (int n : {1, 2, 3}) {
    const Threads threads(n);
    EXPECT_EQ(team_threads(), n);
    expect_one_call_per_thread(n);
    const long long before = held_team_pieces();
    hold_team([&] {
      EXPECT_EQ(team_threads(), n);
      for (int i = 0; i < 3; ++i) expect_one_call_per_thread(n);
    });
    EXPECT_EQ(held_team_pieces() - before, n > 1 ? 3 : 0);  // one thread: nothing to hand over
    team_run(false, [&](int t, int T) { EXPECT_EQ(t * 10 + T, 1); });
  }
}

// Thousands of pieces in a row, each reading what the previous one wrote on every thread: a
// piece that returned before the others finished, or started before the last one was handed
// over, leaves a wrong sum.
TEST(Parallel, HeldTeamPiecesSeeEachOthersWrites) {
  const Threads threads(2);
  const int n = 4096, pieces = 3000;
  std::vector<long long> a(n, 1), b(n);
  hold_team([&] {
    for (int p = 0; p < pieces; ++p) {
      const std::vector<long long>& src = p % 2 ? b : a;
      std::vector<long long>& dst = p % 2 ? a : b;
      parallel_for_if(true, n, [&](int i) { dst[i] = src[i] + src[(i + 1) % n] % 7; });
      if (p % 500 == 499) std::this_thread::sleep_for(std::chrono::microseconds(200));  // the workers sleep
    }
  });
  std::vector<long long> x(n, 1), y(n);
  for (int p = 0; p < pieces; ++p) {
    for (int i = 0; i < n; ++i) y[i] = x[i] + x[(i + 1) % n] % 7;
    std::swap(x, y);
  }
  EXPECT_EQ(pieces % 2 ? b : a, x);
}

TEST(Parallel, ParallelForIfCoversEachIndexOnce) {
  const Threads threads(3);
  for (bool parallel : {false, true})
    for (int n : {0, 1, 2, 5, 1000}) {
      std::vector<std::atomic<int>> seen(n);
      parallel_for_if(parallel, n, [&](int i) { seen[i].fetch_add(1); });
      for (int i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << parallel << " " << n << " " << i;
    }
}

// An exception from the step reaches the caller after the team is released (a second hold
// works); a hold inside a hold, or inside another parallel region, runs the step plainly.
TEST(Parallel, HoldTeamRethrowsAndDoesNotNest) {
  const Threads threads(2);
  EXPECT_THROW(hold_team([&] {
                 team_run(true, [](int, int) {});
                 throw std::runtime_error("step failed");
               }),
               std::runtime_error);
  int inner = 0;
  hold_team([&] {
    hold_team([&] {
      ++inner;
      expect_one_call_per_thread(2);  // still the outer team
    });
  });
  EXPECT_EQ(inner, 1);
#pragma omp parallel num_threads(2)
  {
    int calls = 0;
    hold_team([&] { team_run(true, [&](int t, int T) { calls += 1 + t + T; }); });
    EXPECT_EQ(calls, 2);  // body(0, 1) on this thread
  }
}
