"""Measures that first choose where to read a model: ``at_level`` (where another metric first
reaches a level) and ``tuned`` (in the run, among several, where a validation metric is best).
Registered on import, beside the built-in ones of :mod:`.measures`:

* ``at_level``: a metric read where another first reaches a level, e.g. the noisy labels
  memorised (``noisy_memorised``) at equal clean training accuracy (``by =
  "clean_train_acc"``), as the EMA paper compares them: ``level`` a number, ``"common"``
  (default), the highest value both models reach in that seed, or ``"control_best"``, the
  control's value at its validation-best epoch (where early stopping would leave it). Linear
  between epochs;
  ``treatment - control`` paired by seed, and a seed where one never reaches it is left out.
* ``tuned``: each side in its own run among ``candidates`` (e.g. the cells of a
  learning-rate sweep), the one where that model's mean ``select`` (a validation metric,
  default ``val_acc``) is best; then ``treatment - control`` of ``metric`` paired by seed. The
  choice is made on validation only, so no method loses because of one untuned rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..._checks import is_real
from ..errors import UsageError
from .measures import Effect, effect_of_differences, paired_seeds, register_measure, run_of
from .points import RunStore, seed_rows, values

__all__: list[str] = []


# --------------------------------------------------------------------------- at a level


def _at_level(rows: list[dict[str, Any]], by: str, level: float, metric: str) -> float | None:
    """``metric`` where ``by`` first reaches ``level``, linear between the two epochs around
    the crossing; None if it never does."""
    prev = None
    for r in rows:
        if by not in r or metric not in r:
            continue
        if r[by] >= level:
            if prev is None or r[by] == prev[by]:
                return float(r[metric])
            w = (level - prev[by]) / (r[by] - prev[by])
            return float(prev[metric] + w * (r[metric] - prev[metric]))
        prev = r
    return None


_LEVELS = {
    "common": "the highest value both reach",
    "control_best": "the control's value at its validation-best epoch",
}


def _level_of(
    claim: Mapping[str, Any], run, sides: list[dict[int, list]], s: int, by: str
) -> float:
    level = claim.get("level", "common")
    if level == "common":  # the highest level both models reach in this seed
        return min(max(r[by] for r in side[s] if by in r) for side in sides)
    if level == "control_best":
        return values(run, claim["control"], by, "best")[0][s]
    return float(level)


def _at_level_effect(claim: Mapping[str, Any], store: RunStore) -> Effect:
    level, by = claim.get("level", "common"), str(claim["by"])
    if level not in _LEVELS and not (is_real(level) and 0.0 < float(level) <= 1.0):
        raise UsageError(
            f"level must be {' or '.join(map(repr, _LEVELS))} or a number in (0, 1], got {level!r}"
        )
    run, notes = run_of(store, claim["run"]), []
    sides = [seed_rows(run, claim[role]) for role in ("treatment", "control")]
    seeds = paired_seeds([(claim[r], v) for r, v in zip(("treatment", "control"), sides)], notes)
    d, never = {}, []
    for s in seeds:
        at = _level_of(claim, run, sides, s, by)
        a, b = (_at_level(side[s], by, at, claim["metric"]) for side in sides)
        if a is None or b is None:
            never.append(s)
        else:
            d[s] = a - b
    if never:
        notes.append(f"seed(s) {', '.join(map(str, never))} never reach {by} {level}: left out")
    if level in _LEVELS:
        notes.append(f"{by} at {_LEVELS[level]}, in each seed")
    return effect_of_differences(d, notes)


def _describe_at_level(claim: Mapping[str, Any]) -> str:
    level = claim.get("level", "common")
    where = _LEVELS.get(level) or (f"{float(level):g}" if is_real(level) else repr(level))
    return (
        f"{claim['treatment']} − {claim['control']}: {claim['metric']} when {claim['by']} "
        f"first reaches {where} (same seed, linear between epochs)"
    )


register_measure(
    "at_level",
    describe=_describe_at_level,
    runs=lambda c: [str(c["run"])],
    metric=lambda c: str(c["metric"]),
    required=("run", "metric", "by", "treatment", "control"),
    optional=("level",),
)(_at_level_effect)


# --------------------------------------------------------------------------- tuned


def _chosen(claim: Mapping[str, Any], store: RunStore, model: str, select: str) -> str:
    """The candidate run where ``model``'s mean ``select`` (a validation metric, at the claim's
    point) is best: the highest, or the lowest for a loss-like metric."""
    lower = select.endswith(("loss", "nll", "mse", "mae", "bpc", "ece15", "ece100_mass"))
    scores = {}
    for name in claim["candidates"]:
        vals, _ = values(run_of(store, name), model, select, claim.get("at", "final"))
        scores[name] = float(np.mean(list(vals.values())))
    return (min if lower else max)(scores, key=scores.__getitem__)


def _tuned(claim: Mapping[str, Any], store: RunStore) -> Effect:
    cands = claim["candidates"]
    if not isinstance(cands, list) or len(cands) < 2 or not all(isinstance(c, str) for c in cands):
        raise UsageError(f"candidates must list at least two run folders, got {cands!r}")
    select, at = str(claim.get("select", "val_acc")), claim.get("at", "final")
    if not select.startswith("val_"):
        raise UsageError(f"select must be a validation metric (val_...), got {select!r}")
    notes: list[str] = []
    per_side = []
    for role in ("treatment", "control"):
        name = _chosen(claim, store, claim[role], select)
        notes.append(f"{claim[role]}: `{name}` (best mean {select})")
        per_side.append(
            (claim[role], values(run_of(store, name), claim[role], claim["metric"], at)[0])
        )
    seeds = paired_seeds(per_side, notes)
    (_, a), (_, b) = per_side
    return effect_of_differences({s: a[s] - b[s] for s in seeds}, notes)


def _describe_tuned(claim: Mapping[str, Any]) -> str:
    where = {"final": "at the final epoch", "best": "at the validation-best epoch"}
    return (
        f"{claim['treatment']} − {claim['control']}: {claim['metric']} "
        f"{where[claim.get('at', 'final')]}, each in the run of {len(claim['candidates'])} "
        f"where its mean {claim.get('select', 'val_acc')} is best (same seed)"
    )


register_measure(
    "tuned",
    describe=_describe_tuned,
    runs=lambda c: [str(x) for x in c["candidates"]],
    metric=lambda c: str(c["metric"]),
    required=("candidates", "metric", "treatment", "control"),
    optional=("select", "at"),
)(_tuned)
