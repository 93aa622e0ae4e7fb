// A loop run by the OpenMP team only when it is worth it, without entering OpenMP otherwise.
//
// `#pragma omp parallel for if (cond)` still enters the runtime when cond is false: libgomp
// builds a team of one for the serial run, about 1.5-1.8 us a call here (AMD EPYC, GCC 12) against
// a few ns for the plain loop. A batch-1 decode step made ~80 such calls (two norms, two RoPEs and
// a SwiGLU per layer): ~130 us of a 5-6 ms step (docs/performance.md, "Batch 1 inside a real step").
#pragma once

namespace modlm {

// body(i) for i in [0, n): split statically across the OpenMP team when `parallel`, else a
// plain loop on the calling thread.
template <typename Body>
inline void parallel_for_if(bool parallel, int n, Body&& body) {
  if (!parallel) {
    for (int i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) body(i);
}

}  // namespace modlm
