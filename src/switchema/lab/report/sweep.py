"""The combined table and plots of a sweep folder (``sweep.md``, ``sweep_<axis>.png``).

Drawn from the saved cells only: every cell folder is an ordinary run folder, summarised by
:func:`switchema.lab.report.run.summarise`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..checkpoint import atomic_write_text
from ..config import SETTINGS, canonical_keys
from ..stats import format_ci, format_mean_std, mean_std
from .run import PRIMARY, load_run, summarise
from .style import COLORS, STYLE

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
            for e in s["entries"]:
                if not e["main"]:
                    continue
                entries.append(
                    {
                        "method": e["method"],
                        "model": e["model"],
                        "seeds": e["seeds"],
                        "final": e["final"][s["key"]],
                        "best": e["best"],
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
    return {"axes": axes, "fixed": fixed, "cells": out}


def write_sweep_report(run_dir: str | Path, *, status: str | None = None) -> Path:
    """Write ``sweep.md``, ``sweep_results.json`` and ``sweep_<axis>.png``; returns the table's
    path. ``status``: a note on a sweep that is not finished (in progress, interrupted)."""
    run = Path(run_dir)
    res = collect(run)
    atomic_write_text(run / "sweep_results.json", json.dumps(res, indent=2, default=float))
    metrics = {c["metric"] for c in res["cells"] if c["metric"]}
    one = metrics.pop() if len(metrics) == 1 else None
    head = [
        *res["axes"],
        "method",
        f"final {one}" if one else "final",
        "best",
        "Δ vs baseline [95% CI]",
        "Δ vs EMA [95% CI]",
        "ECE (15 bins)",
        "failed jobs",
    ]
    lines = _header(res, status) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in res["cells"]:
        lines += _cell_lines(c, res["axes"], one)
    lines += _failure_lines(res)
    plots = _plot_axes(run, res)
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`{p.name}`" for p in plots) + "."]
    lines += ["", "Per-cell tables and plots: `cells/<cell>/summary.md`."]
    atomic_write_text(run / "sweep.md", "\n".join(lines) + "\n")
    return run / "sweep.md"


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
        "average otherwise), at the final epoch: mean ± sample std over seeds (n = seeds that "
        "finished). Δ: paired difference over seeds with a 95% t-interval. Best: the best epoch "
        "per seed (an optimistic, test-set-selected number).",
        "",
    ]


def _cell_lines(c: dict[str, Any], axes: list[str], one: str | None) -> list[str]:
    """The table rows of one cell: one per method (failed methods included)."""
    kind = c["kind"]
    scale = PRIMARY[kind][2] if kind else 1.0
    point = [_fmt_value(a, c["point"][a]) for a in axes]
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
        cells = [
            *point,
            e["method"],
            (f"{c['metric']} " if not one else "") + _pp(e["final"], scale),
            _pp(e["best"], scale),
            ci["diff_vs_baseline"],
            ci["diff_vs_ema"],
            _pp(e["ece15"], 100.0) if e.get("ece15") else "—",
            str(failed_by_method.get(e["method"], 0)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seen = {e["method"] for e in c["entries"]}
    for m, n in failed_by_method.items():
        if m not in seen:
            lines.append(
                "| " + " | ".join([*point, m, "all failed", "—", "—", "—", "—", str(n)]) + " |"
            )
    if not c["written"]:
        lines.append("| " + " | ".join([*point, "—", "not finished yet", *["—"] * 5]) + " |")
    return lines


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


def _res_axis(res: dict[str, Any], axis: str) -> str:
    values = list(dict.fromkeys(_fmt_value(axis, c["point"][axis]) for c in res["cells"]))
    return ", ".join(values)


def _fmt_value(axis: str, value: Any) -> str:
    if SETTINGS[axis].several and isinstance(value, list):
        return ", ".join(f"{v:g}" for v in value)
    return str(value)


def _scale_ci(d: dict[str, Any], scale: float) -> dict[str, Any]:
    return {k: scale * v if isinstance(v, float) else v for k, v in d.items()}


def _plot_axes(run: Path, res: dict[str, Any]) -> list[Path]:
    """One figure per swept axis: metric vs the axis, one panel per setting of the others."""
    axes = res["axes"]
    if not axes or not any(c["entries"] for c in res["cells"]):
        return []
    paths = []
    for axis in axes:
        others = [a for a in axes if a != axis]
        xs = list(dict.fromkeys(_fmt_value(axis, c["point"][axis]) for c in res["cells"]))
        panels: dict[tuple, dict[str, dict[str, list[float]]]] = {}
        for c in res["cells"]:
            if not c["kind"]:
                continue
            key = (c["kind"], *(_fmt_value(a, c["point"][a]) for a in others))
            for e in c["entries"]:
                panels.setdefault(key, {}).setdefault(e["method"], {})[
                    _fmt_value(axis, c["point"][axis])
                ] = e["final"]
        keys = list(panels)[:16]
        if not keys:
            continue
        ncol = min(4, len(keys))
        nrow = -(-len(keys) // ncol)
        with plt.rc_context(STYLE):
            fig, axs = plt.subplots(
                nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False, sharey=False
            )
            for ax, key in zip(axs.flat, keys):
                kind = key[0]
                metric, _, scale, unit = PRIMARY[kind]
                for method, by_x in panels[key].items():
                    pos = [i for i, x in enumerate(xs) if x in by_x]
                    vals = [np.asarray(by_x[xs[i]], float) * scale for i in pos]
                    mean = np.array([v.mean() for v in vals])
                    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
                    color = COLORS.get(method)
                    ax.plot(pos, mean, "o-", color=color, label=method, lw=1.5, ms=4)
                    ax.fill_between(pos, mean - std, mean + std, color=color, alpha=0.18, lw=0)
                ax.set_xticks(range(len(xs)), xs, rotation=30 if len(xs) > 4 else 0)
                ax.set_xlabel(axis)
                ax.set_ylabel(
                    f"final {metric.replace('_', ' ')}"
                    + (f" ({unit.strip()})" if unit.strip() else "")
                )
                title = ", ".join(f"{a}={v}" for a, v in zip(others, key[1:]))
                ax.set_title(title or f"{metric} vs {axis}", fontsize=8)
            for ax in list(axs.flat)[len(keys) :]:
                ax.set_visible(False)
            axs.flat[0].legend(loc="best")
            fig.suptitle(f"final metric vs {axis}: mean over seeds, band ± 1 std", fontsize=9)
            fig.tight_layout()
            path = run / f"sweep_{axis}.png"
            fig.savefig(path)
            plt.close(fig)
        paths.append(path)
    return paths
