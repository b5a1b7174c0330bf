"""Distances between solutions (state dicts), per parameter tensor and in total.

For tensors :math:`a` (the reference) and :math:`b`:

.. math::

    \\text{l2} = \\|a - b\\|_2, \\qquad
    \\text{relative} = \\frac{\\|a - b\\|_2}{\\|a\\|_2}, \\qquad
    \\text{cosine} = \\frac{\\langle a, b \\rangle}{\\|a\\|_2 \\|b\\|_2},

and the totals are the same quantities for the concatenation of all compared tensors (so
:math:`\\text{l2}_{\\text{total}}^2 = \\sum \\text{l2}^2`). Everything is computed in float64 on
the CPU. A zero norm makes ``relative`` or ``cosine`` NaN.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["BUFFER_SUFFIXES", "LayerDistance", "SolutionDistance", "solution_distance"]

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
"""Last name components taken as buffers when plain state dicts are compared without a model."""


class LayerDistance(NamedTuple):
    """Distance of one tensor: ``l2``, ``relative`` (to ``a``), ``cosine``, and both norms."""

    l2: float
    relative: float
    cosine: float
    norm_a: float
    norm_b: float


@dataclass(frozen=True)
class SolutionDistance:
    """Result of :func:`solution_distance`.

    Attributes:
        layers: ``{name: LayerDistance}`` in the order of ``state_a``.
        l2, relative, cosine: totals over all compared tensors.
        norm_a, norm_b: total norms.
    """

    layers: dict[str, LayerDistance]
    l2: float
    relative: float
    cosine: float
    norm_a: float
    norm_b: float


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _as_state(obj: Any, name: str) -> tuple[Mapping[str, Tensor], set[str] | None]:
    """A state dict and, for a module, the names of its buffers."""
    if isinstance(obj, nn.Module):
        return obj.state_dict(), {n for n, _ in obj.named_buffers()}
    if isinstance(obj, Mapping):
        return obj, None
    raise TypeError(
        f"solution_distance: {name} must be a state dict or an nn.Module, got {type(obj).__name__}"
    )


def solution_distance(
    state_a: Mapping[str, Tensor] | nn.Module,
    state_b: Mapping[str, Tensor] | nn.Module,
    *,
    keys: Iterable[str] | None = None,
    include_buffers: bool = False,
    model: nn.Module | None = None,
) -> SolutionDistance:
    """Per-tensor and total L2 distance, relative distance and cosine similarity.

    By default all floating-point *parameters* present in ``state_a`` are compared (they
    must be in ``state_b`` too, with the same shapes). Integer tensors (e.g.
    ``num_batches_tracked``) are never compared; floating-point buffers (BatchNorm running
    statistics) only with ``include_buffers=True``. Buffers are recognised from ``model``, or
    from a module passed as ``state_a``/``state_b``, else by the last name component being
    one of :data:`BUFFER_SUFFIXES`.

    Args:
        state_a: the reference solution (state dict or module); ``relative`` divides by it.
        state_b: the other solution.
        keys: names or shell-style patterns (``"features.*.weight"``) to compare instead of
            the defaults; each must match at least one floating-point entry.
        include_buffers: also compare floating-point buffers.
        model: a module of the same architecture, to tell parameters from buffers.

    Returns:
        :class:`SolutionDistance` with ``layers`` and the totals.

    Example: ``fc.weight`` moves from (3, 4) to (0, 4), so its distance is 3, relative 3/5
    and cosine 16/20; the totals also count the unchanged bias 12, so relative is 3/13::

        >>> a = {"fc.weight": torch.tensor([[3.0, 4.0]]), "fc.bias": torch.tensor([12.0])}
        >>> b = {"fc.weight": torch.tensor([[0.0, 4.0]]), "fc.bias": torch.tensor([12.0])}
        >>> d = solution_distance(a, b)    # or (model, ema.averaged_state_dict())
        >>> w = d.layers["fc.weight"]
        >>> round(w.l2, 4), round(w.relative, 4), round(w.cosine, 4)
        (3.0, 0.6, 0.8)
        >>> round(d.l2, 4), round(d.relative, 4), round(d.norm_a, 4)
        (3.0, 0.2308, 13.0)
    """
    where = "solution_distance"
    a, bufs_a = _as_state(state_a, "state_a")
    b, bufs_b = _as_state(state_b, "state_b")
    if not isinstance(include_buffers, bool):
        raise TypeError(f"{where}: include_buffers must be True or False, got {include_buffers!r}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module or None, got {type(model).__name__}")
    if model is not None:
        buffer_names: set[str] | None = {n for n, _ in model.named_buffers()}
    else:
        buffer_names = bufs_a if bufs_a is not None else bufs_b

    def is_buffer(name: str) -> bool:
        if buffer_names is not None:
            return name in buffer_names
        return name.rsplit(".", 1)[-1] in BUFFER_SUFFIXES

    for name, t in a.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: state_a[{name!r}] must be a tensor, got {type(t).__name__}")
    floating = [n for n, t in a.items() if t.is_floating_point()]
    if keys is None:
        names = [n for n in floating if include_buffers or not is_buffer(n)]
    else:
        if isinstance(keys, str) or not isinstance(keys, Iterable):
            raise TypeError(f"{where}: keys must be a list of names or patterns, got {keys!r}")
        patterns = list(keys)
        for p in patterns:
            if not isinstance(p, str):
                raise TypeError(f"{where}: keys must be strings, got {p!r}")
            if not any(fnmatch.fnmatchcase(n, p) for n in floating):
                raise ValueError(
                    f"{where}: key {p!r} matches no floating-point entry of state_a; available: "
                    f"{floating[:5]}{' ...' if len(floating) > 5 else ''}"
                )
        names = [n for n in floating if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not names:
        raise ValueError(f"{where}: nothing to compare (no floating-point parameters selected)")
    layers: dict[str, LayerDistance] = {}
    sq_diff = dot = sq_a = sq_b = 0.0
    for n in names:
        if n not in b:
            raise ValueError(f"{where}: {n!r} is in state_a but not in state_b")
        ta = a[n].detach().to("cpu", torch.float64)
        tb_raw = b[n]
        if not isinstance(tb_raw, Tensor) or tb_raw.shape != a[n].shape:
            raise ValueError(
                f"{where}: state_b[{n!r}] must be a tensor of shape {tuple(a[n].shape)}, got "
                + (f"shape {tuple(tb_raw.shape)}" if isinstance(tb_raw, Tensor) else repr(tb_raw))
            )
        tb = tb_raw.detach().to("cpu", torch.float64)
        d2 = float((ta - tb).square().sum())
        ab = float((ta * tb).sum())
        a2 = float(ta.square().sum())
        b2 = float(tb.square().sum())
        na, nb = math.sqrt(a2), math.sqrt(b2)
        layers[n] = LayerDistance(
            l2=math.sqrt(d2),
            relative=_ratio(math.sqrt(d2), na),
            cosine=_ratio(ab, na * nb),
            norm_a=na,
            norm_b=nb,
        )
        sq_diff += d2
        dot += ab
        sq_a += a2
        sq_b += b2
    na, nb = math.sqrt(sq_a), math.sqrt(sq_b)
    return SolutionDistance(
        layers=layers,
        l2=math.sqrt(sq_diff),
        relative=_ratio(math.sqrt(sq_diff), na),
        cosine=_ratio(dot, na * nb),
        norm_a=na,
        norm_b=nb,
    )
