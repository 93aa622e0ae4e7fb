#include "ops/gemm.h"

#include <cblas.h>

#include <cctype>
#include <cstdlib>

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
  if (const char* env = std::getenv("OPENBLAS_CORETYPE"); env && *env) s += std::string(" (OPENBLAS_CORETYPE=") + env + " in the environment)";
  return s;
}

bool blas_kernels_are_avx512() {
  std::string core = openblas_get_corename();
  for (char& c : core) c = (char)std::tolower((unsigned char)c);
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
