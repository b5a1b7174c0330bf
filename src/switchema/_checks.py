"""Argument checks shared by the library, the lab and the analysis tools.

One signature for all of them: ``check_*(value, name, ...)`` returns the (normalised) value or
raises ``TypeError`` when the value has the wrong type and ``ValueError`` when it is out of
range; every message names the argument, the allowed values and what was given::

    >>> check_int(3, "update_every", minimum=1)
    3
    >>> check_int(0, "update_every", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: update_every must be a positive int, got 0

``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python, but a
flag passed as a count is a mistake).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any

__all__ = ["check_int", "check_real", "check_choice", "check_generator", "is_int", "is_real"]


def is_int(value: Any) -> bool:
    """True for Python and NumPy integers, never for ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for Python and NumPy real numbers (ints included), never for ``bool``."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_kind(minimum: int | None, maximum: int | None) -> str:
    if maximum is None:
        if minimum == 1:
            return "a positive int"
        if minimum == 0:
            return "a non-negative int"
        if minimum is not None:
            return f"an int >= {minimum}"
        return "an int"
    if minimum is None:
        return f"an int <= {maximum}"
    return f"an int in [{minimum}, {maximum}]"


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> Any:
    """``value`` as an ``int`` in ``[minimum, maximum]`` (bounds optional); ``None`` if allowed."""
    if value is None and allow_none:
        return None
    kind = _int_kind(minimum, maximum) + (" or None" if allow_none else "")
    if not is_int(value):
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_real(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """``value`` as a finite ``float`` within the bounds (``*_open`` excludes the bound)."""
    if value is None and allow_none:
        return None
    lo = "" if minimum is None else ("(" if min_open else "[") + f"{minimum}"
    hi = "" if maximum is None else f"{maximum}" + (")" if max_open else "]")
    if minimum is not None and maximum is not None:
        kind = f"a number in {lo}, {hi}"
    elif minimum is not None:
        kind = f"a number {'>' if min_open else '>='} {minimum}"
    elif maximum is not None:
        kind = f"a number {'<' if max_open else '<='} {maximum}"
    else:
        kind = "a finite number"
    if allow_none:
        kind += " or None"
    if not is_real(value):
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and (v < minimum or (min_open and v == minimum)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if maximum is not None and (v > maximum or (max_open and v == maximum)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return v


def check_choice(value: Any, name: str, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``; the error lists them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {sorted(choices, key=str)}, got {value!r}")
    return value


def check_generator(generator: Any, name: str = "generator") -> Any:
    """``generator`` if it is a ``torch.Generator`` (explicit randomness, seeded by the caller)."""
    import torch

    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(generator).__name__}")
    return generator
