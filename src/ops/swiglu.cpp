#include "ops/swiglu.h"

#include <cmath>

#include "ops/fast_math.h"
#include <cstddef>

#include "util/parallel.h"

namespace modlm::ops {

template <typename T>
void swiglu_forward(const T* h13, int n, int F, T* g) {
  parallel_for_if(n > 16, n, [&](int i) {
    const T* a = h13 + (size_t)i * 2 * F;
    const T* b = a + F;
    T* gi = g + (size_t)i * F;
#pragma omp simd
    for (int j = 0; j < F; ++j) gi[j] = a[j] / (T(1) + vexp<T>(-a[j])) * b[j];
  });
}

template <typename T>
void swiglu_backward(const T* dg, const T* h13, int n, int F, T* dh13) {
#pragma omp parallel for schedule(static) if (n > 16)
  for (int i = 0; i < n; ++i) {
    const T* a = h13 + (size_t)i * 2 * F;
    const T* b = a + F;
    const T* dgi = dg + (size_t)i * F;
    T* da = dh13 + (size_t)i * 2 * F;
    T* db = da + F;
#pragma omp simd
    for (int j = 0; j < F; ++j) {
      T s = T(1) / (T(1) + vexp<T>(-a[j]));
      T silu = a[j] * s;
      db[j] = dgi[j] * silu;
      da[j] = dgi[j] * b[j] * s * (T(1) + a[j] * (T(1) - s));  // silu'(a) = s (1 + a (1 - s))
    }
  }
}

template void swiglu_forward<float>(const float*, int, int, float*);
template void swiglu_forward<double>(const double*, int, int, double*);
template void swiglu_backward<float>(const float*, const float*, int, int, float*);
template void swiglu_backward<double>(const double*, const double*, int, int, double*);

}  // namespace modlm::ops
