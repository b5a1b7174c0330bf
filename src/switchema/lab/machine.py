"""What a run's numbers depend on besides its settings: the CPU and the kernels torch picks.

Two machines with the same platform string can run different kernels (AVX2 or AVX-512,
another oneDNN or MKL), and float results then differ in the last bits, enough to move a
seed's trajectory. :func:`machine_facts` records them in every run's ``config.json``
(``versions``), and the reports print them.

>>> sorted(machine_facts())
['cpu', 'cpu_capability', 'mkl', 'onednn']
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

__all__ = ["cpu_model", "machine_facts"]


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name: ``/proc/cpuinfo``'s first ``model name`` line (``cpuinfo``: its
    text, for tests), else :func:`platform.processor`, else ``"unknown"``."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        try:
            cpuinfo = path.read_text() if path.is_file() else ""
        except OSError:
            cpuinfo = ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    if found:
        return " ".join(found.group(1).split())
    return platform.processor() or "unknown"


def _library(config: str, pattern: str) -> str:
    found = re.search(pattern, config)
    return found.group(1) if found else "not built in"


def machine_facts() -> dict[str, str]:
    """``cpu`` (model name), ``cpu_capability`` (the instruction set torch's CPU kernels use:
    ``torch.backends.cpu.get_cpu_capability()``), ``mkl`` and ``onednn`` versions (parsed from
    ``torch.__config__.show()``; ``"not built in"`` when absent)."""
    import torch

    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # torch before 2.1
        capability = "unknown"
    config = torch.__config__.show()
    return {
        "cpu": cpu_model(),
        "cpu_capability": capability,
        "mkl": _library(config, r"Math Kernel Library Version ([^\s]+)"),
        "onednn": _library(config, r"(?:MKL-DNN|oneDNN) v([^\s]+)"),
    }
