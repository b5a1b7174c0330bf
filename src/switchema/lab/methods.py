"""The averaging methods the lab compares, all built on the library's own averagers.

Each method says which averager to keep and when to switch. The training loop
(:mod:`switchema.lab.train`) calls :meth:`Method.after_step` after every optimizer step and
:meth:`Method.after_epoch` after every epoch; there is no second implementation of EMA here.

* ``baseline``: plain training, nothing averaged.
* ``ema``: an EMA of the weights outside the training loop (one or several decays).
* ``sema``: Switch EMA: the EMA is copied into the model every ``switch_every`` epochs (or
  steps) from epoch ``switch_start`` on.
* ``sema-openmixup``: what the official OpenMixup ``SwitchEMAHook`` actually runs: its switch
  test is inverted, so at the end of epoch ``e`` (1-based) it switches when
  ``e % switch_every != 0``; with ``switch_every=1`` it never switches (plain EMA). It uses the
  official linear decay warm-up from ``0.9 * decay`` over the first 5 epochs.
* ``swa``: uniform average of the weights at epoch ends from a fraction of training on;
  BatchNorm statistics recomputed for the averaged model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..averaging import EMA, SWA, WeightAverager
from ..schedules import LinearWarmup

__all__ = ["METHODS", "Interval", "parse_interval", "Method", "build_method", "check_methods"]

METHODS = ("baseline", "ema", "sema", "sema-openmixup", "swa")


@dataclass(frozen=True)
class Interval:
    """Every ``n`` epochs or steps."""

    n: int
    unit: str  # "epochs" | "steps"

    def __str__(self) -> str:
        return f"{self.n} {self.unit}"


_INTERVAL = re.compile(r"^\s*(\d+)\s*(e|ep|epoch|epochs|s|st|step|steps)?\s*$")


def parse_interval(text: str | int) -> Interval:
    """``"1"``/``"1e"``/``"1epoch"`` -> every epoch; ``"50s"``/``"50steps"`` -> every 50 steps."""
    m = _INTERVAL.match(str(text))
    if not m or int(m.group(1)) < 1:
        raise ValueError(
            f"switch interval must be a positive count of epochs ('1', '5e') or steps ('50s'), got {text!r}"
        )
    unit = "steps" if (m.group(2) or "e").startswith("s") else "epochs"
    return Interval(int(m.group(1)), unit)


def check_methods(methods: list[str]) -> list[str]:
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; allowed: {', '.join(METHODS)}")
    if not methods:
        raise ValueError(f"no method given; allowed: {', '.join(METHODS)}")
    return methods


@dataclass
class Method:
    """A method's averager and its switching rule for one training run."""

    name: str
    averager: WeightAverager | None
    labels: list[str]  # one label per average, e.g. ["avg"] or ["avg@0.99", "avg@0.999"]
    switch: Interval | None = None
    switch_start: int = 0  # epochs completed before the first switch may happen
    openmixup: bool = False
    reset_optimizer: bool = False

    def after_step(self, step: int, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """After optimizer step ``step`` (1-based) during epoch ``epoch`` (1-based)."""
        if self.averager is None:
            return
        self.averager.update()
        if (
            self.switch is not None
            and self.switch.unit == "steps"
            and epoch > self.switch_start
            and step % self.switch.n == 0
        ):
            self._switch(optimizer)

    def after_epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> bool:
        """At the end of epoch ``epoch`` (1-based); returns whether a switch happened."""
        if self.averager is None or self.switch is None or self.switch.unit != "epochs":
            return False
        if epoch < self.switch_start:
            return False
        due = epoch % self.switch.n == 0
        if self.openmixup:
            due = not due  # the official hook's inverted test, reproduced on purpose
        if due:
            self._switch(optimizer)
        return due

    def _switch(self, optimizer: torch.optim.Optimizer) -> None:
        self.averager.switch(0, optimizer=optimizer if self.reset_optimizer else None)


def build_method(
    name: str,
    model: nn.Module,
    *,
    decays: list[float],
    warmup: str | None,
    steps_per_epoch: int,
    epochs: int,
    switch_every: Interval,
    switch_start: int,
    swa_start: float,
    reset_optimizer: bool,
) -> Method:
    """Create the averager for method ``name`` on ``model`` (see the module docstring)."""
    check_methods([name])
    if name == "baseline":
        return Method(name, None, [])
    if name == "swa":
        start = int(round(swa_start * epochs)) * steps_per_epoch
        # One model per epoch end, the classic SWA recipe: update() averages when
        # (step - start) is a multiple of steps_per_epoch.
        swa = SWA(model, start_step=start, update_every=steps_per_epoch)
        return Method(name, swa, ["avg"])
    labels = ["avg"] if len(decays) == 1 else [f"avg@{d:g}" for d in decays]
    if name == "ema":
        return Method(name, EMA(model, decay=tuple(decays), warmup=warmup), labels)
    if len(decays) != 1:
        raise ValueError(
            f"method {name!r} switches one EMA into the model; give one decay, got {decays}"
        )
    if name == "sema":
        ema = EMA(model, decay=decays[0], warmup=warmup)
        return Method(
            name, ema, labels, switch_every, switch_start, reset_optimizer=reset_optimizer
        )
    # sema-openmixup: the official warm-up, linear from 0.9 * decay over the first 5 epochs
    ema = EMA(model, decay=decays[0], warmup=LinearWarmup(steps=5 * steps_per_epoch, ratio=0.9))
    return Method(
        name,
        ema,
        labels,
        Interval(switch_every.n, "epochs"),
        switch_start,
        openmixup=True,
        reset_optimizer=reset_optimizer,
    )
