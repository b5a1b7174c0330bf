"""Loss along the straight path between two or more weight vectors (state dicts), e.g. from
the online model to its EMA and on to Switch EMA's weights: linear mode connectivity.

The loss is the mean over fixed batches of :mod:`switchema.analysis.objective`, evaluated
through the grid engine of :mod:`switchema.analysis.landscape` (``bn``, ``chunk_size``,
``vectorize`` are explained there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_int
from ._arguments import check_model
from ._grid import make_evaluator

__all__ = ["InterpolationResult", "interpolate"]


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
