#!/usr/bin/env bash
# (6) Post-hoc EMA (Karras et al., EDM2): one training run per seed tracks two power EMAs
# (sigma_rel 0.05 and 0.10), snapshots them 32 times, and after training synthesises the EMA of
# every width on a grid, evaluated on the test set: test accuracy against the EMA length, in one
# run instead of the SEMA paper's Figure 5 decay sweep or the EMA paper's five parallel EMAs.
# The widths 0.03, 0.07 and 0.15 are also tracked directly, to check the synthesis against them
# (weight distance and test accuracy); on the BatchNorm variant every synthesised and checked
# model gets its statistics recomputed. The classical EMA (decay 0.99 per step) runs alongside.
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
lab compare "$OUT/06_posthoc_mnist1d-cnn" "${MNIST1D[@]}" --methods baseline ema posthoc --decay 0.99 \
  --seeds "${SEEDS[@]}" --posthoc-check 0.03 0.07 0.15 \
  "$@"
lab compare "$OUT/06_posthoc_mnist1d-cnnbn" "${MNIST1D[@]}" --task mnist1d-cnnbn --methods baseline ema posthoc --decay 0.99 \
  --seeds "${SEEDS[@]}" --posthoc-check 0.03 0.07 0.15 \
  "$@"
# At the end of a cosine schedule to zero every EMA length ends near the last iterate, so the
# curve above is flat by construction; with a constant learning rate the length matters.
lab compare "$OUT/06_posthoc_constant_lr" "${MNIST1D[@]}" --methods baseline ema posthoc --decay 0.99 \
  --lr-schedule constant --seeds "${SEEDS[@]}" --posthoc-check 0.03 0.07 0.15 \
  "$@"
