"""The averagers' settings, each written once: validation, saving, loading and copies follow.

Every option of an averager is one field of a frozen dataclass here. The constructors
(``EMA(model, decay, **options)``) build the settings, which check their values where they
enter; ``state_dict()["config"]`` is :meth:`Options.to_dict`; loading, ``deepcopy`` and
pickling rebuild from :meth:`Options.from_dict`; the integrations and the lab pass the same
keywords. Adding an option means adding a field (and, where it changes the update, using it).

Fields marked ``layout`` decide the averages' storage (which tensors, in which dtype): a state
saved with another layout rebuilds the storage when loaded.

    >>> s = EMASettings(decay=(0.99,), switch="1e")
    >>> s.switch.every, EMASettings.from_dict(s.to_dict()) == s
    (Interval(n=1, unit='epochs'), True)
    >>> sorted(option_names(EMASettings))[:4]
    ['avg_fn', 'buffers', 'decay', 'device']
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from ._checks import check_choice, check_int, check_real
from .policies import check_policy_spec
from .schedules import (
    Constant,
    DecaySchedule,
    check_decay,
    half_life_to_decay,
    resolve_schedule,
    schedule_from_dict,
)
from .switching import SwitchRule, as_rule

__all__ = [
    "Options",
    "EMASettings",
    "SWASettings",
    "PowerSettings",
    "BEMASettings",
    "TIME_UNITS",
    "option_names",
    "resolve_decays",
    "settings_from_options",
]

TIME_UNITS = ("steps", "samples")
FROZEN_POLICIES = ("copy", "average", "skip")
OFFLOAD_MODES = ("auto", "staged")


def _layout(default: Any, **kw: Any) -> Any:
    return field(default=default, metadata={"layout": True}, **kw)


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


@dataclass(frozen=True)
class Options:
    """What every averager takes.

    Attributes:
        update_every: average every N optimizer steps (N >= 1).
        start_step: until this many optimizer steps, the averages copy the model.
        switch: a :class:`~switchema.switching.SwitchRule` or its interval (``"1e"``,
            ``"50s"``): Switch EMA, the average copied into the model when due.
        dtype: the averages' minimum precision (float32 by default; ``None``: the model's).
        buffers: buffer policy, ``"copy"``, ``"average"``, ``"skip"`` or ``{pattern: policy}``.
        params: parameter policy by name (``{pattern: policy}`` or one policy); unmatched
            parameters are averaged when trainable and follow ``frozen`` otherwise.
        frozen: frozen parameters: ``"copy"`` (from the model), ``"average"`` or ``"skip"``.
        flat_params: make the model's averaged parameters views into one buffer per group.
        device: where the averages live (``"cpu"``: offloaded; ``None``: the model's device).
            Host memory is pinned when the model is on an accelerator; :meth:`update` copies
            the weights out without waiting and the averaging happens when next needed
            (:mod:`switchema._storage`).
        offload: ``"auto"`` (stage the weights only when ``device`` differs from the model's)
            or ``"staged"`` (always: the offload path on the model's own device, which gives
            the same averages bit for bit; for tests).
        avg_fn: a custom average (torch ``AveragedModel``'s ``avg_fn``): at every averaging
            update, ``avg_fn(average, model, step)`` is called per (device, dtype) group and
            per average with the group's flat average ``(N,)`` (in its dtype) and the model's
            tensors gathered into one flat tensor of that dtype; it updates ``average`` in
            place (returns ``None``) or returns the new average. Slower than the fused update
            (one gather of the weights per group). Not saved: a state records that there was
            one, and loading it needs the averager built with ``avg_fn`` again.
    """

    update_every: int = 1
    start_step: int = 0
    switch: SwitchRule | None = None
    dtype: torch.dtype | None = _layout(torch.float32)
    buffers: str | dict[str, str] = _layout("copy")
    params: str | dict[str, str] | None = _layout(None)
    frozen: str = _layout("copy")
    flat_params: bool = False
    device: torch.device | None = _layout(None)
    offload: str = _layout("auto")
    avg_fn: Callable[[Tensor, Tensor, int], Tensor | None] | None = None

    kind = "base"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        check_int(self.update_every, "update_every", minimum=1)
        check_int(self.start_step, "start_step", minimum=0)
        set_(self, "switch", as_rule(self.switch))
        dtype = self.dtype
        if dtype is not None and not (
            isinstance(dtype, torch.dtype) and (dtype.is_floating_point or dtype.is_complex)
        ):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        set_(self, "buffers", check_policy_spec(self.buffers, "buffers"))
        if self.params is not None:
            set_(self, "params", check_policy_spec(self.params, "params"))
        check_choice(self.frozen, "frozen", FROZEN_POLICIES)
        if self.device is not None:
            if not isinstance(self.device, (str, torch.device)):
                raise TypeError(
                    f"device must be a torch.device, a device string ('cpu', 'cuda:0') or None, "
                    f"got {self.device!r}"
                )
            try:
                set_(self, "device", torch.device(self.device))
            except RuntimeError as err:
                raise ValueError(f"device {self.device!r} is not a device: {err}") from None
        check_choice(self.offload, "offload", OFFLOAD_MODES)
        if not isinstance(self.flat_params, bool):
            raise TypeError(f"flat_params must be a bool, got {self.flat_params!r}")
        if self.avg_fn is not None and not callable(self.avg_fn):
            raise TypeError(
                f"avg_fn must be a callable (average, model, step) -> new average or None, got "
                f"{self.avg_fn!r}"
            )
        if self.switch is not None and self.switch.index >= self.num_averages:
            raise ValueError(
                f"switch index {self.switch.index} out of range: this averager keeps "
                f"{self.num_averages} average(s)"
            )

    @property
    def num_averages(self) -> int:
        """K, the number of averages kept."""
        return 1

    def layout(self) -> tuple:
        """What decides the storage: the number of averages and the ``layout`` fields."""
        return (self.num_averages,) + tuple(
            _encode(getattr(self, f.name)) for f in fields(self) if f.metadata.get("layout")
        )

    def replace(self, **changes: Any) -> Options:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON- and ``weights_only``-loadable) of every field."""
        return {f.name: _encode(getattr(self, f.name), f.name) for f in fields(self)}

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, avg_fn: Callable[..., Any] | None = None
    ) -> Options:
        """The settings :meth:`to_dict` wrote (also a state saved before settings were typed).

        A custom ``avg_fn`` is never saved: the settings record that there was one, and it
        must be given again here.
        """
        d = dict(d)
        if d.get("avg_fn") is not None:
            if avg_fn is None:
                raise ValueError(
                    "these settings were saved with a custom avg_fn, which is never saved: build "
                    "the averager with the same avg_fn= before loading the state"
                )
            d["avg_fn"] = avg_fn
        if "switch_every" in d:  # older states: an int, in optimizer steps
            every = d.pop("switch_every")
            d.setdefault("switch", None if every is None else {"every": f"{every}s"})
        names = {f.name: f for f in fields(cls)}
        kwargs = {k: _decode(k, v) for k, v in d.items() if k in names}
        return cls(**kwargs)

    def differences(self, other: Options) -> list[str]:
        """``"decay: 0.5 here, 0.993 there"`` for every field that differs."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} here, {getattr(other, f.name)!r} there"
            for f in fields(self)
            if _encode(getattr(self, f.name), f.name) != _encode(getattr(other, f.name), f.name)
        ]


def _encode(value: Any, name: str = "") -> Any:
    if name == "avg_fn":  # a callable is recorded as present, never saved
        return None if value is None else "custom"
    if isinstance(value, torch.dtype):
        return _dtype_name(value)
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, (SwitchRule, DecaySchedule)):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def _decode(name: str, value: Any) -> Any:
    if name == "dtype":
        return _dtype_from_name(value)
    if name == "device":
        return None if value is None else torch.device(value)
    if name == "switch":
        return None if value is None else SwitchRule.from_dict(value)
    if name == "warmup":
        return schedule_from_dict(value)
    if name in ("decay", "gamma", "kappa", "eta") and isinstance(value, list):
        return tuple(float(v) for v in value)
    return value


@dataclass(frozen=True)
class EMASettings(Options):
    """:class:`Options` and the EMA's own.

    Attributes:
        decay: the decays, one per average kept (each in [0, 1)).
        warmup: the decay warm-up, a :class:`~switchema.schedules.DecaySchedule` or its name.
        min_decay: a floor under the warmed-up decay, ``d_t = max(min_decay, warmup(d, t))``
            (diffusers' and ema-pytorch's ``min_decay``; 0: none).
        time: ``"steps"`` (the decay is per averaging update) or ``"samples"`` (per sample:
            ``update(samples=n)`` says how many each optimizer step used).
    """

    decay: tuple[float, ...] = (0.999,)
    warmup: DecaySchedule = field(default_factory=Constant)
    min_decay: float = 0.0
    time: str = "steps"

    kind = "ema"

    def __post_init__(self) -> None:
        decay = self.decay
        values = decay if isinstance(decay, (tuple, list)) else (decay,)
        if not values:
            raise ValueError("decay must be a float or a non-empty sequence of floats, got []")
        object.__setattr__(self, "decay", tuple(check_decay(d) for d in values))
        object.__setattr__(self, "warmup", resolve_schedule(self.warmup))
        object.__setattr__(self, "min_decay", check_decay(self.min_decay))
        check_choice(self.time, "time", TIME_UNITS)
        if self.min_decay > min(self.decay):
            raise ValueError(
                f"min_decay {self.min_decay} is above the decay {min(self.decay)}: it bounds the "
                "warm-up from below, so it must not exceed any decay"
            )
        super().__post_init__()

    @property
    def num_averages(self) -> int:
        return len(self.decay)


@dataclass(frozen=True)
class SWASettings(Options):
    """:class:`Options` of the uniform average (SWA has no options of its own)."""

    kind = "swa"


@dataclass(frozen=True)
class PowerSettings(Options):
    """:class:`Options` and the power EMA's own.

    Attributes:
        gamma: the power profiles' exponents, one per average (each >= 0).
        time: ``"steps"`` or ``"samples"`` (``update(samples=n)`` gives each step's samples).
    """

    gamma: tuple[float, ...] = (6.94,)
    time: str = "steps"

    kind = "power"

    def __post_init__(self) -> None:
        values = self.gamma if isinstance(self.gamma, (tuple, list)) else (self.gamma,)
        if not values:
            raise ValueError("gamma must be a number or a non-empty sequence of numbers")
        object.__setattr__(
            self, "gamma", tuple(check_real(g, "gamma", minimum=0.0) for g in values)
        )
        check_choice(self.time, "time", TIME_UNITS)
        if self.start_step != 0:
            raise ValueError(
                f"PowerEMA takes no start_step (got {self.start_step}): its profile weighs every "
                "step from 0; use PowerEMA's snapshots and synthesize() for a later start"
            )
        super().__post_init__()

    @property
    def num_averages(self) -> int:
        return len(self.gamma)


def resolve_decays(decay: Any, half_life: Any, update_every: int) -> tuple[float, ...]:
    """The decays from ``decay`` (default 0.999) or ``half_life`` (optimizer steps), not both."""
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


@dataclass(frozen=True)
class BEMASettings(Options):
    """:class:`Options` and BEMA's own (Block & Zhang 2025; defaults of TRL's callback).

    Attributes:
        kappa: the EMA's power, one per average, each in (0, 1].
        eta: the bias correction's power, one per average (as many as ``kappa``), each >= 0.
        rho: the lag, ``>= 1``.
        gamma: the multiplier of ``t``, ``> 0``.
    """

    update_every: int = 400
    kappa: tuple[float, ...] = (0.5,)
    eta: tuple[float, ...] = (0.2,)
    rho: float = 10.0
    gamma: float = 1.0

    kind = "bema"

    def __post_init__(self) -> None:
        kappa = tuple(self.kappa) if isinstance(self.kappa, (tuple, list)) else (self.kappa,)
        eta = tuple(self.eta) if isinstance(self.eta, (tuple, list)) else (self.eta,)
        if not kappa or len(eta) != len(kappa):
            raise ValueError(
                f"kappa and eta give one average each and must be as many, got kappa={kappa!r}, "
                f"eta={eta!r}"
            )
        set_ = object.__setattr__
        set_(self, "kappa", tuple(check_real(k, "kappa", minimum=0.0, maximum=1.0) for k in kappa))
        set_(self, "eta", tuple(check_real(e, "eta", minimum=0.0) for e in eta))
        if any(k == 0.0 for k in self.kappa):
            raise ValueError(f"kappa must be in (0, 1], got {self.kappa!r}")
        set_(self, "rho", check_real(self.rho, "rho", minimum=1.0))
        set_(self, "gamma", check_real(self.gamma, "gamma", minimum=0.0))
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma!r}")
        super().__post_init__()

    @property
    def num_averages(self) -> int:
        return len(self.kappa)


def option_names(cls: type[Options]) -> list[str]:
    """The names of every option of ``cls``, in declaration order."""
    return [f.name for f in fields(cls)]


def settings_from_options(cls: type[Options], what: str, **options: Any) -> Options:
    """``cls(**options)``; an unknown keyword is refused naming the closest option."""
    allowed = option_names(cls)
    for key in options:
        if key not in allowed:
            if key == "switch_every":
                raise TypeError(
                    f"{what} takes switch= (a SwitchRule or an interval with its unit, '100s' or "
                    "'1e'), not switch_every="
                )
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{what} got an unexpected option {key!r}{hint} (options: {', '.join(allowed)})"
            )
    return cls(**options)
