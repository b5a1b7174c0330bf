"""Worst-case (SAM-style) sharpness: the largest loss increase within a ball around the
weights, plain or filter-normalised (ASAM), found by projected gradient ascent.

The loss is :math:`L(w)` of :mod:`switchema.analysis.objective` (the batch-size weighted mean
over fixed batches); the model is never mutated (see :mod:`switchema.analysis.sharpness`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, check_real
from ._arguments import check_bool, cpu_generator
from .objective import Objective, training_mode

__all__ = ["SharpnessResult", "worst_case_sharpness"]


@dataclass(frozen=True)
class SharpnessResult:
    """Worst-case sharpness from :func:`worst_case_sharpness`.

    Attributes:
        increase: the largest :math:`L(w+\\epsilon) - L(w)` found in the ball (a lower bound
            on the true maximum; exact for a quadratic once the ascent has converged).
        loss: :math:`L(w)`.
        perturbed_loss: :math:`L(w+\\epsilon)` at that point (``loss + increase``).
        perturbation_norm: :math:`\\|\\epsilon\\|_2` of that point in weight space.
        rho: the radius.
        history: the increase after each ascent step (step 1 is SAM's).
    """

    increase: float
    loss: float
    perturbed_loss: float
    perturbation_norm: float
    rho: float
    history: tuple[float, ...]


def _filter_scale(obj: Objective) -> Tensor:
    """ASAM's filter-wise scaling :math:`T_w`: filter norms for filters, |w_j| elsewhere."""
    parts = []
    for n in obj.names:
        w = obj.base[n].to(obj.dtype)
        if w.ndim >= 2:
            # One filter = one output channel (slice along dim 0): conv kernels, linear rows.
            norms = w.reshape(w.shape[0], -1).norm(dim=1)
            parts.append(norms[:, None].expand(w.shape[0], w[0].numel()).reshape(-1))
        else:
            parts.append(w.abs().reshape(-1))
    return torch.cat(parts)


def worst_case_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    rho: float = 0.05,
    *,
    steps: int = 5,
    lr: float | None = None,
    filter_normalized: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
) -> SharpnessResult:
    """Largest loss increase within a ball of radius ``rho`` around the weights.

    .. math::

        S_\\rho(w) = \\max_{\\|T^{-1}\\epsilon\\|_2 \\le \\rho} L(w + \\epsilon) - L(w)

    found by projected gradient ascent in :math:`\\delta = T^{-1}\\epsilon`:

    * step 1 (SAM's): :math:`\\delta_1 = \\rho\\, T g / \\|T g\\|` with :math:`g = \\nabla L(w)`
      (a seeded random direction if :math:`g = 0`, e.g. exactly at a minimum);
    * later steps, with :math:`u_t = T \\nabla L(w + T\\delta_t)`: if ``lr`` is None,
      :math:`\\delta_{t+1} = \\rho\\, u_t / \\|u_t\\|` (a SAM step from the perturbed point; on a
      quadratic at its minimum this is power iteration, converging to
      :math:`\\tfrac12\\rho^2\\lambda_{\\max}`); otherwise a normalised step of length ``lr``,
      :math:`\\delta_{t+1} = \\Pi_\\rho(\\delta_t + \\mathrm{lr}\\, u_t / \\|u_t\\|)`, projected
      onto the ball.

    The result is the best of the ``steps`` evaluated points. :math:`T = I` by default; with
    ``filter_normalized=True`` it is ASAM's filter-wise :math:`T_w`: every coordinate of a
    filter (one output channel, i.e. a slice along dim 0 of a weight with 2+ dims) is scaled
    by that filter's norm and every other parameter (biases, norm layers) by its own
    magnitude :math:`|w_j|`, so ``rho`` is relative to the weights and the measure is
    invariant to rescaling filters. Parameters that are exactly zero are then not perturbed.

    For a quadratic :math:`L(w+\\epsilon) = L(w) + g^\\top\\epsilon + \\tfrac12
    \\epsilon^\\top H\\epsilon` (plain ball) :math:`S_\\rho \\le \\rho\\|g\\| +
    \\tfrac12\\rho^2\\lambda_{\\max}`, with equality at a minimum (:math:`g = 0`).

    Args:
        model, loss_fn, batches, device, eval_mode: as for :func:`hvp`.
        rho: radius of the ball (> 0).
        steps: points evaluated (>= 1); each costs one forward and one backward pass.
        lr: ascent step length in the :math:`\\delta` coordinates, or None (see above).
        filter_normalized: use the filter-wise scaling :math:`T_w`.
        seed: seed of the start direction when the gradient is zero.

    Returns:
        :class:`SharpnessResult` with ``increase``, ``loss``, ``perturbed_loss``, ...

    Example: on the quadratic of :func:`hvp`'s example (:math:`\\lambda_{\\max} = 4`) the bound
    is reached at the minimum, :math:`\\tfrac12 \\cdot 0.1^2 \\cdot 4 = 0.02`; at
    :math:`w = (1, 1)`, where :math:`g = (1, 4)`, the increase lies between
    :math:`\\rho\\|g\\|` and the bound::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> model.weight = nn.Parameter(torch.zeros(1, 2))
        >>> s = worst_case_sharpness(model, nn.MSELoss(), [(x, y)], rho=0.1, steps=10)
        >>> round(s.increase, 4), round(s.perturbation_norm, 4)
        (0.02, 0.1)
        >>> model.weight = nn.Parameter(torch.ones(1, 2))
        >>> s = worst_case_sharpness(model, nn.MSELoss(), [(x, y)], rho=0.1, steps=10)
        >>> 0.1 * 17**0.5 <= s.increase <= 0.1 * 17**0.5 + 0.02
        True
    """
    where = "worst_case_sharpness"
    rho = check_real(rho, f"{where}: rho", minimum=0.0, min_open=True)
    steps = check_int(steps, f"{where}: steps", minimum=1)
    if lr is not None:
        lr = check_real(lr, f"{where}: lr", minimum=0.0, min_open=True)
    filter_normalized = check_bool(filter_normalized, "filter_normalized", where)
    seed = check_int(seed, f"{where}: seed")
    eval_mode = check_bool(eval_mode, "eval_mode", where)
    obj = Objective(model, loss_fn, batches, device=device, where=where)
    w0 = obj.base_vector()
    scale = (
        _filter_scale(obj)
        if filter_normalized
        else torch.ones(obj.numel, device=obj.device, dtype=obj.dtype)
    )
    tiny = torch.finfo(obj.dtype).tiny
    history: list[float] = []
    best = (-math.inf, 0.0)
    with training_mode(model, not eval_mode):
        loss0, g = obj.loss_and_grad(w0)
        u = scale * g
        if float(u.norm()) <= tiny:
            # Stationary point: no ascent direction; start from a random one instead.
            u = torch.randn(obj.numel, generator=cpu_generator(seed), dtype=obj.dtype).to(
                obj.device
            )
            u = u * (scale != 0)
        un = float(u.norm())
        if un <= tiny:
            raise ValueError(
                f"{where}: no parameter can be perturbed (all filter scales are zero); use "
                "filter_normalized=False"
            )
        delta = rho * u / un
        for t in range(steps):
            point = w0 + scale * delta
            if t < steps - 1:
                loss, g = obj.loss_and_grad(point)
            else:
                loss = obj.loss_at(point)
            inc = loss - loss0
            history.append(inc)
            if inc > best[0]:
                best = (inc, float((scale * delta).norm()))
            if t == steps - 1:
                break
            u = scale * g
            un = float(u.norm())
            if un <= tiny:
                break  # stationary inside the ball: no further ascent
            if lr is None:
                delta = rho * u / un
            else:
                delta = delta + lr * u / un
                dn = float(delta.norm())
                if dn > rho:
                    delta = delta * (rho / dn)
    return SharpnessResult(
        increase=best[0],
        loss=loss0,
        perturbed_loss=loss0 + best[0],
        perturbation_norm=best[1],
        rho=rho,
        history=tuple(history),
    )
