"""Basin width: how far the loss stays within a given rise of its value along random
directions, found by a geometric scan and bisection on all lines at once.

The loss is the mean over fixed batches of :mod:`switchema.analysis.objective`, evaluated
through the grid engine of :mod:`switchema.analysis.landscape` (``bn``, ``chunk_size``,
``vectorize`` are explained there); the directions are those of
:func:`~switchema.analysis.directions.random_directions`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int, check_real
from ._arguments import check_model
from ._grid import directions_matrix, make_evaluator
from .directions import random_directions

__all__ = ["BasinWidth", "basin_width"]


@dataclass(frozen=True)
class BasinWidth:
    """Distances to a loss rise, from :func:`basin_width`.

    Attributes:
        median: median of all distances (both signs of every direction).
        iqr: interquartile range of the distances.
        std: standard deviation of the distances.
        distances: ``(n_directions, 2)``; column 0 along :math:`-d`, column 1 along
            :math:`+d`, in units of the (normalised) direction.
        reached: ``(n_directions, 2)`` bool; False where the loss did not rise by ``rise``
            within ``max_distance`` (the distance is then ``max_distance``, a lower bound).
        loss: the loss at the weights.
        rise: the rise used.
        vectorized: whether the points were evaluated with ``vmap``.
    """

    median: float
    iqr: float
    std: float
    distances: np.ndarray
    reached: np.ndarray
    loss: float
    rise: float
    vectorized: bool


def basin_width(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    *,
    rise: float = 0.1,
    n_directions: int = 10,
    seed: int = 0,
    max_distance: float = 10.0,
    tol: float = 1e-3,
    directions: Any = None,
    normalization: str = "filter",
    bn: str = "keep",
    bn_batches: Any = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    device: torch.device | str | None = None,
) -> BasinWidth:
    """How far the loss stays within ``rise`` of its value, along random directions.

    For each direction :math:`d` and sign :math:`s = \\pm 1`,

    .. math::

        r_{d,s} = \\min \\{ t > 0 : L(w + s\\,t\\,d) \\ge L(w) + \\text{rise} \\},

    found by scanning :math:`t = \\text{max\\_distance} \\cdot 2^{-j}`, :math:`j = 20, \\dots,
    0`, for the first grid point over the threshold and bisecting between it and the grid
    point before until the bracket is narrower than ``tol`` relative (all lines bisected
    together, one vmapped chunk per round). A rise-and-fall narrower than the grid spacing
    can be missed. For a quadratic at its minimum,
    :math:`r = \\sqrt{2\\,\\text{rise} / d^\\top H d}`.

    Args:
        model, loss_fn, batches: as in :mod:`switchema.analysis.sharpness`.
        rise: the loss increase that ends the basin (absolute, > 0).
        n_directions: random directions (ignored if ``directions`` is given).
        seed: seed of the random directions.
        max_distance: largest distance searched (> 0).
        tol: relative width of the final bisection bracket.
        directions: explicit directions (dicts or flat tensors) instead of random ones.
        normalization: normalisation of the random directions (see
            :func:`random_directions`).
        bn, bn_batches, chunk_size, vectorize, device: as for :func:`interpolate`.

    Returns:
        :class:`BasinWidth` with ``median``, ``iqr``, ``std``, ``distances``, ``reached``.

    Example: at the minimum of the quadratic of :func:`landscape_1d`'s example,
    :math:`H = \\operatorname{diag}(1, 4)`, a rise of 0.5 is reached at
    :math:`r = \\sqrt{1 / d^\\top H d}`: 1 along :math:`\\pm(1, 0)` and 0.5 along
    :math:`\\pm(0, 1)`::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> model.weight = nn.Parameter(torch.zeros(1, 2))
        >>> dirs = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]  # default: random ones
        >>> bw = basin_width(model, nn.MSELoss(), [(x, y)], rise=0.5, directions=dirs, tol=1e-6)
        >>> bw.distances.round(4).tolist(), round(bw.median, 4), bool(bw.reached.all())
        ([[1.0, 1.0], [0.5, 0.5]], 0.75, True)
    """
    where = "basin_width"
    check_model(model, where)
    rise = check_real(rise, f"{where}: rise", minimum=0.0, min_open=True)
    seed = check_int(seed, f"{where}: seed")
    max_distance = check_real(max_distance, f"{where}: max_distance", minimum=0.0, min_open=True)
    tol = check_real(tol, f"{where}: tol", minimum=0.0, min_open=True)
    ev = make_evaluator(
        model,
        loss_fn,
        batches,
        metric_fn=None,
        bn=bn,
        bn_batches=bn_batches,
        chunk_size=chunk_size,
        vectorize=vectorize,
        device=device,
        where=where,
    )
    if directions is None:
        n_directions = check_int(n_directions, f"{where}: n_directions", minimum=1)
        directions = random_directions(
            model, n_directions, seed=seed, normalization=normalization, device=ev.obj.device
        )
    dmat = directions_matrix(ev.obj, directions, None, where)
    m = dmat.shape[0]
    base = ev.obj.base_vector()
    # Line l = 2*k + (0 for -d_k, 1 for +d_k).
    signs = np.tile([-1.0, 1.0], m)
    owner = np.repeat(np.arange(m), 2)
    n_lines = 2 * m

    def coeffs_at(lines: np.ndarray, ts: np.ndarray) -> np.ndarray:
        c = np.zeros((len(lines), m))
        c[np.arange(len(lines)), owner[lines]] = signs[lines] * ts
        return c

    grid = max_distance * 2.0 ** -np.arange(20, -1, -1.0)
    all_lines = np.arange(n_lines)
    lines_rep = np.repeat(all_lines, len(grid))
    ts_rep = np.tile(grid, n_lines)
    coeffs = np.concatenate([np.zeros((1, m)), coeffs_at(lines_rep, ts_rep)])
    losses, _ = ev.evaluate(base, dmat, coeffs)
    loss0 = float(losses[0])
    threshold = loss0 + rise
    above = (losses[1:] >= threshold).reshape(n_lines, len(grid))
    reached = above.any(axis=1)
    first = np.where(reached, above.argmax(axis=1), len(grid) - 1)
    hi = np.where(reached, grid[first], max_distance)
    lo = np.where(reached & (first > 0), grid[np.maximum(first - 1, 0)], 0.0)
    lo = np.where(reached, lo, max_distance)
    while True:
        active = np.flatnonzero(reached & (hi - lo > tol * hi))
        if active.size == 0:
            break
        mid = 0.5 * (lo[active] + hi[active])
        vals, _ = ev.evaluate(base, dmat, coeffs_at(active, mid))
        up = vals >= threshold
        hi[active[up]] = mid[up]
        lo[active[~up]] = mid[~up]
    dist = np.where(reached, 0.5 * (lo + hi), max_distance)
    q25, q50, q75 = np.percentile(dist, [25, 50, 75])
    return BasinWidth(
        median=float(q50),
        iqr=float(q75 - q25),
        std=float(dist.std()),
        distances=dist.reshape(m, 2),
        reached=reached.reshape(m, 2),
        loss=loss0,
        rise=rise,
        vectorized=bool(ev.vectorized),
    )
