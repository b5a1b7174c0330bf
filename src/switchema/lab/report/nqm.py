"""The report of ``switchema nqm``: ``nqm.md`` and the plots ``nqm_variance`` and ``nqm_bias``,
drawn from the numbers saved in ``nqm.json`` (computed by :mod:`switchema.analysis.nqm_study`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from .style import COLORS, STYLE, Figures, plain_log_axis

__all__ = ["write_nqm_report"]

LABELS = {
    "sgd": "SGD",
    "ema": "EMA",
    "sema": "SEMA (right after switches)",
    "sema_step": "SEMA (every step)",
    "sema_online": "SEMA online weights",
}
SHORT = {"sgd": "SGD", "ema": "EMA", "sema": "SEMA (average)"}
_COLOR_KEY = {"sgd": "baseline", "ema": "ema", "sema": "sema"}


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
    p, stat = data["settings"], data["stationary"]
    eta, h, k, steps = p["eta"], p["h"], p["k"], p["steps"]
    a, r = data["eta_h"], data["r"]
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
    md += _bias_lines(data)
    md += _grid_lines(data["ordering"])
    md += [
        "",
        "Plots: nqm_variance.png, nqm_bias.png (simulated solid, closed form dashed). "
        "Numbers: nqm.json.",
        "",
    ]
    return "\n".join(md)


def _bias_lines(data: dict[str, Any]) -> list[str]:
    p, stat, traj = data["settings"], data["stationary"], data["trajectories"]
    k, steps, c_ratio = p["k"], p["steps"], data["bias_ratio_per_period"]
    md = [
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
    return md


def _plot(data: dict[str, Any], out: Path, figures: Figures) -> None:
    """Variance and |bias| against steps (log-log), simulated solid and closed form dashed."""
    p, traj = data["settings"], data["trajectories"]
    t = np.arange(1, data["steps"] + 1)  # t = 0 is deterministic: nothing to draw on a log scale
    setting = (
        f"eta*h = {data['eta_h']:g}, s2 = {p['s2']:g}, b = {p['decay']:g}, k = {p['k']}; "
        f"over {p['chains']} chains"
    )
    for kind, stem, ylabel, what in (
        ("var", "nqm_variance", "variance across chains", "variance of the iterate"),
        ("mean", "nqm_bias", "|mean| = bias (optimum at 0)", "bias: |mean over chains|"),
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
                    sim = np.where((closed >= 2 * se) & (sim >= se), sim, np.nan)
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
            plain_log_axis(ax, "x")
            plain_log_axis(ax, "y")
            ax.set_xlabel("SGD step (log scale)")
            ax.set_ylabel(ylabel + " (log scale)")
            ax.set_title(f"NQM {what}: SGD, its EMA and Switch EMA\n{setting}")
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
            figures.save(fig, out, stem)


def write_nqm_report(folder: str | Path, figures: Figures | None = None) -> Path:
    """Write ``nqm.md`` and the two plots into ``folder`` from its ``nqm.json``; returns ``nqm.md``."""
    out = Path(folder)
    figures = figures or Figures()
    data = json.loads((out / "nqm.json").read_text())
    (out / "nqm.md").write_text(_markdown(data).replace(".png", f".{figures.format}"))
    _plot(data, out, figures)
    return out / "nqm.md"
