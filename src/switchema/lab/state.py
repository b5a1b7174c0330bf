"""The state of a run or sweep folder, read from its files alone: which jobs are done, failed,
running, interrupted or not started, and what to do next.

A job's ``status.json`` says ``running`` while its process works on it; a process killed
without a chance to record its end (SIGKILL, a power cut) leaves ``running`` behind, so a
``running`` job whose folder nobody holds locked is reported as ``stopped``. Nothing here
writes: it works on a read-only copy of a run folder too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .config import Study, StudyConfig
from .errors import EXIT_FAILED, EXIT_OK, MissingFileError, UsageError
from .jobs import Job, epochs_done, job_dir, job_status, never_trained, study_jobs
from .lock import is_locked
from .resolve import resolve
from .sweep import Grid, expand_grid

__all__ = ["JobState", "RunState", "known_state", "run_state", "run_studies"]

#: a job's states, in the order they are listed
STATES = ("done", "failed", "running", "interrupted", "stopped", "unknown", "pending")
_WORDS = {
    "done": "done",
    "failed": "failed",
    "running": "running",
    "interrupted": "interrupted",
    "stopped": "stopped without recording why (killed?)",
    "unknown": "with an unreadable status",
    "pending": "not started",
}


@dataclass(frozen=True)
class JobState:
    job: Job
    state: str  # one of STATES
    epochs_done: int
    error: str | None = None


@dataclass(frozen=True)
class RunState:
    """The jobs of a ``compare`` run or a sweep, and whether its results are written."""

    folder: Path  # the folder asked about (a run, a sweep, or a sweep's cell)
    command: str  # "compare" or "sweep": what --resume continues
    resume_folder: Path  # what --resume takes (a cell's sweep folder)
    jobs: list[JobState]
    written: bool  # every cell's results (summary.md) are written

    @property
    def counts(self) -> Counter:
        return Counter(j.state for j in self.jobs)

    @property
    def failed(self) -> list[JobState]:
        return [j for j in self.jobs if j.state == "failed"]

    @property
    def complete(self) -> bool:
        return all(j.state == "done" for j in self.jobs)

    @property
    def active(self) -> bool:
        return any(j.state == "running" for j in self.jobs)

    @property
    def exit_code(self) -> int:
        """0 unless jobs failed (3): the command line's exit status for this run."""
        return EXIT_FAILED if self.failed else EXIT_OK

    def tally(self) -> str:
        """``6 jobs: 4 done, 1 failed, 1 not started``."""
        c = self.counts
        parts = [f"{c[s]} {_WORDS[s]}" for s in STATES if c[s]]
        return f"{len(self.jobs)} job{'s' * (len(self.jobs) != 1)}: {', '.join(parts)}"

    def describe(self) -> str:
        """One paragraph: the run's state and what to do next."""
        resume = f"switchema {self.command} --resume {self.resume_folder}"
        c = self.counts
        if self.complete:
            return f"{self.folder}: finished, {self.tally()}."
        if self.active:
            running = [j for j in self.jobs if j.state == "running"]
            where = ", ".join(
                f"{_short(j.job)} at epoch {j.epochs_done}/{j.job.epochs}" for j in running
            )
            return (
                f"{self.folder}: in progress, {self.tally()} ({where}); its report is written "
                f"when the last job ends."
            )
        text = f"{self.folder}: "
        if c["failed"] == len(self.jobs):
            text += f"every job failed ({self.tally()})"
        elif c["failed"] and c["failed"] + c["done"] == len(self.jobs):
            text += f"finished with failed jobs, {self.tally()}"
        else:
            text += f"stopped before the end, {self.tally()}"
        if self.failed:
            text += f". First error: {self.failed[0].error}"
        unfinished = len(self.jobs) - c["done"] - c["failed"]
        todo = []
        if unfinished:
            todo.append(f"continue with: {resume}")
        if self.failed:
            todo.append(f"rerun the failed jobs with: {resume} --retry-failed")
        if never_trained(self.resume_folder):
            # nothing trained: the settings may be what failed, and can still be changed
            if self.command == "compare":
                todo.append(f"or correct the settings with: {resume} --set KEY=VALUE")
            else:  # a sweep's grid is its folder's: a corrected grid is a new sweep
                todo.append(
                    f"or, nothing in it having trained, delete {self.resume_folder} and run the "
                    "sweep again with corrected settings"
                )
        if todo:
            text += ". " + "; ".join(todo).capitalize()[0] + "; ".join(todo)[1:]
        return text + "."


def _short(job: Job) -> str:
    return job.id.rsplit("-", 1)[0]


def run_studies(folder: str | Path) -> tuple[str, Path, list[tuple[Path, Study]]]:
    """``(command, jobs folder, [(cell folder, study)])`` of a run, sweep or sweep cell."""
    folder = Path(folder)
    if (folder / "sweep.json").is_file():
        saved = json.loads((folder / "sweep.json").read_text())
        cells = expand_grid(Grid.from_dict(saved["grid"]), str(folder / "sweep.json"))
        return "sweep", folder, [(folder / "cells" / c.name, c.study) for c in cells]
    if not (folder / "config.json").is_file():
        raise MissingFileError(
            f"{folder / 'config.json'} not found: is {folder} a switchema run folder?"
        )
    saved = json.loads((folder / "config.json").read_text())
    study = resolve(StudyConfig.from_dict(saved["config"], str(folder / "config.json")))
    sweep = folder.parent.parent
    if folder.parent.name == "cells" and (sweep / "sweep.json").is_file():
        return "sweep", sweep, [(folder, study)]
    return "compare", folder, [(folder, study)]


def run_state(folder: str | Path) -> RunState:
    """The state of the run, sweep or sweep cell in ``folder``, from its files."""
    folder = Path(folder)
    command, root, cells = run_studies(folder)
    jobs: dict[str, Job] = {}
    recorded: dict[str, str] = {}  # what written cells say of their jobs
    for cell, study in cells:
        for job in study_jobs(study):
            jobs.setdefault(job.id, job)
        recorded.update(_recorded(cell))
    states = []
    for job in jobs.values():
        status = job_status(root, job)
        state = status.get("state", "unknown")
        if state == "pending" and job.id in recorded:  # a copy of the results, without jobs/
            state = recorded[job.id]
        if state == "running" and not is_locked(job_dir(root, job)):
            state = "stopped"
        if state not in STATES:
            state = "unknown"
        states.append(JobState(job, state, epochs_done(root, job), status.get("error")))
    written = all((cell / "cell.json").is_file() for cell, _ in cells)
    if command == "sweep" and folder == root:
        written = written and (root / "sweep.md").is_file()
    return RunState(folder, command, root, states, written)


def _recorded(cell: Path) -> dict[str, str]:
    """``{job id: "done" | "failed"}`` from a written cell's ``cell.json``."""
    try:
        info = json.loads((cell / "cell.json").read_text())
    except (OSError, ValueError):
        return {}
    failed = set(info.get("failed", []))
    return {j: "failed" if j in failed else "done" for j in info.get("jobs", [])}


def known_state(folder: str | Path) -> RunState | None:
    """:func:`run_state`, or None for a run folder whose jobs cannot be enumerated here (a copy
    of the results alone, a task whose plugin is not installed); a folder that is not a run
    raises :class:`MissingFileError`."""
    try:
        state = run_state(folder)
    except MissingFileError:
        raise
    except UsageError:
        return None
    if not (state.resume_folder / "jobs").is_dir() and not state.written:
        return None  # results copied without their jobs, by an older version
    return state
