"""The figures of a sweep folder: the final metric against each swept axis.

One figure per swept axis; one row of panels per metric (accuracy, MSE and bits per
character never share a y-axis), one panel per setting of the other axes, each panel with
only the axis values it has; the panels of one metric share their y-limits, so they compare
at a glance. A categorical axis (a task, an optimizer, a switch interval) is
drawn as categories: a point with a ± 1 std error bar per method, methods side by side and no
line joining categories. A numeric axis (a decay, a learning rate) is drawn in order, lines
joining its values and a ± 1 std band.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..config import SETTINGS
from .run import PRIMARY
from .style import STYLE, Figures, color

__all__ = ["fmt_value", "is_categorical", "plot_axes", "share_y"]

_MARKERS = {"baseline": "o", "ema": "s", "sema": "D", "sema-openmixup": "v", "swa": "^"}


def fmt_value(axis: str, value: Any) -> str:
    """An axis value as tables and tick labels show it (``0.99``, ``0.9, 0.99``, ``5e``)."""
    if SETTINGS[axis].several and isinstance(value, list):
        return ", ".join(f"{v:g}" for v in value)
    return str(value)


def is_categorical(axis: str) -> bool:
    """Whether a swept setting is drawn as categories (not numbers in order)."""
    s = SETTINGS[axis]
    return s.kind in ("str", "bool", "interval", "options") or s.several and axis != "decay"


def _panels(res: dict[str, Any], axis: str) -> dict[tuple, dict[str, dict[str, list[float]]]]:
    """(metric, other axes' values) -> method -> axis value -> final values over seeds."""
    others = [a for a in res["axes"] if a != axis]
    panels: dict[tuple, dict[str, dict[str, list[float]]]] = {}
    for c in res["cells"]:
        if not c["metric"]:
            continue
        key = (c["metric"], *(fmt_value(a, c["point"][a]) for a in others))
        x = fmt_value(axis, c["point"][axis])
        for e in c["entries"]:
            panels.setdefault(key, {}).setdefault(e["method"], {})[x] = e["final"]
    return panels


def _draw(ax, by_method: dict, xs: list[str], metric: str, categorical: bool) -> None:
    kind = next(k for k, v in PRIMARY.items() if v[0] == metric)
    _, higher, scale, unit = PRIMARY[kind]
    methods = list(by_method)
    for j, (method, by_x) in enumerate(by_method.items()):
        pos = np.array([i for i, x in enumerate(xs) if x in by_x], dtype=float)
        vals = [np.asarray(by_x[xs[int(i)]], float) * scale for i in pos]
        mean = np.array([v.mean() for v in vals])
        std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
        c, marker = color(method), _MARKERS.get(method, "o")
        if categorical:  # side by side within each category, no line between categories
            offset = (j - (len(methods) - 1) / 2) * min(0.15, 0.7 / len(methods))
            ax.errorbar(pos + offset, mean, yerr=std, fmt=marker, color=c, ms=5, capsize=3,
                        lw=1.2, label=method)  # fmt: skip
        else:
            ax.plot(pos, mean, "-", marker=marker, color=c, ms=4, lw=1.5, label=method)
            ax.fill_between(pos, mean - std, mean + std, color=c, alpha=0.15, lw=0)
    ax.set_xticks(range(len(xs)), xs, rotation=30 if sum(map(len, xs)) > 28 else 0)
    ax.set_xlim(-0.5, len(xs) - 0.5)
    unit = unit.strip()
    ax.set_ylabel(
        f"final {metric.replace('_', ' ')}" + (f" ({unit})" if unit else "")
        + f"\n{'higher' if higher else 'lower'} is better"
    )  # fmt: skip


def plot_axes(run: Path, res: dict[str, Any], figures: Figures) -> list[Path]:
    """One figure per swept axis; returns their paths."""
    if not res["axes"] or not any(c["entries"] for c in res["cells"]):
        return []
    paths = []
    for axis in res["axes"]:
        panels = _panels(res, axis)
        if not panels:
            continue
        others = [a for a in res["axes"] if a != axis]
        metrics = list(dict.fromkeys(k[0] for k in panels))
        per_metric = {m: [k for k in panels if k[0] == m][:8] for m in metrics}
        ncol = min(4, max(len(v) for v in per_metric.values()))
        rows = [keys[i : i + ncol] for m in metrics for keys in [per_metric[m]] for i in range(0, len(keys), ncol)]  # fmt: skip
        categorical = is_categorical(axis)
        with plt.rc_context(STYLE):
            fig, axs = plt.subplots(
                len(rows), ncol, figsize=(3.4 * ncol, 2.9 * len(rows)), squeeze=False
            )
            of_metric: dict[str, list] = {}
            for r, keys in enumerate(rows):
                for col in range(ncol):
                    ax = axs[r][col]
                    if col >= len(keys):
                        ax.set_visible(False)
                        continue
                    key = keys[col]
                    xs = [x for x in _order(res, axis) if any(x in d for d in panels[key].values())]
                    _draw(ax, panels[key], xs, key[0], categorical)
                    of_metric.setdefault(key[0], []).append(ax)
                    ax.set_xlabel(axis + (" (categories)" if categorical else ""))
                    title = ", ".join(f"{a}={v}" for a, v in zip(others, key[1:]))
                    ax.set_title(title, fontsize=8)
            share_y(of_metric.values())
            handles, labels = axs[0][0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5))
            spread = "error bars" if categorical else "band"
            fig.suptitle(
                f"Final metric vs {axis}: mean over seeds, {spread} ± 1 sample std\n(each "
                "method's main model: the baseline's trained weights, the others' averages)"
            )
            fig.tight_layout()
            paths.append(figures.save(fig, run, f"sweep_{axis}"))
    return paths


def share_y(groups) -> None:
    """Give every axes of each group the y-limits that hold all of them: panels of one
    metric are compared at a glance, so they share one scale."""
    for group in groups:
        lows, highs = zip(*(ax.get_ylim() for ax in group))
        for ax in group:
            ax.set_ylim(min(lows), max(highs))


def _order(res: dict[str, Any], axis: str) -> list[str]:
    return list(dict.fromkeys(fmt_value(axis, c["point"][axis]) for c in res["cells"]))
