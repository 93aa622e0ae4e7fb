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

namespace modlm {

template <typename T, std::size_t Align = 64>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U, Align>&) {}
  template <typename U>
  struct rebind { using other = AlignedAllocator<U, Align>; };
  T* allocate(std::size_t n) {
    std::size_t bytes = (n * sizeof(T) + Align - 1) / Align * Align;
    void* p = std::aligned_alloc(Align, bytes == 0 ? Align : bytes);
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
