#!/usr/bin/env bash
# (4) The EMA paper's five decays, with and without BatchNorm recomputation, on a model with
# BatchNorm (MNIST-1D CNN + BN). The paper's decays 0.968 ... 0.998 apply every 16 steps; these are
# their per-step equivalents (0.968**(1/16) = 0.998, ..., 0.998**(1/16) = 0.999875).
set -euo pipefail
OUT=${OUT:-runs/experiments}
DECAYS="0.998 0.999 0.9995 0.99975 0.999875"
switchema compare --task mnist1d-cnnbn --methods baseline ema --decay $DECAYS --seeds 0 1 2 3 4 \
  --bn-recompute --out "$OUT/04_bn_recompute" --no-progress "$@"
switchema compare --task mnist1d-cnnbn --methods baseline ema --decay $DECAYS --seeds 0 1 2 3 4 \
  --no-bn-recompute --out "$OUT/04_bn_keep" --no-progress "$@"
# The audit's confound: without a warm-up the long windows above still hold part of the random
# initial weights, so "recompute BatchNorm" also measures "forget the initialisation". Two
# controls: (a) the EMA paper's own setting, decays 0.968 ... 0.998 per averaging update with
# an update every 16 steps and its warm-up min(d, (1 + t) / (10 + t)); (b) the per-step decays
# started at epoch 5 (the average copies the model until then), no warm-up.
PAPER="--decay 0.968 0.984 0.992 0.996 0.998 --ema-update-every 16 --ema-warmup ema_paper"
switchema compare --task mnist1d-cnnbn --methods baseline ema $PAPER --seeds 0 1 2 3 4 \
  --bn-recompute --out "$OUT/04_bn_paper_recompute" --no-progress "$@"
switchema compare --task mnist1d-cnnbn --methods baseline ema $PAPER --seeds 0 1 2 3 4 \
  --no-bn-recompute --out "$OUT/04_bn_paper_keep" --no-progress "$@"
switchema compare --task mnist1d-cnnbn --methods baseline ema --decay $DECAYS --ema-start 5e \
  --seeds 0 1 2 3 4 --bn-recompute --out "$OUT/04_bn_start_recompute" --no-progress "$@"
switchema compare --task mnist1d-cnnbn --methods baseline ema --decay $DECAYS --ema-start 5e \
  --seeds 0 1 2 3 4 --no-bn-recompute --out "$OUT/04_bn_start_keep" --no-progress "$@"
