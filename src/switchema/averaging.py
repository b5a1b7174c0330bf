"""Weight averagers: EMA (with Switch EMA) and SWA, for any ``nn.Module``.

The averager holds *only* the averages: it never ``deepcopy``s the model. Averages live in
one contiguous buffer per (device, dtype) group (see :mod:`switchema._kernels`), in float32 by
default even for a bf16 / fp16 model, so small updates do not round away.

Usage in a training loop::

    ema = EMA(model, decay=0.999)
    for epoch in range(epochs):
        for x, y in loader:
            loss_fn(model(x), y).backward()
            optimizer.step(); optimizer.zero_grad()
            ema.update()                  # after every optimizer step
        ema.switch()                      # Switch EMA: copy the average into the model
        with ema.swapped():               # evaluate the averaged weights, then restore
            evaluate(model)

Parameters are matched by *name* (wrappers' ``module.`` / ``_orig_mod.`` prefixes removed),
tied parameters are averaged once, frozen parameters and buffers follow explicit policies.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import _kernels as K
from . import distributed as _dist
from .batchnorm import resolve_buffer_policy
from .schedules import (
    DecaySchedule,
    _check_decay,
    half_life_to_decay,
    resolve_schedule,
    schedule_from_dict,
)

__all__ = ["WeightAverager", "EMA", "SWA", "unwrap_model"]

_STATE_FORMAT = 1
_data_ptr = Tensor.data_ptr
_local_tensor = operator.attrgetter("_local_tensor")  # a DTensor's local shard


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


def _clean_name(name: str) -> str:
    # A compiled *submodule* leaves `_orig_mod` segments inside names.
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


@dataclass
class _Entry:
    name: str
    owner: dict  # the module's _parameters or _buffers dict
    key: str
    tensor: Tensor  # what the module registers (a DTensor for FSDP2 / tensor parallel)
    is_param: bool
    policy: str  # "average" | "copy" | "skip"
    sharded: bool = False  # ``tensor`` is a DTensor: ``source`` is its local shard
    source: Tensor | None = None  # the plain tensor the kernels read and write

    def __post_init__(self) -> None:
        if self.source is None:
            self.source = _local_tensor(self.tensor).detach() if self.sharded else self.tensor


def _collect(model: nn.Module, buffers: Any, frozen: str) -> list[_Entry]:
    dtensor = _dist.dtensor_type()
    entries: list[_Entry] = []
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for key, p in mod._parameters.items():
            if p is None or id(p) in seen:
                continue  # tied parameters are averaged once, under their first name
            seen.add(id(p))
            if not p.is_floating_point():
                policy = "copy"
            elif p.requires_grad:
                policy = "average"
            else:
                policy = frozen
            sharded = dtensor is not None and isinstance(p, dtensor)
            entries.append(
                _Entry(_clean_name(prefix + key), mod._parameters, key, p, True, policy, sharded)
            )
        for key, b in mod._buffers.items():
            if b is None or id(b) in seen:
                continue
            seen.add(id(b))
            name = _clean_name(prefix + key)
            if key in mod._non_persistent_buffers_set:
                policy = "skip"
            else:
                policy = resolve_buffer_policy(buffers, name)
                if policy == "average" and not b.is_floating_point():
                    policy = "copy"  # integer counters never go through float arithmetic
            sharded = dtensor is not None and isinstance(b, dtensor)
            entries.append(_Entry(name, mod._buffers, key, b, False, policy, sharded))
    return entries


def _same_layout(a: Tensor, b: Tensor) -> bool:
    """Same shape, dtype, device and memory order (strides of dimensions longer than 1)."""
    if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
        return False
    if a.numel() == 0:
        return True
    return all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def _check_index(index: Any, k: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int in [0, {k}), got {index!r}")
    if not -k <= index < k:
        raise ValueError(f"index {index} out of range: this averager keeps {k} average(s)")
    return index % k


def _check_positive_int(value: Any, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


class WeightAverager:
    """Shared machinery of :class:`EMA` and :class:`SWA`: binding, storage, switch, swap, state.

    Subclasses define :meth:`_lerp_weights`, the weights ``w_k`` of the update
    ``avg_k <- avg_k + w_k * (x - avg_k)``.
    """

    kind = "base"

    def __init__(
        self,
        model: nn.Module,
        *,
        num_averages: int,
        update_every: int = 1,
        start_step: int = 0,
        switch_every: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        buffers: str | Mapping[str, str] = "copy",
        frozen: str = "copy",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.update_every = _check_positive_int(update_every, "update_every")
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"start_step must be a non-negative int, got {start_step!r}")
        self.start_step = start_step
        self.switch_every = _check_positive_int(switch_every, "switch_every", allow_none=True)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.dtype = dtype
        if isinstance(buffers, Mapping):
            buffers = dict(buffers)
        resolve_buffer_policy(buffers, "")  # validates every policy up front
        self.buffers = buffers
        if frozen not in ("copy", "average"):
            raise ValueError(f"frozen must be 'copy' or 'average', got {frozen!r}")
        self.frozen = frozen
        self.num_averages = num_averages
        self.step = 0  # optimizer steps seen (calls to update())
        self.n_updates = 0  # averaging updates performed
        self._swapped_index: int | None = None
        self._model = unwrap_model(model)
        self._bind()

    # ------------------------------------------------------------------ binding
    def _bind(self) -> None:
        entries = _collect(self._model, self.buffers, self.frozen)
        if not any(e.is_param and e.tensor.is_floating_point() for e in entries):
            raise ValueError(
                f"model {type(self._model).__name__} has no floating-point parameters to average"
            )
        averaged = [e for e in entries if e.policy == "average"]
        if not averaged:
            raise ValueError(
                "no parameter to average: every floating-point parameter is frozen "
                "(requires_grad=False); pass frozen='average' to average them anyway"
            )
        by_key: dict[tuple, list[_Entry]] = {}
        for e in averaged:
            src = e.source  # a DTensor's local shard: each rank averages only its shards
            avg_dtype = (
                src.dtype if self.dtype is None else torch.promote_types(src.dtype, self.dtype)
            )
            by_key.setdefault((src.device, src.dtype, avg_dtype), []).append(e)
        self._entries = entries
        self._averaged = [e for group in by_key.values() for e in group]
        self._groups = [
            K.FlatGroup([e.source for e in group], self.num_averages, key[2])
            for key, group in by_key.items()
        ]
        self._names = [e.name for e in self._averaged]
        self._where: dict[int, tuple[K.FlatGroup, int]] = {}
        for g, group in zip(self._groups, by_key.values()):
            for i, e in enumerate(group):
                self._where[id(e.tensor)] = (g, i)
        self._policy_by_id = {id(e.tensor): e.policy for e in entries}
        # Binding checks run in C through map(): no Python-level loop over parameters. The
        # registered object is checked by identity; the storage by data_ptr, of the tensor
        # itself or, for a DTensor, of its local shard.
        self._live = [e.tensor for e in self._averaged]
        self._owners = [e.owner for e in self._averaged]
        self._keys = [e.key for e in self._averaged]
        self._live_plain = [e.tensor for e in self._averaged if not e.sharded]
        self._ptrs = list(map(_data_ptr, self._live_plain))
        self._live_dt = [e.tensor for e in self._averaged if e.sharded]
        self._ptrs_dt = list(map(_data_ptr, map(_local_tensor, self._live_dt)))
        self._fsdp_modules = _dist.fsdp_modules(self._model) if self._live_dt else []
        # Per group: last host weights, their (2, K) device copy, and for K > 1 the cache-sized
        # blocks of storage and sources with matching weight views.
        self._weight_cache = [self._make_weight_views(g) for g in self._groups]

    def _make_weight_views(
        self, g: K.FlatGroup
    ) -> tuple[list[float], Tensor, list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        buf = torch.zeros((2, g.k), dtype=g.dtype, device=g.flat.device)
        if g.k == 1:
            return ([math.nan], buf, [], [], [], [])
        blocks, sources = g.chunks()
        wviews, keepviews = g.weight_views(buf[0], blocks), g.weight_views(buf[1], blocks)
        return ([math.nan] * g.k, buf, wviews, keepviews, blocks, sources)

    def _check_binding(self) -> None:
        if (
            list(map(_data_ptr, self._live_plain)) == self._ptrs
            and list(map(_data_ptr, map(_local_tensor, self._live_dt))) == self._ptrs_dt
            and all(map(operator.is_, map(dict.get, self._owners, self._keys), self._live))
        ):
            return
        self._reshard_fsdp()  # FSDP2 may have its unsharded parameters registered
        dtensor = _dist.dtensor_type()
        plain_ptrs, dt_ptrs = iter(self._ptrs), iter(self._ptrs_dt)
        fix = (
            "create the averager after moving, converting or loading the model "
            "(model.to(...), load_state_dict(assign=True)), then load its state_dict if resuming"
        )
        for e in self._averaged:
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
                if _same_layout(local, e.source):
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

    def _rebind_source(self, e: _Entry, local: Tensor) -> None:
        """Point the kernels at a DTensor's new local shard (same layout; off the hot path)."""
        g, i = self._where[id(e.tensor)]
        e.source = g.tensors[i] = local.detach()
        if g.same_dtype:
            g.int_sources[i] = e.source.view(g.int_sources[i].dtype)
        gi = next(j for j, h in enumerate(self._groups) if h is g)
        self._weight_cache[gi] = self._make_weight_views(g)
        self._ptrs_dt = list(map(_data_ptr, map(_local_tensor, self._live_dt)))

    def _reshard_fsdp(self) -> None:
        """Register FSDP2's sharded parameters where it holds unsharded ones (no-op otherwise).

        The root module keeps its unsharded parameters after a forward without backward. The
        averager reads and writes the sharded parameters (which the optimizer updates); after
        ``reshard()`` the next forward all-gathers them, so it sees what the averager wrote.
        """
        for m in self._fsdp_modules:
            m.reshard()

    def _check_not_swapped(self, what: str) -> None:
        if self._swapped_index is not None:
            raise RuntimeError(
                f"{what}() called inside swapped(): the model holds the averaged weights there; "
                "call it after the with-block ends"
            )

    # ------------------------------------------------------------------ per-step path
    def _lerp_weights(self) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self) -> None:
        """Record one optimizer step; average when it is due (every ``update_every`` steps).

        Until ``start_step`` optimizer steps have been seen, the averages follow the model
        exactly. With ``switch_every`` set, the average is copied into the model every
        ``switch_every`` steps after averaging.
        """
        self._check_binding()
        self._check_not_swapped("update")
        self.step += 1
        if self.step <= self.start_step:
            for g in self._groups:
                K.copy_(g.views[0], g.tensors)
                if g.k > 1:
                    g.flat[1:].copy_(g.flat[0])
            return
        if (self.step - self.start_step) % self.update_every:
            return
        weights = self._lerp_weights()
        for g, cache in zip(self._groups, self._weight_cache):
            if g.k == 1:
                K.lerp_(g.views[0], g.tensors, weights[0])
                continue
            host, buf, wviews, keepviews, blocks, sources = cache
            if host != weights:
                # Only changes during warm-up; afterwards no host-to-device copy per step.
                host_w = torch.tensor([weights, [1.0 - w for w in weights]], dtype=buf.dtype)
                if buf.is_cuda:  # pinned + non_blocking: no host-device sync on this copy
                    host_w = host_w.pin_memory()
                buf.copy_(host_w, non_blocking=buf.is_cuda)
                cache[0][:] = weights
            K.multi_lerp_(blocks, sources, wviews, keepviews)
        self.n_updates += 1
        if self.switch_every is not None and self.step % self.switch_every == 0:
            self.switch()

    # ------------------------------------------------------------------ switch and swap
    def switch(self, index: int = 0, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Switch EMA: copy average ``index`` into the model in place; the average is unchanged.

        With ``optimizer``, the optimizer state (momentum, Adam moments, step) of the averaged
        parameters is cleared, so the optimizer restarts from the switched weights.
        """
        self._check_binding()
        self._check_not_swapped("switch")
        index = _check_index(index, self.num_averages)
        if optimizer is not None and not isinstance(getattr(optimizer, "state", None), Mapping):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        for g in self._groups:
            K.copy_(g.tensors, g.views[index])
        if optimizer is not None:
            for e in self._averaged:
                if e.is_param:
                    optimizer.state.pop(e.tensor, None)

    @contextmanager
    def swapped(self, index: int = 0) -> Iterator[nn.Module]:
        """Exchange the model's weights with average ``index`` for the ``with`` block, then restore.

        Where average and model share a dtype the exchange is exact and in place, with no
        temporary memory. Where the average is wider (float32 average of a bf16 model), the
        model's own weights are kept in one flat backup per group while the block runs.
        Restoring happens also when the block raises. Yields the (unwrapped) model.
        """
        self._check_binding()
        self._check_not_swapped("swapped")
        index = _check_index(index, self.num_averages)
        backups = []
        for g in self._groups:
            if g.same_dtype:
                K.swap_(g.int_sources, g.int_views[index])
                backups.append(None)
            else:
                flat = torch.empty(g.numel, dtype=g.source_dtype, device=g.flat.device)
                views = [K._dense_view(flat, t, o) for t, o in zip(g.tensors, g.offsets)]
                K.copy_(views, g.tensors)
                K.copy_(g.tensors, g.views[index])
                backups.append(views)
        self._swapped_index = index
        try:
            yield self._model
        finally:
            # A forward inside the block may leave FSDP2 holding unsharded *averaged* weights.
            self._reshard_fsdp()
            for g, views in zip(self._groups, backups):
                if views is None:
                    K.swap_(g.int_sources, g.int_views[index])
                else:
                    K.copy_(g.tensors, views)
            self._swapped_index = None

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def averaged_state_dict(self, index: int = 0) -> dict[str, Tensor]:
        """The model's state dict with average ``index`` in place of the averaged tensors.

        Keys are the unwrapped model's keys (no ``module.`` / ``_orig_mod.``), values are in
        the model's dtypes; ``copy`` tensors are the model's current values, ``skip`` buffers
        are omitted (load with ``strict=False`` then). Load it into a plain model with
        ``model.load_state_dict(ema.averaged_state_dict())``. For a sharded model (FSDP2) the
        averaged tensors are DTensors placed like the parameters (this rank's shards, no
        gather); :func:`switchema.distributed.full_averaged_state_dict` gathers a plain one.
        """
        self._check_binding()
        self._check_not_swapped("averaged_state_dict")
        index = _check_index(index, self.num_averages)
        dtensor = _dist.dtensor_type()
        out: dict[str, Tensor] = {}
        for name, t in self._model.state_dict(keep_vars=True).items():
            policy = self._policy_by_id.get(id(t), "copy")
            if policy == "skip":
                continue
            where = self._where.get(id(t))
            if where is None:
                out[_clean_name(name)] = t.detach().clone()
            else:
                g, i = where
                avg = g.views[index][i].to(t.dtype, copy=True)
                if dtensor is not None and isinstance(t, dtensor):
                    avg = _dist.like_param(avg, t)  # the local shard, placed like the parameter
                out[_clean_name(name)] = avg
        return out

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict[str, Any]:
        return {
            "update_every": self.update_every,
            "start_step": self.start_step,
            "switch_every": self.switch_every,
            "dtype": None if self.dtype is None else str(self.dtype).removeprefix("torch."),
            "buffers": self.buffers,
            "frozen": self.frozen,
        }

    def _load_config(self, config: Mapping[str, Any]) -> None:
        self.update_every = config["update_every"]
        self.start_step = config["start_step"]
        self.switch_every = config["switch_every"]
        self.dtype = None if config["dtype"] is None else getattr(torch, config["dtype"])
        self.buffers = config["buffers"]
        self.frozen = config["frozen"]

    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """Averages, configuration and counters; plain data and tensors, no callables.

        ``averages[name]`` holds the K averages of a tensor, shape ``(K, *shape)``; for a
        DTensor parameter (FSDP2) it is a DTensor of that global shape on the parameter's mesh,
        so ``torch.distributed.checkpoint`` saves each rank's shard and reshards on load.
        """
        self._check_not_swapped("state_dict")
        averages = {}
        for e in self._averaged:
            g, i = self._where[id(e.tensor)]
            if e.sharded:  # (K, *shape) DTensor on the parameter's mesh: DCP reshards it
                local = g.kviews[i].clone(memory_format=torch.contiguous_format)
                averages[e.name] = _dist.stacked_like_param(local, e.tensor, e.name)
            else:
                averages[e.name] = g.kviews[i].clone()
        return {
            "format": _STATE_FORMAT,
            "kind": self.kind,
            "config": self._config(),
            "step": self.step,
            "n_updates": self.n_updates,
            "names": list(self._names),
            "averages": averages,
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; fails naming the first tensor that does not match.

        Sharded and plain states load into sharded and plain averagers alike: a sharded
        averager takes its shards (from a full tensor without communication, from a DTensor
        placed otherwise by redistributing it), a plain one gathers a DTensor state. All ranks
        of a sharded averager must call it.
        """
        self._check_not_swapped("load_state_dict")
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not a switchema averager state (format {_STATE_FORMAT} expected), got keys "
                f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}"
            )
        if state.get("kind") != self.kind:
            raise ValueError(
                f"state was saved by a {state.get('kind')!r} averager, loading into {self.kind!r}"
            )
        names, averages = list(state["names"]), state["averages"]
        for pos, (mine, theirs) in enumerate(zip(self._names, names)):
            if mine != theirs:
                raise ValueError(
                    f"averaged tensor #{pos} is {mine!r} in this model but {theirs!r} in the state"
                )
        if len(names) != len(self._names):
            longer, which = (
                (names, "state") if len(names) > len(self._names) else (self._names, "model")
            )
            raise ValueError(
                f"the {which} has {len(longer) - min(len(names), len(self._names))} more averaged tensor(s) "
                f"than the other, first {longer[min(len(names), len(self._names))]!r} "
                f"({len(self._names)} in this model, {len(names)} in the state)"
            )
        old_k = self.num_averages
        self._load_config(state["config"])
        if self.num_averages != old_k:
            self._bind()
        dtensor = _dist.dtensor_type()
        for e in self._averaged:
            saved = averages[e.name]
            g, i = self._where[id(e.tensor)]
            expected = (self.num_averages, *e.tensor.shape)  # global shape when sharded
            if tuple(saved.shape) != expected:
                raise ValueError(
                    f"shape mismatch for {e.name!r}: state has {tuple(saved.shape)}, "
                    f"this averager expects {expected}"
                )
            if e.sharded:  # this rank's shard, wherever the state was saved
                saved = _dist.local_stack(saved, e.tensor, e.name)
            elif dtensor is not None and isinstance(saved, dtensor):
                saved = saved.full_tensor()  # a sharded state into a plain model: gather
            g.kviews[i].copy_(saved)
        self.step = int(state["step"])
        self.n_updates = int(state["n_updates"])

    @property
    def nbytes(self) -> int:
        """Bytes of average storage held by this process (the local shards' under FSDP2)."""
        return sum(g.flat.numel() * g.flat.element_size() for g in self._groups)

    def __repr__(self) -> str:
        n = sum(g.numel for g in self._groups)
        return (
            f"{type(self).__name__}({len(self._names)} tensors, {n} elements x {self.num_averages}, "
            f"{len(self._groups)} group(s), step={self.step}, n_updates={self.n_updates})"
        )


