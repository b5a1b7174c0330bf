#!/usr/bin/env bash
# (11) Learning-rate decay (EMA paper: "EMA needs less learning-rate decay, because averaging
# already removes the noise"). Cosine schedules that end at 0, 0.1, 0.3 and 1.0 (constant) of
# the peak rate, for the baseline, EMA and Switch EMA on the main job's setting, 10 seeds: where does
# each method peak, and how much of what a full decay buys does the EMA recover without it?
# Wall time measured with --jobs 2 on the 2-core machine: 728 s (with other work running
# beside it, load 6-11: expect less on a quiet machine).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
lab sweep "$OUT/11_lr_decay" "${MNIST1D[@]}" --decay "$PAPER_DECAY" --methods baseline ema sema --lr-final 0 0.1 0.3 1.0 \
  --seeds "${SEEDS[@]}" --jobs "${JOBS:-2}" "$@"
