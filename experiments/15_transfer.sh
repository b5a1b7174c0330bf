#!/usr/bin/env bash
# (15) Transfer. The EMA paper: EMA backbones transfer better (a linear probe
# on frozen features, Tiny-ImageNet -> CIFAR-100: 52.77% -> 57.30%). Here the MNIST-1D CNN is
# trained on digits 0-4 (task mnist1d-transfer, its default recipe: AdamW, lr 1e-2, batch 100,
# 60 epochs, cosine) and, after every epoch, every model (the online weights, the EMA, the Switch
# EMA) is probed on digits 5-9: a logistic regression on its frozen penultimate features, its L2
# penalty chosen on a validation part of the target's training data, scored on the target's test
# examples (test_probe_acc). The claims read the probe at each model's early-stopping epoch,
# chosen on the source's validation accuracy (the target's test set chooses nothing).
#
# Wall time measured with --jobs 2 on the 2-core machine: 413 s (while tests ran beside it,
# load ~4-8; the probes after every epoch take most of it).
set -euo pipefail
OUT=${OUT:-runs/experiments}
source "$(dirname "$0")/settings.sh"
RUN="$OUT/15_transfer"
# (a run folder is never overwritten: an existing one is only drawn again)
lab compare "$RUN" "${TRANSFER[@]}" --methods baseline ema sema --decay 0.99 \
  --seeds "${SEEDS[@]}" --jobs "${JOBS:-2}" "$@"
# The probe's test accuracy per epoch, drawn from the saved rows with the lab's curve style.
python - "$RUN" <<'PY'
import sys
from switchema.lab.report.run import load_run
from switchema.lab.report.run_plots import plot_curves
from switchema.lab.report.style import Figures

config, rows, _ = load_run(sys.argv[1])
print(plot_curves(config, rows, Figures(), sys.argv[1], "probe_curves", "test_probe_acc"))
PY
