"""When Switch EMA copies the average into the model: a rule the averager owns.

Switch EMA trains as usual, keeps an EMA of the weights and, every so often, copies the EMA
into the model being trained. A :class:`SwitchRule` says when; it is a setting of the
averager (``EMA(model, decay=0.99, switch="1e")``), whose clock decides when it fires:

* ``every``: an :class:`Interval` that carries its unit, epochs (``"1e"``, ``"5e"``) or
  optimizer steps (``"50s"``). A bare number is refused: write the unit.
* ``start``: a :class:`Duration`, no switch before this much training (``"5e"``: five
  epochs complete; ``"1000s"``: a thousand optimizer steps; ``"0"``: from the start);
* ``index``: which of the averager's averages is switched in;
* ``reset_optimizer``: also clear the optimizer's state (momentum, Adam moments) of the
  switched parameters (pass the optimizer to ``update`` / ``end_epoch``);
* ``inverted``: reproduce the official OpenMixup ``SwitchEMAHook``, whose test is inverted: it
  switches at every epoch end that is *not* due (rules in epochs only).

With ``s`` the optimizer steps done and ``e`` the epochs complete, a rule in steps fires after
the update that moves ``s`` past a multiple of ``n`` (a jump over several multiples fires once)
once started; a rule in epochs fires at the end-of-epoch call that completes epoch ``e`` when
``e % n == 0`` once started. Started means ``e >= start`` for a start in epochs and
``s >= start`` for a start in steps (``s`` after the step, ``e`` before its epoch ends).

    >>> rule = SwitchRule("2e", start="1e")
    >>> rule.every, rule.start, rule.text
    (Interval(n=2, unit='epochs'), Duration(n=1, unit='epochs'), '2e from 1e')
    >>> SwitchRule.from_dict(rule.to_dict()) == rule
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ._checks import check_int

__all__ = ["Duration", "Interval", "SwitchRule", "parse_duration", "parse_interval", "as_rule"]

UNITS = ("epochs", "steps")
_COUNT = re.compile(r"^\s*(\d+)\s*(e|ep|epoch|epochs|s|st|step|steps)?\s*$")


def _match(text: Any, what: str, examples: str, legacy_epochs: bool) -> tuple[int, str]:
    m = _COUNT.match(str(text)) if not isinstance(text, bool) else None
    if m is None:
        raise ValueError(
            f"{what} must be a count of epochs or optimizer steps ({examples}), got {text!r}"
        )
    n = int(m.group(1))
    if m.group(2) is None and n != 0 and not legacy_epochs:
        raise ValueError(
            f"{what} {text!r} has no unit: write '{n}e' for {n} epoch(s) or '{n}s' for {n} "
            "optimizer step(s)"
        )
    return n, "steps" if (m.group(2) or "e").startswith("s") else "epochs"


@dataclass(frozen=True)
class Duration:
    """``n`` epochs or optimizer steps (``unit`` is ``"epochs"`` or ``"steps"``); may be zero."""

    n: int
    unit: str = "epochs"

    def __post_init__(self) -> None:
        check_int(self.n, "duration", minimum=0)
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")

    def steps(self, steps_per_epoch: int) -> int:
        """The duration in optimizer steps."""
        return self.n * (steps_per_epoch if self.unit == "epochs" else 1)

    @property
    def text(self) -> str:
        """The short form the parsers read back: ``"5e"``, ``"1000s"`` or ``"0"``."""
        return f"{self.n}{self.unit[0]}" if self.n else "0"

    def __str__(self) -> str:
        return f"{self.n} {self.unit[:-1] if self.n == 1 else self.unit}"


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
        """The short form :func:`parse_interval` reads back: ``"5e"`` or ``"50s"``."""
        return f"{self.n}{self.unit[0]}"


def parse_duration(text: str | int | Duration, *, legacy_epochs: bool = False) -> Duration:
    """``"5e"`` -> 5 epochs; ``"1000s"`` -> 1000 steps; ``"0"`` -> none.

    A bare non-zero number is refused, except with ``legacy_epochs=True`` (the lab's saved
    configurations and recipes, where it always meant epochs).
    """
    if isinstance(text, Duration):
        return text
    n, unit = _match(text, "duration", "'5e', '1000s' or '0'", legacy_epochs)
    return Duration(n, unit)


def parse_interval(text: str | Interval, *, legacy_epochs: bool = False) -> Interval:
    """``"1e"``/``"1epoch"`` -> every epoch; ``"50s"``/``"50steps"`` -> every 50 steps.

    A bare number (``1``, ``"1"``) is refused with what to write, except with
    ``legacy_epochs=True``, which reads it as epochs (the lab's saved configurations).
    """
    if isinstance(text, Interval):
        return text
    n, unit = _match(text, "switch interval", "'1e', '50s'", legacy_epochs)
    if n < 1:
        raise ValueError(f"switch interval must be at least 1 epoch or step, got {text!r}")
    return Interval(n, unit)


@dataclass(frozen=True)
class SwitchRule:
    """When the averager switches: ``every`` interval from ``start`` on (see the module doc).

    ``every`` and ``start`` accept their text (``"5e"``, ``"50s"``, ``"0"``).
    """

    every: Interval
    start: Duration = Duration(0)
    index: int = 0
    reset_optimizer: bool = False
    inverted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "every", parse_interval(self.every))
        object.__setattr__(self, "start", parse_duration(self.start))
        check_int(self.index, "switch index", minimum=0)
        for name in ("reset_optimizer", "inverted"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.inverted and self.every.unit != "epochs":
            raise ValueError(
                f"inverted=True reproduces the OpenMixup hook, which switches at epoch ends; "
                f"its interval must be in epochs ('{self.every.n}e'), got {self.every.text!r}"
            )

    @property
    def text(self) -> str:
        """``"2e from 1e"``: the interval and the start in their short forms."""
        return f"{self.every.text} from {self.start.text}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "every": self.every.text,
            "start": self.start.text,
            "index": self.index,
            "reset_optimizer": self.reset_optimizer,
            "inverted": self.inverted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchRule:
        d = dict(d)
        if "start_epoch" in d:  # states saved before the start carried its unit
            d["start"] = f"{d.pop('start_epoch')}e"
        return cls(**d)


def as_rule(switch: Any) -> SwitchRule | None:
    """``None`` (never), a :class:`SwitchRule`, or its interval text (``"1e"``, ``"50s"``)."""
    if switch is None or isinstance(switch, SwitchRule):
        return switch
    if isinstance(switch, (str, int, Interval)) and not isinstance(switch, bool):
        # the text is parsed in __post_init__ (a bare number is refused there, with what to write)
        return SwitchRule(switch)  # type: ignore[arg-type]
    raise TypeError(
        f"switch must be None, a SwitchRule or an interval such as '1e' or '50s', got {switch!r}"
    )
