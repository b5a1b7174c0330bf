"""The combined table and plots of a sweep folder (``sweep.md``, ``sweep_<axis>.png``).

Drawn from the saved cells only: every cell folder is an ordinary run folder, summarised by
:func:`switchema.lab.report.run.summarise`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_text
from ..config import canonical_keys
from ..decide import comparison_verdict
from ..stats import format_ci, format_mean_std, format_p, mean_std
from .export import write_csv
from .run import ALPHA, PRIMARY, correct, load_run, summarise
from .style import Figures
from .sweep_plots import fmt_value, plot_axes

__all__ = ["collect", "write_sweep_report"]


def _pp(values: list[float], scale: float) -> str:
    if not values:
        return "—"
    mean, std = mean_std([scale * v for v in values])
    return f"{format_mean_std(mean, std)} (n={len(values)})"


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Per cell and method: the seeds' final and best primary metric, paired differences."""
    run = Path(run_dir)
    saved = json.loads((run / "sweep.json").read_text())
    # settings under today's names, whichever version wrote the folder
    axes = list(canonical_keys(saved["grid"]["axes"], "sweep.json"))
    fixed = canonical_keys(saved["grid"]["fixed"], "sweep.json")
    out = []
    for cell in saved["cells"]:
        cdir = run / "cells" / cell["name"]
        failures = (
            json.loads((cdir / "failures.json").read_text())
            if (cdir / "failures.json").exists()
            else []
        )
        entries: list[dict[str, Any]] = []
        kind = None
        if (cdir / "metrics.jsonl").exists() and (cdir / "metrics.jsonl").stat().st_size:
            config, rows, arrays = load_run(cdir)
            s = summarise(config, rows, arrays)
            kind = s["kind"]
            val_key = "val_" + s["key"].removeprefix("test_")
            for e in s["entries"]:
                if not e["main"]:
                    continue
                entries.append(
                    {
                        "method": e["method"],
                        "model": e["model"],
                        "seeds": e["seeds"],
                        "final": e["final"][s["key"]],
                        "val_final": e["final"].get(val_key),
                        "best": e["best"],
                        "selected_on": s["selected_on"],
                        "ece15": e["final"].get("ece15"),
                        "diff_vs_baseline": e.get("diff_final"),
                        "diff_vs_ema": e.get("diff_vs_ema"),
                    }
                )
        elif (cdir / "config.json").exists():
            kind = json.loads((cdir / "config.json").read_text())["task"]["kind"]
        out.append(
            {
                "cell": cell["name"],
                "written": (cdir / "cell.json").is_file(),
                "point": canonical_keys(cell["point"], "sweep.json"),
                "kind": kind,
                "metric": PRIMARY[kind][0] if kind else None,
                "entries": entries,
                "failures": failures,
            }
        )
    for c in out:  # the methods each cell declares, for the family of a cell not ended
        c["methods"] = list(c["point"].get("methods", fixed.get("methods", [])))
    res = {"axes": axes, "fixed": fixed, "cells": out}
    res["family"] = {"m": _correct_sweep(res), "alpha": ALPHA}
    return res


def _correct_sweep(res: dict[str, Any]) -> int:
    """Holm-correct every comparison of the sweep's table together (:func:`correct`); a
    comparison that several cells share (the same jobs: e.g. EMA vs baseline for every switch
    interval) is one hypothesis and counts once. Returns the family's size."""
    unique: dict[tuple, dict[str, Any]] = {}
    for c in res["cells"]:
        for e in c["entries"]:
            for k in ("diff_vs_baseline", "diff_vs_ema"):
                d = e.get(k)
                if d is not None:
                    key = (k, e["method"], *(d[x] for x in ("mean", "lo", "hi", "n", "p")))
                    unique.setdefault(repr(key), d)
                    e[k] = unique[repr(key)]
    return correct(list(unique.values()), missing=sum(map(_declared, res["cells"])))


def _declared(cell: dict[str, Any]) -> int:
    """Comparisons a cell without results will add (each method to the baseline, each Switch
    EMA to plain EMA): counted as p = 1, so no verdict depends on which cells have ended."""
    if cell["entries"]:
        return 0
    methods = cell["methods"]
    n = len(methods) - 1 if "baseline" in methods else 0
    return n + (sum(m.startswith("sema") for m in methods) if "ema" in methods else 0)


