"""The grid engine of the loss-landscape instruments (private to :mod:`switchema.analysis`):
the mean loss (and a metric) of an :class:`~switchema.analysis.objective.Objective` at many
weight vectors

.. math::

    w(c) = w_0 + \\sum_k c_k d_k

at once. Points are evaluated several at a time by stacking their weight vectors and mapping
the model over the stack with :func:`torch.func.vmap` (``chunk_size`` points per call, to bound
memory); if the model cannot be vmapped the points are evaluated one by one. With
``bn="recompute"`` every point gets its own BatchNorm statistics, one point at a time (see
:mod:`switchema.analysis.landscape`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, is_real
from ..batchnorm import has_batchnorm, recompute_bn
from ._arguments import check_bool, check_callable
from .objective import Objective, training_mode

__all__ = ["BN_MODES", "Evaluator", "check_span", "directions_matrix", "make_evaluator"]

BN_MODES = ("keep", "recompute")

# Stacked weight vectors per vmap call are capped at this many numbers (256 MB in float32);
# activations scale with the chunk too, so pass a smaller chunk_size for big inputs.
_STACK_BUDGET = 2**26
_MAX_CHUNK = 64


def _select(out: Any, i: int) -> Any:
    """Point ``i`` of a vmapped model output (a tensor or a tuple/list/dict of tensors)."""
    if isinstance(out, Tensor):
        return out[i]
    if isinstance(out, Mapping):
        return {k: _select(v, i) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_select(v, i) for v in out)
    return out


class Evaluator:
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


def make_evaluator(
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
) -> Evaluator:
    obj = Objective(model, loss_fn, batches, device=device, where=where, vary=vary)
    return Evaluator(
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


def check_span(span: Any, name: str, where: str) -> tuple[float, float]:
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


def directions_matrix(obj: Objective, directions: Any, count: int | None, where: str) -> Tensor:
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
