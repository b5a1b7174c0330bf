"""Weight averagers: EMA (with Switch EMA) and SWA, for any ``nn.Module``.

The averager holds *only* the averages: it never ``deepcopy``s the model. Its parts live in
their own modules: the settings (:mod:`switchema.settings`, each option written once), the
storage and binding (:mod:`switchema._storage`: one contiguous buffer per (device, dtype)
group, float32 by default even for a bf16 / fp16 model, so small updates do not round away),
the clock (:mod:`switchema._clock`), the views (:mod:`switchema._viewcache`), the checkpoint
(:mod:`switchema._state`) and the event log (:mod:`switchema.events`). This class holds them
together and owns the clock: time is the caller's, passed to :meth:`WeightAverager.update`
and :meth:`WeightAverager.end_epoch`.

Usage in a training loop (Switch EMA every epoch; plain EMA is the same without ``switch``)::

    >>> import torch
    >>> from torch import nn
    >>> from switchema import EMA
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(4, 2)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> loader = [(torch.randn(8, 4), torch.randn(8, 2)) for _ in range(5)]
    >>> ema = EMA(model, decay=0.9, switch="1e")
    >>> for epoch in range(2):
    ...     for x, y in loader:
    ...         nn.functional.mse_loss(model(x), y).backward()
    ...         optimizer.step(); optimizer.zero_grad()
    ...         ema.update()                  # after every optimizer step
    ...     switched = ema.end_epoch()        # the rule in epochs fires here
    ...     with ema.swapped():               # evaluate the averaged weights, then restore
    ...         val_loss = nn.functional.mse_loss(model(x), y)
    >>> ema.step, ema.epoch, [(e.step, e.epoch) for e in ema.events.of("switch")]
    (10, 2, [(5, 1), (10, 2)])
    >>> torch.equal(model.weight, ema.averaged_state_dict()["weight"])
    True

Parameters are matched by *name* (wrappers' ``module.`` / ``_orig_mod.`` prefixes removed),
tied parameters are averaged once, frozen parameters and buffers follow explicit policies
(:mod:`switchema.policies`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from . import _clock
from ._averager import WeightAverager
from ._binding import unwrap_model
from ._checks import check_int
from .settings import EMASettings, SWASettings, resolve_decays, settings_from_options

__all__ = ["WeightAverager", "EMA", "SWA", "unwrap_model"]


class EMA(WeightAverager):
    r"""Exponential moving average of a model's weights, with Switch EMA.

    For each decay ``d`` (the weight kept by the old average, *per averaging update*) and
    averaging update ``t``::

        avg_0 = x_0                                 (the weights at construction)
        avg_{t+1} = d_t * avg_t + (1 - d_t) * x     d_t = max(min_decay, warmup(d, t))

    With ``time="samples"`` the decay is per sample: ``update(samples=n)`` says how many each
    optimizer step used, and an averaging update covering ``n`` samples keeps ``d_t ** n``.
    ``x`` are the model's weights when :meth:`update` averages (every ``update_every``
    optimizer steps, after ``start_step``). With ``update_every=16`` and ``d = 0.968`` the
    average spans about ``16 / (1 - 0.968) = 500`` optimizer steps (the EMA paper's setting).
    With several decays, K averages are kept and updated together, reading the weights once.

    Args:
        model: the model being trained (wrapped in DDP or ``torch.compile`` or not).
        decay: a float in [0, 1) or a sequence of them; default 0.999.
        half_life: instead of ``decay``: optimizer steps (with ``time="samples"``, samples)
            after which a weight's influence on the average halves (``decay = 0.5 **
            (update_every / half_life)``; per sample, ``0.5 ** (1 / half_life)``).
        warmup: ``None``, ``"ema_paper"`` (``min(d, (1+t)/(10+t))``), ``"power"`` (timm
            style), ``"linear"`` (official SEMA code) or a :class:`~switchema.schedules.DecaySchedule`.
        **options: ``min_decay`` (a floor under the warmed-up decay) and the options every
            averager takes (:class:`switchema.settings.Options`): ``update_every``,
            ``start_step``, ``switch`` (``"1e"``, ``"50s"`` or a
            :class:`~switchema.switching.SwitchRule`), ``dtype``, ``buffers``, ``params``,
            ``frozen``, ``flat_params``, ``avg_fn``, ``device`` (``"cpu"``: offloaded).

    :attr:`decay` is the decay when there is one; :attr:`decays` the tuple.

    Example::

        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> ema = EMA(model, decay=(0.9, 0.99))
        >>> _ = model.weight.data.add_(1.0); ema.update()
        >>> ema.decays, ema.averaged_state_dict(0)["weight"].sub(model.weight).abs().max() > 0
        ((0.9, 0.99), tensor(True))
    """

    kind = "ema"
    Settings = EMASettings
    settings: EMASettings

    def __init__(
        self,
        model: nn.Module,
        decay: float | Sequence[float] | None = None,
        *,
        half_life: float | Sequence[float] | None = None,
        warmup: Any = None,
        **options: Any,
    ) -> None:
        update_every = check_int(options.get("update_every", 1), "update_every", minimum=1)
        per = 1 if options.get("time") == "samples" else update_every  # a half-life in samples
        decays = resolve_decays(decay, half_life, per)
        settings = settings_from_options(EMASettings, "EMA", decay=decays, warmup=warmup, **options)
        self._setup(model, settings)

    @property
    def decays(self) -> tuple[float, ...]:
        """The decays, one per average."""
        return self.settings.decay

    @property
    def decay(self) -> float:
        """The decay (an EMA with several decays: see :attr:`decays`)."""
        decays = self.settings.decay
        if len(decays) != 1:
            raise ValueError(
                f"this EMA keeps {len(decays)} decays {decays}; use ema.decays (a tuple)"
            )
        return decays[0]

    @property
    def warmup(self) -> Any:
        """The decay warm-up schedule."""
        return self.settings.warmup

    @property
    def current_decays(self) -> tuple[float, ...]:
        """The decays the next averaging update will use (after warm-up)."""
        s = self.settings
        t = _clock.updates_due(self.step, s.start_step, s.update_every)
        return tuple(max(s.min_decay, s.warmup(d, t)) for d in s.decay)

    def _lerp_weights(self) -> list[float]:
        # Called when `step` is due: the warm-up counts the averaging updates due by the clock.
        s = self.settings
        t = _clock.updates_due(self.step, s.start_step, s.update_every) - 1
        decays = [max(s.min_decay, s.warmup(d, t)) for d in s.decay]
        if s.time == "samples":  # a per-sample decay, over the samples since the last update
            n, self._samples_seen = self.samples - self._samples_seen, self.samples
            decays = [d**n for d in decays]
        return [1.0 - d for d in decays]

    def _counters(self) -> dict[str, Any]:
        if self.settings.time != "samples":
            return {}
        return {"samples": self.samples, "samples_seen": self._samples_seen}

    def _load_counters(self, state: Any) -> None:
        self.samples = int(state.get("samples", 0))
        self._samples_seen = int(state.get("samples_seen", 0))


class SWA(WeightAverager):
    r"""Stochastic weight averaging: the uniform average of the weights from ``start_step`` on.

    ``avg_{n+1} = avg_n + (x - avg_n) / (n + 1)``, with ``n = n_averaged`` models averaged so
    far; the first averaged model replaces the average. Before ``start_step`` the average
    copies the model. Remember to recompute BatchNorm statistics for models with BatchNorm
    (:meth:`recompute_bn`). Takes the options of every averager
    (:class:`switchema.settings.Options`).

    Example::

        >>> import torch
        >>> model = torch.nn.Linear(1, 1, bias=False)
        >>> swa = SWA(model)
        >>> for v in (1.0, 2.0, 6.0):
        ...     _ = model.weight.data.fill_(v); swa.update()
        >>> swa.averaged_state_dict()["weight"].item(), swa.n_averaged
        (3.0, 3)
    """

    kind = "swa"
    Settings = SWASettings
    settings: SWASettings

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self._setup(model, settings_from_options(SWASettings, "SWA", **options))

    @property
    def n_averaged(self) -> int:
        """Number of models in the average."""
        return self.n_updates

    def _lerp_weights(self) -> list[float]:
        return [1.0 / (self.n_updates + 1)]
