"""Power-function EMA profiles and post-hoc synthesis: the math, in float64, no tensors.

A power-function EMA with exponent ``gamma`` (Karras et al., "Analyzing and Improving the
Training Dynamics of Diffusion Models", EDM2) weighs the iterates up to time ``t`` with the
profile::

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),      0 < tau <= t

tracked exactly by ``avg <- beta avg + (1 - beta) x`` with ``beta = (1 - dt / t)^(gamma + 1)``
(``t``: time after the update, ``dt``: time since the previous one): the weight an update puts on
its iterate is the profile's integral over ``(t - dt, t]``.

Its relative width (standard deviation of ``tau`` over ``t``) is
``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))``, which decreases from
``1/sqrt(12)`` at ``gamma = 0`` towards 0 (profiles with ``-1 < gamma < 0`` put infinite density
at ``tau = 0`` and are not used). Two profiles have the inner product::

    <p_a, p_b> = (ga + 1)(gb + 1) / ((ga + gb + 1) max(ta, tb)) * (ta / tb)^e,
    e = gb if ta < tb else -ga

Synthesis: snapshots ``theta_i`` with profiles ``(gamma_i, t_i)`` approximate a target profile
``(gamma_r, t_r)`` by ``sum_i x_i theta_i`` where ``A x = b``, ``A_ij = <p_i, p_j>``,
``b_i = <p_i, p_r>`` (least squares, float64).

    >>> round(gamma_to_sigma_rel(sigma_rel_to_gamma(0.05)), 12)
    0.05
    >>> round(sigma_rel_to_gamma(0.10), 4)
    6.9372
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ._checks import check_real

__all__ = [
    "SIGMA_REL_MAX",
    "gamma_to_sigma_rel",
    "sigma_rel_to_gamma",
    "sigma_rel_to_decay",
    "decay_to_sigma_rel",
    "power_beta",
    "profile_inner",
    "Fit",
    "solve_coefficients",
]

SIGMA_REL_MAX = 1.0 / math.sqrt(12.0)  # gamma = 0: a uniform average over [0, t]


def gamma_to_sigma_rel(gamma: float) -> float:
    """Relative width of the power profile with exponent ``gamma >= 0``."""
    g = check_real(gamma, "gamma", minimum=0.0)
    return math.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent of the power profile with relative width ``sigma_rel`` in ``(0, 1/sqrt(12)]``.

    The largest real root of ``g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2) = 0``.
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


def power_beta(gamma: float, t: float, dt: float) -> float:
    """Decay of one power-EMA update ending at time ``t`` after ``dt``: ``(1 - dt/t)^(gamma+1)``."""
    if t <= 0.0:
        return 0.0
    return max(1.0 - dt / t, 0.0) ** (gamma + 1.0)


def profile_inner(ga: float, ta: float, gb: float, tb: float) -> float:
    """``<p_a, p_b>``, the integral of the product of two power profiles (closed form)."""
    e = gb if ta < tb else -ga
    return (ga + 1.0) * (gb + 1.0) / ((ga + gb + 1.0) * max(ta, tb)) * (ta / tb) ** e


@dataclass(frozen=True)
class Fit:
    """Coefficients of a synthesis and how well the synthesised profile matches the target.

    ``residual`` is the relative L2 error of the profile fit, ``||sum x_i p_i - p_r|| / ||p_r||``
    (0: exact). ``outside`` says the target width lies outside the tracked widths
    (extrapolation: the fit degrades quickly there).
    """

    coefficients: np.ndarray
    residual: float
    outside: bool


def solve_coefficients(
    sources: Sequence[tuple[float, float]], target: tuple[float, float], rcond: float | None = None
) -> Fit:
    """Least-squares coefficients ``x`` with ``sum x_i p_i ~ p_target`` (float64).

    ``sources`` are the snapshots' ``(gamma, t)``, ``target`` the wanted ``(gamma, t)``.
    """
    if not sources:
        raise ValueError("synthesis needs at least one snapshot profile, got none")
    gr, tr = target
    g = np.array([s[0] for s in sources], dtype=np.float64)
    t = np.array([s[1] for s in sources], dtype=np.float64)
    n = len(sources)
    a = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            a[i, j] = profile_inner(g[i], t[i], g[j], t[j])
    b = np.array([profile_inner(g[i], t[i], gr, tr) for i in range(n)])
    x = np.linalg.lstsq(a, b, rcond=rcond)[0]
    c = profile_inner(gr, tr, gr, tr)
    err2 = max(float(x @ a @ x - 2.0 * x @ b + c), 0.0)
    widths = [gamma_to_sigma_rel(v) for v in set(g.tolist())]
    width = gamma_to_sigma_rel(gr)
    tol = 1e-9
    outside = width < min(widths) - tol or width > max(widths) + tol or tr > t.max() * (1 + tol)
    return Fit(x, math.sqrt(err2 / c), bool(outside))
