"""Compare two trees of lab results (run, sweep, analysis and NQM folders) number for number.

Used to check that a refactoring changes no result: run the same recipes with the old and the
new code into two folders, then

    python benchmarks/compare_runs.py OLD_ROOT NEW_ROOT [--rename decays=decay,schedule=lr_schedule]

For every folder under OLD_ROOT that holds a ``metrics.jsonl`` (a ``compare`` run or a sweep
cell) it compares ``metrics.jsonl`` row for row (timing columns aside), every array of
``predictions.npz`` and every tensor of ``models.pt`` exactly; ``analysis.json`` and
``nqm.json`` are compared with their timings removed, ``sweep_results.json`` as a whole, and the
job folder names (a job's id hashes its settings) are compared too. ``--rename`` reads keys of
the old JSON files under new names (settings renamed between the two versions). Text
differences of ``summary.md``/``sweep.md`` are listed as notes (they carry wall times). Exit
status 1 if any number differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

TIMING = {"train_time_s", "eig_seconds", "wall_s", "simulation_seconds"}
RENAME: dict[str, str] = {}


def _strip(obj, rename: bool = False):
    if isinstance(obj, dict):
        return {
            (RENAME.get(k, k) if rename else k): _strip(v, rename)
            for k, v in obj.items()
            if k not in TIMING
        }
    if isinstance(obj, list):
        return [_strip(v, rename) for v in obj]
    if rename and isinstance(obj, str):  # a setting's name as a value (a sweep's axes)
        return RENAME.get(obj, obj)
    return obj


def _rows(path: Path) -> list[dict]:
    return [_strip(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def _compare_run(old: Path, new: Path, problems: list[str]) -> int:
    a, b = _rows(old / "metrics.jsonl"), _rows(new / "metrics.jsonl")
    if len(a) != len(b):
        problems.append(f"{new}: {len(b)} rows, expected {len(a)}")
    for i, (ra, rb) in enumerate(zip(a, b)):
        if ra != rb:
            keys = sorted(k for k in set(ra) | set(rb) if ra.get(k) != rb.get(k))
            problems.append(f"{new}/metrics.jsonl row {i + 1} differs in {keys}")
            break
    if (old / "predictions.npz").exists():
        with np.load(old / "predictions.npz") as za, np.load(new / "predictions.npz") as zb:
            if sorted(za.files) != sorted(zb.files):
                problems.append(f"{new}/predictions.npz holds other arrays")
            for k in za.files:
                if k in zb.files and not np.array_equal(za[k], zb[k]):
                    problems.append(f"{new}/predictions.npz[{k}] differs")
    if (old / "models.pt").exists():
        import torch

        sa = torch.load(old / "models.pt", weights_only=True)
        sb = torch.load(new / "models.pt", weights_only=True)
        if sorted(sa) != sorted(sb):
            problems.append(f"{new}/models.pt holds other models")
        for k in sa:
            for p in sa[k]:
                if k in sb and not torch.equal(sa[k][p], sb[k][p]):
                    problems.append(f"{new}/models.pt[{k}][{p}] differs")
    return len(a)


def main(old_root: str, new_root: str) -> int:
    old_root, new_root = Path(old_root), Path(new_root)
    problems: list[str] = []
    notes: list[str] = []
    runs = rows = 0
    for metrics in sorted(old_root.rglob("metrics.jsonl")):
        old = metrics.parent
        if "jobs" in old.relative_to(old_root).parts:
            continue  # a job's own rows are the cell's rows
        new = new_root / old.relative_to(old_root)
        if not (new / "metrics.jsonl").exists():
            problems.append(f"{new}/metrics.jsonl missing")
            continue
        rows += _compare_run(old, new, problems)
        runs += 1
    for name in ("analysis.json", "nqm.json", "sweep_results.json"):
        for path in sorted(old_root.rglob(name)):
            other = new_root / path.relative_to(old_root)
            if not other.exists():
                problems.append(f"{other} missing")
            elif _strip(json.loads(path.read_text()), True) != _strip(
                json.loads(other.read_text())
            ):
                problems.append(f"{other} differs")
            else:
                notes.append(f"{other.relative_to(new_root)}: identical (timings aside)")
    for jobs in sorted(old_root.rglob("jobs")):
        other = new_root / jobs.relative_to(old_root)
        ids_a = sorted(p.name for p in jobs.iterdir())
        ids_b = sorted(p.name for p in other.iterdir()) if other.exists() else []
        if ids_a != ids_b:
            notes.append(f"{other}: job ids differ ({len(set(ids_a) ^ set(ids_b))} not shared)")
    for name in ("summary.md", "sweep.md", "analysis.md", "nqm.md"):
        for path in sorted(old_root.rglob(name)):
            other = new_root / path.relative_to(old_root)
            if other.exists() and path.read_text() != other.read_text():
                notes.append(f"{other.relative_to(new_root)}: text differs")
    print(f"{runs} run folders, {rows} metric rows compared")
    for n in notes:
        print("note:", n)
    for p in problems:
        print("DIFFERENT:", p)
    print("identical numbers" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) > 4 and sys.argv[3] == "--rename":
        RENAME.update(pair.split("=", 1) for pair in sys.argv[4].split(","))
    sys.exit(main(*sys.argv[1:3]))
