"""BatchNorm statistics: recompute them for averaged weights.

Averaged *weights* and the *BatchNorm running statistics* of the online model do not belong
together: the statistics were collected with other weights. The EMA paper finds that long
averaging windows fail unless the statistics are recomputed with one pass over training data.
:func:`recompute_bn` does that for any model; :meth:`switchema.EMA.recompute_bn` does it for the
averages and keeps the result with them, leaving the online model's statistics alone. How an
averager treats each buffer otherwise is a policy (:mod:`switchema.policies`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .policies import POLICIES, resolve_policy

__all__ = [
    "BUFFER_POLICIES",
    "resolve_buffer_policy",
    "recompute_bn",
    "has_batchnorm",
    "batchnorm_layers",
]

BUFFER_POLICIES = POLICIES


def resolve_buffer_policy(
    buffers: str | Mapping[str, str], name: str, default: str = "copy"
) -> str:
    """The policy for buffer ``name`` under ``buffers`` (one policy, or ``{pattern: policy}``)."""
    return resolve_policy(buffers, name, default, "buffers")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics, in module order."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def has_batchnorm(model: nn.Module) -> bool:
    """True if ``model`` has a BatchNorm layer that tracks running statistics."""
    return bool(batchnorm_layers(model))


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


def _restore_buffers(
    layers: list[nn.modules.batchnorm._BatchNorm], saved: list[dict[str, torch.Tensor]]
) -> None:
    with torch.no_grad():
        for m, buffers in zip(layers, saved):
            for k, b in buffers.items():
                m.get_buffer(k).copy_(b)


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
    training flag and the layers' momenta are restored afterwards; if the pass raises or sees
    no batch, the old statistics are restored too. Returns the number of
    batches seen (0 and no change if the model has no BatchNorm).

    Args:
        model: the model whose statistics to recompute (e.g. inside ``ema.swapped()``, or
            ``ema.averaged_model()``). The argument order is ``(model, batches)``, the reverse
            of torch's ``update_bn(loader, model)``.
        batches: tensors, ``(input, target, ...)`` tuples or dicts of keyword arguments.
        forward: ``forward(model, batch)`` for other batch layouts.
        device: where to move batches; defaults to the device of the model's first parameter.

    Example: evaluate an EMA with statistics recomputed for it, leaving the trained model as it
    was (``swapped()`` restores the model's weights *and* buffers when the block ends)::

        >>> from switchema import EMA
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> ema = EMA(model, decay=0.9)
        >>> loader = [torch.randn(16, 4) for _ in range(3)]
        >>> before = model[1].running_mean.clone()
        >>> with ema.swapped():
        ...     recompute_bn(model, loader)     # statistics of the averaged weights
        ...     # evaluate(model) here
        3
        >>> torch.equal(model[1].running_mean, before)    # the online model keeps its own
        True

    To keep the recomputed statistics with the average (for ``swapped()``,
    ``averaged_state_dict()``, ``averaged_model()`` and checkpoints), use
    :meth:`switchema.EMA.recompute_bn` instead.
    """
    if not isinstance(model, nn.Module):
        if isinstance(batches, nn.Module):
            raise TypeError(
                "recompute_bn takes (model, batches), got the batches first and the model "
                "second (torch's update_bn order); call recompute_bn(model, loader)"
            )
        raise TypeError(
            f"recompute_bn: model must be a torch.nn.Module, got {type(model).__name__}"
        )
    bns = batchnorm_layers(model)
    if not bns:
        return 0
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    forward = forward or _default_forward
    momenta = {m: m.momentum for m in bns}
    # Restored if the pass fails or sees no batch: the old statistics are not lost.
    saved = [{k: b.clone() for k, b in m._buffers.items() if b is not None} for m in bns]
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
    except BaseException:
        _restore_buffers(bns, saved)
        raise
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        model.train(was_training)
    if n == 0:
        _restore_buffers(bns, saved)
        raise ValueError("recompute_bn got no batches; pass an iterable with at least one batch")
    return n
