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

The closed forms of the means and variances, and the ordering of the variances over a grid,
are in :mod:`~switchema.analysis.nqm_closed_forms` (with their derivations); the Monte-Carlo
simulator that checks them is in :mod:`~switchema.analysis.nqm_simulation`. This module
gathers both. Everything depends on ``eta`` and ``h`` only through ``a = eta*h`` (and on ``s2``
as a scale), so orderings are functions of ``(a, b, k)`` alone.

Example::

    >>> from switchema.analysis import nqm
    >>> float(nqm.v_sgd(0.5, 1.0, 1.0))
    0.3333333333333333
    >>> sim = nqm.simulate(0.5, 1.0, 1.0, 0.9, 10, steps=400, chains=500, coords=2, seed=0)
    >>> est = nqm.stationary_variances(sim)
    >>> sorted(est)
    ['ema', 'sema', 'sema_step', 'sgd']
"""

from __future__ import annotations

from .nqm_closed_forms import (
    mean_trajectories,
    ordering_grid,
    relaxation_steps,
    rho,
    v_ema,
    v_sema,
    v_sema_step,
    v_sgd,
    variance_trajectories,
    w_sum,
)
from .nqm_simulation import (
    METHODS,
    NQMSimulation,
    check_simulation,
    compare_trajectories,
    simulate,
    stationary_variances,
)

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
