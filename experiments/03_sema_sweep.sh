#!/usr/bin/env bash
# (3) Switch EMA against plain EMA with the same decay, over decay (0.9 ... 0.9999 per step)
# and switch interval (every epoch, every 5 epochs, every 50 steps). MNIST-1D CNN, 3 seeds.
# Each run folder's summary.md has the paired "sema vs plain EMA" difference with a 95% CI.
set -euo pipefail
OUT=${OUT:-runs/experiments}
EPOCHS=${EPOCHS:-50}
for decay in 0.9 0.99 0.999 0.9999; do
  for every in 1 5e 50s; do
    switchema compare --task mnist1d-cnn --methods baseline ema sema --decay "$decay" \
      --switch-every "$every" --epochs "$EPOCHS" --seeds 0 1 2 \
      --out "$OUT/03_sweep/decay${decay}_every${every}" --no-progress "$@"
  done
done
