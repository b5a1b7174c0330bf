"""One run folder's results, read from its saved files and summarised: what ``summary.md``
(:mod:`.summary`), ``sweep.md`` and ``switchema diff`` are drawn from.

Every number is a mean ± sample standard deviation over seeds; differences are paired by
seed with a 95% t-interval and a raw p-value (t test), and the p-values of all the
comparisons a table shows are Holm-corrected together (:func:`correct`): a difference is
called significant only after that correction. Choices made after seeing results (the
early-stopping epoch, the best of several decays) are made on the validation split.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from ..config import StudyConfig
from ..decide import holm_declared
from ..errors import MissingFileError, UsageError
from ..keys import ModelKey
from ..stats import paired_difference, pairwise_interval
from .posthoc import final_only

__all__ = [
    "ALPHA",
    "PRIMARY",
    "correct",
    "has_results",
    "holm_family",
    "load_events",
    "load_run",
    "main_label",
    "summarise",
]

#: The family-wise error rate at which a difference is called significant (after Holm).
ALPHA = 0.05

# kind -> (primary metric, higher is better, scale for display, unit)
PRIMARY = {
    "classification": ("test_acc", True, 100.0, "%"),
    "regression": ("test_mse", False, 1.0, ""),
    "lm": ("test_bpc", False, 1.0, " bpc"),
    "generative": ("test_energy", False, 1.0, ""),
}


def load_run(
    run_dir: str | Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """The run's config, metric rows and arrays; a clear error names any missing file."""
    run = Path(run_dir)
    for name in ("config.json", "metrics.jsonl"):
        if not (run / name).is_file():
            raise MissingFileError(f"{run / name} not found: is {run} a switchema run folder?")
    config = json.loads((run / "config.json").read_text())
    # settings under today's names, whichever version wrote the folder
    config["config"] = StudyConfig.from_dict(config["config"], str(run / "config.json")).to_dict()
    rows = []
    with open(run / "metrics.jsonl") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(
                        f"{run / 'metrics.jsonl'} line {lineno} is not valid JSON: {e}"
                    ) from e
    arrays: dict[str, np.ndarray] = {}
    if (run / "predictions.npz").is_file():
        with np.load(run / "predictions.npz") as z:
            arrays = {k: z[k] for k in z.files}
    return config, rows, arrays


def load_events(run_dir: str | Path) -> list[dict[str, Any]]:
    """What the run's averagers recorded (``events.json``: per method and seed, its event log
    with switches and averaging updates); empty for a folder written before they kept one."""
    path = Path(run_dir) / "events.json"
    return json.loads(path.read_text()) if path.is_file() else []


def has_results(run_dir: str | Path) -> bool:
    """Whether the run folder holds metric rows to report (its cell has been written with at
    least one finished job)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    with open(path) as f:
        return any(line.strip() for line in f)


def main_label(method: str, labels: list[str]) -> str:
    """The model a method is judged by: the online model for the baseline, else its first average."""
    if method == "baseline":
        return "online"
    avgs = [m for m in labels if m != "online"]
    return avgs[0] if avgs else "online"


def _series(rows, method, model, key):
    """{seed: [value per epoch]} for one (method, model, metric)."""
    out: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and r["model"] == model and key in r:
            out[r["seed"]].append(r[key])
    return dict(sorted(out.items()))


def summarise(
    config: dict[str, Any], rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per (method, model): final and early-stopping metrics over seeds, paired differences
    with raw and Holm-corrected p-values, and agreement between seeds.

    Every choice made after seeing results is made on the validation split when the run has
    one (``val_*`` metrics): each seed's early-stopping epoch, the epoch of lowest loss, and
    which of several EMA decays is the method's main model. Without one those choices use
    the test set: ``selected_on`` is then ``"test"`` (an oracle), and the early-stopping
    differences get no p-value and are in no family. The family of comparisons whose
    p-values are Holm-corrected together is every other difference the summary shows.
    """
    kind = config["task"]["kind"]
    key, higher, _, _ = PRIMARY[kind]
    val_key = "val_" + key.removeprefix("test_")
    on_val = any(val_key in r for r in rows)
    methods = [m for m in config["config"]["methods"] if any(r["method"] == m for r in rows)]
    models_of = {  # models evaluated every epoch (post-hoc widths have their own section)
        m: list(
            dict.fromkeys(
                r["model"] for r in rows if r["method"] == m and not final_only(r["model"])
            )
        )
        for m in methods
    }
    metric_keys = list(
        dict.fromkeys(k for r in rows for k in r if isinstance(r[k], float) and k != "train_time_s")
    )
    select = (val_key, "val_loss") if on_val else (key, "test_loss")
    entries = [
        _entry(rows, arrays, (m, model), metric_keys, (key, *select), higher)
        for m in methods
        for model in models_of[m]
        if not _repeats_baseline(m, model)
    ]
    _choose_main(entries, models_of, val_key if on_val else None, higher)
    _comparisons(entries, key, on_val)
    family = holm_family(entries)
    return {
        "kind": kind,
        "key": key,
        "higher": higher,
        "entries": entries,
        "selected_on": "validation" if on_val else "test",
        "family": family,
    }


def _repeats_baseline(method: str, model: str) -> bool:
    """The online model of ema and swa is the baseline's own trajectory: listed once."""
    return model == "online" and method in ("ema", "swa")


