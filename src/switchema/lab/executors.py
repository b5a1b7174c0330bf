"""Where jobs run: in this process, in N local worker processes, or on a Ray cluster.

Every executor calls the same :func:`switchema.lab.jobs.run_job`, which writes the job's
folder itself; the executors only decide where that call happens. A job's numbers depend on
its settings alone (its torch thread count included), never on the executor or on how many
jobs run at once, so a run folder is the same whichever executor filled it.

* ``local`` with ``workers=1``: one job after the other in this process.
* ``local`` with ``workers=N``: N spawned worker processes, each running whole jobs. Each
  worker uses the job's torch thread count (1 on CPU by default), so N workers use N cores;
  on Linux a worker dies with its parent, so a killed sweep leaves no job running.
* ``ray``: one Ray task per job, spread over the nodes of the cluster at ``address``
  (``ray.init(address=...)``; a cluster with token authentication needs ``RAY_AUTH_MODE=token``
  and its token, see the README), or, when no address is given, on a new local Ray instance
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
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .checkpoint import atomic_write_text
from .errors import MissingDependencyError, UsageError
from .jobs import Job, job_dir, run_job
from .lock import FolderLock
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

_LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Ray's switch for single-machine use (meant for Windows and macOS, read when ray is imported).
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _ray(run_dir, jobs, options: RunOptions, on_epoch, on_done):
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
            _ray_start_local(ray, options.workers)
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
