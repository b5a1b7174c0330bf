"""EMA widths: conversions between a power EMA's relative width ``sigma_rel``, its exponent
``gamma`` and the constant decay of an ordinary EMA of the same width.

A power-function EMA with exponent ``gamma`` (Karras et al., "Analyzing and Improving the
Training Dynamics of Diffusion Models", EDM2; :class:`switchema.PowerEMA`) weighs the iterates up
to time ``t`` (optimizer steps) with the profile::

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),      0 < tau <= t

Its relative width, the standard deviation of ``tau`` over ``t``, does not change as training
goes on::

    sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))

from ``1/sqrt(12)`` at ``gamma = 0`` (a uniform average) towards 0 (profiles with
``-1 < gamma < 0`` put infinite density at ``tau = 0`` and are not used). A constant-decay EMA
with decay ``d`` updated every ``update_every`` steps has a lag of standard deviation
``update_every sqrt(d) / (1 - d)`` steps, so its relative width shrinks as ``t`` grows: the two
kinds match at one ``t`` only.

* :func:`gamma_to_sigma_rel`, :func:`sigma_rel_to_gamma`: a power EMA's width and exponent;
* :func:`decay_to_sigma_rel`, :func:`sigma_rel_to_decay`: a constant decay and its width at
  step ``t``.

Example: a power EMA of width 0.05 has ``gamma ~ 16.97``; at step 100 000 a constant-decay
EMA of the same width has decay 0.9998::

    >>> from switchema.profiles import sigma_rel_to_decay, sigma_rel_to_gamma
    >>> round(sigma_rel_to_gamma(0.05), 2), round(sigma_rel_to_decay(0.05, t=100_000), 6)
    (16.97, 0.9998)
"""

from __future__ import annotations

import math

import numpy as np

from ._checks import check_real

__all__ = [
    "SIGMA_REL_MAX",
    "decay_to_sigma_rel",
    "gamma_to_sigma_rel",
    "sigma_rel_to_decay",
    "sigma_rel_to_gamma",
]

#: The widest power profile's relative width, ``1/sqrt(12)`` (``gamma = 0``).
SIGMA_REL_MAX = 1.0 / math.sqrt(12.0)  # gamma = 0: a uniform average over [0, t]


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative width of the power profile with exponent ``gamma >= 0``::

        sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))

    The profile ``p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` has the mean
    ``(gamma + 1) / (gamma + 2) t`` and the second moment ``(gamma + 1) / (gamma + 3) t^2``; their
    difference of squares over ``t^2`` is the variance above. ``gamma = 0`` (a uniform average
    over ``(0, t]``) is the widest, :data:`SIGMA_REL_MAX` ``= 1/sqrt(12)``.

    Example::

        >>> round(gamma_to_sigma_rel(0.0), 6), round(gamma_to_sigma_rel(6.94), 4)
        (0.288675, 0.1)
    """
    g = check_real(gamma, "gamma", minimum=0.0)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent of the power profile with relative width ``sigma_rel`` in ``(0, 1/sqrt(12)]``.

    Inverse of :func:`gamma_to_sigma_rel`: squaring ``s = sigma_rel`` and clearing the
    denominator gives ``s^2 (g + 2)^2 (g + 3) = g + 1``, the cubic
    ``g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2) = 0``, whose largest real root is ``gamma``.

    Example (EDM2's widths: 0.05 is a long average, 0.10 a short one)::

        >>> round(sigma_rel_to_gamma(0.05), 4), round(sigma_rel_to_gamma(0.10), 4)
        (16.9722, 6.9372)
        >>> round(gamma_to_sigma_rel(sigma_rel_to_gamma(0.05)), 12)
        0.05
    """
    s = check_real(sigma_rel, "sigma_rel", minimum=0.0, maximum=SIGMA_REL_MAX, min_open=True)
    inv = s**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    real = roots[np.abs(roots.imag) <= 1e-9 * np.maximum(1.0, np.abs(roots.real))].real
    return max(float(real.max()), 0.0)


def decay_to_sigma_rel(decay: float, t: float, update_every: int = 1) -> float:
    """Relative width at time ``t`` (optimizer steps) of a constant-decay EMA.

    A constant-decay EMA that has run long enough (``t`` well past ``update_every / (1 - d)``)
    weighs the iterate ``k`` averaging updates back with ``(1 - d) d^k``: a geometric lag with
    standard deviation ``sqrt(d) / (1 - d)`` updates, that is ``update_every * sqrt(d) / (1 - d)``
    steps; relative to ``t``, its width is that over ``t``. It grows with ``t`` as the power
    profile's does not: the two EMAs match at one ``t`` only.

    >>> round(decay_to_sigma_rel(0.999, t=100_000), 4)
    0.01
    """
    d = check_real(decay, "decay", minimum=0.0, maximum=1.0, max_open=True)
    t = check_real(t, "t", minimum=0.0, min_open=True)
    return update_every * math.sqrt(d) / ((1.0 - d) * t)


def sigma_rel_to_decay(sigma_rel: float, t: float, update_every: int = 1) -> float:
    """The constant decay whose EMA has relative width ``sigma_rel`` at time ``t`` (steps).

    Inverse of :func:`decay_to_sigma_rel`: with ``s = sigma_rel * t / update_every`` lags of one
    averaging update, ``sqrt(d) = (sqrt(1 + 4 s^2) - 1) / (2 s)``.

    >>> round(sigma_rel_to_decay(0.05, t=100_000), 6)
    0.9998
    """
    s = check_real(sigma_rel, "sigma_rel", minimum=0.0, min_open=True)
    t = check_real(t, "t", minimum=0.0, min_open=True)
    s = s * t / update_every
    u = (math.sqrt(1.0 + 4.0 * s * s) - 1.0) / (2.0 * s)
    return u * u
