r"""The noisy quadratic model (NQM): closed forms and a Monte-Carlo simulator for SGD, EMA and
Switch EMA (SEMA).

Model, per coordinate (coordinates are independent)::

    loss_t(x) = 0.5 * h * (x - c_t)**2,    c_t ~ N(0, s2), drawn fresh every step
    SGD:  x_t = x_{t-1} - eta * h * (x_{t-1} - c_t) = r * x_{t-1} + a * c_t
          with a = eta * h (the step in units of the curvature) and r = 1 - a
    EMA:  e_t = b * e_{t-1} + (1 - b) * x_t          (after every SGD step; e_0 = x_0)
    SEMA: the EMA above, and every k steps (t = k, 2k, ...) the online weights are reset,
          x_t <- e_t, after the EMA update; from then on x and e evolve as above.

The EMA of the plain EMA method never feeds back into ``x``: SGD and EMA share one trajectory.
SGD is stable iff ``0 < a < 2`` (``|r| < 1``).

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

These are the formulas of ``shared/papers.md`` section 3; they agree with the simulation below
(see ``tests/test_nqm.py``). Everything depends on ``eta`` and ``h`` only through ``a = eta*h``
(and on ``s2`` as a scale), so orderings are functions of ``(a, b, k)`` alone.

Example::

    >>> from switchema.analysis import nqm
    >>> float(nqm.v_sgd(0.5, 1.0, 1.0))
    0.3333333333333333
    >>> sim = nqm.simulate(0.5, 1.0, 1.0, 0.9, 10, steps=400, chains=500, coords=2, seed=0)
    >>> est = nqm.stationary_variances(sim)
    >>> sorted(est)
    ['ema', 'sema', 'sema_step', 'sgd']

(Over 500 lines on purpose: the closed forms and the simulator that checks them belong
together, and their docstrings carry the derivations.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._checks import is_int

__all__ = [
    "METHODS",
    "NQMSimulation",
    "compare_trajectories",
    "mean_trajectories",
    "ordering_grid",
    "relaxation_steps",
    "rho",
    "check_simulation",
    "simulate",
    "stationary_variances",
    "v_ema",
    "v_sema",
    "v_sema_step",
    "v_sgd",
    "variance_trajectories",
    "w_sum",
]

#: Trajectories recorded at every step. ``sema`` is SEMA's average (equal to its online weights
#: right after a switch), ``sema_online`` SEMA's online weights.
METHODS = ("sgd", "ema", "sema", "sema_online")

# ----------------------------------------------------------------------------------------------
# input checks


def _array(name: str, value: Any) -> np.ndarray:
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


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> Any:
    return np.broadcast_to(arr, bad.shape)[bad].flat[0].item()


def _check_positive(name: str, value: Any) -> np.ndarray:
    arr = _array(name, value)
    bad = ~(arr > 0)
    if bad.any():
        raise ValueError(f"{name} must be positive, got {_first_bad(arr, bad)!r}")
    return arr


def _check_step(eta: Any, h: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(a, r)`` with ``a = eta * h`` checked to lie in (0, 2)."""
    eta = _check_positive("eta (learning rate)", eta)
    h = _check_positive("h (curvature)", h)
    a = eta * h
    bad = ~(a < 2)
    if bad.any():
        raise ValueError(
            f"eta * h must be in (0, 2) for SGD to be stable (|1 - eta*h| < 1), "
            f"got eta * h = {_first_bad(a, bad)!r}"
        )
    return a, 1.0 - a


def _check_eta_h(etas_h: Any) -> tuple[np.ndarray, np.ndarray]:
    a = _array("eta * h", etas_h)
    bad = ~((a > 0) & (a < 2))
    if bad.any():
        raise ValueError(
            f"eta * h must be in (0, 2) for SGD to be stable, got {_first_bad(a, bad)!r}"
        )
    return a, 1.0 - a


def _check_decay(b: Any) -> np.ndarray:
    arr = _array("decay b", b)
    bad = ~((arr >= 0) & (arr < 1))
    if bad.any():
        raise ValueError(f"decay b must be in [0, 1), got {_first_bad(arr, bad)!r}")
    return arr


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    # switchema._checks.check_int would say "a positive int"; these messages name the bound.
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_k(k: Any) -> np.ndarray:
    """Switch interval(s): a positive int or an array of positive ints."""
    if is_int(k):
        return np.asarray(_check_int("k (switch interval, steps)", k), dtype=np.int64)
    arr = np.asarray(k)
    if arr.dtype.kind not in "iu" or arr.size == 0:
        raise TypeError(f"k (switch interval, steps) must be a positive int or ints, got {k!r}")
    bad = arr < 1
    if bad.any():
        raise ValueError(f"k (switch interval, steps) must be >= 1, got {arr[bad].flat[0]!r}")
    return arr.astype(np.int64)


