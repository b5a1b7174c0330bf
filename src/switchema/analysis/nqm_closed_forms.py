r"""The noisy quadratic model's closed forms: means and variances of SGD, its EMA and Switch
EMA (SEMA), per step and stationary, and where the ordering ``V_SEMA <= V_EMA <= V_SGD`` holds.
The model is stated in :mod:`switchema.analysis.nqm`; :mod:`switchema.analysis.nqm_simulation`
checks these formulas by Monte Carlo.

Closed forms (``g_n = (b**n - r**n) / (b - r) = sum_{j<n} b**j r**(n-1-j)``, ``g_n = n b**(n-1)``
when ``b == r``; ``q = (1 - b)**2 * a**2 * s2``):

* Means, from ``x_0 = e_0 = m0`` (the noise has mean zero)::

      E x_t (SGD)            = r**t * m0
      E e_t (EMA)            = rho(t) * m0,  rho(t) = b**t + (1 - b) * r * g_t
      E e_{nk} (SEMA)        = rho(k)**n * m0                  (right after the n-th switch)
      E e_{nk+j}, E x_{nk+j} = rho(j) * rho(k)**n * m0,  r**j * rho(k)**n * m0   (0 <= j < k)

  ``rho(t)`` is the weight of the starting point in the EMA after ``t`` steps: ``e_t = rho(t)
  x_0 + noise`` because ``e_t = b**t x_0 + (1 - b) sum_{m=1..t} b**(t-m) r**m x_0 + noise``.
  For large ``t`` (``|r| < b``), ``rho(t) ~ C b**t`` with ``C = b (1 - r) / (b - r)``, so SEMA's
  bias after n periods, ``rho(k)**n ~ C**n b**(nk)``, is ``C**(n-1)`` times EMA's: larger
  (slower decay) when ``C > 1``, i.e. ``0 < r`` (``a < 1``), and smaller when ``r < 0``.

* Variances, from a deterministic start (the noise ``c_j`` enters ``e_t`` with the
  coefficient ``(1 - b) a g_{t-j+1}``)::

      Var x_t (SGD)  = V_SGD * (1 - r**(2t)),      V_SGD  = a s2 / (2 - a)
      Var e_t (EMA)  = q * W(t),                   W(t)   = sum_{n=1..t} g_n**2
      V_EMA  = q * W(inf) = (1 - b)(1 + b r) / ((1 + b)(1 - b r)) * V_SGD
      Var e_{nk} (SEMA, right after the n-th switch) = V_SEMA * (1 - rho(k)**(2n)),
      V_SEMA = q * W(k) / (1 - rho(k)**2)
      Var e_{nk+j} = rho(j)**2 Var e_{nk} + q W(j);
      Var x_{nk+j} = r**(2j) Var e_{nk} + V_SGD (1 - r**(2j))   (SEMA's online weights)

  The SEMA recursion follows from the switch: right after it ``x == e``, so one period maps the
  switched point ``z`` to ``rho(k) z + (noise of variance q W(k))``, an AR(1) in the period index.
  The stationary variance of SEMA's average *at every step* (the time average over a period) is
  ``V_SEMA_step = (1/k) sum_{j=1..k} [rho(j)**2 V_SEMA + q W(j)]``.

These are the formulas of ``shared/papers.md`` section 3; they agree with the simulation of
:mod:`switchema.analysis.nqm_simulation` (see ``tests/test_nqm.py``). Everything depends on
``eta`` and ``h`` only through ``a = eta*h`` (and on ``s2`` as a scale), so orderings are
functions of ``(a, b, k)`` alone.

Example: with ``eta h = 0.5`` the SGD variance is ``0.5 / 1.5 = 1/3`` of the noise, its EMA's is
smaller, and SEMA's right after a switch smaller still::

    >>> v = [float(f(0.5, 1.0, 1.0, *args)) for f, args in
    ...      ((v_sgd, ()), (v_ema, (0.9,)), (v_sema, (0.9, 10)))]
    >>> [round(x, 4) for x in v], v[2] <= v[1] <= v[0]
    ([0.3333, 0.0463, 0.0451], True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._nqm_checks import (
    check_array,
    check_decay,
    check_eta_h,
    check_int_min,
    check_k,
    check_noise,
    check_step,
)

__all__ = [
    "mean_trajectories",
    "ordering_grid",
    "relaxation_steps",
    "rho",
    "v_ema",
    "v_sema",
    "v_sema_step",
    "v_sgd",
    "variance_trajectories",
    "w_sum",
]


def _g(b: np.ndarray, r: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``g_n = (b**n - r**n) / (b - r)`` (``n b**(n-1)`` when ``b == r``), for integer ``n >= 1``.

    Symmetric in ``(b, r)``. When both are positive it is computed as ``hi**(n-1) *
    expm1(n L) / expm1(L)`` with ``L = log(lo / hi) <= 0``: no cancellation as ``b -> r`` and no
    overflow. Otherwise ``b - r`` is at least ``max(|b|, |r|)``, and the plain quotient is exact
    enough.
    """
    b, r, n = np.broadcast_arrays(b, r, np.asarray(n, dtype=float))
    out = np.empty(b.shape)
    same = b == r
    pos = (b > 0) & (r > 0) & ~same
    rest = ~same & ~pos
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        out[same] = n[same] * b[same] ** (n[same] - 1)
        hi = np.maximum(b[pos], r[pos])
        lo = np.minimum(b[pos], r[pos])
        log_q = np.log(lo / hi)
        out[pos] = hi ** (n[pos] - 1) * (np.expm1(n[pos] * log_q) / np.expm1(log_q))
        out[rest] = (b[rest] ** n[rest] - r[rest] ** n[rest]) / (b[rest] - r[rest])
    return out


