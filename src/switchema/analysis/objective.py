"""The objective every analysis instrument measures, and the train/eval switch they use.

:class:`Objective` is the batch-size weighted mean loss over a fixed list of batches as a
function of a flat vector :math:`w` of chosen model tensors (by default the trainable
parameters, in ``named_parameters()`` order):

.. math::

    L(w) = \\sum_b \\frac{n_b}{N} \\, \\ell\\big(f(x_b; w), y_b\\big), \\qquad N = \\sum_b n_b

where ``loss_fn`` (:math:`\\ell`) returns the mean loss of one batch and :math:`n_b` is its
size, so the value is the mean over all samples however the batches are split. It gives the
loss, the gradient and Hessian-vector products at any :math:`w` without writing to the model:
losses at other weights are evaluated with :func:`torch.func.functional_call` and buffers are
copied. :mod:`~switchema.analysis.sharpness` and :mod:`~switchema.analysis.landscape` are built
on it.

:func:`training_mode` puts a model in train or eval mode for a block and gives every submodule
its own flag back afterwards (``model.train(flag)`` alone would lose a submodule frozen in
eval mode); the lab uses it to extract features and to sample.

Example: a bias-free linear model on the inputs (1, 0) and (0, 2) with target 0 has the mean
squared error :math:`L(w) = (w_1^2 + 4 w_2^2) / 2`, gradient :math:`(w_1, 4 w_2)` and Hessian
:math:`\\operatorname{diag}(1, 4)`; a submodule left in eval mode stays so::

    >>> import torch
    >>> from torch import nn
    >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    >>> model = nn.Linear(2, 1, bias=False)
    >>> obj = Objective(model, nn.MSELoss(), [(x, y)], device=None, where="example")
    >>> w = torch.tensor([1.0, 1.0])
    >>> loss, grad = obj.loss_and_grad(w)
    >>> loss, grad.tolist(), obj.hvp(torch.tensor([1.0, 1.0])).tolist()
    (2.5, [1.0, 4.0], [1.0, 4.0])
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    >>> _ = net[1].eval()
    >>> with training_mode(net, False):
    ...     net.training, net[1].training
    (False, False)
    >>> net.training, net[1].training
    (True, False)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ._arguments import check_callable, check_loss, check_model, prepare_batches, resolve_device

__all__ = ["Objective", "training_mode"]


@contextlib.contextmanager
def training_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put ``model`` in train (``train=True``) or eval mode for the block, then give every
    submodule its own ``training`` flag back, whatever it was before (see the module example)."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"training_mode: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    if not isinstance(train, bool):
        raise TypeError(f"training_mode: train must be True or False, got {train!r}")
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


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
