#!/usr/bin/env bash
# (5) Flatness and sharpness of the solutions (switchema analyze) for the main job's run and the
# label-noise run, and the noisy quadratic model (switchema nqm). Run after 00/02 (the main job
# and its constant-rate twin: experiments/00_default.sh).
set -euo pipefail
OUT=${OUT:-runs/experiments}
[ -d "$OUT/00_default" ] || bash "$(dirname "$0")/00_default.sh" "$@"
switchema analyze "$OUT/00_default" --no-progress "$@"
switchema analyze "$OUT/02_label_noise_sema" --no-progress "$@"
[ -f "$OUT/05_nqm/nqm.json" ] || switchema nqm --out "$OUT/05_nqm"  # never overwritten
