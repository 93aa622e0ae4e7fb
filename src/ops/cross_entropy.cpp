#include "ops/cross_entropy.h"

#include <cmath>
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
    for (int j = 1; j < V; ++j) mx = row[j] > mx ? row[j] : mx;
    double sum = 0;
    for (int j = 0; j < V; ++j) sum += std::exp((double)(row[j] - mx));
    double lse = (double)mx + std::log(sum);
    row_loss[i] = lse - (double)row[targets[i]];
    if (dlogits_scale != T(0)) {
      T inv = T(1.0 / sum);
      for (int j = 0; j < V; ++j) row[j] = dlogits_scale * std::exp(row[j] - mx) * inv;
      row[targets[i]] -= dlogits_scale;
    }
  }
  double total = 0;
  for (double l : row_loss) total += l;
  return total;
}

template double cross_entropy<float>(float*, const int32_t*, int, int, float);
template double cross_entropy<double>(double*, const int32_t*, int, int, double);

}  // namespace modlm::ops
