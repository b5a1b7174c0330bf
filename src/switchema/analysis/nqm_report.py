"""The noisy-quadratic-model study behind ``switchema nqm``: simulate one setting, compare it
with the closed forms of :mod:`switchema.analysis.nqm`, evaluate the variance ordering over a
grid, and write ``nqm.md``, ``nqm.json``, ``nqm_variance.png`` and ``nqm_bias.png``.

The numbers come from :mod:`~switchema.analysis.nqm`; this module only tabulates and draws them.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import nqm

DEFAULT_GRID = {
    "eta_h": (0.1, 0.5, 1.0, 1.5, 1.9),
    "decay": (0.9, 0.99, 0.999),
    "k": (1, 10, 100),
}
LABELS = {
    "sgd": "SGD",
    "ema": "EMA",
    "sema": "SEMA (right after switches)",
    "sema_step": "SEMA (every step)",
    "sema_online": "SEMA online weights",
}
SHORT = {"sgd": "SGD", "ema": "EMA", "sema": "SEMA (average)"}
_COLOR_KEY = {"sgd": "baseline", "ema": "ema", "sema": "sema"}


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def _report_steps(k: int, steps: int) -> list[int]:
    """A few steps to tabulate: early ones, then multiples of k (SEMA right after a switch)."""
    picks = {1, min(10, steps)}
    for mult in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if mult * k <= steps:
            picks.add(mult * k)
    picks.add(steps - steps % k if steps >= k else steps)
    return sorted(picks)


def _ratio_cell(ratio: float, ok: bool, rtol: float) -> str:
    d = ratio - 1
    if abs(d) <= rtol:
        text = "1 (tie)"
    elif abs(d) < 1e-4:
        text = f"1{d:+.1e}"
    else:
        text = f"{ratio:.4f}"
    return f"{text} {'ok' if ok else '**fails**'}"


def _grid_lines(o: dict[str, Any]) -> list[str]:
    a, b, ks = np.asarray(o["eta_h"]), np.asarray(o["decay"]), o["k"]
    v_sgd, v_ema, v_sema = np.asarray(o["v_sgd"]), np.asarray(o["v_ema"]), np.asarray(o["v_sema"])
    holds = np.asarray(o["holds"])
    lines = [
        "## Ordering V_SEMA <= V_EMA <= V_SGD (closed forms)",
        "",
        "Cells give V_SEMA / V_EMA (SEMA right after a switch) per switch interval k; ok where "
        f"the whole chain V_SEMA <= V_EMA <= V_SGD holds (relative tolerance {o['rtol']:g}, so "
        "exact ties hold). The ratios depend on eta*h, b and k only.",
        "",
        "| eta*h | decay b | V_EMA / V_SGD | " + " | ".join(f"k = {k}" for k in ks) + " |",
        "|---:|---:|---:|" + "---:|" * len(ks),
    ]
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            cells = [
                _ratio_cell(v_sema[i, j, m] / v_ema[i, j], holds[i, j, m], o["rtol"])
                for m in range(len(ks))
            ]
            lines.append(
                f"| {ai:g} | {bj:g} | {v_ema[i, j] / v_sgd[i]:.4g} | " + " | ".join(cells) + " |"
            )
    ok = [f"{x:g}" for x, h in zip(a, o["holds_all"]) if h]
    bad = [f"{x:g}" for x, h in zip(a, o["holds_all"]) if not h]
    lines += [
        "",
        f"Holds for every (b, k) at eta*h in {{{', '.join(ok) or '-'}}}; fails for some (b, k) "
        f"at eta*h in {{{', '.join(bad) or '-'}}} ({int((~holds).sum())} of {holds.size} cells).",
    ]
    if o["failures"]:
        broken = sorted({x for f in o["failures"] for x in f["broken"]})
        lines.append(f"The inequality that breaks: {', '.join(broken)}.")
    # The rule found by scanning the closed forms: V_SEMA > V_EMA iff eta*h > 1 and b > eta*h - 1
    # (b = eta*h - 1 is an exact tie; 1e-9 keeps e.g. 1.9 - 1 = 0.8999999999999999 on it).
    above = np.broadcast_to(
        ((a[:, None] > 1) & (b[None, :] > a[:, None] - 1 + 1e-9))[..., None], holds.shape
    )
    if np.array_equal(~holds, above):
        lines.append(
            "On this grid the failures are exactly the cells with eta*h > 1 and b > eta*h - 1 "
            "(r < 0 and b > |r|); at b = eta*h - 1 V_SEMA = V_EMA exactly, and below it SEMA's "
            "variance is the smaller again."
        )
    else:
        odd = [
            f"(eta*h={a[i]:g}, b={b[j]:g}, k={ks[m]})"
            for i, j, m in zip(*np.nonzero(~holds != above))
        ]
        lines.append(
            "Cells where failing differs from the rule 'eta*h > 1 and b > eta*h - 1' (an excess "
            f"below the tolerance when k is long): {', '.join(odd)}."
        )
    return lines


def _markdown(data: dict[str, Any]) -> str:
    p, stat, traj = data["settings"], data["stationary"], data["trajectories"]
    eta, h, k, steps = p["eta"], p["h"], p["k"], p["steps"]
    a, r, c_ratio = data["eta_h"], data["r"], data["bias_ratio_per_period"]
    md = [
        "# Noisy quadratic model: SGD vs EMA vs Switch EMA",
        "",
        f"Loss 0.5 * h * (x - c)^2 with c ~ N(0, s2) drawn each step; eta = {eta:g}, h = {h:g} "
        f"(eta*h = {a:g}, r = 1 - eta*h = {r:g}), s2 = {p['s2']:g}, EMA decay b = "
        f"{p['decay']:g}, SEMA switches every k = {k} steps. {p['chains']} chains x {steps} steps "
        f"from x0 = {p['m0']:g}, seed {p['seed']} (simulated in {data['simulation_seconds']:.1f} "
        f"s). Stationary averages use the steps after a burn-in of {data['burn_in']} (variances "
        "within 1e-4 of stationary).",
        "",
        "## Stationary variance: simulation vs closed form",
        "",
        "Each chain's time average after burn-in is one independent sample; MC s.e. = their "
        "standard deviation / sqrt(chains); z = (simulated - closed form) / s.e.",
        "",
        "| method | simulated | MC s.e. | closed form | z | samples per chain |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m, d in stat.items():
        md.append(
            f"| {LABELS[m]} | {d['estimate']:.6g} | {d['se']:.2g} | {d['closed_form']:.6g} | "
            f"{d['z']:+.2f} | {d['samples_per_unit']} |"
        )
    md += [
        "",
        f"Closed forms: V_SEMA / V_EMA = {stat['sema']['closed_form'] / stat['ema']['closed_form']:.4f}, "
        f"V_EMA / V_SGD = {stat['ema']['closed_form'] / stat['sgd']['closed_form']:.4f}.",
        "",
        "## Bias: mean trajectories",
        "",
        f"Closed forms: SGD r^t m0, EMA rho(t) m0, SEMA rho(k)^n m0 right after the n-th switch "
        f"(rho(k) = {data['rho_k']:.6g}). Simulated: mean over chains +- its MC s.e. "
        "sqrt(Var/chains).",
        "",
        "| step | SGD sim | SGD closed | EMA sim | EMA closed | SEMA sim | SEMA closed |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in _report_steps(k, steps):
        cells = []
        for m in ("sgd", "ema", "sema"):
            d = traj[m]
            cells += [f"{d['mean'][t]:.4g} +- {d['mean_se'][t]:.1g}", f"{d['mean_closed'][t]:.4g}"]
        md.append(f"| {t} | " + " | ".join(cells) + " |")
    zmax = data["trajectory_max_abs_z"]
    md += [
        "",
        f"Largest |z| over all steps 1..{steps} (one check per step, so a few near 3-4 are "
        "expected): "
        + "; ".join(
            f"{LABELS[m]} mean {zmax[m]['mean']:.2f}, variance {zmax[m]['var']:.2f}" for m in zmax
        )
        + ".",
        "",
    ]
    if c_ratio is not None:
        if math.isclose(c_ratio, 1.0, rel_tol=1e-12):
            verdict = "at the same rate as EMA's (r = 0)"
        elif c_ratio > 1:
            verdict = "more slowly than EMA's (0 < r < b)"
        else:
            verdict = "faster than EMA's (r < 0, i.e. eta*h > 1)"
        md += [
            f"For large t, rho(t) ~ C b^t with C = b(1 - r)/(b - r) = {c_ratio:.6g}, so after n "
            f"periods SEMA's bias is about C^(n-1) times EMA's: SEMA's bias decays {verdict}. "
            "Both decay far more slowly than SGD's (r^t) when b > |r|.",
            "",
        ]
    md += _grid_lines(data["ordering"])
    md += [
        "",
        "Plots: nqm_variance.png, nqm_bias.png (simulated solid, closed form dashed). "
        "Numbers: nqm.json.",
        "",
    ]
    return "\n".join(md)


def _plot(data: dict[str, Any], out: Path) -> None:
    """Variance and |bias| against steps (log-log), simulated solid and closed form dashed."""
    import matplotlib.pyplot as plt

    from ..lab.plots import COLORS, STYLE

    p, traj = data["settings"], data["trajectories"]
    t = np.arange(1, data["steps"] + 1)  # t = 0 is deterministic: nothing to draw on a log scale
    title = (
        f"NQM: eta*h = {data['eta_h']:g}, s2 = {p['s2']:g}, b = {p['decay']:g}, k = {p['k']}, "
        f"{p['chains']} chains"
    )
    for kind, fname, ylabel in (
        ("var", "nqm_variance.png", "variance across chains"),
        ("mean", "nqm_bias.png", "|mean| = bias (optimum at 0)"),
    ):
        with plt.rc_context(STYLE):
            fig, ax = plt.subplots(figsize=(6.4, 4.0))
            floor = np.inf
            for m in ("sgd", "ema", "sema"):
                d = traj[m]
                sim = np.abs(np.asarray(d[kind], dtype=float)[1:])
                closed = np.abs(np.asarray(d[kind + "_closed"], dtype=float)[1:])
                if kind == "mean":
                    # below ~2 s.e. the simulated mean is Monte-Carlo noise: not drawn
                    se = np.asarray(d["mean_se"], dtype=float)[1:]
                    sim = np.where(closed >= 2 * se, sim, np.nan)
                    floor = min(floor, float(se[-1]))
                color = COLORS[_COLOR_KEY[m]]
                ax.plot(t, np.where(sim > 0, sim, np.nan), "-", color=color, lw=1.2,
                        label=f"{SHORT[m]}, simulated")  # fmt: skip
                ax.plot(t, np.where(closed > 0, closed, np.nan), "--", color=color, lw=1.0,
                        label=f"{SHORT[m]}, closed form")  # fmt: skip
            if kind == "mean":
                ax.axhline(floor, color="#888888", ls=":", lw=1.0,
                           label="MC s.e. of a mean (simulated lines stop at 2 s.e.)")  # fmt: skip
                ax.set_ylim(floor / 10, 2 * abs(p["m0"]))
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("SGD step")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
            ax.legend(ncol=2, loc="upper right" if kind == "mean" else "lower right")
            fig.tight_layout()
            fig.savefig(out / fname)
            plt.close(fig)


def _dumps(data: dict[str, Any]) -> str:
    """JSON with one line per list of numbers (the trajectories are long)."""
    text = json.dumps(data, indent=1, default=_json_default)
    return re.sub(r"\[[-0-9.eE+,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)), text) + "\n"


def run_nqm(
    out_dir: str | Path,
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
) -> Path:
    """Simulate one NQM setting, check it against the closed forms, tabulate the ordering grid,
    and write ``nqm.md``, ``nqm.json``, ``nqm_variance.png`` and ``nqm_bias.png`` to
    ``out_dir`` (created). Returns ``out_dir``. The default run takes a few seconds.

    Args:
        eta, h, s2: learning rate, curvature and noise variance (``0 < eta * h < 2``).
        decay, k: EMA decay ``b`` and SEMA switch interval (steps).
        steps, chains, seed: simulation length, independent chains, and seed.
        m0: the start, so the bias at step ``t`` is the mean's distance from the optimum 0.
        grid: ``{"eta_h": [...], "decay": [...], "k": [...]}`` for the ordering table
            (default :data:`DEFAULT_GRID`); keys left out take the default.
    """
    axes = dict(DEFAULT_GRID)
    if grid is not None:
        unknown = set(grid) - set(DEFAULT_GRID)
        if unknown:
            raise ValueError(
                f"grid keys must be among {sorted(DEFAULT_GRID)}, got {sorted(unknown)}"
            )
        axes.update(grid)
    # every argument is checked before anything is written
    rtol = 1e-12
    ordering = nqm.ordering_grid(axes["eta_h"], axes["decay"], axes["k"], rtol=rtol)
    t0 = time.perf_counter()
    sim = nqm.simulate(eta, h, s2, decay, k, steps=steps, chains=chains, coords=1, seed=seed, m0=m0)
    sim_seconds = time.perf_counter() - t0
    stat = nqm.stationary_variances(sim, pool=True)
    traj = nqm.compare_trajectories(sim, pool=True)

    r = 1 - eta * h
    # SEMA's bias after n periods over EMA's at the same step tends to C**(n-1) (nqm docstring)
    c_ratio = decay * (1 - r) / (decay - r) if abs(r) < decay else None
    data: dict[str, Any] = {
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
                key: [_sig(x) for x in traj[m][key]]
                for key in ("mean", "mean_closed", "mean_se", "var", "var_closed")
            }
            for m in ("sgd", "ema", "sema")
        },
        "ordering": {
            key: ordering[key]
            for key in (
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
            )  # fmt: skip
        }
        | {"rtol": rtol},
    }
    data = json.loads(_dumps(data))  # the tables and plots are drawn from what is saved
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nqm.json").write_text(_dumps(data))
    (out / "nqm.md").write_text(_markdown(data))
    _plot(data, out)
    return out


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
