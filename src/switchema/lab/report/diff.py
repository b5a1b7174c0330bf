"""``switchema diff RUN_A RUN_B``: two runs' tables side by side, for comparing a change
against a previous run.

For every method and model the runs share: A's and B's final and best-epoch primary metric
(mean ± std over seeds) and the difference B − A, paired by seed (a 95% t-interval over the
seeds both runs have) when seeds match, else the plain difference of the means. The settings
that differ between the two runs are listed first. Two sweep folders are compared cell by
cell (cells of the same name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import MissingFileError, NoResultsError, UsageError
from ..stats import format_ci, format_mean_std, mean_std, paired_difference
from .run import PRIMARY, has_results, load_run, summarise
from .run_plots import shown_entries

__all__ = ["diff_runs"]


def _summary(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not (run / "config.json").is_file():
        raise MissingFileError(f"{run / 'config.json'} not found: is {run} a switchema run folder?")
    if not has_results(run):
        raise NoResultsError(f"{run} holds no finished results to compare (see its summary.md)")
    config, rows, arrays = load_run(run)
    return config, summarise(config, rows, arrays)


def _fmt(values: list[float], scale: float, digits: int) -> str:
    mean, std = mean_std([scale * v for v in values])
    return f"{format_mean_std(mean, std, digits)} (n={len(values)})"


def _difference(a: dict[str, Any], b: dict[str, Any], what: str, scale: float, digits: int):
    """B − A for one model: paired over common seeds, else of the means."""
    va = a["final"][what] if what != "best" else a["best"]
    vb = b["final"][what] if what != "best" else b["best"]
    common = [s for s in a["seeds"] if s in b["seeds"]]
    if common:
        pa = [va[a["seeds"].index(s)] * scale for s in common]
        pb = [vb[b["seeds"].index(s)] * scale for s in common]
        d = paired_difference(pb, pa)
        return f"{format_ci(d, digits)} (paired, {len(common)} seed{'s' * (len(common) > 1)})"
    diff = mean_std([v * scale for v in vb])[0] - mean_std([v * scale for v in va])[0]
    return f"{diff:+.{digits}f} (no common seed: unpaired means)"


def _settings_lines(ca: dict[str, Any], cb: dict[str, Any]) -> list[str]:
    a, b = ca["config"], cb["config"]
    changed = [
        f"`{k}`: {json.dumps(a.get(k))} → {json.dumps(b.get(k))}"
        for k in dict.fromkeys([*a, *b])
        if a.get(k) != b.get(k)
    ]
    versions = [
        f"{k} {ca['versions'].get(k)} → {cb['versions'].get(k)}"
        for k in ("switchema", "torch", "numpy", "cpu", "cpu_capability", "mkl", "onednn")
        if ca.get("versions", {}).get(k) != cb.get("versions", {}).get(k)
    ]
    if ca.get("device") != cb.get("device"):
        versions.append(f"device {ca.get('device')} → {cb.get('device')}")
    lines = ["Settings that differ: " + ("; ".join(changed) if changed else "none") + "."]
    if versions:
        lines.append("Software and device that differ: " + "; ".join(versions) + ".")
    return lines


def _chosen(summary: dict[str, Any]) -> str:
    if summary["selected_on"] == "validation":
        return "on validation"
    return "oracle (test), no validation split"


def _table(run_a: Path, run_b: Path) -> list[str]:
    ca, sa = _summary(run_a)
    cb, sb = _summary(run_b)
    if sa["kind"] != sb["kind"]:
        raise UsageError(
            f"{run_a} is a {sa['kind']} run and {run_b} a {sb['kind']} run: their metrics "
            f"cannot be compared"
        )
    key, higher, scale, unit = PRIMARY[sa["kind"]]
    digits = 2 if sa["kind"] == "classification" else 4
    name = key.replace("_", " ") + (f" ({unit.strip()})" if unit.strip() else "")
    d_unit = " (pp)" if sa["kind"] == "classification" else ""
    lines = [
        *_settings_lines(ca, cb),
        "",
        f"Final and best-epoch {name}, {'higher' if higher else 'lower'} is better; mean ± "
        f"sample std over seeds. Δ = B − A{d_unit}. Best epoch: each seed's epoch chosen on "
        f"the validation split (A: {_chosen(sa)}, B: {_chosen(sb)}).",
        "",
        f"| method | model | A final | B final | Δ final{d_unit} [95% CI] | A best | B best "
        f"| Δ best{d_unit} [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    entries_b = {(e["method"], e["model"]): e for e in sb["entries"]}
    shared = [e for e in sa["entries"] if (e["method"], e["model"]) in entries_b]
    for a in shared:
        if a["model"] == "online" and a["method"] in ("ema", "swa"):
            continue  # the baseline's own trajectory
        b = entries_b[(a["method"], a["model"])]
        lines.append(
            f"| {a['method']} | {a['model']} | {_fmt(a['final'][key], scale, digits)} | "
            f"{_fmt(b['final'][key], scale, digits)} | "
            f"{_difference(a, b, key, scale, digits)} | {_fmt(a['best'], scale, digits)} | "
            f"{_fmt(b['best'], scale, digits)} | {_difference(a, b, 'best', scale, digits)} |"
        )
    only = sorted(
        {f"{e['method']} {e['model']}" for e in shown_entries(sa) + shown_entries(sb)}
        - {f"{e['method']} {e['model']}" for e in shared}
    )
    if only:
        lines += ["", "In one run only: " + ", ".join(only) + "."]
    return lines


def diff_runs(run_a: str | Path, run_b: str | Path) -> str:
    """The markdown comparing two run folders (or two sweep folders, cell by cell)."""
    a, b = Path(run_a), Path(run_b)
    lines = [f"# {a} (A) vs {b} (B)", ""]
    sweeps = [(p / "sweep.json").is_file() for p in (a, b)]
    if all(sweeps):
        cells_a = {p.name for p in (a / "cells").iterdir()} if (a / "cells").is_dir() else set()
        cells_b = {p.name for p in (b / "cells").iterdir()} if (b / "cells").is_dir() else set()
        common = sorted(cells_a & cells_b)
        if not common:
            raise UsageError(f"the sweeps {a} and {b} have no cell of the same name")
        for cell in common:
            lines += [f"## Cell `{cell}`", "", *_table(a / "cells" / cell, b / "cells" / cell), ""]
        if cells_a ^ cells_b:
            lines.append("Cells in one sweep only: " + ", ".join(sorted(cells_a ^ cells_b)) + ".")
        return "\n".join(lines) + "\n"
    if any(sweeps):
        raise UsageError("compare a run folder with a run folder, or a sweep with a sweep")
    return "\n".join(lines + _table(a, b)) + "\n"
