"""Random directions normalised per filter, and the loss along one or two of them.

Directions are normalised per filter as in Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets" (:func:`random_directions`), so distances are in units of the weights' own scale
and comparable between networks; :func:`landscape_1d` and :func:`landscape_2d` evaluate the
mean loss over fixed batches on a line or a plane through the weights, with the grid engine of
:mod:`switchema.analysis.landscape` (``bn``, ``chunk_size``, ``vectorize`` are explained
there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int
from ._arguments import check_bool, check_model, cpu_generator, resolve_device
from ._grid import check_span, directions_matrix, make_evaluator

__all__ = [
    "NORMALIZATIONS",
    "Landscape1D",
    "Landscape2D",
    "landscape_1d",
    "landscape_2d",
    "random_directions",
]

NORMALIZATIONS = ("filter", "layer", "none")


def random_directions(
    model: nn.Module,
    n: int,
    *,
    seed: int,
    normalization: str = "filter",
    include_bias_bn: bool = False,
    device: torch.device | str | None = None,
) -> list[dict[str, Tensor]]:
    """``n`` seeded Gaussian directions over the trainable parameters, normalised per filter.

    With ``normalization="filter"`` (Li et al. 2018) every filter of the direction (one
    output channel: a slice along dim 0 of a weight with 2+ dims) is rescaled to the norm of
    the corresponding filter of the weights,

    .. math::

        d_{f} \\leftarrow \\frac{d_{f}}{\\|d_{f}\\|} \\|w_{f}\\|,

    so a step :math:`\\alpha d` changes every filter by the fraction :math:`\\alpha` of its
    own size, whatever the scale of the layer. ``"layer"`` rescales each parameter tensor as
    a whole, ``"none"`` leaves the raw Gaussian. Parameters with at most one dimension
    (biases, BatchNorm / LayerNorm weights) get a zero direction unless ``include_bias_bn``,
    in which case each is treated as one filter.

    Every parameter draws its Gaussian from one CPU generator in ``named_parameters()``
    order (whether or not it is zeroed), so a seed gives the same directions on any device
    and with either ``include_bias_bn``.

    Args:
        model: the network whose weights set the scales.
        n: number of directions (>= 1).
        seed: seed of the generator (required, so that figures are reproducible).
        normalization: ``"filter"``, ``"layer"`` or ``"none"``.
        include_bias_bn: perturb 1-D parameters too.
        device: where the directions live (default: the model's parameter device).

    Returns:
        A list of ``n`` dicts ``{name: tensor}`` over the trainable parameters.

    Example: every filter (row) of a direction gets the norm of the weights' row, 5 and 2;
    the bias gets a zero direction; the same seed gives the same directions::

        >>> model = nn.Linear(2, 2)
        >>> model.weight = nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        >>> d1, d2 = random_directions(model, 2, seed=0)
        >>> [round(float(v), 4) for v in d1["weight"].norm(dim=1)], d1["bias"].tolist()
        ([5.0, 2.0], [0.0, 0.0])
        >>> torch.equal(random_directions(model, 1, seed=0)[0]["weight"], d1["weight"])
        True
        >>> torch.equal(d1["weight"], d2["weight"])
        False
    """
    where = "random_directions"
    check_model(model, where)
    n = check_int(n, f"{where}: n", minimum=1)
    seed = check_int(seed, f"{where}: seed")
    normalization = check_choice(normalization, f"{where}: normalization", NORMALIZATIONS)
    include_bias_bn = check_bool(include_bias_bn, "include_bias_bn", where)
    dev = resolve_device(model, device, where)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{where}: the model has no parameters with requires_grad=True")
    gen = cpu_generator(seed)
    out = []
    for _ in range(n):
        direction = {}
        for name, p in named:
            d = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(dev)
            w = p.detach().to(dev)
            if p.ndim <= 1 and not include_bias_bn:
                d = torch.zeros_like(d)
            elif normalization == "filter" and p.ndim >= 2:
                dn = d.reshape(d.shape[0], -1).norm(dim=1)
                wn = w.reshape(w.shape[0], -1).norm(dim=1)
                d = d * (wn / (dn + 1e-10)).reshape(-1, *([1] * (p.ndim - 1)))
            elif normalization != "none":
                d = d * (w.norm() / (d.norm() + 1e-10))
            direction[name] = d
        out.append(direction)
    return out


# ---------------------------------------------------------------------------
# 1-D and 2-D landscapes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Landscape1D:
    """Loss along :math:`w + \\alpha d`, from :func:`landscape_1d`.

    Attributes:
        alphas: ``(points,)`` coefficients.
        losses: ``(points,)`` mean losses.
        metrics: ``(points,)`` mean metrics, or ``None``.
        vectorized: whether the points were evaluated with ``vmap``.
    """

    alphas: np.ndarray
    losses: np.ndarray
    metrics: np.ndarray | None
    vectorized: bool


@dataclass(frozen=True)
class Landscape2D:
    """Loss on the plane :math:`w + \\alpha d_1 + \\beta d_2`, from :func:`landscape_2d`.

    Attributes:
        alphas: ``(na,)`` coefficients of ``d1``.
        betas: ``(nb,)`` coefficients of ``d2``.
        losses: ``(na, nb)``; ``losses[i, j]`` is at ``(alphas[i], betas[j])``.
        metrics: ``(na, nb)`` or ``None``.
        vectorized: whether the points were evaluated with ``vmap``.
    """

    alphas: np.ndarray
    betas: np.ndarray
    losses: np.ndarray
    metrics: np.ndarray | None
    vectorized: bool


def landscape_1d(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    directions: Any,
    *,
    span: tuple[float, float] = (-1.0, 1.0),
    points: int = 21,
    metric_fn: Callable[[Any, Any], float] | None = None,
    bn: str = "keep",
    bn_batches: Any = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    device: torch.device | str | None = None,
) -> Landscape1D:
    """Loss (and metric) along one direction: :math:`L(w + \\alpha d)` on a uniform grid.

    Args:
        model, loss_fn, batches: as in :mod:`switchema.analysis.sharpness`.
        directions: one direction (a dict ``{name: tensor}`` as from
            :func:`random_directions`, or a flat tensor), or a list holding one.
        span: ``(low, high)`` range of :math:`\\alpha`.
        points: grid points (>= 2), both ends included.
        metric_fn, bn, bn_batches, chunk_size, vectorize, device: as for :func:`interpolate`.

    Returns:
        :class:`Landscape1D`.

    Example: at the minimum of the quadratic :math:`(w_1^2 + 4 w_2^2) / 2` (the bias-free
    linear model of :func:`interpolate`'s example), along :math:`d = (1, 1)` the loss is
    :math:`2.5 \\alpha^2`::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> model.weight = nn.Parameter(torch.zeros(1, 2))
        >>> d = torch.tensor([1.0, 1.0])  # or a dict, e.g. from random_directions(model, 1, seed=0)
        >>> res = landscape_1d(model, nn.MSELoss(), [(x, y)], d, span=(-1, 1), points=5)
        >>> res.alphas.tolist(), [round(float(v), 4) for v in res.losses]
        ([-1.0, -0.5, 0.0, 0.5, 1.0], [2.5, 0.625, 0.0, 0.625, 2.5])
    """
    where = "landscape_1d"
    lo, hi = check_span(span, "span", where)
    points = check_int(points, f"{where}: points", minimum=2)
    ev = make_evaluator(
        model,
        loss_fn,
        batches,
        metric_fn=metric_fn,
        bn=bn,
        bn_batches=bn_batches,
        chunk_size=chunk_size,
        vectorize=vectorize,
        device=device,
        where=where,
    )
    dmat = directions_matrix(ev.obj, directions, 1, where)
    alphas = np.linspace(lo, hi, points)
    losses, metrics = ev.evaluate(ev.obj.base_vector(), dmat, alphas[:, None])
    return Landscape1D(alphas, losses, metrics, bool(ev.vectorized))


def landscape_2d(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    directions: Sequence[Any],
    *,
    span: tuple[float, float] = (-1.0, 1.0),
    points: int | tuple[int, int] = 21,
    metric_fn: Callable[[Any, Any], float] | None = None,
    bn: str = "keep",
    bn_batches: Any = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    device: torch.device | str | None = None,
) -> Landscape2D:
    """Loss (and metric) on a plane: :math:`L(w + \\alpha d_1 + \\beta d_2)` on a grid.

    The ``points x points`` weight vectors are built in chunks of ``chunk_size`` and
    evaluated with one vmapped ``functional_call`` per chunk and batch.

    Args:
        model, loss_fn, batches: as in :mod:`switchema.analysis.sharpness`.
        directions: two directions ``[d1, d2]`` (dicts or flat tensors).
        span: ``(low, high)`` range of both :math:`\\alpha` and :math:`\\beta`.
        points: grid points per axis (>= 2), or a pair ``(n_alpha, n_beta)``.
        metric_fn, bn, bn_batches, chunk_size, vectorize, device: as for :func:`interpolate`.

    Returns:
        :class:`Landscape2D` with ``losses[i, j]`` at ``(alphas[i], betas[j])``.

    Example: at the minimum of the quadratic of :func:`landscape_1d`'s example, along the
    axes :math:`d_1 = (1, 0)` and :math:`d_2 = (0, 1)` the loss is
    :math:`(\\alpha^2 + 4 \\beta^2) / 2`::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> model.weight = nn.Parameter(torch.zeros(1, 2))
        >>> d1, d2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
        >>> res = landscape_2d(model, nn.MSELoss(), [(x, y)], [d1, d2], points=3)
        >>> res.alphas.tolist(), res.losses.round(4).tolist()
        ([-1.0, 0.0, 1.0], [[2.5, 0.5, 2.5], [2.0, 0.0, 2.0], [2.5, 0.5, 2.5]])
    """
    where = "landscape_2d"
    lo, hi = check_span(span, "span", where)
    if isinstance(points, Sequence) and not isinstance(points, str):
        if len(points) != 2:
            raise ValueError(f"{where}: points must be an int or a pair of ints, got {points!r}")
        na = check_int(points[0], f"{where}: points[0]", minimum=2)
        nb = check_int(points[1], f"{where}: points[1]", minimum=2)
    else:
        na = nb = check_int(points, f"{where}: points", minimum=2)
    ev = make_evaluator(
        model,
        loss_fn,
        batches,
        metric_fn=metric_fn,
        bn=bn,
        bn_batches=bn_batches,
        chunk_size=chunk_size,
        vectorize=vectorize,
        device=device,
        where=where,
    )
    dmat = directions_matrix(ev.obj, directions, 2, where)
    alphas, betas = np.linspace(lo, hi, na), np.linspace(lo, hi, nb)
    aa, bb = np.meshgrid(alphas, betas, indexing="ij")
    coeffs = np.stack([aa.reshape(-1), bb.reshape(-1)], axis=1)
    losses, metrics = ev.evaluate(ev.obj.base_vector(), dmat, coeffs)
    return Landscape2D(
        alphas,
        betas,
        losses.reshape(na, nb),
        None if metrics is None else metrics.reshape(na, nb),
        bool(ev.vectorized),
    )
