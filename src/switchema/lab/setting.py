"""What one setting of :class:`~switchema.lab.config.StudyConfig` is: its metadata.

A :class:`Setting` rides in a dataclass field's metadata (made by :func:`setting`) and says
everything the flags, grid checks, job keys and messages need: help text, unit, allowed values,
the methods it affects, other names, when it applies, and the value run folders written before
it existed used.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._checks import is_int, is_real
from .units import parse_duration, parse_interval

__all__ = ["ALWAYS", "KINDS", "Setting", "setting"]

TASK_DEFAULT = "the task's recommended value (see `switchema tasks`)"
KINDS = ("str", "int", "float", "bool", "interval", "duration", "options")
_EXPECTED = {
    "int": "an int",
    "float": "a number",
    "bool": "true/false",
    "str": "a string",
    "interval": "a string",
    "duration": "a string",
    "options": "a table of option = value",
}


class _Always:
    """``Setting.before`` of a setting that run folders have always had."""

    def __repr__(self) -> str:
        return "ALWAYS"


ALWAYS = _Always()


@dataclass(frozen=True)
class Setting:
    """What one field of :class:`StudyConfig` is (its metadata)."""

    help: str
    kind: str  # one value's type: see KINDS ("interval": '1', '5e', '50s'; "duration": the same
    # or '0'; "options": a dict)
    unit: str = ""
    choices: tuple[str, ...] = ()  # allowed values of a "str" setting (empty: checked elsewhere)
    minimum: float | None = None
    maximum: float | None = None
    max_open: bool = False  # the maximum itself is not allowed
    several: bool = False  # takes one value or several at once (a tuple)
    per_cell: bool = False  # a sweep compares (methods) or repeats (seeds) them in every cell
    task_default: bool = False  # None means the task's recommended value
    optional: bool = False  # None is allowed (set when the default is None)
    methods: tuple[str, ...] | None = None  # the methods it affects (None: every method)
    aliases: tuple[str, ...] = ()  # other names, in grid files and older run folders
    flag: str | None = None  # the command-line flag, if not --name-with-dashes
    label: str | None = None  # how messages name it, if not by its name
    requirement: str | None = None  # what messages say is allowed, if not generated
    # A setting added after run folders were first written: the value those folders used. A
    # saved config without it reads as that value, and a job key leaves the setting out while
    # it has that value, so older folders still resume and find their jobs.
    before: Any = ALWAYS
    # (other setting, its values): this one applies only then (e.g. a warm-up's length, only to
    # the linear warm-up); otherwise it is left out of job keys and reports.
    requires: tuple[str, tuple[Any, ...]] | None = None

    def type_ok(self, value: Any) -> bool:
        """Whether one value has the right type (``None`` where the default is the task's)."""
        if value is None:
            return self.optional
        return {
            "int": is_int,
            "float": is_real,
            "bool": lambda v: isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "interval": lambda v: isinstance(v, str) or is_int(v),
            "duration": lambda v: isinstance(v, str) or is_int(v),
            "options": lambda v: isinstance(v, Mapping),
        }[self.kind](value)

    @property
    def expected(self) -> str:
        return _EXPECTED[self.kind]

    def describe(self) -> str:
        """What is allowed, for messages and help: 'a positive int', 'one of ...', ..."""
        if self.requirement:
            return self.requirement
        if self.choices:
            return f"one of {self.choices}"
        if self.kind == "int":
            if self.minimum == 1:
                return "a positive int"
            return "a non-negative int" if self.minimum == 0 else "an int"
        if self.kind == "float" and self.minimum is not None:
            if self.maximum is not None:
                return f"in [{self.minimum:g}, {self.maximum:g}{')' if self.max_open else ']'}"
            return f">= {self.minimum:g}"
        return self.expected

    def problem(self, name: str, value: Any) -> str | None:
        """What is wrong with one value of this setting, or None (type, range, choices)."""
        label = self.label or name
        if self.kind in ("interval", "duration"):
            try:
                (parse_interval if self.kind == "interval" else parse_duration)(value)
            except ValueError as e:
                return str(e) if self.kind == "interval" else f"{label}: {e}"
            return None
        ok = self.type_ok(value)
        if ok and value is not None and self.kind in ("int", "float"):
            ok = (self.minimum is None or value >= self.minimum) and (
                self.maximum is None
                or value < self.maximum
                or (not self.max_open and value == self.maximum)
            )
        if ok and value is not None and self.choices:
            ok = value in self.choices
        return None if ok else f"{label} must be {self.describe()}, got {value!r}"


def setting(default: Any, **meta: Any) -> Any:
    """A :class:`StudyConfig` field with ``default`` and a :class:`Setting` as its metadata."""
    info = Setting(**meta, optional=default is None)
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"setting": info})
    return field(default=default, metadata={"setting": info})
