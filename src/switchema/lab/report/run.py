"""The tables of one run folder (``summary.md``) and its plots, from the saved files only.

``write_report(run_dir)`` reads ``config.json``, ``metrics.jsonl`` and ``predictions.npz`` and
writes ``summary.md`` and PNG plots. ``switchema report RUN`` calls it, so a report can be
rebuilt (or restyled) from the saved results at any time.

Every number is a mean ± sample standard deviation over seeds; differences to the baseline
are paired by seed with a 95% t-interval. The text states whether each interval excludes
zero; it never claims more than that.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from ..config import StudyConfig
from ..errors import MissingFileError, UsageError
from ..stats import format_ci, format_mean_std, mean_std, paired_difference, pairwise_mean
from . import notes as N
from . import run_plots
from .export import write_csv, write_tensorboard
from .posthoc import final_only, plot_posthoc, posthoc_data, posthoc_lines
from .style import Figures

__all__ = [
    "PRIMARY",
    "has_results",
    "load_run",
    "main_label",
    "render_summary",
    "summarise",
    "write_report",
]

# kind -> (primary metric, higher is better, scale for display, unit)
PRIMARY = {
    "classification": ("test_acc", True, 100.0, "%"),
    "regression": ("test_mse", False, 1.0, ""),
    "lm": ("test_bpc", False, 1.0, " bpc"),
}


def load_run(
    run_dir: str | Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, np.ndarray]]:
    """The run's config, metric rows and arrays; a clear error names any missing file."""
    run = Path(run_dir)
    for name in ("config.json", "metrics.jsonl"):
        if not (run / name).is_file():
            raise MissingFileError(f"{run / name} not found: is {run} a switchema run folder?")
    config = json.loads((run / "config.json").read_text())
    # settings under today's names, whichever version wrote the folder
    config["config"] = StudyConfig.from_dict(config["config"], str(run / "config.json")).to_dict()
    rows = []
    with open(run / "metrics.jsonl") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(
                        f"{run / 'metrics.jsonl'} line {lineno} is not valid JSON: {e}"
                    ) from e
    arrays: dict[str, np.ndarray] = {}
    if (run / "predictions.npz").is_file():
        with np.load(run / "predictions.npz") as z:
            arrays = {k: z[k] for k in z.files}
    return config, rows, arrays