def _entry(rows, arrays, which, metric_keys, keys, higher) -> dict[str, Any]:
    """One model's numbers; ``keys``: the primary test metric, and the metric and loss that
    choose the early-stopping epoch and the epoch of lowest loss."""
    (m, model), (key, key_sel, key_loss) = which, keys
    prim = _series(rows, m, model, key)
    chosen = _series(rows, m, model, key_sel)
    seeds = list(prim)
    final = {k: [v[-1] for v in _series(rows, m, model, k).values()] for k in metric_keys}
    best_idx = {s: int(np.argmax(v) if higher else np.argmin(v)) for s, v in chosen.items()}
    # a task without a loss metric (a generative one): its lowest-loss point is its best one
    losses = _series(rows, m, model, key_loss) or chosen
    low_idx = {
        s: int(np.argmin(v) if losses is not chosen or not higher else np.argmax(v))
        for s, v in losses.items()
    }
    entry = {
        "method": m,
        "model": model,
        "main": False,
        "seeds": seeds,
        "final": final,
        "best": [prim[s][best_idx[s]] for s in seeds],
        "best_epoch": [best_idx[s] + 1 for s in seeds],
        "at_lowest_loss": [prim[s][low_idx[s]] for s in seeds],
        "lowest_loss_epoch": [low_idx[s] + 1 for s in seeds],
    }
    if "noisy_memorised" in metric_keys:
        mem = _series(rows, m, model, "noisy_memorised")
        entry["memorised_at_best"] = [mem[s][best_idx[s]] for s in seeds]
    probs = [arrays.get(ModelKey(m, model, s).format("probs")) for s in seeds]
    if all(p is not None for p in probs) and len(probs) >= 2:
        entry["churn"] = pairwise_interval(M.churn, probs)
        entry["js"] = pairwise_interval(M.js_divergence, probs)
    return entry


def _choose_main(entries, models_of, val_key: str | None, higher: bool) -> None:
    """Mark each method's main model: the online model for the baseline, else its average;
    of several averages (EMA decays), the one with the best mean final validation metric
    (without a validation split, the first: no choice is made on the test set)."""
    for m, models in models_of.items():
        own = [e for e in entries if e["method"] == m]
        label = main_label(m, models)
        avgs = [e for e in own if e["model"] != "online"]
        if val_key and len(avgs) > 1 and all(e["final"].get(val_key) for e in avgs):
            pick = max if higher else min
            label = pick(avgs, key=lambda e: float(np.mean(e["final"][val_key])))["model"]
            for e in avgs:
                e["chosen_on_validation"] = e["model"] == label
        for e in own:
            e["main"] = e["model"] == label


def _paired(e: dict[str, Any], other: dict[str, Any], field: str, key: str):
    """Paired difference of ``e`` and ``other`` over their common seeds (None if they differ)."""
    if e["seeds"] != other["seeds"] or not e["seeds"]:
        return None
    values = (lambda x: x["final"][key]) if field == "final" else (lambda x: x[field])
    return paired_difference(values(e), values(other))


def _comparisons(entries: list[dict[str, Any]], key: str, on_val: bool) -> None:
    """Differences to the baseline's online model, and of Switch EMA to plain EMA; at the
    early-stopping epoch too (``oracle`` when it was chosen on the test set)."""
    base = next((e for e in entries if e["method"] == "baseline" and e["model"] == "online"), None)
    ema = next((e for e in entries if e["method"] == "ema" and e["main"]), None)
    for e in entries:
        pairs = []
        if base is not None and e is not base:
            pairs += [("diff_final", base, "final"), ("diff_best", base, "best")]
        if ema is not None and e["method"].startswith("sema") and e["main"]:
            pairs += [("diff_vs_ema", ema, "final"), ("diff_vs_ema_best", ema, "best")]
        for name, other, field in pairs:
            d = _paired(e, other, field, key)
            if d is not None:
                d["oracle"] = field == "best" and not on_val
                e[name] = d


def holm_family(entries: list[dict[str, Any]], alpha: float = ALPHA) -> dict[str, Any]:
    """Holm-correct the p-values of every non-oracle comparison in ``entries`` together
    (:func:`correct`). Returns the family's size ``m`` and ``alpha``."""
    diffs = [
        e[k]
        for e in entries
        for k in ("diff_final", "diff_best", "diff_vs_ema", "diff_vs_ema_best")
        if k in e and not e[k]["oracle"]
    ]
    return {"m": correct(diffs, alpha), "alpha": alpha}


def correct(diffs: list[dict[str, Any]], alpha: float = ALPHA, missing: int = 0) -> int:
    """Give each paired difference (:func:`~switchema.lab.stats.paired_difference`) of one
    family its Holm-corrected p-value ``p_holm`` and ``significant`` (``p_holm < alpha``: a
    difference is called significant only after the correction). ``missing``: comparisons the
    family declares that are not measured yet (a sweep's cells still running), counted as
    p = 1 (:func:`~switchema.lab.decide.holm_declared`). Returns the family's size
    (comparisons with a p-value, one seed gives none, plus ``missing``)."""
    for d in diffs:  # one seed: no p, no test
        d["p_holm"], d["significant"] = math.nan, False
    measured = [d for d in diffs if not math.isnan(d["p"])]
    m = len(measured) + missing
    if measured:
        for d, p in zip(measured, holm_declared([d["p"] for d in measured], m)):
            d["p_holm"], d["significant"] = p, bool(p < alpha)
    return m
