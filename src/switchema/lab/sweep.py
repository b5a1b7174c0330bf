"""Sweeps: a grid of studies, cut into resumable jobs, run anywhere, reported as one table.

A grid maps study settings (the fields of :class:`~switchema.lab.train.StudyConfig`) to
values. ``methods`` and ``seeds`` are always lists *inside* each cell (methods are compared
within a cell, seeds give the error bars); any other key given a list is a swept axis, a
scalar is fixed. Example grid file (TOML; YAML with the same keys works too)::

    task = "mnist1d-cnn"
    methods = ["baseline", "ema", "sema"]
    seeds = [0, 1, 2]
    epochs = 20
    decay = [0.99, 0.999]          # axis: one cell per value
    switch_every = ["1", "5e"]     # axis
    model_options = { channels = 16 }

2 x 2 = 4 cells. Each cell becomes jobs (:mod:`switchema.lab.jobs`): one per seed and
trajectory (``baseline``, ``ema`` and ``swa`` share one), deduplicated across cells, so here
the baseline+EMA trajectory of a seed is trained once per decay, not once per cell.

Layout of a sweep folder::

    RUN/sweep.json           the grid, its cells and jobs (what --resume reads)
    RUN/jobs/<job>/          checkpoints, metrics and status of each job
    RUN/cells/<cell>/        a complete ``switchema compare`` run folder per cell
    RUN/sweep.md             one table: every cell x method, mean ± std over seeds
    RUN/sweep_results.json   the same numbers, machine-readable
    RUN/sweep_<axis>.png     the metric against each swept axis, seed bands

The whole grid is validated before any job starts: unknown keys and bad values are listed
together, by name.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, read_jsonl
from .executors import run_jobs
from .jobs import Job, job_results, job_status, make_job
from .lock import FolderLock
from .tasks import get_task
from .train import (
    ConfigError,
    StudyConfig,
    _device,
    resolve_config,
    share_trajectories,
    versions,
)

__all__ = [
    "Grid",
    "Cell",
    "load_grid_file",
    "parse_grid",
    "expand_grid",
    "run_sweep",
    "run_cells",
    "write_sweep_report",
]

_FIELDS = {f.name: f for f in fields(StudyConfig)}
ALIASES = {
    "tasks": "task",
    "decay": "decays",
    "seed": "seeds",
    "method": "methods",
    "switch_interval": "switch_every",
    "switch_intervals": "switch_every",
}
_INT = (
    "epochs",
    "batch_size",
    "warmup_epochs",
    "switch_start",
    "data_seed",
    "eval_batch_size",
    "threads",
)
_FLOAT = ("lr", "weight_decay", "momentum", "swa_start", "label_noise", "decays")
_BOOL = ("nesterov", "reset_optimizer", "bn_recompute")
_STR = ("task", "optimizer", "schedule", "ema_warmup", "device")
_DICT = ("data_options", "model_options")
# Short names for cell folders.
_SHORT = {
    "task": "",
    "decays": "decay",
    "switch_every": "every",
    "label_noise": "noise",
    "weight_decay": "wd",
}


@dataclass
class Grid:
    """Fixed settings, swept axes (in order) and the methods and seeds of every cell."""

    fixed: dict[str, Any]
    axes: dict[str, list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "axes": self.axes}


@dataclass
class Cell:
    name: str
    point: dict[str, Any]  # axis -> value of this cell
    config: StudyConfig  # resolved


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) grid file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"grid file {path} is not valid TOML: {e}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ImportError(
                f"reading {path} needs PyYAML: pip install pyyaml (or write the grid as TOML)"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"grid file {path} is not valid YAML: {e}") from None
    else:
        raise ValueError(f"grid file {path}: expected a .toml, .yaml or .yml file, got {suffix!r}")
    if not isinstance(data, dict):
        raise ValueError(f"grid file {path} must be a mapping of setting -> value(s)")
    return data


def _type_error(key: str, value: Any) -> str | None:
    def ok(v: Any) -> bool:
        if key in _INT:
            return (
                isinstance(v, int) and not isinstance(v, bool) or (key == "threads" and v is None)
            )
        if key in _FLOAT:
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        if key in _BOOL:
            return isinstance(v, bool)
        if key in _STR:
            return isinstance(v, str)
        if key == "switch_every":
            return isinstance(v, (str, int)) and not isinstance(v, bool)
        return True

    if key == "decays" and isinstance(value, list):  # a nested list is one multi-decay cell
        bad = [v for v in value if not ok(v)]
    else:
        bad = [] if ok(value) else [value]
    if not bad:
        return None
    kind = (
        "an int"
        if key in _INT
        else "a number"
        if key in _FLOAT
        else "true/false"
        if key in _BOOL
        else "a string"
    )
    return f"{key}={bad[0]!r} ({type(bad[0]).__name__}): expected {kind}"


def parse_grid(mapping: dict[str, Any], source: str = "grid") -> Grid:
    """Split a grid mapping into fixed settings and swept axes; unknown keys fail by name."""
    norm: dict[str, Any] = {}
    unknown = []
    for raw, value in mapping.items():
        key = ALIASES.get(str(raw).replace("-", "_"), str(raw).replace("-", "_"))
        if key not in _FIELDS:
            unknown.append(raw)
            continue
        norm[key] = value  # a later key (flags after a file, or an alias after its key) wins
    if unknown:
        allowed = sorted(set(_FIELDS) | set(ALIASES))
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; allowed: "
            f"{', '.join(allowed)}"
        )
    fixed: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    problems = []
    for key, value in norm.items():
        if key in ("methods", "seeds"):
            fixed[key] = list(value) if isinstance(value, (list, tuple)) else [value]
            if key == "seeds":
                problems += [
                    f"seeds={s!r}: expected an int"
                    for s in fixed[key]
                    if not isinstance(s, int) or isinstance(s, bool)
                ]
            continue
        if key in _DICT:
            if not isinstance(value, dict):
                problems.append(f"{key}={value!r}: expected a table of option = value")
            fixed[key] = dict(value) if isinstance(value, dict) else value
            continue
        if isinstance(value, (list, tuple)):
            values = list(value)
            if not values:
                problems.append(f"{key}=[]: give at least one value")
                continue
            if (
                key == "decays"
            ):  # decay = [0.99, 0.999] sweeps; [[0.99, 0.999]] keeps both in one cell
                values = [list(v) if isinstance(v, (list, tuple)) else [v] for v in values]
            if len(values) == 1:
                fixed[key] = values[0]
            else:
                axes[key] = values
        else:
            fixed[key] = [value] if key == "decays" else value
    for key, value in list(fixed.items()) + [(k, v) for k, vs in axes.items() for v in vs]:
        if key not in ("methods", "seeds") and key not in _DICT:
            err = _type_error(key, value)
            if err:
                problems.append(err)
    if problems:
        raise ValueError(f"{source}: bad value(s): " + "; ".join(dict.fromkeys(problems)))
    return Grid(fixed, axes)


def _cell_name(point: dict[str, Any]) -> str:
    if not point:
        return "default"
    parts = []
    for key, value in point.items():
        text = ",".join(f"{v:g}" for v in value) if key == "decays" else str(value)
        parts.append(f"{_SHORT.get(key, key)}{text}")
    return re.sub(r"[^A-Za-z0-9._,+=-]", "-", "_".join(parts))


def expand_grid(grid: Grid, source: str = "grid") -> list[Cell]:
    """Every cell of ``grid``, validated and resolved; all problems are reported at once."""
    base = StudyConfig()
    cells: list[Cell] = []
    problems: list[str] = []
    keys = list(grid.axes)
    for values in itertools.product(*(grid.axes[k] for k in keys)):
        point = dict(zip(keys, values))
        settings = {**grid.fixed, **point}
        cfg = copy.deepcopy(base)
        for key, value in settings.items():
            setattr(cfg, key, copy.deepcopy(value))
        if isinstance(cfg.switch_every, int):
            cfg.switch_every = str(cfg.switch_every)
        try:
            resolved, _ = resolve_config(cfg)
        except ConfigError as e:  # the same mistake in many cells is listed once
            problems += [p for p in e.problems if p not in problems]
            continue
        cells.append(Cell(_cell_name(point), point, resolved))
    if problems:
        raise ValueError(
            f"{source}: {len(problems)} bad value(s), no job started:\n  " + "\n  ".join(problems)
        )
    names = [c.name for c in cells]
    if len(set(names)) != len(names):  # e.g. '1' and 1 for switch_every
        for i, c in enumerate(cells):
            c.name = f"{i:03d}_{c.name}"
    return cells


def cell_jobs(cfg: StudyConfig) -> list[Job]:
    """The cell's jobs, seed-major, in the order its metrics rows are written."""
    return [
        make_job(cfg, group, seed)
        for seed in cfg.seeds
        for group in share_trajectories(list(cfg.methods))
    ]


