#!/usr/bin/env bash
# Data-parallel cost on this machine and a projection to clusters (docs/distributed.md):
# S shape (D=512 L=8 H=8 F=1408 V=8192), global batch 8 x 512, dense and its MoD twin (every
# other layer, capacity 0.125), `mpirun -np 2` with one thread per rank; prints the median step
# time, the median gradient all-reduce time, the gradient size, and the projected scaling
# efficiency at 8 and 64 nodes for a ring all-reduce at BW GB/s (default 25) and 5 us latency.
#   bench/distributed.sh [STEPS] [BW_GBPS]      (MODLM_DP_OVERLAP=0: all-reduce after the backward pass)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
BW=${2:-25}
BIN=build/modlm
DATA=$(mktemp -d)/train.txt
(gzip -dc data/train.txt.gz || true) | head -c 3000000 > "$DATA"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
SHAPE="--d-model 512 --n-layers 8 --n-heads 8 --d-ff 1408 --vocab 8192 --seq-len 512 --batch-size 8 --steps $STEPS --log-every 1 --ckpt-every 0 --no-progress --lr 3e-4"
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for fam in dense mod; do
  extra=""; [ "$fam" = mod ] && extra="--routing every_other --capacity 0.125"
  out=$(dirname "$DATA")/$fam
  mpirun --oversubscribe -np 2 --mca btl self,vader -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive -x MODLM_DP_OVERLAP="${MODLM_DP_OVERLAP:-1}" \
    $BIN train --out "$out" --data "$DATA" $SHAPE $extra > /dev/null
  # Skip the first step (tokenizer cache, first-touch of buffers).
  step=$(tail -n +2 "$out/log.jsonl" | sed 's/.*"step_seconds":\([0-9.e-]*\).*/\1/' | median)
  ar=$(tail -n +2 "$out/log.jsonl" | sed 's/.*"allreduce_seconds":\([0-9.e-]*\).*/\1/' | median)
  params=$(python3 -c "import json,struct;f=open('$out/ckpt-$(printf %08d $STEPS)/model.safetensors','rb');n=struct.unpack('<Q',f.read(8))[0];h=json.loads(f.read(n));import math;print(sum(math.prod(v['shape']) for k,v in h.items() if k!='__metadata__'))")
  awk -v fam="$fam" -v step="$step" -v ar="$ar" -v p="$params" -v bw="$BW" 'BEGIN {
    g = 4 * p; compute = step - ar;
    printf "%-5s step %.3f s (compute %.3f s), all-reduce %.4f s = %.2f%% of the step here (2 ranks, shared memory); gradient %.1f MB\n", fam, step, compute, ar, 100 * ar / step, g / 1e6;
    for (i = 0; i < 2; i++) { n = i ? 64 : 8;
      t = 2 * (n - 1) / n * g / (bw * 1e9) + 2 * (n - 1) * 5e-6;
      printf "      %2d nodes, ring all-reduce at %g GB/s: %.4f s per step -> efficiency %.1f%% without overlap, %.1f%% with full overlap\n", n, bw, t, 100 * compute / (compute + t), 100 * (t < compute ? 1 : compute / t);
    } }'
done
