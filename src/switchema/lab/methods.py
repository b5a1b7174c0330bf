"""The averaging methods the lab compares: every fact about each, and how to build it.

Each method says which averager to keep and when to switch, all on the library's own
:class:`~switchema.EMA` / :class:`~switchema.SWA`, whose switch rule and clock decide when a
switch happens; there is no second implementation of EMA or of switching here. The training loop
(:mod:`switchema.lab.train`) calls :meth:`Method.after_step` after every optimizer step and
:meth:`Method.after_epoch` after every epoch.

* ``baseline``: plain training, nothing averaged.
* ``ema``: an EMA of the weights outside the training loop (one or several decays).
* ``sema``: Switch EMA: the EMA is copied into the model every ``switch_every`` epochs (or
  steps) from epoch ``switch_start`` on.
* ``sema-openmixup``: what the official OpenMixup ``SwitchEMAHook`` actually runs: its switch
  test is inverted, so at the end of epoch ``e`` (1-based) it switches when
  ``e % switch_every != 0``; with ``switch_every=1`` it never switches (plain EMA). Its
  interval must be in epochs. It uses the official linear decay warm-up from ``0.9 * decay``
  over the first 5 epochs.
* ``swa``: uniform average of the weights at epoch ends (or every ``swa_every``) from a
  fraction of training on; BatchNorm statistics recomputed for the averaged model.
* ``posthoc``: post-hoc EMA (Karras et al., EDM2): two power-function EMAs are tracked and
  snapshotted during training; after the last epoch, the EMA of every width of
  ``posthoc_grid`` is synthesised from the snapshots and evaluated (``posthoc@<width>``). The
  widths of ``posthoc_check`` are also tracked directly (``tracked@<width>``), to check the
  synthesis against.
* ``bema``: the bias-corrected EMA (:class:`~switchema.BEMA`, TRL's ``kappa``, ``eta``,
  ``rho``, ``gamma``), updated every ``ema_update_every`` steps from ``ema_start``.
* ``lawa``: latest weight averaging: after every epoch, the uniform average of the weights at
  the last ``lawa_k`` epoch ends, by :func:`switchema.checkpoints.average_state_dicts` (the
  same weights and rounding as averaging saved checkpoints).

Every averaging setting reaches the averager through :func:`averager_options`: the EMA's
warm-up (kind, length, ratio), ``start_step`` (``ema_start``), ``update_every``
(``ema_update_every``; the decay is per averaging update) and buffer policy, and SWA's start,
interval and buffer policy.

:data:`SPECS` holds the facts: whether a method changes the weights being trained (methods
that do not share one training run per seed, :func:`share_trajectories`), whether it keeps a
single average, and which settings it uses (so a job's id depends on a setting only when one
of its methods uses it, as each setting's metadata in :mod:`switchema.lab.config` says).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..averaging import EMA, SWA, WeightAverager
from ..bema import BEMA
from ..checkpoints import average_state_dicts
from ..posthoc import MemoryStore, synthesize
from ..power import PowerEMA
from ..schedules import DecaySchedule, LinearWarmup
from .config import SETTINGS, Study
from .errors import ConfigError, did_you_mean
from .keys import ModelLabel
from .units import parse_interval

__all__ = [
    "METHODS",
    "SPECS",
    "Evaluated",
    "Method",
    "MethodSpec",
    "PosthocMethod",
    "LawaMethod",
    "averager_options",
    "build_method",
    "check_methods",
    "decay_problems",
    "settings_used",
    "share_trajectories",
]


@dataclass(frozen=True)
class MethodSpec:
    """What a method is: its name, what it does, and the settings it uses."""

    name: str
    description: str
    passive: bool  # never changes the weights being trained: shares its seed's training run
    single_average: bool  # switches one average into the model, so takes exactly one decay


SPECS: dict[str, MethodSpec] = {
    s.name: s
    for s in (
        MethodSpec("baseline", "plain training", passive=True, single_average=False),
        MethodSpec("ema", "an EMA outside the training loop", passive=True, single_average=False),
        MethodSpec("sema", "Switch EMA", passive=False, single_average=True),
        MethodSpec(
            "sema-openmixup",
            "Switch EMA as the official hook runs it (inverted test)",
            passive=False,
            single_average=True,
        ),
        MethodSpec("swa", "the uniform average of epoch ends", passive=True, single_average=False),
        MethodSpec(
            "posthoc",
            "post-hoc EMA: any width synthesised after training",
            passive=True,
            single_average=False,
        ),
        MethodSpec(
            "lawa",
            "the uniform average of the last k epoch ends",
            passive=True,
            single_average=False,
        ),
        MethodSpec(
            "bema",
            "the bias-corrected EMA (BEMA, TRL's defaults)",
            passive=True,
            single_average=False,
        ),
    )
}
METHODS = tuple(SPECS)


def settings_used(method: str) -> tuple[str, ...]:
    """The method-specific settings ``method`` reads (from each setting's ``methods``)."""
    return tuple(name for name, s in SETTINGS.items() if s.methods and method in s.methods)


def check_methods(methods: Iterable[str]) -> list[str]:
    """``methods`` as a list if every name is known; the error lists the allowed ones."""
    methods = list(methods)
    bad = [m for m in methods if m not in SPECS]
    if bad:
        hints = "".join(did_you_mean(m, METHODS) for m in bad)
        raise ConfigError(f"unknown method(s) {bad}{hints}; allowed: {', '.join(METHODS)}")
    if not methods:
        raise ConfigError(f"no method given; allowed: {', '.join(METHODS)}")
    twice = _repeated(methods)
    if twice:
        raise ConfigError(f"methods must be distinct; given more than once: {', '.join(twice)}")
    return methods


def _repeated(values: list[Any]) -> list[str]:
    seen: set[Any] = set()
    return list(dict.fromkeys(str(v) for v in values if v in seen or seen.add(v)))


def decay_problems(methods: Iterable[str], decay: tuple[float, ...]) -> list[str]:
    """A method that switches one average into the model takes exactly one decay."""
    single = [m for m in methods if m in SPECS and SPECS[m].single_average]
    if single and len(decay) > 1:
        return [
            f"Switch EMA copies one average into the model; give one decay with "
            f"{', '.join(single)}, got {list(decay)}"
        ]
    return []


def switch_problems(methods: Iterable[str], switch_every: Any) -> list[str]:
    """The official OpenMixup hook switches at epoch ends: its interval is in epochs."""
    if "sema-openmixup" not in methods or not isinstance(switch_every, str | int):
        return []
    try:
        every = parse_interval(switch_every)
    except ValueError:
        return []  # reported by the setting's own check
    if every.unit != "epochs":
        return [
            f"sema-openmixup switches at epoch ends, as the official hook does: give "
            f"--switch-every in epochs ('{every.n}e'), got {switch_every!r}"
        ]
    return []


def share_trajectories(methods: list[str], separate: bool = False) -> list[list[str]]:
    """Group methods that can share one training run.

    ``baseline``, ``ema`` and ``swa`` never change the weights being trained, so for a given
    seed they follow the same trajectory bit for bit; training it once and attaching several
    averagers is exact and saves work. Switching methods get runs of their own, and so does
    every method when the task's objective uses the average as a teacher (``separate``).
    """
    if separate:
        return [[m] for m in methods]
    passive = [m for m in methods if SPECS[m].passive]
    return ([passive] if passive else []) + [[m] for m in methods if not SPECS[m].passive]


def check_shared(methods: list[str], separate: bool = False) -> None:
    """Several methods may share one training run only if all of them are passive (and the
    task's objective does not use the average as a teacher)."""
    if len(methods) > 1 and (separate or any(not SPECS[m].passive for m in methods)):
        why = (
            "the objective uses each method's average as its teacher"
            if separate
            else ("each switching method needs its own")
        )
        raise ValueError(f"methods {methods} cannot share one training run: {why}")


@dataclass
class Method:
    """A method's averager for one training run; the averager owns its switch rule and clock."""

    name: str
    averager: WeightAverager | None
    labels: list[str]  # one label per average, e.g. ["avg"] or ["avg@0.99", "avg@0.999"]

    def after_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """After optimizer step ``step`` (1-based) during epoch ``epoch`` (1-based)."""
        if self.averager is not None:
            self.averager.update(step, epoch=epoch - 1, optimizer=optimizer)

    def after_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> bool:
        """At the end of epoch ``epoch`` (1-based), before its evaluation; whether a switch
        in epochs happened (switches in steps are in the averager's event log)."""
        if self.averager is None:
            return False
        return self.averager.end_epoch(epoch, optimizer=optimizer)

    def events(self) -> dict[str, Any]:
        """The averager's event log (:class:`switchema.events.EventLog`) as plain data."""
        return self.averager.events.to_dict()

    def teacher(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The target of a teacher objective: the method's first average (an EMA teacher; a
        Switch EMA teacher is also switched into the model), or, without an average, the
        online model itself. Either way, no gradient flows into it."""
        averager = self.averager

        @torch.no_grad()
        def teacher(x: torch.Tensor) -> torch.Tensor:
            return model(x) if averager is None else averager.forward(x, index=0)

        return teacher

    def evaluated(self, last: bool) -> Iterator[Evaluated]:
        """The averaged models to evaluate after an epoch (``last``: after the final one)."""
        for k, label in enumerate(self.labels):
            yield Evaluated(label, self.averager.averaged_state_dict(k), self.name == "swa")

    def state_dict(self) -> Any:
        """What a checkpoint keeps of this method (its averager's state)."""
        return None if self.averager is None else self.averager.state_dict()

    def load_state_dict(self, state: Any) -> None:
        if self.averager is not None:
            self.averager.load_state_dict(state)


@dataclass
class Evaluated:
    """One averaged model to evaluate: its label, weights and what else goes in its row."""

    label: str
    state: dict[str, torch.Tensor]
    always_recompute_bn: bool = False  # recompute BatchNorm statistics whatever the setting
    extra: dict[str, Any] = field(default_factory=dict)


def _width_label(prefix: str, width: float) -> str:
    return ModelLabel(prefix, width).format()


@dataclass
class PosthocMethod(Method):
    """Post-hoc EMA: tracked power EMAs with snapshots, and widths synthesised at the end."""

    check: PowerEMA | None = None
    store: MemoryStore = field(default_factory=MemoryStore)
    grid: tuple[float, ...] = ()

    def after_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        super().after_step(step, epoch, optimizer)  # updates and snapshots the tracked EMAs
        if self.check is not None:
            self.check.update()

    def evaluated(self, last: bool) -> Iterator[Evaluated]:
        yield from super().evaluated(last)
        if not last:
            return
        tracked = {}
        if self.check is not None:
            for k, width in enumerate(self.check.sigma_rel):
                tracked[round(width, 12)] = self.check.averaged_state_dict(k)
                yield Evaluated(_width_label("tracked", width), tracked[round(width, 12)], True)
        base = self.averager.averaged_state_dict(0)  # the model's other tensors, as tracked
        widths = sorted({*self.grid, *(w for w in tracked)})
        with warnings.catch_warnings():  # extrapolated widths are expected: residual recorded
            warnings.simplefilter("ignore")
            results = synthesize(self.store, sigma_rel=widths)
        for width, result in zip(widths, results):
            synth = {k: v.to(base[k].dtype) for k, v in result.state_dict.items()}
            extra = {"sigma_rel": width, "fit_residual": result.fit.residual}
            if round(width, 12) in tracked:  # the synthesis against the directly tracked EMA
                extra["check_distance"] = _relative_distance(synth, tracked[round(width, 12)])
            yield Evaluated(_width_label("posthoc", width), {**base, **synth}, True, extra)

    def state_dict(self) -> Any:
        return {
            "averager": self.averager.state_dict(),
            "check": None if self.check is None else self.check.state_dict(),
            "snapshots": self.store.state_dict(),
        }

    def load_state_dict(self, state: Any) -> None:
        self.averager.load_state_dict(state["averager"])
        if self.check is not None:
            self.check.load_state_dict(state["check"])
        self.store.load_state_dict(state["snapshots"])


@dataclass
class LawaMethod(Method):
    """LAWA (Kaddour, "Stop wasting my time!", 2022): after every epoch, the uniform average of
    the model's state at the last ``k`` epoch ends (the ``e`` there are while ``e < k``).
    Floating tensors are averaged in float32 and rounded once; integer buffers are the latest
    epoch's (:func:`switchema.checkpoints.average_state_dicts`)."""

    model: nn.Module | None = None
    k: int = 5
    window: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def after_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> bool:
        state = {n: t.detach().clone() for n, t in self.model.state_dict().items()}
        self.window = [*self.window, state][-self.k :]
        return False

    def evaluated(self, last: bool) -> Iterator[Evaluated]:
        yield Evaluated(self.labels[0], average_state_dicts(self.window))

    def state_dict(self) -> Any:
        return {"window": self.window}

    def load_state_dict(self, state: Any) -> None:
        self.window = [dict(s) for s in state["window"]]


def _relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``||a - b|| / ||b||`` over the tensors of ``a`` (the averaged ones), in float64."""
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(b[k].double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5 if den > 0 else float("nan")


def _posthoc(model: nn.Module, study: Study, steps_per_epoch: int) -> PosthocMethod:
    cfg = study.config
    tracked = PowerEMA(model, sigma_rel=tuple(cfg.posthoc_sigma_rel))
    total = cfg.epochs * steps_per_epoch
    store = MemoryStore()
    tracked.snapshot_every(store, every=max(1, total // cfg.posthoc_snapshots))
    check = PowerEMA(model, sigma_rel=tuple(cfg.posthoc_check)) if cfg.posthoc_check else None
    labels = [_width_label("pow", w) for w in cfg.posthoc_sigma_rel]
    return PosthocMethod(
        "posthoc", tracked, labels, check=check, store=store, grid=tuple(cfg.posthoc_grid)
    )


def averager_options(name: str, study: Study, steps_per_epoch: int) -> dict[str, Any]:
    """The keywords of method ``name``'s :class:`~switchema.EMA` or :class:`~switchema.SWA`
    that the settings give, in optimizer steps (durations in epochs converted)."""
    cfg = study.config
    if name == "swa":
        every = parse_interval(cfg.swa_every)
        return {
            # the classic recipe by default: one model per epoch end from swa_start on
            "start_step": int(round(cfg.swa_start * cfg.epochs)) * steps_per_epoch,
            "update_every": every.n * (steps_per_epoch if every.unit == "epochs" else 1),
            "buffers": cfg.buffers,
        }
    if name == "bema":  # its own schedule (beta_t, alpha_t): no decay and no warm-up
        return {
            "start_step": study.ema_start.steps(steps_per_epoch),
            "update_every": cfg.ema_update_every,
            "buffers": cfg.buffers,
        }
    if name == "sema-openmixup":
        # the official warm-up, linear from 0.9 * decay over the first 5 epochs of steps
        updates = max(1, math.ceil(5 * steps_per_epoch / cfg.ema_update_every))
        warmup: DecaySchedule | None = LinearWarmup(steps=updates, ratio=0.9)
    else:
        warmup = study.warmup_schedule(steps_per_epoch)
    return {
        "warmup": warmup,
        "start_step": study.ema_start.steps(steps_per_epoch),
        "update_every": cfg.ema_update_every,
        "buffers": cfg.buffers,
    }


def build_method(name: str, model: nn.Module, study: Study, steps_per_epoch: int) -> Method:
    """Create the averager of method ``name`` on ``model`` (see the module docstring)."""
    decay = study.config.decay
    if name == "baseline":
        return Method(name, None, [])
    if name not in SPECS:
        raise ConfigError(f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    if name == "posthoc":
        return _posthoc(model, study, steps_per_epoch)
    if name == "lawa":
        return LawaMethod(name, None, ["avg"], model=model, k=study.config.lawa_k)
    options = averager_options(name, study, steps_per_epoch)
    if name == "swa":
        return Method(name, SWA(model, **options), ["avg"])
    if name == "bema":
        return Method(name, BEMA(model, **options), ["avg"])
    labels = ["avg"] if len(decay) == 1 else [ModelLabel("avg", d).format() for d in decay]
    if name == "ema":
        return Method(name, EMA(model, decay=tuple(decay), **options), labels)
    rule = study.switch
    if name == "sema-openmixup":  # the official hook's test, inverted on purpose
        rule = dataclasses.replace(rule, inverted=True)
    return Method(name, EMA(model, decay=decay[0], switch=rule, **options), labels)
