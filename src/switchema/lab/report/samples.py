"""The figure of a generative run: what each final model generates, beside the held-out sample.

Drawn only from ``predictions.npz``: the run saved each final model's samples
(``samples/<method>/<model>/<seed>``, from the same noise for every model) and the held-out
sample they are scored against (``data/x_test``). Nothing is sampled again here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from ..keys import ModelKey, ModelLabel, saved_keys
from .posthoc import posthoc_data
from .style import STYLE, Figures, color, model_label

__all__ = ["plot_samples", "sample_panels"]

_PASSIVE_ONLINE = ("ema", "swa", "posthoc")  # their online model is the baseline's trajectory


def sample_panels(
    summary: dict[str, Any], rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]
) -> list[tuple[str, str]]:
    """``(method, model)`` of every panel, in the summary's order: each model evaluated every
    epoch (once: the online models of passive methods are the baseline's), then the post-hoc
    width chosen on validation; only models whose samples were saved.

    >>> s = {"entries": [{"method": "baseline", "model": "online"},
    ...                  {"method": "ema", "model": "online"}, {"method": "ema", "model": "avg"}]}
    >>> a = {"samples/baseline/online/0": 0, "samples/ema/online/0": 0}
    >>> sample_panels(s, [], a)
    [('baseline', 'online')]
    """
    saved = {(k.method, k.label.format()) for k in saved_keys(arrays, "samples")}
    panels = [
        (e["method"], e["model"])
        for e in summary["entries"]
        if not (e["model"] == "online" and e["method"] in _PASSIVE_ONLINE)
    ]
    data = posthoc_data(rows, summary["key"], summary["higher"]) if rows else None
    if data is not None:
        panels.append(("posthoc", ModelLabel("posthoc", data["best"]).format()))
    return [p for p in panels if p in saved]


def plot_samples(
    config: dict[str, Any],
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    arrays: dict[str, np.ndarray],
    figures: Figures,
    folder: Path,
    stem: str,
) -> Path | None:
    """One scatter per model (:func:`sample_panels`) of the first seed's generated points,
    the held-out sample first; each title gives the model's final test metric (mean of seeds).
    Returns the figure's path, or None when the run saved no samples."""
    panels = sample_panels(summary, rows, arrays)
    target = arrays.get("data/x_test")
    if not panels or target is None:
        return None
    seed = min(k.seed for k in saved_keys(arrays, "samples"))
    key = summary["key"]
    ordered = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["epoch"])
    final = {(r["method"], r["model"]): r for r in ordered}  # the last epoch's row
    lo, hi = target.min(0) - 0.5, target.max(0) + 0.5
    n = len(panels) + 1
    cols = min(4, n)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            math.ceil(n / cols),
            cols,
            figsize=(2.6 * cols, 2.7 * math.ceil(n / cols)),
            squeeze=False,
        )
        flat = list(axes.flat)
        flat[0].scatter(target[:, 0], target[:, 1], s=2, alpha=0.5, color="0.3", lw=0)
        flat[0].set_title(f"held-out sample\n({len(target)} points)")
        for ax, (method, model) in zip(flat[1:], panels):
            x = arrays[ModelKey(method, model, seed).format("samples")]
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, color=color(method), lw=0)
            value = final.get((method, model), {}).get(key)
            text = "" if value is None else f"\n{key.replace('_', ' ')} {value:.4f}"
            ax.set_title(model_label(method, model) + text)
        for ax in flat:
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        for ax in flat[n:]:
            ax.set_visible(False)
        fig.suptitle(
            f"{config['task']['name']}: generated samples at the final epoch (seed {seed}, "
            "the same noise for every model)"
        )
        fig.tight_layout()
        return figures.save(fig, folder, stem)
