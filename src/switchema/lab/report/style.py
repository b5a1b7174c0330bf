"""One style for every figure the lab draws: fonts and sizes, a colour per method (a shade
per decay or width) and a marker per model, so no two models of a run look alike, line styles
that keep overlapping curves visible (the baseline drawn on top, dashed), log axes labelled
with plain numbers, and the file format and resolution (:class:`Figures`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs headless on clusters and in CI

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from ..options import FIGURE_FORMATS  # noqa: E402

__all__ = [
    "STYLE",
    "COLORS",
    "Figures",
    "color",
    "line_style",
    "marker",
    "model_label",
    "plain_log_axis",
    "FIGURE_FORMATS",
]

STYLE = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 10,
    "figure.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "pdf.fonttype": 42,  # text stays text in PDF and SVG, editable and searchable
    "svg.fonttype": "none",
}
COLORS = {
    "baseline": "#444444",
    "ema": "#1f77b4",
    "sema": "#d62728",
    "sema-openmixup": "#ff7f0e",
    "swa": "#2ca02c",
    "posthoc": "#9467bd",
}
_SHADES = {
    "ema": "Blues",
    "sema": "Reds",
    "sema-openmixup": "Oranges",
    "swa": "Greens",
    "posthoc": "Purples",
}
# a method's first model takes its own marker, each further one the next in this cycle
_CYCLE = ("o", "s", "D", "^", "v", "P", "X", "*", "h", "p", "<", ">", "d", "8")
_MARKERS = {"ema": "o", "sema": "s", "sema-openmixup": "D", "swa": "^", "posthoc": "v"}


@dataclass(frozen=True)
class Figures:
    """How figures are written: ``format`` (png, pdf or svg) and ``dpi`` (raster formats)."""

    format: str = "png"
    dpi: int = 150

    def __post_init__(self) -> None:
        if self.format not in FIGURE_FORMATS:
            raise ValueError(f"figure format must be one of {FIGURE_FORMATS}, got {self.format!r}")

    def name(self, stem: str) -> str:
        return f"{stem}.{self.format}"

    def save(self, fig, folder: str | Path, stem: str) -> Path:
        """Save ``fig`` as ``folder/stem.<format>`` and close it; returns the path."""
        path = Path(folder) / self.name(stem)
        fig.savefig(path, dpi=self.dpi, format=self.format)
        plt.close(fig)
        return path


def color(method: str, index: int = 0, count: int = 1) -> str | tuple:
    """The method's colour; with ``count`` averages (several decays), shade ``index`` of it,
    light to dark as the decay grows."""
    if count <= 1 or method not in _SHADES:
        return COLORS.get(method, "#9467bd")
    return matplotlib.colormaps[_SHADES[method]](0.45 + 0.5 * index / (count - 1))


def marker(method: str, index: int = 0) -> str:
    """The marker of a method's ``index``-th averaged model: distinct within the method."""
    first = _CYCLE.index(_MARKERS.get(method, "v"))
    return _CYCLE[(first + index) % len(_CYCLE)]


def line_style(method: str, model: str, index: int = 0, count: int = 1) -> dict:
    """Keyword arguments of ``ax.plot`` for a (method, model) curve.

    The baseline is a dark dashed line drawn on top of everything, so a curve lying exactly
    on it (SWA before it starts, or at the end of a cosine schedule) cannot hide it. Averaged
    models are solid, a shade of their method's colour and a marker each (at staggered
    epochs). Online models of switching methods are wide, light and dashed, under their
    average.
    """
    if method == "baseline":
        return dict(color=COLORS["baseline"], lw=1.3, zorder=20, ls=(0, (5, 2)))
    if model == "online":  # after a switch it equals the average: a wide dashed halo under it
        return dict(color=color(method), lw=3.0, alpha=0.4, zorder=2, ls="--")
    return dict(
        color=color(method, index, count),
        lw=1.4,
        zorder=3 + index,
        ls="-",
        marker=marker(method, index),
        ms=3.5,
    )


def model_label(method: str, model: str) -> str:
    """``baseline``, ``ema avg@0.99``, ``sema online``: how legends name a curve."""
    return method if method == "baseline" and model == "online" else f"{method} {model}"


def _plain(value: float, _pos: int | None = None) -> str:
    return f"{value:g}"


def plain_log_axis(ax, which: str = "y") -> None:
    """Label a log axis with plain numbers (0.2, 0.5, 1, 2), not powers of ten; minor ticks
    at 2 and 5 are labelled when the axis spans less than two decades."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    lo, hi = ax.get_ylim() if which == "y" else ax.get_xlim()
    axis.set_major_formatter(ticker.FuncFormatter(_plain))
    if lo > 0 and hi / lo < 100:
        axis.set_minor_formatter(
            ticker.FuncFormatter(lambda v, _p: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
        )
    else:
        axis.set_minor_formatter(ticker.NullFormatter())
