"""Where jobs run: in this process, in N local worker processes, or on a Ray cluster.

Every executor calls the same :func:`switchema.lab.jobs.run_job`, which writes the job's
folder itself; the executors only decide where that call happens. A job's numbers depend on
its settings alone (its torch thread count included), never on the executor or on how many
jobs run at once, so a run folder is the same whichever executor filled it.

* ``local`` with ``workers=1``: one job after the other in this process.
* ``local`` with ``workers=N``: N spawned worker processes, each running whole jobs. Each
  worker uses the job's torch thread count (1 on CPU by default), so N workers use N cores;
  on Linux a worker dies with its parent, so a killed sweep leaves no job running.
* ``ray``: one Ray task per job, on the cluster at ``address`` (``ray.init(address=...)``)
  or on a local Ray instance when no address is given. The run folder must be on a file
  system every node sees (NFS, Lustre, ...): workers checkpoint into it directly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .errors import MissingDependencyError
from .jobs import Job, run_job
from .options import RunOptions

__all__ = ["run_jobs"]

Done = Callable[[Job, dict[str, Any]], None]


def run_jobs(
    run_dir,
    jobs: Sequence[Job],
    options: RunOptions,
    *,
    on_epoch: Callable[[int], None] | None = None,
    on_done: Done | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``jobs``; returns ``{job id: final status}``. ``on_done`` is called as each ends."""
    checkpoints = options.checkpoints
    if options.executor == "ray":
        return _ray(run_dir, jobs, options, on_epoch, on_done)
    if options.workers == 1 or len(jobs) <= 1:
        out = {}
        for job in jobs:
            out[job.id] = run_job(run_dir, job, on_epoch=on_epoch, checkpoints=checkpoints)
            if on_done is not None:
                on_done(job, out[job.id])
        return out
    return _pool(run_dir, jobs, options.workers, on_epoch, on_done, checkpoints)


def _threads(job: Job) -> int:
    return int(job.study.config.threads or 1)


def _warn_oversubscribed(jobs: Sequence[Job], workers: int) -> None:
    threads = max(_threads(j) for j in jobs)
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        warnings.warn(
            f"{workers} workers x {threads} torch thread(s) exceed the {cores} cores of this "
            f"machine; jobs will compete for cores (results are unchanged, only slower). "
            f"Use --jobs {max(1, cores // threads)} or fewer.",
            stacklevel=3,
        )


# -- local worker processes -------------------------------------------------------------

_queue = None


def _init_worker(queue) -> None:
    global _queue
    _queue = queue
    _die_with_parent()


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the sweep process dies (no orphaned writers)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the job locks still hold
        pass


def _worker(run_dir, job: Job, checkpoints: bool) -> dict[str, Any]:
    report = _queue.put if _queue is not None else None
    return run_job(run_dir, job, on_epoch=report, checkpoints=checkpoints)


def _pool(run_dir, jobs, workers, on_epoch, on_done, checkpoints):
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _warn_oversubscribed(jobs, workers)
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    queue = ctx.SimpleQueue()

    def pump() -> None:
        while True:
            item = queue.get()
            if item is None:
                return
            if on_epoch is not None:
                on_epoch(item)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    out: dict[str, dict[str, Any]] = {}
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(queue,),
    )
    try:
        with pool:
            futures = {pool.submit(_worker, run_dir, job, checkpoints): job for job in jobs}
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    out[job.id] = fut.result()
                except Exception as e:  # the worker itself died (e.g. killed by the OOM killer)
                    out[job.id] = {
                        "state": "failed",
                        "job": job.id,
                        "error": f"{type(e).__name__}: {e}",
                    }
                if on_done is not None:
                    on_done(job, out[job.id])
    except BaseException:  # Ctrl-C or an error here: do not start the queued jobs
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        queue.put(None)
        reader.join(timeout=5)
    return out


# -- Ray ----------------------------------------------------------------------------------


def _ray(run_dir, jobs, options: RunOptions, on_epoch, on_done):
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "--executor ray needs Ray: pip install 'switchema[ray]' (or pip install ray)"
        ) from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if options.address:
            kwargs["address"] = options.address
        else:  # a local instance sized like --jobs
            kwargs.update(num_cpus=options.workers, include_dashboard=False)
        ray.init(**kwargs)
        started = True
    try:
        task = ray.remote(max_retries=0)(_ray_job)
        pending = {
            task.options(num_cpus=_threads(j)).remote(str(run_dir), j, options.checkpoints): j
            for j in jobs
        }
        out: dict[str, dict[str, Any]] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                out[job.id] = ray.get(ready[0])
            except Exception as e:  # the Ray worker died
                out[job.id] = {
                    "state": "failed",
                    "job": job.id,
                    "error": f"{type(e).__name__}: {e}",
                }
            if on_epoch is not None:
                on_epoch(job.epochs * len(job.methods))
            if on_done is not None:
                on_done(job, out[job.id])
        return out
    finally:
        if started:
            ray.shutdown()


def _ray_job(run_dir: str, job: Job, checkpoints: bool) -> dict[str, Any]:
    return run_job(run_dir, job, checkpoints=checkpoints)
