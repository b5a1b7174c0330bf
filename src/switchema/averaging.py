"""Weight averagers: EMA (with Switch EMA) and SWA, for any ``nn.Module``.

This module is longer than the project's usual 500 lines because :class:`WeightAverager` is one
object whose parts share invariants (binding, storage, the step clock, views, checkpoints);
the tensor kernels, binding rules, DTensor helpers and module views live in their own modules.

The averager holds *only* the averages: it never ``deepcopy``s the model. Averages live in
one contiguous buffer per (device, dtype) group (see :mod:`switchema._kernels`), in float32 by
default even for a bf16 / fp16 model, so small updates do not round away.

Usage in a training loop (Switch EMA; plain EMA is the same without ``switch()``)::

    >>> import torch
    >>> from torch import nn
    >>> from switchema import EMA
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 2)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> loader = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(5)]
    >>> ema = EMA(model, decay=0.9)
    >>> for epoch in range(2):
    ...     for x, y in loader:
    ...         nn.functional.mse_loss(model(x), y).backward()
    ...         optimizer.step(); optimizer.zero_grad()
    ...         ema.update()                  # after every optimizer step
    ...     ema.switch()                      # Switch EMA: copy the average into the model
    ...     with ema.swapped():               # evaluate the averaged weights, then restore
    ...         val_loss = nn.functional.mse_loss(model(x), y)
    >>> ema.step, torch.equal(model.weight, ema.averaged_state_dict()["weight"])
    (10, True)

Parameters are matched by *name* (wrappers' ``module.`` / ``_orig_mod.`` prefixes removed),
tied parameters are averaged once, frozen parameters and buffers follow explicit policies
(:mod:`switchema.policies`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from . import _kernels as K
from ._binding import Entry, check_model, clean_name, collect_entries, same_layout, unwrap_model
from ._checks import check_int, check_real, is_int
from ._dtensor import dtensor_type, fsdp_modules, like_param, local_stack, stacked_like_param
from ._views import build_module_view
from .batchnorm import batchnorm_layers, recompute_bn
from .policies import check_policy_spec
from .schedules import (
    DecaySchedule,
    check_decay,
    half_life_to_decay,
    resolve_schedule,
    schedule_from_dict,
)

__all__ = ["WeightAverager", "EMA", "SWA", "unwrap_model"]

_STATE_FORMAT = 1
_data_ptr = Tensor.data_ptr
_local_tensor = operator.attrgetter("_local_tensor")  # a DTensor's local shard


def _check_index(index: Any, k: int) -> int:
    if not is_int(index):
        raise TypeError(f"index must be an int in [0, {k}), got {index!r}")
    if not -k <= index < k:
        raise ValueError(f"index {index} out of range: this averager keeps {k} average(s)")
    return index % k


def _crossed(prev: int, new: int, every: int, offset: int) -> bool:
    """Whether a multiple of ``every`` steps after ``offset`` lies in ``(prev, new]``."""
    b = new - offset
    return b > 0 and b // every > max(prev - offset, 0) // every


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


class WeightAverager:
    """Shared machinery of :class:`EMA` and :class:`SWA`: binding, storage, switch, views, state.

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
        params: str | Mapping[str, str] | None = None,
        frozen: str = "copy",
        flat_params: bool = False,
    ) -> None:
        self._model = check_model(model)
        self.update_every = check_int(update_every, "update_every", minimum=1)
        self.start_step = check_int(start_step, "start_step", minimum=0)
        self.switch_every = check_int(switch_every, "switch_every", minimum=1, allow_none=True)
        if dtype is not None and not (
            isinstance(dtype, torch.dtype) and (dtype.is_floating_point or dtype.is_complex)
        ):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        self.dtype = dtype
        self.buffers = check_policy_spec(buffers, "buffers")
        self.params = None if params is None else check_policy_spec(params, "params")
        if frozen not in ("copy", "average", "skip"):
            raise ValueError(f"frozen must be 'copy', 'average' or 'skip', got {frozen!r}")
        self.frozen = frozen
        if not isinstance(flat_params, bool):
            raise TypeError(f"flat_params must be a bool, got {flat_params!r}")
        self.flat_params = flat_params
        self.num_averages = num_averages
        self.step = 0  # optimizer steps seen (calls to update(), or the step passed to it)
        self.n_updates = 0  # averaging updates performed
        self._version = 0  # bumped whenever the averages or their BatchNorm statistics change
        self._bn_stats: dict[int, dict[str, Tensor]] = {}  # per average: recomputed statistics
        self._views: dict[int, dict[str, Any]] = {}  # per average: tensors the views use
        self._swapped_index: int | None = None
        self._bind()

    # ------------------------------------------------------------------ public surface
    @property
    def model(self) -> nn.Module:
        """The (unwrapped) model this averager is bound to."""
        return self._model

    @property
    def names(self) -> list[str]:
        """Names of the averaged tensors, in storage order."""
        return list(self._names)

    @property
    def is_sharded(self) -> bool:
        """True when some averaged tensor is a ``DTensor`` (FSDP2 / tensor parallel)."""
        return bool(self._live_dt)

    @property
    def version(self) -> int:
        """A counter that changes whenever the averages (or their BatchNorm statistics) change."""
        return self._version

    def storage(self) -> list[dict[str, Any]]:
        """The averages as stored: per (device, dtype) group, its ``(K, N)`` buffer and layout.

        Each group is ``{"flat": Tensor (K, N), "tensors": [{"name", "shape", "stride",
        "offset", "full_shape"}]}``: tensor ``name``'s average ``k`` is
        ``flat[k].as_strided(shape, stride, offset)`` (its local shard under FSDP2, whose
        global shape is ``full_shape``). The buffers are the live storage: read, do not write.
        """
        slots: dict[int, list[dict[str, Any]]] = {}
        for e in self._averaged:
            g, i = self._where[id(e.tensor)]
            src = g.tensors[i]
            slots.setdefault(id(g), [None] * len(g.tensors))[i] = {
                "name": e.name,
                "shape": list(src.shape),
                "stride": list(src.stride()),
                "offset": g.offsets[i],
                "full_shape": list(e.tensor.shape),
            }
        return [{"flat": g.flat, "tensors": slots[id(g)]} for g in self._groups]

    @property
    def nbytes(self) -> int:
        """Bytes of average storage held by this process (the local shards' under FSDP2)."""
        return sum(g.flat.numel() * g.flat.element_size() for g in self._groups)

    # ------------------------------------------------------------------ binding
    def _plan(self, entries: list[Entry], dtype: torch.dtype | None) -> dict[tuple, list[Entry]]:
        """The averaged entries grouped by (device, source dtype, average dtype)."""
        by_key: dict[tuple, list[Entry]] = {}
        for e in entries:
            if e.policy != "average":
                continue
            src = e.source  # a DTensor's local shard: each rank averages only its shards
            avg_dtype = src.dtype if dtype is None else torch.promote_types(src.dtype, dtype)
            by_key.setdefault((src.device, src.dtype, avg_dtype), []).append(e)
        return by_key

    def _collect(self, buffers: Any, params: Any, frozen: str) -> list[Entry]:
        return collect_entries(self._model, buffers=buffers, params=params, frozen=frozen)

    def _bind(self) -> None:
        entries = self._collect(self.buffers, self.params, self.frozen)
        if not any(e.is_param and e.tensor.is_floating_point() for e in entries):
            raise ValueError(
                f"model {type(self._model).__name__} has no floating-point parameters to average"
            )
        by_key = self._plan(entries, self.dtype)
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
                    "tensor (the model was created or loaded under torch.inference_mode()), which "
                    "can never be written outside inference mode; build the model outside "
                    "torch.inference_mode() (torch.no_grad() is fine)"
                )
        self._entries = entries
        self._averaged = [e for group in by_key.values() for e in group]
        # Storage is built outside inference mode, so an averager made under
        # torch.inference_mode() still works after the block.
        with torch.inference_mode(False):
            self._groups = [
                K.FlatGroup([e.source for e in group], self.num_averages, key[2])
                for key, group in by_key.items()
            ]
            if self.flat_params:
                self._flatten_params(list(by_key.values()))
        self._names = [e.name for e in self._averaged]
        self._where: dict[int, tuple[K.FlatGroup, int]] = {}
        for g, group in zip(self._groups, by_key.values()):
            for i, e in enumerate(group):
                self._where[id(e.tensor)] = (g, i)
        self._policy_by_id = {id(e.tensor): e.policy for e in entries}
        # Buffers the averager does not store: swapped() backs them up and restores them.
        self._other_buffers = [e for e in entries if not e.is_param and e.policy != "average"]
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
        self._fsdp_modules = fsdp_modules(self._model) if self._live_dt else []
        # Per group: last host weights, their (2, K) device copy, and for K > 1 the cache-sized
        # blocks of storage and sources with matching weight views.
        self._weight_cache = [self._make_weight_views(g) for g in self._groups]
        self._views = {}

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
        for g, group in zip(self._groups, groups):
            for e, view in zip(group, g.flatten_sources()):
                e.tensor.data = view

    def _make_weight_views(self, g: K.FlatGroup) -> list[Any]:
        buf = torch.zeros((2, g.k), dtype=g.dtype, device=g.flat.device)
        if g.k == 1:
            return [[math.nan], buf, [], [], [], []]
        blocks, sources = g.chunks()
        wviews, keepviews = g.weight_views(buf[0], blocks), g.weight_views(buf[1], blocks)
        return [[math.nan] * g.k, buf, wviews, keepviews, blocks, sources]

    def _check_binding(self) -> None:
        if (
            list(map(_data_ptr, self._live_plain)) == self._ptrs
            and list(map(_data_ptr, map(_local_tensor, self._live_dt))) == self._ptrs_dt
            and all(map(operator.is_, map(dict.get, self._owners, self._keys), self._live))
        ):
            return
        self._reshard_fsdp()  # FSDP2 may have its unsharded parameters registered
        dtensor = dtensor_type()
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
        g, i = self._where[id(e.tensor)]
        e.source = g.tensors[i] = local.detach()
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

    def _changed(self) -> None:
        """The averages changed: recomputed BatchNorm statistics no longer belong to them."""
        self._version += 1
        if self._bn_stats:
            self._bn_stats.clear()

    # ------------------------------------------------------------------ per-step path
    def _lerp_weights(self) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, step: int | None = None) -> None:
        """Record an optimizer step; average when due; switch when due.

        Call it after every optimizer step. ``step``, if given, is the number of optimizer
        steps done so far, counting the one just taken (Lightning's ``trainer.global_step``
        after the step, timm's ``num_updates``); without it the averager counts calls. The
        clock decides everything:

        * until ``start_step`` steps the averages copy the model;
        * after it, the averages are updated when ``step - start_step`` reaches a multiple of
          ``update_every`` (if a passed step jumps over several multiples, one update is made);
        * warm-ups count the averaging updates due by the clock, so a fresh averager given
          ``step=5000`` is past a warm-up of 1000 updates;
        * with ``switch_every``, the average is copied into the model whenever ``step``
          reaches a multiple of ``switch_every``, whether or not that step averages.

        A ``step`` equal to the last one is ignored (several calls per optimizer step, e.g.
        once per micro-batch under gradient accumulation); a smaller one is an error.
        """
        self._check_binding()
        self._check_not_swapped("update")
        prev = self.step
        if step is None:
            new = prev + 1
        else:
            new = check_int(step, "step", minimum=0)
            if new < prev:
                raise ValueError(
                    f"step went backwards: got step={new} after step={prev}; pass the number of "
                    "optimizer steps done so far, and load the averager's state_dict when resuming"
                )
            if new == prev:
                return
        self.step = new
        if new <= self.start_step:
            for g in self._groups:
                avg, src = g.row_pairs(0)
                K.copy_(avg, src)
                if g.k > 1:
                    g.flat[1:].copy_(g.flat[0])
            self._changed()
            return
        if _crossed(prev, new, self.update_every, self.start_step):
            self._average(self._lerp_weights())
            self.n_updates += 1
            self._changed()
        if self.switch_every is not None and _crossed(prev, new, self.switch_every, 0):
            self.switch()

    def _average(self, weights: list[float]) -> None:
        for g, cache in zip(self._groups, self._weight_cache):
            if g.k == 1:
                avg, src = g.row_pairs(0)
                K.lerp_(avg, src, weights[0])
                continue
            host, buf, wviews, keepviews, blocks, sources = cache
            if host != weights:
                # Only changes during warm-up; afterwards no host-to-device copy per step.
                host_w = torch.tensor([weights, [1.0 - w for w in weights]], dtype=buf.dtype)
                if buf.is_cuda:  # pinned + non_blocking: no host-device sync on this copy
                    host_w = host_w.pin_memory()
                buf.copy_(host_w, non_blocking=buf.is_cuda)
                cache[0] = list(weights)
            K.multi_lerp_(blocks, sources, wviews, keepviews)

    # ------------------------------------------------------------------ switch and swap
    def switch(
        self,
        index: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        weight: float = 1.0,
    ) -> None:
        """Switch EMA: move the model to average ``index``; the average is unchanged.

        ``weight=1`` (the default) copies the average into the model in place. A partial switch
        ``0 < weight < 1`` moves the model part of the way, ``x <- x + weight * (avg - x)``, in
        the average's precision and rounded once into the model (Lookahead's slow-weight step;
        ema-pytorch's ``update_model_with_ema``). With ``optimizer``, the optimizer state
        (momentum, Adam moments, step) of the averaged parameters is cleared, so it restarts
        from there. A full switch also copies the BatchNorm statistics :meth:`recompute_bn` kept
        for this average, if any: they belong to the weights the model now holds.
        """
        self._check_binding()
        self._check_not_swapped("switch")
        index = _check_index(index, self.num_averages)
        weight = check_real(weight, "weight", minimum=0.0, maximum=1.0)
        if optimizer is not None and not isinstance(getattr(optimizer, "state", None), Mapping):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        for g in self._groups:
            avg, src = g.row_pairs(index)
            if weight == 1.0:
                K.copy_(src, avg)
            else:
                K.partial_switch_(src, avg, weight)
        if weight == 1.0:
            self._load_bn_stats(index)
        if optimizer is not None:
            for e in self._averaged:
                if e.is_param:
                    optimizer.state.pop(e.tensor, None)

    @contextmanager
    def swapped(self, index: int = 0) -> Iterator[nn.Module]:
        """The model holds average ``index`` inside the ``with`` block; afterwards, its own again.

        Inside the block the model's averaged tensors hold the average (cast to their dtype),
        and its BatchNorm buffers hold the statistics :meth:`recompute_bn` kept for this
        average, if any. When the block ends, also when it raises, every parameter and
        buffer of the model is restored bit for bit, whatever the block did: a forward in train
        mode, :func:`~switchema.recompute_bn`, even an optimizer step. The average is never
        changed by the block, for every dtype: what the block writes is discarded.

        Costs one copy of the averaged tensors (in the model's dtype) and of the buffers while
        the block runs. To run the averaged weights without touching the model, use
        :meth:`averaged_model` or :meth:`forward`. Yields the (unwrapped) model.
        """
        self._check_binding()
        self._check_not_swapped("swapped")
        index = _check_index(index, self.num_averages)
        backups = []
        with torch.no_grad():
            for g in self._groups:
                if g.src_flat is not None:
                    backups.append(([g.src_flat], [g.src_flat.clone()]))
                else:
                    flat = torch.empty(g.numel, dtype=g.source_dtype, device=g.flat.device)
                    saved = [K.dense_view(flat, t, o) for t, o in zip(g.tensors, g.offsets)]
                    K.copy_(saved, g.tensors)
                    backups.append((g.tensors, saved))
                avg, src = g.row_pairs(index)
                K.copy_(src, avg)
            buffers = [e.source for e in self._other_buffers]
            backups.append((buffers, [b.clone() for b in buffers]))
            self._load_bn_stats(index)
        self._swapped_index = index
        try:
            yield self._model
        finally:
            # A forward inside the block may leave FSDP2 holding unsharded *averaged* weights.
            self._reshard_fsdp()
            with torch.no_grad():
                for live, saved in backups:
                    K.copy_(live, saved)
            self._swapped_index = None

    def _load_bn_stats(self, index: int) -> None:
        stats = self._bn_stats.get(index)
        if stats:
            by_name = {e.name: e.source for e in self._entries if not e.is_param}
            K.copy_([by_name[n] for n in stats], list(stats.values()))

    # ------------------------------------------------------------------ BatchNorm statistics
    def recompute_bn(
        self,
        batches: Iterable[Any],
        index: int | None = None,
        *,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        device: torch.device | str | None = None,
    ) -> int:
        """Recompute BatchNorm statistics for the averages and keep them with the averages.

        For average ``index`` (every average when ``None``) the model's weights are set to the
        average, the running statistics are re-estimated with one pass over ``batches`` (see
        :func:`switchema.recompute_bn`), and the result is kept by the averager: it is used by
        :meth:`swapped`, :meth:`averaged_state_dict`, :meth:`averaged_model` and
        :meth:`forward`, and saved in :meth:`state_dict`. The online model keeps its own
        statistics and weights. The next averaging update discards the kept statistics (they
        belong to the average as it was); recompute them when you evaluate again.

        ``batches`` must be re-iterable (a list, a ``DataLoader``) when several averages are
        recomputed. Returns the number of batches seen per average (0 without BatchNorm).

        Example::

            >>> _ = torch.manual_seed(0)
            >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
            >>> ema = EMA(model, decay=(0.9, 0.99))
            >>> loader = [torch.randn(16, 4) for _ in range(3)]
            >>> ema.recompute_bn(loader)
            3
            >>> sd = ema.averaged_state_dict(1)     # the average with its own statistics
            >>> bool((sd["1.running_mean"] != model[1].running_mean).any())
            True
        """
        self._check_not_swapped("recompute_bn")
        indices = (
            range(self.num_averages) if index is None else [_check_index(index, self.num_averages)]
        )
        if len(indices) > 1 and iter(batches) is batches:
            raise TypeError(
                "batches is a one-shot iterator, but every average needs its own pass: pass a "
                "list or a DataLoader, or one index"
            )
        layers = {id(m._buffers) for m in batchnorm_layers(self._model)}
        bn_entries = [e for e in self._entries if not e.is_param and id(e.owner) in layers]
        if not bn_entries:
            return 0
        n = 0
        for k in indices:
            with self.swapped(k) as model:
                n = recompute_bn(model, batches, forward=forward, device=device)
                self._bn_stats[k] = {e.name: e.source.detach().clone() for e in bn_entries}
        self._version += 1
        return n

    # ------------------------------------------------------------------ the average as a model
    def _view_state(self, index: int) -> dict[str, Any]:
        """The tensors the averaged-model views of ``index`` use, refreshed if stale.

        Parameters of a same-dtype group are views of the storage (no copy, always current);
        a wider average (float32 of a bf16 model) is cast into a cached copy, refreshed when the
        averages change. Buffers are private copies (a train-mode forward must not write into
        the online model's statistics or the averages), refreshed likewise.
        """
        state = self._views.get(index)
        if state is None:
            params, casts = {}, []
            for e in self._entries:
                if not e.is_param:
                    continue
                where = self._where.get(id(e.tensor))
                if where is None:
                    params[e.path] = e.tensor.detach()  # copy/skip policy: the model's own
                    continue
                g, i = where
                if g.same_dtype:
                    params[e.path] = g.views[index][i]
                else:
                    params[e.path] = torch.empty_like(e.tensor.detach())
                    casts.append((params[e.path], g.views[index][i]))
            buffers = {e.path: e.tensor.detach().clone() for e in self._entries if not e.is_param}
            state = {"params": params, "buffers": buffers, "casts": casts, "version": -1}
            state["module"] = None
            self._views[index] = state
        if state["version"] != self._version:
            with torch.no_grad():
                for dst, src in state["casts"]:
                    dst.copy_(src)
                values = self._averaged_values(index, None, params=False)
                for e in self._entries:
                    if not e.is_param and e.name in values:
                        state["buffers"][e.path].copy_(values[e.name])
            state["version"] = self._version
        return state

    def _check_viewable(self, what: str) -> None:
        self._check_binding()
        self._check_not_swapped(what)
        if self.is_sharded:
            raise ValueError(
                f"{what}() is not supported for a sharded (FSDP2) model; use swapped(), or "
                "switchema.distributed.full_averaged_state_dict() for a plain copy"
            )

    def averaged_model(self, index: int = 0) -> nn.Module:
        """Average ``index`` as an ``nn.Module`` that shares storage with the average.

        A structural copy of the model whose parameters *are* the averages (views into the
        averager's storage, ``requires_grad=False``): always current, no parameter memory of its
        own, no autograd graph into the average. Its buffers are its own (per the buffer
        policies and any :meth:`recompute_bn` statistics), so a train-mode forward never
        touches the online model. Use it as an EMA teacher (BYOL, DINO, mean teacher,
        distillation) while the online model trains, for evaluation, ``torch.compile``,
        ``state_dict()`` or export. The same module is returned for the same ``index``.

        For a wider average (float32 of a bf16 model) the parameters are a cached cast in the
        model's dtype, refreshed before a forward when the average has changed.

        Example::

            >>> _ = torch.manual_seed(0)
            >>> student = nn.Linear(3, 2)
            >>> ema = EMA(student, decay=0.9)
            >>> teacher = ema.averaged_model()
            >>> _ = student.weight.data.add_(1.0); ema.update()
            >>> torch.equal(teacher.weight, ema.averaged_state_dict()["weight"])
            True
        """
        self._check_viewable("averaged_model")
        index = _check_index(index, self.num_averages)
        state = self._view_state(index)
        if state["module"] is None:
            # Only copied tensors need refreshing; without any, no hook (compile- and
            # export-friendly).
            stale = state["casts"] or state["buffers"]
            refresh = _WeakRefresh(self, index) if stale else None
            state["module"] = build_module_view(
                self._model, state["params"], state["buffers"], refresh
            )
        return state["module"]

    def forward(self, *args: Any, index: int = 0, **kwargs: Any) -> Any:
        """Run the model with average ``index`` without swapping: ``model(*args, **kwargs)``.

        A functional call (``torch.func.functional_call``) on the online model with the
        averages in place of its averaged parameters and the averager's own buffers: zero
        copies for same-dtype groups, no autograd graph into the average, the online model's
        weights, buffers and gradients untouched. The teacher forward of an EMA teacher::

            >>> _ = torch.manual_seed(0)
            >>> student = nn.Linear(3, 2)
            >>> ema = EMA(student, decay=0.99)
            >>> x = torch.randn(4, 3)
            >>> target = ema.forward(x)                        # teacher, no graph
            >>> loss = (student(x) - target).pow(2).mean()     # student
            >>> loss.backward(); target.requires_grad, student.weight.grad is not None
            (False, True)
        """
        self._check_viewable("forward")
        index = _check_index(index, self.num_averages)
        state = self._view_state(index)
        tensors = {**state["params"], **state["buffers"]}
        return torch.func.functional_call(self._model, tensors, args, kwargs)

    # ------------------------------------------------------------------ export
    def averaged_state_dict(
        self, index: int = 0, *, dtype: torch.dtype | str | None = None
    ) -> dict[str, Tensor]:
        """The model's state dict with average ``index`` in place of the averaged tensors.

        Keys are the unwrapped model's keys (no ``module.`` / ``_orig_mod.``). ``dtype``:
        ``None`` (default) gives the model's dtypes; ``"average"`` the averaging precision
        (float32 of a bf16 model); a ``torch.dtype`` casts the averaged tensors to it. ``copy``
        tensors are the model's current values, ``skip`` tensors are omitted (load with
        ``strict=False`` then), and BatchNorm buffers hold the statistics
        :meth:`recompute_bn` kept for this average, if any. Load it into a plain model with
        ``model.load_state_dict(ema.averaged_state_dict())``. For a sharded model (FSDP2) the
        averaged tensors are DTensors placed like the parameters (this rank's shards, no
        gather); :func:`switchema.distributed.full_averaged_state_dict` gathers a plain one.
        """
        self._check_binding()
        self._check_not_swapped("averaged_state_dict")
        index = _check_index(index, self.num_averages)
        if not (dtype is None or dtype == "average" or isinstance(dtype, torch.dtype)):
            raise TypeError(f"dtype must be None, 'average' or a torch.dtype, got {dtype!r}")
        return self._averaged_values(index, dtype, params=True)

    @torch.no_grad()
    def _averaged_values(
        self, index: int, dtype: torch.dtype | str | None, params: bool
    ) -> dict[str, Tensor]:
        """Fresh tensors of the averaged state dict (its buffers only, unless ``params``)."""
        dt = dtensor_type()
        stats = self._bn_stats.get(index, {})
        out: dict[str, Tensor] = {}
        for name, t in self._model.state_dict(keep_vars=True).items():
            if self._policy_by_id.get(id(t), "copy") == "skip":
                continue
            if not params and isinstance(t, nn.Parameter):
                continue
            key = clean_name(name)
            where = self._where.get(id(t))
            if key in stats:
                out[key] = stats[key].clone()
            elif where is None:
                out[key] = t.detach().clone()
            else:
                g, i = where
                to = t.dtype if dtype is None else (g.dtype if dtype == "average" else dtype)
                avg = g.views[index][i].to(to, copy=True)
                if dt is not None and isinstance(t, dt):
                    avg = like_param(avg, t)  # the local shard, placed like the parameter
                out[key] = avg
        return out

    # ------------------------------------------------------------------ checkpoints
    def _config(self) -> dict[str, Any]:
        return {
            "update_every": self.update_every,
            "start_step": self.start_step,
            "switch_every": self.switch_every,
            "dtype": _dtype_name(self.dtype),
            "buffers": self.buffers,
            "params": self.params,
            "frozen": self.frozen,
        }

    def _load_config(self, config: Mapping[str, Any]) -> None:
        self.update_every = config["update_every"]
        self.start_step = config["start_step"]
        self.switch_every = config["switch_every"]
        self.dtype = _dtype_from_name(config["dtype"])
        self.buffers = config["buffers"]
        self.params = config.get("params")
        self.frozen = config["frozen"]

    @staticmethod
    def _num_averages(config: Mapping[str, Any]) -> int:
        return 1

    def _counters(self) -> dict[str, Any]:
        """Subclass counters that drive future updates (saved next to ``step``)."""
        return {}

    def _load_counters(self, state: Mapping[str, Any]) -> None:
        pass

    def _binding_of(self, config: Mapping[str, Any]) -> tuple:
        """What of a configuration decides the storage layout."""
        return (
            self._num_averages(config),
            config["dtype"],
            config["buffers"],
            config.get("params"),
            config["frozen"],
        )

    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """Averages, configuration, counters and kept BatchNorm statistics; no callables.

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
                averages[e.name] = stacked_like_param(local, e.tensor, e.name)
            else:
                averages[e.name] = g.kviews[i].clone()
        state = {
            "format": _STATE_FORMAT,
            "kind": self.kind,
            "config": self._config(),
            "step": self.step,
            "n_updates": self.n_updates,
            **self._counters(),
            "names": list(self._names),
            "averages": averages,
        }
        if self._bn_stats:
            state["bn_stats"] = {
                k: {n: t.clone() for n, t in v.items()} for k, v in self._bn_stats.items()
            }
        return state

    def _check_state(self, state: Any) -> list[Entry]:
        """Validate ``state`` against this model; the averaged entries it would bind."""
        if not isinstance(state, Mapping) or state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not a switchema averager state (format {_STATE_FORMAT} expected), got keys "
                f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}"
            )
        if state.get("kind") != self.kind:
            raise ValueError(
                f"state was saved by a {state.get('kind')!r} averager, loading into {self.kind!r}"
            )
        config = state["config"]
        if self._binding_of(config) == self._binding_of(self._config()):
            averaged = self._averaged
        else:  # the state keeps other dtypes or policies: bind as it did
            entries = self._collect(config["buffers"], config.get("params"), config["frozen"])
            plan = self._plan(entries, _dtype_from_name(config["dtype"]))
            averaged = [e for group in plan.values() for e in group]
        mine, names = [e.name for e in averaged], list(state["names"])
        for pos, (a, b) in enumerate(zip(mine, names)):
            if a != b:
                raise ValueError(
                    f"averaged tensor #{pos} is {a!r} in this model but {b!r} in the state"
                )
        if len(names) != len(mine):
            longer, which = (names, "state") if len(names) > len(mine) else (mine, "model")
            short = min(len(names), len(mine))
            raise ValueError(
                f"the {which} has {len(longer) - short} more averaged tensor(s) than the other, "
                f"first {longer[short]!r} ({len(mine)} in this model, {len(names)} in the state)"
            )
        k = self._num_averages(config)
        for e in averaged:
            saved = state["averages"][e.name]
            expected = (k, *e.tensor.shape)  # global shape when sharded
            if tuple(saved.shape) != expected:
                raise ValueError(
                    f"shape mismatch for {e.name!r}: state has {tuple(saved.shape)}, "
                    f"this averager expects {expected}"
                )
        buffer_names = {e.name for e in self._entries if not e.is_param}
        for stats in state.get("bn_stats", {}).values():
            unknown = sorted(set(stats) - buffer_names)
            if unknown:
                raise ValueError(
                    f"state keeps BatchNorm statistics for unknown buffer {unknown[0]!r}"
                )
        return averaged

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; fails naming the first tensor that does not match.

        Configuration and counters come from the state. Where the state was saved with another
        number of averages, averaging dtype or policy, the storage is rebuilt to match it, so
        the configuration and the storage always agree (a float64 state loads as float64).
        Nothing is changed when the state does not fit. Sharded and plain states load into
        sharded and plain averagers alike: a sharded averager takes its shards (from a full
        tensor without communication, from a DTensor placed otherwise by redistributing it), a
        plain one gathers a DTensor state. All ranks of a sharded averager must call it.
        """
        self._check_not_swapped("load_state_dict")
        self._check_state(state)
        rebind = self._binding_of(state["config"]) != self._binding_of(self._config())
        self._load_config(state["config"])
        if rebind:
            self._bind()
        dt = dtensor_type()
        for e in self._averaged:
            saved = state["averages"][e.name]
            g, i = self._where[id(e.tensor)]
            if e.sharded:  # this rank's shard, wherever the state was saved
                saved = local_stack(saved, e.tensor, e.name)
            elif dt is not None and isinstance(saved, dt):
                saved = saved.full_tensor()  # a sharded state into a plain model: gather
            g.kviews[i].copy_(saved)
        self.step = int(state["step"])
        self.n_updates = int(state["n_updates"])
        self._load_counters(state)
        self._version += 1
        self._bn_stats = {
            int(k): {n: t.detach().clone() for n, t in v.items()}
            for k, v in state.get("bn_stats", {}).items()
        }

    # ------------------------------------------------------------------ copies
    def _init_kwargs(self) -> dict[str, Any]:
        """Constructor keywords that rebuild this averager's layout (the rest is state)."""
        return {
            "dtype": self.dtype,
            "buffers": self.buffers,
            "params": self.params,
            "frozen": self.frozen,
            "flat_params": self.flat_params,
        }

    def __getstate__(self) -> dict[str, Any]:
        # The averager is bound to live tensors by identity and address, which a copy cannot
        # keep: a copy is rebuilt from its model and state_dict (as deepcopying a torch
        # AveragedModel copies the model it holds).
        if self.is_sharded:
            raise TypeError(
                "a sharded (FSDP2) averager cannot be pickled or deep-copied; save "
                "averager.state_dict() with torch.distributed.checkpoint instead"
            )
        self._check_not_swapped("__getstate__")
        return {"model": self._model, "init": self._init_kwargs(), "state": self.state_dict()}

    def __setstate__(self, d: Mapping[str, Any]) -> None:
        type(self).__init__(self, d["model"], **d["init"])
        self.load_state_dict(d["state"])

    def __repr__(self) -> str:
        n = sum(g.numel for g in self._groups)
        return (
            f"{type(self).__name__}({len(self._names)} tensors, {n} elements x {self.num_averages}, "
            f"{len(self._groups)} group(s), step={self.step}, n_updates={self.n_updates})"
        )


