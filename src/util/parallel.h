// Parallel loops on the OpenMP team, cheap when there is nothing to split, and a team held for a
// whole decode step so its many short parallel pieces skip OpenMP's fork and join.
//
// `#pragma omp parallel for if (cond)` still enters the runtime when cond is false: libgomp
// builds a team of one for the serial run, about 1.5-1.8 us a call here (AMD EPYC, GCC 12) against
// a few ns for the plain loop. A batch-1 decode step made ~80 such calls (two norms, two RoPEs and
// a SwiGLU per layer): ~130 us of a 5-6 ms step (docs/performance.md, "Batch 1 inside a real step").
//
// The parallel pieces that remain (four products and the attention per layer: ~81 in an M step)
// each cost a fork and a join: ~3 us for an empty `#pragma omp parallel` on this VM, a libgomp
// barrier alone 1.4 us, against ~0.2 us for a barrier that spins on one shared counter
// (docs/performance.md, "One team per decode step"). hold_team() enters one OpenMP region for the
// whole step; the calling thread runs the step, and each team_run() inside it hands its body to
// the other threads through a counter they spin on (then sleep on, after ~50 us without work).
#pragma once

#include <omp.h>

#include <functional>
#include <type_traits>

namespace modlm {

namespace detail {
struct HeldTeam;
HeldTeam* held_team();  // the team the calling thread holds, or null
int held_team_size(const HeldTeam* team);
void held_team_run(HeldTeam* team, void (*fn)(void*, int, int), void* ctx);
}  // namespace detail

// Pieces handed to a held team's other threads so far in this process (tests check that a
// decode step really goes through the team).
long long held_team_pieces();

// Runs step() on the calling thread with an OpenMP team of omp_get_max_threads() held for it:
// team_run() calls that step() makes on this thread reach the other threads without a new OpenMP
// region. An exception thrown by step() is rethrown once the team is released. Inside another
// parallel region, inside a held team, or with one thread, step() runs plainly.
void hold_team(const std::function<void()>& step);

// The number of threads team_run(true, ...) would use here.
inline int team_threads() {
  if (const detail::HeldTeam* h = detail::held_team()) return detail::held_team_size(h);
  return omp_in_parallel() ? 1 : omp_get_max_threads();
}

// body(t, T) for every t in [0, T) on the held team or, when none is held, a new OpenMP team;
// body(0, 1) on the calling thread when !parallel, inside another parallel region, or with one
// thread. Returns when every call has returned. Bodies must use t, not omp_get_thread_num(), for
// per-thread scratch (they agree on a held or new team, not in the plain case).
template <typename Body>
void team_run(bool parallel, Body&& body) {
  if (parallel) {
    if (detail::HeldTeam* h = detail::held_team()) {
      using B = std::remove_reference_t<Body>;
      detail::held_team_run(h, [](void* ctx, int t, int T) { (*static_cast<B*>(ctx))(t, T); }, &body);
      return;
    }
    if (!omp_in_parallel() && omp_get_max_threads() > 1) {
#pragma omp parallel
      body(omp_get_thread_num(), omp_get_num_threads());
      return;
    }
  }
  body(0, 1);
}

// body(i) for i in [0, n): split statically across the team (team_run) when `parallel`, else a
// plain loop on the calling thread.
template <typename Body>
void parallel_for_if(bool parallel, int n, Body&& body) {
  if (!parallel) {
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
  team_run(true, [&](int t, int T) {
    const int i1 = (int)((long long)n * (t + 1) / T);
    for (int i = (int)((long long)n * t / T); i < i1; ++i) body(i);
  });
}

}  // namespace modlm
