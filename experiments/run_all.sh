#!/usr/bin/env bash
# Every recipe of this folder, in order, then CLAIMS.md and RESULTS.md regenerated from the runs.
# OUT (default runs/experiments) holds the run folders; each recipe's wall time goes to
# $OUT/wall_times.txt. A recipe that finished leaves $OUT/done_NAME and is skipped (delete it and
# the recipe's folders to rerun); one that was killed (Ctrl-C, an ended session) runs again and
# continues its run folders with --resume (settings.sh, lab), so a killed run_all.sh continues
# where it stopped, across sessions. About 4 hours on the 2-core machine with JOBS=2 at 10 seeds
# (the estimate printed first: the 5-seed wall times of benchmarks/results_lab.md, doubled).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-runs/experiments} JOBS=${JOBS:-2}
mkdir -p "$OUT"
# Before anything starts: what is left, estimated from each recipe's wall time with JOBS=2 on the
# 2-core machine at 10 seeds (twice the 5-seed times benchmarks/results_lab.md explains). A recipe
# counts as done when its marker done_NAME exists.
estimate() {
  local total=0 n=0 name folder secs
  while read -r name folder secs; do
    if [ ! -e "$OUT/$folder" ]; then total=$((total + secs)); n=$((n + 1)); fi
  done <<'TABLE'
00_default done_00_default 268
01_circles done_01_circles 356
02_label_noise done_02_label_noise 396
03_sweep done_03_sweep 566
04_bn done_04_bn 3228
05_analyze done_05_analyze 218
06_posthoc done_06_posthoc 834
07_regression_lm done_07_regression_lm 2192
08_lr_tuning done_08_lr_tuning 482
09_sgd_noise done_09_sgd_noise 86
10_sema_official done_10_sema_official 112
11_lr_decay done_11_lr_decay 1140
12_switch_control done_12_switch_control 1292
13_teacher done_13_teacher 356
14_generative done_14_generative 1256
15_transfer done_15_transfer 1426
16_bootstrap done_16_bootstrap 300
17_long_epochs done_17_long_epochs 900
TABLE
  echo "run_all.sh: $n recipe(s) to run, about $((total / 60)) min with JOBS=2 on 2 cores" \
    "(scale by your cores; the per-recipe estimates are in this script)"
}
estimate
run() {  # run NAME COMMAND...: skip if $OUT/done_NAME exists, else time COMMAND and mark it done
  local name=$1; shift
  if [ -e "$OUT/done_$name" ]; then echo "skip $name: $OUT/done_$name exists"; return; fi
  local start=$SECONDS
  "$@"
  echo "$name $((SECONDS - start)) s" >> "$OUT/wall_times.txt"
  touch "$OUT/done_$name"
}
run 00_default bash experiments/00_default.sh --jobs "$JOBS"
run 01_circles bash experiments/01_circles.sh --jobs "$JOBS"
run 02_label_noise bash experiments/02_label_noise.sh --jobs "$JOBS"
run 03_sweep bash experiments/03_sema_sweep.sh
run 04_bn bash experiments/04_bn_recompute.sh --jobs "$JOBS"
run 05_analyze bash experiments/05_analyze.sh
run 06_posthoc bash experiments/06_posthoc.sh --jobs "$JOBS"
for f in experiments/0[7-9]_*.sh experiments/1[0-9]_*.sh; do
  run "$(basename "$f" .sh)" bash "$f" --jobs "$JOBS"
done
bash experiments/make_results.sh
