#!/usr/bin/env bash
# (9) Where the EMA differs from the last iterate. The main job's AdamW run interpolates its
# training set (training loss ~3e-4 even at a constant rate), so its iterates hardly move at the
# end and every average equals them: churn, calibration and "EMA needs less decay" cannot show
# there (the audit of the lab's statistics). Here the same task with SGD (momentum 0.9) at a large rate, 0.2, for
# 30 epochs, cosine to zero and constant, whose iterates keep bouncing between epochs: does the
# EMA recover what the decay buys, and do churn between seeds and calibration improve? Baseline,
# EMA (0.99), SWA, and the lab's own comparisons BEMA (TRL's defaults, an update every step) and
# LAWA (the last 5 epoch ends), 10 seeds. Tried first and not kept: 100 epochs at a constant 0.2 degraded late
# (two of five seeds at chance by the end: the comparison would measure divergence), and 0.05
# interpolates the training set like AdamW (training loss 6e-4, EMA = last iterate again).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
lab compare "$OUT/09_sgd_cosine" "${MNIST1D[@]}" --methods baseline ema swa bema lawa --decay 0.99 --optimizer sgd \
  --lr 0.2 --momentum 0.9 --nesterov --epochs 30 --lr-schedule cosine --seeds "${SEEDS[@]}" \
  "$@"
lab compare "$OUT/09_sgd_constant" "${MNIST1D[@]}" --methods baseline ema swa bema lawa --decay 0.99 --optimizer sgd \
  --lr 0.2 --momentum 0.9 --nesterov --epochs 30 --lr-schedule constant --seeds "${SEEDS[@]}" \
  "$@"
