"""Generated tables and numbers for the results document, from saved run folders.

* :func:`run_table`: a run's main table: every method and model, its primary metric at the
  final and the validation-best epoch (mean ± std over seeds), the paired difference to the
  baseline with a 95% interval, a Holm-corrected p (the family: the run's, as its
  ``summary.md`` corrects it, so both show the same p) and the claims table's verdict words,
  and further metrics at the final epoch;
* :func:`sweep_table`: one difference per cell of a sweep, with Holm over the sweep's
  declared cells (a cell not run counts as p = 1);
* :func:`value_text`: one number (a mean ± std, or a paired difference with its interval).

Differences go through the claims' measures (:mod:`.measures`), so a number in the results
and the same comparison in the claims table are computed by one piece of code.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

from ..decide import comparison_verdict, holm_declared
from ..keys import ModelKey
from ..stats import format_ci, format_mean_std, format_p, mean_std, pairwise_interval
from .measures import MEASURES, PAIRWISE, Effect
from .points import SELECTION, Run, RunStore, display, seed_rows, split_model, values
from .run import ALPHA, PRIMARY, summarise

__all__ = ["run_table", "sweep_table", "value_text", "effect_of"]


def effect_of(store: RunStore, run: str, a: str, b: str, metric: str, at: str) -> Effect:
    """``a - b`` (each ``[RUN:]method/model``), paired by seed: churn and js as pair means."""
    ta, tb = (_term(run, x) for x in (a, b))
    if metric in PAIRWISE:
        claim = {"measure": "pairwise", "metric": metric, "treatment": ta, "control": tb}
        return MEASURES["pairwise"].evaluate(claim, store)
    claim = {"measure": "paired", "metric": metric, "at": at, "treatment": ta, "control": tb}
    return MEASURES["paired"].evaluate(claim, store)


def _term(run: str, model: str) -> dict[str, str]:
    if ":" in model:
        other, model = model.split(":", 1)
        return {"run": other, "model": model}
    return {"run": run, "model": model}


def _unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


def _single(store: RunStore, run: str, model: str, metric: str, at: str) -> tuple[float, float]:
    t = _term(run, model)
    r = store.get(t["run"])
    if metric in PAIRWISE:
        key = split_model(t["model"])
        seeds = list(seed_rows(r, t["model"]))
        probs = [r.arrays[replace(key, seed=s).format("probs")] for s in seeds]
        p = pairwise_interval(PAIRWISE[metric], probs)
        return p["mean"], p["se"]
    vals, _ = values(r, t["model"], metric, at)
    return mean_std(list(vals.values()))


def value_text(
    store: RunStore,
    run: str,
    a: str,
    b: str | None,
    metric: str,
    *,
    at: str = "final",
    show: str = "",
    digits: int | None = None,
    unit: str | None = None,
) -> str:
    """One number for prose: ``a``'s mean ± std (``show="mean"``: the mean alone), or ``a - b``
    with its 95% interval (``show="mean"``: the mean; ``show="full"``: with n and p)."""
    scale, u_value, u_diff, d = display(metric)
    digits = d if digits is None else digits
    if b is None:
        mean, std = _single(store, run, a, metric, at)
        text = f"{mean * scale:.{digits}f}" if show == "mean" else None
        text = text or format_mean_std(mean * scale, std * scale, digits)
        return _unit(text, u_value if unit is None else unit)
    e = effect_of(store, run, a, b, metric, at)
    shown = {"mean": e.mean * scale, "lo": e.lo * scale, "hi": e.hi * scale}
    text = f"{shown['mean']:+.{digits}f}" if show == "mean" else format_ci(shown, digits)
    text = _unit(text, u_diff if unit is None else unit)
    if show == "full":
        text += f" (n = {e.n}, p = {format_p(e.p)})"
    return text


# --------------------------------------------------------------------------- a run's table


def run_family(run: Run) -> tuple[dict[tuple[str, str], float], int]:
    """The run's family as ``summary.md`` corrects it (:func:`.run.summarise`): ``{(model,
    "final" | "best"): Holm p}`` of the differences to the baseline, and the family's size."""
    s = summarise(run.config, run.rows, run.arrays)
    out = {}
    for e in s["entries"]:
        for key, at in (("diff_final", "final"), ("diff_best", "best")):
            if key in e and not e[key]["oracle"]:
                out[(ModelKey(e["method"], e["model"]).format(), at)] = e[key]["p_holm"]
    return out, s["family"]["m"]