def _check_noise(s2: Any) -> np.ndarray:
    return _check_positive("s2 (noise variance)", s2)


# ----------------------------------------------------------------------------------------------
# closed forms


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
    a, _ = _check_step(eta, h)
    return a * _check_noise(s2) / (2 - a)


def v_ema(eta: Any, h: Any, s2: Any, b: Any) -> np.ndarray:
    """Stationary variance of the EMA of the SGD iterates (no switching)::

        V_EMA = (1 - b)(1 + b r) / ((1 + b)(1 - b r)) * V_SGD,   r = 1 - eta h

    From ``e = (1 - b) sum_j b**j x_{t-j}`` and ``Cov(x_t, x_{t+d}) = r**|d| V_SGD``.
    """
    a, r = _check_step(eta, h)
    b = _check_decay(b)
    return (1 - b) * (1 + b * r) / ((1 + b) * (1 - b * r)) * (a * _check_noise(s2) / (2 - a))


def rho(eta: Any, h: Any, b: Any, k: Any) -> np.ndarray:
    """Weight of the starting point in the EMA after ``k`` SGD steps (EMA started at ``x_0``)::

        rho(k) = b**k + (1 - b) r (b**k - r**k) / (b - r)

    It is SEMA's contraction per period and, with ``k = t``, the EMA's mean ``rho(t) m0``.
    """
    _, r = _check_step(eta, h)
    b = _check_decay(b)
    k = _check_k(k)
    with np.errstate(under="ignore"):
        return b**k + (1 - b) * r * _g(b, r, k)


def w_sum(eta: Any, h: Any, b: Any, k: Any) -> np.ndarray:
    """``W(k) = sum_{n=1..k} ((b**n - r**n) / (b - r))**2`` (``sum (n b**(n-1))**2`` if ``b == r``)."""
    _, r = _check_step(eta, h)
    b = _check_decay(b)
    k = _check_k(k)
    return _period_sums(b, r, k)[0]


def v_sema(eta: Any, h: Any, s2: Any, b: Any, k: Any) -> np.ndarray:
    """Stationary variance of SEMA right after a switch (``x == e``)::

        V_SEMA = (1 - b)**2 (eta h)**2 s2 W(k) / (1 - rho(k)**2)

    One period is an AR(1) map of the switched point ``z``: ``z' = rho(k) z + noise`` with
    noise variance ``(1 - b)**2 (eta h)**2 s2 W(k)``.
    """
    a, r = _check_step(eta, h)
    b = _check_decay(b)
    k = _check_k(k)
    s2 = _check_noise(s2)
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
    a, r = _check_step(eta, h)
    b = _check_decay(b)
    k = _check_k(k)
    s2 = _check_noise(s2)
    w, rho2, wsum = _period_sums(b, r, k)
    q = (1 - b) ** 2 * a**2 * s2
    with np.errstate(under="ignore"):
        rk = b**k + (1 - b) * r * _g(b, r, k)
    vs = q * w / (1 - rk**2)
    return (rho2 * vs + q * wsum) / k


def _traj_parts(eta: Any, h: Any, b: Any, k: Any, steps: Any) -> dict[str, Any]:
    a, r = _check_step(eta, h)
    b = _check_decay(b)
    k = int(_check_k(k)) if np.ndim(k) == 0 else None
    if k is None:
        raise TypeError("k (switch interval, steps) must be a single int for trajectories")
    steps = _check_int("steps", steps, 0)
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
    m0 = _array("m0", m0)
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
    s2 = _check_noise(s2)
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
    a, r = _check_step(eta, h)
    b = _check_decay(b)
    k = _check_k(k)
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
# simulation


