#!/usr/bin/env bash
# Builds the test suite with AddressSanitizer + UndefinedBehaviorSanitizer in ./build-asan and runs
# it. Any report fails the run (halt_on_error). .ci/run calls it after scripts/test.sh.
# MODLM_SANITIZE_EXCLUDE (a CTest regex) leaves out tests too slow under the sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMODLM_BUILD_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-asan -j "$(nproc)"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
# Leak checking is off: OpenMP's and OpenBLAS's thread pools keep their memory to exit by design.
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=0:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
EXCLUDE=${MODLM_SANITIZE_EXCLUDE:-}
ctest --test-dir build-asan --output-on-failure -j 2 --timeout 900 ${EXCLUDE:+-E "$EXCLUDE"}
