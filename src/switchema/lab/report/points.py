"""Per-seed numbers read from saved run folders at a chosen point of training.

The claims table and the results template both ask the same question of a run folder: *for
this model, what value did each seed reach at this point?* A model is ``method/model`` as the
rows name it (``baseline/online``, ``ema/avg``, ``ema/avg@0.998``); a point is

* ``final``: the last epoch recorded for the seed;
* ``best``: the epoch where the model's *validation* metric is best, chosen per seed and per
  model (``val_acc`` highest for classification, ``val_mse`` / ``val_bpc`` lowest for
  regression / language models, ``val_energy`` lowest for generative ones). The test set is
  never used to choose. A run written without a validation split has no ``val_`` metrics: it
  falls back to the final epoch, and the note returned with the values says so.

Metrics are the columns of ``metrics.jsonl`` (``test_acc``, ``ece100_mass``, ``val_nll``,
``temperature`` ...) plus three derived names: ``epoch`` (the epoch of the point),
``epoch_fraction`` (that epoch over the run's budget) and ``analysis.<key>`` (a measure of the
final weights from ``analysis.json``, written by ``switchema analyze``; the point does not apply).

:class:`RunStore` loads each folder once, remembers which were asked for but are missing, and
lists the runs used (for provenance). Nothing here trains or writes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..keys import ModelKey
from .run import has_results, load_run

__all__ = [
    "MissingOutput",
    "NotMeasurable",
    "POINTS",
    "SELECTION",
    "Run",
    "RunStore",
    "display",
    "point_name",
    "seed_rows",
    "split_model",
    "values",
]

POINTS = ("final", "best")
#: task kind -> (validation metric that chooses the best epoch, higher is better)
SELECTION = {
    "classification": ("val_acc", True),
    "regression": ("val_mse", False),
    "lm": ("val_bpc", False),
    "generative": ("val_energy", False),
}
_FINAL_ONLY_NOTE = "no validation split in this run: final epoch"


class MissingOutput(UsageError):
    """A file a recipe writes into a run folder later (``analysis.json``) is not there yet;
    ``name`` is its path relative to the runs root. Reported as "not run yet", like a missing
    run folder."""

    def __init__(self, name: str, how: str) -> None:
        self.name = name
        super().__init__(f"{name} not made yet: {how}")


class NotMeasurable(UsageError):
    """The run cannot give this number (e.g. the epoch of the best validation metric in a run
    without a validation split); a claims row says so instead of measuring something else."""


@dataclass
class Run:
    """One saved ``compare`` run folder: its settings, metric rows and arrays
    (``predictions.npz``: final probabilities per ``probs/<method>/<model>/<seed>``)."""

    name: str  # as the spec or template names it, relative to the runs root
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return self.config["task"]["kind"]

    @property
    def epochs(self) -> int:
        return int(self.config["config"]["epochs"])

    @property
    def has_validation(self) -> bool:
        key = SELECTION[self.kind][0]
        return any(key in r for r in self.rows)

    def analysis(self) -> dict[str, Any]:
        """``analysis.json`` of ``switchema analyze``; a usage error says how to make it."""
        path = self.path / "analysis.json"
        if not path.is_file():
            how = f"run `switchema analyze {self.path}` (experiments/05_analyze.sh)"
            raise MissingOutput(f"{self.name}/analysis.json", how)
        return json.loads(path.read_text())

    def models(self) -> list[str]:
        """Every ``method/model`` in the rows, in the order they first appear."""
        return list(dict.fromkeys(ModelKey(r["method"], r["model"]).format() for r in self.rows))


class RunStore:
    """Run folders under ``root``, each loaded once; a folder that does not exist or holds no
    finished rows yet is *missing* (recorded, never an error)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._runs: dict[str, Run | None] = {}
        self.missing: list[str] = []

    def get(self, name: str) -> Run | None:
        """The run folder ``root/name``, or ``None`` (and ``name`` listed in :attr:`missing`)."""
        if name not in self._runs:
            path = self.root / name
            if has_results(path):
                self._runs[name] = Run(name, path, *load_run(path))
            else:
                self._runs[name] = None
                self.missing.append(name)
        return self._runs[name]

    def used(self) -> list[Run]:
        """The runs loaded so far, in the order first asked for."""
        return [r for r in self._runs.values() if r is not None]


def split_model(model: str) -> ModelKey:
    """``"ema/avg@0.99"`` -> ``ModelKey("ema", "avg@0.99")`` (no seed); a usage error for
    anything else."""
    form = "a model is written method/model, e.g. 'ema/avg' or 'baseline/online'"
    try:
        key = ModelKey.parse(model)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{form}: {e}") from None
    if key.seed is not None:
        raise UsageError(f"{form}, without a seed, got {model!r}")
    return key


