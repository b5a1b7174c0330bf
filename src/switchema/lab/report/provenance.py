"""Where generated numbers come from: the machine (CPU model and the instruction set torch's
kernels use, MKL and oneDNN versions), software, threads and dates of the run
folders used, read from their ``config.json`` (and ``timing.json``, ``metrics.jsonl``'s date).

Facts every run shares are listed once; facts that differ get a column, so a table built from
runs made on two machines or two torch versions says so. The cells of a sweep are one row.
Nothing here depends on when it is generated, so regenerating from the same runs gives the
same text.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from .points import Run

__all__ = ["provenance_lines", "provenance_sentence"]

# (label, how to read it from a run's config.json)
_FACTS = [
    ("machine", lambda c: c.get("versions", {}).get("platform", "?")),
    ("device", lambda c: str(c.get("device", "?"))),
    ("torch threads per run", lambda c: str(c.get("torch_threads", "?"))),
    # written by runs since the CPU was recorded (lab/machine.py); "not recorded" before
    ("CPU", lambda c: c.get("versions", {}).get("cpu", "not recorded")),
    (
        "torch CPU instruction set",
        lambda c: c.get("versions", {}).get("cpu_capability", "not recorded"),
    ),
    ("MKL", lambda c: c.get("versions", {}).get("mkl", "not recorded")),
    ("oneDNN", lambda c: c.get("versions", {}).get("onednn", "not recorded")),
    ("switchema", lambda c: c.get("versions", {}).get("switchema", "?")),
    ("torch", lambda c: c.get("versions", {}).get("torch", "?")),
    ("numpy", lambda c: c.get("versions", {}).get("numpy", "?")),
    ("python", lambda c: c.get("versions", {}).get("python", "?")),
    ("scikit-learn", lambda c: c.get("versions", {}).get("scikit-learn", "—")),
]


def _group(name: str) -> str:
    """A sweep's cells (``SWEEP/cells/CELL``) are reported as the sweep ``SWEEP``."""
    return name.split("/cells/", 1)[0] if "/cells/" in name else name


def _date(run: Run) -> str:
    stamp = (run.path / "metrics.jsonl").stat().st_mtime
    return dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc).date().isoformat()


def _wall(runs: list[Run]) -> str:
    """Wall time of a run (``timing.json``) or of a whole sweep (``sweep_timing.json``)."""
    if "/cells/" in runs[0].name:
        paths = [runs[0].path.parent.parent / "sweep_timing.json"]
    else:
        paths = [r.path / "timing.json" for r in runs]
    walls = [json.loads(p.read_text()).get("wall_s", 0.0) for p in paths if p.is_file()]
    return f"{sum(walls):.0f}" if walls else "—"


def _settings(runs: list[Run]) -> str:
    cfg = runs[0].config["config"]
    seeds = sorted({s for r in runs for s in r.config["config"]["seeds"]})
    text = (
        f"{cfg['task']}, {len(seeds)} seeds ({', '.join(map(str, seeds))}), {cfg['epochs']} epochs"
    )
    if "/cells/" in runs[0].name:
        cells = [r.name.split("/cells/", 1)[1] for r in runs]
        text += (
            f"; {len(cells)} cells read" if len(cells) > 3 else "; cells read: " + ", ".join(cells)
        )
    return text


def _one(values: list[str]) -> str:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else " / ".join(unique)


def provenance_lines(runs: list[Run], recipes: Mapping[str, str] | None = None) -> list[str]:
    """Markdown lines: the facts all ``runs`` share, then one table row per run folder (or
    sweep) with its recipe, settings, date written and wall time; ``recipes`` maps a run
    folder's name to the recipe that writes it."""
    recipes = recipes or {}
    if not runs:
        return ["No run folder was read (every one named is still to be run)."]
    facts = [(label, [get(r.config) for r in runs]) for label, get in _FACTS]
    shared = [(label, v[0]) for label, v in facts if len(set(v)) == 1]
    differ = [label for label, v in facts if len(set(v)) > 1]
    lines = [f"- {label}: {value}" for label, value in shared]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(_group(r.name), []).append(r)
    head = ["run folder", "recipe", "settings", "written (UTC)", "job time (s, summed)"] + differ
    lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, members in sorted(groups.items()):
        recipe = next((recipes[m.name] for m in members if m.name in recipes), None)
        recipe = recipe or recipes.get(name, "—")
        dates = sorted({_date(m) for m in members})
        cells: list[Any] = [
            f"`{name}`",
            f"`{recipe}`" if recipe != "—" else recipe,
            _settings(members),
            dates[0] if len(dates) == 1 else f"{dates[0]} – {dates[-1]}",
            _wall(members),
        ]
        cells += [
            _one([get(m.config) for m in members]) for label, get in _FACTS if label in differ
        ]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def provenance_sentence(runs: list[Run]) -> str:
    """One sentence for the top of a generated file: machine, device, threads and versions of
    the runs (each fact once, or "several" with the details in the provenance table)."""
    if not runs:
        return "No run folder was read yet."
    parts = []
    for label, get in _FACTS[:7]:
        values = sorted({get(r.config) for r in runs})
        parts.append(f"{label} {values[0] if len(values) == 1 else 'several (see below)'}")
    return f"The {len(runs)} run folder(s) read were made with " + ", ".join(parts) + "."
