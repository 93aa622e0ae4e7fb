#!/usr/bin/env bash
# Builds bench/gemm_choice/build/{gemm_choice,membw}. Standalone: not part of
# modlm's CMake build. OpenBLAS (OpenMP), BLIS (OpenMP) and oneDNN are dlopen()ed
# at run time by explicit path (see gemm_choice.cpp), so Debian's libblas.so.3
# alternative never decides; Eigen and libxsmm are compiled in when present.
# Packages: libopenblas-openmp-dev libblis-openmp-dev libdnnl-dev libeigen3-dev libxsmm-dev
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/build"
mkdir -p "$out"
CXX="${CXX:-g++}"
FLAGS=(-O3 -march=native -fopenmp -std=c++17 -DNDEBUG -Wall)
extra=()
if [ -d /usr/include/eigen3 ]; then
  # Eigen 3.4's AVX-512 headers trip GCC 12 warnings that are not ours.
  extra+=(-DGC_HAVE_EIGEN -isystem /usr/include/eigen3 -Wno-maybe-uninitialized -Wno-unused-variable)
else echo "build: no Eigen (libeigen3-dev): skipped"; fi
libs=()
if [ -f /usr/lib/libxsmmext.a ]; then
  # libxsmmnoblas: libxsmm never calls a BLAS behind our back (fall-backs are explicit).
  extra+=(-DGC_HAVE_XSMM)
  libs+=(/usr/lib/libxsmmext.a /usr/lib/libxsmm.a /usr/lib/libxsmmnoblas.a -lgfortran -lrt)
else echo "build: no libxsmm (libxsmm-dev): skipped"; fi
for f in /usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0 \
         /usr/lib/x86_64-linux-gnu/blis-openmp/libblis.so.4 /usr/lib/x86_64-linux-gnu/libdnnl.so.2; do
  [ -f "$f" ] || echo "build: $f missing: that library will be skipped at run time"
done
echo "build: gemm_choice"
"$CXX" "${FLAGS[@]}" "${extra[@]}" "$here/gemm_choice.cpp" -o "$out/gemm_choice" "${libs[@]}" -ldl
echo "build: membw"
"$CXX" "${FLAGS[@]}" "$here/membw.cpp" -o "$out/membw"
