"""A small flow-matching generative model for low-dimensional data (the 2-D sets of
:mod:`switchema.lab.toy2d`, or MNIST-1D signals with ``dim=40``).

Rectified flow / conditional flow matching (Lipman et al. 2023; Liu et al. 2023): noise
``x0 ~ N(0, I)`` is carried to data ``x1`` along the straight path ``x_t = (1 - t) x0 + t x1``,
whose velocity is ``x1 - x0``. :class:`VelocityMLP` ``v(x, t)`` is trained by
:func:`flow_matching_loss`, ``E_{t ~ U(0,1)} |v(x_t, t) - (x1 - x0)|^2``, which is minimised by
``v*(x, t) = E[x1 - x0 | x_t = x]``; :func:`sample` integrates ``dx/dt = v(x, t)`` from
``t = 0`` to ``1``. Samples are scored with :mod:`switchema.lab.distances` (and, for a known
mixture, :func:`switchema.lab.toy2d.mean_log_density`); :func:`metric_noise` and :func:`sample_scores`
measure how much metrics move between independent sample draws of one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_generator, check_int
from ..analysis.objective import training_mode

__all__ = [
    "SAMPLERS",
    "TIME_EMBEDDINGS",
    "VelocityMLP",
    "flow_matching_loss",
    "metric_noise",
    "sample",
    "sample_scores",
]


# --------------------------------------------------------------------------- model and loss

TIME_EMBEDDINGS = ("sinusoidal", "linear")


class VelocityMLP(nn.Module):
    """``v(x, t)``: an MLP on ``[x, e(t)]`` with ``depth`` hidden SiLU layers of width ``hidden``.

    ``time_embedding="sinusoidal"``: ``e(t) = [sin(2^j pi t), cos(2^j pi t)]`` for
    ``j = 0 .. n_frequencies - 1``; ``"linear"``: ``e(t) = t``. The frequencies are computed,
    not stored, so the module's state is its weights only.

    Example::

        >>> torch.manual_seed(0) is not None
        True
        >>> tuple(VelocityMLP(hidden=16, depth=2)(torch.zeros(5, 2), 0.5).shape)
        (5, 2)
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        time_embedding: str = "sinusoidal",
        n_frequencies: int = 8,
    ) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim", minimum=1)
        hidden = check_int(hidden, "hidden", minimum=1)
        depth = check_int(depth, "depth", minimum=1)
        self.time_embedding = check_choice(time_embedding, "time_embedding", TIME_EMBEDDINGS)
        self.n_frequencies = check_int(n_frequencies, "n_frequencies", minimum=1)
        width = self.dim + (2 * self.n_frequencies if time_embedding == "sinusoidal" else 1)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, self.dim))

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        """``(n,)`` times to ``(n, features)``."""
        if self.time_embedding == "linear":
            return t[:, None]
        j = torch.arange(self.n_frequencies, device=t.device, dtype=t.dtype)
        angle = t[:, None] * (math.pi * 2.0**j)
        return torch.cat([angle.sin(), angle.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """``x`` ``(n, dim)``; ``t`` a number, or ``(n,)`` / ``(n, 1)`` times in [0, 1]."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (n, {self.dim}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        elif t.numel() != x.shape[0]:
            raise ValueError(f"t must be a number or hold one time per row of x, got {t.numel()}")
        return self.net(torch.cat([x, self.embed(t)], dim=1))


def flow_matching_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x1: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Conditional flow matching on the straight path, averaged over the batch and coordinates.

    ``x0 ~ N(0, I)`` and ``t ~ U(0, 1)`` are drawn from ``generator`` (on its device, then moved
    to ``x1``'s; a generator on ``x1``'s device avoids the copy), ``x_t = (1 - t) x0 + t x1``,
    and the loss is ``mean |v(x_t, t) - (x1 - x0)|^2 / d`` (``F.mse_loss``). At the optimum
    ``v = E[x1 - x0 | x_t]`` it equals ``E_t E|Var(x1 - x0 | x_t)| / d``; for ``x1 ~ N(mu, s^2 I)``
    that is ``E_t[1 + s^2 - (t s^2 - 1 + t)^2 / ((1 - t)^2 + t^2 s^2)]`` per coordinate.

    Example (the zero field pays ``E|x1 - x0|^2 / d = 1`` for ``x1 = 0``, in expectation)::

        >>> zero = lambda x, t: torch.zeros_like(x)
        >>> g = torch.Generator().manual_seed(0)
        >>> abs(float(flow_matching_loss(zero, torch.zeros(20000, 2), g)) - 1.0) < 0.02
        True
    """
    if not isinstance(x1, torch.Tensor) or x1.ndim != 2 or not x1.is_floating_point():
        raise ValueError(f"x1 must be a floating (n, d) tensor, got {x1!r:.80}")
    g = check_generator(generator)
    kw = {"generator": g, "device": g.device, "dtype": x1.dtype}
    x0 = torch.randn(x1.shape, **kw).to(x1.device)
    t = torch.rand((x1.shape[0],), **kw).to(x1.device)
    xt = (1 - t)[:, None] * x0 + t[:, None] * x1
    return F.mse_loss(model(xt, t), x1 - x0)


# --------------------------------------------------------------------------- sampling

SAMPLERS = ("heun", "euler")


def _device_of(model: Any, fallback: torch.device) -> torch.device:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
    return fallback


@torch.no_grad()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    steps: int,
    generator: torch.Generator,
    *,
    method: str = "heun",
    dim: int | None = None,
) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t)`` from noise ``x(0) ~ N(0, I)`` to ``x(1)`` in ``steps`` steps.

    The noise is drawn once, from ``generator``, so equally seeded generators give two models
    the same starting points (a paired comparison); the rest is deterministic. ``"euler"``:
    ``x += dt v(x, t)``; ``"heun"`` (second order, two evaluations per step): predict
    ``x' = x + dt v(x, t)``, then ``x += dt (v(x, t) + v(x', t + dt)) / 2``. The model runs in
    eval mode without gradients (modes restored after), on its parameters' device; ``dim``
    defaults to ``model.dim``.

    Example (``v = 1`` moves every point by exactly 1)::

        >>> ones = lambda x, t: torch.ones_like(x)
        >>> x = sample(ones, 3, 4, torch.Generator().manual_seed(0), dim=2)
        >>> torch.allclose(x - 1, torch.randn(3, 2, generator=torch.Generator().manual_seed(0)))
        True
    """
    n = check_int(n, "n", minimum=1)
    steps = check_int(steps, "steps", minimum=1)
    g = check_generator(generator)
    method = check_choice(method, "method", SAMPLERS)
    if dim is None and not hasattr(model, "dim"):
        raise TypeError("pass dim=... to sample a model that has no .dim attribute")
    dim = check_int(getattr(model, "dim", None) if dim is None else dim, "dim", minimum=1)
    device = _device_of(model, g.device)
    x = torch.randn((n, dim), generator=g, device=g.device).to(device)
    dt = 1.0 / steps
    with training_mode(model, False) if isinstance(model, nn.Module) else nullcontext():
        for i in range(steps):
            t = torch.full((n,), i * dt, device=device)
            v = model(x, t)
            if method == "euler":
                x = x + dt * v
            else:
                v_next = model(x + dt * v, t + dt)
                x = x + (0.5 * dt) * (v + v_next)
    return x


def sample_scores(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metrics: Mapping[str, Callable[[torch.Tensor], float]],
    *,
    n: int,
    steps: int,
    seeds: Sequence[int],
    method: str = "heun",
    dim: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Several metrics of the same sample draws: ``metrics[name](sample(model, n, ...))`` for
    every noise seed in ``seeds`` (one draw per seed, shared by all the metrics).

    Draw ``i`` uses a generator seeded ``seeds[i]`` on the model's device, so two models scored
    with the same seeds are paired draw by draw (their differences ``values_a[i] -
    values_b[i]`` cancel the shared part of the noise). Returns, per metric, ``{"values",
    "seeds", "mean", "std"}``, ``std`` the sample standard deviation (``ddof=1``) over the draws
    (``nan`` for a single draw): the metric's sampling noise. Draws nothing from the global RNG.

    Example (a field ``v = 0`` returns the noise itself)::

        >>> zero = lambda x, t: torch.zeros_like(x)
        >>> r = sample_scores(zero, {"m": lambda x: float(x.mean()), "n": len}, n=10, steps=1,
        ...                   seeds=[3, 4], dim=1)
        >>> r["n"]["values"], r["m"]["seeds"], r["m"]["values"][0] == float(
        ...     torch.randn(10, 1, generator=torch.Generator().manual_seed(3)).mean())
        ([10.0, 10.0], [3, 4], True)
    """
    seeds = [check_int(s, "seed", minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one noise seed, got none")
    bad = [name for name, fn in metrics.items() if not callable(fn)]
    if bad or not metrics:
        raise TypeError(f"metrics must map names to callables, got {dict(metrics)!r:.80}")
    device = _device_of(model, torch.get_default_device())
    values: dict[str, list[float]] = {name: [] for name in metrics}
    for s in seeds:
        g = torch.Generator(device=device).manual_seed(s)
        x = sample(model, n, steps, g, method=method, dim=dim)
        for name, fn in metrics.items():
            values[name].append(float(fn(x)))
    out = {}
    for name, vs in values.items():
        v = np.asarray(vs)
        std = float(v.std(ddof=1)) if len(vs) > 1 else math.nan
        out[name] = {"values": vs, "seeds": list(seeds), "mean": float(v.mean()), "std": std}
    return out


def metric_noise(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metric: Callable[[torch.Tensor], float],
    *,
    n: int,
    steps: int,
    k: int = 5,
    seed: int = 0,
    method: str = "heun",
    dim: int | None = None,
) -> dict[str, Any]:
    """A metric's sampling noise: ``metric(sample(model, n, ...))`` for ``k`` noise seeds.

    Draw ``i`` uses a generator seeded ``seed + i`` on the model's device, so two models scored
    with the same ``seed`` are paired draw by draw (their differences ``values_a[i] -
    values_b[i]`` cancel the shared part of the noise). Returns ``{"values", "seeds", "mean",
    "std"}``, ``std`` the sample standard deviation (``ddof=1``) over the ``k`` draws
    (:func:`sample_scores` with one metric).

    Example (a field ``v = 0`` returns the noise itself; its mean's spread over draws)::

        >>> zero = lambda x, t: torch.zeros_like(x)
        >>> r = metric_noise(zero, lambda x: float(x.mean()), n=10, steps=1, k=3, dim=1)
        >>> r["seeds"], round(r["values"][0], 6) == round(float(torch.randn(10, 1,
        ...     generator=torch.Generator().manual_seed(0)).mean()), 6), r["std"] > 0
        ([0, 1, 2], True, True)
    """
    k = check_int(k, "k", minimum=2)
    seed = check_int(seed, "seed", minimum=0)
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    seeds = [seed + i for i in range(k)]
    scores = sample_scores(
        model, {"metric": metric}, n=n, steps=steps, seeds=seeds, method=method, dim=dim
    )
    return scores["metric"]
