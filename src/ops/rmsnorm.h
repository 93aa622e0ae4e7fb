// RMSNorm (SPEC §1): y = x / sqrt(mean(x^2) + eps) * w, row by row.
#pragma once

namespace modlm::ops {

// x, y: [n, D] (row strides ldx, ldy). inv_rms[n] is saved for the backward pass.
template <typename T>
void rmsnorm_forward(const T* x, int ldx, const T* w, int n, int D, T eps, T* y, int ldy, T* inv_rms);

// dx[n, D] = (accumulate ? dx : 0) + d/dx; dw[D] += d/dw.
template <typename T>
void rmsnorm_backward(const T* dy, int lddy, const T* x, int ldx, const T* w, const T* inv_rms, int n,
                      int D, T* dx, int lddx, bool accumulate, T* dw);

}  // namespace modlm::ops
