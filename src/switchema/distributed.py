"""Averagers under ``torch.distributed``: DDP, FSDP2 (``fully_shard``) and distributed checkpoints.

**DDP** needs nothing: the averager unwraps ``DistributedDataParallel`` and every rank holds
the same weights after each step, so every rank holds the same averages.

**FSDP2** (``torch.distributed.fsdp.fully_shard``; parameters are ``DTensor``\\ s). Create the
averager *after* ``fully_shard``. Each rank then averages only its local shards: the flat
storage is built on the parameters' local tensors, so an average costs the shard size per
rank, and ``update()``, ``switch()`` and ``swapped()`` run shard-locally with no collective.
If FSDP holds *unsharded* parameters when the averager is called (the root module keeps them
after a forward without backward, e.g. an evaluation under ``torch.no_grad()``), the averager
first calls ``FSDPModule.reshard()``, so that it reads and writes the sharded parameters that
the optimizer updates and the next forward all-gathers what it wrote. ``swapped()`` reshards
again when its block ends, so that unsharded averaged weights left by a forward inside the
block are never used for training. Where FSDP moves a parameter's local shard to new memory
(``to_empty()``, re-padding in ``_apply``), the averager follows it if its shape, dtype and
device are unchanged; an averager built before ``fully_shard``, or a shard converted to
another dtype or device (``model.double()``), raises ``ValueError`` naming the parameter.

Exports of a sharded averager:

* ``averager.averaged_state_dict()`` holds ``DTensor``\\ s with the parameters' mesh and
  placements: load it with ``torch.distributed.checkpoint.state_dict.set_model_state_dict``
  (or ``load_state_dict``) into a model sharded the same way, or save it with DCP.
* :func:`full_averaged_state_dict` gathers the full, unsharded state dict as plain tensors, for
  ``plain_model.load_state_dict(...)`` (on rank 0 only by default).
* ``averager.state_dict()`` holds each parameter's ``K`` averages as one ``DTensor`` of shape
  ``(K, *param.shape)`` on the parameter's mesh (the parameter's ``Shard(d)`` becomes
  ``Shard(d + 1)``), plus counters and configuration as plain data.

**Distributed checkpoints.** An averager has ``state_dict()`` / ``load_state_dict()``, so it is
a DCP ``Stateful``: pass it next to the model and optimizer::

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd, "ema": ema}, checkpoint_id=path)

    model_sd, optim_sd = get_state_dict(model, optimizer)      # templates
    state = {"model": model_sd, "optim": optim_sd, "ema": ema}
    dcp.load(state, checkpoint_id=path)                         # calls ema.load_state_dict
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])

DCP reshards on load, so a checkpoint saved on N ranks loads on M ranks, sharded or into a
plain, unsharded model and averager in one process (``dcp.load`` without a process group).
The loading averager must keep as many averages (decays) as the saved one; its configuration
and counters come from the checkpoint. :func:`save_averager` / :func:`load_averager` do the
same for an averager alone and check that first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .averaging import WeightAverager

__all__ = ["full_averaged_state_dict", "is_sharded", "save_averager", "load_averager"]

_AVERAGES_KEY = "averages"


# ---------------------------------------------------------------- DTensor helpers (private)
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


def _shift_placements(placements: Sequence[Any], name: str) -> tuple[Any, ...]:
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


def _contiguous_stride(shape: Sequence[int]) -> tuple[int, ...]:
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
        _shift_placements(param.placements, name),
        run_check=False,
        shape=torch.Size(shape),
        stride=_contiguous_stride(shape),
    )


def local_stack(saved: Tensor, param: Any, name: str) -> Tensor:
    """This rank's part of a saved ``(K, *param.shape)`` stack, sharded like ``param``.

    ``saved`` may be a DTensor placed some other way (redistributed, a collective that every
    rank makes in the same order) or a full plain tensor that every rank holds (sliced locally,
    no communication).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    mesh = param.device_mesh
    placements = _shift_placements(param.placements, name)
    if isinstance(saved, DTensor):
        if saved.device_mesh == mesh:
            if tuple(saved.placements) != placements:
                saved = saved.redistribute(mesh, placements)
            return saved.to_local()
        saved = saved.full_tensor()
    local = param.to_local()
    full = saved.to(device=local.device)
    return distribute_tensor(full, mesh, placements, src_data_rank=None).to_local()


