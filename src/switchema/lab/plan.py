"""What a ``compare`` run would do, said before anything is written (``compare --dry-run``).

:func:`study_plan` lists the resolved settings, the jobs (a seed and the methods that share its
trajectory), the folder the run would write and the epochs left to train, counting, for a
folder being resumed, the epochs its jobs already recorded. It reads; it never writes.
"""

from __future__ import annotations

from pathlib import Path

from .config import SETTINGS, Study
from .jobs import epochs_done, job_status, study_jobs

__all__ = ["study_plan"]


def _value(value: object) -> str:
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v!r}" for k, v in value.items()) or "{}"
    return str(value)


def study_plan(study: Study, out: str | Path, *, resume: bool = False) -> str:
    """The plan of a ``compare`` run of ``study`` into ``out``, as lines of text.

    Settings that no method of the study uses (``Setting.methods``) or that do not apply given
    the others (``Setting.requires``) are left out. With ``resume=True`` a job already done
    costs nothing and an unfinished one only its remaining epochs.
    """
    cfg = study.config
    used = [
        name
        for name, s in SETTINGS.items()
        if (s.methods is None or any(m in s.methods for m in cfg.methods)) and cfg.applies(name)
    ]
    width = max(len(n) for n in used)
    lines = [f"dry run: nothing is written; the run would write {out}", "settings:"]
    lines += [f"  {name:<{width}}  {_value(getattr(cfg, name))}" for name in used]
    jobs = study_jobs(study)
    lines.append(f"jobs ({len(jobs)}):")
    total = 0
    for job in jobs:
        done = epochs_done(out, job) if resume else 0
        state = job_status(out, job).get("state", "pending") if resume else "new"
        left = 0 if state == "done" else job.epochs - done
        total += left
        lines.append(
            f"  seed {job.seed}: {'+'.join(job.methods)} ({state}, {left} of {job.epochs} "
            f"epochs to train)"
        )
    lines.append(
        f"epochs to train: {total} in all ({len(cfg.methods)} method(s) x {len(cfg.seeds)} "
        f"seed(s), methods sharing a trajectory train once)"
    )
    return "\n".join(lines)
