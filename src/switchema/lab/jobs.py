"""Jobs: one training trajectory (a seed and the methods that share it), resumable on its own.

A study or sweep is cut into jobs; each job lives in ``RUN/jobs/<id>/``:

* ``job.json``: what the job trains (the resolved settings, methods, seed);
* ``checkpoint.pt`` (and ``checkpoint.pt.prev``): written atomically at every epoch end by
  :mod:`switchema.lab.checkpoint`; the newest one is the job's authoritative state, and after
  the last epoch it holds the results;
* ``metrics.jsonl``: the metric rows so far, for people watching the run (rebuilt from the
  checkpoint on resume);
* ``status.json``: ``running``, ``done``, ``failed`` (with the error and traceback) or
  ``interrupted`` (Ctrl-C, or the run stopped its workers); a job never started has none
  (``pending``).

The job id is a hash of every setting that can change the job's numbers, so two cells of a
sweep that need the same trajectory (e.g. the baseline for two switch intervals) share one
job, and a resumed sweep finds its jobs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_latest,
    read_jsonl,
    save_checkpoint,
)
from .config import ALWAYS, SETTINGS, Study
from .errors import UsageError
from .lock import FolderLock
from .methods import share_trajectories
from .tasks import apply_label_noise, split_validation
from .train import train_run

__all__ = [
    "Job",
    "job_key",
    "make_job",
    "job_dir",
    "study_jobs",
    "run_job",
    "job_status",
    "job_results",
    "job_events",
    "epochs_done",
    "close_status",
    "build_study_data",
    "prepare_data",
    "never_trained",
]

# The names these settings had before they were renamed: the job key keeps them, so a run
# folder written by an older version still finds its jobs when it is resumed.
_KEY_NAMES = {"decay": "decays", "lr_schedule": "schedule"}


@dataclass(frozen=True)
class Job:
    """One training run: ``methods`` (sharing one trajectory) for ``seed`` under ``study``."""

    id: str
    study: Study
    methods: tuple[str, ...]
    seed: int

    @property
    def epochs(self) -> int:
        return int(self.study.config.epochs)

    def to_dict(self) -> dict[str, Any]:
        """What ``job.json`` says the job trains."""
        return {
            "id": self.id,
            "config": self.study.config.to_dict(),
            "task_module": self.study.task.module,
            "methods": list(self.methods),
            "seed": self.seed,
        }


def job_key(study: Study, methods: list[str], seed: int) -> dict[str, Any]:
    """Every setting that can change the numbers of ``methods`` trained for ``seed``.

    A method-specific setting (one whose metadata names the methods it affects) counts only
    if one of ``methods`` uses it, so e.g. the baseline's job is the same for every switch
    interval; a setting that does not apply given the others (``Setting.requires``: a
    warm-up's length without that warm-up) does not count; and a setting added since run
    folders were first written counts only when it differs from the value they used
    (``Setting.before``), so an older folder's jobs keep their ids.
    """
    cfg = study.config
    full = cfg.to_dict()
    full["methods"], full["seeds"] = list(methods), [seed]
    return {
        _KEY_NAMES.get(name, name): value
        for name, value in full.items()
        if (SETTINGS[name].methods is None or any(m in SETTINGS[name].methods for m in methods))
        and cfg.applies(name)
        and not (SETTINGS[name].before is not ALWAYS and value == SETTINGS[name].before)
    }


def make_job(study: Study, methods: list[str], seed: int) -> Job:
    """The job that trains ``methods`` (one shared trajectory) for ``seed`` under ``study``."""
    key = job_key(study, methods, seed)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{study.config.task}-s{seed}-{'+'.join(methods)}-{digest}"
    return Job(name, study, tuple(methods), seed)


def study_jobs(study: Study) -> list[Job]:
    """The study's jobs, seed-major, in the order its metrics rows are written."""
    cfg = study.config
    return [
        make_job(study, group, seed)
        for seed in cfg.seeds
        for group in share_trajectories(list(cfg.methods), separate=study.task.uses_teacher)
    ]


def build_study_data(study: Study):
    """The data a study trains on: ``(data, y_train, flipped)``.

    The task's data set for ``data_seed``; with label noise, a fraction of the training labels
    flipped (``y_train``, and the mask ``flipped``); with ``val_fraction``, a validation split
    carved from the training data after the flips (so its labels are noisy too), all fixed by
    the data seed.
    """
    cfg = study.config
    data = study.task.build_data(cfg.data_seed, **cfg.data_options)
    y_train, flipped = data.y_train, None
    if cfg.label_noise:
        gen = torch.Generator().manual_seed(20_000 + cfg.data_seed)
        y_train, flipped = apply_label_noise(data.y_train, cfg.label_noise, data.num_classes, gen)
    return split_validation(data, y_train, flipped, cfg.val_fraction, cfg.data_seed)


_DATA: dict[str, Any] = {}  # the two data sets used last in this process


def prepare_data(study: Study):
    """The data set, training labels (noisy if asked) and mask of flipped labels of ``study``
    (:func:`build_study_data`).

    One data set for all seeds, fixed by ``data_seed``; cached per process, so the jobs a
    worker runs build it once.
    """
    cfg = study.config
    key = repr(
        (
            cfg.task,
            cfg.data_seed,
            sorted(cfg.data_options.items()),
            cfg.label_noise,
            cfg.val_fraction,
        )
    )
    if key not in _DATA:
        _DATA[key] = build_study_data(study)
    _DATA[key] = _DATA.pop(key)  # most recently used last
    while len(_DATA) > 2:
        _DATA.pop(next(iter(_DATA)))
    return _DATA[key]


def job_dir(run_dir: str | Path, job: Job) -> Path:
    return Path(run_dir) / "jobs" / job.id


def job_status(run_dir: str | Path, job: Job) -> dict[str, Any]:
    """The job's ``status.json`` (``{"state": "pending"}`` when it never started)."""
    path = job_dir(run_dir, job) / "status.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"state": "pending"}
    except ValueError:  # a status is rewritten from the checkpoint, never trusted blindly
        return {"state": "unknown", "error": f"{path} is corrupted"}


def epochs_done(run_dir: str | Path, job: Job) -> int:
    """Epochs a resumed ``job`` will not train again: those its metrics record, if it has a
    checkpoint to continue from (without one it starts again from epoch 1)."""
    folder = job_dir(run_dir, job)
    if not (folder / "checkpoint.pt").exists() and not (folder / "checkpoint.pt.prev").exists():
        return 0
    try:
        rows = read_jsonl(folder / "metrics.jsonl")
    except (OSError, CheckpointError):
        return 0
    return min(job.epochs, len({r.get("epoch") for r in rows}))


def never_trained(folder: str | Path) -> bool:
    """Whether no job in the run folder ever recorded an epoch (each failed at start-up, or
    none ran): nothing in it depends on its settings."""
    jobs = Path(folder) / "jobs"
    return not jobs.is_dir() or not any(
        (d / name).is_file() and (d / name).stat().st_size > 0
        for d in jobs.iterdir()
        for name in ("metrics.jsonl", "checkpoint.pt", "checkpoint.pt.prev")
    )


def close_status(run_dir: str | Path, job: Job, state: str, error: str | None = None) -> None:
    """Record ``state`` for a job whose process stopped while it was ``running`` (a worker
    killed or stopped by the run); a job that recorded its own end is left alone."""
    folder = job_dir(run_dir, job)
    if not (folder / "status.json").exists():
        return
    try:
        lock = FolderLock(folder, what="job folder").acquire()
    except UsageError:  # another live process holds the job: it records its own state
        return
    try:
        status = job_status(run_dir, job)
        if status.get("state") != "running":
            return
        status["state"] = state
        if error is not None:
            status["error"] = error
        atomic_write_text(folder / "status.json", json.dumps(status, indent=2))
    finally:
        lock.release()


def job_results(run_dir: str | Path, job: Job) -> tuple[list[dict], dict, dict]:
    """Rows, arrays and final weights of a finished job, from its last checkpoint."""
    folder = job_dir(run_dir, job)
    state, used, problems = load_latest(folder / "checkpoint.pt")
    if state is None or not state.get("done"):
        detail = "; ".join(problems) or f"no finished checkpoint in {folder}"
        raise CheckpointError(
            f"results of job {job.id} are not readable: {detail}. Run the sweep again with "
            f"--resume to recompute them from the last good checkpoint."
        )
    return (
        list(state["rows"]),
        {k: v.numpy() for k, v in state["arrays"].items()},
        state["states"],
    )


def job_events(run_dir: str | Path, job: Job) -> list[dict[str, Any]]:
    """What each averager of a job recorded: per method, ``{"method", "seed"}`` and its
    :class:`~switchema.events.EventLog` (empty if the job wrote none)."""
    path = job_dir(run_dir, job) / "events.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _set_threads(study: Study) -> None:
    if study.config.threads:
        torch.set_num_threads(study.config.threads)
    elif study.device.type == "cpu":
        # The lab's models are tiny: one thread is as fast as several on a quiet machine and
        # does not collapse when other processes compete for the cores. The count is part of
        # the job, not of how many run at once, so --jobs N never changes a number.
        torch.set_num_threads(1)


def run_job(
    run_dir: str | Path,
    job: Job,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: bool = True,
) -> dict[str, Any]:
    """Run (or continue) ``job`` inside ``run_dir``; returns its final status.

    The job resumes from its newest readable checkpoint; a damaged checkpoint is reported in
    the status (``recovered``) and the previous one used. Any exception during training (a
    divergence, an out-of-memory error) is recorded as ``failed`` with its message and
    traceback instead of being raised, so the other jobs of a sweep go on. A
    ``KeyboardInterrupt`` (Ctrl-C) is recorded as ``interrupted`` and raised.

    ``on_epoch(event)`` is called after every epoch with ``{"job", "epoch", "epochs",
    "model", "metric", "value"}``: the job, the epoch just done, and the latest test metric
    of its first averaged model (or of the online model), for progress displays.
    """
    folder = job_dir(run_dir, job)
    with FolderLock(folder, what="job folder"):
        if not (folder / "job.json").exists():
            atomic_write_text(folder / "job.json", json.dumps(job.to_dict(), indent=2))
        before = job_status(run_dir, job)
        ckpt = folder / "checkpoint.pt"
        state, used, problems = load_latest(ckpt)
        if before.get("state") == "done" and state is not None and state.get("done"):
            return before
        status: dict[str, Any] = {
            "state": "running",
            "job": job.id,
            "pid": os.getpid(),
            "attempt": int(before.get("attempt", 0)) + 1,
            "resumed_from_epoch": int(state["epoch"]) if state is not None else 0,
            "recovered": problems,
        }
        t0 = time.perf_counter()
        atomic_write_text(folder / "status.json", json.dumps(status, indent=2))
        metrics = folder / "metrics.jsonl"
        written = [len(state["rows"]) if state is not None else 0]

        def save(st: dict[str, Any]) -> None:
            if checkpoints or st["done"]:
                save_checkpoint(ckpt, st)
            _write_events(folder, job, st)
            new = st["rows"][written[0] :]
            written[0] = len(st["rows"])
            with open(metrics, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)

        phases: dict[str, float] = {}
        try:  # from here on, every way out records the job's state
            _rebuild_metrics(metrics, state, status)
            _set_threads(job.study)
            t_data = time.perf_counter()
            data, y_train, flipped = prepare_data(job.study)
            phases["data"] = time.perf_counter() - t_data
            train_run(
                job.study,
                data,
                list(job.methods),
                job.seed,
                y_train=y_train,
                flipped=flipped,
                resume=state,
                checkpoint=save,
                on_epoch=None if on_epoch is None else (lambda rows: on_epoch(_event(job, rows))),
                phases=phases,
            )
        except KeyboardInterrupt:  # Ctrl-C, or the run stopping its workers: resumable
            status["state"] = "interrupted"
            _write_status(folder, status, t0, phases)
            raise
        except Exception as e:  # recorded, not raised: the rest of the sweep goes on
            status.update(
                state="failed",
                error=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc(),
            )
        else:
            status["state"] = "done"
        _write_status(folder, status, t0, phases)
        return status


def _write_events(folder: Path, job: Job, state: dict[str, Any]) -> None:
    """The averagers' own records of what they did (``events.json``), for reports: never
    re-derived from the settings."""
    events = [{"method": m, "seed": job.seed, **log} for m, log in state.get("events", {}).items()]
    atomic_write_text(folder / "events.json", json.dumps(events))


def _write_status(
    folder: Path, status: dict[str, Any], t0: float, phases: dict[str, float]
) -> None:
    """The job's final status, with its wall time and the seconds of each phase in it
    (``phases_s``: data, setup, train, evaluate, checkpoint; ``other``: the rest)."""
    status["wall_s"] = time.perf_counter() - t0
    known = {k: round(v, 4) for k, v in phases.items()}
    known["other"] = round(max(0.0, status["wall_s"] - sum(phases.values())), 4)
    status["phases_s"] = known
    atomic_write_text(folder / "status.json", json.dumps(status, indent=2))


def _event(job: Job, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A progress event: the epoch just done and the latest test metric of the job."""
    main = next((r for r in rows if r["model"] != "online"), rows[0])
    metric = next((k for k in ("test_acc", "test_mse", "test_bpc") if k in main), None)
    return {
        "job": job.id,
        "epoch": int(main["epoch"]),
        "epochs": job.epochs,
        "model": f"{main['method']} {main['model']}",
        "metric": metric,
        "value": main.get(metric) if metric else None,
    }


def _rebuild_metrics(path: Path, state: dict[str, Any] | None, status: dict[str, Any]) -> None:
    """Make the job's metrics file agree with its checkpoint before training goes on.

    A killed process may have left a half-written line, or rows of an epoch whose
    checkpoint never completed; the checkpoint's rows are the truth. A damaged file is
    kept beside the new one (``metrics.jsonl.damaged``), never silently dropped.
    """
    rows = list(state["rows"]) if state is not None else []
    if path.exists():
        try:
            read_jsonl(path)
        except CheckpointError as e:
            status["recovered"].append(f"{e}; rebuilt from the checkpoint")
            os.replace(path, path.with_name(path.name + ".damaged"))
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
