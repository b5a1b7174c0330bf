"""Lengths of training in the lab's settings: the library's durations and intervals, read as
the lab has always read them.

The library's :func:`switchema.switching.parse_duration` / ``parse_interval`` refuse a bare
number (write ``"5e"`` or ``"50s"``). The lab's saved configurations and recipes were written
when a bare number counted epochs, and a job's id depends on the text; so here a bare number
still counts epochs, and ``"1"`` and ``"1e"`` are the same setting for every rule of the run.

    >>> d = parse_duration("5e")
    >>> d.steps(steps_per_epoch=40), d.text, str(parse_duration("1000s"))
    (200, '5e', '1000 steps')
    >>> parse_interval("1") == parse_interval("1e")
    True
"""

from __future__ import annotations

from .. import switching
from ..switching import Duration, Interval

__all__ = ["Duration", "Interval", "parse_duration", "parse_interval"]


def parse_duration(text: str | int | Duration) -> Duration:
    """``"5"``/``"5e"``/``5`` -> 5 epochs; ``"1000s"`` -> 1000 steps; ``"0"``."""
    return switching.parse_duration(text, legacy_epochs=True)


def parse_interval(text: str | int | Interval) -> Interval:
    """``"1"``/``"1e"`` -> every epoch; ``"50s"`` -> every 50 steps."""
    return switching.parse_interval(text, legacy_epochs=True)
