"""Running studies: a ``compare`` run (one cell) or a sweep (a grid of cells), resumably.

Both cut their cells into jobs (:mod:`switchema.lab.jobs`), run the jobs that are not done
(:mod:`switchema.lab.executors`, as :class:`~switchema.lab.options.RunOptions` say) and write
each cell's run folder from its jobs' results as soon as its last job ends, then the reports
(:mod:`switchema.lab.report`). A compare run folder is a sweep cell of its own::

    RUN/config.json          resolved settings, versions, device (compare: the run itself)
    RUN/jobs/<job>/          checkpoints, metrics and status of each job
    RUN/cells/<cell>/        (sweeps) a complete compare run folder per cell
    RUN/sweep.json           (sweeps) the grid, its cells (what --resume reads)

A folder that already holds results is never overwritten (start a new ``--out`` or
``--resume``); every run and job folder is locked while it is written.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, read_jsonl
from .config import SETTINGS, Study, StudyConfig, canonical_keys
from .errors import ConfigError, MissingFileError, RunExistsError, UsageError
from .executors import run_jobs
from .jobs import (
    Job,
    epochs_done,
    job_dir,
    job_events,
    job_results,
    job_status,
    never_trained,
    study_jobs,
)
from .lock import FolderLock
from .machine import machine_facts
from .options import AUTO, RunOptions, available_cores
from .preflight import check_studies, check_writable
from .progress import Progress
from .report import Figures, tensorboard_writer, write_report, write_sweep_report
from .report.export import LiveTensorBoard
from .resolve import resolve
from .sweep import Grid, expand_grid

__all__ = [
    "default_run_folder",
    "run_compare",
    "run_sweep",
    "resume_study",
    "run_cells",
    "assemble_cell",
    "versions",
]


DEFAULT_OPTIONS = RunOptions()


def default_run_folder(name: str) -> Path:
    """``runs/<name>-<date>-<time>``: where a run goes when no ``--out`` is given."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def versions() -> dict[str, str]:
    out = {
        "switchema": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **machine_facts(),  # CPU model, instruction set, MKL and oneDNN versions
    }
    try:  # the installed version, read without importing scikit-learn (seconds)
        out["scikit-learn"] = metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:  # pragma: no cover - sklearn is in the lab extra
        pass
    return out


def run_header(study: Study) -> dict[str, Any]:
    """A run folder's ``config.json``: the resolved settings and where they ran."""
    task, device = study.task, study.device
    return {
        "config": study.config.to_dict(),
        "task": {
            "name": task.name,
            "kind": task.kind,
            "description": task.description,
            "has_batchnorm": task.has_batchnorm,
        },
        "versions": versions(),
        "device": str(device),
        "torch_threads": study.config.threads
        or (1 if device.type == "cpu" else torch.get_num_threads()),
    }


def run_compare(
    study: Study | None,
    out: str | Path,
    options: RunOptions = DEFAULT_OPTIONS,
    *,
    resume: bool = False,
) -> Path:
    """Run every (seed, method) of ``study`` and write the run folder ``out``; returns it.

    Writes ``config.json`` (resolved settings and package versions), ``metrics.jsonl`` (one
    row per seed, method, model and epoch), ``metrics.csv`` (the same rows as a table),
    ``predictions.npz`` (final test probabilities; decision-boundary grids for 2-D tasks),
    ``models.pt`` (final weights of every evaluated model, for ``switchema analyze``),
    ``summary.md`` and the plots. With ``resume=True`` a killed run continues: with
    ``study=None`` under the folder's own settings, or under ``study`` if it only adds seeds
    or methods (see :func:`resume_study`). The device, the task's data and the folder are checked
    before the folder is created (:mod:`switchema.lab.preflight`).
    """
    out = Path(out)
    rewrite = restart = False
    if resume:
        study, rewrite, restart = _continued(out, study)
    elif study is None:
        raise UsageError("give a study, or resume=True to continue a run folder")
    check_writable(out)
    check_studies([study], device=options.executor == "local")
    if options.tensorboard:
        tensorboard_writer()  # missing TensorBoard is said now, not after training
    with FolderLock(out):
        if not resume and (out / "config.json").exists():
            raise RunExistsError(
                f"{out} already holds a run; continue it with --resume {out}, or choose another "
                f"--out (results in a run folder are never overwritten)"
            )
        if restart:  # no job recorded an epoch: nothing of the old settings is kept
            shutil.rmtree(out / "jobs", ignore_errors=True)
        if not resume or rewrite:
            atomic_write_text(out / "config.json", json.dumps(run_header(study), indent=2))
        run_cells(out, [(out, study)], options, desc=study.task.name)
    return out


