"""Loss landscapes: interpolation paths, random-direction slices and basin widths.

Every function evaluates the mean loss over a fixed list of batches (batch-size weighted, as
in :mod:`switchema.analysis.sharpness`) at weights

.. math::

    w(c) = w_0 + \\sum_k c_k d_k

for many coefficient vectors :math:`c` (a grid, a path, bisection points) and never mutates
the model: weights are passed with :func:`torch.func.functional_call`. Grid points are
evaluated several at a time by stacking their weight vectors and mapping the model over the
stack with :func:`torch.func.vmap` (``chunk_size`` points per call, to bound memory); if the
model cannot be vmapped the points are evaluated one by one (``vectorize=None``, the
default, falls back silently and reports it in the result's ``vectorized``).

BatchNorm, as the caller chooses with ``bn``:

* ``"keep"``: evaluate in ``eval()`` mode with fixed running statistics (the model's, or the
  interpolated ones of the states in :func:`interpolate`);
* ``"recompute"``: re-estimate the statistics at every point with one pass over
  ``bn_batches`` (default: ``batches``) using :func:`switchema.batchnorm.recompute_bn` on a
  private copy of the model, then evaluate in ``eval()`` mode. One point at a time, so much
  slower. For a model without BatchNorm it is the same as ``"keep"``.

Directions are normalised per filter as in Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets" (:func:`random_directions`), so distances are in units of the weights' own
scale and comparable between networks.

(Over 500 lines on purpose: one grid-evaluation engine, vmapped and point by point, serves
every function here; splitting it from its callers would only add an import.)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_real, is_real
from ..batchnorm import has_batchnorm, recompute_bn
from ._objective import (
    Objective,
    check_bool,
    check_callable,
    check_model,
    cpu_generator,
    resolve_device,
    training_mode,
)

__all__ = [
    "BN_MODES",
    "NORMALIZATIONS",
    "BasinWidth",
    "InterpolationResult",
    "Landscape1D",
    "Landscape2D",
    "basin_width",
    "interpolate",
    "landscape_1d",
    "landscape_2d",
    "random_directions",
]

BN_MODES = ("keep", "recompute")
NORMALIZATIONS = ("filter", "layer", "none")

# Stacked weight vectors per vmap call are capped at this many numbers (256 MB in float32);
# activations scale with the chunk too, so pass a smaller chunk_size for big inputs.
_STACK_BUDGET = 2**26
_MAX_CHUNK = 64


# ---------------------------------------------------------------------------
# Grid evaluation engine
# ---------------------------------------------------------------------------


def _select(out: Any, i: int) -> Any:
    """Point ``i`` of a vmapped model output (a tensor or a tuple/list/dict of tensors)."""
    if isinstance(out, Tensor):
        return out[i]
    if isinstance(out, Mapping):
        return {k: _select(v, i) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_select(v, i) for v in out)
    return out


class _Evaluator:
    """Loss (and metric) at many points ``base + C @ D`` of an :class:`Objective`."""

    def __init__(
        self,
        obj: Objective,
        *,
        metric_fn: Any,
        bn: Any,
        bn_batches: Any,
        chunk_size: Any,
        vectorize: Any,
        where: str,
    ) -> None:
        self.obj = obj
        self.where = where
        self.metric_fn = check_callable(metric_fn, "metric_fn", where, allow_none=True)
        bn = check_choice(bn, f"{where}: bn", BN_MODES)
        self.recompute = bn == "recompute" and has_batchnorm(obj.model)
        if bn_batches is not None and bn != "recompute":
            raise ValueError(f"{where}: bn_batches is only used with bn='recompute', got bn={bn!r}")
        self.bn_batches: list[Any] = []
        if self.recompute:
            self.bn_batches = (
                [(x, y) for x, y, _ in obj.batches] if bn_batches is None else list(bn_batches)
            )
        if self.recompute and not self.bn_batches:
            raise ValueError(f"{where}: bn_batches is empty; pass at least one batch")
        if chunk_size is None:
            chunk_size = max(1, min(_MAX_CHUNK, _STACK_BUDGET // max(obj.numel, 1)))
        self.chunk_size = check_int(chunk_size, f"{where}: chunk_size", minimum=1)
        if vectorize is not None:
            vectorize = check_bool(vectorize, "vectorize (True, False or None)", where)
        # The recompute path needs a model whose buffers change per point: never vmapped.
        self.vectorize = False if self.recompute else vectorize
        self.vectorized: bool | None = None if self.vectorize is None else self.vectorize
        self._copy: nn.Module | None = None

    # -- one point at a time ---------------------------------------------------------
    def _accumulate(self, out: Any, i: int, losses: list[float], metrics: list[float]) -> None:
        x, y, _ = self.obj.batches[i]
        w = self.obj.weights[i]
        loss = self.obj.loss_fn(out, y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(
                f"{self.where}: loss_fn must return a scalar tensor (the batch's mean loss), got "
                f"{type(loss).__name__}"
            )
        losses.append(w * float(loss))
        if self.metric_fn is not None:
            m = self.metric_fn(out, y)
            try:
                metrics.append(w * float(m))
            except (TypeError, ValueError, RuntimeError) as e:
                raise TypeError(
                    f"{self.where}: metric_fn must return a number (e.g. the batch's accuracy), "
                    f"got {type(m).__name__}"
                ) from e

    def _one(self, vec: Tensor) -> tuple[float, float]:
        losses: list[float] = []
        metrics: list[float] = []
        if self.recompute:
            model = self._recomputed(vec)
            for i, (x, _, _) in enumerate(self.obj.batches):
                self._accumulate(model(x), i, losses, metrics)
        else:
            params = self.obj.unflatten(vec)
            for i, (x, _, _) in enumerate(self.obj.batches):
                self._accumulate(self.obj.forward(params, x), i, losses, metrics)
        return math.fsum(losses), (math.fsum(metrics) if metrics else math.nan)

    def _recomputed(self, vec: Tensor) -> nn.Module:
        if self._copy is None:
            # A private copy: recompute_bn writes running statistics into the module.
            self._copy = copy.deepcopy(self.obj.model).to(self.obj.device)
        model = self._copy
        tensors = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, t in self.obj.unflatten(vec).items():
            tensors[name].copy_(t)
        recompute_bn(model, self.bn_batches, device=self.obj.device)
        model.eval()
        return model

    # -- a chunk at once -----------------------------------------------------------------
    def _vmapped(self, stack: Tensor) -> tuple[list[float], list[float]]:
        obj = self.obj
        params = obj.unflatten(stack)

        def f(p: Mapping[str, Tensor], x: Any) -> Any:
            return obj.forward(p, x)

        mapped = torch.func.vmap(f, in_dims=(0, None))
        c = stack.shape[0]
        per_point: list[tuple[list[float], list[float]]] = [([], []) for _ in range(c)]
        for i, (x, _, _) in enumerate(obj.batches):
            out = mapped(params, x)
            # The loss and metric are applied per point: they need not be vmappable.
            for j in range(c):
                self._accumulate(_select(out, j), i, *per_point[j])
        return (
            [math.fsum(ls) for ls, _ in per_point],
            [math.fsum(ms) if ms else math.nan for _, ms in per_point],
        )

    @torch.no_grad()
    def evaluate(
        self, base: Tensor | None, directions: Tensor, coeffs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Loss and metric at ``base + coeffs[g] @ directions`` for every row ``g``."""
        obj = self.obj
        g_total = coeffs.shape[0]
        losses = np.empty(g_total)
        metrics = np.empty(g_total)
        cmat = torch.as_tensor(coeffs, dtype=obj.dtype, device=obj.device)
        with training_mode(obj.model, False):
            for lo in range(0, g_total, self.chunk_size):
                hi = min(lo + self.chunk_size, g_total)
                # The same stacked construction feeds both paths, so they see identical weights.
                stack = cmat[lo:hi] @ directions
                if base is not None:
                    stack = stack + base
                done = False
                if self.vectorized is None:
                    try:
                        ls, ms = self._vmapped(stack)
                        self.vectorized = done = True
                    except Exception:
                        # Any failure under vmap (an unsupported op, a data-dependent branch,
                        # train-mode randomness) means: evaluate point by point instead. A
                        # genuine error in loss_fn or the model is raised again by the loop.
                        self.vectorized = False
                elif self.vectorized:
                    ls, ms = self._vmapped(stack)
                    done = True
                if not done:
                    pairs = [self._one(stack[j]) for j in range(hi - lo)]
                    ls, ms = [p[0] for p in pairs], [p[1] for p in pairs]
                losses[lo:hi] = ls
                metrics[lo:hi] = ms
        return losses, (metrics if self.metric_fn is not None else None)


