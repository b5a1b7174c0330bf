"""BEMA: the bias-corrected EMA of Block & Zhang (2025), on the averagers' machinery.

An EMA lags behind the weights it averages. BEMA removes the lag with a correction that fades
as training goes on. With ``t`` the optimizer steps since the start step, ``theta_0`` the model at
the start step and ``theta_t`` the model when an averaging update happens (every
``update_every`` steps after the start)::

    beta_t  = (rho + gamma * t) ** -kappa
    alpha_t = (rho + gamma * t) ** -eta
    EMA_t   = (1 - beta_t) * EMA_{t-1} + beta_t * theta_t          EMA at the start = theta_0
    BEMA_t  = alpha_t * (theta_t - theta_0) + EMA_t

The stored average (what ``switch()``, ``swapped()``, the views and ``averaged_state_dict()``
use) is ``BEMA_t`` of the last update; ``EMA_t`` and ``theta_0`` are kept beside it, in the same
grouped storage, and saved in ``state_dict()``. Until the start step every one of them copies
the model. Defaults are TRL's ``BEMACallback``: ``kappa=0.5``, ``eta=0.2``, ``rho=10``,
``gamma=1``, an update every 400 steps. Several ``(kappa, eta)`` pairs keep several averages,
updated together.

    >>> import torch
    >>> model = torch.nn.Linear(1, 1, bias=False)
    >>> _ = model.weight.data.fill_(0.0)
    >>> bema = BEMA(model, update_every=1)
    >>> _ = model.weight.data.fill_(1.0); bema.update()      # t = 1
    >>> beta, alpha = 11 ** -0.5, 11 ** -0.2
    >>> expected = alpha * (1.0 - 0.0) + (beta * 1.0 + (1 - beta) * 0.0)
    >>> abs(bema.averaged_state_dict()["weight"].item() - expected) < 1e-6
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import _kernels as K
from .averaging import WeightAverager
from .settings import BEMASettings, settings_from_options

__all__ = ["BEMA"]


class BEMA(WeightAverager):
    """Bias-corrected EMA (see the module doc for the recurrence and defaults).

    Args:
        model: the model being trained.
        kappa: the EMA's power, a float in (0, 1] or a sequence (one average each).
        eta: the correction's power (one per ``kappa``).
        rho, gamma: ``beta_t = (rho + gamma t) ** -kappa``, ``rho >= 1``, ``gamma > 0``.
        **options: as for :class:`switchema.EMA` (:class:`switchema.settings.Options`);
            ``update_every`` defaults to 400 (TRL), ``start_step`` is where ``t`` and
            ``theta_0`` start.
    """

    kind = "bema"
    Settings = BEMASettings
    settings: BEMASettings

    def __init__(self, model: nn.Module, **options: Any) -> None:
        self._setup(model, settings_from_options(BEMASettings, "BEMA", **options))

    def _bind(self) -> None:
        super()._bind()
        # EMA_t (K rows) and theta_0 (one row), laid out like the averages, group by group.
        self._ema = [K.FlatGroup(g.tensors, g.k, g.dtype) for g in self._store.groups]
        self._theta0 = [K.FlatGroup(g.tensors, 1, g.dtype) for g in self._store.groups]

    def _follow_model(self) -> None:
        super()._follow_model()
        for g, ema, theta0 in zip(self._store.groups, self._ema, self._theta0):
            ema.flat.copy_(g.flat)
            theta0.flat.copy_(g.flat[:1])

    def _lerp_weights(self) -> list[float]:  # the EMA's weights beta_t, per average
        s = self.settings
        base = s.rho + s.gamma * (self.step - s.start_step)
        return [base**-kappa for kappa in s.kappa]

    @torch.no_grad()
    def _apply_average(self, step: int, weights: list[float]) -> None:
        s = self.settings
        base = s.rho + s.gamma * (step - s.start_step)
        for g, ema, theta0 in zip(self._store.groups, self._ema, self._theta0):
            t0 = theta0.row_pairs(0)[0]
            x = [src.to(g.dtype) for src in g.tensors] if not g.same_dtype else g.tensors
            drift = torch._foreach_sub(x, t0)  # theta_t - theta_0, in the average's dtype
            for k, (kappa, eta) in enumerate(zip(s.kappa, s.eta)):
                raw, _ = ema.row_pairs(k)
                K.lerp_(raw, x, base**-kappa)  # EMA_t
                out = torch._foreach_mul(drift, base**-eta)
                torch._foreach_add_(out, raw)
                K.copy_(g.views[k], out)  # BEMA_t, the average everyone reads

    def _counters(self) -> dict[str, Any]:
        self._store.synchronize()
        ema, theta0 = {}, {}
        for e in self._store.averaged:
            g, i = self._store.where[id(e.tensor)]
            j = next(n for n, h in enumerate(self._store.groups) if h is g)
            ema[e.name] = self._ema[j].kviews[i].clone()
            theta0[e.name] = self._theta0[j].kviews[i][0].clone()
        return {"bema_ema": ema, "bema_theta0": theta0}

    def _load_counters(self, state: Mapping[str, Any]) -> None:
        self._store.synchronize()
        for e in self._store.averaged:
            g, i = self._store.where[id(e.tensor)]
            j = next(n for n, h in enumerate(self._store.groups) if h is g)
            self._ema[j].kviews[i].copy_(state["bema_ema"][e.name])
            self._theta0[j].kviews[i][0].copy_(state["bema_theta0"][e.name])
