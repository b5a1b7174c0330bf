"""An averager's storage: the tensors it binds to, its grouped flat buffers, and their checks.

:class:`Storage` binds to a model's tensors by name (:mod:`switchema._binding`), keeps the K
averages of each (device, source dtype, average dtype) group in one ``(K, N)`` buffer
(:class:`switchema._kernels.FlatGroup`) and moves values between the model and the averages
with the kernels. It checks, in C through ``map()``, that the model still holds the tensors it
bound to (identity of the registered object, ``data_ptr`` of the storage), follows FSDP2 when it
moves a shard without changing it, and refuses anything else with what to do.

Averages on another device (``device=``, or ``offload="staged"``): each group's sources are
then a staging copy of the model's tensors on the average's device (one flat buffer, pinned
host memory for an accelerator's model), and every kernel runs there against it. An update
that reads the model (:meth:`Storage.defer`) takes the copy (:meth:`Storage.stage`, on CUDA
through a device snapshot and a side stream, without waiting) and runs when something next
needs the averages (:meth:`Storage.synchronize`, which every reader here calls first). On the
model's own device the same path gives the in-place averages bit for bit.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import _kernels as K
from ._binding import Entry, collect_entries, same_layout
from ._dtensor import dtensor_type, fsdp_modules
from .settings import Options

__all__ = ["Storage", "WeightCache"]

_data_ptr = Tensor.data_ptr
_local_tensor = operator.attrgetter("_local_tensor")  # a DTensor's local shard


@dataclass
class WeightCache:
    """One group's update weights: the last host values and their device copy.

    ``device`` is ``(2, K)``: row 0 the weights ``w_k``, row 1 ``1 - w_k``; for K > 1 the
    cache-sized ``blocks`` of storage and their ``sources`` come with views of both rows shaped
    for the blocks, so the K averages are updated in one pass over the weights.
    """

    host: list[float]
    device: Tensor
    wviews: list[Tensor] = field(default_factory=list)
    keepviews: list[Tensor] = field(default_factory=list)
    blocks: list[Tensor] = field(default_factory=list)
    sources: list[Tensor] = field(default_factory=list)


def _weight_cache(g: K.FlatGroup) -> WeightCache:
    buf = torch.zeros((2, g.k), dtype=g.dtype, device=g.flat.device)
    if g.k == 1:
        return WeightCache([math.nan], buf)
    blocks, sources = g.chunks()
    return WeightCache(
        [math.nan] * g.k,
        buf,
        g.weight_views(buf[0], blocks),
        g.weight_views(buf[1], blocks),
        blocks,
        sources,
    )


def plan(entries: list[Entry], dtype: torch.dtype | None) -> dict[tuple, list[Entry]]:
    """The averaged entries grouped by (device, source dtype, average dtype)."""
    by_key: dict[tuple, list[Entry]] = {}
    for e in entries:
        if e.policy != "average":
            continue
        src = e.source  # a DTensor's local shard: each rank averages only its shards
        avg_dtype = src.dtype if dtype is None else torch.promote_types(src.dtype, dtype)
        by_key.setdefault((src.device, src.dtype, avg_dtype), []).append(e)
    return by_key


def averaged_entries(model: nn.Module, settings: Options) -> tuple[list[Entry], list[Entry]]:
    """Every entry of ``model`` under ``settings``' policies, and the averaged ones in order."""
    entries = collect_entries(
        model, buffers=settings.buffers, params=settings.params, frozen=settings.frozen
    )
    return entries, [e for group in plan(entries, settings.dtype).values() for e in group]


def same_device(model: torch.device, average: torch.device | None) -> bool:
    """Whether averages on ``average`` (``None``: the model's) sit on the model's device."""
    if average is None:
        return True
    if average.type != model.type:
        return False
    return average.index is None or model.index is None or average.index == model.index