def has_results(run_dir: str | Path) -> bool:
    """Whether the run folder holds metric rows to report (its cell has been written with at
    least one finished job)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return False
    with open(path) as f:
        return any(line.strip() for line in f)


def main_label(method: str, labels: list[str]) -> str:
    """The model a method is judged by: the online model for the baseline, else its first average."""
    if method == "baseline":
        return "online"
    avgs = [m for m in labels if m != "online"]
    return avgs[0] if avgs else "online"


def _series(rows, method, model, key):
    """{seed: [value per epoch]} for one (method, model, metric)."""
    out: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and r["model"] == model and key in r:
            out[r["seed"]].append(r[key])
    return dict(sorted(out.items()))


def summarise(
    config: dict[str, Any], rows: list[dict[str, Any]], arrays: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per (method, model): final and early-stopping metrics over seeds, and paired differences."""
    cfg = config["config"]
    kind = config["task"]["kind"]
    key, higher, _, _ = PRIMARY[kind]
    methods = [m for m in cfg["methods"] if any(r["method"] == m for r in rows)]
    models_of = {  # models evaluated every epoch (post-hoc widths have their own section)
        m: list(
            dict.fromkeys(
                r["model"] for r in rows if r["method"] == m and not final_only(r["model"])
            )
        )
        for m in methods
    }
    metric_keys = list(
        dict.fromkeys(k for r in rows for k in r if isinstance(r[k], float) and k != "train_time_s")
    )
    entries = []
    for m in methods:
        for model in models_of[m]:
            prim = _series(rows, m, model, key)
            seeds = list(prim)
            final = {k: [v[-1] for v in _series(rows, m, model, k).values()] for k in metric_keys}
            best_idx = {s: int(np.argmax(v) if higher else np.argmin(v)) for s, v in prim.items()}
            loss = _series(rows, m, model, "test_loss")
            low_idx = {s: int(np.argmin(v)) for s, v in loss.items()}
            best = [prim[s][best_idx[s]] for s in seeds]
            at_low = [prim[s][low_idx[s]] for s in seeds]
            entry = {
                "method": m,
                "model": model,
                "main": model == main_label(m, models_of[m]),
                "seeds": seeds,
                "final": final,
                "best": best,
                "best_epoch": [best_idx[s] + 1 for s in seeds],
                "at_lowest_loss": at_low,
                "lowest_loss_epoch": [low_idx[s] + 1 for s in seeds],
            }
            if "noisy_memorised" in metric_keys:
                mem = _series(rows, m, model, "noisy_memorised")
                entry["memorised_at_best"] = [mem[s][best_idx[s]] for s in seeds]
            probs = [arrays.get(f"probs/{m}/{model}/{s}") for s in seeds]
            if all(p is not None for p in probs) and len(probs) >= 2:
                entry["churn"] = pairwise_mean(M.churn, probs)
                entry["js"] = pairwise_mean(M.js_divergence, probs)
            entries.append(entry)
    base = next((e for e in entries if e["method"] == "baseline" and e["model"] == "online"), None)
    for e in entries:
        if base is None or e is base:
            continue
        common = [s for s in e["seeds"] if s in base["seeds"]]
        if len(common) != len(e["seeds"]) or len(common) < 1:
            continue
        idx_e = [e["seeds"].index(s) for s in common]
        idx_b = [base["seeds"].index(s) for s in common]
        e["diff_final"] = paired_difference(
            [e["final"][key][i] for i in idx_e], [base["final"][key][i] for i in idx_b]
        )
        e["diff_best"] = paired_difference(
            [e["best"][i] for i in idx_e], [base["best"][i] for i in idx_b]
        )
    ema = next((e for e in entries if e["method"] == "ema" and e["main"]), None)
    for e in entries:
        if (
            ema is not None
            and e["method"].startswith("sema")
            and e["main"]
            and e["seeds"] == ema["seeds"]
        ):
            e["diff_vs_ema"] = paired_difference(e["final"][key], ema["final"][key])
            e["diff_vs_ema_best"] = paired_difference(e["best"], ema["best"])
    return {"kind": kind, "key": key, "higher": higher, "entries": entries}


def _fmt(values, scale=1.0, digits=2):
    mean, std = mean_std([v * scale for v in values])
    return format_mean_std(mean, std, digits)


def _fmt_diff(d, scale, digits=2):
    if d is None:
        return "—"
    return format_ci({k: (v * scale if isinstance(v, float) else v) for k, v in d.items()}, digits)


def _verdict(d: dict[str, Any], higher: bool) -> str:
    lo, hi = d["lo"], d["hi"]
    if math.isnan(lo):
        return "one seed: no interval"
    if lo > 0 or hi < 0:
        better = (lo > 0) == higher
        return (
            "better than baseline (95% CI excludes 0)"
            if better
            else "worse than baseline (95% CI excludes 0)"
        )
    return "no significant difference (95% CI includes 0)"


def render_summary(
    config: dict[str, Any],
    summary: dict[str, Any],
    timing: dict | None = None,
    rows: list[dict[str, Any]] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    figures: Figures | None = None,
) -> str:
    """``summary.md``: the settings and data used, warnings, the final-epoch and
    early-stopping tables, a reading, and what the columns mean."""
    cfg = config["config"]
    rows, arrays, f = rows or [], arrays or {}, figures or Figures()
    # The online model of baseline / ema / swa is one shared trajectory: list it once.
    entries = run_plots.shown_entries(summary)
    kind = summary["kind"]
    warnings = N.warnings_for(config, summary, rows)
    lines = [
        f"# {config['task']['name']}: {', '.join(cfg['methods'])}",
        "",
        f"{N.description(config)}. {N.data_sentence(config, arrays)}".strip(),
        N.settings_sentence(config, rows, timing),
        "",
        *(["## Warnings", "", *(f"- {w}" for w in warnings), ""] if warnings else []),
        "Mean ± sample std over seeds; Δ is the paired difference to the baseline's online "
        "model. The online models of ema and swa are the baseline's own trajectory and are "
        "not repeated. Columns are explained at the end.",
        "",
        "## Final epoch",
        "",
        *_final_table(summary, entries),
        *_early_stopping_table(summary, entries),
        *_label_noise_table(entries),
        *_reading(summary, entries),
        *_posthoc_section(summary, rows),
        *N.sema_lines(config, rows),
        "",
        "## Columns",
        "",
        *N.legend(kind),
        "",
        f"Plots: `{f.name('curves')}` (test metric per epoch, mean over seeds with min–max "
        "band), "
        + (f"`{f.name('reliability')}`, " if kind == "classification" else "")
        + (f"`{f.name('boundaries')}`, " if "grid/x" in arrays else "")
        + f"`{f.name('train_loss')}`. Every number: `metrics.jsonl`, or `metrics.csv` as a "
        "table (one row per seed, method, model and epoch; fractions, not %).",
        "",
    ]
    return "\n".join(lines)