def resume_study(
    folder: str | Path, changes: Mapping[str, Any] | None = None
) -> tuple[Study, dict[str, list[Any]]]:
    """The study ``compare --resume`` continues, and what ``changes`` add to the saved one.

    With no ``changes`` the saved settings are continued. ``changes`` (settings by name, as
    flags give them) may add seeds or methods, if every job already in the folder stays one
    of the run's jobs (adding ``swa`` to ``baseline`` + ``ema`` changes their shared job);
    anything else raises :class:`UsageError` naming every changed setting, unless no job of
    the folder ever recorded an epoch (every one failed at start-up): then the run starts
    again under the changed settings. Returns the study and ``{"seeds": [added],
    "methods": [added]}`` (only what is added), or ``{"restart": [changed settings]}``.
    """
    folder = Path(folder)
    if not changes:
        return _continued(folder, None)[0], {}
    config = _saved_config(folder)
    study = resolve(config.replace(**canonical_keys(dict(changes), "--resume flags")))
    study, _, restart = _continued(folder, study)
    if restart:
        changed = [n for n in SETTINGS if getattr(config, n) != getattr(study.config, n)]
        return study, {"restart": changed}
    added = {
        name: [v for v in getattr(study.config, name) if v not in getattr(config, name)]
        for name in ("seeds", "methods")
    }
    return study, {k: v for k, v in added.items() if v}


def _saved_config(folder: Path) -> StudyConfig:
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{folder / 'config.json'} not found: nothing to resume in {folder}")
    header = json.loads((folder / "config.json").read_text())
    return StudyConfig.from_dict(header["config"], str(folder / "config.json"))


def _saved_study(folder: Path) -> Study:
    return resolve(_saved_config(folder))


def _continued(folder: Path, study: Study | None) -> tuple[Study, bool, bool]:
    """What ``--resume folder`` runs: ``(study, rewrite config.json?, start afresh?)``.

    ``study`` None continues the saved settings; a study that only adds seeds or methods
    extends them; any other study (or saved settings this version refuses) is accepted only
    while no job has recorded an epoch, and then the folder starts afresh.
    """
    try:
        saved, refused = _saved_study(folder), None
    except ConfigError as e:
        saved, refused = None, e
    if saved is not None and (study is None or study.config == saved.config):
        return saved, False, False
    fresh = never_trained(folder)
    if study is None:
        how = (
            "no job there finished an epoch, so give corrected values with this --resume "
            "(e.g. --data-opt KEY=VALUE), or delete the folder"
            if fresh
            else f"delete {folder} or start a new run with --out"
        )
        raise UsageError(f"--resume {folder}: its saved settings are refused ({refused}); {how}")
    if saved is not None:
        try:
            _check_extension(folder, saved, study)
            return study, True, False
        except UsageError:
            if not fresh:
                raise
    elif not fresh:
        raise UsageError(
            f"--resume {folder}: its saved settings are refused ({refused}); delete {folder} "
            f"or start a new run with --out"
        )
    return study, True, True


