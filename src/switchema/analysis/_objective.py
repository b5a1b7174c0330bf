"""The objective shared by :mod:`~switchema.analysis.sharpness` and
:mod:`~switchema.analysis.landscape`: the batch-size weighted mean loss over fixed batches as a
function of a flat vector of model tensors, and the argument checks both modules use.

.. math::

    L(w) = \\sum_b \\frac{n_b}{N} \\, \\ell\\big(f(x_b; w), y_b\\big), \\qquad N = \\sum_b n_b

Nothing here writes to the model: losses at other weights are evaluated with
:func:`torch.func.functional_call` and buffers are copied.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "Objective",
    "check_bool",
    "check_callable",
    "check_loss",
    "check_model",
    "cpu_generator",
    "prepare_batches",
    "resolve_device",
    "training_mode",
]

# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------


def check_model(model: Any, where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_callable(fn: Any, name: str, where: str, *, allow_none: bool = False) -> Any:
    if fn is None and allow_none:
        return None
    if not callable(fn):
        raise TypeError(f"{where}: {name} must be callable(output, target), got {fn!r}")
    return fn


def check_bool(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return value


def resolve_device(model: nn.Module, device: Any, where: str) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()), None)
        return first.device if first is not None else torch.device("cpu")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(
            f"{where}: device must be a torch.device, a device string or None, got {device!r}"
        ) from e


def cpu_generator(seed: int) -> torch.Generator:
    # Random vectors are drawn on the CPU and then moved, so a seed gives the same
    # directions on every device.
    return torch.Generator(device="cpu").manual_seed(seed)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _batch_size(x: Any, y: Any, i: int, where: str) -> int:
    for t in (y, x):
        if isinstance(t, Tensor) and t.ndim >= 1:
            n = int(t.shape[0])
            if n == 0:
                raise ValueError(f"{where}: batches[{i}] is empty")
            return n
    raise TypeError(
        f"{where}: cannot tell the size of batches[{i}]; x or y must be a tensor with a batch "
        "dimension"
    )


def prepare_batches(batches: Any, device: torch.device, where: str) -> list[tuple[Any, Any, int]]:
    if isinstance(batches, (Tensor, Mapping, str)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"{where}: batches must be a list of (x, y) tuples, got {type(batches).__name__}"
        )
    out = []
    for i, b in enumerate(batches):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise TypeError(
                f"{where}: batches[{i}] must be an (x, y) tuple, got "
                f"{type(b).__name__}{'' if not isinstance(b, (tuple, list)) else f' of length {len(b)}'}"
            )
        x, y = b
        n = _batch_size(x, y, i, where)
        out.append((_to_device(x, device), _to_device(y, device), n))
    if not out:
        raise ValueError(f"{where}: batches is empty; pass a list of at least one (x, y) tuple")
    return out


@contextlib.contextmanager
def training_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put ``model`` in train/eval mode and restore every submodule's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def check_loss(value: Any, where: str) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise TypeError(
            f"{where}: loss_fn must return a scalar tensor (the batch's mean loss), got "
            f"{type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
        )
    return value.reshape(())


# ---------------------------------------------------------------------------
# The objective: the batch-size weighted mean loss as a function of a flat vector
# ---------------------------------------------------------------------------


class Objective:
    """Mean loss over fixed batches as a function of a flat vector of chosen model tensors.

    ``vary`` names the parameters/buffers that form the flat vector (default: all parameters
    with ``requires_grad``, in ``named_parameters()`` order); every other parameter and buffer
    is held fixed at (a copy of) the model's value. Nothing here writes to the model.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        batches: Any,
        *,
        device: Any,
        where: str,
        vary: Sequence[str] | None = None,
    ) -> None:
        self.where = where
        self.model = check_model(model, where)
        self.loss_fn = check_callable(loss_fn, "loss_fn", where)
        self.device = resolve_device(model, device, where)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        if vary is None:
            vary = [n for n, p in params.items() if p.requires_grad]
            if not vary:
                raise ValueError(f"{where}: the model has no parameters with requires_grad=True")
        tensors = {**params, **buffers}
        for name in vary:
            t = tensors[name]
            if not t.is_floating_point():
                raise TypeError(
                    f"{where}: only floating-point tensors can take part, {name!r} is {t.dtype}"
                )
        self.names = list(vary)
        self.shapes = [tensors[n].shape for n in self.names]
        self.numels = [tensors[n].numel() for n in self.names]
        self.dtypes = [tensors[n].dtype for n in self.names]
        self.dtype = functools.reduce(torch.promote_types, self.dtypes)
        self.numel = sum(self.numels)
        varied = set(self.names)
        # Buffers are copied (not shared) so that a train-mode forward, which updates running
        # statistics in place, cannot touch the model's own buffers.
        self.fixed = {
            n: p.detach().to(self.device) for n, p in params.items() if n not in varied
        } | {
            n: b.detach().to(self.device, copy=True) for n, b in buffers.items() if n not in varied
        }
        self.base = {n: tensors[n].detach().to(self.device) for n in self.names}
        self.batches = prepare_batches(batches, self.device, where)
        total = sum(n for _, _, n in self.batches)
        self.weights = [n / total for _, _, n in self.batches]
        self._graphs: list[tuple[list[Tensor], tuple[Tensor, ...]]] | None = None

    # -- flat vectors ------------------------------------------------------------------
    def flatten(self, tensors: Iterable[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def base_vector(self) -> Tensor:
        return self.flatten(self.base[n] for n in self.names)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Flat ``(P,)`` -> ``{name: tensor}``; a stack ``(c, P)`` -> ``{name: (c, *shape)}``."""
        lead = vec.shape[:-1]
        parts = torch.split(vec, self.numels, dim=-1)
        return {
            n: p.reshape(*lead, *s).to(dt)
            for n, p, s, dt in zip(self.names, parts, self.shapes, self.dtypes)
        }

    def vector_from(self, vector: Any, name: str) -> tuple[Tensor, bool]:
        """A user's vector (flat tensor or ``{name: tensor}``) as a flat tensor on the device.

        Missing names of a dict count as zero. Returns ``(flat, was_dict)``.
        """
        where = self.where
        if isinstance(vector, Tensor):
            if vector.ndim != 1 or vector.numel() != self.numel:
                raise ValueError(
                    f"{where}: {name} must be a flat tensor of {self.numel} elements (the "
                    f"trainable parameters in named_parameters() order) or a dict "
                    f"{{name: tensor}}, got shape {tuple(vector.shape)}"
                )
            return vector.detach().to(self.device, self.dtype), False
        if isinstance(vector, Mapping):
            unknown = [k for k in vector if k not in self.base]
            if unknown:
                raise ValueError(
                    f"{where}: {name} has names that are not trainable parameters: "
                    f"{unknown[:5]}; allowed: {self.names[:5]}{' ...' if len(self.names) > 5 else ''}"
                )
            parts = []
            for n, s in zip(self.names, self.shapes):
                t = vector.get(n)
                if t is None:
                    parts.append(torch.zeros(s, device=self.device, dtype=self.dtype))
                    continue
                if not isinstance(t, Tensor) or t.shape != s:
                    raise ValueError(
                        f"{where}: {name}[{n!r}] must be a tensor of shape {tuple(s)}, got "
                        + (f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t))
                    )
                parts.append(t.detach().to(self.device, self.dtype))
            return self.flatten(parts), True
        raise TypeError(
            f"{where}: {name} must be a flat tensor or a dict {{name: tensor}}, got "
            f"{type(vector).__name__}"
        )

    # -- evaluation ----------------------------------------------------------------------
    def forward(self, params: Mapping[str, Tensor], x: Any) -> Any:
        return functional_call(self.model, {**self.fixed, **params}, (x,))

    def batch_loss(self, params: Mapping[str, Tensor], i: int) -> Tensor:
        x, y, _ = self.batches[i]
        return check_loss(self.loss_fn(self.forward(params, x), y), self.where)

    @torch.no_grad()
    def loss_at(self, vec: Tensor) -> float:
        params = self.unflatten(vec)
        return sum(w * float(self.batch_loss(params, i)) for i, w in enumerate(self.weights))

    def loss_and_grad(self, vec: Tensor) -> tuple[float, Tensor]:
        leaves = [t.detach().requires_grad_() for t in self.unflatten(vec).values()]
        params = dict(zip(self.names, leaves))
        loss = 0.0
        grad = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        # One batch at a time, so only one batch's graph is alive.
        for i, w in enumerate(self.weights):
            with torch.enable_grad():
                li = w * self.batch_loss(params, i)
                gs = torch.autograd.grad(li, leaves, allow_unused=True, materialize_grads=True)
            loss += float(li.detach())
            grad += self.flatten(gs)
        return loss, grad

    def _first_order(self, i: int) -> tuple[list[Tensor], tuple[Tensor, ...]]:
        leaves = [self.base[n].detach().requires_grad_() for n in self.names]
        params = dict(zip(self.names, leaves))
        with torch.enable_grad():
            li = self.weights[i] * self.batch_loss(params, i)
            gs = torch.autograd.grad(
                li, leaves, create_graph=True, allow_unused=True, materialize_grads=True
            )
        return leaves, gs

    def hvp(self, vec: Tensor, *, cache: bool = False) -> Tensor:
        """``H @ vec`` at the base weights: double backward through each batch's gradient.

        With ``cache=True`` the first-order graphs of all batches are kept between calls, so
        repeated products (Lanczos, Hutchinson) cost one backward pass each instead of a
        forward, a backward and a double backward; memory grows with the number of batches.
        """
        vs = [
            p.reshape(s).to(dt)
            for p, s, dt in zip(torch.split(vec, self.numels), self.shapes, self.dtypes)
        ]
        out = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        if cache and self._graphs is None:
            self._graphs = [self._first_order(i) for i in range(len(self.batches))]
        for i in range(len(self.batches)):
            leaves, gs = self._graphs[i] if cache else self._first_order(i)
            # A gradient that does not depend on the weights (loss linear in a parameter, or
            # an unused parameter) has no graph and contributes a zero block of the Hessian.
            idx = [j for j, g in enumerate(gs) if g.requires_grad]
            if not idx:
                continue
            with torch.enable_grad():
                hv = torch.autograd.grad(
                    [gs[j] for j in idx],
                    leaves,
                    grad_outputs=[vs[j] for j in idx],
                    retain_graph=cache,
                    allow_unused=True,
                    materialize_grads=True,
                )
            out += self.flatten(hv)
        return out

    def release(self) -> None:
        self._graphs = None

    def to_dict(self, vec: Tensor) -> dict[str, Tensor]:
        return self.unflatten(vec)
