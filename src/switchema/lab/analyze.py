"""``switchema analyze RUN``: flatness and sharpness of a lab run's final models.

For every method's main model (the baseline's online weights; the first average of every other
method) and every seed, on a fixed subset of the training data with the labels the models were
trained on: top Hessian eigenvalue (Lanczos), Hessian trace (Hutchinson, with its standard
error), worst-case loss increase in an L2 ball of radius ``rho`` (a few steps of projected
gradient ascent, as in SAM), basin width along random filter-normalised directions, and the
training loss there. Then, for the first seed: the loss along the straight path through the
methods' solutions and a 2-D loss surface around each solution (Li et al. 2018 directions,
the same directions for every method).

Writes ``analysis.md`` (mean ± std over seeds, paired differences to the baseline with 95%
t-intervals), ``analysis.json`` (every number), ``interpolation.png`` and ``landscapes.png``.
BatchNorm models are evaluated with their stored statistics (those that were evaluated in the
run, recomputed for averaged models when the run enabled it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import landscape as L
from ..analysis import sharpness as S
from ..analysis.distance import solution_distance
from .report import load_run, main_label
from .stats import format_ci, format_mean_std, mean_std, paired_difference
from .train import StudyConfig, _loss, resolve_config

__all__ = ["analyze_run"]


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).float().mean())


def _batches(
    x: torch.Tensor, y: torch.Tensor, n: int, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = min(n, len(x))
    return [(x[i : min(i + size, n)], y[i : min(i + size, n)]) for i in range(0, n, size)]


def analyze_run(
    run_dir: str | Path,
    *,
    samples: int = 1000,
    batch_size: int = 250,
    probes: int = 30,
    rho: float = 0.05,
    rise: float = 0.1,
    directions: int = 6,
    grid: int = 21,
    span: float = 1.0,
    path_points: int = 15,
    seed: int = 0,
    landscapes: bool = True,
    progress: bool = True,
) -> Path:
    """Measure the run's final models and write the analysis files; returns ``analysis.md``."""
    run = Path(run_dir)
    for name, value, low in (("samples", samples, 1), ("grid", grid, 3), ("probes", probes, 2)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho!r}")
    config, rows, arrays = load_run(run)
    if not (run / "models.pt").is_file():
        raise FileNotFoundError(
            f"{run / 'models.pt'} not found: rerun `switchema compare` with this version to save final weights"
        )
    states = torch.load(run / "models.pt", weights_only=True)
    cfg, task = resolve_config(StudyConfig(**config["config"]))
    data = task.build_data(cfg.data_seed, **cfg.data_options)
    y_train = torch.as_tensor(arrays["data/y_train"]) if "data/y_train" in arrays else data.y_train
    kind = data.kind

    def loss_fn(out, y):
        return _loss(kind, out, y)

    metric_fn = _accuracy if kind == "classification" else None
    train_b = _batches(data.x_train, y_train, samples, batch_size)
    test_b = _batches(data.x_test, data.y_test, samples, batch_size)

    methods = [m for m in cfg.methods if any(k.startswith(f"{m}/") for k in states)]
    labels = {
        m: main_label(m, sorted({k.split("/")[1] for k in states if k.startswith(f"{m}/")}))
        for m in methods
    }
    jobs = [(m, s) for m in methods for s in cfg.seeds if f"{m}/{labels[m]}/{s}" in states]
    model = task.build_model(data, **cfg.model_options)

    def load(m: str, s: int) -> torch.nn.Module:
        model.load_state_dict(states[f"{m}/{labels[m]}/{s}"])
        return model

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(jobs) + (len(methods) if landscapes else 0) + 1, unit="model", desc="analyze"
        )
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for m, s in jobs:
        net = load(m, s)
        t = time.perf_counter()
        eig = S.top_eigenvalues(net, loss_fn, train_b, k=1, seed=seed)
        t_eig = time.perf_counter() - t
        trace = S.hessian_trace(net, loss_fn, train_b, n_probes=probes, seed=seed)
        sharp = S.worst_case_sharpness(net, loss_fn, train_b, rho=rho, seed=seed)
        width = L.basin_width(net, loss_fn, train_b, rise=rise, n_directions=directions, seed=seed)
        with torch.no_grad():
            net.eval()
            n_test = sum(len(x) for x, _ in test_b)
            test_loss = sum(float(loss_fn(net(x), y)) * len(x) for x, y in test_b) / n_test
        results[f"{m}/{s}"] = {
            "method": m,
            "model": labels[m],
            "seed": s,
            "top_eigenvalue": float(eig.eigenvalues[0]),
            "eig_converged": bool(eig.converged),
            "eig_seconds": t_eig,
            "trace": trace.estimate,
            "trace_stderr": trace.stderr,
            "worst_case_increase": sharp.increase,
            "train_loss": sharp.loss,
            "width_median": float(width.median),
            "width_iqr": float(width.iqr),
            "test_loss": test_loss,
        }
        if bar is not None:
            bar.update()
    first = cfg.seeds[0]
    present = [m for m in methods if f"{m}/{first}" in results]
    distances = {}
    for m in present:
        if m != "baseline" and "baseline" in present:
            d = solution_distance(
                states[f"baseline/online/{first}"], states[f"{m}/{labels[m]}/{first}"], model=model
            )
            distances[m] = {"l2": d.l2, "relative": d.relative, "cosine": d.cosine}
    # 1-D path through the solutions of the first seed: baseline -> ema -> sema -> ...
    path_states = [states[f"{m}/{labels[m]}/{first}"] for m in present]
    interp = None
    if len(path_states) >= 2:
        tr = L.interpolate(
            model, path_states, loss_fn, train_b, points=path_points, metric_fn=metric_fn
        )
        te = L.interpolate(
            model, path_states, loss_fn, test_b, points=path_points, metric_fn=metric_fn
        )
        interp = {
            "methods": present,
            "alphas": tr.alphas.tolist(),
            "train_loss": tr.losses.tolist(),
            "test_loss": te.losses.tolist(),
            "test_metric": None if te.metrics is None else te.metrics.tolist(),
            "endpoints": list(tr.endpoints),
        }
    if bar is not None:
        bar.update()
    surfaces = {}
    if landscapes:
        for m in present:
            net = load(m, first)
            dirs = L.random_directions(net, 2, seed=seed)
            surf = L.landscape_2d(net, loss_fn, train_b, dirs, span=(-span, span), points=grid)
            surfaces[m] = {
                "alphas": surf.alphas.tolist(),
                "betas": surf.betas.tolist(),
                "losses": surf.losses.tolist(),
            }
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    out = {
        "settings": {
            "samples": min(samples, data.n_train),
            "batch_size": batch_size,
            "probes": probes,
            "rho": rho,
            "rise": rise,
            "directions": directions,
            "grid": grid,
            "span": span,
            "seed": seed,
            "torch_threads": torch.get_num_threads(),
            "wall_s": time.perf_counter() - t0,
        },
        "models": results,
        "distances_to_baseline": distances,
        "interpolation": interp,
        "landscapes": surfaces,
    }
    (run / "analysis.json").write_text(json.dumps(out, indent=1))
    return write_analysis_report(run, config, out)


