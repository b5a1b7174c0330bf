#!/usr/bin/env bash
# (13) EMA teachers, semi-supervised. MNIST-1D with 10% of the training
# labels (mnist1d-meanteacher): cross-entropy on the labelled examples plus a mean-teacher
# consistency between the student's prediction on one augmented view and the teacher's on
# another. The teacher is each method's average: baseline = the online model itself (no
# averaged teacher), ema = an EMA teacher, sema = an EMA teacher switched into the student at
# every epoch end. Every method trains on its own; test accuracy per epoch, 10 seeds. Does the
# teacher lead its student in the first epochs (the EMA paper's explanation of why EMA teachers
# work), and does the student beat its own target?
#
# Teachers: decay 0.99 (EMA, SEMA), 0.9 and 0.97 (EMA), all with the EMA paper's warm-up
# min(d, (1+t)/(10+t)), which reaches d after (10d - 1)/(1 - d) updates: 80, 290 and 890 of the
# run's 960, so 0.99 is warm-up-limited for most of the run (a 0.999 teacher would be the same
# run until step 890: not run). The slow teacher is the BYOL-style one: no such warm-up, its
# decay rising linearly from 0.99 x 0.999 = 0.989 to 0.999 over the run (BYOL: 0.996 -> 1 on a
# cosine; the lab's linear warm-up is the closest setting, no new schedule was built).
#
# Jobs: 15 + 5 + 5 + 5 = 30 of 30 epochs (38 steps each). Wall time measured with --jobs 2 on
# the 2-core machine (other recipes not running, load ~3): 152 s. Shortened check:
#   OUT=/tmp/runs/experiments bash experiments/13_teacher.sh --epochs 5 --seeds 0 1
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
RUN=("${MEANTEACHER[@]}" --seeds "${SEEDS[@]}" --jobs "${JOBS:-2}")
lab compare "$OUT/13_teacher" "${RUN[@]}" --methods baseline ema sema --decay 0.99 \
  --ema-warmup ema_paper "$@"
lab compare "$OUT/13_teacher_decay0.9" "${RUN[@]}" --methods ema --decay 0.9 --ema-warmup ema_paper "$@"
lab compare "$OUT/13_teacher_decay0.97" "${RUN[@]}" --methods ema --decay 0.97 \
  --ema-warmup ema_paper "$@"
lab compare "$OUT/13_teacher_byol" "${RUN[@]}" --methods ema --decay 0.999 --ema-warmup linear \
  --ema-warmup-ratio 0.99 --ema-warmup-length 30e "$@"
