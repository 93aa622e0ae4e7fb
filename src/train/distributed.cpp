#include "train/distributed.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <string>
#include <vector>

#include "util/error.h"

#ifdef MODLM_WITH_MPI
#include <mpi.h>
#endif

namespace modlm::dist {

namespace {
int g_rank = 0, g_size = 1;
bool g_started = false;
double g_allreduce_s = 0;

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

#ifdef MODLM_WITH_MPI
// A failed MPI call: the message names it; the job ends (other ranks would wait forever).
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw io_error(std::string("MPI: ") + what + " failed: " + std::string(msg, (size_t)len));
}
#endif
}  // namespace

bool launched_by_mpirun() {
  return env_int("OMPI_COMM_WORLD_SIZE") > 1 || env_int("PMI_SIZE") > 1 || env_int("PMIX_SIZE") > 1 ||
         env_int("MPI_LOCALNRANKS") > 1;
}

bool built_with_mpi() {
#ifdef MODLM_WITH_MPI
  return true;
#else
  return false;
#endif
}

void init() {
  if (g_started || !launched_by_mpirun()) return;
#ifdef MODLM_WITH_MPI
  int provided = 0;
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  // Errors come back as codes (check() turns them into a message), not a silent abort.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  g_started = true;
  std::atexit(finalize);
#else
  throw usage_error("this modlm was built without MPI, but mpirun started " + std::to_string(env_int("OMPI_COMM_WORLD_SIZE")) +
                    " copies of it: install libopenmpi-dev (scripts/setup.sh does) and rebuild, or run one process");
#endif
}

void finalize() {
#ifdef MODLM_WITH_MPI
  int fin = 0;
  if (g_started && MPI_Finalized(&fin) == MPI_SUCCESS && !fin) MPI_Finalize();
#endif
}

bool enabled() { return g_started && g_size > 1; }
int rank() { return g_rank; }
int size() { return g_size; }
bool is_root() { return g_rank == 0; }
double allreduce_seconds() { return g_allreduce_s; }

void allreduce_sum(float* data, size_t n, size_t bucket) {
  if (!enabled() || n == 0) return;
#ifdef MODLM_WITH_MPI
  const auto t0 = std::chrono::steady_clock::now();
  if (bucket == 0) bucket = n;
  // Buckets: MPI counts are ints, and several moderate messages pipeline better than one huge one.
  std::vector<MPI_Request> reqs;
  for (size_t off = 0; off < n; off += bucket) {
    const int cnt = (int)std::min(bucket, n - off);
    reqs.emplace_back();
    check(MPI_Iallreduce(MPI_IN_PLACE, data + off, cnt, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &reqs.back()), "MPI_Iallreduce");
  }
  check(MPI_Waitall((int)reqs.size(), reqs.data(), MPI_STATUSES_IGNORE), "MPI_Waitall (gradient all-reduce)");
  g_allreduce_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#endif
}

#ifdef MODLM_WITH_MPI
static_assert(sizeof(MPI_Request) <= sizeof(void*), "MPI_Request stored in a void*");
#endif

GradientReducer::~GradientReducer() {
  if (!reqs_.empty()) {
    try {
      wait();
    } catch (...) {
    }
  }
}

void GradientReducer::post(float* data, size_t n) {
  if (!enabled() || n == 0) return;
#ifdef MODLM_WITH_MPI
  for (size_t off = 0; off < n; off += (size_t)1 << 22) {
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, data + off, (int)std::min(n - off, (size_t)1 << 22), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r),
          "MPI_Iallreduce");
    void* slot = nullptr;
    std::memcpy(&slot, &r, sizeof r);
    reqs_.push_back(slot);
  }
#endif
}

void GradientReducer::progress() {
#ifdef MODLM_WITH_MPI
  if (reqs_.empty()) return;
  std::vector<MPI_Request> r(reqs_.size());
  for (size_t i = 0; i < r.size(); ++i) std::memcpy(&r[i], &reqs_[i], sizeof(MPI_Request));
  int done = 0;
  check(MPI_Testall((int)r.size(), r.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
  // Completed requests became MPI_REQUEST_NULL: keep the rest.
  reqs_.clear();
  for (auto& x : r)
    if (x != MPI_REQUEST_NULL) {
      void* slot = nullptr;
      std::memcpy(&slot, &x, sizeof x);
      reqs_.push_back(slot);
    }
#endif
}

void GradientReducer::wait() {
#ifdef MODLM_WITH_MPI
  if (reqs_.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<MPI_Request> r(reqs_.size());
  for (size_t i = 0; i < r.size(); ++i) std::memcpy(&r[i], &reqs_[i], sizeof(MPI_Request));
  reqs_.clear();
  check(MPI_Waitall((int)r.size(), r.data(), MPI_STATUSES_IGNORE), "MPI_Waitall (gradient all-reduce)");
  g_allreduce_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#endif
}

void allreduce_sum(double* data, size_t n) {
  if (!enabled() || n == 0) return;
#ifdef MODLM_WITH_MPI
  check(MPI_Allreduce(MPI_IN_PLACE, data, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
#endif
}

bool any(bool flag) {
  if (!enabled()) return flag;
#ifdef MODLM_WITH_MPI
  int v = flag ? 1 : 0;
  check(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return v != 0;
#else
  return flag;
#endif
}

void barrier() {
  if (!enabled()) return;
#ifdef MODLM_WITH_MPI
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

}  // namespace modlm::dist
