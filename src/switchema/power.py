"""Power-function EMAs (Karras et al., EDM2): K profiles tracked together, with snapshots.

A power EMA with exponent ``gamma`` weighs the iterates up to time ``t`` with the profile
``p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)``; its relative width
``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` stays the same as training goes
on, where a constant decay's width shrinks relative to ``t``. Each averaging update is::

    avg <- beta avg + (1 - beta) x,      beta = (1 - dt / t)^(gamma + 1)

with ``t`` the time after the update and ``dt`` the time since the previous one. Time is counted
in optimizer steps (or in samples, ``time="samples"``), never in calls to ``update()``: with
``update_every=10`` the realised profile is the same as with 1, up to discretisation (each
update weighs its iterate by the profile's integral over the ``dt`` it stands for). The first
update has ``beta = 0``: the weights at construction get no weight.

Snapshots of the K averages (:meth:`PowerEMA.snapshot`) let :func:`switchema.posthoc.synthesize`
build the EMA of *any* width after training.

    >>> import torch
    >>> model = torch.nn.Linear(2, 1)
    >>> ema = PowerEMA(model, sigma_rel=(0.05, 0.10))
    >>> [round(g, 2) for g in ema.gammas]
    [16.97, 6.94]
    >>> for v in (1.0, 2.0, 3.0):
    ...     _ = model.weight.data.fill_(v); ema.update()
    >>> g = ema.gammas[1]      # update i weighs its iterate by the profile's integral over (i-1, i]
    >>> w = [(i ** (g + 1) - (i - 1) ** (g + 1)) / 3 ** (g + 1) for i in (1, 2, 3)]
    >>> expected = sum(wi * v for wi, v in zip(w, (1.0, 2.0, 3.0)))
    >>> abs(float(ema.averaged_state_dict(1)["weight"][0, 0]) - expected) < 1e-5
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import _profiles as P
from ._checks import check_int, check_real
from .averaging import WeightAverager
from .settings import TIME_UNITS, PowerSettings, settings_from_options

__all__ = ["PowerEMA", "TIME_UNITS"]


def _resolve_gammas(sigma_rel: Any, gamma: Any) -> tuple[float, ...]:
    if (sigma_rel is None) == (gamma is None):
        raise ValueError(
            f"give sigma_rel or gamma, exactly one (got sigma_rel={sigma_rel!r}, gamma={gamma!r})"
        )
    values = sigma_rel if sigma_rel is not None else gamma
    if not isinstance(values, Sequence) or isinstance(values, str):
        values = [values]
    if not values:
        raise ValueError("sigma_rel / gamma must be a number or a non-empty sequence of numbers")
    if sigma_rel is not None:
        return tuple(P.sigma_rel_to_gamma(s) for s in values)
    return tuple(check_real(g, "gamma", minimum=0.0) for g in values)


class PowerEMA(WeightAverager):
    r"""K power-function EMAs of a model's weights, updated together (EDM2's post-hoc EMA).

    Everything :class:`switchema.EMA` does (policies, dtypes, ``switch``, ``swapped``, views,
    FSDP2 shard-locality, checkpoints) works the same; only the decay differs: it is the power
    profile's ``beta`` for the current time, recomputed at every averaging update on the host
    (no device sync; with several profiles, a small non-blocking host-to-device copy).

    Args:
        model: the model being trained.
        sigma_rel: relative width(s) in ``(0, 1/sqrt(12)]`` (EDM2 tracks ``(0.05, 0.10)``).
        gamma: instead of ``sigma_rel``: the exponent(s), ``>= 0``.
        time: ``"steps"`` (default) or ``"samples"``: then every ``update(samples=n)`` says how
            many samples the optimizer step used (for variable batch sizes).
        **options: as for :class:`switchema.EMA` (:class:`switchema.settings.Options`);
            ``update_every`` does not change the profile; ``start_step`` must stay 0.
    """

    kind = "power"
    Settings = PowerSettings
    settings: PowerSettings

    def __init__(
        self,
        model: nn.Module,
        sigma_rel: float | Sequence[float] | None = None,
        *,
        gamma: float | Sequence[float] | None = None,
        **options: Any,
    ) -> None:
        gammas = _resolve_gammas(sigma_rel, gamma)
        self._setup(
            model, settings_from_options(PowerSettings, "PowerEMA", gamma=gammas, **options)
        )

    def _setup(self, model: nn.Module, settings: Any) -> None:
        self.time = 0.0  # the time of the last averaging update: what the averages stand for
        self._snapshot_rule: tuple[Any, int, Any] | None = None
        super()._setup(model, settings)

    @property
    def gammas(self) -> tuple[float, ...]:
        """The exponents of the tracked profiles."""
        return self.settings.gamma

    @property
    def time_unit(self) -> str:
        """``"steps"`` or ``"samples"``."""
        return self.settings.time

    @property
    def sigma_rel(self) -> tuple[float, ...]:
        """The relative widths of the tracked profiles."""
        return tuple(P.gamma_to_sigma_rel(g) for g in self.gammas)

    def update(
        self,
        step: int | None = None,
        *,
        samples: int | None = None,
        epoch: int | None = None,
        optimizer: Any = None,
    ) -> None:
        """Record an optimizer step (see :meth:`switchema.EMA.update`); average when due.

        With ``time="samples"``, ``samples`` is the number of samples this optimizer step used.
        With :meth:`snapshot_every`, a snapshot is written at every multiple of its interval.
        """
        prev = self.step
        super().update(step, samples=samples, epoch=epoch, optimizer=optimizer)
        rule = self._snapshot_rule
        if rule is not None and self.step // rule[1] > prev // rule[1]:
            self.snapshot(rule[0], dtype=rule[2])

    def _lerp_weights(self) -> list[float]:
        # Called once per averaging update; it also moves the profile's clock.
        t = float(self.step if self.time_unit == "steps" else self.samples)
        dt = t - self.time
        self.time = t
        return [1.0 - P.power_beta(g, t, dt) for g in self.gammas]

    # ------------------------------------------------------------------ snapshots
    def snapshot(self, store: Any, *, dtype: torch.dtype | None = None) -> None:
        """Write the K averages, one contiguous copy per group, with their ``(gamma, t)``.

        ``store`` is a :class:`switchema.posthoc.MemoryStore`, a
        :class:`switchema.posthoc.FolderStore` or a folder path. ``dtype`` (e.g.
        ``torch.bfloat16``) stores a smaller copy. The copy leaves the device, so a snapshot
        waits for the device (take them every few hundred steps, not every step). For a sharded
        (FSDP2) averager it is a collective: every rank calls it and writes its own shards with
        ``torch.distributed.checkpoint`` into a :class:`~switchema.posthoc.FolderStore`.
        """
        from .posthoc import as_store, snapshot_averager

        snapshot_averager(self, as_store(store), dtype)
        self.events.record("snapshot", step=self.step, epoch=self.epoch)

    def snapshot_every(self, store: Any, every: int, *, dtype: torch.dtype | None = None) -> None:
        """Take a :meth:`snapshot` in ``update()`` whenever ``step`` reaches a multiple of ``every``.

        A :class:`~switchema.posthoc.FolderStore` is claimed for this run at once: a folder
        holding another run's snapshots raises ``FileExistsError`` here, before training."""
        from .posthoc import FolderStore, as_store, claim_on_every_rank

        store = as_store(store)
        every = check_int(every, "every", minimum=1)
        dist = torch.distributed
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        # a folder of another run's snapshots is refused now, not mid-run
        if isinstance(store, FolderStore) and self.is_sharded:
            claim_on_every_rank(store, rank)  # a collective, as the sharded snapshots are
        elif isinstance(store, FolderStore) and rank == 0:  # rank 0's run id decides
            store.claim()
        self._snapshot_rule = (store, every, dtype)

    # ------------------------------------------------------------------ state
    def _counters(self) -> dict[str, Any]:
        return {"time": self.time, "samples": self.samples}

    def _load_counters(self, state: Mapping[str, Any]) -> None:
        self.time = float(state["time"])
        self.samples = int(state["samples"])