@dataclass
class NQMSimulation:
    """Result of :func:`simulate`.

    ``mean[m]`` and ``var[m]`` are ``(steps + 1, coords)`` arrays over chains (``var`` unbiased,
    ddof=1) for every method ``m`` in :data:`METHODS`; row ``t`` is after step ``t``, row 0 the
    start. ``switch_steps`` lists the steps right after which SEMA switched; ``var["sema"]`` at
    those rows is the variance right after a switch.

    ``unit_var[m]`` (``(chains, coords)``) is each chain's time average, after ``burn_in``, of
    the squared deviation from the across-chain mean at the same step (times ``chains /
    (chains - 1)``): for ``sgd`` and ``ema`` over steps ``burn_in+1..steps``, for ``sema`` over
    the switches in that range, for ``sema_step`` (SEMA's average at every step) over the whole
    periods in it. Chains are independent, so their spread gives the Monte-Carlo error.
    """

    params: dict[str, Any]
    steps: int
    burn_in: int
    switch_steps: np.ndarray
    mean: dict[str, np.ndarray]
    var: dict[str, np.ndarray]
    unit_var: dict[str, np.ndarray]
    samples_per_unit: dict[str, int] = field(default_factory=dict)

    @property
    def homogeneous(self) -> bool:
        """True when every coordinate has the same ``h``, ``s2`` and ``m0`` (they can be pooled)."""
        p = self.params
        return all(np.ptp(np.atleast_1d(p[key])) == 0 for key in ("h", "s2", "m0"))


def _per_coord(name: str, arr: np.ndarray, coords: int) -> np.ndarray:
    if arr.ndim == 0:
        return np.full(coords, float(arr))
    if arr.shape != (coords,):
        raise ValueError(
            f"{name} must be a scalar or have shape ({coords},), got shape {arr.shape}"
        )
    return arr.astype(float)


def check_simulation(
    eta: float,
    h: Any,
    s2: Any,
    b: float,
    k: int,
    steps: int,
    chains: int,
    coords: int = 1,
    seed: int = 0,
    m0: Any = 1.0,
    burn_in: int | None = None,
) -> dict[str, Any]:
    """Check the arguments of :func:`simulate` (an error names the first bad one); returns
    them normalised (``h``, ``s2``, ``m0`` per coordinate; ``a = eta * h``, ``r = 1 - a``;
    ``burn_in`` chosen or rounded up to a multiple of ``k``)."""
    steps = _check_int("steps", steps, 1)
    chains = _check_int("chains", chains, 2)
    coords = _check_int("coords", coords, 1)
    seed = _check_int("seed", seed, 0)
    k = int(_check_k(k)) if np.ndim(k) == 0 else None
    if k is None:
        raise TypeError("k (switch interval, steps) must be a single int")
    if np.ndim(eta) or np.ndim(b):
        raise TypeError(f"eta and b must be scalars, got eta={eta!r}, b={b!r}")
    h_arr = _per_coord("h", _check_positive("h (curvature)", h), coords)
    a, r = _check_step(eta, h_arr)
    b = float(_check_decay(b))
    s2_arr = _per_coord("s2", _check_noise(s2), coords)
    m0_arr = _per_coord("m0", _array("m0", m0), coords)
    if burn_in is None:
        burn_in = max(relaxation_steps(float(eta), float(hh), b, k) for hh in np.unique(h_arr))
        if steps - burn_in < 2 * k:
            raise ValueError(
                f"steps={steps} is too short: the variances need about {burn_in} steps to become "
                f"stationary and then at least two switches (2 * k = {2 * k}); use steps >= "
                f"{burn_in + 2 * k} or pass burn_in"
            )
    else:
        burn_in = _check_int("burn_in", burn_in, 0)
        burn_in = int(math.ceil(burn_in / k) * k)
        if burn_in >= steps:
            raise ValueError(f"burn_in={burn_in} (rounded up to a multiple of k) must be < steps")
    return dict(
        steps=steps, chains=chains, coords=coords, seed=seed, k=k, h=h_arr, a=a, r=r, b=b,
        s2=s2_arr, m0=m0_arr, burn_in=burn_in,
    )  # fmt: skip


