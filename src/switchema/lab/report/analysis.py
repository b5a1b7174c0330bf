"""The report of ``switchema analyze``: ``analysis.md`` and its plots, from ``analysis.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from ..stats import format_ci, format_mean_std, mean_std, paired_difference
from .style import STYLE, color

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
    run_dir: str | Path, out_dir: str | Path | None = None, *, status: str | None = None
) -> Path:
    """``analysis.md``, ``interpolation.png`` and ``landscapes.png`` in ``out_dir`` (default:
    the run folder) from its ``analysis.json``; ``status`` notes an unfinished run."""
    run = Path(run_dir)
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
    for m in methods:
        cells = []
        for key, _, digits in _MEASURES:
            mean, std = mean_std([r[key] for r in by[m]])
            cells.append(format_mean_std(mean, std, digits))
        lines.append(f"| {m} | {by[m][0]['model']} | " + " | ".join(cells) + " |")
    if "baseline" in by:
        lines += ["", "Paired differences to the baseline (same seed):", ""]
        lines += ["| method | " + " | ".join(f"Δ {name}" for _, name, _ in _MEASURES) + " |"]
        lines += ["|---|" + "---|" * len(_MEASURES)]
        base = {r["seed"]: r for r in by["baseline"]}
        for m in methods:
            if m == "baseline":
                continue
            rs = [r for r in by[m] if r["seed"] in base]
            cells = [
                format_ci(
                    paired_difference([r[k] for r in rs], [base[r["seed"]][k] for r in rs]), d
                )
                for k, _, d in _MEASURES
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
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
        "Plots: `interpolation.png` (loss along the straight path through the solutions, first seed), "
        "`landscapes.png` (2-D loss surfaces around each solution, same random directions).",
        "",
    ]
    if status:
        lines[1:1] = ["", f"**Run state:** {status}"]
    path = folder / "analysis.md"
    path.write_text("\n".join(lines))
    if out["interpolation"]:
        plot_interpolation(config, out["interpolation"], folder / "interpolation.png")
    if out["landscapes"]:
        plot_landscapes(config, out["landscapes"], folder / "landscapes.png")
    return path


def plot_interpolation(config: dict[str, Any], interp: dict[str, Any], path: Path) -> None:
    """Train and test loss along the straight path through the methods' solutions."""
    alphas = np.asarray(interp["alphas"])
    ends = interp["endpoints"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        ax.plot(alphas, interp["train_loss"], "-", color="#444444", label="train loss (subset)")
        ax.plot(alphas, interp["test_loss"], "--", color="#1f77b4", label="test loss")
        for i, m in zip(ends, interp["methods"]):
            ax.axvline(alphas[i], color=color(m), lw=0.8, alpha=0.6)
            ax.annotate(
                m,
                (alphas[i], ax.get_ylim()[1]),
                color=color(m),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_yscale("log")
        ax.set_xlabel("position along the path (solutions marked)")
        ax.set_ylabel("loss")
        ax.set_title(f"{config['task']['name']}: loss between solutions (first seed)", pad=14)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def plot_landscapes(config: dict[str, Any], surfaces: dict[str, Any], path: Path) -> None:
    """2-D loss contours around each method's solution, shared log-spaced levels."""
    names = list(surfaces)
    all_losses = np.concatenate([np.asarray(s["losses"]).ravel() for s in surfaces.values()])
    lo, hi = max(all_losses.min(), 1e-6), all_losses.max()
    levels = np.geomspace(lo, hi, 16)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.0), squeeze=False)
        for ax, m in zip(axes[0], names):
            s = surfaces[m]
            a, b = np.asarray(s["alphas"]), np.asarray(s["betas"])
            z = np.asarray(s["losses"])
            cs = ax.contourf(
                a, b, z.T, levels=levels, cmap="viridis", norm=matplotlib.colors.LogNorm(lo, hi)
            )
            ax.plot(0, 0, "r+", ms=8)
            ax.set_title(f"{m}\ncentre loss {z[len(a) // 2, len(b) // 2]:.2e}", fontsize=8)
            ax.set_xlabel("direction 1")
        axes[0][0].set_ylabel("direction 2")
        bar = fig.colorbar(cs, ax=axes[0].tolist(), shrink=0.9, label="train loss (log scale)")
        bar.set_ticks(levels[::3])
        bar.set_ticklabels([f"{v:.2g}" for v in levels[::3]])
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
