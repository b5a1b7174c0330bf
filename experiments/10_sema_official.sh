#!/usr/bin/env bash
# (10) Switch EMA with the official recipe's settings, decay 0.99 and 0.999, 5 seeds; the grid
# and what each setting reproduces: experiments/10_sema_official.toml. One `compare` run folder
# per decay under $OUT/10_sema_official/cells/, the combined table (Holm-corrected p-values)
# in $OUT/10_sema_official/sweep.md. Killed? `switchema sweep --resume $OUT/10_sema_official`.
# Extra flags win over the grid file, e.g. a quick check: --epochs 8 --seeds 0 1 --out /tmp/x
set -euo pipefail
OUT=${OUT:-runs/experiments}
JOBS=${JOBS:-2}
source "$(dirname "$0")/settings.sh"
lab sweep "$OUT/10_sema_official" --grid "$(dirname "$0")/10_sema_official.toml" --jobs "$JOBS" "$@"
