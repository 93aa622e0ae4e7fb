// A large copy split over the threads: one thread's memcpy leaves half the bandwidth idle.
#pragma once
#include <cstddef>
#include <cstring>

namespace modlm::ops {

template <typename T>
inline void parallel_copy(const T* src, T* dst, size_t count) {
  const int chunks = count > (1 << 16) ? 16 : 1;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int c = 0; c < chunks; ++c) {
    const size_t b = count * c / chunks, e = count * (c + 1) / chunks;
    std::memcpy(dst + b, src + b, sizeof(T) * (e - b));
  }
}

}  // namespace modlm::ops
