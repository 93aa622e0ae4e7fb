#include "ops/cross_entropy.h"

#include <cmath>

#include "ops/fast_math.h"
#include <cstddef>
#include <vector>

namespace modlm::ops {

template <typename T>
double cross_entropy(T* logits, const int32_t* targets, int n, int V, T dlogits_scale) {
  // Per-row losses summed in order afterwards: deterministic whatever the threading.
  std::vector<double> row_loss(n);
#pragma omp parallel for schedule(static) if (n > 16)
  for (int i = 0; i < n; ++i) {
    T* row = logits + (size_t)i * V;
    T mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < V; ++j) mx = row[j] > mx ? row[j] : mx;
    const T target_logit = row[targets[i]];
    // One exp per logit, kept in place when the gradient is wanted.
    T sum = 0;
    if (dlogits_scale != T(0)) {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) {
        T e = vexp<T>(row[j] - mx);
        row[j] = e;
        sum += e;
      }
      const T scale = dlogits_scale / sum;
#pragma omp simd
      for (int j = 0; j < V; ++j) row[j] *= scale;
      row[targets[i]] -= dlogits_scale;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += vexp<T>(row[j] - mx);
    }
    row_loss[i] = (double)mx + std::log((double)sum) - (double)target_logit;
  }
  double total = 0;
  for (double l : row_loss) total += l;
  return total;
}

template double cross_entropy<float>(float*, const int32_t*, int, int, float);
template double cross_entropy<double>(double*, const int32_t*, int, int, double);

}  // namespace modlm::ops
