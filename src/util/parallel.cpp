#include "util/parallel.h"

#include "util/strings.h"

#include <atomic>
#include <chrono>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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

std::string lower_env(const char* name) {
  const char* v = std::getenv(name);
  return ascii_lower(v ? v : "");
}

// Spins before a waiting thread sleeps: ~50 us here (a pause takes ~19 ns on this Zen 5). The gaps
// between a step's parallel pieces are a few us; between steps (sampling, the caller's work) or
// with another process on a core, sleeping gives the core back, as libgomp does after
// GOMP_SPINCOUNT (set to 3000 by main.cpp for the same reason). OMP_WAIT_POLICY=passive: no
// spinning, as libgomp.
int spins() {
  static const int n = lower_env("OMP_WAIT_POLICY") == "passive" ? 0 : 2500;
  return n;
}

// Whether OpenMP's own threads go to sleep soon after a region: not with OMP_WAIT_POLICY=active or
// an unbounded GOMP_SPINCOUNT, where they spin on between the regions and a held team's workers
// would share the cores with them (measured: the worker then ran a part after ~2 ms of pieces).
bool openmp_threads_sleep() {
  static const bool sleep = [] {
    if (lower_env("OMP_WAIT_POLICY") == "active") return false;
    const std::string count = lower_env("GOMP_SPINCOUNT");
    if (count.rfind("infinit", 0) == 0) return false;
    return count.empty() || std::strtod(count.c_str(), nullptr) < 1e7;
  }();
  return sleep;
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

constexpr uint32_t kGenerationMask = 0x3fffffffu;  // a seat holds a generation and two state bits:
constexpr uint32_t kTaken = 1u << 30;               // the worker runs its part
constexpr uint32_t kDone = 2u << 30;                // ... and has finished it
constexpr uint32_t kCovered = 3u << 30;             // the caller ran it (the worker had not started)
constexpr int kMaxWorkers = 63;

thread_local HeldTeam* t_held = nullptr;
thread_local bool t_covering = false;
std::atomic<long long> g_pieces{0};
std::atomic<bool> g_workers_paused{false};

}  // namespace

// Worker threads kept for held teams, one holder at a time. Not OpenMP's threads: a held step
// is then no OpenMP region, so nothing waits at a region's end for a worker the OS has
// descheduled (another process on its core), and OpenMP constructs the step reaches on the
// holding thread (a BLAS call, a prompt's attention) still get OpenMP's team.
struct HeldTeam {
  ~HeldTeam() {
    stop.store(true);
    generation.store((generation.load() + 1) & kGenerationMask);
    futex_wake(generation);
    for (auto& w : workers) w.join();
  }
  void grow(int n) {
    while ((int)workers.size() < n) {
      const int w = (int)workers.size() + 1;
      workers.emplace_back([this, w] { work(w); });
    }
  }
  void work(int w) {
    // stop is set before the generation moves: read in the other order here, either this
    // thread sees stop or it sees the move (a worker that starts after its team stopped).
    uint32_t seen = generation.load();
    for (;;) {
      if (stop.load()) return;
      const uint32_t g = wait_change(generation, seen, workers_asleep);
      seen = g;
      if (stop.load()) return;
      if (g_workers_paused.load(std::memory_order_relaxed)) continue;  // as if descheduled (tests)
      uint32_t open = g;
      // Late for this piece (the caller covered it, or moved on): wait for the next.
      if (!seats[w].compare_exchange_strong(open, g | kTaken, std::memory_order_acquire)) continue;
      fn(ctx, w, size);
      seats[w].store(g | kDone);
      if (caller_asleep.load() > 0) futex_wake(seats[w]);
    }
  }

  std::mutex holder;  // try-locked by hold_team: one holding thread at a time
  std::vector<std::thread> workers;  // worker w (1-based) runs part w
  int size = 1;  // the current holder's team, caller included
  void (*fn)(void*, int, int) = nullptr;
  void* ctx = nullptr;
  std::atomic<bool> stop{false};
  int64_t solo_until = 0;      // steady-clock ns until which the caller runs every part (0: none)
  int64_t last_long_wait = 0;  // when the caller last waited long for a worker (0: never)
  alignas(64) std::atomic<uint32_t> generation{0};  // the piece being handed out
  std::atomic<int> workers_asleep{0};
  alignas(64) std::atomic<int> caller_asleep{0};
  struct alignas(64) Seat : std::atomic<uint32_t> {};
  Seat seats[kMaxWorkers + 1];  // per worker: the piece it may take, and how far it got
};

