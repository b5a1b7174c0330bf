"""The averaged weights as a module: a structural copy of the model built around given tensors.

:meth:`switchema.WeightAverager.averaged_model` hands this module the averager's own storage
(views into its flat buffers) for the parameters and small private copies for the buffers, so
the module costs the buffers' memory only and always computes with the current average.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["build_module_view"]


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
    """
    memo: dict[int, object] = {}
    for name, p in model.named_parameters():
        memo[id(p)] = nn.Parameter(params[name].detach(), requires_grad=False)
    for name, b in model.named_buffers():
        memo[id(b)] = buffers[name]
    view = copy.deepcopy(model, memo)
    if before_use is not None:
        view.register_forward_pre_hook(_compile_opaque(lambda module, args: before_use()))
        view.register_state_dict_pre_hook(lambda module, prefix, keep_vars: before_use())
    return view


def _compile_opaque(fn: Callable) -> Callable:
    """``fn`` run eagerly even inside a compiled module: its checks never become graph guards."""
    disable = getattr(getattr(torch, "_dynamo", None), "disable", None)
    return disable(fn) if disable is not None else fn
