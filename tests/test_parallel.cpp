// util/parallel.h: loops on the team, and a team held across many parallel pieces.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <chrono>
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

// team_run(true, body) calls body(t, T) once for each t < T and returns after all of them; the
// caller runs part 0. On a new OpenMP team every part has its own thread; on a held team a part
// whose worker had not started runs on the caller (team_part_covered() says so there), any other
// on a thread of its own. Returns how many parts ran on threads other than the caller.
int expect_one_call_per_part(int want_T, bool held) {
  std::vector<std::atomic<int>> calls(16);
  std::vector<std::thread::id> ids(16);
  std::vector<char> covered(16, 0);
  std::atomic<int> seen_T{-1};
  const std::thread::id caller = std::this_thread::get_id();
  team_run(true, [&](int t, int T) {
    seen_T = T;
    calls[t].fetch_add(1);
    ids[t] = std::this_thread::get_id();
    covered[t] = team_part_covered();
    // Part 0 lasts 50 us: time for the workers (awake or woken) to take their parts.
    if (t == 0)
      for (auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - t0 < std::chrono::microseconds(50);) {
      }
  });
  EXPECT_EQ(seen_T.load(), want_T);
  int elsewhere = 0;
  for (int t = 0; t < 16; ++t) EXPECT_EQ(calls[t].load(), t < want_T ? 1 : 0) << t;
  EXPECT_EQ(ids[0], caller);
  EXPECT_FALSE(covered[0]);
  for (int t = 1; t < want_T; ++t) {
    EXPECT_EQ(ids[t] == caller, (bool)covered[t]) << t;
    if (!held) {
      EXPECT_NE(ids[t], caller) << t;
    }
    for (int u = 1; u < t; ++u) {
      if (ids[t] != caller) {
        EXPECT_NE(ids[t], ids[u]) << t << " " << u;
      }
    }
    elsewhere += ids[t] != caller;
  }
  return elsewhere;
}

// Whether a worker of a held team of n takes some part within 2 s of pieces (at once on a quiet
// machine; a new thread may share the caller's core for a while, and under a parallel test run
// a worker may be descheduled or the team solo for a tenth of a second).
bool workers_take_part(int n) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2))
    if (expect_one_call_per_part(n, true) > 0) return true;
  return false;
}

}  // namespace

TEST(Parallel, TeamRunCallsEachPartOnceOnANewOrAHeldTeam) {
  for (int n : {1, 2, 3}) {
    const Threads threads(n);
    EXPECT_EQ(team_threads(), n);
    expect_one_call_per_part(n, false);
    const long long before = held_team_pieces();
    hold_team([&] {
      EXPECT_EQ(team_threads(), n);
      for (int i = 0; i < 200; ++i) expect_one_call_per_part(n, true);
    });
    EXPECT_EQ(held_team_pieces() - before, n > 1 && held_teams_enabled() ? 200 : 0);  // one thread: none
    if (n > 1) {
      bool took_part = false;
      hold_team([&] { took_part = workers_take_part(n); });
      EXPECT_TRUE(took_part);  // on other threads (held, or OpenMP's where held teams are off)
    }
    team_run(false, [&](int t, int T) { EXPECT_EQ(t * 10 + T, 1); });
  }
}

// A worker that has not started on a piece (descheduled, or asleep) does not hold the caller
// up: once its own part is done, the caller runs that part itself, and the piece's work is all
// done. Paused workers stand for descheduled ones; unpaused, they take part again.
TEST(Parallel, TheCallerRunsThePartOfAWorkerThatHasNotStarted) {
  if (!held_teams_enabled()) GTEST_SKIP() << "OpenMP threads spin between regions here (OMP_WAIT_POLICY=active): no held teams";
  const Threads threads(3);
  hold_team([&] {
    ASSERT_TRUE(workers_take_part(3));
    pause_held_workers(true);
    for (int i = 0; i < 20; ++i) {
      std::vector<int> covered(3, -1);
      const auto t0 = std::chrono::steady_clock::now();
      team_run(true, [&](int t, int) { covered[t] = team_part_covered(); });
      EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(100));  // no wait for the workers
      EXPECT_EQ(covered, (std::vector<int>{0, 1, 1}));
      std::vector<std::atomic<int>> seen(1000);
      parallel_for_if(true, 1000, [&](int k) { seen[k].fetch_add(1); });
      for (int k = 0; k < 1000; ++k) ASSERT_EQ(seen[k].load(), 1) << k;
    }
    pause_held_workers(false);
    EXPECT_TRUE(workers_take_part(3));
  });
}

// Workers that keep making the caller wait (descheduled mid-part: another process on the cores)
// send the team solo: the caller runs every part itself for a while, then tries them again.
TEST(Parallel, AHeldTeamGoesSoloWhenItsWorkersKeepStalling) {
  if (!held_teams_enabled()) GTEST_SKIP() << "OpenMP threads spin between regions here (OMP_WAIT_POLICY=active): no held teams";
  const Threads threads(2);
  hold_team([&] {
    auto busy = [](int us) {
      for (auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - t0 < std::chrono::microseconds(us);) {
      }
    };
    ASSERT_TRUE(workers_take_part(2));
    // Part 1 stalls 5 ms on a worker (part 0 lasts 200 us, time for the worker to take it).
    int pieces = 0;
    while (!team_runs_solo() && pieces++ < 200)
      team_run(true, [&](int t, int) {
        if (t == 0) busy(200);
        else if (!team_part_covered()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      });
    ASSERT_TRUE(team_runs_solo()) << pieces;
    for (int i = 0; i < 10; ++i) EXPECT_EQ(expect_one_call_per_part(2, true), 0);  // all on the caller
    std::this_thread::sleep_for(std::chrono::milliseconds(120));
    EXPECT_FALSE(team_runs_solo());
    EXPECT_TRUE(workers_take_part(2));
  });
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
      expect_one_call_per_part(2, true);  // still the outer team
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
