"""Plots of one run folder: metric curves, reliability diagrams, decision boundaries.

Every averaged model has its own colour (a shade of its method's colour per decay) and legend
entry; the baseline is a thick grey line under the others, so a curve that lies exactly on it
stays visible; axis limits always hold every curve and band.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .. import metrics as M
from ..keys import ModelKey
from .posthoc import final_only
from .style import STYLE, Figures, color, line_style, model_label, plain_log_axis

__all__ = ["plot_curves", "plot_reliability", "plot_boundaries", "shown_entries"]

_NAMES = {
    "test_acc": "test accuracy (%)",
    "test_mse": "test MSE (standardised target)",
    "test_bpc": "test bits per character",
    "train_loss": "training loss (nats, log scale)",
    "test_loss": "test loss (nats, log scale)",
}


def _curves(rows, key):
    """{(method, model): array (seeds, epochs)}"""
    by: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if key in r and not final_only(r["model"]):
            by[(r["method"], r["model"])][r["seed"]].append(r[key])
    out = {}
    for k, seeds in by.items():
        n = min(len(v) for v in seeds.values())
        out[k] = np.array([v[:n] for v in seeds.values()])
    return out


def _shade_index(models: list[str], model: str) -> tuple[int, int]:
    """(index, count) of an averaged model among its method's averages."""
    avgs = [m for m in models if m != "online"]
    return (avgs.index(model), len(avgs)) if model in avgs else (0, 1)


def plot_curves(
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    figures: Figures,
    folder: Path,
    stem: str,
    key: str,
) -> Path:
    """Metric ``key`` per epoch: mean over seeds, band from min to max; averaged models solid
    with markers, online models of switching methods dashed, the baseline thick and grey."""
    scale = 100.0 if key.endswith("acc") else 1.0
    curves = _curves(rows, key)
    base = curves.get(("baseline", "online"))
    models_of: dict[str, list[str]] = defaultdict(list)
    for method, model in curves:
        models_of[method].append(model)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.2, 4.0))
        n_seeds = 0
        for (method, model), arr in curves.items():
            if method != "baseline" and model == "online" and base is not None:
                if np.array_equal(arr, base):
                    continue  # an EMA/SWA run's online model is the baseline itself: drawn once
            n_seeds = max(n_seeds, arr.shape[0])
            index, count = _shade_index(models_of[method], model)
            style = line_style(method, model, index, count)
            x = np.arange(1, arr.shape[1] + 1)
            y = arr * scale
            every = max(1, len(x) // 8)
            ax.plot(
                x,
                y.mean(0),
                label=model_label(method, model),
                markevery=(index % every, every),
                **style,
            )
            if y.shape[0] > 1:
                ax.fill_between(
                    x, y.min(0), y.max(0), color=style["color"], alpha=0.12, lw=0, zorder=1
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(_NAMES.get(key, key.replace("_", " ")))
        ax.set_title(
            f"{config['task']['name']}: {_NAMES.get(key, key).split(' (')[0]} per epoch; "
            f"mean over {n_seeds} seed{'s' * (n_seeds != 1)}, band min–max"
        )
        if key.endswith("loss"):
            ax.set_yscale("log")
            plain_log_axis(ax, "y")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        return figures.save(fig, folder, stem)


def shown_entries(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every model of the summary once: the online models of ema and swa are the baseline's."""
    return [
        e
        for e in summary["entries"]
        if not (e["model"] == "online" and e["method"] in ("ema", "swa"))
    ]


def plot_reliability(
    config: dict[str, Any],
    summary: dict[str, Any],
    arrays: dict[str, np.ndarray],
    figures: Figures,
    folder: Path,
    stem: str,
) -> Path:
    """Reliability diagram (15 equal-width bins) of every model, seeds pooled."""
    entries = shown_entries(summary)
    ncol = min(4, len(entries))
    nrow = -(-len(entries) // ncol)
    labels = arrays.get("data/y_test")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(2.5 * ncol, 2.6 * nrow), squeeze=False, sharey=True
        )
        models_of: dict[str, list[str]] = defaultdict(list)
        for e in summary["entries"]:
            models_of[e["method"]].append(e["model"])
        for ax, e in zip(axes.flat, entries):
            probs = [
                arrays.get(ModelKey(e["method"], e["model"], s).format("probs")) for s in e["seeds"]
            ]
            if labels is None or any(p is None for p in probs):
                ax.set_axis_off()
                continue
            rel = M.reliability(
                np.concatenate(probs), np.concatenate([labels] * len(probs)), n_bins=15
            )
            centers = (rel["bin_lower"] + rel["bin_upper"]) / 2
            ok = rel["count"] > 0
            index, count = _shade_index(models_of[e["method"]], e["model"])
            ax.bar(
                centers[ok],
                rel["accuracy"][ok],
                width=1 / 15,
                color=color(e["method"], index, count),
                alpha=0.8,
                edgecolor="k",
                lw=0.4,
            )
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ece = np.mean(e["final"]["ece15"]) * 100
            ax.set_title(f"{model_label(e['method'], e['model'])}\nECE-15 {ece:.2f}%")
            ax.set_xlabel("confidence")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        for ax in list(axes.flat)[len(entries) :]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel("accuracy")
        n = len(entries[0]["seeds"]) if entries else 0
        fig.suptitle(
            f"{config['task']['name']}: reliability at the final epoch, test predictions of "
            f"{n} seed{'s' * (n != 1)} pooled, 15 equal-width confidence bins"
        )
        fig.tight_layout()
        return figures.save(fig, folder, stem)


def plot_boundaries(
    config: dict[str, Any],
    summary: dict[str, Any],
    arrays: dict[str, np.ndarray],
    figures: Figures,
    folder: Path,
    stem: str,
) -> Path:
    """Decision boundaries (p=0.5 contour and probability shading) for 2-D tasks, first seed."""
    gx, gy = arrays["grid/x"], arrays["grid/y"]
    entries = [e for e in shown_entries(summary) if e["main"]]
    seed = summary["entries"][0]["seeds"][0]
    x, y = arrays.get("data/x_train"), arrays.get("data/y_train")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(entries), figsize=(2.7 * len(entries), 2.9), squeeze=False)
        for ax, e in zip(axes[0], entries):
            p = arrays.get(ModelKey(e["method"], e["model"], seed).format("grid"))
            if p is None:
                ax.set_axis_off()
                continue
            p = p.reshape(gx.shape)
            ax.contourf(gx, gy, p, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.5)
            ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=1.2)
            if x is not None:
                ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", edgecolor="k", s=14, lw=0.5)
            acc = np.mean(e["final"]["test_acc"]) * 100
            ax.set_title(
                f"{model_label(e['method'], e['model'])}\ntest acc {acc:.1f}% (mean of seeds)"
            )
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(
            f"{config['task']['name']}: decision boundaries at the final epoch (seed {seed}); "
            "training points shown, shading P(class 1)"
        )
        fig.tight_layout()
        return figures.save(fig, folder, stem)
