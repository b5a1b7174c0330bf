"""Checks made before a run folder is created: what would otherwise fail only once the jobs
start (or, worse, make every job fail while the run itself "succeeds").

* the device exists: ``cuda`` needs a CUDA build of torch and a visible GPU, ``cuda:N`` needs
  at least N + 1 of them, ``mps`` an Apple GPU;
* the data a task reads from disk is there (a task's ``check_data``: the CIFAR tasks check
  that ``data_dir`` holds the expected files);
* the output folder can be written.

Each problem is reported by :class:`~switchema.lab.errors.UsageError` naming the value and
how to fix it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .config import Study
from .errors import ConfigError, UsageError

__all__ = ["check_writable", "device_problem", "study_problems", "check_studies"]


def device_problem(name: str) -> str | None:
    """What is wrong with device ``name`` on this machine, or None."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return (
            f"device {name!r} is not a device torch knows; use 'auto' (CUDA if available), "
            f"'cpu', 'cuda', 'cuda:N' or 'mps'"
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) was built without CUDA"
                if torch.version.cuda is None
                else "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)"
            )
            return f"device {name!r} is not available: {why}; use --device cpu (or auto)"
        n = torch.cuda.device_count()
        if device.index is not None and device.index >= n:
            return (
                f"device {name!r} does not exist: this machine has {n} CUDA device(s) "
                f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return f"device {name!r} is not available: no Apple GPU (MPS) on this machine"
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as e:
            return f"device {name!r} is not usable here: {e}"
    return None


def study_problems(study: Study, *, device: bool = True) -> list[str]:
    """The device and data problems of one resolved study."""
    cfg = study.config
    problems = []
    if device and (problem := device_problem(cfg.device)):
        problems.append(problem)
    check = study.task.check_data
    if check is not None:
        try:
            check(**cfg.data_options)
        except (OSError, ValueError, TypeError) as e:
            problems.append(f"task {cfg.task!r}: {e}")
    return problems


def check_studies(studies: list[Study], *, device: bool = True) -> None:
    """Raise :class:`ConfigError` listing the device and data problems of ``studies``."""
    problems: list[str] = []
    seen = set()
    for study in studies:
        cfg = study.config
        key = (cfg.task, cfg.device, repr(sorted(cfg.data_options.items())))
        if key in seen:
            continue
        seen.add(key)
        problems += [p for p in study_problems(study, device=device) if p not in problems]
    if problems:
        raise ConfigError(problems)


def check_writable(folder: str | Path, what: str = "run folder") -> None:
    """Raise :class:`UsageError` unless ``folder`` (or, if it does not exist yet, the folder it
    would be created in) can be written; a file is written and removed to find out."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} is a file, not a folder")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create {what} {folder}: {probe} is a file")
    try:
        fd, path = tempfile.mkstemp(dir=probe, prefix=".switchema-write-test-")
        os.close(fd)
        os.unlink(path)
    except OSError as e:
        where = "" if probe == folder else f" (in {probe})"
        raise UsageError(
            f"cannot write the {what} {folder}{where}: {e.strerror or e}; choose a folder you "
            f"can write (--out)"
        ) from None
