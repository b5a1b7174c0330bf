#!/usr/bin/env bash
# (3) Switch EMA against plain EMA with the same decay, over decay x switch interval; the grid
# is experiments/03_sema_sweep.toml. One `compare` run folder per cell under
# $OUT/03_sweep/cells/, the combined table in $OUT/03_sweep/sweep.md. Killed? Run
# `switchema sweep --resume $OUT/03_sweep`. The SEMA − EMA plot: experiments/collect_sweep.py.
set -euo pipefail
OUT=${OUT:-runs/experiments}
JOBS=${JOBS:-2}
source "$(dirname "$0")/settings.sh"
lab sweep "$OUT/03_sweep" --grid "$(dirname "$0")/03_sema_sweep.toml" --jobs "$JOBS" "$@"