def _side_stream(device: torch.device) -> Any:
    """The copy stream of a CUDA ``device`` (one per device), or ``None`` elsewhere."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _STREAMS.get(index)
    if stream is None:
        stream = _STREAMS[index] = torch.cuda.Stream(index)
    return stream


_STREAMS: dict[int, Any] = {}


def _staged_group(live: list[Tensor], k: int, dtype: torch.dtype, device: Any) -> K.FlatGroup:
    """A group whose sources are copies of ``live`` on ``device``, in one flat buffer.

    Host memory is pinned when the model is on an accelerator, so the copies out of it can be
    non-blocking. The kernels then run on ``device`` against the staged copy.
    """
    device = torch.device(device)
    pin = device.type == "cpu" and live[0].device.type != "cpu"
    n = sum(t.numel() for t in live)
    stage = torch.empty(n, dtype=live[0].dtype, device=device, pin_memory=pin)
    views, offset = [], 0
    for t in live:
        views.append(K.dense_view(stage, t, offset))
        offset += t.numel()
    K.copy_(views, live)
    g = K.FlatGroup(views, k, dtype, pin_memory=pin)
    g.src_flat = stage  # laid out like a row of g.flat: every kernel is one flat op
    return g


def _stage_pairs(
    g: K.FlatGroup, live: list[Tensor], live_flat: Tensor | None, into: Tensor | None = None
) -> tuple[list[Tensor], list[Tensor]]:
    """(the staged copy, or ``into`` laid out like it; the model's tensors) of one staged
    group, flat when both are."""
    if live_flat is not None:
        return [g.src_flat if into is None else into], [live_flat]
    if into is None:
        return g.tensors, live
    return [K.dense_view(into, t, o) for t, o in zip(live, g.offsets)], live


class Storage:
    """The K averages of ``model``'s averaged tensors under ``settings`` (see the module doc)."""

    def __init__(self, model: nn.Module, settings: Options) -> None:
        self.model = model
        entries = collect_entries(
            model, buffers=settings.buffers, params=settings.params, frozen=settings.frozen
        )
        if not any(e.is_param and e.tensor.is_floating_point() for e in entries):
            raise ValueError(
                f"model {type(model).__name__} has no floating-point parameters to average"
            )
        by_key = plan(entries, settings.dtype)
        if not by_key:
            raise ValueError(
                "no parameter to average: every floating-point parameter is frozen "
                "(requires_grad=False) or excluded by the params policy; pass frozen='average' "
                "to average frozen parameters anyway"
            )
        for e in (e for group in by_key.values() for e in group):
            if e.source.is_inference():
                raise ValueError(
                    f"{'parameter' if e.is_param else 'buffer'} {e.name!r} is an inference "
                    "tensor (the model was created or loaded under torch.inference_mode()), "
                    "which can never be written outside inference mode; build the model "
                    "outside torch.inference_mode() (torch.no_grad() is fine)"
                )
        self.entries = entries
        self.averaged = [e for group in by_key.values() for e in group]
        k = settings.num_averages
        self.staged = settings.offload == "staged" or any(
            not same_device(key[0], settings.device) for key in by_key
        )
        if self.staged and any(e.sharded for e in self.averaged):
            raise ValueError(
                "device= (averages kept on another device) is not supported for sharded "
                "(DTensor, FSDP2) parameters yet; FSDP2 already spreads the averages over the "
                "ranks: leave device=None"
            )
        # The model's tensors per group: the kernels' sources, except on the staged path,
        # where the sources are copies of them on the average's device (see Offload).
        self.live = [[e.source for e in group] for group in by_key.values()]
        self.live_flat: list[Tensor | None] = [None] * len(by_key)
        self._pending: Any = None  # the deferred update (staged path)
        self._events: list[Any] = []  # when its copies are done (CUDA)
        self._snapshots: dict[int, Any] = {}  # per group: the weights on their device (CUDA)
        # Built outside inference mode, so an averager made under torch.inference_mode()
        # still works after the block.
        with torch.inference_mode(False):
            if self.staged:
                self.groups = [
                    _staged_group(live, k, key[2], settings.device or key[0])
                    for live, key in zip(self.live, by_key)
                ]
            else:
                self.groups = [K.FlatGroup(live, k, key[2]) for live, key in zip(self.live, by_key)]
            if settings.flat_params:
                self._flatten_params(list(by_key.values()))
        self.names = [e.name for e in self.averaged]
        self.where: dict[int, tuple[K.FlatGroup, int]] = {}
        for g, group in zip(self.groups, by_key.values()):
            for i, e in enumerate(group):
                self.where[id(e.tensor)] = (g, i)
        self.policy_by_id = {id(e.tensor): e.policy for e in entries}
        # Buffers the averager does not store: swapped() backs them up and restores them.
        self.other_buffers = [e for e in entries if not e.is_param and e.policy != "average"]
        self._live = [e.tensor for e in self.averaged]
        self._owners = [e.owner for e in self.averaged]
        self._keys = [e.key for e in self.averaged]
        self._live_plain = [e.tensor for e in self.averaged if not e.sharded]
        self._ptrs = list(map(_data_ptr, self._live_plain))
        self.live_dt = [e.tensor for e in self.averaged if e.sharded]
        self._ptrs_dt = list(map(_data_ptr, map(_local_tensor, self.live_dt)))
        self._fsdp_modules = fsdp_modules(model) if self.live_dt else []
        self.caches = [_weight_cache(g) for g in self.groups]

    def _flatten_params(self, groups: list[list[Entry]]) -> None:
        """Make the averaged tensors views into one buffer per group (``flat_params=True``).

        The parameter objects stay the same (``param.data`` changes), so an optimizer built
        before keeps working; a later ``model.to(...)`` replaces their data and is caught by
        the binding check like any other replacement.
        """
        if any(e.sharded for group in groups for e in group):
            raise ValueError(
                "flat_params=True is not supported for sharded (DTensor) parameters; FSDP2 "
                "already keeps each rank's shards in its own flat buffers"
            )
        for gi, (g, group) in enumerate(zip(self.groups, groups)):
            if self.staged:  # the model's own flat buffer, on its device
                live = self.live[gi]
                flat = torch.empty(g.numel, dtype=g.source_dtype, device=live[0].device)
                views = [K.dense_view(flat, t, o) for t, o in zip(live, g.offsets)]
                K.copy_(views, live)
                self.live_flat[gi] = flat
            else:
                views = g.flatten_sources()
                self.live_flat[gi] = g.src_flat
            for e, view in zip(group, views):
                e.tensor.data = view

    # ------------------------------------------------------------------ binding checks
    def check(self) -> None:
        """Raise if the model no longer holds the tensors bound to (with what to do)."""
        if (
            list(map(_data_ptr, self._live_plain)) == self._ptrs
            and list(map(_data_ptr, map(_local_tensor, self.live_dt))) == self._ptrs_dt
            and all(map(operator.is_, map(dict.get, self._owners, self._keys), self._live))
        ):
            return
        self.reshard()  # FSDP2 may have its unsharded parameters registered
        dtensor = dtensor_type()
        plain_ptrs, dt_ptrs = iter(self._ptrs), iter(self._ptrs_dt)
        fix = (
            "create the averager after moving, converting or loading the model "
            "(model.to(...), load_state_dict(assign=True)), then load its state_dict if resuming"
        )
        for e in self.averaged:
            ptr = next(dt_ptrs) if e.sharded else next(plain_ptrs)
            current = e.owner.get(e.key)
            if current is not e.tensor:
                what = "was replaced by a new tensor"
                if dtensor is not None and isinstance(current, dtensor) and not e.sharded:
                    what = "is now a DTensor: the model was sharded (e.g. by fully_shard)"
                    fix = "create the averager after sharding the model"
            elif e.sharded:
                local = _local_tensor(e.tensor)
                if _data_ptr(local) == ptr:
                    continue
                if same_layout(local, e.source):
                    # FSDP2 moved the shard (re-padding, pinning) without changing it: follow.
                    self._rebind_source(e, local)
                    continue
                what = (
                    f"had its local shard replaced (now {tuple(local.shape)} {local.dtype} on "
                    f"{local.device})"
                )
            elif _data_ptr(e.tensor) != ptr:
                what = f"had its data replaced (now {e.tensor.dtype} on {e.tensor.device})"
            else:
                continue
            raise ValueError(
                f"{'parameter' if e.is_param else 'buffer'} {e.name!r} {what} after the averager "
                f"was created; {fix}"
            )

    def _rebind_source(self, e: Entry, local: Tensor) -> None:
        """Point the kernels at a DTensor's new local shard (same layout; off the hot path)."""
        g, i = self.where[id(e.tensor)]
        gi = next(j for j, h in enumerate(self.groups) if h is g)
        e.source = g.tensors[i] = self.live[gi][i] = local.detach()
        self.caches[gi] = _weight_cache(g)
        self._ptrs_dt = list(map(_data_ptr, map(_local_tensor, self.live_dt)))

    def reshard(self) -> None:
        """Register FSDP2's sharded parameters where it holds unsharded ones (no-op otherwise).

        The root module keeps its unsharded parameters after a forward without backward. The
        averager reads and writes the sharded parameters (which the optimizer updates); after
        ``reshard()`` the next forward all-gathers them, so it sees what the averager wrote.
        """
        for m in self._fsdp_modules:
            m.reshard()

    # ------------------------------------------------------------------ staging
    def stage(self) -> None:
        """Staged path: the sources (copies on the average's device) <- the model, non-blocking.

        On CUDA the weights are first copied on the device into a snapshot (one copy of the
        averaged tensors in the model's dtype, which the step's own stream does at device
        bandwidth), and the snapshot is copied into pinned host memory on a side stream while
        training goes on: the next optimizer step may change the weights at once, and the host
        never waits here. :meth:`synchronize` waits for the copy before the staged copy is read.
        """
        events = []
        for gi, (g, live, flat) in enumerate(zip(self.groups, self.live, self.live_flat)):
            stream = _side_stream(live[0].device)
            if stream is None:
                K.copy_(*_stage_pairs(g, live, flat))
                continue
            if gi not in self._snapshots:
                snap = torch.empty_like(g.src_flat, device=live[0].device)
                snap.record_stream(stream)  # read there: not reused before those reads end
                self._snapshots[gi] = (snap, _stage_pairs(g, live, flat, snap))
            snap, pairs = self._snapshots[gi]
            K.copy_(*pairs)  # device to device, in stream order
            current = torch.cuda.current_stream(stream.device)
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                g.src_flat.copy_(snap, non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            events.append(event)
        self._events = events

    def defer(self, op: Any) -> None:
        """Run ``op`` (which reads the sources) now, or, staged, on the weights staged now when
        next needed: the previous one is finished first, then the copy is issued."""
        if not self.staged:
            op()
            return
        self.synchronize()
        self.stage()
        self._pending = op

    def synchronize(self) -> None:
        """Finish a deferred update: wait for its staged copy, then run it (no-op otherwise)."""
        op = self._pending
        if op is None:
            return
        self._pending = None
        for event in self._events:
            event.synchronize()
        self._events = []
        op()

    # ------------------------------------------------------------------ moving values
    def fill_from_model(self) -> None:
        """Every average <- the model (before the start step); staged: the staged copy."""
        for g in self.groups:
            avg, src = g.row_pairs(0)
            K.copy_(avg, src)
            if g.k > 1:
                g.flat[1:].copy_(g.flat[0])

    def lerp(self, weights: list[float]) -> None:
        """``avg_k <- avg_k + w_k (x - avg_k)`` for every group, reading the weights once."""
        for g, cache in zip(self.groups, self.caches):
            if g.k == 1:
                avg, src = g.row_pairs(0)
                K.lerp_(avg, src, weights[0])
                continue
            if cache.host != weights:
                # Only changes during warm-up; afterwards no host-to-device copy per step.
                buf = cache.device
                host_w = torch.tensor([weights, [1.0 - w for w in weights]], dtype=buf.dtype)
                if buf.is_cuda:  # pinned + non_blocking: no host-device sync on this copy
                    host_w = host_w.pin_memory()
                buf.copy_(host_w, non_blocking=buf.is_cuda)
                cache.host = list(weights)
            K.multi_lerp_(cache.blocks, cache.sources, cache.wviews, cache.keepviews)

    def apply(self, avg_fn: Any, step: int) -> None:
        """A custom average: ``avg_fn(average, model, step)`` per group and average, on the
        group's flat average and the model's tensors gathered into one tensor of its dtype."""
        for g in self.groups:
            x = torch.empty(g.numel, dtype=g.dtype, device=g.flat.device)
            K.copy_([K.dense_view(x, t, o) for t, o in zip(g.tensors, g.offsets)], g.tensors)
            for k in range(g.k):
                out = avg_fn(g.flat[k], x, step)
                if out is not None:
                    g.flat[k].copy_(out)

    def _model_pairs(self, gi: int, index: int) -> tuple[list[Tensor], list[Tensor]]:
        """(the model's averaged tensors of group ``gi``, average ``index``), flat when both are."""
        g, flat = self.groups[gi], self.live_flat[gi]
        if flat is not None:
            return [flat], [g.flat[index]]
        return self.live[gi], g.views[index]

    def copy_into_model(self, index: int) -> None:
        """The model's averaged tensors <- average ``index`` (cast to their dtype)."""
        self.synchronize()
        for gi in range(len(self.groups)):
            K.copy_(*self._model_pairs(gi, index))

    def move_model(self, index: int, weight: float) -> None:
        """``x <- x + weight * (avg - x)`` for the model's averaged tensors, computed in the
        average's precision and rounded once into the model."""
        self.synchronize()
        for gi, g in enumerate(self.groups):
            if self.staged:  # on the average's device, through the staged copy
                live, flat = self.live[gi], self.live_flat[gi]
                K.copy_(*_stage_pairs(g, live, flat))
                avg, src = g.row_pairs(index)
                K.partial_switch_(src, avg, weight)
                K.copy_(*_stage_pairs(g, live, flat)[::-1])
                continue
            avg, src = g.row_pairs(index)
            K.partial_switch_(src, avg, weight)

    def backup_model(self) -> list[tuple[list[Tensor], list[Tensor]]]:
        """Copies of the model's averaged tensors and other buffers, with where they go back."""
        self.synchronize()
        backups = []
        for g, live, live_flat in zip(self.groups, self.live, self.live_flat):
            if live_flat is not None:
                backups.append(([live_flat], [live_flat.clone()]))
            else:
                flat = torch.empty(g.numel, dtype=g.source_dtype, device=live[0].device)
                saved = [K.dense_view(flat, t, o) for t, o in zip(live, g.offsets)]
                K.copy_(saved, live)
                backups.append((live, saved))
        buffers = [e.source for e in self.other_buffers]
        backups.append((buffers, [b.clone() for b in buffers]))
        return backups

    # ------------------------------------------------------------------ what is stored
    def kview(self, e: Entry) -> Tensor:
        """Entry ``e``'s K averages, shape ``(K, *local shape)``."""
        self.synchronize()
        g, i = self.where[id(e.tensor)]
        return g.kviews[i]

    def view(self, e: Entry, index: int) -> Tensor:
        self.synchronize()
        g, i = self.where[id(e.tensor)]
        return g.views[index][i]

    def layout(self) -> list[dict[str, Any]]:
        """Per group, its ``(K, N)`` buffer and where each tensor lies in it."""
        self.synchronize()
        slots: dict[int, list[Any]] = {}
        for e in self.averaged:
            g, i = self.where[id(e.tensor)]
            src = g.tensors[i]
            slots.setdefault(id(g), [None] * len(g.tensors))[i] = {
                "name": e.name,
                "shape": list(src.shape),
                "stride": list(src.stride()),
                "offset": g.offsets[i],
                "full_shape": list(e.tensor.shape),
            }
        return [{"flat": g.flat, "tensors": slots[id(g)]} for g in self.groups]

    @property
    def nbytes(self) -> int:
        return sum(g.flat.numel() * g.flat.element_size() for g in self.groups)

    @property
    def numel(self) -> int:
        return sum(g.numel for g in self.groups)
