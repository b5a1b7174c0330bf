#!/usr/bin/env bash
# (8) A tuned learning rate for every method, so no method loses because of one untuned rate:
# the main job's setting (AdamW) at peak rates 0.002, 0.005, 0.01 (the task's default) and
# 0.02, 10 seeds (settings.sh pins the rest). (A first run at 0.05-0.4, rates for SGD, diverged at 0.2 and 0.4 with AdamW.)
# The claims that read it (measure "tuned" in claims.toml) take each method in the cell where
# its mean validation accuracy is best, and compare test accuracies there, paired by seed.
# Wall time measured on the 2-core machine: see experiments/RESULTS.md (provenance).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
lab sweep "$OUT/08_lr_tuning" "${MNIST1D[@]}" --decay "$PAPER_DECAY" --methods baseline ema sema swa --lr 0.002 0.005 0.01 0.02 \
  --seeds "${SEEDS[@]}" --jobs "${JOBS:-2}" "$@"
