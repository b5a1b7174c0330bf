#!/usr/bin/env bash
# (0) The main job: baseline, EMA, Switch EMA and SWA on the MNIST-1D CNN with every setting
# pinned (experiments/settings.sh: AdamW 0.01, batch 100, 100 epochs, cosine to 0, decay 0.987
# per step, a switch every epoch from epoch 6, 10 seeds), and the same with a constant learning
# rate (the EMA paper: EMA needs less learning-rate decay). A run folder is never overwritten
# (settings.sh, lab: a killed run is continued).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
MAIN=("${MNIST1D[@]}" --methods baseline ema sema swa --decay "$PAPER_DECAY" --seeds "${SEEDS[@]}")
lab compare "$OUT/00_default" "${MAIN[@]}" "$@"
lab compare "$OUT/00_constant_lr" "${MAIN[@]}" --lr-schedule constant "$@"