def write_sweep_report(
    run_dir: str | Path, *, status: str | None = None, figures: Figures | None = None
) -> Path:
    """Write ``sweep.md``, ``sweep_results.json``, ``sweep_metrics.csv`` and a figure per swept
    axis; returns the table's path. ``status``: a note on a sweep that is not finished (in
    progress, interrupted); ``figures``: the plots' format and resolution."""
    run = Path(run_dir)
    figures = figures or Figures()
    res = collect(run)
    atomic_write_text(run / "sweep_results.json", json.dumps(res, indent=2, default=float))
    metrics = {c["metric"] for c in res["cells"] if c["metric"]}
    one = metrics.pop() if len(metrics) == 1 else None
    best = _best(res)
    lines = _header(res, status) + _table_head(res, one)
    for c in res["cells"]:
        lines += _cell_lines(res, c, one, best)
    lines += _best_lines(res, best)
    lines += _failure_lines(res)
    _write_rows(run, res)
    plots = plot_axes(run, res, figures)
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`{p.name}`" for p in plots) + "."]
    lines += [
        "",
        "Per-cell tables and plots: `cells/<cell>/summary.md`. Every number of every cell, as "
        "one table: `sweep_metrics.csv` (one row per cell, seed, method, model and epoch; "
        "fractions, not %).",
    ]
    atomic_write_text(run / "sweep.md", "\n".join(lines) + "\n")
    return run / "sweep.md"


def _unit(metric: str) -> tuple[str, bool]:
    """(unit text, higher is better) of a primary metric."""
    kind = next(k for k, v in PRIMARY.items() if v[0] == metric)
    _, higher, _, unit = PRIMARY[kind]
    return unit.strip(), higher


def _direction(metric: str) -> str:
    unit, higher = _unit(metric)
    return (f"{unit}, " if unit else "") + ("higher" if higher else "lower") + " is better"


def _table_head(res: dict[str, Any], one: str | None) -> list[str]:
    name = one.replace("_", " ") if one else "metric"
    pp = " (pp)" if one and one.endswith("acc") else ""
    head = [
        *res["axes"],
        "method",
        f"final {name} ({_direction(one)})" if one else "final (unit in each cell)",
        "at the val-best epoch",
        f"Δ vs baseline{pp} [95% CI]",
        "p / Holm p",
        f"Δ vs EMA{pp} [95% CI]",
        "p / Holm p",
        "ECE-15 (%, lower is better)",
        "failed jobs",
    ]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def _header(res: dict[str, Any], status: str | None) -> list[str]:
    axes = res["axes"]
    waiting = sum(not c["written"] for c in res["cells"])
    return [
        f"# Sweep: {len(res['cells'])} cell(s)",
        "",
        *([f"**Run state:** {status}", ""] if status else []),
        *(
            [
                f"{waiting} of {len(res['cells'])} cells are not written yet (their jobs have not "
                "all ended): their rows say so.",
                "",
            ]
            if waiting
            else []
        ),
        "Swept: "
        + ("; ".join(f"`{a}` = {_res_axis(res, a)}" for a in axes) or "nothing (one cell)")
        + ".",
        "Fixed: " + ", ".join(f"`{k}` = {json.dumps(v)}" for k, v in res["fixed"].items()) + ".",
        "",
        "Each row is one cell and method, judged by its main model (online for the baseline, the "
        "average otherwise; of several decays, the one best on validation), at the final "
        "epoch: mean ± sample std over seeds (n = seeds that finished); accuracies and ECE in "
        "%, their differences in percentage points (pp). Δ: paired difference over seeds with "
        "a 95% t-interval (not corrected); p: paired t test; Holm p: corrected by Holm's "
        f"method over the family of all {res['family']['m']} distinct comparisons of this "
        "table (a comparison several cells share, the same jobs, counts once). A difference "
        f"is significant only if its Holm p < {res['family']['alpha']:g} (bold). At the "
        "val-best epoch: the test metric at each seed's epoch with the best validation "
        "metric; marked *oracle (test)* in cells without a validation split, where the test "
        "set chose it. The best final value of each task, chosen on validation, is in bold.",
        "",
    ]


def _task(res: dict[str, Any], c: dict[str, Any]) -> str:
    return str(c["point"].get("task", res["fixed"].get("task", "")))


def _best(res: dict[str, Any]) -> dict[tuple[str, str], tuple[float, str, str, bool]]:
    """(task, metric) -> (its mean final test value, cell, method, chosen on validation):
    the cell and method with the best mean final validation metric, by the metric's
    direction (without validation metrics anywhere, the best test value: an oracle). One
    per task, since values of different tasks are not comparable."""
    out: dict[tuple[str, str], tuple[float, str, str, bool]] = {}
    score: dict[tuple[str, str], float] = {}
    for c in res["cells"]:
        if not c["metric"]:
            continue
        _, higher = _unit(c["metric"])
        key = (_task(res, c), c["metric"])
        on_val = all(e.get("val_final") for cc in res["cells"] for e in cc["entries"])
        for e in c["entries"]:
            value = float(np.mean(e["val_final"] if on_val else e["final"]))
            old = score.get(key)
            if old is None or (value > old if higher else value < old):
                score[key] = value
                out[key] = (float(np.mean(e["final"])), c["cell"], e["method"], on_val)
    return out