def _resolve_decays(decay: Any, half_life: Any, update_every: int) -> tuple[float, ...]:
    if decay is not None and half_life is not None:
        raise ValueError(
            f"give decay or half_life, not both (got decay={decay!r}, half_life={half_life!r})"
        )
    if half_life is not None:
        values = (
            half_life
            if isinstance(half_life, Sequence) and not isinstance(half_life, str)
            else [half_life]
        )
        decays = tuple(half_life_to_decay(h, update_every) for h in values)
    else:
        if decay is None:
            decay = 0.999
        values = decay if isinstance(decay, Sequence) and not isinstance(decay, str) else [decay]
        decays = tuple(_check_decay(d) for d in values)
    if not decays:
        raise ValueError(
            "decay must be a float or a non-empty sequence of floats, got an empty sequence"
        )
    return decays


class EMA(WeightAverager):
    r"""Exponential moving average of a model's weights, with Switch EMA.

    For each decay ``d`` (the weight kept by the old average) and averaging update ``t``::

        avg_0 = x_0                                 (the weights at construction)
        avg_{t+1} = d_t * avg_t + (1 - d_t) * x     d_t = warmup(d, t)

    ``x`` are the model's weights when :meth:`update` averages (every ``update_every``
    optimizer steps, after ``start_step``). With several decays, K averages are kept and
    updated together, reading the weights once.

    Args:
        model: the model being trained (wrapped in DDP or ``torch.compile`` or not).
        decay: a float in [0, 1) or a sequence of them; default 0.999.
        half_life: instead of ``decay``: optimizer steps after which a weight's influence on the
            average halves (``decay = 0.5 ** (update_every / half_life)``).
        warmup: ``None``, ``"ema_paper"`` (``min(d, (1+t)/(10+t))``), ``"power"`` (timm
            style), ``"linear"`` (official SEMA code) or a :class:`~switchema.schedules.DecaySchedule`.
        update_every: average every N optimizer steps.
        start_step: until this many optimizer steps, the average copies the model.
        switch_every: also copy the average into the model every N optimizer steps.
        dtype: the averages' minimum precision (float32 by default; ``None``: the model's dtype).
        buffers: buffer policy, ``"copy"``, ``"average"``, ``"skip"`` or ``{pattern: policy}``.
        frozen: ``"copy"`` (frozen parameters are taken from the model) or ``"average"``.

    Example::

        >>> model = torch.nn.Linear(2, 1)
        >>> ema = EMA(model, decay=(0.9, 0.99))
        >>> _ = model.weight.data.add_(1.0); ema.update()
        >>> ema.averaged_state_dict(0)["weight"].sub(model.weight).abs().max() > 0
        tensor(True)
    """

    kind = "ema"

    def __init__(
        self,
        model: nn.Module,
        decay: float | Sequence[float] | None = None,
        *,
        half_life: float | Sequence[float] | None = None,
        warmup: DecaySchedule | str | None = None,
        update_every: int = 1,
        start_step: int = 0,
        switch_every: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        buffers: str | Mapping[str, str] = "copy",
        frozen: str = "copy",
    ) -> None:
        update_every = _check_positive_int(update_every, "update_every")
        self.decay = _resolve_decays(decay, half_life, update_every)
        self.warmup = resolve_schedule(warmup)
        super().__init__(
            model,
            num_averages=len(self.decay),
            update_every=update_every,
            start_step=start_step,
            switch_every=switch_every,
            dtype=dtype,
            buffers=buffers,
            frozen=frozen,
        )

    @property
    def current_decays(self) -> tuple[float, ...]:
        """The decays the next averaging update will use (after warm-up)."""
        return tuple(self.warmup(d, self.n_updates) for d in self.decay)

    def _lerp_weights(self) -> list[float]:
        return [1.0 - d for d in self.current_decays]

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "decay": list(self.decay), "warmup": self.warmup.to_dict()}

    def _load_config(self, config: Mapping[str, Any]) -> None:
        super()._load_config(config)
        self.decay = tuple(float(d) for d in config["decay"])
        self.warmup = schedule_from_dict(config["warmup"])
        self.num_averages = len(self.decay)


