"""Jobs: one training trajectory (a seed and the methods that share it), resumable on its own.

A study or sweep is cut into jobs; each job lives in ``RUN/jobs/<id>/``:

* ``job.json``: what the job trains (the resolved settings, methods, seed);
* ``checkpoint.pt`` (and ``checkpoint.pt.prev``): written atomically at every epoch end by
  :mod:`switchema.lab.checkpoint`; the newest one is the job's authoritative state, and after
  the last epoch it holds the results;
* ``metrics.jsonl``: the metric rows so far, for people watching the run (rebuilt from the
  checkpoint on resume);
* ``status.json``: ``running``, ``done`` or ``failed`` (with the error and traceback).

The job id is a hash of every setting that can change the job's numbers, so two cells of a
sweep that need the same trajectory (e.g. the baseline for two switch intervals) share one
job, and a resumed sweep finds its jobs again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from .lock import FolderLock
from .tasks import apply_label_noise, get_task
from .train import StudyConfig, _device, train_run

__all__ = ["Job", "make_job", "run_job", "job_status", "job_results", "prepare_data"]

# Settings that do not change a job's numbers unless it carries the methods that use them.
_ONLY_FOR = {
    "decays": ("ema", "sema", "sema-openmixup"),
    "ema_warmup": ("ema", "sema"),
    "bn_recompute": ("ema", "sema", "sema-openmixup"),
    "switch_every": ("sema", "sema-openmixup"),
    "switch_start": ("sema", "sema-openmixup"),
    "reset_optimizer": ("sema", "sema-openmixup"),
    "swa_start": ("swa",),
}


@dataclass(frozen=True)
class Job:
    id: str
    config: dict[str, Any]  # a resolved StudyConfig as a dict
    methods: tuple[str, ...]
    seed: int

    @property
    def epochs(self) -> int:
        return int(self.config["epochs"])

    def study_config(self) -> StudyConfig:
        return StudyConfig(**self.config)


def make_job(cfg: StudyConfig, methods: list[str], seed: int) -> Job:
    """The job that trains ``methods`` (one shared trajectory) for ``seed`` under ``cfg``."""
    full = asdict(cfg)
    full["methods"], full["seeds"] = list(methods), [seed]
    key = {
        k: v
        for k, v in full.items()
        if k not in _ONLY_FOR or any(m in _ONLY_FOR[k] for m in methods)
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = f"{cfg.task}-s{seed}-{'+'.join(methods)}-{digest}"
    return Job(name, full, tuple(methods), seed)


@functools.lru_cache(maxsize=2)
def _cached_data(task_name: str, data_seed: int, options: str, label_noise: float):
    task = get_task(task_name)
    data = task.build_data(data_seed, **json.loads(options))
    y_train, flipped = data.y_train, None
    if label_noise:
        gen = torch.Generator().manual_seed(20_000 + data_seed)
        y_train, flipped = apply_label_noise(data.y_train, label_noise, data.num_classes, gen)
    return data, y_train, flipped


def prepare_data(cfg: StudyConfig):
    """The data set, training labels (noisy if asked) and mask of flipped labels of ``cfg``.

    One data set for all seeds, fixed by ``data_seed``; cached per process, so the jobs a
    worker runs build it once.
    """
    return _cached_data(
        cfg.task, cfg.data_seed, json.dumps(cfg.data_options, sort_keys=True), cfg.label_noise
    )


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


def _set_threads(cfg: StudyConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif _device(cfg.device).type == "cpu":
        # The lab's models are tiny: one thread is as fast as several on a quiet machine and
        # does not collapse when other processes compete for the cores. The count is part of
        # the job, not of how many run at once, so --jobs N never changes a number.
        torch.set_num_threads(1)


def run_job(
    run_dir: str | Path,
    job: Job,
    *,
    on_epoch: Callable[[int], None] | None = None,
    checkpoints: bool = True,
) -> dict[str, Any]:
    """Run (or continue) ``job`` inside ``run_dir``; returns its final status.

    The job resumes from its newest readable checkpoint; a damaged checkpoint is reported in
    the status (``recovered``) and the previous one used. Any exception during training (a
    divergence, an out-of-memory error) is recorded as ``failed`` with its message and
    traceback instead of being raised, so the other jobs of a sweep go on.
    """
    folder = job_dir(run_dir, job)
    with FolderLock(folder, what="job folder"):
        if not (folder / "job.json").exists():
            atomic_write_text(folder / "job.json", json.dumps(asdict(job), indent=2))
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
        atomic_write_text(folder / "status.json", json.dumps(status, indent=2))
        metrics = folder / "metrics.jsonl"
        _rebuild_metrics(metrics, state, status)
        cfg = job.study_config()
        _set_threads(cfg)
        task = get_task(cfg.task)
        t0 = time.perf_counter()
        written = [0]

        def save(st: dict[str, Any]) -> None:
            if checkpoints or st["done"]:
                save_checkpoint(ckpt, st)
            new = st["rows"][written[0] :]
            written[0] = len(st["rows"])
            with open(metrics, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)

        written[0] = len(state["rows"]) if state is not None else 0
        try:
            data, y_train, flipped = prepare_data(cfg)
            train_run(
                cfg,
                task,
                data,
                list(job.methods),
                job.seed,
                y_train=y_train,
                flipped=flipped,
                resume=state,
                checkpoint=save,
                on_epoch=on_epoch,
            )
        except Exception as e:  # recorded, not raised: the rest of the sweep goes on
            status.update(
                state="failed",
                error=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc(),
            )
        else:
            status["state"] = "done"
        status["wall_s"] = time.perf_counter() - t0
        atomic_write_text(folder / "status.json", json.dumps(status, indent=2))
        return status


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
