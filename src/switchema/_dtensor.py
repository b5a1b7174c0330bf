"""DTensor helpers for sharded (FSDP2 / tensor-parallel) averagers.

Private to the package: :mod:`switchema.averaging` builds its storage on the local shards with
these, and :mod:`switchema.distributed` uses them for exports and checkpoints. Importing this
module never imports ``torch.distributed.tensor``: plain models never pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "dtensor_type",
    "fsdp_modules",
    "shift_placements",
    "contiguous_stride",
    "like_param",
    "stacked_like_param",
    "local_stack",
]


def dtensor_type() -> type | None:
    """The ``DTensor`` class if its module has been imported, else ``None``.

    No DTensor can exist before ``torch.distributed.tensor`` is imported, so plain models never
    pay for importing it.
    """
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        cls = getattr(sys.modules.get(name), "DTensor", None)
        if cls is not None:
            return cls
    return None


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that ``fully_shard`` was applied to (FSDP2), in module order."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        try:
            from torch.distributed._composable.fsdp import FSDPModule
        except ImportError:
            return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def shift_placements(placements: Sequence[Any], name: str) -> tuple[Any, ...]:
    """Placements of a ``(K, *shape)`` stack of a tensor placed as ``placements``."""
    from torch.distributed.tensor import Replicate, Shard

    try:
        from torch.distributed.tensor.placement_types import _StridedShard
    except ImportError:  # pragma: no cover
        _StridedShard = None
    out = []
    for p in placements:
        if _StridedShard is not None and isinstance(p, _StridedShard):
            out.append(_StridedShard(p.dim + 1, split_factor=p.split_factor))
        elif isinstance(p, Shard):
            out.append(Shard(p.dim + 1))
        elif isinstance(p, Replicate):
            out.append(p)
        else:
            raise ValueError(
                f"parameter {name!r} has placement {p!r}; only Shard and Replicate placements "
                "can be averaged"
            )
    return tuple(out)


def contiguous_stride(shape: Sequence[int]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


def like_param(local: Tensor, param: Any) -> Any:
    """``local`` (a local shard laid out like ``param``'s) as a DTensor placed like ``param``."""
    return type(param).from_local(
        local,
        param.device_mesh,
        param.placements,
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def stacked_like_param(local: Tensor, param: Any, name: str) -> Any:
    """A ``(K, *local_shape)`` local stack as the DTensor of shape ``(K, *param.shape)``."""
    shape = (local.shape[0], *param.shape)
    return type(param).from_local(
        local,
        param.device_mesh,
        shift_placements(param.placements, name),
        run_check=False,
        shape=torch.Size(shape),
        stride=contiguous_stride(shape),
    )


def local_stack(saved: Tensor, param: Any, name: str) -> Tensor:
    """This rank's part of a saved ``(K, *param.shape)`` stack, sharded like ``param``.

    ``saved`` may be a DTensor placed some other way (redistributed, a collective that every
    rank makes in the same order) or a full plain tensor that every rank holds (sliced locally,
    no communication).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    mesh = param.device_mesh
    placements = shift_placements(param.placements, name)
    if isinstance(saved, DTensor):
        if saved.device_mesh == mesh:
            if tuple(saved.placements) != placements:
                saved = saved.redistribute(mesh, placements)
            return saved.to_local()
        saved = saved.full_tensor()
    local = param.to_local()
    full = saved.to(device=local.device)
    return distribute_tensor(full, mesh, placements, src_data_rank=None).to_local()
