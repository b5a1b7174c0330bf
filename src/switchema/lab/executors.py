"""Where jobs run: in this process, in N local worker processes, or on a Ray cluster.

Every executor calls the same :func:`switchema.lab.jobs.run_job`, which writes the job's
folder itself; the executors only decide where that call happens. A job's numbers depend on
its settings alone (its torch thread count included), never on the executor or on how many
jobs run at once, so a run folder is the same whichever executor filled it.

* ``local`` with ``workers=1``: one job after the other in this process.
* ``local`` with ``workers=N``: N spawned worker processes, each running whole jobs. Each
  worker uses the job's torch thread count (1 on CPU by default), so N workers use N cores;
  on Linux a worker dies with its parent, so a killed sweep leaves no job running. Ctrl-C
  stops the workers within about a second, each running job recorded as ``interrupted``.
* ``ray``: one Ray task per job, on the cluster at ``address`` (``ray.init(address=...)``)
  or on a local Ray instance when no address is given. The run folder must be on a file
  system every node sees (NFS, Lustre, ...): workers checkpoint into it directly.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import wait
from typing import Any

from .errors import MissingDependencyError
from .jobs import Job, close_status, run_job
from .options import RunOptions

__all__ = ["run_jobs"]

Done = Callable[[Job, dict[str, Any]], None]


def run_jobs(
    run_dir,
    jobs: Sequence[Job],
    options: RunOptions,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_done: Done | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``jobs``; returns ``{job id: final status}``. ``on_done`` is called as each ends,
    ``on_epoch(event)`` after each epoch of a job (see :func:`~switchema.lab.jobs.run_job`).

    Locally, a ``KeyboardInterrupt`` (Ctrl-C) stops every job within about a second: each
    running job records itself as ``interrupted`` (resumable) and the interrupt is raised.
    """
    checkpoints = options.checkpoints
    if options.executor == "ray":
        return _ray(run_dir, jobs, options, None, _whole_jobs(on_epoch, on_done))
    if options.workers == 1 or len(jobs) <= 1:
        out = {}
        for job in jobs:
            out[job.id] = run_job(run_dir, job, on_epoch=on_epoch, checkpoints=checkpoints)
            if on_done is not None:
                on_done(job, out[job.id])
        return out
    return _pool(run_dir, jobs, options.workers, on_epoch, on_done, checkpoints)


def _whole_jobs(on_epoch, on_done: Done | None) -> Done:
    """``on_done`` that first reports all the job's epochs at once (executors that report
    nothing while a job runs)."""

    def done(job: Job, status: dict[str, Any]) -> None:
        if on_epoch is not None and status.get("state") == "done":
            event = {"job": job.id, "epoch": job.epochs, "epochs": job.epochs}
            on_epoch({**event, "model": None, "metric": None, "value": None})
        if on_done is not None:
            on_done(job, status)

    return done


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
#
# The parent hands each worker one job at a time through a pipe (the next when it reports the
# last done) and reads ("epoch" | "done", payload) back; pipes, not queues, so a run stopped
# at once leaves no semaphore behind. Workers ignore SIGINT: on Ctrl-C the parent alone
# decides, and stops them with SIGTERM, which a worker turns into a KeyboardInterrupt inside
# its job (the job records itself as interrupted) or into a quiet exit between jobs.

_in_job = False
_STOP_GRACE_S = 2.0  # how long stopped workers get to record their jobs before SIGKILL


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the sweep process dies (no orphaned writers)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the job locks still hold
        pass


def _on_sigterm(signum, frame) -> None:
    if _in_job:
        raise KeyboardInterrupt  # run_job records the job as interrupted
    os._exit(130)


def _worker_loop(run_dir, conn, checkpoints: bool) -> None:
    global _in_job
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        while (job := conn.recv()) is not None:
            _in_job = True
            try:
                report = partial(_send, conn, "epoch")
                status = run_job(run_dir, job, on_epoch=report, checkpoints=checkpoints)
            finally:
                _in_job = False
            conn.send(("done", status))
    except (KeyboardInterrupt, EOFError, OSError):  # stopped, or the parent is gone
        os._exit(130)


def _send(conn, kind: str, payload: Any) -> None:
    conn.send((kind, payload))


class _Ignore:
    """Ignore SIGINT in this block (in the main thread only, where handlers live): workers
    started here inherit it, so a Ctrl-C never hits a worker while it imports torch."""

    def __enter__(self) -> None:
        main = threading.current_thread() is threading.main_thread()
        self.old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


@dataclass(eq=False)
class _Worker:
    proc: Any  # multiprocessing.Process
    conn: Any  # the parent's end of the pipe
    job: Job | None = None  # the job it runs


def _pool(run_dir, jobs, workers, on_epoch, on_done, checkpoints):
    _warn_oversubscribed(jobs, workers)
    ctx = mp.get_context("spawn")  # fork after torch has started threads can deadlock
    todo = deque(jobs)
    live: list[_Worker] = []
    out: dict[str, dict[str, Any]] = {}

    def give(w: _Worker) -> None:  # the next job, or None: the worker exits
        w.job = todo.popleft() if todo else None
        w.conn.send(w.job)

    def spawn() -> None:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_loop, args=(run_dir, child, checkpoints), daemon=True)
        with _Ignore():
            proc.start()
        child.close()
        live.append(_Worker(proc, parent))
        give(live[-1])

    def finish(job: Job, status: dict[str, Any]) -> None:
        out[job.id] = status
        if on_done is not None:
            on_done(job, status)

    try:
        for _ in range(min(workers, len(jobs))):
            spawn()
        while len(out) < len(jobs):
            ready = set(wait([x for w in live for x in (w.conn, w.proc.sentinel)], timeout=1.0))
            for w in [w for w in live if ready & {w.conn, w.proc.sentinel}]:
                for kind, payload in _messages(w):
                    if kind == "epoch" and on_epoch is not None:
                        on_epoch(payload)
                    elif kind == "done":
                        finish(w.job, payload)
                        give(w)
                if not w.proc.is_alive() and w in live:
                    live.remove(w)
                    if w.job is not None:  # died during a job (e.g. the OOM killer)
                        finish(w.job, _died(run_dir, w))
                        if todo:
                            spawn()
    except BaseException:  # Ctrl-C or an error here: stop the workers, mark their jobs
        with _Ignore():
            _stop([w.proc for w in live])
            for w in live:
                if w.job is not None:
                    close_status(run_dir, w.job, "interrupted")
        raise
    finally:
        for w in live:
            w.proc.join(timeout=5)
            w.conn.close()
    return out


def _messages(w: _Worker) -> list[tuple[str, Any]]:
    """Everything the worker has sent so far (also after it died: the pipe keeps it)."""
    found = []
    try:
        while w.conn.poll():
            found.append(w.conn.recv())
    except (EOFError, OSError):
        pass
    return found


def _died(run_dir, w: _Worker) -> dict[str, Any]:
    code = w.proc.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    error = f"WorkerDied: the worker process running this job died ({how})"
    close_status(run_dir, w.job, "failed", error)
    return {"state": "failed", "job": w.job.id, "error": error}


def _stop(procs: list) -> None:
    """SIGTERM every worker, give them a moment to record their jobs, then SIGKILL."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + _STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(1.0)


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
