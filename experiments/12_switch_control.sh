#!/usr/bin/env bash
# (12) What a switch does, tested. For steady drift, a switch keeps only a fraction
#   f = 1 - d (1 - d^k) / (k (1 - d))
# of a period's progress (decay d per step, a switch every k steps), so Switch EMA should behave
# like a learning rate cut by f plus averaging. The control: the baseline (and an EMA on top of
# it) trained with the learning rate scaled by f, against SEMA with the same decay and interval.
# If SEMA equals the scaled baseline within noise, the mechanism is confirmed.
# Wall time measured with --jobs 2 on the 2-core machine: 432 s (with other work running
# beside it, load 6-11: expect less on a quiet machine).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
DECAY=${DECAY:-$PAPER_DECAY}
lab compare "$OUT/12_switch_sema" "${MNIST1D[@]}" --methods sema --decay "$DECAY" --switch-every 1 \
  --seeds "${SEEDS[@]}" "$@"
# k (steps per epoch) and the peak rate, as the SEMA run used them
LR_SCALED=$(python3 - "$OUT/12_switch_sema" "$DECAY" <<'PY'
import json, sys
run, d = sys.argv[1], float(sys.argv[2])
rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
k = min(r["step"] for r in rows if r["epoch"] == 1)
lr = json.load(open(f"{run}/config.json"))["config"]["lr"]
f = 1 - d * (1 - d**k) / (k * (1 - d))
print(f"switch every {k} steps, decay {d}: f = {f:.4f}, learning rate {lr} -> {lr * f:.6g}",
      file=sys.stderr)
print(f"{lr * f:.6g}")
PY
)
lab compare "$OUT/12_switch_scaled_baseline" "${MNIST1D[@]}" --methods baseline ema --decay "$DECAY" --lr "$LR_SCALED" \
  --seeds "${SEEDS[@]}" "$@"