class SWA(WeightAverager):
    r"""Stochastic weight averaging: the uniform average of the weights from ``start_step`` on.

    ``avg_{n+1} = avg_n + (x - avg_n) / (n + 1)``, with ``n = n_averaged`` models averaged so
    far; the first averaged model replaces the average. Before ``start_step`` the average
    copies the model. Remember to :func:`~switchema.recompute_bn` for models with BatchNorm.

    Example::

        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> swa = SWA(model)
        >>> for v in (1.0, 2.0, 6.0):
        ...     _ = model.weight.data.fill_(v); swa.update()
        >>> swa.averaged_state_dict()["weight"].item(), swa.n_averaged
        (3.0, 3)
    """

    kind = "swa"

    def __init__(
        self,
        model: nn.Module,
        *,
        start_step: int = 0,
        update_every: int = 1,
        switch_every: int | None = None,
        dtype: torch.dtype | None = torch.float32,
        buffers: str | Mapping[str, str] = "copy",
        frozen: str = "copy",
    ) -> None:
        super().__init__(
            model,
            num_averages=1,
            update_every=update_every,
            start_step=start_step,
            switch_every=switch_every,
            dtype=dtype,
            buffers=buffers,
            frozen=frozen,
        )

    @property
    def n_averaged(self) -> int:
        """Number of models in the average."""
        return self.n_updates

    def _lerp_weights(self) -> list[float]:
        return [1.0 / (self.n_updates + 1)]
