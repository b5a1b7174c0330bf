#!/usr/bin/env bash
# (17) The headline comparison on the expensive route to the SEMA paper's regime: instead of a
# decay matched to 32 steps per epoch (0.987, the cheap route every other SEMA row takes), the
# paper's own decay 0.999 per step at its own epoch length. MNIST-1D generated with 61,100
# examples: 39,104 for training (after the test split and the validation split) = 392 steps of
# 100 per epoch, as CIFAR's 391 at batch 128; the window is 1000 steps = 2.6 epochs and a switch
# every epoch keeps f = 0.17 of the epoch's progress (the paper: 2.0-2.6 epochs, f = 0.17-0.21).
# 30 epochs (11,760 steps, 3.7x the main job's), switching from epoch 6; baseline, EMA, Switch
# EMA; 10 seeds. Everything else is the main job's setting (settings.sh).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
lab compare "$OUT/17_long_epochs" "${MNIST1D[@]}" --methods baseline ema sema --decay 0.999 \
  --epochs 30 --data-opt n_total=61100 --seeds "${SEEDS[@]}" "$@"
