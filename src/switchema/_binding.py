"""Which tensors of a model an averager binds to, under which names and policies.

An averager never copies the model: it keeps a list of :class:`Entry` objects, one per tensor
the model registers (tied tensors once, under their first name), each with the policy that
:mod:`switchema.policies` gives it. Names are those of the *unwrapped* model, so a checkpoint
written under DDP or ``torch.compile`` loads into a plain model and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ._dtensor import dtensor_type
from .policies import resolve_policy

__all__ = ["Entry", "collect_entries", "unwrap_model", "clean_name", "same_layout", "averageable"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``DistributedDataParallel`` / ``DataParallel`` and ``torch.compile`` wrappers."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def clean_name(name: str) -> str:
    """``name`` without the ``_orig_mod`` segments a compiled *submodule* leaves inside it."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def averageable(t: Tensor) -> bool:
    """Floating-point and complex tensors can be averaged; integers and bools are copied."""
    return t.is_floating_point() or t.is_complex()


@dataclass
class Entry:
    """One tensor the model registers, and what the averager does with it."""

    name: str  # the unwrapped model's name, without `_orig_mod` segments
    path: str  # the name inside the unwrapped module, as named_parameters() gives it
    owner: dict  # the module's _parameters or _buffers dict
    key: str
    tensor: Tensor  # what the module registers (a DTensor for FSDP2 / tensor parallel)
    is_param: bool
    policy: str  # "average" | "copy" | "skip"
    sharded: bool = False  # ``tensor`` is a DTensor: ``source`` is its local shard
    source: Tensor | None = None  # the plain tensor the kernels read and write

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = self.tensor._local_tensor.detach() if self.sharded else self.tensor


def collect_entries(
    model: nn.Module,
    *,
    buffers: str | Mapping[str, str],
    params: str | Mapping[str, str] | None,
    frozen: str,
) -> list[Entry]:
    """Every parameter and buffer of ``model`` (tied ones once), with its policy.

    Parameters: trainable floating-point (and complex) ones are averaged, frozen ones follow
    ``frozen``; ``params`` patterns override both. Buffers follow ``buffers`` (default
    ``"copy"``); non-persistent buffers are skipped. Integer tensors are never averaged.
    """
    dtensor = dtensor_type()
    entries: list[Entry] = []
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for key, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue  # tied parameters are averaged once, under their first name
            seen.add(id(p))
            name = clean_name(prefix + key)
            default = "average" if p.requires_grad else frozen
            policy = default if params is None else resolve_policy(params, name, default, "params")
            if policy == "average" and not averageable(p):
                policy = "copy"
            sharded = dtensor is not None and isinstance(p, dtensor)
            entries.append(
                Entry(name, prefix + key, mod._parameters, key, p, True, policy, sharded)
            )
        for key, b in mod._buffers.items():
            if b is None or id(b) in seen:
                continue
            seen.add(id(b))
            name = clean_name(prefix + key)
            if key in mod._non_persistent_buffers_set:
                policy = "skip"
            else:
                policy = resolve_policy(buffers, name, "copy", "buffers")
                if policy == "average" and not averageable(b):
                    policy = "copy"  # integer counters never go through float arithmetic
            sharded = dtensor is not None and isinstance(b, dtensor)
            entries.append(Entry(name, prefix + key, mod._buffers, key, b, False, policy, sharded))
    return entries


def same_layout(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype, device and memory order (strides of dimensions longer than 1)."""
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
        return False
    if a.numel() == 0:
        return True
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return unwrap_model(model)
