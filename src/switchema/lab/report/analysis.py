"""The report of ``switchema analyze``: ``analysis.md`` and its plots, from ``analysis.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from ..stats import format_ci, format_mean_std, mean_std, paired_difference
from .style import STYLE, Figures, color, plain_log_axis

__all__ = ["write_analysis_report", "plot_interpolation", "plot_landscapes"]

_MEASURES = [
    ("top_eigenvalue", "top Hessian eigenvalue", 2),
    ("trace", "Hessian trace", 1),
    ("worst_case_increase", "worst-case increase (ρ ball)", 4),
    ("width_median", "basin width (median)", 3),
    ("train_loss", "train loss (subset)", 4),
    ("test_loss", "test loss", 4),
]


def write_analysis_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    status: str | None = None,
    figures: Figures | None = None,
) -> Path:
    """``analysis.md`` and the plots ``interpolation`` and ``landscapes`` in ``out_dir``
    (default: the run folder) from its ``analysis.json``; ``status`` notes an unfinished run,
    ``figures`` gives the plots' format and resolution."""
    run = Path(run_dir)
    figures = figures or Figures()
    folder = Path(out_dir) if out_dir is not None else run
    config = json.loads((run / "config.json").read_text())
    out = json.loads((folder / "analysis.json").read_text())
    models = out["models"]
    st = out["settings"]
    methods = list(dict.fromkeys(r["method"] for r in models.values()))
    by = {m: [r for r in models.values() if r["method"] == m] for m in methods}
    lines = [
        f"# Flatness and sharpness: {config['task']['name']}",
        "",
        f"Final weights of each method's main model (baseline: online; others: the average), all seeds; "
        f"measured on the first {st['samples']} training samples with the labels used in training. "
        f"Top eigenvalue by Lanczos on Hessian-vector products; trace by Hutchinson with {st['probes']} "
        f"Rademacher probes; worst-case increase = max loss increase within an L2 ball of radius "
        f"{st['rho']} (projected gradient ascent); basin width = distance along {st['directions']} random "
        f"filter-normalised directions (both signs) until the loss rises by {st['rise']}. "
        f"Mean ± std over seeds; Δ = paired difference to the baseline with a 95% t-interval. "
        f"Wall time {st['wall_s']:.0f} s with {st['torch_threads']} torch thread(s).",
        "",
        "| method | model | " + " | ".join(name for _, name, _ in _MEASURES) + " |",
        "|---|---|" + "---|" * len(_MEASURES),
    ]
    lines += _measure_rows(by)
    if out["distances_to_baseline"]:
        lines += [
            "",
            "Distance of each solution to the baseline's (first seed): L2, relative, cosine",
            "",
        ]
        for m, d in out["distances_to_baseline"].items():
            lines.append(
                f"- {m}: L2 {d['l2']:.3f}, relative {d['relative']:.3f}, cosine {d['cosine']:.4f}"
            )
    eig_t = [r["eig_seconds"] for r in models.values()]
    lines += [
        "",
        f"Top-eigenvalue time per model: median {np.median(eig_t):.1f} s (max {max(eig_t):.1f} s); "
        f"all converged: {all(r['eig_converged'] for r in models.values())}.",
        "",
        f"Plots: `{figures.name('interpolation')}` (loss along the straight path through the "
        f"solutions, first seed), `{figures.name('landscapes')}` (2-D loss surfaces around "
        "each solution, same random directions).",
        "",
    ]
    if status:
        lines[1:1] = ["", f"**Run state:** {status}"]
    path = folder / "analysis.md"
    path.write_text("\n".join(lines))
    if out["interpolation"]:
        plot_interpolation(config, out["interpolation"], figures, folder)
    if out["landscapes"]:
        plot_landscapes(config, out["landscapes"], st["samples"], figures, folder)
    return path


