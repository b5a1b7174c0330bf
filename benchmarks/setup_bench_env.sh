#!/usr/bin/env bash
# Create benchmarks/.venv-bench: switchema plus the peer EMA libraries it is compared with.
#
# The main development environment is never touched. torch is pinned, and every peer is
# installed with --no-deps so that no install can pull in a different torch (or torchvision);
# the peers' pure-Python dependencies are then added by hand.
#
# Usage:  bash benchmarks/setup_bench_env.sh          (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv-bench"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" numpy
"${PIP[@]}" --no-deps -e "$ROOT"

# Peers, without their dependencies (each of them lists torch, timm also torchvision).
"${PIP[@]}" --no-deps ema-pytorch torch-ema timm
# timm's own pure-Python dependencies (not torch, not torchvision).
"${PIP[@]}" pyyaml huggingface_hub safetensors

echo "--- installed (torch must be $TORCH_VERSION, torchvision absent):"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|torchvision|timm|ema-pytorch|torch-ema|switchema|numpy) ' || true
"$VENV/bin/python" - <<EOF
import importlib.util
import torch

assert torch.__version__.startswith("$TORCH_VERSION"), f"torch {torch.__version__} was installed"
assert importlib.util.find_spec("torchvision") is None, "torchvision must not be installed"
print(f"ok: torch {torch.__version__}, no torchvision")
for name in ("switchema", "ema_pytorch", "torch_ema", "timm.utils"):
    try:
        importlib.import_module(name)
        print(f"ok: import {name}")
    except Exception as exc:  # report, do not fail: the benchmark skips missing peers
        print(f"MISSING: import {name} failed: {type(exc).__name__}: {exc}")
EOF
echo "run: $VENV/bin/python $HERE/bench_update.py"
