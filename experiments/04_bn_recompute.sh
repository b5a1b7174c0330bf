#!/usr/bin/env bash
# (4) The EMA paper's five decays, with and without BatchNorm recomputation, on a model with
# BatchNorm (MNIST-1D CNN + BN). The paper's decays 0.968 ... 0.998 apply every 16 steps; these are
# their per-step equivalents (0.968**(1/16) = 0.998, ..., 0.998**(1/16) = 0.999875).
set -euo pipefail
OUT=${OUT:-runs/experiments}
DECAYS="0.998 0.999 0.9995 0.99975 0.999875"
switchema compare --task mnist1d-cnnbn --methods baseline ema --decay $DECAYS --seeds 0 1 2 \
  --bn-recompute --out "$OUT/04_bn_recompute" --no-progress "$@"
switchema compare --task mnist1d-cnnbn --methods baseline ema --decay $DECAYS --seeds 0 1 2 \
  --no-bn-recompute --out "$OUT/04_bn_keep" --no-progress "$@"