# ---------------------------------------------------------------- public API
def is_sharded(averager: WeightAverager) -> bool:
    """True when some averaged parameter is a ``DTensor`` (FSDP2 / tensor parallel)."""
    _check_averager(averager)
    return bool(averager._live_dt)


def _check_averager(averager: Any) -> None:
    from .averaging import WeightAverager

    if not isinstance(averager, WeightAverager):
        raise TypeError(f"expected a switchema averager (EMA, SWA), got {type(averager).__name__}")


@torch.no_grad()
def full_averaged_state_dict(
    averager: WeightAverager,
    index: int = 0,
    *,
    rank0_only: bool = True,
    cpu_offload: bool = False,
) -> dict[str, Tensor]:
    """The full, unsharded averaged state dict as plain tensors, for a plain model.

    For a sharded averager every ``DTensor`` of ``averager.averaged_state_dict(index)`` is
    all-gathered, one tensor at a time, so **every rank must call this** (a collective). With
    ``rank0_only`` (default) ranks other than 0 drop the gathered tensors and get ``{}``;
    ``cpu_offload`` moves each gathered tensor to the CPU at once (a GPU then holds one full
    tensor at a time). Load the result with ``plain_model.load_state_dict(sd)``.

    For an averager of a plain (or DDP) model this is ``averaged_state_dict(index)`` on every
    rank (with ``rank0_only``, ``{}`` on ranks other than 0 when a process group is up).
    """
    _check_averager(averager)
    dt = dtensor_type()
    sd = averager.averaged_state_dict(index)
    rank = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
    keep = rank == 0 or not rank0_only
    out: dict[str, Tensor] = {}
    for name, value in sd.items():
        if dt is not None and isinstance(value, dt):
            value = value.full_tensor()
        if keep:
            out[name] = value.cpu() if cpu_offload else value
    return out


def save_averager(averager: WeightAverager, checkpoint_id: Any, **kwargs: Any) -> None:
    """Save ``averager`` alone with ``torch.distributed.checkpoint.save`` (all ranks call it).

    To save it with the model and optimizer, pass it in the same dict instead (see the module
    docstring). ``kwargs`` go to ``dcp.save`` (``storage_writer``, ``process_group``, ...).
    """
    import torch.distributed.checkpoint as dcp

    _check_averager(averager)
    dcp.save({"averager": averager}, checkpoint_id=checkpoint_id, **kwargs)


def load_averager(averager: WeightAverager, checkpoint_id: Any, **kwargs: Any) -> None:
    """Load a :func:`save_averager` checkpoint into ``averager``, resharding as needed.

    Works on any number of ranks, sharded or not, and without a process group. Checks first
    that the checkpoint holds the averager's tensors with as many averages (decays); the
    configuration and counters are taken from the checkpoint.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    _check_averager(averager)
    reader = kwargs.pop("storage_reader", None)
    if reader is None:
        reader = FileSystemReader(checkpoint_id)
    meta = reader.read_metadata().state_dict_metadata
    prefix = f"averager.{_AVERAGES_KEY}."
    saved = {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
    for name in averager._names:
        if name not in saved:
            raise ValueError(
                f"checkpoint {checkpoint_id!r} has no average for {name!r} "
                f"(it holds {sorted(saved)[:5]}{'...' if len(saved) > 5 else ''})"
            )
        k = saved[name].size[0]
        if k != averager.num_averages:
            raise ValueError(
                f"checkpoint {checkpoint_id!r} keeps {k} average(s) per tensor, this averager "
                f"{averager.num_averages}: build it with as many decays as the saved one"
            )
    extra = sorted(set(saved) - set(averager._names))
    if extra:
        raise ValueError(
            f"checkpoint {checkpoint_id!r} averages {extra[0]!r}, which this averager does not"
        )
    dcp.load({"averager": averager}, checkpoint_id=checkpoint_id, storage_reader=reader, **kwargs)
