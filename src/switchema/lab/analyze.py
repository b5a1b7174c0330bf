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
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._checks import check_int, check_real
from ..analysis import landscape as L
from ..analysis import sharpness as S
from ..analysis.distance import solution_distance
from .config import StudyConfig
from .errors import MissingFileError, NoResultsError, UsageError
from .jobs import build_study_data
from .keys import ModelKey
from .preflight import check_writable
from .report import Figures, load_run, main_label, write_analysis_report
from .resolve import resolve
from .tasks import task_loss

__all__ = ["analyze_run"]


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    return float((out.argmax(-1) == y).float().mean())


def _batches(
    x: torch.Tensor, y: torch.Tensor, n: int, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    n = min(n, len(x))
    return [(x[i : min(i + size, n)], y[i : min(i + size, n)]) for i in range(0, n, size)]


def _check_arguments(samples: int, grid: int, probes: int, rho: float) -> None:
    try:
        check_int(samples, "samples", minimum=1)
        check_int(grid, "grid", minimum=3)
        check_int(probes, "probes", minimum=2)
        check_real(rho, "rho", minimum=0.0, min_open=True)
    except (TypeError, ValueError) as e:  # the caller's mistake, named; not a bug
        raise UsageError(str(e)) from None


def _why(run: Path) -> str:
    """Why a run folder holds no models: its failed jobs, or that none finished."""
    failures = []
    if (run / "failures.json").is_file():
        failures = json.loads((run / "failures.json").read_text())
    if failures:
        return (
            f"every job failed ({len(failures)}; first error: {failures[0].get('error')}); "
            f"see {run / 'summary.md'}"
        )
    return "no job has finished yet"


class _Subject:
    """What the measures need of a run: its final weights, model, data subsets and loss."""

    def __init__(self, run: Path, samples: int, batch_size: int) -> None:
        config, rows, arrays = load_run(run)
        if not (run / "models.pt").is_file():
            raise MissingFileError(
                f"{run / 'models.pt'} not found: rerun `switchema compare` with this version to save final weights"
            )
        self.states = torch.load(run / "models.pt", weights_only=True)
        if not rows or not self.states:
            raise NoResultsError(f"{run} holds no finished models to analyze: {_why(run)}")
        study = resolve(StudyConfig.from_dict(config["config"]))
        self.config, cfg = study.config, study.config
        # the training data as the run trained on it (labels flipped, validation held out)
        data, y_train, _ = build_study_data(study)
        self.kind, self.n_train = data.kind, data.n_train
        self.metric_fn = _accuracy if data.kind == "classification" else None
        self.train_b = _batches(data.x_train, y_train, samples, batch_size)
        self.test_b = _batches(data.x_test, data.y_test, samples, batch_size)
        keys = [ModelKey.parse(k) for k in self.states]
        self.methods = [m for m in cfg.methods if any(k.method == m for k in keys)]
        self.labels = {
            m: main_label(m, sorted({k.label.format() for k in keys if k.method == m}))
            for m in self.methods
        }
        self.model = study.task.build_model(data, **cfg.model_options)

    def loss_fn(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return task_loss(self.kind, out, y)

    def key(self, m: str, s: int) -> str:
        """The name in ``models.pt`` of method ``m``'s main model of seed ``s``."""
        return ModelKey(m, self.labels[m], s).format()

    def state(self, m: str, s: int) -> dict[str, torch.Tensor]:
        return self.states[self.key(m, s)]

    def load(self, m: str, s: int) -> torch.nn.Module:
        self.model.load_state_dict(self.state(m, s))
        return self.model


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
    out: str | Path | None = None,
    state: str | None = None,
    figures: Figures | None = None,
) -> Path:
    """Measure the run's final models and write the analysis files into ``out`` (default: the
    run folder); returns ``analysis.md``. ``state``: a note on an unfinished run, for the
    report. The output folder is checked writable before anything is computed."""
    run = Path(run_dir)
    out = Path(out) if out is not None else run
    _check_arguments(samples, grid, probes, rho)
    check_writable(out, "output folder")
    sub = _Subject(run, samples, batch_size)
    cfg = sub.config
    jobs = [(m, s) for m in sub.methods for s in cfg.seeds if sub.key(m, s) in sub.states]
    bar = None
    if progress and sys.stderr.isatty():  # no carriage returns in a log file
        from tqdm.auto import tqdm

        total = len(jobs) + (len(sub.methods) if landscapes else 0) + 1
        bar = tqdm(total=total, unit="model", desc="analyze")
    tick = bar.update if bar is not None else (lambda: None)
    t0 = time.perf_counter()
    results = {}
    for m, s in jobs:
        results[f"{m}/{s}"] = _measure(sub, m, s, probes, rho, rise, directions, seed)
        tick()
    first = cfg.seeds[0]
    present = [m for m in sub.methods if (m, first) in jobs]
    distances = _distances(sub, present, first)
    interp = _interpolation(sub, present, first, path_points)
    tick()
    surfaces = {}
    if landscapes:
        for m in present:
            surfaces[m] = _surface(sub, m, first, grid, span, seed)
            tick()
    if bar is not None:
        bar.close()
    settings = dict(samples=min(samples, sub.n_train), batch_size=batch_size, probes=probes)
    settings.update(rho=rho, rise=rise, directions=directions, grid=grid, span=span, seed=seed)
    settings.update(torch_threads=torch.get_num_threads(), wall_s=time.perf_counter() - t0)
    saved = {
        "settings": settings,
        "models": results,
        "distances_to_baseline": distances,
        "interpolation": interp,
        "landscapes": surfaces,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").write_text(json.dumps(saved, indent=1))
    return write_analysis_report(run, out, status=state, figures=figures)


def _measure(sub: _Subject, m, s, probes, rho, rise, directions, seed) -> dict[str, Any]:
    """Sharpness, flatness and losses of one model (method ``m``, seed ``s``)."""
    net = sub.load(m, s)
    loss_fn, train_b, test_b = sub.loss_fn, sub.train_b, sub.test_b
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
    return {
        "method": m,
        "model": sub.labels[m],
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


def _distances(sub: _Subject, present: list[str], first: int) -> dict[str, Any]:
    out = {}
    for m in present:
        if m != "baseline" and "baseline" in present:
            # the baseline's main model is its online one
            d = solution_distance(
                sub.state("baseline", first), sub.state(m, first), model=sub.model
            )
            out[m] = {"l2": d.l2, "relative": d.relative, "cosine": d.cosine}
    return out


def _interpolation(sub: _Subject, present: list[str], first: int, points: int) -> dict | None:
    """The loss along the straight path through the first seed's solutions, in method order."""
    path_states = [sub.state(m, first) for m in present]
    if len(path_states) < 2:
        return None
    kw = dict(points=points, metric_fn=sub.metric_fn)
    tr = L.interpolate(sub.model, path_states, sub.loss_fn, sub.train_b, **kw)
    te = L.interpolate(sub.model, path_states, sub.loss_fn, sub.test_b, **kw)
    return {
        "methods": present,
        "alphas": tr.alphas.tolist(),
        "train_loss": tr.losses.tolist(),
        "test_loss": te.losses.tolist(),
        "test_metric": None if te.metrics is None else te.metrics.tolist(),
        "endpoints": list(tr.endpoints),
    }


def _surface(sub: _Subject, m: str, first: int, grid: int, span: float, seed: int) -> dict:
    net = sub.load(m, first)
    dirs = L.random_directions(net, 2, seed=seed)
    surf = L.landscape_2d(net, sub.loss_fn, sub.train_b, dirs, span=(-span, span), points=grid)
    return {
        "alphas": surf.alphas.tolist(),
        "betas": surf.betas.tolist(),
        "losses": surf.losses.tolist(),
    }
