// Standalone matrix-product benchmark used to choose modlm's GEMM library.
// Not part of the CMake build (bench/gemm_choice/build.sh). Decision and
// figures: docs/performance.md, "Matrix-product library".
//
// Layout is modlm's: float32, row-major, weights W[out,in], so
//   forward   Y[n,out]  = X[n,in] W^T
//   backward  dX[n,in]  = dY[n,out] W
//             dW[out,in] += dY^T X
//
// All libraries live in ONE process and are sampled round-robin (lib A, B, C,
// ..., both thread counts, then again), so the background load of a shared
// 2-core machine hits every candidate alike. The shared BLAS libraries are
// dlopen()ed by explicit path with RTLD_LOCAL|RTLD_DEEPBIND (OpenBLAS and BLIS
// both export cblas_* / sgemm_; neither may see the other's, and Debian's
// libblas.so.3 alternative never takes part). Eigen is header-only; libxsmm is
// linked statically with its no-BLAS stub, GEMMs it cannot tile itself are
// routed to OpenBLAS explicitly and flagged "fallback".
//
// Output: CSV on stdout, one line per (case, library, threads).
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#ifdef GC_HAVE_EIGEN
#include <Eigen/Core>
#endif
#ifdef GC_HAVE_XSMM
#include <libxsmm.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;
double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// Row-major C[M,N] = alpha op(A) op(B) + beta C; op(A) is [M,K], op(B) is [K,N].
using GemmFn = std::function<void(bool ta, bool tb, int M, int N, int K, float alpha, const float* A,
                                  int lda, const float* B, int ldb, float beta, float* C, int ldc)>;
// y[out] = W[out,in] x (decode, n = 1). Empty: use the n = 1 GEMM.
using GemvFn = std::function<void(int out, int in, const float* W, const float* x, float* y)>;

struct Backend {
  std::string name, info;
  GemmFn gemm;
  GemvFn gemv;
  std::function<void(int)> set_threads;          // besides omp_set_num_threads
  std::function<bool(bool, bool, int, int, int, float, float)> falls_back;  // libxsmm only
  bool is_blas = false;
};

// ---- cblas through dlopen -------------------------------------------------
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using cblas_sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                               int, float, float*, int);
using cblas_sgemv_t = void (*)(int, int, int, int, float, const float*, int, const float*, int,
                               float, float*, int);

void* open_lib(const char* path, int flags) {
  void* h = dlopen(path, flags);
  if (!h) std::fprintf(stderr, "# skip %s: %s\n", path, dlerror());
  return h;
}

template <class T>
T sym(void* h, const char* name) {
  void* p = dlsym(h, name);
  if (!p) {
    std::fprintf(stderr, "missing symbol %s\n", name);
    std::exit(1);
  }
  return reinterpret_cast<T>(p);
}

const char* kOpenBlasPath = "/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0";
const char* kBlisPath = "/usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4";
const char* kDnnlPath = "/usr/lib/x86_64-linux-gnu/libdnnl.so.2";
const int kBlasFlags = RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND;

void* g_openblas = nullptr;

bool add_cblas(std::vector<Backend>& out, const char* name, const char* path) {
  void* h = open_lib(path, kBlasFlags);
  if (!h) return false;
  auto g = sym<cblas_sgemm_t>(h, "cblas_sgemm");
  auto v = sym<cblas_sgemv_t>(h, "cblas_sgemv");
  Backend b;
  b.name = name;
  b.is_blas = true;
  b.gemm = [g](bool ta, bool tb, int M, int N, int K, float al, const float* A, int lda,
               const float* B, int ldb, float be, float* C, int ldc) {
    g(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, M, N, K, al, A, lda, B, ldb, be, C,
      ldc);
  };
  b.gemv = [v](int out, int in, const float* W, const float* x, float* y) {
    v(kRowMajor, kNoTrans, out, in, 1.f, W, in, x, 1, 0.f, y, 1);
  };
  b.info = path;
  if (std::string(name) == "openblas") {
    g_openblas = h;
    b.info += std::string(" [") + sym<char* (*)()>(h, "openblas_get_config")() + ", core " +
              sym<char* (*)()>(h, "openblas_get_corename")() + "]";
  } else {  // BLIS: its thread count is set through its own API, not omp_set_num_threads
    auto arch_id = sym<int (*)()>(h, "bli_arch_query_id");
    auto arch_str = sym<char* (*)(int)>(h, "bli_arch_string");
    auto setnt = sym<void (*)(int64_t)>(h, "bli_thread_set_num_threads");
    b.info += std::string(" [kernel config ") + arch_str(arch_id()) + "]";
    b.set_threads = [setnt](int t) { setnt(t); };
  }
  out.push_back(b);
  return true;
}

