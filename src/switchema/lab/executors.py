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
* ``ray``: one Ray task per job, spread over the nodes of the cluster at ``address``
  (``ray.init(address=...)``; a cluster with token authentication needs ``RAY_AUTH_MODE=token``
  and its token, see docs/lab/sweeps.md), or, when no address is given, on a new local Ray instance
  bound to 127.0.0.1 that never joins another cluster. The run folder must be on a file
  system every node sees (NFS, Lustre, ...): workers checkpoint into it directly. Each job's
  ``status.json`` says which Ray node ran it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing as mp
import os
import signal
import socket
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import wait
from typing import Any

from .checkpoint import atomic_write_text
from .errors import MissingDependencyError, UsageError, show_warning
from .jobs import Job, close_status, job_dir, run_job
from .lock import FolderLock
from .options import RunOptions
from .tasks.cache import using_cache_dir

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
    with using_cache_dir(options.cache_dir):  # workers started here inherit it
        return _run_jobs(run_dir, jobs, options, on_epoch, on_done)


def _run_jobs(run_dir, jobs, options: RunOptions, on_epoch, on_done):
    checkpoints = options.checkpoints
    workers = options.workers_for(len(jobs), max((_threads(j) for j in jobs), default=1))
    if options.executor == "ray":
        return _ray(run_dir, jobs, options, workers, on_epoch, on_done)
    if workers == 1 or len(jobs) <= 1:
        out = {}
        for job in jobs:
            out[job.id] = run_job(run_dir, job, on_epoch=on_epoch, checkpoints=checkpoints)
            if on_done is not None:
                on_done(job, out[job.id])
        return out
    return _pool(run_dir, jobs, workers, on_epoch, on_done, checkpoints)


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
    warnings.showwarning = show_warning  # as the command line shows its own (one plain line)
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
        self.main = threading.current_thread() is threading.main_thread()
        if self.main:
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc: object) -> None:
        if self.main:
            # None: the old handler was installed from C and cannot be put back; the default
            # beats leaving Ctrl-C ignored in the caller's process (and in what it starts later)
            signal.signal(signal.SIGINT, signal.SIG_DFL if self.old is None else self.old)


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

_LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Ray's switch for single-machine use (meant for Windows and macOS, read when ray is imported).
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


#: Seconds between reads of the running Ray jobs' metric files (their per-epoch progress).
RAY_POLL_S = 2.0


class _EpochsOnDisk:
    """Per-epoch events of jobs that run elsewhere (Ray workers), read from the metric rows
    they write to the run folder: each new epoch once, in order, as ``run_job`` reports it."""

    def __init__(self, run_dir, jobs, on_epoch) -> None:
        self.run_dir, self.on_epoch = run_dir, on_epoch
        self.sizes: dict[str, int] = {}
        self.reported = {j.id: _epochs_in(job_dir(run_dir, j)) for j in jobs}  # resumed jobs

    def poll(self, jobs) -> None:
        for job in jobs:
            path = job_dir(self.run_dir, job) / "metrics.jsonl"
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size == self.sizes.get(job.id):
                continue
            self.sizes[job.id] = size
            for epoch in range(self.reported[job.id] + 1, _epochs_in(path.parent) + 1):
                self.reported[job.id] = epoch
                event = {"job": job.id, "epoch": epoch, "epochs": job.epochs}
                self.on_epoch({**event, "model": None, "metric": None, "value": None})


def _epochs_in(folder) -> int:
    """The last epoch whose rows a job's ``metrics.jsonl`` holds (a half-written line ignored)."""
    try:
        text = (folder / "metrics.jsonl").read_text()
    except OSError:
        return 0
    last = 0
    for line in text.splitlines():
        try:
            last = max(last, int(json.loads(line)["epoch"]))
        except (ValueError, KeyError, TypeError):
            continue
    return last