def _cell_header(cfg: StudyConfig) -> dict[str, Any]:
    task = get_task(cfg.task)
    device = _device(cfg.device)
    return {
        "config": asdict(cfg),
        "task": {"name": task.name, "kind": task.kind, "description": task.description},
        "versions": versions(),
        "device": str(device),
        "torch_threads": cfg.threads or (1 if device.type == "cpu" else torch.get_num_threads()),
    }


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _save_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def assemble_cell(run_dir: Path, cell_dir: Path, cfg: StudyConfig) -> dict[str, Any]:
    """Write a cell's run folder from its jobs' results; returns what went in (``cell.json``).

    A cell whose jobs all finished is written once and then left alone: resuming never
    rewrites complete results. A cell with failed jobs is written from the jobs that
    succeeded, lists the failures, and is rebuilt if a later ``--retry-failed`` fixes them.
    """
    jobs = cell_jobs(cfg)
    statuses = {j.id: job_status(run_dir, j) for j in jobs}
    marker = cell_dir / "cell.json"
    if marker.exists():
        try:
            previous = json.loads(marker.read_text())
        except ValueError:
            previous = {}
        if previous.get("complete") and (cell_dir / "metrics.jsonl").exists():
            try:
                read_jsonl(cell_dir / "metrics.jsonl")
                return previous
            except CheckpointError as e:  # rebuilt from the jobs; the damaged file is kept
                warnings.warn(
                    f"{e}; rebuilding the cell from its jobs", RuntimeWarning, stacklevel=2
                )
                damaged = cell_dir / "metrics.jsonl"
                os.replace(damaged, damaged.with_name(damaged.name + ".damaged"))
    arrays: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    states: dict[str, Any] = {}
    failures = []
    wall = 0.0
    for job in jobs:
        st = statuses[job.id]
        if st.get("state") != "done":
            failures.append(
                {
                    "job": job.id,
                    "seed": job.seed,
                    "methods": list(job.methods),
                    "state": st.get("state"),
                    "error": st.get("error", "did not finish"),
                }
            )
            continue
        job_rows, job_arrays, job_states = job_results(run_dir, job)
        rows += job_rows
        arrays.update(job_arrays)
        states.update(job_states)
        wall += float(st.get("wall_s", 0.0))
    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell_dir / "config.json", json.dumps(_cell_header(cfg), indent=2))
    atomic_write_text(cell_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _save_npz(cell_dir / "predictions.npz", arrays)
    _save_torch(cell_dir / "models.pt", states)
    atomic_write_text(cell_dir / "timing.json", json.dumps({"wall_s": wall, "jobs": len(jobs)}))
    atomic_write_text(cell_dir / "failures.json", json.dumps(failures, indent=2))
    from .report import write_report

    if rows:
        write_report(cell_dir)
    else:
        atomic_write_text(
            cell_dir / "summary.md",
            f"# {cfg.task}: no results\n\n## Failed jobs ({len(failures)})\n\nEvery job of this cell failed:\n\n"
            + "".join(f"- `{f['job']}`: {f['error']}\n" for f in failures),
        )
    info = {
        "complete": not failures,
        "jobs": [j.id for j in jobs],
        "failed": [f["job"] for f in failures],
    }
    atomic_write_text(marker, json.dumps(info, indent=2))
    return info


def _pending(run_dir: Path, jobs: list[Job], retry_failed: bool) -> list[Job]:
    todo = []
    for job in jobs:
        state = job_status(run_dir, job).get("state")
        if state == "done":
            try:  # a finished job whose results are damaged runs again from its last good state
                job_results(run_dir, job)
                continue
            except CheckpointError:
                pass
        if state == "failed" and not retry_failed:
            continue
        todo.append(job)
    return todo


def run_cells(
    run_dir: Path,
    cells: list[tuple[Path, StudyConfig]],
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    checkpoints: bool = True,
    desc: str = "sweep",
) -> dict[str, Any]:
    """Run the jobs of ``cells`` (deduplicated) and write every cell folder. Caller holds the lock."""
    jobs: dict[str, Job] = {}
    for _, cfg in cells:
        for job in cell_jobs(cfg):
            jobs.setdefault(job.id, job)
    todo = _pending(run_dir, list(jobs.values()), retry_failed)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(j.epochs * len(j.methods) for j in todo),
            unit="epoch",
            desc=f"{desc}: {len(todo)}/{len(jobs)} jobs",
            dynamic_ncols=True,
        )
    t0 = time.perf_counter()
    unfinished = {j.id for j in todo}
    needs = [(cell_dir, cfg, {j.id for j in cell_jobs(cfg)}) for cell_dir, cfg in cells]
    infos: dict[str, Any] = {}

    def assemble_ready() -> None:
        for cell_dir, cfg, ids in needs:
            if str(cell_dir) not in infos and not ids & unfinished:
                infos[str(cell_dir)] = assemble_cell(run_dir, cell_dir, cfg)

    def finished(job: Job, status: dict[str, Any]) -> None:
        unfinished.discard(job.id)
        for problem in status.get("recovered", []):
            warnings.warn(f"job {job.id}: {problem}", RuntimeWarning, stacklevel=2)
        # A cell is written as soon as its last job ends, while the workers train the rest.
        assemble_ready()

    assemble_ready()  # cells with nothing left to run
    try:
        run_jobs(
            run_dir,
            todo,
            executor=executor,
            workers=workers,
            address=address,
            on_epoch=bar.update if bar is not None else None,
            on_done=finished,
            checkpoints=checkpoints,
        )
    finally:
        if bar is not None:
            bar.close()
    assemble_ready()
    wall = time.perf_counter() - t0
    states = {j: job_status(run_dir, jobs[j]).get("state") for j in jobs}
    return {
        "jobs": len(jobs),
        "ran": len(todo),
        "done": sum(s == "done" for s in states.values()),
        "failed": sorted(j for j, s in states.items() if s == "failed"),
        "wall_s": wall,
        "cells": infos,
    }