_MEASURES = [
    ("top_eigenvalue", "top Hessian eigenvalue", 2),
    ("trace", "Hessian trace", 1),
    ("worst_case_increase", "worst-case increase (ρ ball)", 4),
    ("width_median", "basin width (median)", 3),
    ("train_loss", "train loss (subset)", 4),
    ("test_loss", "test loss", 4),
]


def write_analysis_report(run: Path, config: dict[str, Any], out: dict[str, Any]) -> Path:
    """``analysis.md`` and plots from the numbers in ``analysis.json``."""
    models = out["models"]
    st = out["settings"]
    methods = list(dict.fromkeys(r["method"] for r in models.values()))
    by = {m: [r for r in models.values() if r["method"] == m] for m in methods}
    lines = [
        f"# Flatness and sharpness: {config['task']['name']}",
        "",
        f"Final weights of each method's main model (baseline: online; others: the average), all seeds; "
        f"measured on the first {st['samples']} training samples with the labels used in training. "
        f"Top eigenvalue by Lanczos on Hessian-vector products; trace by Hutchinson with {st['probes']} "
        f"Rademacher probes; worst-case increase = max loss increase within an L2 ball of radius "
        f"{st['rho']} (projected gradient ascent); basin width = distance along {st['directions']} random "
        f"filter-normalised directions (both signs) until the loss rises by {st['rise']}. "
        f"Mean ± std over seeds; Δ = paired difference to the baseline with a 95% t-interval. "
        f"Wall time {st['wall_s']:.0f} s with {st['torch_threads']} torch thread(s).",
        "",
        "| method | model | " + " | ".join(name for _, name, _ in _MEASURES) + " |",
        "|---|---|" + "---|" * len(_MEASURES),
    ]
    for m in methods:
        cells = []
        for key, _, digits in _MEASURES:
            mean, std = mean_std([r[key] for r in by[m]])
            cells.append(format_mean_std(mean, std, digits))
        lines.append(f"| {m} | {by[m][0]['model']} | " + " | ".join(cells) + " |")
    if "baseline" in by:
        lines += ["", "Paired differences to the baseline (same seed):", ""]
        lines += ["| method | " + " | ".join(f"Δ {name}" for _, name, _ in _MEASURES) + " |"]
        lines += ["|---|" + "---|" * len(_MEASURES)]
        base = {r["seed"]: r for r in by["baseline"]}
        for m in methods:
            if m == "baseline":
                continue
            rs = [r for r in by[m] if r["seed"] in base]
            cells = [
                format_ci(
                    paired_difference([r[k] for r in rs], [base[r["seed"]][k] for r in rs]), d
                )
                for k, _, d in _MEASURES
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if out["distances_to_baseline"]:
        lines += [
            "",
            "Distance of each solution to the baseline's (first seed): L2, relative, cosine",
            "",
        ]
        for m, d in out["distances_to_baseline"].items():
            lines.append(
                f"- {m}: L2 {d['l2']:.3f}, relative {d['relative']:.3f}, cosine {d['cosine']:.4f}"
            )
    eig_t = [r["eig_seconds"] for r in models.values()]
    lines += [
        "",
        f"Top-eigenvalue time per model: median {np.median(eig_t):.1f} s (max {max(eig_t):.1f} s); "
        f"all converged: {all(r['eig_converged'] for r in models.values())}.",
        "",
        "Plots: `interpolation.png` (loss along the straight path through the solutions, first seed), "
        "`landscapes.png` (2-D loss surfaces around each solution, same random directions).",
        "",
    ]
    path = run / "analysis.md"
    path.write_text("\n".join(lines))
    from . import plots

    if out["interpolation"]:
        plots.plot_interpolation(config, out["interpolation"], run / "interpolation.png")
    if out["landscapes"]:
        plots.plot_landscapes(config, out["landscapes"], run / "landscapes.png")
    return path
