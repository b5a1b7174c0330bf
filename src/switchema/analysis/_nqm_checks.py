"""Argument checks of the noisy-quadratic-model functions (private to
:mod:`switchema.analysis`): step sizes, decays, switch intervals and noise levels, scalars or
arrays, each error naming the first bad value and the allowed range.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import is_int

__all__ = [
    "check_array",
    "check_decay",
    "check_eta_h",
    "check_int_min",
    "check_k",
    "check_noise",
    "check_positive",
    "check_step",
    "first_bad",
]


def check_array(name: str, value: Any) -> np.ndarray:
    if isinstance(value, bool | np.bool_) or isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a real number or an array of them, got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be a real number or an array of them, got {value!r}"
        ) from None
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got {value!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr


def first_bad(arr: np.ndarray, bad: np.ndarray) -> Any:
    return np.broadcast_to(arr, bad.shape)[bad].flat[0].item()


def check_positive(name: str, value: Any) -> np.ndarray:
    arr = check_array(name, value)
    bad = ~(arr > 0)
    if bad.any():
        raise ValueError(f"{name} must be positive, got {first_bad(arr, bad)!r}")
    return arr


def check_step(eta: Any, h: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(a, r)`` with ``a = eta * h`` checked to lie in (0, 2)."""
    eta = check_positive("eta (learning rate)", eta)
    h = check_positive("h (curvature)", h)
    a = eta * h
    bad = ~(a < 2)
    if bad.any():
        raise ValueError(
            f"eta * h must be in (0, 2) for SGD to be stable (|1 - eta*h| < 1), "
            f"got eta * h = {first_bad(a, bad)!r}"
        )
    return a, 1.0 - a


def check_eta_h(etas_h: Any) -> tuple[np.ndarray, np.ndarray]:
    a = check_array("eta * h", etas_h)
    bad = ~((a > 0) & (a < 2))
    if bad.any():
        raise ValueError(
            f"eta * h must be in (0, 2) for SGD to be stable, got {first_bad(a, bad)!r}"
        )
    return a, 1.0 - a


def check_decay(b: Any) -> np.ndarray:
    arr = check_array("decay b", b)
    bad = ~((arr >= 0) & (arr < 1))
    if bad.any():
        raise ValueError(f"decay b must be in [0, 1), got {first_bad(arr, bad)!r}")
    return arr


def check_int_min(name: str, value: Any, minimum: int = 1) -> int:
    # switchema._checks.check_int would say "a positive int"; these messages name the bound.
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_k(k: Any) -> np.ndarray:
    """Switch interval(s): a positive int or an array of positive ints."""
    if is_int(k):
        return np.asarray(check_int_min("k (switch interval, steps)", k), dtype=np.int64)
    arr = np.asarray(k)
    if arr.dtype.kind not in "iu" or arr.size == 0:
        raise TypeError(f"k (switch interval, steps) must be a positive int or ints, got {k!r}")
    bad = arr < 1
    if bad.any():
        raise ValueError(f"k (switch interval, steps) must be >= 1, got {arr[bad].flat[0]!r}")
    return arr.astype(np.int64)


def check_noise(s2: Any) -> np.ndarray:
    return check_positive("s2 (noise variance)", s2)
