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
// (docs/performance.md, "One team per decode step"); `bench_kernels --benchmark_filter=TeamRun`
// times an empty piece both ways (4.0 us a new region, 0.8 us on a held team). hold_team() holds a team of worker threads
// (kept for the process, not OpenMP's) for the whole step: each team_run() inside it hands its
// body to them through counters they spin on (then sleep on, after ~50 us without work), and the
// calling thread runs the part of any worker that has not started by the time its own part is
// done, so a worker the OS has descheduled delays nobody.
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

// Pieces run through a held team of two or more so far in this process, those it ran solo
// (under load, below) included: tests check that a decode step really goes through the team.
long long held_team_pieces();

// True while the calling thread runs the part of a held team's thread that had not started on
// it (held_team_run covers such parts): per-thread timings taken then are not that thread's.
bool team_part_covered();

// Tests: while paused, held teams' workers take no part in any piece, as if the OS had
// descheduled them. Returns the previous setting.
bool pause_held_workers(bool paused);

// True while the team this thread holds runs every part on this thread: after waits for workers
// that only another process on the cores explains (util/parallel.cpp), for a tenth of a second.
bool team_runs_solo();

// Runs step() on the calling thread with a team of omp_get_max_threads() held for it (the caller
// and workers kept for the process): team_run() calls that step() makes on this thread reach the
// workers without an OpenMP region. Exceptions from step() pass through. Inside an OpenMP
// parallel region, inside a held team, with one thread, while another thread holds the team, or
// where held teams are off (below), step() runs plainly (its pieces on OpenMP teams).
void hold_team(const std::function<void()>& step);

// False where OpenMP's threads keep spinning between regions (OMP_WAIT_POLICY=active, an
// unbounded GOMP_SPINCOUNT): a held team's workers would compete with them for the cores.
bool held_teams_enabled();

// The number of threads team_run(true, ...) would use here.
inline int team_threads() {
  if (const detail::HeldTeam* h = detail::held_team()) return detail::held_team_size(h);
  return omp_in_parallel() ? 1 : omp_get_max_threads();
}

// body(t, T) for every t in [0, T) on the held team (parts whose worker has not started run on
// the caller) or, when none is held, a new OpenMP team; body(0, 1) on the calling thread when
// !parallel, inside another parallel region, or with one thread. Returns when every call has
// returned. Bodies must use t, not omp_get_thread_num(), for per-thread scratch.
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
