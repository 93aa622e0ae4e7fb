// Data-parallel training over MPI (docs/distributed.md). Without MPI at build time, or when not
// started by mpirun, everything here is a one-process no-op: rank 0 of 1.
//
// The split: every step's global batch (grad_accum micro-batches of batch_size sequences) is
// the same whatever the number of ranks N; rank r takes sequences [r * B/N, (r+1) * B/N) of each
// micro-batch (the window sampler is indexed by global sequence number), gradients are summed
// across ranks (MPI_Allreduce, in buckets) and divided by N, and every rank applies the same AdamW
// step to the same weights. Routing is per sequence, so MoD needs no cross-rank state.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace modlm::dist {

// True when the environment says mpirun (Open MPI, MPICH/PMI) started this process among > 1.
bool launched_by_mpirun();

// Starts MPI when launched by mpirun (idempotent). A binary built without MPI, started by
// mpirun with more than one process, gets usage_error saying so.
void init();
void finalize();  // at exit; harmless when init did nothing

bool enabled();  // MPI running with size() > 1
int rank();
int size();
bool is_root();  // rank 0: the one that writes logs, progress and checkpoints
bool built_with_mpi();

// In-place sums over all ranks (no-ops for one process). Float arrays go in buckets of at most
// 4 Mi elements (GradientReducer).
void allreduce_sum(float* data, size_t n);
void allreduce_sum(double* data, size_t n);
bool any(bool flag);  // logical OR over ranks
void barrier();
// Seconds the gradient all-reduce kept a rank waiting since start (allreduce_sum(float*) and
// GradientReducer::wait): the communication not hidden behind computation.
double allreduce_seconds();

// Sums gradient slices over the ranks while the backward pass goes on: post() starts a
// non-blocking all-reduce of one slice (as soon as its gradients are final), progress() lets MPI
// move the posted ones along (called between layers), wait() completes them all.
class GradientReducer {
 public:
  ~GradientReducer();
  void post(float* data, size_t n);
  void progress();
  void wait();

 private:
  std::vector<void*> reqs_;  // MPI_Request values, opaque here
};

}  // namespace modlm::dist