def _final_table(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    kind, key = summary["kind"], summary["key"]
    unit = PRIMARY[kind][3]
    name = key.replace("test_", "test ")
    lines = []
    if kind == "classification":
        head = "| method | model | test acc (%) | Δ acc (pp) [95% CI] | test NLL | ECE-15 (%) | ECE-100 mass (%) | churn (%) | JS (×1e-3) | train loss |"
        lines += [head, "|---" * (head.count("|") - 1) + "|"]
        for e in entries:
            f = e["final"]
            churn = _fmt_pairs(e.get("churn"), 100)
            js = _fmt_pairs(e.get("js"), 1000, 3)
            lines.append(
                f"| {e['method']} | {e['model']} | {_fmt(f['test_acc'], 100)} | {_fmt_diff(e.get('diff_final'), 100)} | "
                f"{_fmt(f['test_nll'], 1, 3)} | {_fmt(f['ece15'], 100)} | {_fmt(f['ece100_mass'], 100)} | "
                f"{churn} | {js} | {_fmt(f['train_loss'], 1, 3)} |"
            )
        return lines
    extra = "test MAE" if kind == "regression" else "test loss (nats)"
    extra_key = "test_mae" if kind == "regression" else "test_loss"
    lines += [
        f"| method | model | {name}{f' ({unit.strip()})' if unit else ''} | Δ [95% CI] | {extra} | train loss |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        f = e["final"]
        lines.append(
            f"| {e['method']} | {e['model']} | {_fmt(f[key], 1, 4)} | {_fmt_diff(e.get('diff_final'), 1, 4)} | "
            f"{_fmt(f[extra_key], 1, 4)} | {_fmt(f['train_loss'], 1, 4)} |"
        )
    return lines


def _early_stopping_table(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    kind, key = summary["kind"], summary["key"]
    _, _, scale, unit = PRIMARY[kind]
    name = key.replace("test_", "test ")
    digits = 2 if kind == "classification" else 4
    memorised = any("memorised_at_best" in e for e in entries)
    lines = [
        "",
        "## Early-stopping points (oracle: chosen on the test set, so optimistic for every method alike)",
        "",
        f"| method | model | best {name}{f' ({unit.strip()})' if unit else ''} | epoch of best | Δ best [95% CI] "
        f"| {name} at lowest test loss{f' ({unit.strip()})' if unit else ''} | epoch of lowest loss |"
        + (" noisy labels memorised at best (%) |" if memorised else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if memorised else ""),
    ]
    for e in entries:
        line = (
            f"| {e['method']} | {e['model']} | {_fmt(e['best'], scale, digits)} | {_fmt(e['best_epoch'], 1, 1)} | "
            f"{_fmt_diff(e.get('diff_best'), scale, digits)} | {_fmt(e['at_lowest_loss'], scale, digits)} | "
            f"{_fmt(e['lowest_loss_epoch'], 1, 1)} |"
        )
        if "memorised_at_best" in e:
            line += f" {_fmt(e['memorised_at_best'], 100)} |"
        lines.append(line)
    return lines


def _label_noise_table(entries: list[dict[str, Any]]) -> list[str]:
    if not any("noisy_memorised" in e["final"] for e in entries):
        return []
    lines = [
        "",
        "## Label noise: flipped training labels the model predicts (final epoch)",
        "",
        "| method | model | memorised noisy label (%) | recovered true label (%) |",
        "|---|---|---|---|",
    ]
    for e in entries:
        f = e["final"]
        lines.append(
            f"| {e['method']} | {e['model']} | {_fmt(f['noisy_memorised'], 100)} | {_fmt(f['noisy_true_recovered'], 100)} |"
        )
    return lines


def _reading(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    kind, key, higher = summary["kind"], summary["key"], summary["higher"]
    _, _, scale, unit = PRIMARY[kind]
    name = key.replace("test_", "test ")
    digits = 2 if kind == "classification" else 4
    unit = " pp" if kind == "classification" else unit
    lines = ["", "## Reading", ""]
    for e in entries:
        if e["main"] and "diff_final" in e:
            d = e["diff_final"]
            lines.append(
                f"- **{e['method']}** ({e['model']}), final {name}: {_fmt_diff(d, scale, digits)}{unit} vs baseline, "
                f"n={d['n']} seeds: {_verdict(d, higher)}; at the best epoch: "
                f"{_fmt_diff(e['diff_best'], scale, digits)}{unit}, {_verdict(e['diff_best'], higher)}."
            )
    for e in entries:
        if "diff_vs_ema" in e:
            d, b = e["diff_vs_ema"], e["diff_vs_ema_best"]
            verdict = _verdict(d, higher).replace("baseline", "plain EMA")
            lines.append(
                f"- **{e['method']} vs plain EMA** (same decay, paired by seed), final {name}: "
                f"{_fmt_diff(d, scale, digits)}{unit}: {verdict}; at the best epoch: "
                f"{_fmt_diff(b, scale, digits)}{unit}, {_verdict(b, higher).replace('baseline', 'plain EMA')}."
            )
    return lines


def _posthoc_section(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    kind, key = summary["kind"], summary["key"]
    _, _, scale, unit = PRIMARY[kind]
    data = posthoc_data(rows, key, summary["higher"])
    unit = f" ({unit.strip()})" if unit.strip() else ""
    digits = 2 if kind == "classification" else 4
    return posthoc_lines(data, scale, unit, key.replace("test_", "test "), digits)


def _fmt_pairs(value, scale, digits=2):
    """(mean, std, n_pairs) over pairs of seeds, as 'mean ± std'."""
    if value is None:
        return "—"
    mean, std, _ = value
    return format_mean_std(mean * scale, std * scale, digits)


def write_report(
    run_dir: str | Path,
    *,
    status: str | None = None,
    figures: Figures | None = None,
    tensorboard: bool = False,
) -> Path:
    """Write ``summary.md``, ``metrics.csv`` and the plots into ``run_dir`` from its saved
    results (and TensorBoard event files under ``tensorboard/`` if asked); returns the
    summary's path. ``status``: a note on a run that is not finished (in progress, stopped);
    ``figures``: the plots' format and resolution."""
    run = Path(run_dir)
    figures = figures or Figures()
    config, rows, arrays = load_run(run)
    if not rows:
        raise UsageError(f"{run / 'metrics.jsonl'} has no rows: the run recorded no epoch")
    summary = summarise(config, rows, arrays)
    timing = (
        json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else None
    )
    text = render_summary(config, summary, timing, rows, arrays, figures)
    if status:
        head, rest = text.split("\n", 1)
        text = f"{head}\n\n**Run state:** {status}\n{rest}"
    failures = (
        json.loads((run / "failures.json").read_text()) if (run / "failures.json").is_file() else []
    )
    if failures:  # partial results say so up front, and say why
        text += f"\n## Failed jobs ({len(failures)})\n\nThese seeds are missing from the tables above.\n\n"
        text += "".join(
            f"- seed {f['seed']}, {'+'.join(f['methods'])}: {f['error']}\n" for f in failures
        )
    (run / "summary.md").write_text(text)
    write_csv(rows, run / "metrics.csv")
    if tensorboard:
        write_tensorboard(rows, run / "tensorboard")
    run_plots.plot_curves(config, rows, figures, run, "curves", key=summary["key"])
    run_plots.plot_curves(config, rows, figures, run, "train_loss", key="train_loss")
    if summary["kind"] == "classification":
        run_plots.plot_reliability(config, summary, arrays, figures, run, "reliability")
    if "grid/x" in arrays:
        run_plots.plot_boundaries(config, summary, arrays, figures, run, "boundaries")
    data = posthoc_data(rows, summary["key"], summary["higher"])
    if data is not None:
        _, _, scale, unit = PRIMARY[summary["kind"]]
        ylabel = summary["key"].replace("_", " ") + (f" ({unit.strip()})" if unit.strip() else "")
        plot_posthoc(data, scale, ylabel, figures, run, "posthoc")
    return run / "summary.md"