def _shown_models(run: Run, key: str) -> list[str]:
    """Every model, but an online model that is the baseline's own trajectory only once."""
    models = run.models()
    if "baseline/online" not in models:
        return models
    base = seed_rows(run, "baseline/online")
    out = []
    for m in models:
        if m.endswith("/online") and m != "baseline/online":
            rows = seed_rows(run, m)
            same = all(
                [r.get(key) for r in rows[s]] == [r.get(key) for r in base.get(s, [])] for s in rows
            )
            if same:
                continue
        out.append(m)
    return out


def _extras(run: Run, asked: list[str] | None) -> list[str]:
    if asked is not None:
        return asked
    kind = run.kind
    final_keys = {k for r in run.rows for k in r}
    want = {
        "classification": ["test_nll", "ece100_mass", "ece100_mass_ts", "churn", "train_loss"],
        "regression": ["test_mae", "train_loss"],
        "lm": ["test_loss", "train_loss"],
        "generative": ["test_sw", "test_logp"],
    }[kind]
    return [k for k in want if k in final_keys or (k == "churn" and run.arrays)]


def _name(metric: str) -> str:
    scale, unit, _, _ = display(metric)
    return metric.split(".", 1)[-1].replace("_", " ") + (f" ({unit})" if unit else "")


def _model_cells(
    store: RunStore, run: Run, model: str, key: str, points: list[str], diffs: dict, adjusted: dict
) -> list[str]:
    scale, _, _, digits = display(key)
    cells = []
    for at in points:
        mean, std = _single(store, run.name, model, key, at)
        cells.append(format_mean_std(mean * scale, std * scale, digits))
        if at == "best":
            epoch, _ = _single(store, run.name, model, "epoch", "best")
            cells.append(f"{epoch:.1f}")
        d = diffs.get((model, at))
        if d is None:
            cells += ["—", "—"]
        else:
            shown = {k: getattr(d, k) * scale for k in ("mean", "lo", "hi")}
            q = adjusted.get((model, at), math.nan)
            higher = SELECTION[run.kind][1]
            word = comparison_verdict(
                d.mean, q, d.n, higher=higher, alpha=ALPHA, against="baseline"
            )
            cells += [format_ci(shown, digits), f"{format_p(q)}: {word}"]
    return cells


def run_table(
    store: RunStore,
    run: Run,
    extras: list[str] | None = None,
    *,
    models: list[str] | None = None,
    primary: bool = True,
) -> list[str]:
    """The run's main table (see the module docstring); markdown lines. ``extras``: further
    metrics at the final epoch (``analysis.<key>`` included); ``models``: the rows (default:
    every model, the baseline's shared trajectory once); ``primary=False`` leaves out the
    primary metric and its differences."""
    key = PRIMARY[run.kind][0]
    points = (["final", "best"] if run.has_validation else ["final"]) if primary else []
    models = models or _shown_models(run, key)
    base = "baseline/online" if "baseline/online" in models else None
    diffs = {
        (m, at): effect_of(store, run.name, m, base, key, at)
        for m in models
        if base and m != base
        for at in points
    }
    adjusted, family = run_family(run)
    extras = _extras(run, extras)
    _, _, u_diff, _ = display(key)
    head = ["method", "model"]
    for at in points:
        where = "final" if at == "final" else "val-best"
        head += [f"{where} {_name(key)}"] + (["epoch of best"] if at == "best" else [])
        head += [f"Δ {where} ({u_diff}) [95% CI]" if u_diff else f"Δ {where} [95% CI]"]
        head += ["p (Holm): verdict"]
    head += [_name(k) for k in extras]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in models:
        cells = _model_cells(store, run, m, key, points, diffs, adjusted)
        for k in extras:
            scale, _, _, digits = display(k)
            mean, spread = _single(store, run.name, m, k, "final")
            cells.append(format_mean_std(mean * scale, spread * scale, digits))
        name = split_model(m)
        lines.append("| " + " | ".join([name.method, name.label.format(), *cells]) + " |")
    return lines + _table_notes(run, points, family, extras)


