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

#ifdef MODLM_WITH_MPI
static_assert(sizeof(MPI_Request) <= sizeof(void*), "MPI_Request stored in a void*");

namespace {
// The requests kept opaque (void*) in the header, as MPI_Request values and back.
std::vector<MPI_Request> as_mpi(const std::vector<void*>& slots) {
  std::vector<MPI_Request> r(slots.size());
  for (size_t i = 0; i < r.size(); ++i) std::memcpy(&r[i], &slots[i], sizeof(MPI_Request));
  return r;
}
void* as_slot(MPI_Request r) {
  void* slot = nullptr;
  std::memcpy(&slot, &r, sizeof r);
  return slot;
}
}  // namespace
#endif

GradientReducer::~GradientReducer() {
  if (!reqs_.empty()) {
    try {
      wait();
    } catch (...) {
    }
  }
}

// Buckets: MPI counts are ints, and several moderate messages pipeline better than one huge one.
constexpr size_t kBucketFloats = (size_t)1 << 22;

void GradientReducer::post(float* data, size_t n) {
  if (!enabled() || n == 0) return;
#ifdef MODLM_WITH_MPI
  for (size_t off = 0; off < n; off += kBucketFloats) {
    MPI_Request r;
    check(MPI_Iallreduce(MPI_IN_PLACE, data + off, (int)std::min(n - off, kBucketFloats), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r),
          "MPI_Iallreduce");
    reqs_.push_back(as_slot(r));
  }
#endif
}


void GradientReducer::progress() {
#ifdef MODLM_WITH_MPI
  if (reqs_.empty()) return;
  std::vector<MPI_Request> r = as_mpi(reqs_);
  int done = 0;
  check(MPI_Testall((int)r.size(), r.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
  // Completed requests became MPI_REQUEST_NULL: keep the rest.
  reqs_.clear();
  for (MPI_Request x : r)
    if (x != MPI_REQUEST_NULL) reqs_.push_back(as_slot(x));
#endif
}

void GradientReducer::wait() {
#ifdef MODLM_WITH_MPI
  if (reqs_.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<MPI_Request> r = as_mpi(reqs_);
  reqs_.clear();
  check(MPI_Waitall((int)r.size(), r.data(), MPI_STATUSES_IGNORE), "MPI_Waitall (gradient all-reduce)");
  g_allreduce_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
#endif
}

void allreduce_sum(float* data, size_t n) {
  GradientReducer r;
  r.post(data, n);
  r.wait();
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
