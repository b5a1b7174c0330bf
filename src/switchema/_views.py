"""The averaged weights as a module: a structural copy of the model built around given tensors.

:meth:`switchema.WeightAverager.averaged_model` hands this module the averager's own storage
(views into its flat buffers) for the parameters and small private copies for the buffers, so
the module costs the buffers' memory only and always computes with the current average.

Pickling a view (``torch.save(view)``) or deep-copying it gives a *plain* module: the same
structure holding the current averaged weights as its own tensors, with no tie to the averager
and nothing of this package in the pickle, the way a deep-copied EMA model (timm,
ema-pytorch) is saved and loaded.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["build_module_view", "plain_copy"]

# The hook tables of ``nn.Module`` that ``build_module_view`` registers into.
_HOOK_TABLES = ("_forward_pre_hooks", "_state_dict_pre_hooks")


def build_module_view(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    before_use: Callable[[], None] | None = None,
) -> nn.Module:
    """A deep copy of ``model``'s structure whose tensors *are* ``params`` and ``buffers``.

    ``params`` and ``buffers`` are keyed by the names ``named_parameters()`` /
    ``named_buffers()`` give (tied tensors once). Every parameter of the copy is an
    ``nn.Parameter`` sharing storage with the given tensor, with ``requires_grad=False``: no
    autograd graph ever reaches the averages. Non-tensor attributes are deep-copied as usual.
    ``before_use`` runs before every forward and ``state_dict()`` (outside ``torch.compile``
    graphs): the averager refreshes the tensors it had to copy there.

    Pickling or deep-copying the view runs ``before_use`` and gives a plain module (see
    :func:`plain_copy`) instead of another view.

    Example::

        >>> lin = nn.Linear(2, 1)
        >>> w, b = torch.ones(1, 2), torch.zeros(1)
        >>> view = build_module_view(lin, {"weight": w, "bias": b}, {})
        >>> _ = w.mul_(3.0)  # the view follows its tensors
        >>> view(torch.ones(1, 2))
        tensor([[6.]])
        >>> snapshot = copy.deepcopy(view)  # a plain module with its own tensors
        >>> _ = w.zero_(); snapshot(torch.ones(1, 2)), view(torch.ones(1, 2))
        (tensor([[6.]]), tensor([[0.]]))
    """
    memo: dict[int, object] = {}
    for name, p in model.named_parameters():
        memo[id(p)] = nn.Parameter(params[name].detach(), requires_grad=False)
    for name, b in model.named_buffers():
        memo[id(b)] = buffers[name]
    view = copy.deepcopy(model, memo)
    hook_ids = []
    if before_use is not None:
        hook = _BeforeUse(before_use)
        hook_ids.append(view.register_forward_pre_hook(_compile_opaque(hook)).id)
        hook_ids.append(view.register_state_dict_pre_hook(hook).id)
    # Looked up on the instance by pickle and copy, before the class's own.
    object.__setattr__(view, "__reduce_ex__", _ReduceToPlain(view, hook_ids, before_use))
    return view


def plain_copy(view: nn.Module, hook_ids: Any = ()) -> nn.Module:
    """``view``'s structure holding copies of its tensors, without the hooks ``hook_ids``.

    Tied parameters stay tied; parameters keep their ``requires_grad`` and memory layout.
    """
    memo: dict[int, object] = {}
    for p in view.parameters():
        memo[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
    for b in view.buffers():
        memo[id(b)] = b.detach().clone()
    state = dict(view.__getstate__())  # never the instance dict itself: it is edited below
    state.pop("__reduce_ex__", None)
    for table in _HOOK_TABLES:
        if table in state:
            kept = type(state[table])()
            kept.update((k, h) for k, h in state[table].items() if k not in hook_ids)
            state[table] = kept
    plain = type(view).__new__(type(view))
    plain.__setstate__(copy.deepcopy(state, memo))
    return plain


class _BeforeUse:
    """A forward / state-dict pre-hook that calls ``fn()`` (its arguments are ignored)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def __call__(self, module: nn.Module, *args: Any) -> None:
        self.fn()


class _ReduceToPlain:
    """A view's ``__reduce_ex__``: refresh the view, then pickle or copy a plain module.

    Holds the view weakly (the view holds this object), and the ids of the refresh hooks so
    that the plain module is built without them.
    """

    def __init__(
        self, view: nn.Module, hook_ids: list[int], before_use: Callable[[], None] | None
    ) -> None:
        self._view = weakref.ref(view)
        self._hook_ids = frozenset(hook_ids)
        self._before_use = before_use

    def __call__(self, protocol: int) -> Any:
        view = self._view()
        if view is None:  # pragma: no cover - only reachable through this object alone
            raise RuntimeError("the averaged-model view this belongs to no longer exists")
        if self._before_use is not None:
            self._before_use()
        return plain_copy(view, self._hook_ids).__reduce_ex__(protocol)


def _compile_opaque(fn: Callable) -> Callable:
    """``fn`` run eagerly even inside a compiled module: its checks never become graph guards."""
    disable = getattr(getattr(torch, "_dynamo", None), "disable", None)
    return disable(fn) if disable is not None else fn
