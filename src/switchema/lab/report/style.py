"""One plot style for every figure the lab draws, and one colour per method."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: runs headless on clusters and in CI

__all__ = ["STYLE", "COLORS", "color"]

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "legend.fontsize": 8,
}
COLORS = {
    "baseline": "#444444",
    "ema": "#1f77b4",
    "sema": "#d62728",
    "sema-openmixup": "#ff7f0e",
    "swa": "#2ca02c",
}


def color(method: str) -> str:
    return COLORS.get(method, "#9467bd")
