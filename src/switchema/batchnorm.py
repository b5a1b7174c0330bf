"""Buffer policies and BatchNorm statistics recomputation.

Averaged *weights* and the *BatchNorm running statistics* of the online model do not belong
together: the statistics were collected with other weights. The EMA paper finds that long
averaging windows fail unless the statistics are recomputed with one pass over training data
(:func:`recompute_bn`). How an averager treats each buffer is a policy:

* ``"copy"`` (default): the averaged model uses the online model's current buffer; nothing is
  stored. This is what the official Switch EMA code does.
* ``"average"``: floating-point buffers are averaged with the same recurrence as parameters.
  Integer buffers such as ``num_batches_tracked`` are never put through float arithmetic:
  they fall back to ``"copy"``.
* ``"skip"``: the buffer is left out of the averaged state dict altogether.

Policies may be chosen per buffer name with shell-style patterns, first match wins::

    EMA(model, buffers={"*.running_mean": "average", "*.running_var": "average"})
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["BUFFER_POLICIES", "resolve_buffer_policy", "recompute_bn", "has_batchnorm"]

BUFFER_POLICIES = ("copy", "average", "skip")


def _check_policy(policy: Any, where: str) -> str:
    if policy not in BUFFER_POLICIES:
        raise ValueError(
            f"unknown buffer policy {policy!r} {where}; allowed: {list(BUFFER_POLICIES)}"
        )
    return policy


def resolve_buffer_policy(
    buffers: str | Mapping[str, str], name: str, default: str = "copy"
) -> str:
    """The policy for buffer ``name`` under ``buffers`` (one policy, or ``{pattern: policy}``)."""
    if isinstance(buffers, str):
        return _check_policy(buffers, "for buffers")
    if not isinstance(buffers, Mapping):
        raise TypeError(
            f"buffers must be one of {list(BUFFER_POLICIES)} or a dict {{pattern: policy}}, got {buffers!r}"
        )
    for pattern, policy in buffers.items():
        _check_policy(policy, f"for pattern {pattern!r}")
        if fnmatch.fnmatchcase(name, pattern):
            return policy
    return default


def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` has a BatchNorm layer that tracks running statistics."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in model.modules()
    )


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _default_forward(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, torch.Tensor):
        model(batch)
    elif isinstance(batch, Mapping):
        model(**batch)
    elif isinstance(batch, (list, tuple)) and batch:
        # (inputs, targets, ...) as yielded by a DataLoader over a TensorDataset
        model(batch[0])
    else:
        raise TypeError(
            f"recompute_bn got a batch of type {type(batch).__name__}; batches must be tensors, "
            "tuples/lists whose first element is the input, or dicts of keyword arguments "
            "(or pass forward=callable(model, batch))"
        )


@torch.no_grad()
def recompute_bn(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    device: torch.device | str | None = None,
) -> int:
    """Recompute BatchNorm running statistics with one pass over ``batches``.

    Running means and variances are reset and re-estimated as the *cumulative* average over
    all batches (momentum ``None``), in train mode and without gradients. The model's
    training flag and the layers' momenta are restored afterwards. Returns the number of
    batches seen (0 and no change if the model has no BatchNorm).

    Args:
        model: the model whose statistics to recompute (e.g. inside ``ema.swapped()``, or a
            copy loaded from ``ema.averaged_state_dict()``).
        batches: tensors, ``(input, target, ...)`` tuples or dicts of keyword arguments.
        forward: ``forward(model, batch)`` for other batch layouts.
        device: where to move batches; defaults to the device of the model's first parameter.

    Example::

        with ema.swapped():
            recompute_bn(model, train_loader)
            evaluate(model)
    """
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return 0
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    forward = forward or _default_forward
    momenta = {m: m.momentum for m in bns}
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for batch in batches:
            forward(model, _to_device(batch, torch.device(device)))
            n += 1
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        model.train(was_training)
    if n == 0:
        raise ValueError("recompute_bn got no batches; pass an iterable with at least one batch")
    return n
