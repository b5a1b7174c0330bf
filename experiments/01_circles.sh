#!/usr/bin/env bash
# (1) The Switch EMA paper's toy: two concentric circles, 50 labelled points, a 2-layer MLP.
# Does SEMA give a better decision boundary than the baseline and plain EMA?
set -euo pipefail
OUT=${OUT:-runs/experiments}
switchema compare --task circles --methods baseline ema sema swa --seeds 0 1 2 3 4 \
  --decay 0.99 --out "$OUT/01_circles" --no-progress "$@"