def simulate(
    eta: float,
    h: Any,
    s2: Any,
    b: float,
    k: int,
    steps: int,
    chains: int,
    coords: int,
    seed: int,
    m0: Any = 1.0,
    burn_in: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> NQMSimulation:
    """Run SGD, its EMA, and SEMA on the NQM for ``chains`` independent chains of ``coords``
    coordinates at once (tensors of shape ``(chains, coords)``; the only Python loop is over
    steps).

    Per step ``t = 1..steps``: draw ``c ~ N(0, s2)`` (one draw shared by the SGD and SEMA runs,
    common random numbers), ``x <- x - eta h (x - c)``, ``e <- b e + (1 - b) x`` in both runs, and
    in the SEMA run ``x <- e`` when ``t % k == 0``. All start at ``m0`` (``e_0 = x_0``).

    Args:
        eta: learning rate (> 0). ``h``: curvature (> 0), a scalar or one per coordinate;
            ``eta * h`` must be in (0, 2).
        s2: noise variance (> 0), scalar or per coordinate.
        b: EMA decay in [0, 1). ``k``: switch interval in steps (int >= 1).
        steps, chains (>= 2), coords: sizes. ``seed``: seeds a private ``torch.Generator``, so
            results are deterministic given the seed.
        m0: start (scalar or per coordinate).
        burn_in: steps discarded before the stationary averages; rounded up to a multiple of
            ``k``. Default: :func:`relaxation_steps` with ``tol=1e-4`` for the slowest
            coordinate (a ``ValueError`` if that leaves fewer than two switches).

    Returns:
        :class:`NQMSimulation`.
    """
    args = check_simulation(eta, h, s2, b, k, steps, chains, coords, seed, m0, burn_in)
    steps, chains, coords, seed, k = (args[n] for n in ("steps", "chains", "coords", "seed", "k"))
    h_arr, a, r, b, s2_arr, m0_arr = (args[n] for n in ("h", "a", "r", "b", "s2", "m0"))
    burn_in = args["burn_in"]

    gen = torch.Generator().manual_seed(seed)
    a_t = torch.as_tensor(a, dtype=dtype)  # (coords,)
    r_t = torch.as_tensor(r, dtype=dtype)
    sd_t = torch.as_tensor(np.sqrt(s2_arr), dtype=dtype)
    # online[0] = SGD's x, online[1] = SEMA's x; avg[0] = EMA of SGD, avg[1] = SEMA's EMA
    online = torch.as_tensor(m0_arr, dtype=dtype).expand(2, chains, coords).clone()
    avg = online.clone()
    # recorded in METHODS order: sgd, ema, sema, sema_online -> (4, chains, coords) views
    order = [(online, 0), (avg, 0), (avg, 1), (online, 1)]

    def stacked() -> torch.Tensor:
        return torch.stack([buf[i] for buf, i in order])

    means = torch.empty(steps + 1, 4, coords, dtype=dtype)
    variances = torch.empty(steps + 1, 4, coords, dtype=dtype)
    s = stacked()
    means[0], variances[0] = s.mean(1), s.var(1)
    acc = torch.zeros(4, chains, coords, dtype=dtype)  # sgd, ema, sema (switches), sema_step
    count = [0, 0, 0, 0]
    last_switch = steps - steps % k
    one_minus_b = 1.0 - b
    for t in range(1, steps + 1):
        c = torch.randn(chains, coords, generator=gen, dtype=dtype) * sd_t
        online.mul_(r_t).add_(c * a_t)  # x <- r x + eta h c, both runs (same c)
        avg.lerp_(online, one_minus_b)  # e <- b e + (1 - b) x
        switch = t % k == 0
        if switch:
            online[1].copy_(avg[1])
        s = stacked()
        mu = s.mean(1, keepdim=True)
        dev2 = (s - mu).square_()
        means[t] = mu[:, 0]
        variances[t] = dev2.sum(1) / (chains - 1)
        if t > burn_in:
            acc[:2] += dev2[:2]
            count[0] += 1
            count[1] += 1
            if switch:
                acc[2] += dev2[2]
                count[2] += 1
            if t <= last_switch:
                acc[3] += dev2[2]
                count[3] += 1
    switch_steps = np.arange(k, steps + 1, k)
    unit = (acc * (chains / (chains - 1))).numpy()
    keys = ("sgd", "ema", "sema", "sema_step")
    return NQMSimulation(
        params=dict(
            eta=float(eta),
            h=h_arr,
            s2=s2_arr,
            b=b,
            k=k,
            chains=chains,
            coords=coords,
            seed=seed,
            m0=m0_arr,
        ),  # fmt: skip
        steps=steps,
        burn_in=burn_in,
        switch_steps=switch_steps,
        mean={m: means[:, i].numpy() for i, m in enumerate(METHODS)},
        var={m: variances[:, i].numpy() for i, m in enumerate(METHODS)},
        unit_var={m: unit[i] / max(count[i], 1) for i, m in enumerate(keys)},
        samples_per_unit=dict(zip(keys, count)),
    )


def _pool_flag(sim: NQMSimulation, pool: bool | None) -> bool:
    if pool is None:
        return sim.homogeneous
    if pool and not sim.homogeneous:
        raise ValueError("pool=True needs the same h, s2 and m0 in every coordinate")
    return bool(pool)


def stationary_variances(sim: NQMSimulation, pool: bool | None = None) -> dict[str, dict[str, Any]]:
    """Stationary variances estimated from a simulation, with their Monte-Carlo standard errors,
    next to the closed forms.

    For each of ``sgd``, ``ema``, ``sema`` (right after switches) and ``sema_step`` (SEMA's
    average at every step): ``estimate`` = the mean of the chains' time averages
    ``unit_var`` (:class:`NQMSimulation`), ``se`` = their standard deviation / sqrt(number of
    chains). Averaging over time within a chain first makes the chains' values independent, so
    the standard error needs no model of the autocorrelation. ``z = (estimate - closed_form) /
    se``. With ``pool`` (default: when all coordinates share ``h``, ``s2``, ``m0``) the
    coordinates count as further chains and the values are floats, otherwise arrays over
    coordinates. ``n_units`` and ``samples_per_unit`` say how much went in.
    """
    pool = _pool_flag(sim, pool)
    p = sim.params
    closed = {
        "sgd": v_sgd(p["eta"], p["h"], p["s2"]),
        "ema": v_ema(p["eta"], p["h"], p["s2"], p["b"]),
        "sema": v_sema(p["eta"], p["h"], p["s2"], p["b"], p["k"]),
        "sema_step": v_sema_step(p["eta"], p["h"], p["s2"], p["b"], p["k"]),
    }
    out: dict[str, dict[str, Any]] = {}
    for m, cf in closed.items():
        units = sim.unit_var[m]  # (chains, coords)
        if sim.samples_per_unit.get(m, 0) == 0:
            raise ValueError(f"no samples after burn_in={sim.burn_in} for {m!r}; run more steps")
        if pool:
            flat = units.reshape(-1)
            est, se, cf = flat.mean(), flat.std(ddof=1) / math.sqrt(flat.size), cf.flat[0]
            est, se, cf, n_units = float(est), float(se), float(cf), flat.size
        else:
            est = units.mean(0)
            se = units.std(0, ddof=1) / math.sqrt(units.shape[0])
            n_units = units.shape[0]
        out[m] = {
            "estimate": est,
            "se": se,
            "closed_form": cf,
            "z": (est - cf) / se,
            "n_units": n_units,
            "samples_per_unit": sim.samples_per_unit[m],
        }
    return out


def compare_trajectories(sim: NQMSimulation, pool: bool | None = None) -> dict[str, dict]:
    """Per-step simulated means and variances against the closed forms, for each of
    :data:`METHODS`.

    Returns ``{method: {"mean", "mean_closed", "mean_se", "mean_z", "var", "var_closed",
    "var_se", "var_z"}}`` with arrays over ``t = 0..steps`` (and coordinates unless pooled).
    The standard errors are ``sqrt(var / N)`` for a mean and ``var_closed * sqrt(2 / (N - 1))``
    for a variance (exact for Gaussian samples; the NQM is linear-Gaussian). At ``t = 0``
    everything is deterministic and the z-scores are 0.
    """
    pool = _pool_flag(sim, pool)
    p = sim.params
    m_cf = mean_trajectories(p["eta"], p["h"], p["b"], p["k"], sim.steps, p["m0"])
    v_cf = variance_trajectories(p["eta"], p["h"], p["s2"], p["b"], p["k"], sim.steps)
    n = p["chains"]
    out = {}
    for m in METHODS:
        mean, var, mcf, vcf = sim.mean[m], sim.var[m], m_cf[m], v_cf[m]
        if pool:
            mean, var, mcf, vcf = mean.mean(1), var.mean(1), mcf[:, 0], vcf[:, 0]
            n = p["chains"] * p["coords"]
        mean_se = np.sqrt(vcf / n)
        var_se = vcf * math.sqrt(2 / (n - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_z = np.where(mean_se > 0, (mean - mcf) / mean_se, 0.0)
            var_z = np.where(var_se > 0, (var - vcf) / var_se, 0.0)
        out[m] = dict(
            mean=mean, mean_closed=mcf, mean_se=mean_se, mean_z=mean_z,
            var=var, var_closed=vcf, var_se=var_se, var_z=var_z,
        )  # fmt: skip
    return out


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
    a, _ = _check_eta_h(np.atleast_1d(etas_h))
    b = _check_decay(np.atleast_1d(decays))
    k = _check_k(np.atleast_1d(np.asarray(ks)))
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