def _table_notes(run: Run, points: list[str], family: int, extras: list[str]) -> list[str]:
    n = len(run.config["config"]["seeds"])
    text = f"Mean ± sample std over {n} seeds."
    if points:
        text += (
            " Δ: paired difference to baseline/online (same seed) with a 95% t-interval; "
            "p (Holm): two-sided t test, Holm-corrected over the run's family, the "
            f"{family} comparisons its summary.md shows (so both give the same p), with the "
            "claims table's verdict words."
        )
    if "best" in points:
        text += " val-best: each seed's epoch with the best validation metric (the test set never chooses)."
    elif points:
        text += " This run has no validation split: final epoch only."
    if extras:
        text += f" {', '.join(extras)}: " + (
            "the final weights."
            if all(k.startswith("analysis.") for k in extras)
            else "at the final epoch."
        )
    if "churn" in extras:
        text += " churn: mean over seed pairs ± its jackknife standard error."
    return ["", text]


# --------------------------------------------------------------------------- a sweep's table


def sweep_table(store: RunStore, sweep: str, a: str, b: str, metric: str, at: str) -> list[str]:
    """``a - b`` in every cell of the sweep folder ``sweep``, Holm over the cells measured."""
    saved = json.loads((store.root / sweep / "sweep.json").read_text())
    cells = [(c["name"], c.get("point", {})) for c in saved["cells"]]
    axes = list(dict.fromkeys(k for _, point in cells for k in point))
    scale, _, u_diff, digits = display(metric)
    effects: dict[str, Effect | None] = {}
    for name, _ in cells:
        run = f"{sweep}/cells/{name}"
        effects[name] = effect_of(store, run, a, b, metric, at) if store.get(run) else None
    measured = [n for n, e in effects.items() if e is not None]
    ps = [effects[n].p if effects[n] is not None else math.nan for n, _ in cells]
    adjusted = dict(zip([n for n, _ in cells], holm_declared(ps, len(cells))))
    higher = next((SELECTION[store.get(f"{sweep}/cells/{n}").kind][1] for n in measured), True)
    head = [*axes, f"{a} − {b} ({u_diff}) [95% CI]", "n", "p", "p (Holm)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, point in cells:
        e = effects[name]
        vals = [_fmt_axis(point.get(k, "")) for k in axes]
        if e is None:
            lines.append("| " + " | ".join([*vals, "not run yet", "—", "—", "—", "—"]) + " |")
            continue
        ci = format_ci({k: getattr(e, k) * scale for k in ("mean", "lo", "hi")}, digits)
        q = adjusted[name]
        word = comparison_verdict(e.mean, q, e.n, higher=higher, alpha=ALPHA, against=b)
        cells_ = [*vals, ci, str(e.n), format_p(e.p), format_p(q), word]
        lines.append("| " + " | ".join(cells_) + " |")
    lines += [
        "",
        f"Paired by seed within each cell; p (Holm): over the sweep's {len(cells)} cells, a "
        "cell not run yet counting as p = 1 (so no verdict depends on which cells exist); "
        "verdicts in the claims table's words, for the claim that the first beats the second.",
    ]
    return lines


def _fmt_axis(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
