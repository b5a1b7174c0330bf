"""How and where a run's jobs run: the one options object of ``compare`` and ``sweep``.

None of these change a number: a run folder is the same whichever executor filled it, with
however many workers, with or without per-epoch checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .._checks import is_int
from .errors import UsageError

__all__ = ["AUTO", "AUTO_JOBS_ENV", "EXECUTORS", "FIGURE_FORMATS", "RunOptions", "available_cores"]

EXECUTORS = ("local", "ray")
FIGURE_FORMATS = ("png", "pdf", "svg")
AUTO = "auto"
#: ``--jobs auto`` takes its number from this variable when it is set (as pytest-xdist's
#: ``-n auto`` reads ``PYTEST_XDIST_AUTO_NUM_WORKERS``).
AUTO_JOBS_ENV = "SWITCHEMA_AUTO_JOBS"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunOptions:
    """Run options (the command line's ``--jobs``, ``--executor``, ``--address``, ...).

    Attributes:
        executor: ``"local"`` (this machine) or ``"ray"`` (a Ray cluster).
        workers: jobs run at once (``--jobs``): worker processes, or Ray CPUs when Ray starts
            a local instance; ``"auto"``: as many as the cores available hold jobs of their
            torch thread count (:meth:`workers_for`).
        cache_dir: the data cache folder (:mod:`switchema.lab.tasks.cache`; ``"none"``: no
            cache); None: ``$SWITCHEMA_CACHE_DIR``, else the user's cache folder.
        address: the Ray cluster's address (``None``: start a local Ray instance on
            127.0.0.1, which never joins a cluster running on the machine).
        progress: show a progress bar.
        checkpoints: write a checkpoint at every epoch end (a killed job continues from it).
        retry_failed: when resuming, run failed jobs again.
        figure_format: ``"png"``, ``"pdf"`` or ``"svg"``: the plots' file format.
        dpi: the plots' resolution (raster formats), dots per inch.
        tensorboard: also write TensorBoard event files of the metric rows.
    """

    executor: str = "local"
    workers: int | str = 1
    address: str | None = None
    progress: bool = True
    checkpoints: bool = True
    retry_failed: bool = False
    figure_format: str = "png"
    dpi: int = 150
    tensorboard: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise UsageError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.workers != AUTO and (not is_int(self.workers) or self.workers < 1):
            raise UsageError(
                f"jobs (worker processes) must be a positive int or 'auto', got {self.workers!r}"
            )
        if os.environ.get(AUTO_JOBS_ENV) and self.workers == AUTO:
            _auto_from_env()  # a bad value is said now, not when the jobs start
        if self.figure_format not in FIGURE_FORMATS:
            raise UsageError(
                f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got "
                f"{self.figure_format!r}"
            )
        if not is_int(self.dpi) or not 10 <= self.dpi <= 2400:
            raise UsageError(f"dpi must be an int in [10, 2400], got {self.dpi!r}")

    def workers_for(self, jobs: int, threads: int = 1) -> int:
        """How many jobs run at once for ``jobs`` jobs of ``threads`` torch threads each: the
        number given, or for ``"auto"`` ``$SWITCHEMA_AUTO_JOBS`` if set, else the cores
        available divided by ``threads``; never more than ``jobs``, at least 1."""
        if self.workers != AUTO:
            return int(self.workers)
        n = _auto_from_env() or available_cores() // max(1, threads)
        return max(1, min(n, jobs))


def _auto_from_env() -> int | None:
    value = os.environ.get(AUTO_JOBS_ENV)
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UsageError(f"{AUTO_JOBS_ENV} must be a positive int, got {value!r}")
    return n
