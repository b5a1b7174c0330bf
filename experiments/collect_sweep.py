"""Collect the Switch EMA sweep (03_sema_sweep.sh) into one table: SEMA vs plain EMA per cell.

``switchema sweep`` writes the general table (``sweep.md``); this adds the view the study needs:
SEMA minus EMA at the same decay, against 1 - decay on a log axis.

Usage: python experiments/collect_sweep.py runs/experiments/03_sweep [plot.png] > sweep.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from switchema.lab.report import load_run, summarise
from switchema.lab.stats import format_ci, format_mean_std, mean_std


def _pp(values):
    mean, std = mean_std([100 * v for v in values])
    return format_mean_std(mean, std)


def _ci(d):
    return format_ci({k: 100 * v if isinstance(v, float) else v for k, v in d.items()})


def main(root: str, plot: str | None = None) -> None:
    cells = []
    print(
        "| decay | switch every | baseline acc (%) | EMA acc (%) | SEMA acc (%) | SEMA − EMA final (pp) [95% CI] "
        "| EMA best (%) | SEMA best (%) | SEMA − EMA best (pp) [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    folder = Path(root) / "cells" if (Path(root) / "cells").is_dir() else Path(root)
    runs = sorted(
        folder.glob("decay*_every*"), key=lambda p: (float(p.name.split("_")[0][5:]), p.name)
    )
    for run in runs:
        if not (run / "summary.md").is_file():  # unfinished run
            continue
        config, rows, arrays = load_run(run)
        s = summarise(config, rows, arrays)
        by = {(e["method"], e["model"]): e for e in s["entries"]}
        base, ema, sema = by[("baseline", "online")], by[("ema", "avg")], by[("sema", "avg")]
        cfg = config["config"]
        cells.append((cfg["decay"][0], cfg["switch_every"], sema["diff_vs_ema"]))
        print(
            f"| {cfg['decay'][0]} | {cfg['switch_every']} | {_pp(base['final']['test_acc'])} | "
            f"{_pp(ema['final']['test_acc'])} | {_pp(sema['final']['test_acc'])} | {_ci(sema['diff_vs_ema'])} | "
            f"{_pp(ema['best'])} | {_pp(sema['best'])} | {_ci(sema['diff_vs_ema_best'])} |"
        )

    if plot:
        _plot(cells, plot)


def _plot(cells, path):
    import matplotlib.pyplot as plt

    from switchema.lab.report.style import STYLE

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
        for i, every in enumerate(sorted({c[1] for c in cells})):
            pts = sorted((d, diff) for d, e, diff in cells if e == every)
            x = [1 - d for d, _ in pts]
            y = [100 * diff["mean"] for _, diff in pts]
            err = [
                [100 * (diff["mean"] - diff["lo"]) for _, diff in pts],
                [100 * (diff["hi"] - diff["mean"]) for _, diff in pts],
            ]
            ax.errorbar(
                [v * (1 + 0.08 * (i - 1)) for v in x],
                y,
                yerr=err,
                marker="o",
                capsize=3,
                label=f"switch every {every}",
            )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("1 - decay (per step)")
        ax.set_ylabel("SEMA − EMA test acc (pp), 95% CI")
        ax.set_title("MNIST-1D CNN: Switch EMA minus plain EMA, same decay (3 seeds)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "runs/experiments/03_sweep",
        sys.argv[2] if len(sys.argv) > 2 else None,
    )