def seed_rows(run: Run, model: str) -> dict[int, list[dict[str, Any]]]:
    """``{seed: rows by epoch}`` of one ``method/model``; a usage error lists the run's models."""
    try:
        key, why = split_model(model), ""
    except UsageError as e:  # said below, with the models the run has
        key, why = None, f" ({e})"
    wanted = None if key is None else (key.method, key.label.format())
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in run.rows:
        if (r["method"], r["model"]) == wanted:
            out[int(r["seed"])].append(r)
    if not out:
        raise UsageError(
            f"{run.name} has no rows for {model!r}{why}; its models are: {', '.join(run.models())}"
        )
    return {s: sorted(rs, key=lambda r: r["epoch"]) for s, rs in sorted(out.items())}


def _point_index(run: Run, rows: list[dict[str, Any]], at: str) -> int:
    if at not in POINTS:
        raise UsageError(f"a point is one of {', '.join(POINTS)}, got {at!r}")
    if at == "final" or not run.has_validation:
        return len(rows) - 1
    key, higher = SELECTION[run.kind]
    scored = [(i, r[key]) for i, r in enumerate(rows) if key in r]
    if not scored:
        return len(rows) - 1
    best = max(v for _, v in scored) if higher else min(v for _, v in scored)
    return next(i for i, v in scored if v == best)  # the earliest of tied epochs


def point_name(run: Run, at: str) -> str:
    """How the point reads in a table: 'final epoch', 'validation-best epoch', or the fallback."""
    if at == "final":
        return "final epoch"
    return "validation-best epoch" if run.has_validation else _FINAL_ONLY_NOTE


def values(run: Run, model: str, metric: str, at: str = "final") -> tuple[dict[int, float], str]:
    """``({seed: value}, note)``: ``metric`` of ``model`` at point ``at`` for every seed.

    ``note`` is empty, or says the run has no validation split (``best`` fell back to the final
    epoch). A metric the rows do not hold at that point is a usage error naming the ones they do.
    """
    if metric.startswith("analysis."):
        return _analysis_values(run, model, metric.split(".", 1)[1]), ""
    note = "" if at == "final" or run.has_validation else _FINAL_ONLY_NOTE
    if note and metric in ("epoch", "epoch_fraction"):
        raise NotMeasurable(f"{run.name} has no validation split, so no best epoch to time")
    out: dict[int, float] = {}
    for seed, rows in seed_rows(run, model).items():
        row = rows[_point_index(run, rows, at)]
        if metric == "epoch":
            out[seed] = float(row["epoch"])
        elif metric == "epoch_fraction":
            out[seed] = float(row["epoch"]) / run.epochs
        elif metric in row and row[metric] is not None:
            out[seed] = float(row[metric])
        else:
            known = sorted(k for k, v in row.items() if isinstance(v, float))
            where = "the final epoch" if row is rows[-1] else f"epoch {row['epoch']}"
            raise UsageError(
                f"{run.name}: {model} has no {metric!r} at {where} (seed {seed}); "
                f"its metrics there: {', '.join(known)}"
            )
    return out, note


def _analysis_values(run: Run, model: str, key: str) -> dict[int, float]:
    name = split_model(model)
    measured = [r for r in run.analysis()["models"].values() if r["method"] == name.method]
    if not measured:
        raise UsageError(f"{run.name}/analysis.json measured no model of method {name.method!r}")
    if any(r["model"] != name.label.format() for r in measured):
        other = ModelKey(name.method, measured[0]["model"]).format()
        raise UsageError(f"{run.name}/analysis.json measured {other}, not {model}")
    if key not in measured[0]:
        known = sorted(k for k, v in measured[0].items() if isinstance(v, float))
        raise UsageError(f"analysis.json has no {key!r}; it has: {', '.join(known)}")
    return {int(r["seed"]): float(r[key]) for r in sorted(measured, key=lambda r: r["seed"])}


def display(metric: str) -> tuple[float, str, str, int]:
    """``(scale, unit of a value, unit of a difference, digits)`` for showing ``metric``.

    Fractions (accuracies, calibration errors, memorised labels, churn) show in % and their
    differences in percentage points; epochs as epochs; everything else as stored.

    >>> display("val_acc"), display("epoch"), display("test_nll")
    ((100.0, '%', 'pp', 2), (1.0, 'epochs', 'epochs', 1), (1.0, '', '', 4))
    """
    base = metric.split(".", 1)[-1]
    if base.endswith("acc") or "ece" in base or base.startswith("noisy_") or base == "churn":
        return 100.0, "%", "pp", 2
    if base in ("epoch", "epochs"):
        return 1.0, "epochs", "epochs", 1
    if base in ("step", "steps"):
        return 1.0, "steps", "steps", 0
    if base == "epoch_fraction":
        return 1.0, "of the budget", "of the budget", 3
    return 1.0, "", "", 4
