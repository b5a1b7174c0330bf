"""Lengths of training in epochs or optimizer steps: ``"5e"``, ``"1000s"``, ``"0"``.

A :class:`Duration` is how long something lasts or when it starts (an EMA's start, a decay
warm-up's length), given in the unit its user thinks in; it becomes optimizer steps once the
run knows its steps per epoch (:meth:`Duration.steps`). The text is read as switch intervals
are (:func:`switchema.switching.parse_interval`): a bare number counts epochs, ``s`` marks
steps; unlike an interval, a duration may be zero.

    >>> d = parse_duration("5e")
    >>> d.steps(steps_per_epoch=40), d.text, str(parse_duration("1000s"))
    (200, '5e', '1000 steps')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Duration", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+)\s*(e|ep|epoch|epochs|s|st|step|steps)?\s*$")


@dataclass(frozen=True)
class Duration:
    """``n`` epochs or optimizer steps (``unit`` is ``"epochs"`` or ``"steps"``)."""

    n: int
    unit: str = "epochs"

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 0:
            raise ValueError(f"a duration is a non-negative count, got {self.n!r}")
        if self.unit not in ("epochs", "steps"):
            raise ValueError(f"duration unit must be 'epochs' or 'steps', got {self.unit!r}")

    def steps(self, steps_per_epoch: int) -> int:
        """The duration in optimizer steps."""
        return self.n * (steps_per_epoch if self.unit == "epochs" else 1)

    @property
    def text(self) -> str:
        """The short form :func:`parse_duration` reads back: ``"5e"``, ``"1000s"`` or ``"0"``."""
        return f"{self.n}{self.unit[0]}" if self.n else "0"

    def __str__(self) -> str:
        return f"{self.n} {self.unit[:-1] if self.n == 1 else self.unit}"


def parse_duration(text: str | int | Duration) -> Duration:
    """``"5"``/``"5e"``/``5`` -> 5 epochs; ``"1000s"``/``"1000steps"`` -> 1000 steps; ``"0"``."""
    if isinstance(text, Duration):
        return text
    m = _DURATION.match(str(text)) if not isinstance(text, bool) else None
    if not m:
        raise ValueError(
            f"expected a count of epochs ('5e', or a bare '5') or of optimizer steps ('1000s'), "
            f"got {text!r}"
        )
    unit = "steps" if (m.group(2) or "e").startswith("s") else "epochs"
    return Duration(int(m.group(1)), unit)
