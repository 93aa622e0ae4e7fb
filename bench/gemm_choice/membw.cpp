// Streaming read bandwidth: sum over a 1 GiB float array with OpenMP threads
// (OMP_NUM_THREADS). The ceiling for weight-read-bound decode. Prints
// "membw,<threads>,<median GB/s>,<min>,<max>" (GB = 1e9 bytes).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

int main() {
  const size_t n = size_t(1) << 28;  // 2^28 floats = 1 GiB
  std::vector<float> a(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) a[i] = float(i & 1023) * 1e-3f;  // first touch per thread
  std::vector<double> gbs;
  double sink = 0;
  for (int rep = 0; rep < 12; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    // 4 independent 16-float accumulators per thread (GCC vector extension -> AVX-512
    // with -march=native); a plain scalar reduction is add-latency bound (~4.5 GB/s).
    typedef float v16 __attribute__((vector_size(64)));
    float s = 0;
    const float* p = a.data();
#pragma omp parallel reduction(+ : s)
    {
      v16 acc[4] = {};
      const size_t blocks = n / 64;
#pragma omp for schedule(static)
      for (size_t b = 0; b < blocks; ++b)
        for (int j = 0; j < 4; ++j) {
          v16 x;
          __builtin_memcpy(&x, p + b * 64 + j * 16, sizeof x);
          acc[j] += x;
        }
      v16 t = acc[0] + acc[1] + acc[2] + acc[3];
      for (int j = 0; j < 16; ++j) s += t[j];
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink += s;
    if (rep >= 2) gbs.push_back(double(n) * sizeof(float) / dt * 1e-9);  // 2 warm-up passes
  }
  std::sort(gbs.begin(), gbs.end());
  std::printf("membw,%d,%.1f,%.1f,%.1f\n", omp_get_max_threads(), gbs[gbs.size() / 2], gbs.front(),
              gbs.back());
  return sink == 12345.0 ? 1 : 0;
}