def run_sweep(
    grid: Grid | None,
    out: str | Path,
    *,
    resume: bool = False,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: bool = True,
    retry_failed: bool = False,
    checkpoints: bool = True,
    source: str = "grid",
) -> Path:
    """Run every cell of ``grid`` into the sweep folder ``out``; returns ``out``.

    With ``resume=True`` the grid is read from ``out/sweep.json``; finished jobs are skipped,
    unfinished ones continue from their last good checkpoint, failed ones are retried only
    with ``retry_failed``.
    """
    out = Path(out)
    if resume:
        if grid is not None:
            raise ValueError("--resume continues the grid saved in the run folder; give no grid")
        if not (out / "sweep.json").is_file():
            raise FileNotFoundError(
                f"{out / 'sweep.json'} not found: {out} is not a sweep folder to resume"
            )
    elif grid is None:
        raise ValueError("give a grid (or resume=True)")
    else:
        expand_grid(grid, source)  # a bad grid fails before the folder is even created
    with FolderLock(out):
        if resume:
            saved = json.loads((out / "sweep.json").read_text())
            grid = Grid(saved["grid"]["fixed"], saved["grid"]["axes"])
        elif (out / "sweep.json").exists():
            raise FileExistsError(
                f"{out} already holds a sweep; continue it with --resume {out}, or choose "
                f"another --out (results in a run folder are never overwritten)"
            )
        cells = expand_grid(grid, source)  # fails before any job when anything is wrong
        if not resume:
            atomic_write_text(
                out / "sweep.json",
                json.dumps(
                    {
                        "grid": grid.to_dict(),
                        "cells": [{"name": c.name, "point": c.point} for c in cells],
                        "versions": versions(),
                        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                    },
                    indent=2,
                ),
            )
        result = run_cells(
            out,
            [(out / "cells" / c.name, c.config) for c in cells],
            executor=executor,
            workers=workers,
            address=address,
            progress=progress,
            retry_failed=retry_failed,
            checkpoints=checkpoints,
        )
        timing = {
            "executor": executor,
            "workers": workers,
            "wall_s": result["wall_s"],
            "jobs": result["jobs"],
            "ran": result["ran"],
        }
        atomic_write_text(out / "sweep_timing.json", json.dumps(timing, indent=2))
        write_sweep_report(out)
    return out


