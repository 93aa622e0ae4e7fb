#!/usr/bin/env bash
# The main job: build modlm, show its commands, then `modlm demo`: a dense transformer and its
# Mixture-of-Depths twin trained on the shipped corpus (data/) with the same training FLOPs,
# evaluated, timed, sampled and drawn in runs/demo/report.html. About ten minutes on a 2-core CPU
# (MODLM_MINUTES changes that); Ctrl-C stops cleanly and a rerun continues / reuses what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target modlm   # only the binary: the tests build with scripts/test.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
M=build/modlm
OUT=${MODLM_OUT:-runs/demo}
MINUTES=${MODLM_MINUTES:-10}
$M --help
echo
echo "== modlm demo --minutes $MINUTES --out $OUT: dense vs Mixture-of-Depths at equal training FLOPs =="
$M demo --minutes "$MINUTES" --out "$OUT"
echo
echo "The report: file://$(cd "$OUT" && pwd)/report.html (one self-contained page; the numbers are in summary.json)"
