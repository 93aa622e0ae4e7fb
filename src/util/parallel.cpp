#include "util/parallel.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <string>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace modlm {

namespace detail {

namespace {

// Spins before a waiting thread sleeps: ~50 us here (a pause takes ~19 ns on this Zen 5). The gaps
// between a step's parallel pieces are a few us; between steps (sampling, the caller's work) or
// with another process on a core, sleeping gives the core back, as libgomp does after
// GOMP_SPINCOUNT (set to 3000 by main.cpp for the same reason). OMP_WAIT_POLICY is honoured:
// passive sleeps at once, active never sleeps.
int spins() {
  static const int n = [] {
    const char* policy = std::getenv("OMP_WAIT_POLICY");
    const std::string p = policy ? policy : "";
    if (p == "passive" || p == "PASSIVE") return 0;
    if (p == "active" || p == "ACTIVE") return INT32_MAX;
    return 2500;
  }();
  return n;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

void futex_wait(std::atomic<uint32_t>& word, uint32_t seen) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
#else
  word.wait(seen);
#endif
}

void futex_wake(std::atomic<uint32_t>& word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#else
  word.notify_all();
#endif
}

// Waits until word != seen: spins, then sleeps with `sleepers` raised so the writer wakes it.
// The writer changes word, then reads sleepers (both sequentially consistent), so either this
// thread sees the change or the writer sees it asleep (or about to be: the futex rechecks).
uint32_t wait_change(std::atomic<uint32_t>& word, uint32_t seen, std::atomic<int>& sleepers) {
  for (int i = 0, n = spins(); i < n; ++i) {
    const uint32_t v = word.load(std::memory_order_acquire);
    if (v != seen) return v;
    cpu_relax();
  }
  sleepers.fetch_add(1);
  uint32_t v;
  while ((v = word.load()) == seen) futex_wait(word, seen);
  sleepers.fetch_sub(1);
  return v;
}

thread_local HeldTeam* t_held = nullptr;
std::atomic<long long> g_pieces{0};

}  // namespace

struct HeldTeam {
  int size = 1;
  void (*fn)(void*, int, int) = nullptr;  // the piece to run; null: the step is over
  void* ctx = nullptr;
  alignas(64) std::atomic<uint32_t> generation{0};  // bumped once per piece handed out
  std::atomic<int> workers_asleep{0};
  alignas(64) std::atomic<uint32_t> pending{0};  // workers still running the current piece
  std::atomic<int> caller_asleep{0};
};

HeldTeam* held_team() { return t_held; }

int held_team_size(const HeldTeam* team) { return team->size; }

// Hands fn to the workers (generation), runs its own part, waits for theirs (pending).
void held_team_run(HeldTeam* team, void (*fn)(void*, int, int), void* ctx) {
  const int T = team->size;
  if (T > 1) {
    g_pieces.fetch_add(1, std::memory_order_relaxed);
    team->fn = fn, team->ctx = ctx;
    team->pending.store(T - 1, std::memory_order_relaxed);
    team->generation.fetch_add(1);  // publishes fn, ctx, pending
    if (team->workers_asleep.load() > 0) futex_wake(team->generation);
  }
  fn(ctx, 0, T);
  if (T > 1) {
    for (uint32_t p = team->pending.load(std::memory_order_acquire); p != 0;)
      p = wait_change(team->pending, p, team->caller_asleep);
  }
}

}  // namespace detail

long long held_team_pieces() { return detail::g_pieces.load(std::memory_order_relaxed); }

void hold_team(const std::function<void()>& step) {
  if (detail::t_held || omp_in_parallel() || omp_get_max_threads() < 2) return step();
  detail::HeldTeam team;
  std::exception_ptr error;
#pragma omp parallel
  {
    const int t = omp_get_thread_num();
    if (t == 0) {
      team.size = omp_get_num_threads();
      // Workers read size only after the first generation bump, which publishes it.
      detail::t_held = &team;
      try {
        step();
      } catch (...) {
        error = std::current_exception();
      }
      detail::t_held = nullptr;
      if (team.size > 1) {
        team.fn = nullptr;
        team.generation.fetch_add(1);
        if (team.workers_asleep.load() > 0) detail::futex_wake(team.generation);
      }
    } else {
      uint32_t seen = 0;
      for (;;) {
        seen = detail::wait_change(team.generation, seen, team.workers_asleep);
        if (!team.fn) break;
        team.fn(team.ctx, t, team.size);
        if (team.pending.fetch_sub(1) == 1 && team.caller_asleep.load() > 0) detail::futex_wake(team.pending);
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace modlm