bool add_dnnl(std::vector<Backend>& out) {
  void* h = open_lib(kDnnlPath, RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
  using sg_t = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                       const float*, int64_t, float, float*, int64_t);
  auto g = sym<sg_t>(h, "dnnl_sgemm");
  Backend b;
  b.name = "onednn";
  b.info = kDnnlPath;
  b.gemm = [g](bool ta, bool tb, int M, int N, int K, float al, const float* A, int lda,
               const float* B, int ldb, float be, float* C, int ldc) {
    if (g(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, al, A, lda, B, ldb, be, C, ldc) != 0) {
      std::fprintf(stderr, "dnnl_sgemm failed\n");
      std::exit(1);
    }
  };
  out.push_back(b);
  return true;
}

#ifdef GC_HAVE_EIGEN
void add_eigen(std::vector<Backend>& out) {
  using RM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Str = Eigen::OuterStride<>;
  Backend b;
  b.name = "eigen";
  b.info = std::string("Eigen ") + std::to_string(EIGEN_WORLD_VERSION) + "." +
           std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) + " [" +
           Eigen::SimdInstructionSetsInUse() + "]";
  b.gemm = [](bool ta, bool tb, int M, int N, int K, float al, const float* A, int lda,
              const float* B, int ldb, float be, float* C, int ldc) {
    Eigen::Map<RM, 0, Str> c(C, M, N, Str(ldc));
    Eigen::Map<const RM, 0, Str> a(A, ta ? K : M, ta ? M : K, Str(lda));
    Eigen::Map<const RM, 0, Str> bm(B, tb ? N : K, tb ? K : N, Str(ldb));
    if (be == 0.f) c.setZero();
    else if (be != 1.f) c *= be;
    if (!ta && !tb) c.noalias() += al * a * bm;
    else if (!ta && tb) c.noalias() += al * a * bm.transpose();
    else if (ta && !tb) c.noalias() += al * a.transpose() * bm;
    else c.noalias() += al * a.transpose() * bm.transpose();
  };
  b.gemv = [](int out, int in, const float* W, const float* x, float* y) {
    Eigen::Map<const RM> w(W, out, in);
    Eigen::Map<Eigen::VectorXf>(y, out).noalias() = w * Eigen::Map<const Eigen::VectorXf>(x, in);
  };
  out.push_back(b);
}
#endif

