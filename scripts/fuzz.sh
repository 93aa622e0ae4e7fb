#!/usr/bin/env bash
# Builds one libFuzzer target (fuzz/fuzz_TARGET.cpp) with clang + ASan + UBSan in ./build-fuzz
# and runs it for SECONDS on a copy of its seed corpus (fuzz/corpus/TARGET, kept in the
# repository). Crashes, leaks and timeouts are written to build-fuzz/findings/TARGET/ and fail
# the run. Targets: safetensors config token_file text tokenizer request tokenizer_json.
#   scripts/fuzz.sh safetensors 600
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:?usage: scripts/fuzz.sh TARGET SECONDS (targets: safetensors config token_file text tokenizer request tokenizer_json)}
SECONDS_TO_RUN=${2:-60}
[ -f "fuzz/fuzz_${TARGET}.cpp" ] || { echo "fuzz.sh: no target fuzz/fuzz_${TARGET}.cpp" >&2; exit 2; }
scripts/setup.sh clang libclang-rt-14-dev
CLANGXX=$(command -v clang++-14 || command -v clang++)
SAN="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$CLANGXX" -DMODLM_NATIVE=ON \
  -DMODLM_BUILD_TESTS=OFF -DMODLM_BUILD_BENCH=OFF -DMODLM_BUILD_FUZZ=ON \
  -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target "fuzz_${TARGET}"
work=build-fuzz/corpus/$TARGET
findings=build-fuzz/findings/$TARGET
mkdir -p "$work" "$findings"
cp -n fuzz/corpus/"$TARGET"/* "$work"/ 2>/dev/null || true
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1
# -rss_limit_mb: an input that makes a parser allocate gigabytes is a finding (resource limits
# come before allocation); -timeout: one input taking > 10 s is a hang.
build-fuzz/fuzz_"$TARGET" "$work" -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 \
  -artifact_prefix="$findings/" -print_final_stats=1 2>&1 | tee "build-fuzz/fuzz_${TARGET}.log" | grep -E "^#[0-9]+ +(INITED|DONE|pulse)|stat::|ERROR|SUMMARY|Test unit written" || true
if ls "$findings"/* >/dev/null 2>&1; then
  echo "fuzz.sh: findings in $findings (reproduce: build-fuzz/fuzz_$TARGET FILE)" >&2
  exit 1
fi
echo "fuzz.sh: $TARGET ran ${SECONDS_TO_RUN}s, no findings (log: build-fuzz/fuzz_${TARGET}.log)"
