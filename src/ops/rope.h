// Rotary position embedding, "rotate-half" convention (SPEC §1): within a head, dimension i is
// paired with i + Dh/2 (i < Dh/2) and rotated by pos * theta^(-2i/Dh).
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace modlm::ops {

// cos/sin for every position < max_pos and every pair index < Dh/2. Angles are computed in
// float64 and then rounded (SPEC §4).
template <typename T>
struct RopeTable {
  int max_pos = 0, half = 0;
  AlignedVector<T> cos, sin;  // [max_pos, half]
  void build(int max_pos, int head_dim, double theta);
};

// Rotates the first n rows of x [n, ld] in place: H heads of Dh columns starting at column 0.
// pos[n] is each row's position in its sequence; the caller guarantees 0 <= pos < table.max_pos.
template <typename T>
void rope_forward(T* x, int ld, int n, int H, int Dh, const int32_t* pos, const RopeTable<T>& table);

// The transpose rotation (the gradient of rope_forward), in place on dx.
template <typename T>
void rope_backward(T* dx, int ld, int n, int H, int Dh, const int32_t* pos, const RopeTable<T>& table);

}  // namespace modlm::ops
