#include "ops/gemm.h"

#include <cblas.h>

#include <cstdlib>

#include "util/strings.h"

namespace modlm::ops {

std::atomic<int64_t>& FlopCounter::total() {
  static std::atomic<int64_t> t{0};
  return t;
}
std::atomic<bool>& FlopCounter::enabled() {
  static std::atomic<bool> e{false};
  return e;
}

std::string blas_kernels() {
  std::string s = std::string("OpenBLAS ") + openblas_get_corename() + " kernels";
  const char* env = std::getenv("OPENBLAS_CORETYPE");
  if (!env || !*env) return s;
  // (Only where the kernels running are the ones asked for: a failed re-execution keeps the old.)
  if (const char* picked = std::getenv(kBlasCorePickedEnv); picked && *picked && ascii_lower(openblas_get_corename()) == ascii_lower(env))
    return s + " (chosen by modlm: OpenBLAS took this CPU for " + picked + ")";
  return s + " (OPENBLAS_CORETYPE=" + env + " in the environment)";
}

CpuVectorLevel cpu_vector_level() {
  CpuVectorLevel c;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx")) c.level = 1;
  if (c.level == 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) c.level = 2;
  if (c.level == 2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    c.level = 3;
  c.bf16 = c.level == 3 && __builtin_cpu_supports("avx512bf16");
#endif
  return c;
}

std::string blas_core_to_pick(const std::string& picked, CpuVectorLevel cpu) {
  if (cpu.level < 2) return "";
  const std::string core = ascii_lower(picked);
  // OpenBLAS's x86 cores with AVX2 or AVX-512 kernels (driver/others/dynamic.c): those stand.
  for (const char* modern : {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids", "excavator"})
    if (core == modern) return "";
  if (cpu.level == 3) return cpu.bf16 ? "Cooperlake" : "SkylakeX";
  return "Haswell";
}

bool set_blas_core_for_reexec() {
  if (std::getenv("OPENBLAS_CORETYPE")) return false;
  const std::string core = blas_core_to_pick();
  if (core.empty()) return false;
  setenv(kBlasCorePickedEnv, openblas_get_corename(), 1);
  setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  return true;
}

std::string blas_core_to_pick() {
#if defined(__x86_64__)
  return blas_core_to_pick(openblas_get_corename(), cpu_vector_level());
#else
  return "";
#endif
}

bool blas_kernels_are_avx512() {
  const std::string core = ascii_lower(openblas_get_corename());
  return core == "skylakex" || core == "cooperlake" || core == "sapphirerapids";
}

static inline CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

template <>
void gemm_uncounted<float>(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                           const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm_uncounted<double>(bool ta, bool tb, int M, int N, int K, double alpha, const double* A, int lda,
                            const double* B, int ldb, double beta, double* C, int ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
void gemm(bool ta, bool tb, int M, int N, int K, T alpha, const T* A, int lda, const T* B, int ldb, T beta,
          T* C, int ldc) {
  FlopCounter::add(2LL * M * N * K);
  gemm_uncounted<T>(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template void gemm<float>(bool, bool, int, int, int, float, const float*, int, const float*, int, float,
                          float*, int);
template void gemm<double>(bool, bool, int, int, int, double, const double*, int, const double*, int,
                           double, double*, int);

}  // namespace modlm::ops