def _best_lines(res: dict[str, Any], best: dict[tuple[str, str], tuple]) -> list[str]:
    lines = [""]
    several = len({task for task, _ in best}) > 1
    for (task, metric), (mean, cell, method, on_val) in best.items():
        kind = next(k for k, v in PRIMARY.items() if v[0] == metric)
        scale, unit = PRIMARY[kind][2], PRIMARY[kind][3]
        how = (
            "chosen on the validation split"
            if on_val
            else "oracle (test): chosen on the test set, there being no validation split"
        )
        lines.append(
            f"Best final {metric.replace('_', ' ')}{f' on {task}' if several else ''} "
            f"({_direction(metric)}; {how}): **{scale * mean:.4g}{unit}**, {method} in cell "
            f"`{cell}`."
        )
    return lines if len(lines) > 1 else []


def _cell_lines(
    res: dict[str, Any], c: dict[str, Any], one: str | None, best: dict[tuple[str, str], tuple]
) -> list[str]:
    """The table rows of one cell: one per method (failed methods included)."""
    kind = c["kind"]
    scale = PRIMARY[kind][2] if kind else 1.0
    unit = PRIMARY[kind][3] if kind else ""
    higher = PRIMARY[kind][1] if kind else True
    point = [fmt_value(a, c["point"][a]) for a in res["axes"]]
    task = _task(res, c)
    failed_by_method: dict[str, int] = {}
    for f in c["failures"]:
        for m in f["methods"]:
            failed_by_method[m] = failed_by_method.get(m, 0) + 1
    lines = []
    for e in c["entries"]:
        ci = {
            k: (format_ci(_scale_ci(e[k], scale)) if e.get(k) else "—")
            for k in ("diff_vs_baseline", "diff_vs_ema")
        }
        final = _pp(e["final"], scale)
        if best.get((task, c["metric"]), (None,) * 4)[1:3] == (c["cell"], e["method"]):
            final = f"**{final}**"
        if not one:
            final = f"{c['metric'].replace('_', ' ')}{f' ({unit.strip()})' if unit else ''} {final}"
        cells = [
            *point,
            e["method"],
            final,
            _pp(e["best"], scale) + (" *oracle (test)*" if e.get("selected_on") == "test" else ""),
            ci["diff_vs_baseline"],
            _p_text(e.get("diff_vs_baseline"), higher, "baseline"),
            ci["diff_vs_ema"],
            _p_text(e.get("diff_vs_ema"), higher, "ema"),
            _pp(e["ece15"], 100.0) if e.get("ece15") else "—",
            str(failed_by_method.get(e["method"], 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seen = {e["method"] for e in c["entries"]}
    for m, n in failed_by_method.items():
        if m not in seen:
            lines.append("| " + " | ".join([*point, m, "all failed", *["—"] * 6, str(n)]) + " |")
    if not c["written"]:
        lines.append("| " + " | ".join([*point, "—", "not finished yet", *["—"] * 7]) + " |")
    return lines


def _p_text(d: dict[str, Any] | None, higher: bool, against: str) -> str:
    """``p / Holm p: verdict`` of a difference, the Holm p bold when significant; the
    verdict in the claims table's words (:func:`~switchema.lab.decide.comparison_verdict`)."""
    if d is None or "p_holm" not in d:
        return "—"
    holm = format_p(d["p_holm"])
    p = d["p_holm"] if not math.isnan(d["p"]) else math.nan
    word = comparison_verdict(d["mean"], p, d["n"], higher=higher, alpha=ALPHA, against=against)
    return f"{format_p(d['p'])} / {f'**{holm}**' if d['significant'] else holm}: {word}"


def _failure_lines(res: dict[str, Any]) -> list[str]:
    n_fail = sum(len(c["failures"]) for c in res["cells"])
    if not n_fail:
        return []
    lines = ["", f"## Failed jobs ({n_fail})", "", "| cell | job | error |", "|---|---|---|"]
    for c in res["cells"]:
        for f in c["failures"]:
            err = str(f["error"]).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {c['cell']} | `{f['job']}` | {err} |")
    return lines


def _write_rows(run: Path, res: dict[str, Any]) -> None:
    """``sweep_metrics.csv``: every written cell's rows, with the cell and its axis values."""
    rows = []
    for c in res["cells"]:
        path = run / "cells" / c["cell"] / "metrics.jsonl"
        if not c["written"] or not path.is_file():
            continue
        point = {a: fmt_value(a, c["point"][a]) for a in res["axes"]}
        with open(path) as f:
            rows += [{"cell": c["cell"], **point, **json.loads(x)} for x in f if x.strip()]
    if rows:
        write_csv(rows, run / "sweep_metrics.csv")


def _res_axis(res: dict[str, Any], axis: str) -> str:
    values = list(dict.fromkeys(fmt_value(axis, c["point"][axis]) for c in res["cells"]))
    return ", ".join(values)


def _scale_ci(d: dict[str, Any], scale: float) -> dict[str, Any]:
    return {k: scale * v if isinstance(v, float) else v for k, v in d.items()}