#ifdef GC_HAVE_XSMM
void add_xsmm(std::vector<Backend>& out, const Backend* openblas) {
  libxsmm_init();
  // Column-major library: row-major C = op(A) op(B) <=> col-major C^T = op(B)^T op(A)^T.
  auto handle_ok = [](char tra, char trb, libxsmm_blasint m, libxsmm_blasint n, libxsmm_blasint k,
                      libxsmm_blasint la, libxsmm_blasint lb, libxsmm_blasint lc, float al,
                      float be) {
    libxsmm_gemm_blob blob;  // the test libxsmm_xgemm_omp makes before falling back to BLAS
    return libxsmm_gemm_handle_init(&blob, LIBXSMM_GEMM_PRECISION_F32, LIBXSMM_GEMM_PRECISION_F32,
                                    &tra, &trb, &m, &n, &k, &la, &lb, &lc, &al, &be,
                                    LIBXSMM_GEMM_HANDLE_FLAG_AUTO,
                                    omp_in_parallel() ? 1 : omp_get_max_threads()) != nullptr;
  };
  Backend b;
  b.name = "libxsmm";
  b.info = std::string("libxsmm ") + LIBXSMM_VERSION + " (static, no BLAS; fall-backs -> openblas)";
  GemmFn ob = openblas ? openblas->gemm : GemmFn();
  b.gemm = [handle_ok, ob](bool ta, bool tb, int M, int N, int K, float al, const float* A, int lda,
                           const float* B, int ldb, float be, float* C, int ldc) {
    const char tra = tb ? 'T' : 'N', trb = ta ? 'T' : 'N';
    const libxsmm_blasint m = N, n = M, k = K, la = ldb, lb = lda, lc = ldc;
    if (!handle_ok(tra, trb, m, n, k, la, lb, lc, al, be)) {
      if (!ob) {
        std::fprintf(stderr, "libxsmm cannot do this GEMM and OpenBLAS is not loaded\n");
        std::exit(1);
      }
      ob(ta, tb, M, N, K, al, A, lda, B, ldb, be, C, ldc);
      return;
    }
    libxsmm_sgemm_omp(&tra, &trb, &m, &n, &k, &al, B, &la, A, &lb, &be, C, &lc);
  };
  b.falls_back = [handle_ok](bool ta, bool tb, int M, int N, int K, float al, float be) {
    // lda/ldb/ldc as used by this benchmark (dense)
    const libxsmm_blasint lda = ta ? M : K, ldb = tb ? K : N;
    return !handle_ok(tb ? 'T' : 'N', ta ? 'T' : 'N', N, M, K, ldb, lda, N, al, be);
  };
  out.push_back(b);
}
#endif

// ---- checks ---------------------------------------------------------------
void fill(std::vector<float>& v, unsigned seed) {
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s = s * 1664525u + 1013904223u;
    x = float((s >> 9) & 0xffff) / 65536.0f - 0.5f;
  }
}

void gemv_of(const Backend& b, int out, int in, const float* W, const float* x, float* y) {
  if (b.gemv) b.gemv(out, in, W, x, y);
  else b.gemm(false, true, 1, out, in, 1.f, x, in, W, in, 0.f, y, out);
}

// All products against a naive reference on odd and on real sizes.
bool self_check(const Backend& b) {
  double worst = 0;
  for (auto [n, in, out] : {std::tuple{37, 53, 29}, std::tuple{64, 512, 256}}) {
    std::vector<float> X(n * in), W(out * in), dY(n * out), Y(n * out), dX(n * in), dW(out * in),
        dW0(out * in);
    fill(X, 1), fill(W, 2), fill(dY, 3), fill(dW0, 4);
    dW = dW0;
    b.gemm(false, true, n, out, in, 1.f, X.data(), in, W.data(), in, 0.f, Y.data(), out);
    b.gemm(false, false, n, in, out, 1.f, dY.data(), out, W.data(), in, 0.f, dX.data(), in);
    b.gemm(true, false, out, in, n, 1.f, dY.data(), out, X.data(), in, 1.f, dW.data(), in);
    std::vector<float> y(out);
    gemv_of(b, out, in, W.data(), X.data(), y.data());
    double err = 0;
    for (int i = 0; i < n; ++i)
      for (int o = 0; o < out; ++o) {
        double r = 0;
        for (int k = 0; k < in; ++k) r += double(X[i * in + k]) * W[o * in + k];
        err = std::max(err, std::fabs(r - Y[i * out + o]));
        if (i == 0) err = std::max(err, std::fabs(r - y[o]));
      }
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < in; ++k) {
        double r = 0;
        for (int o = 0; o < out; ++o) r += double(dY[i * out + o]) * W[o * in + k];
        err = std::max(err, std::fabs(r - dX[i * in + k]));
      }
    for (int o = 0; o < out; ++o)
      for (int k = 0; k < in; ++k) {
        double r = dW0[o * in + k];
        for (int i = 0; i < n; ++i) r += double(dY[i * out + o]) * X[i * in + k];
        err = std::max(err, std::fabs(r - dW[o * in + k]));
      }
    worst = std::max(worst, err);
  }
  if (worst > 1e-3) std::fprintf(stderr, "%s: self-check FAILED, max abs error %g\n", b.name.c_str(), worst);
  return worst <= 1e-3;
}

