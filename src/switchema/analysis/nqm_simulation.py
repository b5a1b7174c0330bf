"""A Monte-Carlo simulator of the noisy quadratic model (stated in
:mod:`switchema.analysis.nqm`) for SGD, its EMA and Switch EMA, and its comparison with the
closed forms of :mod:`switchema.analysis.nqm_closed_forms`, with Monte-Carlo standard errors.

Many independent chains of many coordinates run at once, as tensors of shape ``(chains,
coords)``; the only Python loop is over steps. The SGD and SEMA runs share their noise draws
(common random numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._nqm_checks import (
    check_array,
    check_decay,
    check_int_min,
    check_k,
    check_noise,
    check_positive,
    check_step,
)
from .nqm_closed_forms import (
    mean_trajectories,
    relaxation_steps,
    v_ema,
    v_sema,
    v_sema_step,
    v_sgd,
    variance_trajectories,
)

__all__ = [
    "METHODS",
    "NQMSimulation",
    "check_simulation",
    "compare_trajectories",
    "simulate",
    "stationary_variances",
]

#: Trajectories recorded at every step. ``sema`` is SEMA's average (equal to its online weights
#: right after a switch), ``sema_online`` SEMA's online weights.
METHODS = ("sgd", "ema", "sema", "sema_online")


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
    steps = check_int_min("steps", steps, 1)
    chains = check_int_min("chains", chains, 2)
    coords = check_int_min("coords", coords, 1)
    seed = check_int_min("seed", seed, 0)
    k = int(check_k(k)) if np.ndim(k) == 0 else None
    if k is None:
        raise TypeError("k (switch interval, steps) must be a single int")
    if np.ndim(eta) or np.ndim(b):
        raise TypeError(f"eta and b must be scalars, got eta={eta!r}, b={b!r}")
    h_arr = _per_coord("h", check_positive("h (curvature)", h), coords)
    a, r = check_step(eta, h_arr)
    b = float(check_decay(b))
    s2_arr = _per_coord("s2", check_noise(s2), coords)
    m0_arr = _per_coord("m0", check_array("m0", m0), coords)
    if burn_in is None:
        burn_in = max(relaxation_steps(float(eta), float(hh), b, k) for hh in np.unique(h_arr))
        if steps - burn_in < 2 * k:
            raise ValueError(
                f"steps={steps} is too short: the variances need about {burn_in} steps to become "
                f"stationary and then at least two switches (2 * k = {2 * k}); use steps >= "
                f"{burn_in + 2 * k} or pass burn_in"
            )
    else:
        burn_in = check_int_min("burn_in", burn_in, 0)
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
