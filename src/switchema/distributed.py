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
a DCP ``Stateful``: pass it next to the model and optimizer (here in one process; under
``torchrun`` every rank runs the same lines)::

    >>> import tempfile, warnings
    >>> import torch
    >>> import torch.distributed.checkpoint as dcp
    >>> from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    >>> from switchema import EMA
    >>> warnings.filterwarnings("ignore", "torch.distributed is disabled")
    >>> model = torch.nn.Linear(4, 2)
    >>> optimizer = torch.optim.AdamW(model.parameters())
    >>> ema = EMA(model, decay=0.9)
    >>> model(torch.randn(3, 4)).sum().backward(); optimizer.step(); ema.update()
    >>> path = tempfile.mkdtemp()
    >>> model_sd, optim_sd = get_state_dict(model, optimizer)
    >>> _ = dcp.save({"model": model_sd, "optim": optim_sd, "ema": ema}, checkpoint_id=path)
    >>> model2 = torch.nn.Linear(4, 2)                         # resume elsewhere
    >>> optimizer2 = torch.optim.AdamW(model2.parameters())
    >>> ema2 = EMA(model2, decay=0.9)
    >>> model_sd, optim_sd = get_state_dict(model2, optimizer2)      # templates
    >>> state = {"model": model_sd, "optim": optim_sd, "ema": ema2}
    >>> dcp.load(state, checkpoint_id=path)                          # calls ema2.load_state_dict
    >>> _ = set_state_dict(
    ...     model2, optimizer2, model_state_dict=state["model"], optim_state_dict=state["optim"]
    ... )
    >>> ema2.step, torch.equal(ema2.averaged_state_dict()["weight"], ema.averaged_state_dict()["weight"])
    (1, True)

DCP reshards on load, so a checkpoint saved on N ranks loads on M ranks, sharded or into a
plain, unsharded model and averager in one process (``dcp.load`` without a process group).
The loading averager must keep as many averages (decays) as the saved one; its configuration
and counters come from the checkpoint. :func:`save_averager` / :func:`load_averager` do the
same for an averager alone and check that first.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._dtensor import dtensor_type
from .averaging import WeightAverager

__all__ = ["full_averaged_state_dict", "is_sharded", "save_averager", "load_averager"]

_AVERAGES_KEY = "averages"


def is_sharded(averager: WeightAverager) -> bool:
    """True when some averaged parameter is a ``DTensor`` (FSDP2 / tensor parallel)."""
    _check_averager(averager)
    return averager.is_sharded


def _check_averager(averager: Any) -> None:
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
            value = value.full_tensor()  # type: ignore[attr-defined]  # dt is DTensor
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
    for name in averager.names:
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
    extra = sorted(set(saved) - set(averager.names))
    if extra:
        raise ValueError(
            f"checkpoint {checkpoint_id!r} averages {extra[0]!r}, which this averager does not"
        )
    dcp.load({"averager": averager}, checkpoint_id=checkpoint_id, storage_reader=reader, **kwargs)