// ---- interleaved timing ---------------------------------------------------
int g_reps = 9;
std::vector<int> g_threads = {2, 1};
std::vector<Backend> g_libs;

void set_threads(const Backend& b, int t) {
  omp_set_num_threads(t);
  if (b.set_threads) b.set_threads(t);
}

struct Combo {
  const Backend* b;
  int threads;
  int batch = 1;
  std::vector<double> s;  // seconds per call
};

// f(backend, call index). Every (library, threads) pair gets g_reps samples,
// taken round-robin with a rotating start; small calls are batched to >= 2 ms
// and preceded by one untimed call (library switch).
template <class F>
std::vector<Combo> measure(F&& f, const std::vector<const Backend*>& libs) {
  std::vector<Combo> cs;
  for (int t : g_threads)
    for (auto* b : libs) cs.push_back({b, t});
  long idx = 0;
  for (auto& c : cs) {  // warm-up; sizes the batch
    set_threads(*c.b, c.threads);
    f(*c.b, idx++);
    double t0 = now_s();
    f(*c.b, idx++);
    double dt = now_s() - t0;
    c.batch = std::max(1, int(2e-3 / std::max(dt, 1e-7)));
  }
  for (int r = 0; r < g_reps; ++r)
    for (size_t j = 0; j < cs.size(); ++j) {
      auto& c = cs[(j + r) % cs.size()];
      set_threads(*c.b, c.threads);
      if (c.batch > 1 || c.s.empty() || c.s.back() < 5e-3) f(*c.b, idx++);
      double t0 = now_s();
      for (int k = 0; k < c.batch; ++k) f(*c.b, idx++);
      c.s.push_back((now_s() - t0) / c.batch);
    }
  return cs;
}

void emit(const std::vector<Combo>& cs, const char* op, int n, int in, int out, double wbytes,
          bool ta = false, bool tb = false, int M = 0, int N = 0, int K = 0, float beta = 0.f) {
  for (auto& c : cs) {
    auto s = c.s;
    std::sort(s.begin(), s.end());
    const double med = s[s.size() / 2];
    const char* note = (c.b->falls_back && M && c.b->falls_back(ta, tb, M, N, K, 1.f, beta)) ? "fallback:openblas" : "";
    std::printf("%s,%d,%s,%d,%d,%d,%.5f,%.5f,%.1f,%.1f,%zu,%s\n", c.b->name.c_str(), c.threads, op,
                n, in, out, med * 1e3, s.front() * 1e3, 2.0 * n * in * out / med * 1e-9,
                wbytes > 0 ? wbytes / med * 1e-9 : 0.0, s.size(), note);
  }
  std::fflush(stdout);
}

struct Shape {
  int in, out;
};
const Shape kShapes[] = {{512, 512}, {512, 1408}, {1408, 512}, {512, 8192}, {512, 256}};

std::vector<const Backend*> all_libs() {
  std::vector<const Backend*> v;
  for (auto& b : g_libs) v.push_back(&b);
  return v;
}

