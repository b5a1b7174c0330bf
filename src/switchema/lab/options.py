"""How and where a run's jobs run: the one options object of ``compare`` and ``sweep``.

None of these change a number: a run folder is the same whichever executor filled it, with
however many workers, with or without per-epoch checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._checks import is_int
from .errors import UsageError

__all__ = ["EXECUTORS", "FIGURE_FORMATS", "RunOptions"]

EXECUTORS = ("local", "ray")
FIGURE_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class RunOptions:
    """Run options (the command line's ``--jobs``, ``--executor``, ``--address``, ...).

    Attributes:
        executor: ``"local"`` (this machine) or ``"ray"`` (a Ray cluster).
        workers: jobs run at once (``--jobs``): worker processes, or Ray CPUs when Ray starts
            a local instance.
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
    workers: int = 1
    address: str | None = None
    progress: bool = True
    checkpoints: bool = True
    retry_failed: bool = False
    figure_format: str = "png"
    dpi: int = 150
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise UsageError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if not is_int(self.workers) or self.workers < 1:
            raise UsageError(
                f"jobs (worker processes) must be a positive int, got {self.workers!r}"
            )
        if self.figure_format not in FIGURE_FORMATS:
            raise UsageError(
                f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got "
                f"{self.figure_format!r}"
            )
        if not is_int(self.dpi) or not 10 <= self.dpi <= 2400:
            raise UsageError(f"dpi must be an int in [10, 2400], got {self.dpi!r}")