# -- the combined report ---------------------------------------------------------------------


def _pp(values: list[float], scale: float) -> str:
    from .stats import format_mean_std, mean_std

    if not values:
        return "—"
    mean, std = mean_std([scale * v for v in values])
    return f"{format_mean_std(mean, std)} (n={len(values)})"


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Per cell and method: the seeds' final and best primary metric, paired differences."""
    from .report import PRIMARY, load_run, summarise

    run = Path(run_dir)
    saved = json.loads((run / "sweep.json").read_text())
    axes = list(saved["grid"]["axes"])
    out = []
    for cell in saved["cells"]:
        cdir = run / "cells" / cell["name"]
        failures = (
            json.loads((cdir / "failures.json").read_text())
            if (cdir / "failures.json").exists()
            else []
        )
        entries: list[dict[str, Any]] = []
        kind = None
        if (cdir / "metrics.jsonl").exists() and (cdir / "metrics.jsonl").stat().st_size:
            config, rows, arrays = load_run(cdir)
            s = summarise(config, rows, arrays)
            kind = s["kind"]
            for e in s["entries"]:
                if not e["main"]:
                    continue
                entries.append(
                    {
                        "method": e["method"],
                        "model": e["model"],
                        "seeds": e["seeds"],
                        "final": e["final"][s["key"]],
                        "best": e["best"],
                        "ece15": e["final"].get("ece15"),
                        "diff_vs_baseline": e.get("diff_final"),
                        "diff_vs_ema": e.get("diff_vs_ema"),
                    }
                )
        elif (cdir / "config.json").exists():
            kind = json.loads((cdir / "config.json").read_text())["task"]["kind"]
        out.append(
            {
                "cell": cell["name"],
                "point": cell["point"],
                "kind": kind,
                "metric": PRIMARY[kind][0] if kind else None,
                "entries": entries,
                "failures": failures,
            }
        )
    return {"axes": axes, "fixed": saved["grid"]["fixed"], "cells": out}


