#!/usr/bin/env bash
# (1) The Switch EMA paper's toy: two concentric circles, 50 labelled points, a 2-layer MLP.
# Does SEMA give a better decision boundary than the baseline and plain EMA?
# An epoch here is only 5 steps (batch 10), so the decay sets how far the EMA moves between
# switches: 0.9 moves it 1 - 0.9**5 = 41% of the way per epoch, close to the SEMA paper's
# CIFAR regime (0.999 over 500 steps: 39%); 0.99 moves it only 5%.
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
for decay in 0.9 0.99; do
  lab compare "$OUT/01_circles_decay$decay" "${CIRCLES[@]}" --methods baseline ema sema swa \
    --seeds "${SEEDS[@]}" --decay "$decay" "$@"
done
