"""The noisy-quadratic-model study behind ``switchema nqm``, as numbers.

:func:`nqm_study` simulates one setting, compares it with the closed forms of
:mod:`switchema.analysis.nqm` and evaluates the variance ordering over a grid of step sizes,
decays and switch intervals. It returns plain numbers (a dict); writing them and drawing them
is the lab's job (:mod:`switchema.lab.nqm`, :mod:`switchema.lab.report.nqm`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import nqm

__all__ = ["DEFAULT_GRID", "ORDERING_KEYS", "check_nqm_arguments", "nqm_study"]

DEFAULT_GRID = {
    "eta_h": (0.1, 0.5, 1.0, 1.5, 1.9),
    "decay": (0.9, 0.99, 0.999),
    "k": (1, 10, 100),
}
ORDERING_KEYS = (
    "eta_h",
    "decay",
    "k",
    "v_sgd",
    "v_ema",
    "v_sema",
    "v_sema_step",
    "holds",
    "holds_all",
    "failures",
)
RTOL = 1e-12


def _grid_axes(grid: Mapping[str, Any] | None) -> dict[str, Any]:
    axes = dict(DEFAULT_GRID)
    if grid is not None:
        unknown = set(grid) - set(DEFAULT_GRID)
        if unknown:
            raise ValueError(
                f"grid keys must be among {sorted(DEFAULT_GRID)}, got {sorted(unknown)}"
            )
        axes.update(grid)
    return axes


def check_nqm_arguments(
    *,
    eta: float = 0.5,
    h: float = 1.0,
    s2: float = 1.0,
    decay: float = 0.99,
    k: int = 10,
    steps: int = 4000,
    chains: int = 2000,
    seed: int = 0,
    m0: float = 1.0,
    grid: Mapping[str, Any] | None = None,
    burn_in: int | None = None,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad argument of :func:`nqm_study`
    (cheap: no simulation)."""
    axes = _grid_axes(grid)
    nqm.ordering_grid(axes["eta_h"], axes["decay"], axes["k"], rtol=RTOL)
    nqm.check_simulation(eta, h, s2, decay, k, steps, chains, 1, seed, m0, burn_in)


def nqm_study(
    *,
    eta: float = 0.5,
    h: float = 1.0,
    s2: float = 1.0,
    decay: float = 0.99,
    k: int = 10,
    steps: int = 4000,
    chains: int = 2000,
    seed: int = 0,
    m0: float = 1.0,
    grid: Mapping[str, Any] | None = None,
    burn_in: int | None = None,
) -> dict[str, Any]:
    """Simulate one NQM setting, check it against the closed forms, and tabulate the ordering.

    Args:
        eta, h, s2: learning rate, curvature and noise variance (``0 < eta * h < 2``).
        decay, k: EMA decay ``b`` and SEMA switch interval (steps).
        steps, chains, seed: simulation length, independent chains, and seed.
        m0: the start, so the bias at step ``t`` is the mean's distance from the optimum 0.
        grid: ``{"eta_h": [...], "decay": [...], "k": [...]}`` for the ordering table
            (default :data:`DEFAULT_GRID`); keys left out take the default.
        burn_in: steps left out of the stationary averages (default: the steps the variances
            need to become stationary); rounded up to a multiple of ``k``.

    Returns:
        ``settings``, ``stationary`` (simulated vs closed-form variances with z-scores),
        ``trajectories`` (per step ``t = 0..steps``: mean, closed-form mean, its s.e.,
        variance, closed-form variance, for SGD, EMA and SEMA), ``ordering`` (the grid) and
        a few derived numbers. The default setting takes a few seconds.
    """
    axes = _grid_axes(grid)
    ordering = nqm.ordering_grid(axes["eta_h"], axes["decay"], axes["k"], rtol=RTOL)
    t0 = time.perf_counter()
    sim = nqm.simulate(
        eta,
        h,
        s2,
        decay,
        k,
        steps=steps,
        chains=chains,
        coords=1,
        seed=seed,
        m0=m0,
        burn_in=burn_in,
    )
    sim_seconds = time.perf_counter() - t0
    stat = nqm.stationary_variances(sim, pool=True)
    traj = nqm.compare_trajectories(sim, pool=True)

    r = 1 - eta * h
    # SEMA's bias after n periods over EMA's at the same step tends to C**(n-1) (nqm docstring)
    c_ratio = decay * (1 - r) / (decay - r) if abs(r) < decay else None
    return {
        "settings": dict(
            eta=eta, h=h, s2=s2, decay=decay, k=k, steps=steps, chains=chains, seed=seed, m0=m0
        ),  # fmt: skip
        "steps": steps,
        "burn_in": sim.burn_in,
        "eta_h": eta * h,
        "r": r,
        "rho_k": float(nqm.rho(eta, h, decay, k)),
        "bias_ratio_per_period": c_ratio,
        "simulation_seconds": round(sim_seconds, 3),
        "stationary": stat,
        "trajectory_max_abs_z": {
            m: {"mean": float(np.abs(d["mean_z"]).max()), "var": float(np.abs(d["var_z"]).max())}
            for m, d in traj.items()
        },
        # per step t = 0..steps (SEMA's online weights are left out to keep the file small)
        "trajectories": {
            m: {
                key: traj[m][key] for key in ("mean", "mean_closed", "mean_se", "var", "var_closed")
            }
            for m in ("sgd", "ema", "sema")
        },
        "ordering": {key: ordering[key] for key in ORDERING_KEYS} | {"rtol": RTOL},
    }
