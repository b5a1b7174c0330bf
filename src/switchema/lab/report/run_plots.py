"""Plots of one run folder: metric curves, reliability diagrams, decision boundaries."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .. import metrics as M
from .style import STYLE, color

__all__ = ["plot_curves", "plot_reliability", "plot_boundaries"]


def _curves(rows, key):
    """{(method, model): array (seeds, epochs)}"""
    by: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if key in r:
            by[(r["method"], r["model"])][r["seed"]].append(r[key])
    out = {}
    for k, seeds in by.items():
        n = min(len(v) for v in seeds.values())
        out[k] = np.array([v[:n] for v in seeds.values()])
    return out


def plot_curves(config: dict[str, Any], rows: list[dict[str, Any]], path: Path, key: str) -> None:
    """Metric ``key`` per epoch: mean over seeds, band from min to max; averaged solid, online dashed."""
    scale = 100.0 if key.endswith("acc") else 1.0
    curves = _curves(rows, key)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        base = curves.get(("baseline", "online"))
        for (method, model), arr in curves.items():
            if (
                method != "baseline"
                and model == "online"
                and base is not None
                and np.array_equal(arr, base)
            ):
                continue  # an EMA/SWA run's online model is the baseline itself: drawn once
            if method != "baseline" and model == "online" and key != "train_loss":
                style = ":"  # the online model of an averaging method, drawn lightly
            else:
                style = "-" if model != "online" or method == "baseline" else "--"
            x = np.arange(1, arr.shape[1] + 1)
            y = arr * scale
            label = method if model == "online" and method == "baseline" else f"{method} ({model})"
            ax.plot(x, y.mean(0), style, color=color(method), label=label, lw=1.4)
            if y.shape[0] > 1:
                ax.fill_between(x, y.min(0), y.max(0), color=color(method), alpha=0.12, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key.replace("_", " ") + (" (%)" if scale == 100 else ""))
        ax.set_title(
            f"{config['task']['name']}: {key.replace('_', ' ')} (mean, min–max over {arr.shape[0]} seeds)"
        )
        if key.endswith("loss"):
            ax.set_yscale("log")
        elif scale == 100:
            hi = max(a.mean(0).max() for a in curves.values()) * scale
            lo = min(a.mean(0)[-1] for a in curves.values()) * scale
            ax.set_ylim(max(0, min(lo - 5, hi - 25)), min(100, hi + 2))
        ax.legend(ncol=2)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def plot_reliability(
    config: dict[str, Any], summary: dict[str, Any], arrays: dict[str, np.ndarray], path: Path
) -> None:
    """Reliability diagram (15 equal-width bins) of each method's main model, seeds pooled."""
    entries = [e for e in summary["entries"] if e["main"]]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(entries), figsize=(2.6 * len(entries), 2.8), squeeze=False)
        for ax, e in zip(axes[0], entries):
            probs = [arrays.get(f"probs/{e['method']}/{e['model']}/{s}") for s in e["seeds"]]
            labels = [arrays.get("data/y_test") for _ in e["seeds"]]
            if any(p is None for p in probs) or any(lab is None for lab in labels):
                ax.set_axis_off()
                continue
            rel = M.reliability(np.concatenate(probs), np.concatenate(labels), n_bins=15)
            centers = (rel["bin_lower"] + rel["bin_upper"]) / 2
            ok = rel["count"] > 0
            ax.bar(
                centers[ok],
                rel["accuracy"][ok],
                width=1 / 15,
                color=color(e["method"]),
                alpha=0.7,
                edgecolor="k",
                lw=0.4,
            )
            ax.plot([0, 1], [0, 1], "k--", lw=0.8)
            ece = np.mean(e["final"]["ece15"]) * 100
            ax.set_title(f"{e['method']} ({e['model']})\nECE-15 {ece:.2f}%")
            ax.set_xlabel("confidence")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        axes[0][0].set_ylabel("accuracy")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def plot_boundaries(
    config: dict[str, Any], summary: dict[str, Any], arrays: dict[str, np.ndarray], path: Path
) -> None:
    """Decision boundaries (p=0.5 contour and probability shading) for 2-D tasks, first seed."""
    gx, gy = arrays["grid/x"], arrays["grid/y"]
    entries = [e for e in summary["entries"] if e["main"]]
    seed = summary["entries"][0]["seeds"][0]
    x, y = arrays.get("data/x_train"), arrays.get("data/y_train")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(entries), figsize=(2.7 * len(entries), 2.9), squeeze=False)
        for ax, e in zip(axes[0], entries):
            p = arrays.get(f"grid/{e['method']}/{e['model']}/{seed}")
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
                f"{e['method']} ({e['model']}), seed {seed}\ntest acc {acc:.1f}% (mean of seeds)"
            )
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
