"""What a running study shows while it trains: a progress bar on a terminal, plain lines in a
log file.

The bar counts training epochs (one epoch of one job: a seed and the methods sharing its
trajectory), starting from those already done when a run is resumed, and shows the jobs
finished, the job that reported last, its epoch and its latest test metric. When stderr is
not a terminal (a log file, a pipe, a batch system) there is no bar and no carriage return:
one line when the run starts and one per finished job.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .jobs import Job

__all__ = ["Progress", "describe_metric"]


def describe_metric(metric: str | None, value: float | None) -> str:
    """``test acc 85.1%``, ``test mse 0.1234``, ``test bpc 2.10`` ('' when unknown)."""
    if metric is None or value is None:
        return ""
    name = metric.replace("_", " ")
    if metric.endswith("acc"):
        return f"{name} {100 * value:.1f}%"
    return f"{name} {value:.4g}"


def _short(job: Job) -> str:
    """A job's id without its task and hash: ``s0-baseline+ema+swa``."""
    name = job.id
    task = str(job.study.config.task).rsplit(":", 1)[-1]
    if name.startswith(task + "-"):
        name = name[len(task) + 1 :]
    return name.rsplit("-", 1)[0]


class Progress:
    """Progress of ``jobs`` (the jobs left to run), ``done`` epochs of each already done."""

    def __init__(
        self,
        jobs: list[Job],
        done: dict[str, int],
        *,
        total_jobs: int,
        desc: str,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.jobs = {j.id: j for j in jobs}
        self.counted = {j.id: done.get(j.id, 0) for j in jobs}
        self.desc = desc
        self.finished = 0
        self.total = sum(j.epochs for j in jobs)
        initial = sum(self.counted.values())
        isatty = getattr(self.stream, "isatty", None)
        self.bar = None
        if callable(isatty) and isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=initial,
                unit="epoch",
                desc=self._desc(),
                file=self.stream,
                dynamic_ncols=True,
            )
        else:
            resumed = f", {initial} of them done before" if initial else ""
            self._line(
                f"{len(jobs)} of {total_jobs} jobs to run: {self.total} training epochs{resumed}"
            )

    def _desc(self) -> str:
        return f"{self.desc} [{self.finished}/{len(self.jobs)} jobs]"

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def epoch(self, event: dict[str, Any]) -> None:
        """One or more epochs of a job are done (``event`` from :func:`run_job`)."""
        job_id = event["job"]
        n = max(0, int(event["epoch"]) - self.counted.get(job_id, 0))
        self.counted[job_id] = max(self.counted.get(job_id, 0), int(event["epoch"]))
        if self.bar is None:
            return
        job = self.jobs.get(job_id)
        text = f"{_short(job) if job else job_id} epoch {event['epoch']}/{event['epochs']}"
        metric = describe_metric(event.get("metric"), event.get("value"))
        if metric:
            text += f", {event['model']} {metric}"
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.update(n)

    def job_done(self, job: Job, status: dict[str, Any]) -> None:
        self.finished += 1
        if self.bar is not None:
            self.bar.set_description(self._desc(), refresh=True)
            return
        state = status.get("state")
        what = state if state != "failed" else f"FAILED ({status.get('error', '')})"
        wall = f" in {status['wall_s']:.0f} s" if "wall_s" in status else ""
        epochs = sum(self.counted.values())
        self._line(
            f"job {self.finished}/{len(self.jobs)} {_short(job)} {what}{wall} "
            f"({epochs}/{self.total} training epochs done)"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
