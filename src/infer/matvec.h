// Decode-time matrix products: a few rows (one per sequence) against a weight matrix.
//
// Decoding reads every weight once per step, so it is bound by memory bandwidth, not FLOPs.
// A BLAS gemm with M = 1..16 packs the weight first (an extra copy of every byte) and a BLAS
// gemv reads the weight once per sequence; this kernel reads each weight row once for the
// whole batch and multiplies it with all B inputs while it is in registers/L1.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ops/q8.h"

namespace modlm::infer {

// Y[b, j] (+)= sum_k W[j, k] X[b, k] for b < B, j < out.  W: [out, in] row-major (SPEC §6
// layout), X: [B, in] with row stride ldx, Y: [B, out] with row stride ldy. Parallel (OpenMP)
// over output rows; each weight row is read from memory once for all B inputs. Adds
// 2 * B * out * in to the FlopCounter.
void matvec(const float* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy,
            bool accumulate = false);
// The same with bf16 weights (ops/bf16.h), widened to float in registers: half the bytes read.
// The float product over the bf16 values, summed in the kernel's own order (not bit for bit the
// float version's: the kernels split the sums differently).
void matvec(const uint16_t* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy,
            bool accumulate = false);

// IEEE half weights (the F16 dtype), widened in registers (F16C).
struct Half {
  uint16_t bits;
};
void matvec(const Half* W, int out, int in, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate = false);

// 8-bit weights in the q8 block format of ops/q8.h: scales [out, ceil(in/32)]. Widened and
// scaled in registers, so the result is the float product over those dequantized weights
// (summed in another order); a quarter of the float bytes plus 1/8 byte per weight.
void matvec_q8(const int8_t* W, const float* scales, int out, int in, const float* X, int ldx, int B, float* Y, int ldy,
               bool accumulate = false);

// From this many inputs on, every matvec above runs the outer-product kernel (vectors along the
// batch, no horizontal sums; AVX-512 builds) instead of the row tiles. 0 (the default) = the
// threshold measured for each weight format (matvec.cpp: f32 12, bf16 16, f16 and q8 28); tests
// and benchmarks set it to reach both kernels at any size. Returns the previous value. Not
// thread-safe: set it before decoding starts.
int set_outer_min_batch(int b);

// Whether this build has the outer-product kernel (AVX2 or AVX-512), and with AVX-512 vectors.
bool outer_kernel_built();
bool outer_kernel_is_avx512();

// set_outer_min_batch(b) for a scope, the previous value restored when it ends (tests and
// benchmarks that run both kernels).
class OuterKernelFrom {
 public:
  explicit OuterKernelFrom(int b) : saved_(set_outer_min_batch(b)) {}
  ~OuterKernelFrom() { set_outer_min_batch(saved_); }
  OuterKernelFrom(const OuterKernelFrom&) = delete;
  OuterKernelFrom& operator=(const OuterKernelFrom&) = delete;

 private:
  int saved_;
};

// Wall time and FLOPs of the matvec calls above made while timing is on: bench generate's
// "products" figure (the matrix products' own rate, apart from attention, norms and the rest of
// a step). Two clock reads per call when on; nothing when off.
struct MatvecClock {
  static void enable(bool on);
  static void reset();
  static double seconds();
  static int64_t flops();
};

}  // namespace modlm::infer
