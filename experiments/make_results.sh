#!/usr/bin/env bash
# Regenerate experiments/CLAIMS.md and experiments/RESULTS.md from the saved runs, after the
# recipes ran (OUT=runs/experiments bash experiments/NN_name.sh). Trains nothing; a run folder
# not made yet shows as "not run yet" and is listed in a warning. RUNS is the runs root that the
# run paths in claims.toml and RESULTS.in.md (experiments/00_default, ...) are relative to.
# Both files are generated, never edited by hand: edit claims.toml or RESULTS.in.md instead.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
SWEEP="$RUNS/experiments/03_sweep"
# The SEMA - EMA view of the sweep (its plot is a figure of RESULTS.md); made once per sweep.
if [ -f "$SWEEP/sweep.json" ] && [ ! -f "$SWEEP/sema_vs_ema.png" ]; then
  python experiments/collect_sweep.py "$SWEEP" "$SWEEP/sema_vs_ema.png" > "$SWEEP/sema_vs_ema.md"
fi
# The sweep's full table, linked from RESULTS.md.
if [ -f "$SWEEP/sweep.md" ]; then
  mkdir -p experiments/results && cp "$SWEEP/sweep.md" experiments/results/sweep.md
fi
switchema claims --spec experiments/claims.toml --runs "$RUNS" --out experiments/CLAIMS.md
switchema results --template experiments/RESULTS.in.md --spec experiments/claims.toml \
  --runs "$RUNS" --out experiments/RESULTS.md