def write_sweep_report(run_dir: str | Path) -> Path:
    """Write ``sweep.md``, ``sweep_results.json`` and ``sweep_<axis>.png``; returns the table's path."""
    from .report import PRIMARY
    from .stats import format_ci

    run = Path(run_dir)
    res = collect(run)
    axes = res["axes"]
    atomic_write_text(run / "sweep_results.json", json.dumps(res, indent=2, default=float))
    fixed = {k: v for k, v in res["fixed"].items()}
    n_fail = sum(len(c["failures"]) for c in res["cells"])
    lines = [
        f"# Sweep: {len(res['cells'])} cell(s)",
        "",
        "Swept: "
        + ("; ".join(f"`{_label(a)}` = {_res_axis(res, a)}" for a in axes) or "nothing (one cell)")
        + ".",
        "Fixed: " + ", ".join(f"`{_label(k)}` = {json.dumps(v)}" for k, v in fixed.items()) + ".",
        "",
        "Each row is one cell and method, judged by its main model (online for the baseline, the "
        "average otherwise), at the final epoch: mean ± sample std over seeds (n = seeds that "
        "finished). Δ: paired difference over seeds with a 95% t-interval. Best: the best epoch "
        "per seed (an optimistic, test-set-selected number).",
        "",
    ]
    metrics = {c["metric"] for c in res["cells"] if c["metric"]}
    one = metrics.pop() if len(metrics) == 1 else None
    head = [
        *(_label(a) for a in axes),
        "method",
        f"final {one}" if one else "final",
        "best",
        "Δ vs baseline [95% CI]",
        "Δ vs EMA [95% CI]",
        "ECE (15 bins)",
        "failed jobs",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in res["cells"]:
        kind = c["kind"]
        scale = PRIMARY[kind][2] if kind else 1.0
        point = [_fmt_value(a, c["point"][a]) for a in axes]
        failed_by_method: dict[str, int] = {}
        for f in c["failures"]:
            for m in f["methods"]:
                failed_by_method[m] = failed_by_method.get(m, 0) + 1
        methods_seen = set()
        for e in c["entries"]:
            methods_seen.add(e["method"])
            ci = {
                k: (format_ci(_scale_ci(e[k], scale)) if e.get(k) else "—")
                for k in ("diff_vs_baseline", "diff_vs_ema")
            }
            ece = _pp(e["ece15"], 100.0) if e.get("ece15") else "—"
            lines.append(
                "| "
                + " | ".join(
                    [
                        *point,
                        e["method"],
                        (f"{c['metric']} " if not one else "") + _pp(e["final"], scale),
                        _pp(e["best"], scale),
                        ci["diff_vs_baseline"],
                        ci["diff_vs_ema"],
                        ece,
                        str(failed_by_method.get(e["method"], 0)),
                    ]
                )
                + " |"
            )
        for m, n in failed_by_method.items():
            if m not in methods_seen:
                lines.append(
                    "| " + " | ".join([*point, m, "all failed", "—", "—", "—", "—", str(n)]) + " |"
                )
    if n_fail:
        lines += ["", f"## Failed jobs ({n_fail})", "", "| cell | job | error |", "|---|---|---|"]
        for c in res["cells"]:
            for f in c["failures"]:
                err = str(f["error"]).replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {c['cell']} | `{f['job']}` | {err} |")
    plots = _plot_axes(run, res)
    if plots:
        lines += ["", "Plots: " + ", ".join(f"`{p.name}`" for p in plots) + "."]
    lines += ["", "Per-cell tables and plots: `cells/<cell>/summary.md`."]
    atomic_write_text(run / "sweep.md", "\n".join(lines) + "\n")
    return run / "sweep.md"


def _res_axis(res: dict[str, Any], axis: str) -> str:
    values = list(dict.fromkeys(_fmt_value(axis, c["point"][axis]) for c in res["cells"]))
    return ", ".join(values)


def _label(axis: str) -> str:
    """The name people write in a grid: ``decay``, not the field ``decays``."""
    return {"decays": "decay"}.get(axis, axis)


def _fmt_value(axis: str, value: Any) -> str:
    if axis == "decays":
        return ", ".join(f"{v:g}" for v in value)
    return str(value)


def _scale_ci(d: dict[str, Any], scale: float) -> dict[str, Any]:
    return {k: scale * v if isinstance(v, float) else v for k, v in d.items()}


def _plot_axes(run: Path, res: dict[str, Any]) -> list[Path]:
    """One figure per swept axis: metric vs the axis, one panel per setting of the others."""
    from .report import PRIMARY

    axes = res["axes"]
    if not axes or not any(c["entries"] for c in res["cells"]):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import COLORS, STYLE

    paths = []
    for axis in axes:
        others = [a for a in axes if a != axis]
        xs = list(dict.fromkeys(_fmt_value(axis, c["point"][axis]) for c in res["cells"]))
        panels: dict[tuple, dict[str, dict[str, list[float]]]] = {}
        for c in res["cells"]:
            if not c["kind"]:
                continue
            key = (c["kind"], *(_fmt_value(a, c["point"][a]) for a in others))
            for e in c["entries"]:
                panels.setdefault(key, {}).setdefault(e["method"], {})[
                    _fmt_value(axis, c["point"][axis])
                ] = e["final"]
        keys = list(panels)[:16]
        if not keys:
            continue
        ncol = min(4, len(keys))
        nrow = -(-len(keys) // ncol)
        with plt.rc_context(STYLE):
            fig, axs = plt.subplots(
                nrow, ncol, figsize=(3.6 * ncol, 2.9 * nrow), squeeze=False, sharey=False
            )
            for ax, key in zip(axs.flat, keys):
                kind = key[0]
                metric, _, scale, unit = PRIMARY[kind]
                for method, by_x in panels[key].items():
                    pos = [i for i, x in enumerate(xs) if x in by_x]
                    vals = [np.asarray(by_x[xs[i]], float) * scale for i in pos]
                    mean = np.array([v.mean() for v in vals])
                    std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
                    color = COLORS.get(method)
                    ax.plot(pos, mean, "o-", color=color, label=method, lw=1.5, ms=4)
                    ax.fill_between(pos, mean - std, mean + std, color=color, alpha=0.18, lw=0)
                ax.set_xticks(range(len(xs)), xs, rotation=30 if len(xs) > 4 else 0)
                ax.set_xlabel(_label(axis))
                ax.set_ylabel(
                    f"final {metric.replace('_', ' ')}"
                    + (f" ({unit.strip()})" if unit.strip() else "")
                )
                title = ", ".join(f"{_label(a)}={v}" for a, v in zip(others, key[1:]))
                ax.set_title(title or f"{metric} vs {_label(axis)}", fontsize=8)
            for ax in list(axs.flat)[len(keys) :]:
                ax.set_visible(False)
            axs.flat[0].legend(loc="best")
            fig.suptitle(
                f"final metric vs {_label(axis)}: mean over seeds, band ± 1 std", fontsize=9
            )
            fig.tight_layout()
            path = run / f"sweep_{_label(axis)}.png"
            fig.savefig(path)
            plt.close(fig)
        paths.append(path)
    return paths