def _measure_rows(by: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Mean ± std of every measure per method; paired differences to the baseline."""
    lines = []
    for m, rows in by.items():
        cells = []
        for key, _, digits in _MEASURES:
            mean, std = mean_std([r[key] for r in rows])
            cells.append(format_mean_std(mean, std, digits))
        lines.append(f"| {m} | {rows[0]['model']} | " + " | ".join(cells) + " |")
    if "baseline" in by:
        lines += ["", "Paired differences to the baseline (same seed):", ""]
        lines += ["| method | " + " | ".join(f"Δ {name}" for _, name, _ in _MEASURES) + " |"]
        lines += ["|---|" + "---|" * len(_MEASURES)]
        base = {r["seed"]: r for r in by["baseline"]}
        for m, rows in by.items():
            if m == "baseline":
                continue
            rs = [r for r in rows if r["seed"] in base]
            cells = [
                format_ci(
                    paired_difference([r[k] for r in rs], [base[r["seed"]][k] for r in rs]), d
                )
                for k, _, d in _MEASURES
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _who(method: str) -> str:
    return "trained weights" if method == "baseline" else "averaged weights"


def plot_interpolation(
    config: dict[str, Any], interp: dict[str, Any], figures: Figures, folder: Path
) -> Path:
    """Train and test loss along the straight path through the methods' solutions."""
    alphas = np.asarray(interp["alphas"])
    ends = interp["endpoints"]
    seed = config["config"]["seeds"][0]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 3.8))
        ax.plot(alphas, interp["train_loss"], "-", color="#444444", label="train loss (subset)")
        ax.plot(alphas, interp["test_loss"], "--", color="#1f77b4", label="test loss")
        ax.set_yscale("log")
        ax.margins(y=0.15)
        plain_log_axis(ax, "y")
        top = ax.get_ylim()[1]
        for i, m in zip(ends, interp["methods"]):
            ax.axvline(alphas[i], color=color(m), lw=0.8, alpha=0.6)
            ax.annotate(m, (alphas[i], top), color=color(m), ha="center", va="bottom")
        ax.set_xlabel("position along the path (the solutions, in method order, at 0, 1, 2, ...)")
        ax.set_ylabel("loss (nats, log scale)")
        ax.set_title(
            f"{config['task']['name']}: loss on the straight path through the solutions, seed "
            f"{seed}\n(the baseline's trained weights, the other methods' averaged weights)",
            pad=16,
        )
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        return figures.save(fig, folder, "interpolation")


def plot_landscapes(
    config: dict[str, Any], surfaces: dict[str, Any], samples: int, figures: Figures, folder: Path
) -> Path:
    """2-D loss contours around each method's solution, shared log-spaced levels."""
    names = list(surfaces)
    all_losses = np.concatenate([np.asarray(s["losses"]).ravel() for s in surfaces.values()])
    lo, hi = max(all_losses.min(), 1e-6), all_losses.max()
    levels = np.geomspace(lo, hi, 16)
    seed = config["config"]["seeds"][0]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1,
            len(names),
            figsize=(2.9 * len(names) + 1.0, 3.2),
            squeeze=False,
            sharex=True,
            sharey=True,
            layout="constrained",
        )
        for ax, m in zip(axes[0], names):
            s = surfaces[m]
            a, b = np.asarray(s["alphas"]), np.asarray(s["betas"])
            z = np.asarray(s["losses"])
            cs = ax.contourf(
                a, b, z.T, levels=levels, cmap="viridis", norm=matplotlib.colors.LogNorm(lo, hi)
            )
            ax.plot(0, 0, "r+", ms=8)
            span = float(a.max())
            ax.set_xticks([-span, 0, span])
            ax.set_yticks([-span, 0, span])
            ax.set_title(f"{m} ({_who(m)})\nloss at the centre {z[len(a) // 2, len(b) // 2]:.3g}")
            ax.set_xlabel("direction 1")
        axes[0][0].set_ylabel("direction 2")
        bar = fig.colorbar(
            cs, ax=axes[0].tolist(), shrink=0.9, label="train loss (nats, log scale)"
        )
        bar.set_ticks(levels[::3])
        bar.set_ticklabels([f"{v:.2g}" for v in levels[::3]])
        bar.minorticks_off()
        fig.suptitle(
            f"{config['task']['name']}: training loss on {samples} examples around each solution "
            f"(seed {seed})\nthe same two random filter-normalised directions in every panel"
        )
        return figures.save(fig, folder, "landscapes")
