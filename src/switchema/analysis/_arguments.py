"""Argument checks and conversions shared by the analysis instruments (private to
:mod:`switchema.analysis`): the model, the loss function, flags, the device, seeded generators
and the fixed list of batches.

Errors name the function they were raised for (``where``) and the bad value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "check_bool",
    "check_callable",
    "check_loss",
    "check_model",
    "cpu_generator",
    "prepare_batches",
    "resolve_device",
]


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


def check_loss(value: Any, where: str) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise TypeError(
            f"{where}: loss_fn must return a scalar tensor (the batch's mean loss), got "
            f"{type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
        )
    return value.reshape(())
