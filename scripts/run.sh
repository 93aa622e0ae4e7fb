#!/usr/bin/env bash
# The main job: build modlm, show its commands, then initialise a model and evaluate it on real
# text from ../shared/data, and train a small one for a minute to show it learning.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
M=build/modlm
DATA=${MODLM_DATA:-../shared/data}
OUT=${MODLM_OUT:-runs/main}
mkdir -p "$OUT"
$M --help
echo
echo "== a freshly initialised model (D512 L8 H8 F1408, bytes) on gutenberg-valid =="
$M init "$OUT/fresh" --d-model 512 --n-layers 8 --n-heads 8 --d-ff 1408 --vocab bytes --seed 1 --force
$M eval "$OUT/fresh" --data "$DATA/gutenberg-valid.txt.gz" --seq-len 512 --max-windows 8
echo
echo "== a small MoD model trained briefly on tinyshakespeare (bytes) =="
rm -rf "$OUT/train"
$M train --out "$OUT/train" --data "$DATA/tinyshakespeare.txt.gz" --val "$DATA/gutenberg-valid.txt.gz" \
  --d-model 128 --n-layers 4 --n-heads 4 --d-ff 352 --vocab bytes --routing every_other --capacity 0.125 \
  --steps 150 --batch-size 8 --seq-len 128 --lr 3e-3 --warmup-steps 15 --eval-every 50 --eval-windows 16
$M eval "$OUT/train/$(cat "$OUT/train/latest")" --data "$DATA/gutenberg-valid.txt.gz" --seq-len 128 --max-windows 16 --mode both
