#include "ops/rmsnorm.h"

#include <omp.h>

#include <cmath>
#include <vector>

#include "util/parallel.h"

namespace modlm::ops {

template <typename T>
void rmsnorm_forward(const T* x, int ldx, const T* w, int n, int D, T eps, T* y, int ldy, T* inv_rms) {
  parallel_for_if(n > 16, n, [&](int i) {
    const T* xi = x + (size_t)i * ldx;
    T* yi = y + (size_t)i * ldy;
    // Sum of squares in double for float inputs: D up to a few thousand, cheap and stable.
    double ss = 0;
    for (int j = 0; j < D; ++j) ss += (double)xi[j] * xi[j];
    T inv = T(1.0 / std::sqrt(ss / D + (double)eps));
    inv_rms[i] = inv;
    for (int j = 0; j < D; ++j) yi[j] = xi[j] * inv * w[j];
  });
}

template <typename T>
void rmsnorm_backward(const T* dy, int lddy, const T* x, int ldx, const T* w, const T* inv_rms, int n,
                      int D, T* dx, int lddx, bool accumulate, T* dw) {
  // dw needs a reduction over rows: each thread sums its rows into a private row, then adds.
  int nthreads = n > 16 ? omp_get_max_threads() : 1;
  std::vector<T> dw_part((size_t)nthreads * D, T(0));
#pragma omp parallel num_threads(nthreads)
  {
    T* dwp = dw_part.data() + (size_t)omp_get_thread_num() * D;
#pragma omp for schedule(static)
    for (int i = 0; i < n; ++i) {
      const T* xi = x + (size_t)i * ldx;
      const T* dyi = dy + (size_t)i * lddy;
      T* dxi = dx + (size_t)i * lddx;
      T inv = inv_rms[i];
      // y_j = x_j * inv * w_j;  dx_j = inv * w_j dy_j - x_j * inv^3 / D * sum_k x_k w_k dy_k
      double dot = 0;
      for (int j = 0; j < D; ++j) {
        dot += (double)xi[j] * w[j] * dyi[j];
        dwp[j] += dyi[j] * xi[j] * inv;
      }
      T c = T(dot * (double)inv * inv * inv / D);
      if (accumulate) {
        for (int j = 0; j < D; ++j) dxi[j] += inv * w[j] * dyi[j] - xi[j] * c;
      } else {
        for (int j = 0; j < D; ++j) dxi[j] = inv * w[j] * dyi[j] - xi[j] * c;
      }
    }
  }
  for (int t = 0; t < nthreads; ++t)
    for (int j = 0; j < D; ++j) dw[j] += dw_part[(size_t)t * D + j];
}

template void rmsnorm_forward<float>(const float*, int, const float*, int, int, float, float*, int, float*);
template void rmsnorm_forward<double>(const double*, int, const double*, int, int, double, double*, int,
                                      double*);
template void rmsnorm_backward<float>(const float*, int, const float*, int, const float*, const float*, int,
                                      int, float*, int, bool, float*);
template void rmsnorm_backward<double>(const double*, int, const double*, int, const double*, const double*,
                                       int, int, double*, int, bool, double*);

}  // namespace modlm::ops
