// The one place matrix products are called (OpenBLAS), and the one place their FLOPs are counted.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

namespace modlm::ops {

// Counts the FLOPs (2 per multiply-add) of the matrix products executed while counting is on.
// Forward passes turn it on; backward passes do not, so the tally is the forward count that
// SPEC §5 defines, measured at the calls that really ran.
struct FlopCounter {
  static std::atomic<int64_t>& total();
  static std::atomic<bool>& enabled();
  static void add(int64_t flops) {
    if (enabled().load(std::memory_order_relaxed)) total().fetch_add(flops, std::memory_order_relaxed);
  }
};

// Enables counting for its lifetime and restores the previous state afterwards.
class CountFlops {
 public:
  explicit CountFlops(bool on = true) : prev_(FlopCounter::enabled().exchange(on)) {}
  ~CountFlops() { FlopCounter::enabled().store(prev_); }

 private:
  bool prev_;
};

// Which OpenBLAS kernels run the products ("OpenBLAS Cooperlake kernels"), and, when the
// environment picks them (OPENBLAS_CORETYPE, read by OpenBLAS at load), that setting: a core
// narrower than the CPU's (Haswell's 8-wide FMAs on an AVX-512 machine) halves every GEMM, and a
// benchmark's figures mean little without it (docs/performance.md).
std::string blas_kernels();
// Whether those kernels use AVX-512 (OpenBLAS's SkylakeX, Cooperlake, SapphireRapids cores).
bool blas_kernels_are_avx512();

// What the CPU can run, for choosing OpenBLAS kernels: 0 SSE only, 1 AVX, 2 AVX2 + FMA, 3
// AVX-512 (F, BW, VL, DQ); bf16: AVX512_BF16 too.
struct CpuVectorLevel {
  int level = 0;
  bool bf16 = false;
};
CpuVectorLevel cpu_vector_level();
// The OpenBLAS core to ask for (OPENBLAS_CORETYPE) where the one OpenBLAS picked (`picked`, as
// openblas_get_corename() names it) is older than AVX2 on a CPU that has AVX2: OpenBLAS 0.3.21
// (Debian 12) takes CPUs newer than itself (Emerald Rapids, family 6 model 207) for its SSE3
// Prescott core, which ran S training 4.4x slower here than its Cooperlake kernels. The
// replacement is the one OpenBLAS itself falls back to for a CPU it does not know: Cooperlake
// with AVX512_BF16, SkylakeX with AVX-512, Haswell with AVX2. "" where the pick stands (an AVX2
// or AVX-512 core: OpenBLAS chose it knowing the CPU).
std::string blas_core_to_pick(const std::string& picked, CpuVectorLevel cpu);
// blas_core_to_pick() for this process's OpenBLAS and CPU.
std::string blas_core_to_pick();
// The variable modlm sets beside OPENBLAS_CORETYPE when it chose the core itself (its value:
// the core OpenBLAS had picked), so that blas_kernels() can say so.
inline constexpr const char* kBlasCorePickedEnv = "MODLM_OPENBLAS_PICKED";
// Where the user set no OPENBLAS_CORETYPE and blas_core_to_pick() names a core, sets it (and
// kBlasCorePickedEnv) in the environment and returns true: OpenBLAS reads it only when it loads,
// so the caller then re-executes itself (modlm's main, bench_kernels).
bool set_blas_core_for_reexec();

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C, op(X) = X or X^T.
// A is [M,K] (or [K,M] if trans_a), B is [K,N] (or [N,K] if trans_b).
template <typename T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc);

// The same product without adding to the FlopCounter: for kernels that count their own work
// in the SPEC's terms (attention counts the causal pairs it scores, not the padded tiles).
template <typename T>
void gemm_uncounted(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda,
                    const T* B, int ldb, T beta, T* C, int ldc);

// y[n, out] = x[n, in] W[out, in]^T (+ y if accumulate): the layout of every weight in SPEC §6.
template <typename T>
inline void linear_forward(const T* x, int ldx, const T* W, int n, int in, int out, T* y, int ldy,
                           bool accumulate = false) {
  gemm<T>(false, true, n, out, in, T(1), x, ldx, W, in, accumulate ? T(1) : T(0), y, ldy);
}
// dx[n, in] (+)= dy[n, out] W[out, in]
template <typename T>
inline void linear_backward_input(const T* dy, int lddy, const T* W, int n, int in, int out, T* dx,
                                  int lddx, bool accumulate) {
  gemm<T>(false, false, n, in, out, T(1), dy, lddy, W, in, accumulate ? T(1) : T(0), dx, lddx);
}
// dW[out, in] += dy[n, out]^T x[n, in]
template <typename T>
inline void linear_backward_weight(const T* dy, int lddy, const T* x, int ldx, int n, int in, int out,
                                   T* dW) {
  gemm<T>(true, false, out, in, n, T(1), dy, lddy, x, ldx, T(1), dW, in);
}

}  // namespace modlm::ops