void bench_training(int n) {
  for (Shape s : kShapes) {
    std::vector<float> X(size_t(n) * s.in), W(size_t(s.out) * s.in), Y(size_t(n) * s.out),
        dY(size_t(n) * s.out), dX(size_t(n) * s.in), dW(size_t(s.out) * s.in, 0.f);
    fill(X, 1), fill(W, 2), fill(dY, 3);
    auto libs = all_libs();
    emit(measure([&](const Backend& b, long) {
           b.gemm(false, true, n, s.out, s.in, 1.f, X.data(), s.in, W.data(), s.in, 0.f, Y.data(), s.out);
         }, libs), "fwd", n, s.in, s.out, 0, false, true, n, s.out, s.in);
    emit(measure([&](const Backend& b, long) {
           b.gemm(false, false, n, s.in, s.out, 1.f, dY.data(), s.out, W.data(), s.in, 0.f, dX.data(), s.in);
         }, libs), "bwd_dx", n, s.in, s.out, 0, false, false, n, s.in, s.out);
    // alpha = 1, beta = 1: plain accumulation, as the trainer does (libxsmm 1.17
    // only JITs alpha = 1). dW grows like a random walk; it stays far from overflow.
    emit(measure([&](const Backend& b, long) {
           b.gemm(true, false, s.out, s.in, n, 1.f, dY.data(), s.out, X.data(), s.in, 1.f, dW.data(), s.in);
         }, libs), "bwd_dw", n, s.in, s.out, 0, true, false, s.out, s.in, n, 1.f);
  }
}

// Decode: n = 1 (matrix-vector) and n = 8. "hot": the same W every call (it
// stays in L2/L3); "cold": cycle through copies of W spanning 512 MiB, so each
// call streams W from DRAM as a decode step over a whole model does.
void bench_decode() {
  const size_t pool_floats = size_t(512) << 20 >> 2;
  std::vector<float> pool(pool_floats);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < pool_floats; ++i) pool[i] = float(i % 1013) * 1e-3f - 0.5f;
  auto libs = all_libs();
  std::vector<const Backend*> blas;
  for (auto* b : libs)
    if (b->is_blas) blas.push_back(b);
  for (int n : {1, 8})
    for (Shape s : kShapes) {
      const size_t wsz = size_t(s.out) * s.in;
      const long copies = long(pool_floats / wsz);
      std::vector<float> X(size_t(n) * s.in), Y(size_t(n) * s.out);
      fill(X, 5);
      const double wb = double(wsz) * 4;
      auto call = [&](const Backend& b, const float* W) {
        if (n == 1) gemv_of(b, s.out, s.in, W, X.data(), Y.data());
        else b.gemm(false, true, n, s.out, s.in, 1.f, X.data(), s.in, W, s.in, 0.f, Y.data(), s.out);
      };
      auto cold = [&](long i) { return pool.data() + size_t(i % copies) * wsz; };
      const char* hot_op = n == 1 ? "dec1_hot" : "dec8_hot";
      const char* cold_op = n == 1 ? "dec1_cold" : "dec8_cold";
      emit(measure([&](const Backend& b, long) { call(b, pool.data()); }, libs), hot_op, n, s.in, s.out, wb,
           false, true, n, s.out, s.in);
      emit(measure([&](const Backend& b, long i) { call(b, cold(i)); }, libs), cold_op, n, s.in, s.out, wb,
           false, true, n, s.out, s.in);
      if (n == 1 && !blas.empty())  // the same product through sgemm with M = 1
        emit(measure([&](const Backend& b, long i) {
               b.gemm(false, true, 1, s.out, s.in, 1.f, X.data(), s.in, cold(i), s.in, 0.f, Y.data(), s.out);
             }, blas), "dec1_cold_via_gemm", n, s.in, s.out, wb);
    }
}