def _check_extension(folder: Path, saved: Study, study: Study) -> None:
    """``study`` continues ``saved``: the same settings, seeds and methods only added."""
    old, new = saved.config, study.config
    changed = [
        f"{name} (saved {_show(getattr(old, name))}, given {_show(getattr(new, name))})"
        for name in SETTINGS
        if getattr(old, name) != getattr(new, name) and name not in ("seeds", "methods")
    ]
    for name in ("seeds", "methods"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after and not set(before) <= set(after):
            changed.append(
                f"{name} (saved {_show(before)}, given {_show(after)}: {name} can be added, "
                f"not removed)"
            )
    if changed:
        raise UsageError(
            f"--resume {folder} continues the settings saved there; these differ: "
            f"{'; '.join(changed)}. Drop them, or start a new run with --out, or delete {folder} "
            f"(only more --seeds or --methods can be added to a run whose jobs have trained)"
        )
    lost = {j.id for j in study_jobs(saved)} - {j.id for j in study_jobs(study)}
    if lost:
        added = [m for m in new.methods if m not in old.methods]
        raise UsageError(
            f"--resume {folder}: cannot add {_show(tuple(added))}: methods that never change "
            f"the weights being trained (baseline, ema, swa) share one training run per seed, "
            f"so adding one changes jobs already run ({', '.join(sorted(lost))}). Start a new "
            f"run with --out (switching methods, sema and sema-openmixup, can be added)"
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return repr(value)


def run_sweep(
    grid: Grid | None,
    out: str | Path,
    options: RunOptions = DEFAULT_OPTIONS,
    *,
    resume: bool = False,
    source: str = "grid",
) -> Path:
    """Run every cell of ``grid`` into the sweep folder ``out``; returns ``out``.

    With ``resume=True`` the grid is read from ``out/sweep.json``; finished jobs are skipped,
    unfinished ones continue from their last good checkpoint, failed ones are retried only
    with ``options.retry_failed``. The grid is expanded (every cell resolved) once, before
    the folder is created.
    """
    out = Path(out)
    if resume:
        if grid is not None:
            raise UsageError("--resume continues the grid saved in the run folder; give no grid")
        if not (out / "sweep.json").is_file():
            raise MissingFileError(
                f"{out / 'sweep.json'} not found: {out} is not a sweep folder to resume"
            )
        grid = Grid.from_dict(json.loads((out / "sweep.json").read_text())["grid"])
    elif grid is None:
        raise UsageError("give a grid (or resume=True)")
    cells = expand_grid(grid, source)  # a bad grid fails before the folder is even created
    check_writable(out, "sweep folder")
    check_studies([c.study for c in cells], device=options.executor == "local")
    if options.tensorboard:
        tensorboard_writer()
    with FolderLock(out):
        if not resume:
            if (out / "sweep.json").exists():
                raise RunExistsError(
                    f"{out} already holds a sweep; continue it with --resume {out}, or choose "
                    f"another --out (results in a run folder are never overwritten)"
                )
            sweep = {
                "grid": grid.to_dict(),
                "cells": [{"name": c.name, "point": c.point} for c in cells],
                "versions": versions(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            atomic_write_text(out / "sweep.json", json.dumps(sweep, indent=2))
        result = run_cells(out, [(out / "cells" / c.name, c.study) for c in cells], options)
        timing = {
            "executor": options.executor,
            "workers": result["workers"],
            "wall_s": result["wall_s"],
            "jobs": result["jobs"],
            "ran": result["ran"],
        }
        atomic_write_text(out / "sweep_timing.json", json.dumps(timing, indent=2))
        write_sweep_report(out, figures=_figures(options))
    return out


def _figures(options: RunOptions) -> Figures:
    return Figures(options.figure_format, options.dpi)


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
    cells: list[tuple[Path, Study]],
    options: RunOptions,
    *,
    desc: str = "sweep",
) -> dict[str, Any]:
    """Run the jobs of ``cells`` (deduplicated) and write every cell folder. Caller holds the lock."""
    cell_jobs = [(cell_dir, study, study_jobs(study)) for cell_dir, study in cells]
    jobs: dict[str, Job] = {}
    for _, _, js in cell_jobs:
        for job in js:
            jobs.setdefault(job.id, job)
    todo = _pending(run_dir, list(jobs.values()), options.retry_failed)
    threads = max((int(j.study.config.threads or 1) for j in todo), default=1)
    workers = options.workers_for(len(todo), threads)
    if options.workers == AUTO and options.executor == "local" and todo:
        print(
            f"--jobs auto: {workers} job(s) at once ({len(todo)} to run, "
            f"{available_cores()} core(s) available, {threads} torch thread(s) per job)",
            file=sys.stderr,
        )
    progress = None
    if options.progress and todo:
        done = {j.id: epochs_done(run_dir, j) for j in todo}
        progress = Progress(todo, done, total_jobs=len(jobs), desc=desc)
    t0 = time.perf_counter()
    unfinished = {j.id for j in todo}
    infos: dict[str, Any] = {}

    def assemble_ready() -> None:
        for cell_dir, study, js in cell_jobs:
            if str(cell_dir) not in infos and not {j.id for j in js} & unfinished:
                infos[str(cell_dir)] = assemble_cell(run_dir, cell_dir, study, js, options)

    def finished(job: Job, status: dict[str, Any]) -> None:
        unfinished.discard(job.id)
        if progress is not None:
            progress.job_done(job, status)
        for problem in status.get("recovered", []):
            warnings.warn(f"job {job.id}: {problem}", RuntimeWarning, stacklevel=2)
        # A cell is written as soon as its last job ends, while the workers train the rest.
        assemble_ready()

    assemble_ready()  # cells with nothing left to run
    live = None
    if options.tensorboard and todo:  # events as the run goes, not only at the end
        users: dict[str, list[Path]] = {}
        for cell_dir, _, js in cell_jobs:
            for job in js:
                users.setdefault(job.id, []).append(Path(cell_dir))
        live = LiveTensorBoard(users, {j.id: job_dir(run_dir, j) for j in todo})
    listeners = [x.epoch for x in (progress, live) if x is not None]

    def on_epoch(event: dict[str, Any]) -> None:
        for listen in listeners:
            listen(event)

    try:
        run_jobs(run_dir, todo, options, on_epoch=on_epoch if listeners else None, on_done=finished)
    finally:
        if progress is not None:
            progress.close()
        if live is not None:
            live.close()
    assemble_ready()
    states = {j: job_status(run_dir, jobs[j]).get("state") for j in jobs}
    return {
        "jobs": len(jobs),
        "ran": len(todo),
        "done": sum(s == "done" for s in states.values()),
        "failed": sorted(j for j, s in states.items() if s == "failed"),
        "wall_s": time.perf_counter() - t0,
        "workers": workers,
        "cells": infos,
    }


def _complete_cell(cell_dir: Path, jobs: list[Job]) -> dict[str, Any] | None:
    """The cell's ``cell.json`` if the cell was written complete, from these ``jobs``, and its
    metrics are intact."""
    marker = cell_dir / "cell.json"
    if not marker.exists():
        return None
    try:
        previous = json.loads(marker.read_text())
    except ValueError:
        return None
    same = previous.get("jobs") == [j.id for j in jobs]  # a resumed run may add seeds
    if same and previous.get("complete") and (cell_dir / "metrics.jsonl").exists():
        try:
            read_jsonl(cell_dir / "metrics.jsonl")
            return previous
        except CheckpointError as e:  # rebuilt from the jobs; the damaged file is kept
            warnings.warn(f"{e}; rebuilding the cell from its jobs", RuntimeWarning, stacklevel=3)
            damaged = cell_dir / "metrics.jsonl"
            os.replace(damaged, damaged.with_name(damaged.name + ".damaged"))
    return None


def _save(path: Path, obj: Any, npz: bool = False) -> None:
    buf = io.BytesIO()
    if npz:
        np.savez_compressed(buf, **obj)
    else:
        torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def assemble_cell(
    run_dir: Path,
    cell_dir: Path,
    study: Study,
    jobs: list[Job],
    options: RunOptions = DEFAULT_OPTIONS,
) -> dict[str, Any]:
    """Write a cell's run folder from its jobs' results; returns what went in (``cell.json``).

    A cell whose jobs all finished is written once and then left alone: resuming never
    rewrites complete results. A cell with failed jobs is written from the jobs that
    succeeded, lists the failures, and is rebuilt if a later ``--retry-failed`` fixes them.
    """
    previous = _complete_cell(cell_dir, jobs)
    if previous is not None:
        return previous
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    states: dict[str, Any] = {}
    events: list[dict[str, Any]] = []  # each averager's event log, with its method and seed
    t_cell = time.perf_counter()
    failures = []
    wall = 0.0
    phases: dict[str, float] = {}
    for job in jobs:
        st = job_status(run_dir, job)
        if st.get("state") != "done":
            error = st.get("error", "did not finish")
            failures.append(
                {"job": job.id, "seed": job.seed, "methods": list(job.methods)}
                | {"state": st.get("state"), "error": error}
            )
            continue
        job_rows, job_arrays, job_states = job_results(run_dir, job)
        events += job_events(run_dir, job)
        rows += job_rows
        arrays.update(job_arrays)
        states.update(job_states)
        wall += float(st.get("wall_s", 0.0))
        for name, seconds in st.get("phases_s", {}).items():
            phases[name] = phases.get(name, 0.0) + float(seconds)
    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell_dir / "config.json", json.dumps(run_header(study), indent=2))
    atomic_write_text(cell_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _save(cell_dir / "predictions.npz", arrays, npz=True)
    _save(cell_dir / "models.pt", states)
    atomic_write_text(cell_dir / "events.json", json.dumps(events, indent=1))
    # what the cell cost: its jobs' wall time (summed over jobs, whatever ran at once) and
    # that time by phase; after the report, also the seconds spent writing this folder
    timing = {
        "wall_s": wall,
        "jobs": len(jobs),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
    }
    atomic_write_text(cell_dir / "timing.json", json.dumps(timing, indent=2))
    atomic_write_text(cell_dir / "failures.json", json.dumps(failures, indent=2))
    if rows:
        write_report(cell_dir, figures=_figures(options), tensorboard=options.tensorboard)
    else:
        atomic_write_text(
            cell_dir / "summary.md",
            f"# {study.config.task}: no results\n\n## Failed jobs ({len(failures)})\n\n"
            "Every job of this cell failed:\n\n"
            + "".join(f"- `{f['job']}`: {f['error']}\n" for f in failures),
        )
    timing["report_s"] = round(time.perf_counter() - t_cell, 3)
    atomic_write_text(cell_dir / "timing.json", json.dumps(timing, indent=2))
    info = {
        "complete": not failures,
        "jobs": [j.id for j in jobs],
        "failed": [f["job"] for f in failures],
    }
    atomic_write_text(cell_dir / "cell.json", json.dumps(info, indent=2))
    return info
