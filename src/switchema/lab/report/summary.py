"""``summary.md`` of one run folder, and its plots, from the saved files only.

``write_report(run_dir)`` reads ``config.json``, ``metrics.jsonl`` and ``predictions.npz``
(:func:`~switchema.lab.report.run.load_run`), summarises them
(:func:`~switchema.lab.report.run.summarise`) and writes ``summary.md``, ``metrics.csv`` and
the plots. ``switchema report RUN`` calls it, so a report can be rebuilt (or restyled) from
the saved results at any time.

Each difference is shown with its 95% interval, its raw p-value and its Holm-corrected
p-value (all the comparisons of the summary are one family); the text calls a difference
significant only after the correction, and never claims more than that. Numbers chosen on the
test set (without a validation split) are marked "oracle (test)" and get no verdict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..decide import comparison_verdict
from ..errors import UsageError
from ..keys import ModelKey
from ..stats import format_ci, format_mean_std, format_p, mean_std
from . import notes as N
from . import run_plots
from .export import write_csv, write_tensorboard
from .posthoc import plot_posthoc, posthoc_data, posthoc_lines
from .run import ALPHA, PRIMARY, load_events, load_run, summarise
from .samples import plot_samples
from .style import Figures

__all__ = ["render_summary", "verdict", "verdict_lines", "write_report"]


def _fmt(values, scale=1.0, digits=2):
    mean, std = mean_std([v * scale for v in values])
    return format_mean_std(mean, std, digits)


def _fmt_diff(d, scale, digits=2):
    if d is None:
        return "—"
    return format_ci({k: (v * scale if isinstance(v, float) else v) for k, v in d.items()}, digits)


def _p_cells(d: dict[str, Any] | None) -> list[str]:
    """The raw and Holm-corrected p-value of a difference; the latter bold if significant."""
    if d is None or d.get("oracle"):
        return ["—", "—"]
    holm = format_p(d["p_holm"])
    return [format_p(d["p"]), f"**{holm}**" if d["significant"] else holm]


def _fmt_interval(d: dict[str, Any] | None, scale: float, digits: int = 2) -> str:
    """A :func:`~switchema.lab.stats.pairwise_interval` result: ``mean [lo, hi]``."""
    if d is None:
        return "—"
    if math.isnan(d["lo"]):
        return f"{d['mean'] * scale:.{digits}f} [n/a]"
    return f"{d['mean'] * scale:.{digits}f} [{d['lo'] * scale:.{digits}f}, {d['hi'] * scale:.{digits}f}]"


def verdict(d: dict[str, Any], higher: bool, against: str = "baseline") -> str:
    """What a difference shows, in the claims table's words (read as the claim that it beats
    ``against``), decided by its Holm-corrected p-value:
    :func:`switchema.lab.decide.comparison_verdict`."""
    p = math.nan if math.isnan(d["p"]) else d["p_holm"]
    return comparison_verdict(d["mean"], p, d["n"], higher=higher, alpha=ALPHA, against=against)


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """One line per method (at most 100 columns): its main model's final difference to the
    baseline (and Switch EMA's to plain EMA), interval, n, Holm p and verdict word."""
    kind, higher = summary["kind"], summary["higher"]
    _, _, scale, unit = PRIMARY[kind]
    digits = 2 if kind == "classification" else 4
    unit = " pp" if kind == "classification" else unit
    lines = []
    for e in summary["entries"]:
        if not e["main"]:
            continue
        for key, against in (("diff_final", "baseline"), ("diff_vs_ema", "ema")):
            d = e.get(key)
            if d is None:
                continue
            word = verdict(d, higher, against).replace(f" than {against}", "")
            name = ModelKey(e["method"], e["model"]).format()
            head = f"- {name} vs {against}: {_fmt_diff(d, scale, digits)}{unit}"
            tail = f"n = {d['n']}, Holm p {_is(d['p_holm'])}: {word}"
            line = f"{head}, {tail}"  # a long one goes on two lines, none over 100 columns
            lines += [line] if len(line) <= 100 else [f"{head},", f"  {tail}"]
    return lines


def _model(e: dict[str, Any]) -> str:
    if e.get("same_as"):  # a switching method's online model, switched to its average
        return f"{e['model']} (= {e['same_as']})"
    return f"{e['model']} (chosen on val)" if e.get("chosen_on_validation") else e["model"]


def _marked(summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The entries the tables show, an online model whose final predictions are its
    average's (for every seed) marked as the same model (``same_as``)."""
    kept = {(e["method"], e["model"]) for e, _ in run_plots.distinct_entries(summary, arrays)}
    out = []
    for e in run_plots.shown_entries(summary):
        if (e["method"], e["model"]) not in kept:
            main = next(x for x in summary["entries"] if x["method"] == e["method"] and x["main"])
            e = {**e, "same_as": main["model"]}
        out.append(e)
    return out


def render_summary(
    config: dict[str, Any],
    summary: dict[str, Any],
    timing: dict | None = None,
    rows: list[dict[str, Any]] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
    figures: Figures | None = None,
    events: list[dict[str, Any]] | None = None,
) -> str:
    """``summary.md``: the settings and data used, warnings, the final-epoch, calibration and
    early-stopping tables, a reading, and what the columns mean. ``events``: what the
    averagers recorded (``events.json``): switch and SWA counts are read there."""
    cfg = config["config"]
    rows, arrays, f = rows or [], arrays or {}, figures or Figures()
    events = events or []
    entries = _marked(summary, arrays)
    kind = summary["kind"]
    warnings = N.warnings_for(config, summary, rows, events)
    m = summary["family"]["m"]
    lines = [
        f"# {config['task']['name']}: {', '.join(cfg['methods'])}",
        "",
        f"{N.description(config)}. {N.data_sentence(config, arrays)}".strip(),
        N.settings_sentence(config, rows, timing),
        *N.averaging_lines(config, rows, events),
        "",
        *(["## Warnings", "", *(f"- {w}" for w in warnings), ""] if warnings else []),
        "Mean ± sample std over seeds; Δ is the paired difference to the baseline's online "
        "model, with its 95% interval, its p-value (paired t test) and its Holm-corrected "
        f"p-value: the {m} comparisons of this summary are one family, and a difference is "
        f"called significant only if its Holm p < {summary['family']['alpha']:g} (bold). The "
        "online models of ema and swa are the baseline's own trajectory and are not repeated. "
        "Columns are explained at the end. Verdicts use the claims table's words, for the "
        "claim that a method beats the baseline (or plain EMA).",
        "",
        "## Verdicts (final epoch)",
        "",
        *(verdict_lines(summary) or ["No comparison to a baseline in this run."]),
        "",
        "## Final epoch",
        "",
        *_final_table(summary, entries),
        *_calibration_table(summary, entries),
        *_early_stopping_table(summary, entries),
        *_label_noise_table(entries),
        *_reading(summary, entries),
        *_posthoc_section(summary, rows),
        *N.sema_lines(config, rows, events),
        "",
        "## Columns",
        "",
        *N.legend(kind, summary["selected_on"] == "validation"),
        "",
        f"Plots: `{f.name('curves')}` (test metric per epoch, mean over seeds with min–max "
        "band), "
        + (
            f"`{f.name('forest')}` (each model's final difference to the baseline with its "
            "95% interval), "
            if run_plots.forest_rows(summary)
            else ""
        )
        + (f"`{f.name('reliability')}`, " if kind == "classification" else "")
        + (f"`{f.name('boundaries')}`, " if "grid/x" in arrays else "")
        + (f"`{f.name('samples')}`" if kind == "generative" else f"`{f.name('train_loss')}`")
        + ". Every number: `metrics.jsonl`, or `metrics.csv` as a "
        "table (one row per seed, method, model and epoch; fractions, not %).",
        "",
    ]
    return "\n".join(lines)


def _final_table(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    kind, key = summary["kind"], summary["key"]
    _, _, scale, unit = PRIMARY[kind]
    digits = 2 if kind == "classification" else 4
    name = key.replace("test_", "test ") + (f" ({unit.strip()})" if unit else "")
    d_unit = " (pp)" if kind == "classification" else ""
    extra, extra_key = {
        "classification": ("test NLL", "test_nll"),
        "regression": ("test MAE", "test_mae"),
        "lm": ("test loss (nats)", "test_loss"),
        "generative": ("test sliced W2", "test_sw"),
    }[kind]
    lines = [
        f"| method | model | {name} | Δ{d_unit} [95% CI] | p | Holm p | {extra} | train loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        f, d = e["final"], e.get("diff_final")
        cells = [
            e["method"],
            _model(e),
            _fmt(f[key], scale, digits),
            _fmt_diff(d, scale, digits),
            *_p_cells(d),
            _fmt(f[extra_key], 1, 3 if kind == "classification" else 4) if extra_key in f else "—",
            _fmt(f["train_loss"], 1, 3 if kind == "classification" else 4)
            if "train_loss" in f
            else "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _calibration_table(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """Classifiers: calibration (raw and after temperature scaling) and seed agreement."""
    if summary["kind"] != "classification":
        return []
    scaled = all("temperature" in e["final"] for e in entries)
    head = ["method", "model", "ECE-15 (%)", "ECE-100 mass (%)"]
    if scaled:
        head += ["ECE-15 after TS (%)", "ECE-100 mass after TS (%)", "T"]
    head += ["churn (%) [95% CI]", "JS (×1e-3) [95% CI]"]
    lines = ["", "## Calibration and agreement between seeds (final epoch)", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        f = e["final"]
        cells = [e["method"], _model(e), _fmt(f["ece15"], 100), _fmt(f["ece100_mass"], 100)]
        if scaled:
            cells += [_fmt(f["ece15_ts"], 100), _fmt(f["ece100_mass_ts"], 100)]
            cells.append(_fmt(f["temperature"], 1, 3))
        cells += [_fmt_interval(e.get("churn"), 100), _fmt_interval(e.get("js"), 1000, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    pairs = next((e["churn"] for e in entries if "churn" in e), None)
    if pairs is not None:
        lines += [
            "",
            f"Churn and JS: over the {pairs['n_pairs']} pairs of {pairs['n_seeds']} seeds, "
            f"of which {pairs['n_independent_pairs']} could be disjoint; the pairs share seeds, "
            "so the 95% interval comes from the jackknife over seeds (n/a below 3 seeds).",
        ]
    return lines


def _early_stopping_table(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    kind, key = summary["kind"], summary["key"]
    _, _, scale, unit = PRIMARY[kind]
    name = key.replace("test_", "test ")
    u = f" ({unit.strip()})" if unit else ""
    digits = 2 if kind == "classification" else 4
    memorised = any("memorised_at_best" in e for e in entries)
    if summary["selected_on"] == "validation":
        title = "## Early stopping: each seed's epoch chosen on the validation split"
        head = [f"{name}{u} at the val-best epoch", "val-best epoch", "Δ [95% CI]", "p", "Holm p"]
        head += [f"{name}{u} at the lowest val loss", "epoch of lowest val loss"]
    else:
        title = (
            "## Early-stopping points: oracle (test), chosen on the test set (no validation "
            "split: optimistic for every method alike, and no verdict)"
        )
        head = [f"best {name}{u}, oracle (test)", "epoch of best", "Δ [95% CI], oracle (test)"]
        head += [f"{name}{u} at lowest test loss, oracle (test)", "epoch of lowest loss"]
    head += ["noisy labels memorised at best (%)"] if memorised else []
    lines = ["", title, "", "| method | model | " + " | ".join(head) + " |"]
    lines.append("|---|---|" + "---|" * len(head))
    for e in entries:
        d = e.get("diff_best")
        cells = [e["method"], _model(e), _fmt(e["best"], scale, digits)]
        cells += [_fmt(e["best_epoch"], 1, 1), _fmt_diff(d, scale, digits)]
        cells += _p_cells(d) if summary["selected_on"] == "validation" else []
        cells += [_fmt(e["at_lowest_loss"], scale, digits), _fmt(e["lowest_loss_epoch"], 1, 1)]
        if memorised:
            cells.append(_fmt(e["memorised_at_best"], 100) if "memorised_at_best" in e else "—")
        lines.append("| " + " | ".join(cells) + " |")
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
            f"| {e['method']} | {_model(e)} | {_fmt(f['noisy_memorised'], 100)} | "
            f"{_fmt(f['noisy_true_recovered'], 100)} |"
        )
    return lines


def _said(d: dict[str, Any], scale: float, digits: int, unit: str, higher: bool, against: str):
    """A difference in words: interval, p-values and verdict (none for an oracle)."""
    text = f"{_fmt_diff(d, scale, digits)}{unit}"
    if d.get("oracle"):
        return f"{text} (oracle: epoch chosen on the test set; no verdict)"
    return f"{text}, p {_is(d['p'])}, Holm p {_is(d['p_holm'])}: {verdict(d, higher, against)}"


def _is(p: float) -> str:
    """``= 0.012`` or ``< 0.001``."""
    text = format_p(p)
    return f"< {text[1:]}" if text.startswith("<") else f"= {text}"


def _reading(summary: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    kind, key, higher = summary["kind"], summary["key"], summary["higher"]
    _, _, scale, unit = PRIMARY[kind]
    name = key.replace("test_", "test ")
    digits = 2 if kind == "classification" else 4
    unit = " pp" if kind == "classification" else unit
    at = "the val-best epoch" if summary["selected_on"] == "validation" else "the best epoch"

    def line(head: str, d: dict, b: dict | None, against: str) -> str:
        text = f"{head}: {_said(d, scale, digits, unit, higher, against)}"
        if b is not None:
            text += f"; at {at}: {_said(b, scale, digits, unit, higher, against)}"
        return text + "."

    lines = ["", "## Reading", ""]
    for e in entries:
        if e["main"] and "diff_final" in e:
            d = e["diff_final"]
            head = f"- **{e['method']}** ({_model(e)}), final {name}, n={d['n']} seeds"
            lines.append(line(head, d, e.get("diff_best"), "baseline"))
    for e in entries:
        if "diff_vs_ema" in e:
            head = f"- **{e['method']} vs plain EMA** (same decay, paired by seed), final {name}"
            lines.append(line(head, e["diff_vs_ema"], e.get("diff_vs_ema_best"), "plain EMA"))
    return lines


def _posthoc_section(summary: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    kind, key = summary["kind"], summary["key"]
    _, _, scale, unit = PRIMARY[kind]
    data = posthoc_data(rows, key, summary["higher"])
    unit = f" ({unit.strip()})" if unit.strip() else ""
    digits = 2 if kind == "classification" else 4
    return posthoc_lines(data, scale, unit, key.replace("test_", "test "), digits)


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
    text = render_summary(config, summary, timing, rows, arrays, figures, load_events(run))
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
    if any("train_loss" in r for r in rows):  # a generative task reports no training loss
        run_plots.plot_curves(config, rows, figures, run, "train_loss", key="train_loss")
    if run_plots.forest_rows(summary):
        _, _, scale, unit = PRIMARY[summary["kind"]]
        unit = "pp" if summary["kind"] == "classification" else unit.strip()
        run_plots.plot_forest(config, summary, arrays, scale, unit, figures, run, "forest")
    if summary["kind"] == "classification":
        run_plots.plot_reliability(config, summary, arrays, figures, run, "reliability")
    if "grid/x" in arrays:
        run_plots.plot_boundaries(config, summary, arrays, figures, run, "boundaries")
    if summary["kind"] == "generative":
        plot_samples(config, summary, rows, arrays, figures, run, "samples")
    data = posthoc_data(rows, summary["key"], summary["higher"])
    if data is not None:
        _, _, scale, unit = PRIMARY[summary["kind"]]
        ylabel = summary["key"].replace("_", " ") + (f" ({unit.strip()})" if unit.strip() else "")
        plot_posthoc(data, scale, ylabel, figures, run, "posthoc")
    return run / "summary.md"
