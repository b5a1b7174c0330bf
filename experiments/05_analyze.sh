#!/usr/bin/env bash
# (5) Flatness and sharpness of the solutions (switchema analyze) for the main job's run and the
# label-noise run, and the noisy quadratic model (switchema nqm). Run after 00/02.
set -euo pipefail
OUT=${OUT:-runs/experiments}
[ -d "$OUT/00_default" ] || switchema compare --out "$OUT/00_default" --no-progress "$@"
switchema analyze "$OUT/00_default" --no-progress "$@"
switchema analyze "$OUT/02_label_noise_sema" --no-progress "$@"
[ -f "$OUT/05_nqm/nqm.json" ] || switchema nqm --out "$OUT/05_nqm"  # never overwritten
# The main job with a constant learning rate: without the cosine decay to zero, does the EMA's
# averaging show at the final epoch? (The EMA paper: EMA needs less learning-rate decay.)
[ -d "$OUT/00_constant_lr" ] ||
  switchema compare --lr-schedule constant --out "$OUT/00_constant_lr" --no-progress "$@"
