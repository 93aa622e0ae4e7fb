// src/train/distributed.cpp compiled WITHOUT MPI (as a build without libopenmpi-dev gets it),
// checked on its own: one process is rank 0 of 1, and being started by mpirun with more than
// one process is a clear usage error (exit 2 in modlm), not a silent single-process run.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "train/distributed.h"
#include "util/error.h"

int main() {
  using namespace modlm;
  int failures = 0;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) std::fprintf(stderr, "FAILED: %s\n", what), ++failures;
  };
  expect(!dist::built_with_mpi(), "built without MPI");
  unsetenv("OMPI_COMM_WORLD_SIZE");
  dist::init();
  expect(!dist::enabled() && dist::size() == 1 && dist::is_root(), "one process: rank 0 of 1");
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  try {
    dist::init();
    expect(false, "init under mpirun -np 2 must refuse");
  } catch (const Error& e) {
    expect(e.exit_code() == kExitUsage, "exit code 2");
    expect(std::string(e.what()).find("built without MPI") != std::string::npos, "the message says why");
    std::printf("refused as expected: %s\n", e.what());
  }
  return failures ? 1 : 0;
}
