"""Decay schedules for exponential moving averages.

An EMA with decay ``d`` updates ``avg <- d * avg + (1 - d) * x``: ``d`` is the weight kept by
the *old* average, so ``d = 0.999`` averages over roughly ``1 / (1 - d) = 1000`` updates.

A schedule maps the target decay ``d`` and the number ``t`` of averaging updates already
done (``t = 0`` for the first one) to the decay used for update ``t``. Warm-ups start with a
small decay so that the early average is not dominated by the random initialisation.

Schedules are plain data (a name and numbers), so they can be saved in a ``state_dict`` and
rebuilt with :func:`schedule_from_dict`; no callables are ever stored.

Example::

    >>> s = EMAWarmup()
    >>> round(s(0.999, 0), 4), round(s(0.999, 90), 4), s(0.999, 10**6)
    (0.1, 0.91, 0.999)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from ._checks import check_int, is_real

__all__ = [
    "DecaySchedule",
    "Constant",
    "EMAWarmup",
    "PowerWarmup",
    "LinearWarmup",
    "half_life_to_decay",
    "decay_to_half_life",
    "scale_decay",
    "schedule_from_dict",
    "resolve_schedule",
    "check_decay",
]


def check_decay(decay: float) -> float:
    """``decay`` as a float in [0, 1), or a ``TypeError`` / ``ValueError`` that says so."""
    if not is_real(decay):
        raise TypeError(f"decay must be a float in [0, 1), got {decay!r}")
    if not (0.0 <= decay < 1.0) or math.isnan(decay):
        raise ValueError(f"decay must be in [0, 1), got {decay!r}")
    return float(decay)


def scale_decay(decay: float, batch_ratio: float) -> float:
    """The per-step decay for a batch ``batch_ratio`` times as large: ``decay ** batch_ratio``.

    "How to Scale Your EMA" (Busbridge et al., 2023): when the batch grows by a factor
    ``kappa`` (and the learning rate is scaled to match), an EMA keeps the same window *in
    samples* when its per-step decay becomes ``decay ** kappa``; one step of the large batch then
    weighs what ``kappa`` steps of the small one did. ``batch_ratio`` may be below 1.

    >>> round(scale_decay(0.999, 4), 6)          # batch 256 -> 1024
    0.996006
    >>> scale_decay(scale_decay(0.99, 2), 0.5) == 0.99
    True
    """
    decay = check_decay(decay)
    if not is_real(batch_ratio) or not 0 < batch_ratio < math.inf:
        raise ValueError(
            f"batch_ratio must be a positive finite number (new batch / old batch), got "
            f"{batch_ratio!r}"
        )
    return float(decay**batch_ratio)


def half_life_to_decay(half_life: float, update_every: int = 1) -> float:
    """Decay per averaging update such that a weight's influence halves every ``half_life`` optimizer steps.

    With one averaging update every ``update_every`` optimizer steps, the decay per update is
    ``0.5 ** (update_every / half_life)``.

    >>> half_life_to_decay(693.1) > 0.998
    True
    """
    if not is_real(half_life):
        raise TypeError(
            f"half_life must be a positive number of optimizer steps, got {half_life!r}"
        )
    if not half_life > 0 or math.isinf(half_life):
        raise ValueError(
            f"half_life must be a positive, finite number of optimizer steps, got {half_life!r}"
        )
    update_every = check_int(update_every, "update_every", minimum=1)
    return float(0.5 ** (update_every / half_life))


def decay_to_half_life(decay: float, update_every: int = 1) -> float:
    """Inverse of :func:`half_life_to_decay`: half-life in optimizer steps (``inf`` for decay 0 is 0)."""
    decay = check_decay(decay)
    if decay == 0.0:
        return 0.0
    return update_every * math.log(0.5) / math.log(decay)


@dataclass(frozen=True)
class DecaySchedule:
    """Base class: ``schedule(decay, t)`` returns the decay for averaging update ``t``."""

    name: ClassVar[str] = "base"

    def __call__(self, decay: float, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class Constant(DecaySchedule):
    """No warm-up: ``d_t = decay``."""

    name: ClassVar[str] = "constant"

    def __call__(self, decay: float, t: int) -> float:
        return decay


@dataclass(frozen=True)
class EMAWarmup(DecaySchedule):
    """The EMA paper's warm-up (Morales-Brotons et al.): ``d_t = min(decay, (1 + t) / (10 + t))``."""

    name: ClassVar[str] = "ema_paper"

    def __call__(self, decay: float, t: int) -> float:
        return min(decay, (1.0 + t) / (10.0 + t))


@dataclass(frozen=True)
class PowerWarmup(DecaySchedule):
    """timm / ema-pytorch style: ``d_t = min(decay, 1 - (1 + t / gamma) ** -power)``.

    ``gamma=1, power=2/3`` reaches 0.999 after about 31k updates; ``power=3/4`` after about 10k.
    """

    gamma: float = 1.0
    power: float = 2.0 / 3.0
    name: ClassVar[str] = "power"

    def __post_init__(self) -> None:
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma!r}")
        if not self.power > 0:
            raise ValueError(f"power must be > 0, got {self.power!r}")

    def __call__(self, decay: float, t: int) -> float:
        return min(decay, max(0.0, float(1.0 - (1.0 + t / self.gamma) ** -self.power)))


@dataclass(frozen=True)
class LinearWarmup(DecaySchedule):
    """The official Switch EMA code's warm-up: linear from ``ratio * decay`` to ``decay`` over ``steps`` updates.

    ``d_t = decay * (ratio + (1 - ratio) * min(t / steps, 1))``. The OpenMixup configs use
    ``ratio=0.9`` over the first 5 epochs.
    """

    steps: int = 1000
    ratio: float = 0.9
    name: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", minimum=1)
        if not (0.0 <= self.ratio <= 1.0):
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio!r}")

    def __call__(self, decay: float, t: int) -> float:
        frac = min(t / self.steps, 1.0)
        return decay * (self.ratio + (1.0 - self.ratio) * frac)


_SCHEDULES: dict[str, type[DecaySchedule]] = {
    cls.name: cls for cls in (Constant, EMAWarmup, PowerWarmup, LinearWarmup)
}


def schedule_from_dict(d: dict[str, Any]) -> DecaySchedule:
    """Rebuild a schedule saved with :meth:`DecaySchedule.to_dict`."""
    d = dict(d)
    name = d.pop("name", None)
    if name not in _SCHEDULES:
        raise ValueError(f"unknown warm-up schedule {name!r}; allowed: {sorted(_SCHEDULES)}")
    return _SCHEDULES[name](**d)


def resolve_schedule(warmup: DecaySchedule | str | None) -> DecaySchedule:
    """Accept a schedule object, one of the names ``constant``/``ema_paper``/``power``/``linear``, or None."""
    if warmup is None:
        return Constant()
    if isinstance(warmup, DecaySchedule):
        return warmup
    if isinstance(warmup, str):
        if warmup not in _SCHEDULES:
            raise ValueError(f"unknown warm-up {warmup!r}; allowed: {sorted(_SCHEDULES)} or None")
        return _SCHEDULES[warmup]()
    raise TypeError(
        f"warmup must be None, a schedule name {sorted(_SCHEDULES)} or a DecaySchedule, got {warmup!r}"
    )
