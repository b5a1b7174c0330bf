"""The numbers that make a lab setting comparable to a paper's: the regime of an average.

What an EMA (and a Switch EMA's switch) does depends on ratios, not on the decay alone. For
``S`` optimizer steps per epoch, a decay ``d`` per averaging update every ``u`` steps, a
switch period of ``P`` epochs and a run of ``E`` epochs:

* window: ``W = u / (1 - d)`` steps, ``W / S`` epochs, ``W / (E S)`` of the run;
* ``f = 1 - d (1 - d^k) / (k (1 - d))`` with ``k = P S / u`` updates per period: the fraction
  of a period's progress a switch keeps under steady drift (:func:`keep_fraction`);
* the schedule's end (the learning rate at the end of training).

A paper states its settings, sometimes as ranges (CIFAR at batch 100 or 128 gives 391-500
steps per epoch), so its numbers are ranges over every combination. A lab row is **in
regime** when its ``f`` and its window in epochs each lie within ``±20%`` of the paper's
range; a row out of regime is a *sensitivity* row: reported, never counted in the headline.

>>> r = regime_numbers(steps_per_epoch=391, decay=0.999, epochs=200)
>>> round(r["window_epochs"], 2), round(r["f"], 3)
(2.56, 0.173)
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import UsageError
from ..units import parse_interval
from .notes import run_facts
from .points import Run

__all__ = [
    "REGIME_KEYS",
    "TOLERANCE",
    "in_regime",
    "keep_fraction",
    "lab_regime",
    "paper_regime",
    "regime_numbers",
    "regime_text",
]

#: how far (relative) a lab number may lie outside the paper's range and still match it
TOLERANCE = 0.2
#: the keys of a paper's regime in the claims spec (``[regime.NAME]``)
REGIME_KEYS = ("steps_per_epoch", "decay", "update_every", "period", "epochs", "schedule")
_COMPARED = ("f", "window_epochs")


def keep_fraction(decay: float, k: float) -> float:
    """``f = 1 - d (1 - d^k) / (k (1 - d))``: the part of a period's progress (``k``
    averaging updates at decay ``d``) that a switch keeps, for a model drifting at a constant
    velocity; ``f -> 1`` for short windows, ``~ k (1 - d) / 2`` for long ones.

    >>> round(keep_fraction(0.987, 32), 3)
    0.188
    """
    if not 0.0 <= decay < 1.0 or not k > 0:
        raise ValueError(f"need 0 <= decay < 1 and k > 0, got decay={decay!r}, k={k!r}")
    if decay == 0.0:
        return 1.0
    return 1.0 - decay * (1.0 - decay**k) / (k * (1.0 - decay))


def regime_numbers(
    *,
    steps_per_epoch: float,
    decay: float,
    epochs: float,
    update_every: int = 1,
    period: float = 1.0,
) -> dict[str, float]:
    """The regime of one setting: ``window_steps``, ``window_epochs``, ``run_fraction`` (the
    window over the run) and ``f`` (for a switch every ``period`` epochs)."""
    if not steps_per_epoch > 0 or not epochs > 0 or not period > 0 or update_every < 1:
        raise ValueError(
            f"need steps_per_epoch, epochs, period > 0 and update_every >= 1, got "
            f"{steps_per_epoch!r}, {epochs!r}, {period!r}, {update_every!r}"
        )
    window = update_every / (1.0 - decay)
    return {
        "steps_per_epoch": float(steps_per_epoch),
        "window_steps": window,
        "window_epochs": window / steps_per_epoch,
        "run_fraction": window / (epochs * steps_per_epoch),
        "f": keep_fraction(decay, period * steps_per_epoch / update_every),
    }


def _values(x: Any, key: str) -> list[float]:
    values = x if isinstance(x, list) else [x]
    if not values or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise UsageError(f"regime {key} must be a number or a list of numbers, got {x!r}")
    return [float(v) for v in values]


def paper_regime(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A paper's regime from its settings (each a number or a list: a range): every number
    as ``(lo, hi)`` over the combinations, and its ``schedule`` (words)."""
    unknown = sorted(set(spec) - set(REGIME_KEYS))
    missing = [k for k in ("steps_per_epoch", "decay", "epochs") if k not in spec]
    if unknown or missing:
        raise UsageError(
            f"a regime takes {', '.join(REGIME_KEYS)} (steps_per_epoch, decay and epochs "
            f"required); unknown {unknown}, missing {missing}"
        )
    axes = {k: _values(spec.get(k, default), k) for k, default in
            (("steps_per_epoch", None), ("decay", None), ("epochs", None),
             ("update_every", 1), ("period", 1))}  # fmt: skip
    points = [
        regime_numbers(**dict(zip(axes, combo))) for combo in itertools.product(*axes.values())
    ]
    out: dict[str, Any] = {
        k: (min(p[k] for p in points), max(p[k] for p in points)) for k in points[0]
    }
    out["schedule"] = str(spec.get("schedule", "not stated"))
    return out