HeldTeam* held_team() { return t_held; }

int held_team_size(const HeldTeam* team) { return team->size; }

// Opens a seat per worker for the piece, hands it out (generation), runs part 0, then for each
// worker either waits for its part or, where it has not started, closes the seat and runs the
// part itself: a sleeping worker, or one descheduled before it started, delays nobody.
//
// A worker descheduled in the middle of its part still does: the caller waits for it, a time
// slice or more (measured with `yes` busy on one core, S batch 1: 11 waits of over 2 ms in 64
// steps, ~one every 30 ms, none of 50 us-2 ms). Two such waits (longer than kLongWait and twice
// the caller's own part) within kLoadWindow mean another process shares the cores: the caller
// then runs every part itself for kSolo (one thread's speed, what a loaded machine gives) and
// tries the workers again after. One alone does not: quiet runs of M at 64 sequences met single
// waits of 4-17 ms a few times a second (the VM's host, presumably), and a solo period after
// each cost 10-20 % of their speed.
constexpr int64_t kLongWait = 2'000'000;     // ns
constexpr int64_t kLoadWindow = 50'000'000;  // ns
constexpr int64_t kSolo = 100'000'000;       // ns

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void run_covered(void (*fn)(void*, int, int), void* ctx, int w, int T) {
  t_covering = true;
  fn(ctx, w, T);
  t_covering = false;
}

void held_team_run(HeldTeam* team, void (*fn)(void*, int, int), void* ctx) {
  const int T = team->size;
  if (T <= 1) return fn(ctx, 0, 1);
  g_pieces.fetch_add(1, std::memory_order_relaxed);
  if (team->solo_until && now_ns() < team->solo_until) {
    fn(ctx, 0, T);
    for (int w = 1; w < T; ++w) run_covered(fn, ctx, w, T);
    return;
  }
  team->solo_until = 0;
  // Never 0, a seat's value before its worker's first piece.
  const uint32_t g = std::max<uint32_t>((team->generation.load(std::memory_order_relaxed) + 1) & kGenerationMask, 1);
  team->fn = fn, team->ctx = ctx;
  for (int w = 1; w < T; ++w) team->seats[w].store(g, std::memory_order_release);
  team->generation.store(g);
  if (team->workers_asleep.load() > 0) futex_wake(team->generation);
  const int64_t start = now_ns();
  fn(ctx, 0, T);
  const int64_t own = now_ns() - start;
  for (int w = 1; w < T; ++w) {
    uint32_t open = g;
    if (team->seats[w].compare_exchange_strong(open, g | kCovered)) {
      run_covered(fn, ctx, w, T);
      continue;
    }
    const int64_t wait_start = now_ns();
    for (uint32_t v = open; v != (g | kDone);) v = wait_change(team->seats[w], v, team->caller_asleep);
    const int64_t end = now_ns(), waited = end - wait_start;
    if (waited > kLongWait && waited > 2 * own) {
      if (team->last_long_wait && end - team->last_long_wait < kLoadWindow) team->solo_until = end + kSolo;
      team->last_long_wait = end;
    }
  }
}

}  // namespace detail

long long held_team_pieces() { return detail::g_pieces.load(std::memory_order_relaxed); }

bool team_part_covered() { return detail::t_covering; }

bool pause_held_workers(bool paused) { return detail::g_workers_paused.exchange(paused); }

bool team_runs_solo() {
  const detail::HeldTeam* team = detail::t_held;
  return team && team->solo_until && detail::now_ns() < team->solo_until;
}

bool held_teams_enabled() { return detail::openmp_threads_sleep(); }

void hold_team(const std::function<void()>& step) {
  const int T = omp_in_parallel() ? 1 : std::min(omp_get_max_threads(), detail::kMaxWorkers + 1);
  if (detail::t_held || T < 2 || !held_teams_enabled()) return step();
  static detail::HeldTeam team;  // its workers live until the process exits
  std::unique_lock<std::mutex> lock(team.holder, std::try_to_lock);
  if (!lock.owns_lock()) return step();  // another thread holds it: OpenMP regions as before
  team.grow(T - 1);
  team.size = T;
  detail::t_held = &team;
  struct Release {
    ~Release() { detail::t_held = nullptr; }
  } release;
  step();
}

}  // namespace modlm
