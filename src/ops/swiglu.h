// SwiGLU gating of the MLP (SPEC §1): g = silu(a) * b, where [a | b] = [W1 x | W3 x].
#pragma once

namespace modlm::ops {

// h13: [n, 2F] rows holding a = W1 x (columns 0..F) and b = W3 x (columns F..2F). g: [n, F].
template <typename T>
void swiglu_forward(const T* h13, int n, int F, T* g);

// dg: [n, F] -> dh13: [n, 2F].
template <typename T>
void swiglu_backward(const T* dg, const T* h13, int n, int F, T* dh13);

}  // namespace modlm::ops