def _decay_of(run: Run, model: str | None) -> float | None:
    """The per-update decay of ``model`` (``method/avg@0.99``), else the run's first decay."""
    found = re.search(r"@([0-9.]+)$", model or "")
    if found:
        return float(found.group(1))
    decays = run.config["config"].get("decay") or []
    return float(decays[0]) if decays else None


def _schedule(cfg: Mapping[str, Any]) -> str:
    kind = cfg.get("lr_schedule", "?")
    if kind == "constant":
        return "constant"
    return f"{kind} to {float(cfg.get('lr_final', 0.0)):g} of the peak"


def lab_regime(run: Run, model: str | None, period: float | None = None) -> dict[str, Any] | None:
    """The regime of ``model`` in ``run`` (steps per epoch read from the rows; the period is
    the run's switch interval in epochs, or ``period`` when the claim compares no switch);
    None when the run has no decay or no recorded steps."""
    cfg = run.config["config"]
    decay = _decay_of(run, model)
    spe = run_facts(run.config, run.rows)["steps_per_epoch"]
    if decay is None or not spe or not 0.0 <= decay < 1.0:
        return None
    if period is None:
        every = parse_interval(str(cfg.get("switch_every", "1")))
        period = every.n if every.unit == "epochs" else every.n / spe
    out: dict[str, Any] = regime_numbers(
        steps_per_epoch=spe,
        decay=decay,
        epochs=int(cfg["epochs"]),
        update_every=int(cfg.get("ema_update_every", 1)),
        period=period,
    )
    out["decay"] = decay
    out["schedule"] = _schedule(cfg)
    return out


def in_regime(lab: Mapping[str, Any], paper: Mapping[str, Any], tol: float = TOLERANCE) -> bool:
    """Whether the lab's ``f`` and window in epochs lie within ``±tol`` of the paper's ranges."""
    return all(paper[k][0] * (1.0 - tol) <= lab[k] <= paper[k][1] * (1.0 + tol) for k in _COMPARED)


def _span(lo: float, hi: float, digits: int) -> str:
    if math.isclose(lo, hi, rel_tol=1e-9):
        return f"{lo:.{digits}f}"
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


def regime_text(lab: Mapping[str, Any] | None, paper: Mapping[str, Any] | None) -> str:
    """One cell: the lab's and the paper's steps per epoch, window (steps, epochs, share of
    the run), f and schedule end, and whether they match."""
    parts = []
    if lab is not None:
        parts.append(
            f"lab: {lab['steps_per_epoch']:.0f} steps/epoch, decay {lab['decay']:g}, window "
            f"{lab['window_steps']:.0f} steps = {lab['window_epochs']:.2f} epochs = "
            f"{100 * lab['run_fraction']:.1f}% of the run, f {lab['f']:.3f}, {lab['schedule']}"
        )
    if paper is not None:
        p = paper
        parts.append(
            f"paper: {_span(*p['steps_per_epoch'], 0)} steps/epoch, window "
            f"{_span(*p['window_steps'], 0)} steps = {_span(*p['window_epochs'], 2)} epochs = "
            f"{_span(100 * p['run_fraction'][0], 100 * p['run_fraction'][1], 1)}% of the run, "
            f"f {_span(*p['f'], 3)}, {p['schedule']}"
        )
    elif lab is not None:  # a claim whose setting the papers do not give in these numbers
        parts.append("paper: no decay and steps per epoch stated for this claim")
    if lab is not None and paper is not None:
        parts.append("in regime" if in_regime(lab, paper) else "**out of regime**")
    return "; ".join(parts) if parts else "—"