def _period_sums(
    b: np.ndarray, r: np.ndarray, k: np.ndarray, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W(k), sum_{j=1..k} rho(j)**2, sum_{j=1..k} W(j))`` broadcast over ``b, r, k``.

    ``sum_{j<=k} W(j) = sum_{n<=k} (k - n + 1) g_n**2``. The sums run over ``n`` in chunks, so a
    large ``k`` costs time, not memory.
    """
    b, r, k = np.broadcast_arrays(b, r, k)
    w = np.zeros(b.shape)
    rho2 = np.zeros(b.shape)
    wsum = np.zeros(b.shape)
    kmax = int(k.max())
    for start in range(1, kmax + 1, chunk):
        n = np.arange(start, min(start + chunk, kmax + 1), dtype=float)
        n = n.reshape((-1,) + (1,) * b.ndim)  # (chunk, *shape)
        g = _g(b[None], r[None], n)
        live = n <= k[None]
        g2 = np.where(live, g * g, 0.0)
        with np.errstate(under="ignore"):
            rho_n = b[None] ** n + (1 - b[None]) * r[None] * g
        w += g2.sum(0)
        rho2 += np.where(live, rho_n**2, 0.0).sum(0)
        wsum += (g2 * (k[None] - n + 1)).sum(0)
    return w, rho2, wsum


def v_sgd(eta: Any, h: Any, s2: Any) -> np.ndarray:
    """Stationary variance of SGD's iterate: ``V_SGD = eta h s2 / (2 - eta h)``.

    From ``x_t = r x_{t-1} + eta h c_t``: ``V = r**2 V + (eta h)**2 s2``. Arrays broadcast.
    """
    a, _ = check_step(eta, h)
    return a * check_noise(s2) / (2 - a)


def v_ema(eta: Any, h: Any, s2: Any, b: Any) -> np.ndarray:
    """Stationary variance of the EMA of the SGD iterates (no switching)::

        V_EMA = (1 - b)(1 + b r) / ((1 + b)(1 - b r)) * V_SGD,   r = 1 - eta h

    From ``e = (1 - b) sum_j b**j x_{t-j}`` and ``Cov(x_t, x_{t+d}) = r**|d| V_SGD``.
    """
    a, r = check_step(eta, h)
    b = check_decay(b)
    return (1 - b) * (1 + b * r) / ((1 + b) * (1 - b * r)) * (a * check_noise(s2) / (2 - a))


def rho(eta: Any, h: Any, b: Any, k: Any) -> np.ndarray:
    """Weight of the starting point in the EMA after ``k`` SGD steps (EMA started at ``x_0``)::

        rho(k) = b**k + (1 - b) r (b**k - r**k) / (b - r)

    It is SEMA's contraction per period and, with ``k = t``, the EMA's mean ``rho(t) m0``.
    """
    _, r = check_step(eta, h)
    b = check_decay(b)
    k = check_k(k)
    with np.errstate(under="ignore"):
        return b**k + (1 - b) * r * _g(b, r, k)


def w_sum(eta: Any, h: Any, b: Any, k: Any) -> np.ndarray:
    """``W(k) = sum_{n=1..k} ((b**n - r**n) / (b - r))**2`` (``sum (n b**(n-1))**2`` if ``b == r``)."""
    _, r = check_step(eta, h)
    b = check_decay(b)
    k = check_k(k)
    return _period_sums(b, r, k)[0]


def v_sema(eta: Any, h: Any, s2: Any, b: Any, k: Any) -> np.ndarray:
    """Stationary variance of SEMA right after a switch (``x == e``)::

        V_SEMA = (1 - b)**2 (eta h)**2 s2 W(k) / (1 - rho(k)**2)

    One period is an AR(1) map of the switched point ``z``: ``z' = rho(k) z + noise`` with
    noise variance ``(1 - b)**2 (eta h)**2 s2 W(k)``.
    """
    a, r = check_step(eta, h)
    b = check_decay(b)
    k = check_k(k)
    s2 = check_noise(s2)
    w, _, _ = _period_sums(b, r, k)
    with np.errstate(under="ignore"):
        rk = b**k + (1 - b) * r * _g(b, r, k)
    return (1 - b) ** 2 * a**2 * s2 * w / (1 - rk**2)


def v_sema_step(eta: Any, h: Any, s2: Any, b: Any, k: Any) -> np.ndarray:
    """Stationary variance of SEMA's average averaged over every step of a period::

        V_SEMA_step = (1/k) sum_{j=1..k} [rho(j)**2 V_SEMA + (1 - b)**2 (eta h)**2 s2 W(j)]

    (``j = k`` is the switch itself). Not in ``papers.md``; derived the same way and checked by
    the simulation.
    """
    a, r = check_step(eta, h)
    b = check_decay(b)
    k = check_k(k)
    s2 = check_noise(s2)
    w, rho2, wsum = _period_sums(b, r, k)
    q = (1 - b) ** 2 * a**2 * s2
    with np.errstate(under="ignore"):
        rk = b**k + (1 - b) * r * _g(b, r, k)
    vs = q * w / (1 - rk**2)
    return (rho2 * vs + q * wsum) / k


def _traj_parts(eta: Any, h: Any, b: Any, k: Any, steps: Any) -> dict[str, Any]:
    a, r = check_step(eta, h)
    b = check_decay(b)
    k = int(check_k(k)) if np.ndim(k) == 0 else None
    if k is None:
        raise TypeError("k (switch interval, steps) must be a single int for trajectories")
    steps = check_int_min("steps", steps, 0)
    t = np.arange(steps + 1, dtype=float).reshape((-1,) + (1,) * np.broadcast(a, b).ndim)
    n_sw, j = np.divmod(np.arange(steps + 1), k)
    n_sw = n_sw.reshape(t.shape).astype(float)
    j = j.reshape(t.shape).astype(float)
    with np.errstate(under="ignore"):
        g_t = np.where(t > 0, _g(b, r, np.maximum(t, 1)), 0.0)  # g_0 = 0
        rho_t = b**t + (1 - b) * r * g_t
        g_j = np.where(j > 0, _g(b, r, np.maximum(j, 1)), 0.0)
        rho_j = b**j + (1 - b) * r * g_j
        rho_k = b**k + (1 - b) * r * _g(b, r, k)
    return dict(
        a=a, r=r, b=b, k=k, t=t, n=n_sw, j=j, g_t=g_t, rho_t=rho_t, rho_j=rho_j, rho_k=rho_k
    )


def mean_trajectories(
    eta: Any, h: Any, b: Any, k: int, steps: int, m0: Any = 1.0
) -> dict[str, np.ndarray]:
    """Closed-form means for ``t = 0..steps`` from ``x_0 = e_0 = m0``; the deterministic part,
    i.e. the bias when the optimum is 0::

        sgd          r**t m0
        ema          rho(t) m0
        sema         rho(j) rho(k)**n m0     at t = n k + j, 0 <= j < k (rho(k)**n at switches)
        sema_online  r**j rho(k)**n m0

    Returns arrays of shape ``(steps + 1, *broadcast(eta, h, b, m0).shape)``.
    """
    p = _traj_parts(eta, h, b, k, steps)
    m0 = check_array("m0", m0)
    r, t, n, j = p["r"], p["t"], p["n"], p["j"]
    with np.errstate(under="ignore"):
        period = p["rho_k"] ** n
        return {
            "sgd": r**t * m0,
            "ema": p["rho_t"] * m0,
            "sema": p["rho_j"] * period * m0,
            "sema_online": r**j * period * m0,
        }


def variance_trajectories(
    eta: Any, h: Any, s2: Any, b: Any, k: int, steps: int
) -> dict[str, np.ndarray]:
    """Closed-form variances for ``t = 0..steps`` from a deterministic start (module docstring)::

        sgd          V_SGD (1 - r**(2t))
        ema          q W(t),                 q = (1 - b)**2 (eta h)**2 s2
        sema         rho(j)**2 V_n + q W(j)  at t = n k + j,  V_n = V_SEMA (1 - rho(k)**(2n))
        sema_online  r**(2j) V_n + V_SGD (1 - r**(2j))

    They tend to ``V_SGD``, ``V_EMA`` and (at switches) ``V_SEMA``.
    """
    p = _traj_parts(eta, h, b, k, steps)
    s2 = check_noise(s2)
    a, r, b, t, n, j = p["a"], p["r"], p["b"], p["t"], p["n"], p["j"]
    q = (1 - b) ** 2 * a**2 * s2
    vs = a * s2 / (2 - a)
    w_t = np.cumsum(p["g_t"] ** 2, axis=0)  # W(t) for t = 0..steps, W(0) = 0
    w_k = _period_sums(b, r, np.asarray(k))[0]
    w_j = np.take_along_axis(w_t, np.broadcast_to(j.astype(int), w_t.shape), axis=0)  # W(j)
    with np.errstate(under="ignore"):
        v_switch = q * w_k / (1 - p["rho_k"] ** 2) * (1 - p["rho_k"] ** (2 * n))
        return {
            "sgd": vs * (1 - r ** (2 * t)),
            "ema": q * w_t,
            "sema": p["rho_j"] ** 2 * v_switch + q * w_j,
            "sema_online": r ** (2 * j) * v_switch + vs * (1 - r ** (2 * j)),
        }


def relaxation_steps(eta: float, h: float, b: float, k: int, tol: float = 1e-4) -> int:
    """Steps after which every variance is within a fraction ``tol`` of its stationary value
    (from a deterministic start), rounded up to a whole number of switch periods.

    SGD: ``r**(2t) <= tol``; SEMA at switches: ``rho(k)**(2n) <= tol``; EMA: ``1 - W(t)/W(inf)
    <= tol``, found on the closed-form trajectory.
    """
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    a, r = check_step(eta, h)
    b = check_decay(b)
    k = check_k(k)
    if a.ndim or b.ndim or k.ndim:
        raise TypeError("relaxation_steps takes scalar eta, h, b and k")
    a, r, b, k = float(a), float(r), float(b), int(k)

    def periods(c: float) -> float:  # smallest t with c**(2t) <= tol
        return 0.0 if abs(c) < 1e-300 else math.log(tol) / (2 * math.log(abs(c)))

    rk = float(rho(a, 1.0, b, k))
    t = max(periods(r), periods(rk) * k, 1.0)
    # EMA: W(t) approaches W(inf) like max(b, |r|)**(2t); search on the exact curve.
    horizon = int(math.ceil(2 * max(periods(r), periods(b), 1.0))) + 1
    w = np.cumsum(_g(b, r, np.arange(1, horizon + 1)) ** 2)
    w_inf = float(v_ema(a, 1.0, 1.0, b)) / ((1 - b) ** 2 * a**2)
    reached = np.nonzero(1 - w / w_inf <= tol)[0]
    t = max(t, float(reached[0] + 1 if reached.size else horizon))
    return int(math.ceil(t / k) * k)


# ----------------------------------------------------------------------------------------------
# ordering


def ordering_grid(etas_h: Any, decays: Any, ks: Any, *, rtol: float = 1e-12) -> dict[str, Any]:
    """Where does ``V_SEMA <= V_EMA <= V_SGD`` hold? Closed forms over a grid.

    The ratios depend on ``eta`` and ``h`` only through ``eta * h`` and not on ``s2`` (set to
    1). ``<=`` is tested with a relative tolerance ``rtol`` (``x <= y * (1 + rtol)``) so that
    exact ties count as holding: ``b = 0``; ``eta h = 1`` (``r = 0``), where ``V_SEMA = V_EMA``
    for every ``k``; and ``b = eta h - 1``, likewise.

    What the closed forms show (scanned numerically over ``eta h`` in (0, 2), ``b`` in [0, 1)
    and ``k`` up to 100; not proven): ``V_EMA <= V_SGD`` always; ``V_SEMA <= V_EMA`` for every
    ``b, k`` when ``eta h <= 1``; for ``eta h > 1`` (``r < 0``) ``V_SEMA > V_EMA`` exactly when
    ``b > eta h - 1 = -r``, and ``V_SEMA < V_EMA`` when ``b < eta h - 1``. The excess shrinks
    as ``k`` grows past the EMA's horizon (``rho(k) -> 0``), so a large ``k`` can make it
    smaller than ``rtol``.

    Returns plain data: the axes ``eta_h`` (A,), ``decay`` (B,), ``k`` (K,); arrays ``v_sgd``
    (A,), ``v_ema`` (A, B), ``v_sema`` and ``v_sema_step`` (A, B, K); booleans ``ema_le_sgd``
    (A, B), ``sema_le_ema``, ``holds`` (A, B, K); ``holds_all`` (A,) per ``eta * h``; and
    ``failures``: a list of ``{"eta_h", "decay", "k", "v_sgd", "v_ema", "v_sema", "broken"}``
    where ``broken`` names the inequality that fails.
    """
    a, _ = check_eta_h(np.atleast_1d(etas_h))
    b = check_decay(np.atleast_1d(decays))
    k = check_k(np.atleast_1d(np.asarray(ks)))
    if a.ndim != 1 or b.ndim != 1 or k.ndim != 1:
        raise ValueError("etas_h, decays and ks must be 1-D sequences")
    A, B, K = a[:, None, None], b[None, :, None], k[None, None, :]
    vsgd = v_sgd(a, 1.0, 1.0)
    vema = v_ema(a[:, None], 1.0, 1.0, b[None, :])
    vsema = v_sema(A, 1.0, 1.0, B, K)
    vstep = v_sema_step(A, 1.0, 1.0, B, K)
    ema_le_sgd = vema <= vsgd[:, None] * (1 + rtol)
    sema_le_ema = vsema <= vema[:, :, None] * (1 + rtol)
    holds = sema_le_ema & ema_le_sgd[:, :, None]
    failures = []
    for i, j, m in zip(*np.nonzero(~holds)):
        broken = []
        if not ema_le_sgd[i, j]:
            broken.append("V_EMA <= V_SGD")
        if not sema_le_ema[i, j, m]:
            broken.append("V_SEMA <= V_EMA")
        failures.append(
            dict(
                eta_h=float(a[i]),
                decay=float(b[j]),
                k=int(k[m]),
                v_sgd=float(vsgd[i]),
                v_ema=float(vema[i, j]),
                v_sema=float(vsema[i, j, m]),
                broken=broken,
            )  # fmt: skip
        )
    return dict(
        eta_h=a, decay=b, k=k, v_sgd=vsgd, v_ema=vema, v_sema=vsema, v_sema_step=vstep,
        ema_le_sgd=ema_le_sgd, sema_le_ema=sema_le_ema, holds=holds,
        holds_all=holds.all(axis=(1, 2)), failures=failures,
    )  # fmt: skip