def _evaluator(
    model: Any,
    loss_fn: Any,
    batches: Any,
    *,
    metric_fn: Any,
    bn: Any,
    bn_batches: Any,
    chunk_size: Any,
    vectorize: Any,
    device: Any,
    where: str,
    vary: Sequence[str] | None = None,
) -> _Evaluator:
    obj = Objective(model, loss_fn, batches, device=device, where=where, vary=vary)
    return _Evaluator(
        obj,
        metric_fn=metric_fn,
        bn=bn,
        bn_batches=bn_batches,
        chunk_size=chunk_size,
        vectorize=vectorize,
        where=where,
    )


# ---------------------------------------------------------------------------
# Argument helpers
# ---------------------------------------------------------------------------


def _check_span(span: Any, name: str, where: str) -> tuple[float, float]:
    if (
        isinstance(span, (str, bytes))
        or not isinstance(span, Sequence)
        or len(span) != 2
        or not all(is_real(v) for v in span)
    ):
        raise TypeError(f"{where}: {name} must be a pair (low, high) of numbers, got {span!r}")
    lo, hi = float(span[0]), float(span[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{where}: {name} must be finite with low < high, got {span!r}")
    return lo, hi


def _directions_matrix(obj: Objective, directions: Any, count: int | None, where: str) -> Tensor:
    """Directions (a dict / flat tensor, or a sequence of them) as a ``(m, P)`` matrix."""
    if isinstance(directions, (Tensor, Mapping)):
        directions = [directions]
    if isinstance(directions, (str, bytes)) or not isinstance(directions, Sequence):
        raise TypeError(
            f"{where}: directions must be a direction (dict {{name: tensor}} or flat tensor) or "
            f"a list of them, got {type(directions).__name__}"
        )
    if count is not None and len(directions) != count:
        raise ValueError(
            f"{where}: needs exactly {count} direction{'s' if count > 1 else ''}, got "
            f"{len(directions)}"
        )
    if not directions:
        raise ValueError(f"{where}: directions is empty")
    return torch.stack(
        [obj.vector_from(d, f"directions[{i}]")[0] for i, d in enumerate(directions)]
    )


# ---------------------------------------------------------------------------
# Interpolation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InterpolationResult:
    """Loss along a piecewise-straight path, from :func:`interpolate`.

    Attributes:
        alphas: path coordinate of each point; state ``i`` sits at ``alpha = i``.
        losses: mean loss at each point.
        metrics: mean ``metric_fn`` at each point, or ``None``.
        endpoints: indices into ``alphas`` of the given states (``alphas[endpoints[i]] == i``).
        vectorized: whether the points were evaluated with ``vmap``.
    """

    alphas: np.ndarray
    losses: np.ndarray
    metrics: np.ndarray | None
    endpoints: tuple[int, ...]
    vectorized: bool


def interpolate(
    model: nn.Module,
    states: Sequence[Mapping[str, Tensor]],
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    *,
    points: int = 21,
    metric_fn: Callable[[Any, Any], float] | None = None,
    bn: str = "keep",
    bn_batches: Any = None,
    chunk_size: int | None = None,
    vectorize: bool | None = None,
    device: torch.device | str | None = None,
) -> InterpolationResult:
    """Loss along the piecewise-straight path through two or more state dicts.

    Segment :math:`i` (from state :math:`s_i` to :math:`s_{i+1}`) is
    :math:`w = (1-t)\\, s_i + t\\, s_{i+1}`, :math:`t \\in [0, 1]`, at path coordinate
    :math:`\\alpha = i + t`. Interpolated are the trainable parameters (all states must hold
    them) and the floating-point buffers present in every state (BatchNorm running
    statistics, for ``bn="keep"``); everything else is the model's own.

    Args:
        model: a model of the states' architecture (only its structure, frozen parameters
            and missing buffers are used; it is not modified).
        states: 2+ state dicts, e.g. ``[baseline, ema.averaged_state_dict(), sema_state]``.
        loss_fn, batches: as in :mod:`switchema.analysis.sharpness`.
        points: points per segment, both ends included (>= 2).
        metric_fn: optional ``metric_fn(output, target) -> float`` (a batch mean, e.g.
            accuracy), averaged like the loss.
        bn: ``"keep"`` or ``"recompute"`` (see the module docstring).
        bn_batches: batches for ``bn="recompute"`` (default: ``batches``).
        chunk_size: points per vmap call (default: automatic).
        vectorize: True (vmap, errors propagate), False (loop) or None (vmap, else loop).
        device: where to compute (default: the model's parameter device).

    Returns:
        :class:`InterpolationResult` with ``alphas``, ``losses``, ``metrics``, ``endpoints``.

    Example: a bias-free linear model on the inputs (1, 0) and (0, 2) with target 0 has the
    mean squared error :math:`(w_1^2 + 4 w_2^2) / 2`; the path (0, 0) -> (2, 1) -> (0, 1)
    passes (1, 0.5) and (1, 1), so the losses are 0, 1, 4, 2.5, 2::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> states = [{"weight": torch.tensor([w])} for w in ([0.0, 0.0], [2.0, 1.0], [0.0, 1.0])]
        >>> res = interpolate(model, states, nn.MSELoss(), [(x, y)], points=3)
        >>> res.alphas.tolist(), [round(float(v), 4) for v in res.losses]
        ([0.0, 0.5, 1.0, 1.5, 2.0], [0.0, 1.0, 4.0, 2.5, 2.0])
        >>> res.endpoints, round(float(res.losses[res.endpoints[1]]), 4)  # loss at states[1]
        ((0, 2, 4), 4.0)
    """
    where = "interpolate"
    check_model(model, where)
    points = check_int(points, f"{where}: points", minimum=2)
    if isinstance(states, (Mapping, str)) or not isinstance(states, Sequence) or len(states) < 2:
        raise TypeError(
            f"{where}: states must be a list of at least 2 state dicts, got "
            f"{type(states).__name__}"
            + (f" of length {len(states)}" if isinstance(states, Sequence) else "")
        )
    for i, s in enumerate(states):
        if not isinstance(s, Mapping):
            raise TypeError(f"{where}: states[{i}] must be a state dict, got {type(s).__name__}")
    params = [n for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{where}: the model has no parameters with requires_grad=True")
    for i, s in enumerate(states):
        missing = [n for n in params if n not in s]
        if missing:
            raise ValueError(
                f"{where}: states[{i}] lacks trainable parameters {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}"
            )
    buffers = [
        n for n, b in model.named_buffers() if b.is_floating_point() and all(n in s for s in states)
    ]
    vary = params + buffers
    ev = _evaluator(
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
        vary=vary,
    )
    obj = ev.obj
    rows = []
    for i, s in enumerate(states):
        for n, shape in zip(obj.names, obj.shapes):
            t = s[n]
            if not isinstance(t, Tensor) or t.shape != shape:
                raise ValueError(
                    f"{where}: states[{i}][{n!r}] must be a tensor of shape {tuple(shape)}, got "
                    + (f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t))
                )
        rows.append(obj.flatten(s[n].detach().to(obj.device) for n in obj.names))
    state_matrix = torch.stack(rows)
    n_seg = len(states) - 1
    t = np.linspace(0.0, 1.0, points)
    alphas, coeffs = [], []
    for seg in range(n_seg):
        for j, tj in enumerate(t):
            if seg > 0 and j == 0:
                continue  # shared with the previous segment's end
            c = np.zeros(len(states))
            c[seg], c[seg + 1] = 1.0 - tj, tj
            alphas.append(seg + tj)
            coeffs.append(c)
    losses, metrics = ev.evaluate(None, state_matrix, np.asarray(coeffs))
    return InterpolationResult(
        alphas=np.asarray(alphas),
        losses=losses,
        metrics=metrics,
        endpoints=tuple(i * (points - 1) for i in range(len(states))),
        vectorized=bool(ev.vectorized),
    )


# ---------------------------------------------------------------------------
# Random directions
# ---------------------------------------------------------------------------


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
    lo, hi = _check_span(span, "span", where)
    points = check_int(points, f"{where}: points", minimum=2)
    ev = _evaluator(
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
    dmat = _directions_matrix(ev.obj, directions, 1, where)
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
    lo, hi = _check_span(span, "span", where)
    if isinstance(points, Sequence) and not isinstance(points, str):
        if len(points) != 2:
            raise ValueError(f"{where}: points must be an int or a pair of ints, got {points!r}")
        na = check_int(points[0], f"{where}: points[0]", minimum=2)
        nb = check_int(points[1], f"{where}: points[1]", minimum=2)
    else:
        na = nb = check_int(points, f"{where}: points", minimum=2)
    ev = _evaluator(
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
    dmat = _directions_matrix(ev.obj, directions, 2, where)
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


# ---------------------------------------------------------------------------
# Basin width
# ---------------------------------------------------------------------------


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
    ev = _evaluator(
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
    dmat = _directions_matrix(ev.obj, directions, None, where)
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
