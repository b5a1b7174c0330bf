#!/usr/bin/env bash
# (2) The EMA paper's label-noise study on MNIST-1D with 40% of training labels flipped.
# Does the averaged model beat the online one by a wide margin, peak early, memorise fewer labels?
# Two decays per step: 0.99 (window ~100 steps = 2.5 epochs) and 0.998 (~500 steps = 12.5 epochs).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
lab compare "$OUT/02_label_noise" "${MNIST1D[@]}" --label-noise 0.4 --methods baseline ema swa \
  --decay 0.99 0.998 --seeds "${SEEDS[@]}" "$@"
lab compare "$OUT/02_label_noise_sema" "${MNIST1D[@]}" --label-noise 0.4 --methods baseline ema sema \
  --decay 0.99 --seeds "${SEEDS[@]}" "$@"