def _ray(run_dir, jobs, options: RunOptions, workers: int, on_epoch, on_done):
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "--executor ray needs Ray: pip install 'switchema[ray]' (or pip install ray)"
        ) from None
    started = False
    if not ray.is_initialized():
        if options.address:
            _ray_connect(ray, options.address)
        else:
            _ray_start_local(ray, workers)
        started = True
    try:
        task = ray.remote(max_retries=0)(_ray_job)
        pending = {
            # SPREAD: the jobs go to every node of a cluster, not first to the driver's node.
            task.options(
                num_cpus=_threads(j), name=f"switchema job {j.id}", scheduling_strategy="SPREAD"
            ).remote(str(run_dir), j, options.checkpoints): j
            for j in jobs
        }
        out: dict[str, dict[str, Any]] = {}
        # Ray returns a job's result only at its end: its epochs are read from the run folder
        epochs = None if on_epoch is None else _EpochsOnDisk(run_dir, jobs, on_epoch)
        while pending:
            timeout = None if epochs is None else RAY_POLL_S
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            if epochs is not None:
                epochs.poll(list(pending.values()))  # the finished job's included
            if not ready:
                continue
            job = pending.pop(ready[0])
            try:
                out[job.id] = ray.get(ready[0])
            except Exception as e:  # the Ray worker died
                out[job.id] = {
                    "state": "failed",
                    "job": job.id,
                    "error": f"{type(e).__name__}: {e}",
                }
            if on_done is not None:
                on_done(job, out[job.id])
        return out
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _ray_on_loopback():
    """Keep Ray's addresses on 127.0.0.1 while this process starts or joins a Ray instance.

    Ray takes a node's address from the network interface that routes outward, and rewrites
    127.0.0.1 (in an address or ``_node_ip_address``) to it, unless its single-machine switch
    is on. The switch is read when ``ray`` is imported, so it is set both in the environment
    (for the Ray processes started here, which then bind their ports to 127.0.0.1) and in
    Ray's constants (for this process), and put back afterwards.
    """
    constants = importlib.import_module("ray._private.ray_constants")
    saved_env = os.environ.get(_SINGLE_MACHINE)
    saved = getattr(constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[_SINGLE_MACHINE] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(_SINGLE_MACHINE, None)
        else:
            os.environ[_SINGLE_MACHINE] = saved_env


def _ray_start_local(ray, workers: int) -> None:
    """A new Ray instance of ``workers`` CPUs on 127.0.0.1 only, whatever else runs here.

    ``address="local"`` never joins a cluster started on this machine (``ray start``, alive or
    dead) nor ``RAY_ADDRESS``; on 127.0.0.1 its ports are not reachable from the network.
    """
    with _ray_on_loopback():
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    addresses = sorted({n["NodeManagerAddress"] for n in ray.nodes()})
    if addresses != [_LOOPBACK]:  # pragma: no cover - a Ray without the switch above
        warnings.warn(
            f"the local Ray instance registered {', '.join(addresses)}, not {_LOOPBACK}: its "
            "ports may be reachable from the network (they need Ray's token, if it has one)",
            RuntimeWarning,
            stacklevel=3,
        )


def _ray_connect(ray, address: str) -> None:
    """Join the Ray cluster at ``address``; a refused token or no answer is a usage error."""
    host = address.removeprefix("ray://").rpartition(":")[0] or address
    on_loopback = host in _LOOPBACK_HOSTS
    try:
        with _ray_on_loopback() if on_loopback else contextlib.nullcontext():
            ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise UsageError(_ray_connect_error(address, e)) from e


def _ray_connect_error(address: str, error: BaseException) -> str:
    from ray.exceptions import AuthenticationError

    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    # Ray retries a refused token for ~20 s, then raises a ConnectionError from a RuntimeError
    # that holds the AuthenticationError's traceback as text.
    if not any(isinstance(c, AuthenticationError) or "InvalidAuthToken" in str(c) for c in chain):
        return (
            f"could not connect to the Ray cluster at {address} ({error}): is it running, and "
            f"is {address} its address (`ray status` on its head node prints it)?"
        )
    mode = os.environ.get("RAY_AUTH_MODE", "unset")
    return (
        f"the Ray cluster at {address} uses token authentication and did not accept this "
        f"process (RAY_AUTH_MODE is {mode}). Give it the cluster's token: "
        "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<token> or RAY_AUTH_TOKEN_PATH=<file> "
        "(without RAY_AUTH_MODE=token Ray sends no token, not even ~/.ray/auth_token, to "
        "an explicit --address; `ray get-auth-token` on the head node prints the token)"
    )


def _ray_job(run_dir: str, job: Job, checkpoints: bool) -> dict[str, Any]:
    """Run ``job`` in a Ray worker; its ``status.json`` also says which node ran it."""
    import ray

    status = run_job(run_dir, job, checkpoints=checkpoints)
    if status.get("pid") == os.getpid():  # run here now, not done by an earlier run
        ctx = ray.get_runtime_context()
        status["ray"] = {
            "node_id": ctx.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(),
        }
        folder = job_dir(run_dir, job)
        with FolderLock(folder, what="job folder"):
            atomic_write_text(folder / "status.json", json.dumps(status, indent=2))
    return status
