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
from matplotlib import ticker

from .. import metrics as M
from ..keys import ModelKey
from .posthoc import final_only
from .style import STYLE, Figures, color, line_style, model_label, plain_log_axis

__all__ = [
    "curve_plan",
    "distinct_entries",
    "plot_curves",
    "plot_reliability",
    "plot_boundaries",
    "same_epochs",
    "shown_entries",
]

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


def same_epochs(arr: np.ndarray, ref: np.ndarray | None) -> np.ndarray:
    """Per epoch of ``arr`` (seeds, epochs): whether every seed's value equals ``ref``'s (the
    same model evaluated twice: SWA before it starts is the baseline, a switching method's
    online model is its average right after a switch)."""
    same = np.zeros(arr.shape[1], dtype=bool)
    if ref is None or ref.shape[0] != arr.shape[0]:
        return same
    n = min(arr.shape[1], ref.shape[1])
    same[:n] = np.all(arr[:, :n] == ref[:, :n], axis=0)
    return same


def curve_plan(
    curves: dict[tuple[str, str], np.ndarray],
    identity: dict[tuple[str, str], np.ndarray] | None = None,
) -> dict[tuple[str, str], dict]:
    """What :func:`plot_curves` draws of each (method, model): ``{"hide": epochs not drawn
    (bool per epoch), "label": legend text}``; a model identical to the baseline (or, for a
    switching method's online model, to its average) at an epoch is drawn there once, by the
    model it repeats, and its label says so; one identical everywhere is not drawn at all.
    Sameness is judged on ``identity`` (default: ``curves``), a metric that two different
    models practically never share, such as the test loss (accuracies of a small test set
    can tie by chance)."""
    same = identity if identity is not None and set(identity) >= set(curves) else curves
    base = same.get(("baseline", "online"))
    averages = {}
    for method, model in curves:
        if model != "online":
            averages.setdefault(method, (method, model))
    plan: dict[tuple[str, str], dict] = {}
    for method, model in curves:
        arr = same[(method, model)]
        label = model_label(method, model)
        ref, what = base, "baseline"
        hide = np.zeros(arr.shape[1], dtype=bool)
        if method != "baseline" and model == "online" and same_epochs(arr, base).all():
            # the online model of a method that never changes the weights trained (ema,
            # swa, posthoc) is the baseline's trajectory: drawn once, as the baseline
            plan[(method, model)] = {"hide": ~hide, "label": label, "baseline": True}
            continue
        if method != "baseline" and model == "online" and method in averages:
            ref, what = same[averages[method]], f"{method} {averages[method][1]}"
        if method != "baseline":
            hide = same_epochs(arr, ref)
        if hide.all():
            pass
        elif hide.any() and model == "online":
            label += f" (where it differs from {what})"
        elif hide.any():
            first = int(np.argmin(hide))  # the first epoch it differs
            hide[first:] = False  # from there on it is drawn, even where it meets it again
            if first > 0:
                hide[first - 1] = False  # joined to the curve it repeated
                label += f" (= {what} to epoch {first})"
        plan[(method, model)] = {"hide": hide, "label": label}
    for key, entry in plan.items():
        if entry["hide"].all() and not entry.pop("baseline", False):
            # drawn by the model it repeats, whose label says so
            ref = averages.get(key[0]) if key[1] == "online" else ("baseline", "online")
            if ref in plan:
                plan[ref]["label"] += f" (= {model_label(*key)})"
    return plan