class _WeakRefresh:
    """Refreshes a view's copied tensors before a forward, without keeping the averager alive."""

    def __init__(self, averager: WeightAverager, index: int) -> None:
        import weakref

        self._ref = weakref.ref(averager)
        self._index = index

    def __call__(self) -> None:
        averager = self._ref()
        if averager is not None and self._index in averager._views:
            averager._view_state(self._index)


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
        decays = tuple(check_decay(d) for d in values)
    if not decays:
        raise ValueError(
            "decay must be a float or a non-empty sequence of floats, got an empty sequence"
        )
    return decays


class EMA(WeightAverager):
    r"""Exponential moving average of a model's weights, with Switch EMA.

    For each decay ``d`` (the weight kept by the old average, *per averaging update*) and
    averaging update ``t``::

        avg_0 = x_0                                 (the weights at construction)
        avg_{t+1} = d_t * avg_t + (1 - d_t) * x     d_t = warmup(d, t)

    ``x`` are the model's weights when :meth:`update` averages (every ``update_every``
    optimizer steps, after ``start_step``). With ``update_every=16`` and ``d = 0.968`` the
    average spans about ``16 / (1 - 0.968) = 500`` optimizer steps (the EMA paper's setting).
    With several decays, K averages are kept and updated together, reading the weights once.

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
        params: parameter policy by name, ``{pattern: policy}`` (or one policy for all);
            unmatched parameters are averaged when trainable and follow ``frozen`` otherwise.
        frozen: ``"copy"`` (frozen parameters are taken from the model), ``"average"`` or
            ``"skip"``.
        flat_params: make the model's averaged parameters views into one contiguous buffer per
            group (same parameter objects), so that ``update()``, ``switch()`` and
            ``swapped()`` are one flat operation per group.

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
        params: str | Mapping[str, str] | None = None,
        frozen: str = "copy",
        flat_params: bool = False,
    ) -> None:
        update_every = check_int(update_every, "update_every", minimum=1)
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
            params=params,
            frozen=frozen,
            flat_params=flat_params,
        )

    @property
    def current_decays(self) -> tuple[float, ...]:
        """The decays the next averaging update will use (after warm-up)."""
        t = max(self.step - self.start_step, 0) // self.update_every
        return tuple(self.warmup(d, t) for d in self.decay)

    def _lerp_weights(self) -> list[float]:
        # Called when `step` is due: the warm-up counts the averaging updates due by the clock.
        t = (self.step - self.start_step) // self.update_every - 1
        return [1.0 - self.warmup(d, t) for d in self.decay]

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "decay": list(self.decay), "warmup": self.warmup.to_dict()}

    def _load_config(self, config: Mapping[str, Any]) -> None:
        super()._load_config(config)
        self.decay = tuple(float(d) for d in config["decay"])
        self.warmup = schedule_from_dict(config["warmup"])
        self.num_averages = len(self.decay)

    @staticmethod
    def _num_averages(config: Mapping[str, Any]) -> int:
        return len(config["decay"])

    def _init_kwargs(self) -> dict[str, Any]:
        return {**super()._init_kwargs(), "decay": self.decay}


class SWA(WeightAverager):
    r"""Stochastic weight averaging: the uniform average of the weights from ``start_step`` on.

    ``avg_{n+1} = avg_n + (x - avg_n) / (n + 1)``, with ``n = n_averaged`` models averaged so
    far; the first averaged model replaces the average. Before ``start_step`` the average
    copies the model. Remember to recompute BatchNorm statistics for models with BatchNorm
    (:meth:`recompute_bn`).

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
        params: str | Mapping[str, str] | None = None,
        frozen: str = "copy",
        flat_params: bool = False,
    ) -> None:
        super().__init__(
            model,
            num_averages=1,
            update_every=update_every,
            start_step=start_step,
            switch_every=switch_every,
            dtype=dtype,
            buffers=buffers,
            params=params,
            frozen=frozen,
            flat_params=flat_params,
        )

    @property
    def n_averaged(self) -> int:
        """Number of models in the average."""
        return self.n_updates

    def _lerp_weights(self) -> list[float]:
        return [1.0 / (self.n_updates + 1)]