// How OpenBLAS (OpenMP build) behaves around OpenMP regions and thread setters.
void omp_check(const Backend& ob) {
  auto set_nt = sym<void (*)(int)>(g_openblas, "openblas_set_num_threads");
  auto get_nt = sym<int (*)()>(g_openblas, "openblas_get_num_threads");
  const int n = 4096;
  const Shape s{512, 1408};
  std::vector<float> X(size_t(n) * s.in), W(size_t(s.out) * s.in), Y(size_t(n) * s.out);
  fill(X, 1), fill(W, 2);
  auto full = [&] {
    ob.gemm(false, true, n, s.out, s.in, 1.f, X.data(), s.in, W.data(), s.in, 0.f, Y.data(), s.out);
  };
  std::vector<const Backend*> one = {&ob};
  const auto saved = g_threads;
  g_threads = {omp_get_max_threads()};
  auto line = [&](const char* what, auto&& f) {
    // measure() calls omp_set_num_threads itself; time without it here.
    std::vector<double> v;
    f();
    for (int r = 0; r < g_reps; ++r) {
      double t0 = now_s();
      f();
      v.push_back(now_s() - t0);
    }
    std::sort(v.begin(), v.end());
    std::printf("omp-check: %-56s %6.1f GFLOP/s (omp_get_max_threads=%d openblas_get_num_threads=%d)\n",
                what, 2.0 * n * s.in * s.out / v[v.size() / 2] * 1e-9, omp_get_max_threads(), get_nt());
  };
  const int nt = omp_get_max_threads();
  line("plain call", full);
  line("inside omp parallel, one thread calls (omp single)", [&] {
#pragma omp parallel
#pragma omp single
    full();
  });
  line("inside omp parallel, each thread its own row block", [&] {
#pragma omp parallel
    {
      int k = omp_get_num_threads(), t = omp_get_thread_num();
      int r0 = n * t / k, r1 = n * (t + 1) / k;
      ob.gemm(false, true, r1 - r0, s.out, s.in, 1.f, X.data() + size_t(r0) * s.in, s.in, W.data(),
              s.in, 0.f, Y.data() + size_t(r0) * s.out, s.out);
    }
  });
  set_nt(1);
  std::printf("omp-check: openblas_set_num_threads(1) changed the caller's omp_get_max_threads %d -> %d\n",
              nt, omp_get_max_threads());
  line("after openblas_set_num_threads(1)", full);
  omp_set_num_threads(nt);
  line("then omp_set_num_threads(back)", full);
  g_threads = saved;
}

}  // namespace

int main(int argc, char** argv) {
  bool decode = true, training = true, ompcheck = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-decode") decode = false;
    else if (a == "--decode-only") training = false;
    else if (a == "--omp-check") ompcheck = true;
    else if (a == "--reps" && i + 1 < argc) g_reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--threads" && i + 1 < argc) {
      g_threads.clear();
      for (const char* p = argv[++i]; *p;) {
        g_threads.push_back(int(std::strtol(p, const_cast<char**>(&p), 10)));
        if (*p == ',') ++p;
      }
    } else {
      std::fprintf(stderr,
                   "usage: %s [--no-decode|--decode-only|--omp-check] [--reps N] [--threads 2,1]\n"
                   "  CSV: lib,threads,op,n,in,out,ms_median,ms_min,gflops,weight_gbs,samples,note\n",
                   argv[0]);
      return 2;
    }
  }
  g_libs.reserve(8);
  add_cblas(g_libs, "openblas", kOpenBlasPath);
  const Backend* ob = g_libs.empty() ? nullptr : &g_libs[0];
  if (ompcheck) {
    if (!ob) return 1;
    omp_check(*ob);
    return 0;
  }
  add_cblas(g_libs, "blis", kBlisPath);
  add_dnnl(g_libs);
#ifdef GC_HAVE_EIGEN
  add_eigen(g_libs);
#endif
#ifdef GC_HAVE_XSMM
  add_xsmm(g_libs, ob);
#endif
  for (auto& b : g_libs) {
    std::fprintf(stderr, "# %-8s %s\n", b.name.c_str(), b.info.c_str());
    if (!self_check(b)) return 1;
  }
  std::fprintf(stderr, "# threads %s, %d samples per (case, library, threads), round-robin\n",
               [] { std::string s; for (int t : g_threads) s += std::to_string(t) + " "; return s; }().c_str(),
               g_reps);
  std::printf("lib,threads,op,n,in,out,ms_median,ms_min,gflops,weight_gbs,samples,note\n");
  if (training)
    for (int n : {4096, 512}) bench_training(n);
  if (decode) bench_decode();
#ifdef GC_HAVE_XSMM
  libxsmm_finalize();
#endif
  return 0;
}
