#include "ops/rope.h"

#include <cmath>

#include "util/parallel.h"

namespace modlm::ops {

template <typename T>
void RopeTable<T>::build(int max_pos_, int head_dim, double theta) {
  max_pos = max_pos_;
  half = head_dim / 2;
  cos.assign((size_t)max_pos * half, T(0));
  sin.assign((size_t)max_pos * half, T(0));
  for (int p = 0; p < max_pos; ++p)
    for (int i = 0; i < half; ++i) {
      double angle = (double)p * std::pow(theta, -2.0 * i / head_dim);
      cos[(size_t)p * half + i] = T(std::cos(angle));
      sin[(size_t)p * half + i] = T(std::sin(angle));
    }
}

template <typename T>
static void rope_apply(T* x, int ld, int n, int H, int Dh, const int32_t* pos, const RopeTable<T>& table,
                       T sign) {
  const int half = Dh / 2;
  parallel_for_if(n > 16, n, [&](int r) {
    const T* c = table.cos.data() + (size_t)pos[r] * half;
    const T* s = table.sin.data() + (size_t)pos[r] * half;
    for (int h = 0; h < H; ++h) {
      T* x1 = x + (size_t)r * ld + h * Dh;
      T* x2 = x1 + half;
      for (int i = 0; i < half; ++i) {
        T a = x1[i], b = x2[i], si = sign * s[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = b * c[i] + a * si;
      }
    }
  });
}

template <typename T>
void rope_forward(T* x, int ld, int n, int H, int Dh, const int32_t* pos, const RopeTable<T>& table) {
  rope_apply(x, ld, n, H, Dh, pos, table, T(1));
}
template <typename T>
void rope_backward(T* dx, int ld, int n, int H, int Dh, const int32_t* pos, const RopeTable<T>& table) {
  rope_apply(dx, ld, n, H, Dh, pos, table, T(-1));
}

template struct RopeTable<float>;
template struct RopeTable<double>;
template void rope_forward<float>(float*, int, int, int, int, const int32_t*, const RopeTable<float>&);
template void rope_forward<double>(double*, int, int, int, int, const int32_t*, const RopeTable<double>&);
template void rope_backward<float>(float*, int, int, int, int, const int32_t*, const RopeTable<float>&);
template void rope_backward<double>(double*, int, int, int, int, const int32_t*, const RopeTable<double>&);

}  // namespace modlm::ops
