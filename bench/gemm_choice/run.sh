#!/usr/bin/env bash
# Repeats the whole measurement ITERS times (each: memory-bandwidth probe at 1
# and 2 threads, every library x {2,1} threads sampled round-robin in one
# process, and the OpenBLAS/OpenMP interaction check), recording the load
# average, then prints the summary (medians over iterations).
#   usage: bench/gemm_choice/run.sh [ITERS=8] [REPS=7]
# Writes $GC_RESULTS (default bench/gemm_choice/results/latest)/
#   {raw.csv,membw.csv,omp_check.txt,run_info.txt,summary.md}
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
iters="${1:-8}"
reps="${2:-7}"
bin="$here/build"
res="${GC_RESULTS:-$here/results/latest}"
mkdir -p "$res"
[ -x "$bin/gemm_choice" ] && [ -x "$bin/membw" ] || "$here/build.sh"
unset OPENBLAS_NUM_THREADS BLIS_NUM_THREADS GOTO_NUM_THREADS OMP_PROC_BIND OMP_WAIT_POLICY
export OMP_NUM_THREADS=2
raw="$res/raw.csv"; mem="$res/membw.csv"; omp="$res/omp_check.txt"; info="$res/run_info.txt"
echo "iter,load1,lib,threads,op,n,in,out,ms_median,ms_min,gflops,weight_gbs,samples,note" > "$raw"
echo "iter,load1,threads,gbs_median,gbs_min,gbs_max" > "$mem"
: > "$omp"
{ echo "date: $(date -u +%FT%TZ)  kernel: $(uname -r)  cpus: $(nproc) x$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
  echo "command: bench/gemm_choice/run.sh $iters $reps"; } > "$info"
for i in $(seq 1 "$iters"); do
  for t in 1 2; do
    OMP_NUM_THREADS=$t "$bin/membw" | sed "s/^membw,/$i,$(cut -d' ' -f1 /proc/loadavg),/" >> "$mem"
  done
  load=$(cut -d' ' -f1 /proc/loadavg)
  echo "iter $i/$iters start $(date -u +%T) load $load" | tee -a "$info" >&2
  "$bin/gemm_choice" --reps "$reps" --threads 2,1 2>>"$info" | tail -n +2 | sed "s/^/$i,$load,/" >> "$raw"
  echo "## iter $i (load $(cut -d' ' -f1 /proc/loadavg))" >> "$omp"
  "$bin/gemm_choice" --omp-check --reps 5 2>/dev/null >> "$omp"
done
echo "end: $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)" >> "$info"
python3 "$here/summarize.py" "$res" | tee "$res/summary.md"
