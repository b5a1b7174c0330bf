"""When Switch EMA copies the average into the model: an interval, a start, which average.

Switch EMA trains as usual, keeps an EMA of the weights and, every so often, copies the EMA
into the model being trained (``averager.switch(index)``). A :class:`SwitchRule` says when:

* ``every``: an :class:`Interval`, a count of epochs (``"1"``, ``"5e"``) or of optimizer
  steps (``"50s"``);
* ``start_epoch``: no switch before this many epochs are complete;
* ``index``: which of the averager's averages is switched in;
* ``reset_optimizer``: also clear the optimizer's state (momentum, Adam moments) of the
  switched parameters.

Time is passed in by the caller, who owns the training loop (1-based counts)::

    rule = SwitchRule("5e", start_epoch=5)
    for epoch in range(1, epochs + 1):
        for batch in loader:
            ...; optimizer.step(); ema.update(); step += 1
            if rule.due(epoch=epoch, step=step):        # only for rules in steps
                ema.switch(rule.index, optimizer=optimizer if rule.reset_optimizer else None)
        if rule.due(epoch=epoch):                       # only for rules in epochs
            ema.switch(rule.index, optimizer=optimizer if rule.reset_optimizer else None)

A rule in epochs is due at the end of epoch ``e`` when ``e >= start_epoch`` and
``e % n == 0``; a rule in steps is due after step ``s`` of epoch ``e`` when
``e - 1 >= start_epoch`` (that many epochs are complete) and ``s % n == 0``.

This module imports nothing from the rest of switchema except the argument checks, so the lab
and the framework integrations can share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._checks import check_int

__all__ = ["Interval", "SwitchRule", "parse_interval"]

UNITS = ("epochs", "steps")
_INTERVAL = re.compile(r"^\s*(\d+)\s*(e|ep|epoch|epochs|s|st|step|steps)?\s*$")


@dataclass(frozen=True)
class Interval:
    """Every ``n`` epochs or optimizer steps (``unit`` is ``"epochs"`` or ``"steps"``)."""

    n: int
    unit: str = "epochs"

    def __post_init__(self) -> None:
        check_int(self.n, "switch interval", minimum=1)
        if self.unit not in UNITS:
            raise ValueError(f"interval unit must be one of {UNITS}, got {self.unit!r}")

    def __str__(self) -> str:
        return f"{self.n} {self.unit}"

    @property
    def text(self) -> str:
        """The short form ``parse_interval`` reads back: ``"5e"`` or ``"50s"``."""
        return f"{self.n}{self.unit[0]}"


def parse_interval(text: str | int | Interval) -> Interval:
    """``"1"``/``"1e"``/``"1epoch"``/``1`` -> every epoch; ``"50s"``/``"50steps"`` -> every 50 steps."""
    if isinstance(text, Interval):
        return text
    m = _INTERVAL.match(str(text)) if not isinstance(text, bool) else None
    if not m or int(m.group(1)) < 1:
        raise ValueError(
            f"switch interval must be a positive count of epochs ('1', '5e') or steps ('50s'), got {text!r}"
        )
    unit = "steps" if (m.group(2) or "e").startswith("s") else "epochs"
    return Interval(int(m.group(1)), unit)


@dataclass(frozen=True)
class SwitchRule:
    """When to switch: ``every`` interval (epochs or steps) from ``start_epoch`` on.

    ``every`` accepts an :class:`Interval`, its text (``"5e"``, ``"50s"``) or an int (epochs).
    """

    every: Interval
    start_epoch: int = 0
    index: int = 0
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", parse_interval(self.every))
        check_int(self.start_epoch, "switch start epoch", minimum=0)
        check_int(self.index, "switch index", minimum=0)
        if not isinstance(self.reset_optimizer, bool):
            raise TypeError(f"reset_optimizer must be True or False, got {self.reset_optimizer!r}")

    def started(self, epochs_done: int) -> bool:
        """Whether switching may happen once ``epochs_done`` epochs are complete."""
        return epochs_done >= self.start_epoch

    def due(self, *, epoch: int, step: int | None = None) -> bool:
        """Is a switch due at the end of epoch ``epoch``, or (with ``step``) after that step?

        ``epoch`` is the 1-based epoch; ``step`` the 1-based count of optimizer steps since
        training began. A rule in epochs is never due after a step, and a rule in steps never
        at an epoch end.
        """
        if step is None:
            return self.every.unit == "epochs" and self.started(epoch) and epoch % self.every.n == 0
        return self.every.unit == "steps" and self.started(epoch - 1) and step % self.every.n == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "every": self.every.text,
            "start_epoch": self.start_epoch,
            "index": self.index,
            "reset_optimizer": self.reset_optimizer,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchRule:
        return cls(**d)
