"""Power-function EMA profiles and post-hoc synthesis: the math, in float64, no tensors.

A power-function EMA with exponent ``gamma`` (Karras et al., "Analyzing and Improving the
Training Dynamics of Diffusion Models", EDM2) weighs the iterates up to time ``t`` with the
profile::

    p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),      0 < tau <= t

tracked exactly by ``avg <- beta avg + (1 - beta) x`` with ``beta = (1 - dt / t)^(gamma + 1)``
(``t``: time after the update, ``dt``: time since the previous one): the weight an update puts on
its iterate is the profile's integral over ``(t - dt, t]``.

Its relative width ``sigma_rel`` and the conversions between ``sigma_rel``, ``gamma`` and a
constant decay are public, in :mod:`switchema.profiles` (re-exported here for the library's own
modules). Two profiles have the inner product::

    <p_a, p_b> = (ga + 1)(gb + 1) / ((ga + gb + 1) max(ta, tb)) * (ta / tb)^e,
    e = gb if ta < tb else -ga

Synthesis: snapshots ``theta_i`` with profiles ``(gamma_i, t_i)`` approximate a target profile
``(gamma_r, t_r)`` by ``sum_i x_i theta_i`` where ``A x = b``, ``A_ij = <p_i, p_j>``,
``b_i = <p_i, p_r>`` (least squares, float64).

    >>> profile_inner(0.0, 1.0, 0.0, 1.0)  # the uniform profile on (0, 1]: the integral of 1 * 1
    1.0
    >>> fit = solve_coefficients([(5.0, 100.0), (10.0, 100.0)], (10.0, 100.0))
    >>> [abs(round(float(x), 6)) for x in fit.coefficients], fit.residual < 1e-6, fit.outside
    ([0.0, 1.0], True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .profiles import (
    SIGMA_REL_MAX,
    decay_to_sigma_rel,
    gamma_to_sigma_rel,
    sigma_rel_to_decay,
    sigma_rel_to_gamma,
)

__all__ = [
    "SIGMA_REL_MAX",  # this and the four conversions: from switchema.profiles
    "gamma_to_sigma_rel",
    "sigma_rel_to_gamma",
    "sigma_rel_to_decay",
    "decay_to_sigma_rel",
    "power_beta",
    "profile_inner",
    "Fit",
    "solve_coefficients",
]


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
