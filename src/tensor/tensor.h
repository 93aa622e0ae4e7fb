// A small owning tensor: a 64-byte aligned buffer plus a shape. Views are plain pointers
// with explicit strides at the call sites (llm.c style); ownership lives only here.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <numeric>
#include <string>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace modlm {

// Buffers of 4 MiB and more (weights, activations, KV caches) are placed on 2 MiB boundaries and
// marked for transparent huge pages (Debian's default THP mode is "madvise": nothing gets them
// unasked). Streaming M's 477 MB of bf16 weights then misses the TLB 512x less often: the decode
// kernel read 34-35 GB/s with them against 28-30 without, in the same minutes (docs/performance.md).
inline constexpr std::size_t kHugePage = std::size_t{2} << 20;
inline void* allocate_aligned(std::size_t bytes, std::size_t align) {
  if (bytes >= 2 * kHugePage) {
    bytes = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, bytes);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint: without THP the pages stay 4 KiB
#endif
    return p;
  }
  bytes = (bytes + align - 1) / align * align;
  return std::aligned_alloc(align, bytes == 0 ? align : bytes);
}

template <typename T, std::size_t Align = 64>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U, Align>&) {}
  template <typename U>
  struct rebind { using other = AlignedAllocator<U, Align>; };
  T* allocate(std::size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    void* p = allocate_aligned(n * sizeof(T), Align);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  bool operator==(const AlignedAllocator&) const { return true; }
};

template <typename T>
using AlignedVector = std::vector<T, AlignedAllocator<T>>;

inline int64_t shape_numel(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Owning tensor. resize() keeps the buffer when it is already large enough, so activation
// buffers sized once for a batch shape are reused every step without new page faults.
template <typename T>
class TensorT {
 public:
  TensorT() = default;
  explicit TensorT(std::vector<int64_t> shape) { resize(std::move(shape)); }

  void resize(std::vector<int64_t> shape) {
    shape_ = std::move(shape);
    size_t n = static_cast<size_t>(shape_numel(shape_));
    if (data_.size() < n) data_.resize(n);
    numel_ = n;
  }
  void zero() { std::fill(data_.begin(), data_.begin() + numel_, T(0)); }

  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  size_t numel() const { return numel_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  AlignedVector<T> data_;
  std::vector<int64_t> shape_;
  size_t numel_ = 0;
};

using Tensor = TensorT<float>;

}  // namespace modlm