def plot_curves(
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    figures: Figures,
    folder: Path,
    stem: str,
    key: str,
) -> Path:
    """Metric ``key`` per epoch: mean over seeds, band from min to max; averaged models solid
    with markers, online models of switching methods dashed, the baseline dark, dashed and on
    top. A model identical to another at some epochs is drawn there once (:func:`curve_plan`)."""
    scale = 100.0 if key.endswith("acc") else 1.0
    curves = _curves(rows, key)
    plan = curve_plan(curves, _curves(rows, "test_loss") if key != "test_loss" else None)
    models_of: dict[str, list[str]] = defaultdict(list)
    for method, model in curves:
        models_of[method].append(model)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7.2, 4.0))
        n_seeds = 0
        for (method, model), arr in curves.items():
            hide = plan[(method, model)]["hide"]
            if hide.all():
                continue
            n_seeds = max(n_seeds, arr.shape[0])
            index, count = _shade_index(models_of[method], model)
            style = line_style(method, model, index, count)
            x = np.arange(1, arr.shape[1] + 1)
            y = arr * scale
            mean = np.where(hide, np.nan, y.mean(0))
            every = max(1, len(x) // 8)
            ax.plot(
                x,
                mean,
                label=plan[(method, model)]["label"],
                markevery=(index % every, every),
                **style,
            )
            if y.shape[0] > 1:
                ax.fill_between(
                    x,
                    y.min(0),
                    y.max(0),
                    where=~hide,
                    color=style["color"],
                    alpha=0.12,
                    lw=0,
                    zorder=1,
                )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
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


def distinct_entries(
    summary: dict[str, Any], arrays: dict[str, np.ndarray]
) -> list[tuple[dict[str, Any], str]]:
    """:func:`shown_entries` less the online models whose final test predictions equal their
    method's average's for every seed (a switching method right after a switch): ``(entry,
    label)``, the average's label saying it stands for both."""
    entries = shown_entries(summary)
    dropped = set()
    for e in entries:
        if e["model"] != "online" or e["method"] == "baseline":
            continue
        avg = next((a for a in entries if a["method"] == e["method"] and a["main"]), None)
        if avg is None or avg is e or avg["seeds"] != e["seeds"]:
            continue
        probs = [
            [arrays.get(ModelKey(x["method"], x["model"], s).format("probs")) for s in e["seeds"]]
            for x in (e, avg)
        ]
        if all(a is not None and b is not None and np.array_equal(a, b) for a, b in zip(*probs)):
            dropped.add((e["method"], e["model"]))
    return [
        (
            e,
            model_label(e["method"], e["model"])
            + (" (= online)" if e["main"] and (e["method"], "online") in dropped else ""),
        )
        for e in entries
        if (e["method"], e["model"]) not in dropped
    ]


def plot_reliability(
    config: dict[str, Any],
    summary: dict[str, Any],
    arrays: dict[str, np.ndarray],
    figures: Figures,
    folder: Path,
    stem: str,
) -> Path:
    """Reliability diagram (15 equal-width bins) of every model, seeds pooled; a model whose
    predictions repeat another's is drawn once (:func:`distinct_entries`)."""
    labelled = distinct_entries(summary, arrays)
    entries = [e for e, _ in labelled]
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
        for ax, (e, label) in zip(axes.flat, labelled):
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
            ax.set_title(f"{label}\nECE-15 {ece:.2f}%")
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
    """Decision boundaries (p=0.5 contour and probability shading) for 2-D tasks, first seed;
    each panel's accuracy is that seed's, as drawn."""
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
            accs = dict(zip(e["seeds"], e["final"]["test_acc"]))
            acc = f"test acc {accs[seed] * 100:.1f}%" if seed in accs else "seed not run"
            ax.set_title(f"{model_label(e['method'], e['model'])}\n{acc}")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(
            f"{config['task']['name']}: decision boundaries and test accuracy at the final epoch, "
            f"seed {seed}; training points shown, shading P(class 1)"
        )
        fig.tight_layout()
        return figures.save(fig, folder, stem)


def forest_rows(
    summary: dict[str, Any], scale: float = 1.0, arrays: dict[str, np.ndarray] | None = None
) -> list[dict[str, Any]]:
    """The forest plot's rows: every model with a paired difference to the baseline
    (``diff_final``, computed by the summary), in display units (``scale``): ``label``,
    ``method``, ``model``, ``mean``, ``lo``, ``hi``, ``n`` and Holm's ``significant``. With
    the run's ``arrays``, a model whose predictions repeat another's is one row
    (:func:`distinct_entries`)."""
    if arrays is None:
        labelled = [(e, model_label(e["method"], e["model"])) for e in shown_entries(summary)]
    else:
        labelled = distinct_entries(summary, arrays)
    out = []
    for e, label in labelled:
        d = e.get("diff_final")
        if d is None:
            continue
        out.append(
            {
                "label": label,
                "method": e["method"],
                "model": e["model"],
                "mean": d["mean"] * scale,
                "lo": d["lo"] * scale,
                "hi": d["hi"] * scale,
                "n": d["n"],
                "significant": bool(d.get("significant", False)),
            }
        )
    return out


def plot_forest(
    config: dict[str, Any],
    summary: dict[str, Any],
    arrays: dict[str, np.ndarray],
    scale: float,
    unit: str,
    figures: Figures,
    folder: Path,
    stem: str,
) -> Path:
    """Each model's final metric minus the baseline's, paired by seed, with its 95%
    t-interval (the summary's ``diff_final``, as the table prints it): one row per model, a
    line at zero; filled markers are the differences significant after Holm's correction."""
    rows = forest_rows(summary, scale, arrays)
    models_of: dict[str, list[str]] = defaultdict(list)
    for e in summary["entries"]:
        models_of[e["method"]].append(e["model"])
    metric = summary["key"].replace("test_", "test ")
    better = "higher" if summary["higher"] else "lower"
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.9 + 0.42 * max(1, len(rows))))
        ax.axvline(0.0, **{**line_style("baseline", "online"), "zorder": 1})
        for i, r in enumerate(rows):
            index, count = _shade_index(models_of[r["method"]], r["model"])
            style = line_style(r["method"], r["model"], index, count)
            lo, hi = r["lo"], r["hi"]
            ax.errorbar(
                r["mean"],
                i,
                xerr=[[r["mean"] - lo], [hi - r["mean"]]] if np.isfinite(lo) else None,
                fmt=style.get("marker", "d"),
                color=style["color"],
                mfc=style["color"] if r["significant"] else "white",
                ms=6,
                capsize=3,
                lw=1.4,
            )
            ci = f" [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else ""
            ax.text(1.02, i, f"{r['mean']:+.2f}{ci}", transform=ax.get_yaxis_transform(),
                    va="center", fontsize=8)  # fmt: skip
        ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        u = f" ({unit})" if unit else ""
        ax.set_xlabel(f"final {metric} minus the baseline's{u}; {better} is better")
        n = max((r["n"] for r in rows), default=0)
        ax.set_title(
            f"{config['task']['name']}: difference to the baseline, paired over {n} seed"
            f"{'s' * (n != 1)}, 95% t-interval\n(filled: significant after Holm's correction)"
        )
        return figures.save(fig, folder, stem)
