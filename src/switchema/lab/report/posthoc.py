"""The post-hoc EMA section of ``summary.md`` and its figure, from a run's metric rows.

A run with the ``posthoc`` method holds, after its last epoch, one row per synthesised width
(model ``posthoc@<width>``, with its ``sigma_rel``, the profile ``fit_residual`` and, where the
same width was also tracked directly, ``check_distance``) and one per directly tracked width
(``tracked@<width>``). This module turns them into: the test metric against the EMA width
(mean ± std over seeds, paired difference to the baseline), the best width chosen on the
validation metric when the run has a validation split (else on the test metric, marked as an
oracle), and the check of the synthesis against the directly tracked EMAs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ...profiles import sigma_rel_to_decay
from ..keys import ModelLabel
from ..stats import format_ci, format_mean_std, mean_std, paired_difference
from .style import STYLE, Figures, color, line_style, plain_log_axis

__all__ = ["final_only", "posthoc_lines", "posthoc_data", "plot_posthoc"]


def _final_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last = max((r["epoch"] for r in rows if r["method"] == "posthoc"), default=None)
    return [r for r in rows if r["method"] == "posthoc" and r["epoch"] == last]


def posthoc_data(rows: list[dict[str, Any]], key: str, higher: bool) -> dict[str, Any] | None:
    """Per synthesised width: per-seed test metric, selection metric, residual, check distance."""
    final = _final_rows(rows)
    if not final:
        return None
    sel_key = "val_" + key.removeprefix("test_")
    on_val = all(sel_key in r for r in final if _kind(r) == "posthoc")
    sel_key = sel_key if on_val else key
    base = {
        r["seed"]: r[key]
        for r in rows
        if r["method"] == "baseline" and r["model"] == "online" and r["epoch"] == final[0]["epoch"]
    }
    widths: dict[float, dict[str, Any]] = defaultdict(lambda: defaultdict(dict))
    for r in final:
        if _kind(r) == "posthoc":
            w = widths[r["sigma_rel"]]
            w["test"][r["seed"]] = r[key]
            w["select"][r["seed"]] = r[sel_key]
            w["residual"][r["seed"]] = r["fit_residual"]
            if "check_distance" in r:
                w["distance"][r["seed"]] = r["check_distance"]
    tracked = {
        (ModelLabel.parse(r["model"]).value, r["seed"]): r[key]
        for r in final
        if _kind(r) == "tracked"
    }
    table = {}
    for width, w in sorted(widths.items()):
        seeds = sorted(w["test"])
        entry = {"seeds": seeds, "test": [w["test"][s] for s in seeds]}
        entry["select"] = [w["select"][s] for s in seeds]
        entry["residual"] = max(w["residual"].values())
        if base and all(s in base for s in seeds):
            entry["diff"] = paired_difference(entry["test"], [base[s] for s in seeds])
        if w["distance"] and all((width, s) in tracked for s in seeds):
            entry["distance"] = [w["distance"][s] for s in seeds]
            entry["check_diff"] = paired_difference(
                entry["test"], [tracked[(width, s)] for s in seeds]
            )
        table[width] = entry
    means = {w: float(np.mean(e["select"])) for w, e in table.items()}
    best = (max if higher else min)(means, key=means.get)
    steps = max(r["step"] for r in final)
    base_values = [base[s] for s in sorted(base)] if base else []
    return {
        "table": table,
        "best": best,
        "on_validation": on_val,
        "steps": steps,
        "baseline": base_values,
    }


def posthoc_lines(
    data: dict[str, Any] | None, scale: float, unit: str, name: str, digits: int
) -> list[str]:
    """The ``summary.md`` section (empty without a ``posthoc`` method)."""
    if data is None:
        return []
    how = "validation" if data["on_validation"] else "test set (oracle: no validation split)"
    lines = [
        "",
        "## Post-hoc EMA: the test metric against the EMA width",
        "",
        f"Synthesised after training from the snapshots of the tracked power EMAs; `decay` is the "
        f"constant per-step decay with the same relative width at the last step "
        f"(t = {data['steps']}). The best width is chosen on the {how}.",
        "",
        f"| sigma_rel | decay at t | {name}{unit} | Δ vs baseline [95% CI] | profile residual |",
        "|---|---|---|---|---|",
    ]
    for width, e in data["table"].items():
        mark = " **(best)**" if width == data["best"] else ""
        mean, std = mean_std([v * scale for v in e["test"]])
        diff = e.get("diff")
        lines.append(
            f"| {width:g}{mark} | {sigma_rel_to_decay(width, data['steps']):.5f} | "
            f"{format_mean_std(mean, std, digits)} | "
            f"{_ci(diff, scale, digits)} | {e['residual']:.2e} |"
        )
    checks = [(w, e) for w, e in data["table"].items() if "distance" in e]
    if checks:
        lines += [
            "",
            "Check: synthesised against the same width tracked directly in the same run "
            "(relative weight distance ||synth - tracked|| / ||tracked||; test metric "
            "difference synthesised - tracked, paired by seed).",
            "",
            f"| sigma_rel | relative weight distance | Δ {name} [95% CI] |",
            "|---|---|---|",
        ]
        for width, e in checks:
            dist = max(e["distance"])
            lines.append(
                f"| {width:g} | {dist:.1e} (max over seeds) | {_ci(e['check_diff'], scale, digits)} |"
            )
    return lines


def _ci(d: dict[str, Any] | None, scale: float, digits: int) -> str:
    if d is None:
        return "—"
    scaled = {k: (v * scale if isinstance(v, float) else v) for k, v in d.items()}
    return format_ci(scaled, digits)


def plot_posthoc(
    data: dict[str, Any], scale: float, ylabel: str, figures: Figures, folder: Any, stem: str
) -> Any:
    """The metric against ``sigma_rel`` (log axis); the equivalent decays on the top axis."""
    import matplotlib.pyplot as plt

    widths = list(data["table"])
    mean = np.array([np.mean(data["table"][w]["test"]) * scale for w in widths])
    std = np.array([_std(data["table"][w]["test"]) * scale for w in widths])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.2, 4.2))
        ax.plot(widths, mean, marker="o", color=color("ema"), label="post-hoc EMA (synthesised)")
        ax.fill_between(widths, mean - std, mean + std, color=color("ema"), alpha=0.2, lw=0)
        if data["baseline"]:
            ax.axhline(np.mean(data["baseline"]) * scale, **line_style("baseline", "online"))
            ax.plot([], [], label="baseline (online, final)", **line_style("baseline", "online"))
        ax.axvline(data["best"], color="0.5", ls=":", label=f"best width {data['best']:g}")
        ax.set_xscale("log")
        plain_log_axis(ax, "x")
        ax.set_xlabel("EMA relative width sigma_rel (mean ± std over seeds)")
        ax.set_ylabel(ylabel)
        top = ax.secondary_xaxis("top")
        ticks = [w for w in widths if w in (0.01, 0.03, 0.07, 0.17)] or widths[::3]
        top.set_xticks(ticks)
        top.set_xticklabels([f"{sigma_rel_to_decay(w, data['steps']):.4f}" for w in ticks])
        top.set_xlabel(f"constant decay per step with the same width at step {data['steps']}")
        ax.legend(loc="best")
        return figures.save(fig, folder, stem)


def final_only(model: str) -> bool:
    """Models evaluated after the last epoch only (synthesised or tracked for the check)."""
    return ModelLabel.parse(model).kind in ("posthoc", "tracked")


def _kind(row: dict[str, Any]) -> str:
    return ModelLabel.parse(row["model"]).kind


def _std(values: list[float]) -> float:
    _, std = mean_std(values)
    return 0.0 if math.isnan(std) else std
