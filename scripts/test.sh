#!/usr/bin/env bash
# Builds modlm and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Tests run two at a time on two cores: threads that sleep instead of spinning keep them from
# starving each other.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ctest --test-dir build --output-on-failure -j 2 --timeout 600
