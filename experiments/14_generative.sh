#!/usr/bin/env bash
# (14) Generative model: a flow-matching MLP (VelocityMLP, conditional flow
# matching, AdamW at a constant 2e-3, batch 256, 20 epochs of 75 steps) on three 2-D data sets:
# two moons, the swiss roll and 8 Gaussians on a ring (whose exact density is known). A constant
# learning rate, as diffusion models are usually trained: at the end of a cosine schedule to zero
# every average would equal the last iterate. Trained with the baseline, EMA at three decays
# (0.99, 0.995, 0.998 per step: windows of about 100, 200 and 500 of the 1500 steps), post-hoc
# EMA (two power EMAs, 32 snapshots, the EMA of every width of the default grid synthesised
# after training and evaluated; width 0.07 also tracked directly as a check) and, in a folder of
# its own (it takes one decay), Switch EMA (decay 0.995, a switch every epoch); 10 seeds, paired
# by seed across the two folders.
# Every evaluation draws 3 samples of 500 points (10 Heun steps; noise seeds 0-2 on the test
# split, 100-102 on validation; the same for every model) and scores each against 1000 held-out
# points: energy distance (primary), sliced W2 and, on the ring, the exact mean log-density;
# rows hold the mean over the draws and their std (the metric's sampling noise). The report
# (`samples.png`) draws the samples each final model generated, saved by the run.
# Wall time measured with --jobs 2 on the 2-core machine (load ~3): 434 s for the six folders.
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
generative() {  # TASK FOLDER SEMA_FOLDER [extra flags]
  local task=$1 out=$2 out_sema=$3
  shift 3
  lab compare "$out" --task "$task" "${FLOW[@]}" --methods baseline ema posthoc --decay 0.99 0.995 0.998 \
    --posthoc-check 0.07 --lr-schedule constant --seeds "${SEEDS[@]}" --jobs 2 "$@"
  lab compare "$out_sema" --task "$task" "${FLOW[@]}" --methods sema --decay 0.995 --lr-schedule constant \
    --seeds "${SEEDS[@]}" --jobs 2 "$@"
}
generative flow-moons "$OUT/14_generative_flow-moons" "$OUT/14_generative_flow-moons_sema" "$@"
generative flow-swissroll "$OUT/14_generative_flow-swissroll" \
  "$OUT/14_generative_flow-swissroll_sema" "$@"
generative flow-ring "$OUT/14_generative_flow-ring" "$OUT/14_generative_flow-ring_sema" "$@"
