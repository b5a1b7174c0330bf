#!/usr/bin/env bash
# Regenerate experiments/CLAIMS.md and experiments/RESULTS.md from the saved runs, after the
# recipes ran (OUT=runs/experiments bash experiments/NN_name.sh). Trains nothing; a run folder
# not made yet shows as "not run yet" and is listed in a warning. RUNS is the runs root that the
# run paths in claims.toml and RESULTS.in.md (experiments/00_default, ...) are relative to.
# Both files are generated, never edited by hand: edit claims.toml or RESULTS.in.md instead.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
DEST=${DEST:-experiments}  # where CLAIMS.md and RESULTS.md go (another folder: a dry run)
SWEEP="$RUNS/experiments/03_sweep"
# The SEMA - EMA view of the sweep (its plot is a figure of RESULTS.md); remade whenever the
# sweep's table is newer (a sweep continued after an earlier make_results.sh).
if [ -f "$SWEEP/sweep.md" ] && [ "$SWEEP/sweep.md" -nt "$SWEEP/sema_vs_ema.png" ]; then
  python experiments/collect_sweep.py "$SWEEP" "$SWEEP/sema_vs_ema.png" > "$SWEEP/sema_vs_ema.md"
fi
# The sweep's full table, linked from RESULTS.md.
if [ -f "$SWEEP/sweep.md" ]; then
  mkdir -p "$DEST/results" && cp "$SWEEP/sweep.md" "$DEST/results/sweep.md"
fi
# One policy for both files: the claims table's families (claims.toml, [[family]]) and verdict
# words, the same in CLAIMS.md and in RESULTS.md's <!-- claims --> section; RESULTS.md's run
# tables correct each run's comparisons as its summary.md does. `switchema claims --power`
# prints, from these runs as a pilot, the seeds each row needs.
switchema claims --spec experiments/claims.toml --runs "$RUNS" --out "$DEST/CLAIMS.md"
switchema results --template experiments/RESULTS.in.md --spec experiments/claims.toml \
  --runs "$RUNS" --out "$DEST/RESULTS.md"
