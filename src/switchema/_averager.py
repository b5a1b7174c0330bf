"""The averager's machinery, shared by :class:`switchema.EMA`, :class:`switchema.SWA`,
:class:`switchema.PowerEMA` and :class:`switchema.BEMA`: :class:`WeightAverager` (public as
``switchema.WeightAverager``; see :mod:`switchema.averaging` for the overview and an example).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from . import _clock
from ._binding import check_model
from ._checks import check_int, check_real
from ._dtensor import dtensor_type, local_stack
from ._in_use import AverageInUse, check_index
from ._state import STATE_FORMAT, check_state, pack_averages, saved_settings
from ._storage import Storage
from ._viewcache import ViewCache
from .events import EventLog
from .settings import (
    Options,
    option_names,
    settings_from_options,
)

__all__ = ["WeightAverager"]

_OPTIONS = frozenset(option_names(Options))


def _optimizers(optimizer: Any) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    items = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    for o in items:
        if not isinstance(getattr(o, "state", None), Mapping):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(o).__name__}")
    return items


class WeightAverager(AverageInUse):
    """Shared machinery of :class:`~switchema.EMA`, :class:`~switchema.SWA`,
    :class:`~switchema.PowerEMA` and :class:`~switchema.BEMA`.

    Subclasses define :meth:`_lerp_weights`, the weights ``w_k`` of the update
    ``avg_k <- avg_k + w_k * (x - avg_k)``, and the settings class they take.
    """

    kind = "base"
    Settings: type[Options] = Options

    def __init__(self, model: nn.Module, settings: Options) -> None:
        self._setup(model, settings)

    def _setup(self, model: nn.Module, settings: Options) -> None:
        if not isinstance(settings, self.Settings):
            raise TypeError(
                f"{type(self).__name__} takes {self.Settings.__name__}, got {type(settings).__name__}"
            )
        self._model = check_model(model)
        self.settings = settings
        self.step = 0  # optimizer steps done (calls to update(), or the step passed to it)
        self.epoch = 0  # epochs complete (end_epoch() calls, or the epoch passed to update())
        self.samples = 0  # samples seen (averagers whose time is counted in samples)
        self._samples_seen = 0  # samples when the average last moved (or copied the model)
        self.events = EventLog()  # what this averager did; counts its averaging updates
        self._version = 0  # bumped whenever the averages or their BatchNorm statistics change
        self._bn_stats: dict[int, dict[str, Tensor]] = {}  # per average: recomputed statistics
        self._swapped_index: int | None = None
        self._bind()

    def _bind(self) -> None:
        self._store = Storage(self._model, self.settings)
        self._views = ViewCache(self._model, self._store, self._bn_stats, lambda: self._version)

    def __getattr__(self, name: str) -> Any:
        # The options read as attributes (ema.update_every, ema.dtype, ...): one source.
        settings = self.__dict__.get("settings")
        if settings is not None and name in _OPTIONS:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ public surface
    @property
    def model(self) -> nn.Module:
        """The (unwrapped) model this averager is bound to."""
        return self._model

    @property
    def num_averages(self) -> int:
        """K, the number of averages kept."""
        return self.settings.num_averages

    @property
    def switch_rule(self) -> Any:
        """The :class:`~switchema.switching.SwitchRule` of this averager, or ``None``."""
        return self.settings.switch

    @property
    def n_updates(self) -> int:
        """Averaging updates performed."""
        return self.events.n_updates

    @property
    def names(self) -> list[str]:
        """Names of the averaged tensors, in storage order."""
        return list(self._store.names)

    @property
    def is_sharded(self) -> bool:
        """True when some averaged tensor is a ``DTensor`` (FSDP2 / tensor parallel)."""
        return bool(self._store.live_dt)

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
        return self._store.layout()

    @property
    def nbytes(self) -> int:
        """Bytes of average storage held by this process (the local shards' under FSDP2)."""
        return self._store.nbytes

    def configure(self, **changes: Any) -> None:
        """Change settings that do not decide the storage (``switch``, ``update_every``, ...).

        ``ema.configure(switch="1e")`` gives a ready averager a switch rule. Settings that decide
        the storage (``dtype``, ``buffers``, ``params``, ``frozen``, the number of averages)
        are refused: build a new averager for those.
        """
        settings = settings_from_options(
            type(self.settings),
            type(self).__name__,
            **{
                **{f: getattr(self.settings, f) for f in option_names(type(self.settings))},
                **changes,
            },
        )
        if settings.layout() != self.settings.layout() or (
            settings.flat_params != self.settings.flat_params
        ):
            raise ValueError(
                f"configure() changes settings that keep the storage as it is; "
                f"{sorted(changes)} would rebuild it: create a new averager instead"
            )
        self.settings = settings

    def _check_not_swapped(self, what: str) -> None:
        if self._swapped_index is not None:
            raise RuntimeError(
                f"{what}() called inside swapped(): the model holds the averaged weights there; "
                "call it after the with-block ends"
            )

    def _changed(self) -> None:  # recomputed BatchNorm statistics no longer belong to them
        self._version += 1
        self._bn_stats.clear()

    # ------------------------------------------------------------------ the clock
    def _lerp_weights(self) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _follow_model(self) -> None:  # before the start step, and on reset: avg <- model
        self._store.fill_from_model()

    def _average(self, step: int) -> None:
        """One averaging update at ``step`` (deferred on the staged path, see ``device``)."""
        weights = self._lerp_weights()  # also moves a subclass's own clock (PowerEMA)
        self._store.defer(partial(self._apply_average, step, weights))

    def _apply_average(self, step: int, weights: list[float]) -> None:  # lerp or avg_fn
        fn, store = self.settings.avg_fn, self._store
        store.lerp(weights) if fn is None else store.apply(fn, step)

    def update(
        self,
        step: int | None = None,
        *,
        samples: int | None = None,
        epoch: int | None = None,
        optimizer: Any = None,
    ) -> None:
        """Record an optimizer step; average when due; switch when a rule in steps is due.

        Call it after every optimizer step. ``step``, if given, is the number of optimizer
        steps done so far, counting the one just taken (Lightning's ``trainer.global_step``
        after the step, timm's ``num_updates``); without it the averager counts calls.
        ``epoch``, if given, is the number of epochs complete before this step (Lightning's
        ``current_epoch``); without it, :meth:`end_epoch` calls count. ``optimizer`` (one or a
        list) is the optimizer whose state a switch with ``reset_optimizer`` clears. With
        ``time="samples"`` (EMA, PowerEMA), ``samples`` is the number of samples this optimizer
        step used. The clock decides everything (:mod:`switchema._clock`):

        * until ``start_step`` steps the averages copy the model;
        * after it, the averages are updated when ``step - start_step`` reaches a multiple of
          ``update_every`` (if a passed step jumps over several multiples, one update is made);
        * warm-ups count the averaging updates due by the clock, so a fresh averager given
          ``step=5000`` is past a warm-up of 1000 updates;
        * with a switch rule in steps (``switch="50s"``), the average is copied into the model
          whenever ``step`` passes a multiple of the interval once the rule has started.

        A ``step`` equal to the last one is ignored (one call per micro-batch under gradient
        accumulation is fine); a smaller one is an error.
        """
        store, settings = self._store, self.settings
        if getattr(settings, "time", "steps") == "samples":
            n = check_int(samples, "samples", minimum=1)
        elif samples is not None:
            raise ValueError(
                f"samples is only used with time='samples'; this {type(self).__name__} counts steps"
            )
        else:
            n = 0
        store.check()
        if self._swapped_index is not None:
            self._check_not_swapped("update")
        prev = self.step
        if step is None:
            new = prev + 1
        else:
            if isinstance(step, nn.Module):
                raise TypeError(
                    f"update() takes the step count, not the model: this averager was bound to "
                    f"its {type(step).__name__} when it was created (EMA(model)); call "
                    "ema.update() after each optimizer step, or ema.update(step) with the number "
                    "of steps done"
                )
            new = check_int(step, "step", minimum=0)
            if new < prev:
                raise ValueError(
                    f"step went backwards: got step={new} after step={prev}; pass the number of "
                    "optimizer steps done so far, and load the averager's state_dict when resuming"
                )
            if new == prev:
                return
        epochs = self.epoch if epoch is None else self._next_epoch(epoch, minimum=0)
        rule = settings.switch
        switch = rule is not None and _clock.switch_after_step(rule, prev, new, epochs)
        if switch:
            self._check_rule_optimizer(optimizer)  # before anything changes
        self.step, self.epoch = new, epochs
        self.samples += n  # before averaging: the update covers this step's samples
        if new <= settings.start_step:
            store.defer(self._follow_model)
            self._samples_seen = self.samples  # the average copies the model until then
            self._changed()
        elif _clock.crossed(prev, new, settings.update_every, settings.start_step):
            self._average(new)
            self.events.counted_update(step=new)
            self._changed()
        if switch:
            self._switch_by_rule(optimizer)

    def end_epoch(self, epoch: int | None = None, *, optimizer: Any = None) -> bool:
        """Mark the end of an epoch; switch if a rule in epochs is due. Returns whether it did.

        ``epoch`` is the number of epochs complete, counting this one (default: one more than
        before). Calling it again for the same epoch does nothing, so a framework hook and its
        fallback may both call it. Call it where the average should be switched in: after
        the epoch's last optimizer step, before its evaluation.
        """
        self._check_not_swapped("end_epoch")
        epochs = self.epoch + 1 if epoch is None else self._next_epoch(epoch, minimum=1)
        if epochs == self.epoch:
            return False
        due = _clock.switch_at_epoch_end(self.settings.switch, epochs, self.step)
        if due:
            self._check_rule_optimizer(optimizer)
        self.epoch = epochs
        if due:
            self._switch_by_rule(optimizer)
        return due

    def _next_epoch(self, epoch: int, minimum: int) -> int:
        epoch = check_int(epoch, "epoch", minimum=minimum)
        if epoch < self.epoch:
            raise ValueError(
                f"epoch went backwards: got epoch={epoch} after epoch={self.epoch}; pass the "
                "number of epochs complete, and load the averager's state_dict when resuming"
            )
        return epoch

    def _check_rule_optimizer(self, optimizer: Any) -> None:
        if self.settings.switch.reset_optimizer and optimizer is None:
            raise ValueError(
                "the switch rule resets the optimizer (reset_optimizer=True) but no optimizer "
                "was given: pass optimizer= to update() and end_epoch()"
            )

    def _switch_by_rule(self, optimizer: Any) -> None:
        rule = self.settings.switch
        self.switch(rule.index, optimizer=optimizer if rule.reset_optimizer else None)

    def reset(self) -> None:
        """Every average <- the model's current weights (timm's ``set``); counters are kept."""
        self._store.check()
        self._check_not_swapped("reset")
        self._store.defer(self._follow_model)
        self._changed()
        self.events.record("reset", step=self.step, epoch=self.epoch)

    # ------------------------------------------------------------------ switch and swap
    def switch(self, index: int = 0, optimizer: Any = None, *, weight: float = 1.0) -> None:
        """Switch EMA: move the model to average ``index``; the average is unchanged.

        ``weight=1`` (the default) copies the average into the model in place. A partial switch
        ``0 < weight < 1`` moves the model part of the way, ``x <- x + weight * (avg - x)``,
        computed in the average's precision and rounded once into the model (Lookahead's
        slow-weight step; ema-pytorch's ``update_model_with_ema``). With
        ``optimizer`` (one or a list), the optimizer state (momentum, Adam moments, step) of the
        averaged parameters is cleared, so it restarts from there. A full switch also copies
        the BatchNorm statistics :meth:`recompute_bn` kept for this average, if any: they
        belong to the weights the model now holds. Recorded in :attr:`events`.
        """
        self._store.check()
        self._check_not_swapped("switch")
        index = check_index(index, self.num_averages)
        weight = check_real(weight, "weight", minimum=0.0, maximum=1.0)
        optimizers = _optimizers(optimizer) if optimizer is not None else ()
        if weight == 1.0:
            self._store.copy_into_model(index)
            self._load_bn_stats(index)
        else:
            self._store.move_model(index, weight)
        for opt in optimizers:
            for e in self._store.averaged:
                if e.is_param:
                    opt.state.pop(e.tensor, None)
        self.events.record("switch", step=self.step, epoch=self.epoch, index=index)

    # ------------------------------------------------------------------ checkpoints
    def _counters(self) -> dict[str, Any]:
        """Subclass counters that drive future updates (saved next to ``step``)."""
        return {}

    def _load_counters(self, state: Mapping[str, Any]) -> None:
        pass

    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """Averages, settings, counters, the event log and kept BatchNorm statistics.

        ``averages[name]`` holds the K averages of a tensor, shape ``(K, *shape)``; for a
        DTensor parameter (FSDP2) it is a DTensor of that global shape on the parameter's mesh,
        so ``torch.distributed.checkpoint`` saves each rank's shard and reshards on load.
        No callable is saved.
        """
        self._check_not_swapped("state_dict")
        state = {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "config": self.settings.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "n_updates": self.n_updates,
            "events": self.events.to_dict(),
            **self._counters(),
            "names": list(self._store.names),
            "averages": pack_averages(self._store),
        }
        if self._bn_stats:
            state["bn_stats"] = {
                k: {n: t.clone() for n, t in v.items()} for k, v in self._bn_stats.items()
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; fails naming the first tensor that does not match.

        The settings, counters and event log come from the state; where its settings differ
        from this averager's, a warning names both and the state's are used. Where the state
        was saved with another number of averages, averaging dtype or policy, the storage is
        rebuilt to match it, so the settings and the storage always agree (a float64 state
        loads as float64). Nothing is changed when the state does not fit. Sharded and plain
        states load into sharded and plain averagers alike: a sharded averager takes its shards
        (from a full tensor without communication, from a DTensor placed otherwise by
        redistributing it), a plain one gathers a DTensor state. All ranks of a sharded
        averager must call it.
        """
        self._check_not_swapped("load_state_dict")
        saved = saved_settings(state, self.kind, self.Settings, self.settings)
        check_state(state, self._store, self.settings, saved)
        differences = self.settings.differences(saved)
        if differences:
            warnings.warn(
                f"{type(self).__name__}.load_state_dict: the state's settings differ from this "
                f"averager's and are used ({'; '.join(differences)})",
                UserWarning,
                stacklevel=2,
            )
        rebind = saved.layout() != self.settings.layout()
        self.settings = saved
        if rebind:
            self._bind()
        with torch.no_grad():
            self._load_tensors(state)

    def _load_tensors(self, state: Mapping[str, Any]) -> None:
        dt = dtensor_type()
        for e in self._store.averaged:
            value = state["averages"][e.name]
            if e.sharded:  # this rank's shard, wherever the state was saved
                value = local_stack(value, e.tensor, e.name)
            elif dt is not None and isinstance(value, dt):
                value = value.full_tensor()  # a sharded state into a plain model: gather
            self._store.kview(e).copy_(value)
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))
        self.events = EventLog.from_dict(state.get("events"))
        self.events.n_updates = int(state["n_updates"])
        self._load_counters(state)
        self._version += 1
        self._bn_stats.clear()
        self._bn_stats.update(
            {
                int(k): {n: t.detach().clone() for n, t in v.items()}
                for k, v in state.get("bn_stats", {}).items()
            }
        )

    # ------------------------------------------------------------------ copies
    def __getstate__(self) -> dict[str, Any]:
        # The averager is bound to live tensors by identity and address, which a copy cannot
        # keep: a copy is rebuilt from its model, settings and state_dict (as deepcopying a
        # torch AveragedModel copies the model it holds).
        if self.is_sharded:
            raise TypeError(
                "a sharded (FSDP2) averager cannot be pickled or deep-copied; save "
                "averager.state_dict() with torch.distributed.checkpoint instead"
            )
        self._check_not_swapped("__getstate__")
        return {"model": self._model, "settings": self.settings, "state": self.state_dict()}

    def __setstate__(self, d: Mapping[str, Any]) -> None:
        self._setup(d["model"], d["settings"])
        self.load_state_dict(d["state"])

    def __repr__(self) -> str:
        store = self._store
        return (
            f"{type(self).__name__}({len(store.names)} tensors, {store.numel} elements x "
            f"{self.num_averages}, {len(store.groups)} group(s), step={self.step}, "
            f"n_updates={self.n_updates})"
        )
