"""The averages seen as a model without swapping: module views, functional forwards, exports.

One source of truth for what average ``k`` *is*: :meth:`ViewCache.values` gives the state dict
of the averaged model, its averaged tensors from the storage and its buffers from the one place
they live (statistics :meth:`~switchema.WeightAverager.recompute_bn` kept for ``k``; else the
averaged buffer; else the model's own buffer). ``swapped()``, ``averaged_state_dict()``,
``averaged_model()`` and ``forward()`` all read it. The module views and ``forward()`` compute
with private copies of the buffers; a train-mode forward writes batch statistics into those
copies, and what it writes is discarded before the next use (the copies are refreshed when any
of them, or a buffer they copy, was written since), exactly as ``swapped()`` discards what its
block writes. A teacher forward in train mode therefore never changes the average's statistics.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._binding import clean_name
from ._dtensor import dtensor_type, like_param
from ._storage import Storage
from ._views import build_module_view

__all__ = ["ViewCache", "ViewState"]


@dataclass
class ViewState:
    """The tensors the views of one average compute with, and when they were last refreshed.

    ``params`` are views of the storage (same dtype: no copy, always current) or cached casts
    (``casts``: a float32 average of a bf16 model); ``buffers`` are private copies. ``stamps``
    are the version counters of every tensor whose writes make the copies stale.
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    casts: list[tuple[Tensor, Tensor]]
    watched: list[Tensor]
    version: int = -1
    stamps: list[int] = field(default_factory=list)
    module: nn.Module | None = None


class _Refresh:
    """Refreshes a view before use, without keeping the cache alive (picklable by name)."""

    def __init__(self, cache: ViewCache, index: int) -> None:
        self._ref = weakref.ref(cache)
        self._index = index

    def __call__(self) -> None:
        cache = self._ref()
        if cache is not None:
            cache.state(self._index)

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self._index}

    def __setstate__(self, d: dict[str, Any]) -> None:
        self._ref, self._index = (lambda: None), d["index"]


class ViewCache:
    """Per average, the :class:`ViewState` of its views; reads the storage it is given."""

    def __init__(
        self,
        model: nn.Module,
        store: Storage,
        bn_stats: dict[int, dict[str, Tensor]],
        version: Callable[[], int],
    ) -> None:
        self._model, self._store, self._bn_stats, self._version = model, store, bn_stats, version
        self._states: dict[int, ViewState] = {}

    def clear(self) -> None:
        self._states.clear()

    def _build(self, index: int) -> ViewState:
        store, params, casts = self._store, {}, []
        for e in store.entries:
            if not e.is_param:
                continue
            where = store.where.get(id(e.tensor))
            if where is None:
                params[e.path] = e.tensor.detach()  # copy/skip policy: the model's own
                continue
            g, i = where
            if g.same_dtype and not store.staged:
                params[e.path] = g.views[index][i]
            else:
                params[e.path] = torch.empty_like(e.tensor.detach())
                casts.append((params[e.path], g.views[index][i]))
        buffers = {e.path: e.tensor.detach().clone() for e in store.entries if not e.is_param}
        copied = [
            e.tensor for e in store.entries if not e.is_param and id(e.tensor) not in store.where
        ]
        return ViewState(params, buffers, casts, [*buffers.values(), *copied])

    def state(self, index: int) -> ViewState:
        """Average ``index``'s view tensors, refreshed if the average or a buffer changed."""
        self._store.synchronize()  # an update in flight changes the average (device=)
        state = self._states.get(index)
        if state is None:
            state = self._states[index] = self._build(index)
        version = self._version()
        stamps = [t._version for t in state.watched]
        if state.version == version and state.stamps == stamps:
            return state
        with torch.no_grad():
            if state.version != version:
                for dst, src in state.casts:
                    dst.copy_(src)
            values = self.values(index, None, params=False)
            for e in self._store.entries:
                if not e.is_param and e.name in values:
                    state.buffers[e.path].copy_(values[e.name])
        state.version, state.stamps = version, [t._version for t in state.watched]
        return state

    def module(self, index: int) -> nn.Module:
        state = self.state(index)
        if state.module is None:
            # Without copied tensors nothing needs refreshing: no hook (compile- and
            # export-friendly).
            stale = state.casts or state.buffers
            refresh = _Refresh(self, index) if stale else None
            state.module = build_module_view(self._model, state.params, state.buffers, refresh)
        return state.module

    def forward(self, index: int, args: tuple, kwargs: dict[str, Any]) -> Any:
        state = self.state(index)
        tensors = {**state.params, **state.buffers}
        return torch.func.functional_call(self._model, tensors, args, kwargs)

    @torch.no_grad()
    def values(
        self, index: int, dtype: torch.dtype | str | None, params: bool
    ) -> dict[str, Tensor]:
        """Fresh tensors of average ``index``'s state dict (its buffers only, unless ``params``)."""
        self._store.synchronize()
        store, dt = self._store, dtensor_type()
        stats = self._bn_stats.get(index, {})
        out: dict[str, Tensor] = {}
        for name, t in self._model.state_dict(keep_vars=True).items():
            if store.policy_by_id.get(id(t), "copy") == "skip":
                continue
            if not params and isinstance(t, nn.Parameter):
                continue
            key = clean_name(name)
            where = store.where.get(id(t))
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
