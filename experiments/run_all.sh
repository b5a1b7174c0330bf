#!/usr/bin/env bash
# Every recipe of this folder, in order, then CLAIMS.md and RESULTS.md regenerated from the runs.
# OUT (default runs/experiments) holds the run folders; each recipe's wall time goes to
# $OUT/wall_times.txt. A recipe whose folders exist already is skipped (delete them to rerun), so
# a killed run_all.sh continues where it stopped; a killed sweep continues with its --resume.
# About 2 hours on the 2-core machine with JOBS=2 (the per-recipe times are in RESULTS.md; the
# estimate printed first is explained in benchmarks/results_lab.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-runs/experiments} JOBS=${JOBS:-2}
mkdir -p "$OUT"
# Before anything starts: what is left, estimated from each recipe's wall time with JOBS=2 on the
# 2-core machine (benchmarks/results_lab.md says how these seconds were estimated). A recipe counts
# as done when the folder that makes run() skip it exists.
estimate() {
  local total=0 n=0 name folder secs
  while read -r name folder secs; do
    if [ ! -e "$OUT/$folder" ]; then total=$((total + secs)); n=$((n + 1)); fi
  done <<'TABLE'
00_default 00_default 134
01_circles 01_circles_decay0.99 178
02_label_noise 02_label_noise_sema 198
03_sweep 03_sweep/sweep.md 283
04_bn 04_bn_start_keep 1614
05_analyze 00_default/analysis.json 109
06_posthoc 06_posthoc_constant_lr 417
07_regression_lm done_07_regression_lm 1096
08_lr_tuning done_08_lr_tuning 241
09_sgd_noise done_09_sgd_noise 43
10_sema_official done_10_sema_official 56
11_lr_decay done_11_lr_decay 570
12_switch_control done_12_switch_control 646
13_teacher done_13_teacher 178
14_generative done_14_generative 628
15_transfer done_15_transfer 713
TABLE
  echo "run_all.sh: $n recipe(s) to run, about $((total / 60)) min with JOBS=2 on 2 cores" \
    "(scale by your cores; the per-recipe estimates are in this script)"
}
estimate
run() {  # run NAME FOLDER COMMAND...: skip if FOLDER exists, else time COMMAND
  local name=$1 folder=$2; shift 2
  if [ -e "$OUT/$folder" ]; then echo "skip $name: $OUT/$folder exists"; return; fi
  local start=$SECONDS
  "$@"
  echo "$name $((SECONDS - start)) s" >> "$OUT/wall_times.txt"
}
run 00_default 00_constant_lr bash experiments/00_default.sh --jobs "$JOBS"
run 01_circles 01_circles_decay0.99 bash experiments/01_circles.sh --jobs "$JOBS"
run 02_label_noise 02_label_noise_sema bash experiments/02_label_noise.sh --jobs "$JOBS"
run 03_sweep 03_sweep/sweep.md bash experiments/03_sema_sweep.sh
run 04_bn 04_bn_start_keep bash experiments/04_bn_recompute.sh --jobs "$JOBS"
run 05_analyze 00_default/analysis.json bash experiments/05_analyze.sh
run 06_posthoc 06_posthoc_constant_lr bash experiments/06_posthoc.sh --jobs "$JOBS"
for f in experiments/0[7-9]_*.sh experiments/1[0-9]_*.sh; do
  name=$(basename "$f" .sh)
  run "$name" "done_$name" bash "$f" --jobs "$JOBS"
  touch "$OUT/done_$name"
done
bash experiments/make_results.sh
