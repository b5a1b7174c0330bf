# Settings every recipe pins (sourced, not run): the seeds, and the main MNIST-1D job's full
# setting, written out so that a later change of a task's or the lab's defaults moves no number.
# SEEDS: 10, the fewest for every headline claim (`switchema claims --power` from a pilot says
# how many each row needs). Decay 0.987 per step at this task's 32 steps per epoch puts the EMA
# in both papers' regime: a window of 77 steps = 2.4 epochs and a switch every epoch keeping
# f = 0.19 of a period's progress, where the SEMA paper's CIFAR setting (decay 0.999 at 391-500
# steps per epoch) has 2.0-2.6 epochs and f = 0.17-0.21 and the EMA paper's windows span
# 1.3-20 epochs (claims.toml, [regime.*]). Switching starts after epoch 5, as in the SEMA paper.
SEEDS=(0 1 2 3 4 5 6 7 8 9)
PAPER_DECAY=0.987
MNIST1D=(--task mnist1d-cnn --epochs 100 --batch-size 100 --optimizer adamw --lr 0.01
  --weight-decay 0 --lr-schedule cosine --lr-final 0 --warmup-epochs 0 --data-seed 42
  --val-fraction 0.2 --ema-warmup none --ema-start 0 --ema-update-every 1 --buffers copy
  --switch-every 1 --switch-start 6 --swa-start 0.75 --swa-every 1 --label-noise 0)
# The other tasks' settings, written out for the same reason (their defaults as of this
# writing; a recipe adds what it varies: methods, decays, warm-ups, schedules).
LAB=(--lr-final 0 --warmup-epochs 0 --ema-start 0 --ema-update-every 1 --buffers copy
  --switch-every 1 --switch-start 0 --swa-start 0.75 --swa-every 1e --label-noise 0
  --val-fraction 0.2)
CIRCLES=(--task circles --epochs 200 --batch-size 10 --optimizer adamw --lr 0.01
  --weight-decay 0 --lr-schedule cosine --data-seed 0 --ema-warmup none "${LAB[@]}")
MEANTEACHER=(--task mnist1d-meanteacher --epochs 30 --batch-size 100 --optimizer adamw --lr 0.01
  --weight-decay 0 --lr-schedule cosine --data-seed 42 "${LAB[@]}")
FLOW=(--epochs 20 --batch-size 256 --optimizer adamw --lr 0.002 --weight-decay 0 --data-seed 0
  --ema-warmup none "${LAB[@]}")  # with --task flow-moons, flow-swissroll or flow-ring
TRANSFER=(--task mnist1d-transfer --epochs 60 --batch-size 100 --optimizer adamw --lr 0.01
  --weight-decay 0 --lr-schedule cosine --data-seed 42 --ema-warmup none "${LAB[@]}")

# lab compare|sweep FOLDER ARGS...: make the run FOLDER (`switchema compare|sweep ARGS --out
# FOLDER`), or, if it exists (made before, or left by a killed run or an ended session),
# continue it with --resume: only the epochs not yet trained run, and its reports are rewritten.
# A run folder is never overwritten and never started again from scratch.
# With DRY_RUN=1 each run's resolved settings and jobs are printed instead (compare only).
lab() {
  local cmd=$1 out=$2
  shift 2
  if [ -n "${DRY_RUN:-}" ]; then
    switchema "$cmd" "$@" --out "$out" --dry-run
  elif [ -e "$out" ]; then
    switchema "$cmd" --resume "$out" --jobs "${JOBS:-2}" --no-progress
  else
    switchema "$cmd" "$@" --out "$out" --no-progress
  fi
}
